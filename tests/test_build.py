"""The compiled modules: built by `pip install`, loaded once, informative when absent, clean errors without a GPU."""
import os
import shutil

import pytest
import torch

from blockadmm import _native, ops


def test_cpu_module_built_and_loaded():
    report = _native.build_report()
    assert "blockadmm._cpu" in report, "setup.py did not record the CPU module build (reinstall: pip install -e .)"
    assert report["blockadmm._cpu"]["built"], report["blockadmm._cpu"]
    mod = _native.load("_cpu")
    # the module reports the OpenMP build that setup.py recorded; without OpenMP it runs one thread
    assert mod.openmp is report["blockadmm._cpu"]["openmp"], (mod.openmp, report["blockadmm._cpu"])
    assert mod.max_threads >= 1 and (mod.openmp or mod.max_threads == 1)
    assert ops.status()["cpu"] is None
    assert _native.describe("_cpu").startswith("loaded")


def test_cpu_module_is_torch_free():
    """The module links no libtorch: it must not depend on the torch build."""
    path = _native.load("_cpu").__file__
    with open(path, "rb") as f:
        blob = f.read()
    assert b"libtorch" not in blob and b"libc10" not in blob


@pytest.mark.skipif(
    shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"), reason="no nvcc here"
)
def test_cuda_module_compiled_and_imports_without_gpu():
    report = _native.build_report().get("blockadmm._cuda", {})
    if os.environ.get("BLOCKADMM_BUILD_CUDA") == "0":
        pytest.skip("BLOCKADMM_BUILD_CUDA=0")
    assert report.get("built"), f"nvcc is here but the CUDA module was not built: {report}"
    mod = _native.load("_cuda")  # importing touches no GPU
    n, err = mod.device_count()
    assert mod.runtime_version() >= 11000
    assert mod.aux_dual_num_partials(10**6) >= 1
    desc = _native.describe("_cuda")
    assert desc.startswith("loaded") and "sm_80" in desc and "sm_90" in desc
    with open(mod.__file__, "rb") as f:
        assert b"libtorch" not in f.read()
    if n == 0:
        # calling into it without a GPU is a clean RuntimeError naming the CUDA error, not a crash
        with pytest.raises(RuntimeError, match=r"blockadmm\._cuda\.gemm: CUDA error \d+"):
            mod.gemm(0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 2, 2, 2)
        assert err, "device_count() must say why there is no device"
        # and the backend reports why it is unavailable
        assert "no usable GPU" in (ops.status()["cuda"] or "")


def test_cuda_module_validates_arguments_before_touching_the_gpu():
    try:
        mod = _native.load("_cuda")
    except ImportError as e:
        pytest.skip(str(e))
    with pytest.raises(RuntimeError, match="invalid argument"):
        mod.gemm(0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 2, 2, 2)  # null pointers
    with pytest.raises(RuntimeError, match="invalid argument"):
        mod.aux_dual_update(
            0, 0, 1, 1, 7, 1, 0, 0, 0, 0, 2, 2, 1.0, 1.0, 1.0, 0, 0.0, 0.0, 0.0, False, 1
        )  # bad dtype code


def test_missing_module_reason_is_informative(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_REPORT", str(tmp_path / "report.json"))
    (tmp_path / "report.json").write_text(
        '{"blockadmm._nope": {"built": false, "reason": "skipped: BLOCKADMM_BUILD_CUDA=0"}}'
    )
    with pytest.raises(ImportError, match="was not built: skipped: BLOCKADMM_BUILD_CUDA=0"):
        _native.load("_nope")
    with pytest.raises(ImportError, match="no build record"):
        _native.load("_nope2")
    assert _native.native_status()["blockadmm._cpu"] is None


def test_status_names_every_backend():
    st = ops.status()
    assert set(st) >= {"torch", "cpu", "triton", "cuda"}
    if not torch.cuda.is_available():
        assert st["cuda"], "without a GPU the cuda backend must say why it is unavailable"


def test_setup_arch_flags(monkeypatch):
    # setup.py's helpers, without running setup(): read the functions' source into a namespace
    with open(os.path.join(os.path.dirname(__file__), "..", "setup.py")) as f:
        src = f.read()
    src = src.replace("\nsetup(ext_modules=ext_modules", "\n_unused = dict(ext_modules=ext_modules")
    ns = {"__file__": os.path.join(os.path.dirname(__file__), "..", "setup.py"), "__name__": "setup_under_test"}
    exec(compile(src, "setup.py", "exec"), ns)  # noqa: S102 - the repository's own setup.py
    monkeypatch.delenv("BLOCKADMM_CUDA_ARCH", raising=False)
    flags, archs = ns["cuda_arch_flags"]()
    assert archs == ["80", "90"]
    assert "arch=compute_80,code=sm_80" in flags and "arch=compute_90,code=[sm_90,compute_90]" in flags
    monkeypatch.setenv("BLOCKADMM_CUDA_ARCH", "sm_86,9.0")
    assert ns["cuda_arch_flags"]()[1] == ["86", "90"]


def test_failing_compiler_leaves_a_warning_not_a_broken_build(tmp_path):
    """setup.py with a compiler that always fails, and BLOCKADMM_BUILD_CUDA=0: the build succeeds, says why."""
    import json
    import subprocess
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    for f in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(root, f), tmp_path / f)
    shutil.copytree(os.path.join(root, "csrc"), tmp_path / "csrc")
    for pkg in ("blockadmm", "blockadmm/ref", "blockadmm/ops", "kernels"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    env = dict(os.environ, CC="false", CXX="false", LDSHARED="false", BLOCKADMM_BUILD_CUDA="0")
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], check=False, cwd=tmp_path, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "could not build blockadmm._cpu" in p.stdout
    report = json.loads((tmp_path / "blockadmm" / "_build_report.json").read_text())
    assert report["blockadmm._cpu"]["built"] is False and report["blockadmm._cpu"]["reason"]
    assert report["blockadmm._cuda"] == {"built": False, "reason": "skipped: BLOCKADMM_BUILD_CUDA=0"}


def test_gpu_check_fails_cleanly_without_gpu(capsys):
    import importlib.util

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: bench/gpu_check.py would run for real")
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "gpu_check.py")
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([]) == 2
    assert "no GPU to check on" in capsys.readouterr().out


def test_compiled_modules_describe_themselves():
    desc = ops.compiled_modules()
    assert set(desc) == {"blockadmm._cpu", "blockadmm._cuda"}
    for name, line in desc.items():
        assert line.startswith(("loaded (", "not available: ")), (name, line)
