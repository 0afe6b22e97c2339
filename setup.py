"""Build script. Metadata lives in pyproject.toml; this file adds the compiled modules.

- `blockadmm._cpu`  (csrc/cpu/): C++ CPU kernels, OpenMP, pybind11. Always attempted; a failing compiler
  leaves a warning and the torch reference in charge, never a broken install (it retries without OpenMP
  first).
- `blockadmm._cuda` (csrc/cuda/): CUDA C++ kernels behind a torch-free C interface, compiled and linked
  by nvcc alone (static cudart), so it builds and imports on a machine with nvcc and no GPU and does not
  depend on the torch build. Built when nvcc is found or BLOCKADMM_BUILD_CUDA=1; skipped with
  BLOCKADMM_BUILD_CUDA=0. With BLOCKADMM_BUILD_CUDA=1 a failed build is an error (you asked for it);
  otherwise it is a warning.

Environment:
  BLOCKADMM_BUILD_CUDA   unset: build if nvcc is found; 1: must build; 0: skip
  BLOCKADMM_CUDA_ARCH    semicolon/comma list of SM versions, default "80;90" (SASS for each, PTX for the last)
  NVCC / CUDA_HOME       where nvcc is (else PATH, then /usr/local/cuda/bin)
  BLOCKADMM_NVCC_FLAGS   extra nvcc flags

What was built and why not is written to blockadmm/_build_report.json, which `blockadmm.ops.status()`
and `blockadmm info` read.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = ["csrc/cpu/blockadmm_cpu.cpp", "csrc/cpu/nmf_hals.cpp"]
CPU_DEPENDS = ["csrc/cpu/threads.h"]
CUDA_SOURCES = ["csrc/cuda/blockadmm_cuda.cu", "csrc/cuda/nmf_hals.cu", "csrc/cuda/bind.cpp"]
CUDA_DEPENDS = ["csrc/cuda/blockadmm_cuda.h"]
DEFAULT_CUDA_ARCH = "80;90"


def _pybind11_include():
    try:
        import pybind11
    except ImportError:  # pragma: no cover - build-system requires pybind11
        return None
    return pybind11.get_include()


class NvccExtension(Extension):
    """An extension compiled and linked by nvcc alone (no torch, no setuptools compiler)."""


def find_nvcc():
    cands = [os.environ.get("NVCC")]
    if os.environ.get("CUDA_HOME"):
        cands.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    cands += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cuda_arch_flags():
    archs = [a.strip().replace("sm_", "").replace(".", "") for a in
             os.environ.get("BLOCKADMM_CUDA_ARCH", DEFAULT_CUDA_ARCH).replace(",", ";").split(";") if a.strip()]
    flags = []
    for i, a in enumerate(archs):
        code = f"[sm_{a},compute_{a}]" if i == len(archs) - 1 else f"sm_{a}"
        flags += ["-gencode", f"arch=compute_{a},code={code}"]
    return flags, archs


def _tail(text, n=25):
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


class BuildExt(build_ext):
    def run(self):
        self._report = {}
        super().run()
        if not self.extensions:
            return
        out_dir = os.path.dirname(self.get_ext_fullpath("blockadmm._cpu"))
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "_build_report.json"), "w") as f:
            json.dump(self._report, f, indent=1, sort_keys=True)

    def copy_extensions_to_source(self):
        # --inplace / editable installs copy from build_lib: copy only what was built
        saved = self.extensions
        self.extensions = [e for e in saved if self._report.get(e.name, {}).get("built")]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = saved

    def get_outputs(self):
        report = getattr(self, "_report", None)
        if report is None:
            return super().get_outputs()
        return [self.get_ext_fullpath(e.name) for e in self.extensions if report.get(e.name, {}).get("built")]

    def build_extension(self, ext):
        t0 = time.time()
        try:
            if isinstance(ext, NvccExtension):
                info = self._build_cuda(ext)
            else:
                info = self._build_cpu(ext)
        except Exception as e:  # keep the install working: the torch reference stays in charge
            reason = f"{type(e).__name__}: {e}"
            if not isinstance(ext, NvccExtension):
                reason += " (the compiler's messages are in the `pip install -v` log)"
            self._report[ext.name] = {"built": False, "reason": reason}
            if isinstance(ext, NvccExtension) and os.environ.get("BLOCKADMM_BUILD_CUDA") == "1":
                raise RuntimeError(f"BLOCKADMM_BUILD_CUDA=1 but building {ext.name} failed: {reason}") from e
            msg = f"blockadmm: could not build {ext.name}; the torch reference will be used instead.\n{reason}"
            warnings.warn(msg)
            print("WARNING: " + msg, file=sys.stderr)
            return
        if info is None:  # skipped on purpose; the reason is already recorded
            return
        self._report[ext.name] = dict(info, built=True, seconds=round(time.time() - t0, 1))

    # -- C++ CPU module -------------------------------------------------------------------------
    def _build_cpu(self, ext):
        base = list(ext.extra_compile_args)
        try:
            ext.extra_compile_args = base + ["-fopenmp"]
            ext.extra_link_args = ["-fopenmp"]
            super().build_extension(ext)
            return {"openmp": True, "compiler": " ".join(self.compiler.compiler_so[:1])}
        except Exception as e:
            first = f"{type(e).__name__}: {e}"
            print(f"WARNING: blockadmm: building {ext.name} with OpenMP failed ({first}); retrying single-threaded",
                  file=sys.stderr)
            ext.extra_compile_args, ext.extra_link_args = base, []
            super().build_extension(ext)
            return {"openmp": False, "note": f"built without OpenMP: {first}"}

    # -- CUDA module ----------------------------------------------------------------------------
    def _build_cuda(self, ext):
        mode = os.environ.get("BLOCKADMM_BUILD_CUDA", "").strip()
        if mode == "0":
            self._report[ext.name] = {"built": False, "reason": "skipped: BLOCKADMM_BUILD_CUDA=0"}
            return None
        nvcc = find_nvcc()
        if nvcc is None:
            reason = "skipped: nvcc not found (set CUDA_HOME or NVCC, or put nvcc on PATH)"
            if mode == "1":
                raise RuntimeError(reason)
            self._report[ext.name] = {"built": False, "reason": reason}
            return None
        inc = _pybind11_include()
        if inc is None:
            raise RuntimeError("pybind11 is not installed in the build environment")
        out = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        arch_flags, archs = cuda_arch_flags()
        cmd = [nvcc, "-O3", "-std=c++17", "-shared", "--cudart", "static", "-lineinfo",
               "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
               "-I", inc, "-I", sysconfig.get_paths()["include"], "-I", os.path.join(HERE, "csrc", "cuda"),
               *arch_flags, *os.environ.get("BLOCKADMM_NVCC_FLAGS", "").split(),
               *[os.path.join(HERE, s) for s in ext.sources], "-o", out]
        print("blockadmm: " + " ".join(cmd), file=sys.stderr)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"nvcc exited with {p.returncode}:\n{_tail(p.stdout)}")
        ver = subprocess.run([nvcc, "--version"], stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()
        return {"nvcc": nvcc, "nvcc_version": ver[-1] if ver else "?", "archs": archs}


ext_modules = [
    Extension(
        "blockadmm._cpu",
        sources=CPU_SOURCES,
        depends=CPU_DEPENDS,
        include_dirs=[p for p in [_pybind11_include()] if p],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
    ),
    NvccExtension("blockadmm._cuda", sources=CUDA_SOURCES, depends=CUDA_DEPENDS),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
