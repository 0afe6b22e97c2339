"""One command on a GPU machine: build the CUDA module, check every backend against the reference, time them.

    python bench/gpu_check.py                 # build (setup.py build_ext --inplace), test, time
    python bench/gpu_check.py --no-build      # use the modules already built
    python bench/gpu_check.py --no-tests      # timings only

1. Build: `setup.py build_ext --inplace` with BLOCKADMM_BUILD_CUDA=1 (nvcc must work) and the arch list set
   to this GPU's compute capability unless BLOCKADMM_CUDA_ARCH is set.
2. Correctness: the kernel test-suite (tests/test_kernels_*.py, tests/test_build.py) with TRITON_INTERPRET=0,
   so the Triton and CUDA backends run on the GPU, in float32, float16 and bfloat16, every prox, activation,
   indexed and not, NaN-poisoned outputs; plus, below, the max error of every timed call against the
   torch reference on the same inputs.
3. Timing: every backend on the same inputs (CUDA events, median of repeats), with achieved GB/s for the
   memory-bound aux/dual update (against this GPU's measured copy bandwidth) and TFLOP/s for the NMF update
   and the linear block; GFLOP/s (2·n·k² per pass) and the error against the reference for the HALS pass
   (nmf_hals_update, float32 and float64).

Without a GPU it says so and exits with status 2 (nothing is built or run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _say(msg: str) -> None:
    print(msg, flush=True)


def have_gpu():
    try:
        import torch
    except ImportError as e:
        return False, f"torch is not importable ({e})"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda})"
    return True, torch.cuda.get_device_name(0)


def build() -> bool:
    import torch

    env = dict(os.environ, BLOCKADMM_BUILD_CUDA="1")
    if "BLOCKADMM_CUDA_ARCH" not in env:
        major, minor = torch.cuda.get_device_capability(0)
        env["BLOCKADMM_CUDA_ARCH"] = f"{major}{minor}"
    _say(f"[build] setup.py build_ext --inplace (BLOCKADMM_CUDA_ARCH={env['BLOCKADMM_CUDA_ARCH']})")
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if p.returncode != 0:
        _say(p.stdout[-4000:])
        _say(f"[build] FAILED after {time.time() - t0:.0f}s")
        return False
    _say(f"[build] done in {time.time() - t0:.0f}s")
    return True


def run_tests() -> bool:
    env = dict(os.environ, TRITON_INTERPRET="0")
    files = [
        os.path.join("tests", f)
        for f in sorted(os.listdir(os.path.join(ROOT, "tests")))
        if f.startswith("test_kernels_") or f == "test_build.py"
    ]
    _say(f"[tests] pytest {' '.join(files)} (TRITON_INTERPRET=0: Triton and CUDA on the GPU)")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT, env=env)
    return p.returncode == 0


# ---------------------------------------------------------------------------------------------- timing
def _time(fn, reps=20, warmup=3):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return times[len(times) // 2]


def _maxerr(a, b):
    if a is None or b is None:
        return 0.0
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _hals_rows(backends, time_fn):
    """nmf_hals_update (float32 and float64: the op takes no half types): every backend against the torch
    reference on the same inputs (codes of 65536 rows, k = 64 in a shuffled order), then timed over repeated
    passes (a pass does the same arithmetic whatever the values)."""
    import torch

    from blockadmm import ops

    rows = []
    n, k = 65536, 64
    for dtype, tag in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        W = torch.rand(k, 512, device="cuda", dtype=dtype)
        H0 = torch.rand(n, k, device="cuda", dtype=dtype)
        A, G = torch.rand(n, 512, device="cuda", dtype=dtype) @ W.T, W @ W.T
        perm = torch.randperm(k, device="cuda")
        Hr = H0.clone()
        vr = ops.nmf_hals_update(Hr, A, G, perm=perm, backend="torch")
        for be in backends:
            H = H0.clone()
            try:
                v = ops.nmf_hals_update(H, A, G, perm=perm, backend=be)
            except Exception as e:
                rows.append(("nmf_hals", be, tag, None, str(e)[:60], "", ""))
                continue
            err = f"{_maxerr(H, Hr):.1e} (violation {abs(float(v) - float(vr)) / max(float(vr), 1e-30):.1e} rel)"
            t = time_fn(lambda: ops.nmf_hals_update(H, A, G, perm=perm, backend=be), reps=10)  # same work every pass
            rows.append((f"nmf_hals {n}x{k}", be, tag, t, f"{2 * n * k * k / t / 1e9:.0f} GFLOP/s", "", err))
    return rows


def timings(backends):
    import torch

    from blockadmm import Prox, ops

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    rows = []

    # machine limit: device-to-device copy bandwidth
    src = torch.randn(64 * 2**20, device=dev)
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() * 4 / t / 1e9
    rows.append(("copy (device limit)", "torch", "fp32", t, f"{copy_gbs:.0f} GB/s", "", ""))
    src = dst = None  # free the buffers (the timed lambda above keeps the names)

    for dtype in (torch.float32, torch.bfloat16):
        tag = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
        es = torch.tensor([], dtype=dtype).element_size()
        # aux/dual update, 32M elements, plain and indexed (tables twice the batch)
        m, d = 2**17, 256
        for indexed in (False, True):
            N = 2 * m if indexed else m
            base = [
                torch.randn(N, d, device=dev).to(dtype),
                (torch.randn(N, d, device=dev) * 0.1).to(dtype),
                torch.randn(m, d, device=dev).to(dtype),
                torch.randn(m, d, device=dev).to(dtype),
            ]
            index = torch.randperm(N, device=dev)[:m] if indexed else None
            kw = dict(rho=1.0, lr=0.1, prox=Prox.box(-2.0, 2.0), index=index)
            nbytes = 6 * m * d * es
            zr, ur = base[0].clone(), base[1].clone()
            ops.aux_dual_update(zr, ur, base[2], base[3], backend="torch", **kw)
            for be in backends:
                z, u = base[0].clone(), base[1].clone()
                try:
                    ops.aux_dual_update(z, u, base[2], base[3], backend=be, **kw)
                except Exception as e:
                    rows.append((f"aux_dual {'indexed' if indexed else 'plain'}", be, tag, None, str(e)[:60], "", ""))
                    continue
                err = max(_maxerr(z, zr), _maxerr(u, ur))
                t = _time(lambda: ops.aux_dual_update(z, u, base[2], base[3], backend=be, **kw))
                gbs = nbytes / t / 1e9
                rows.append(
                    (
                        f"aux_dual {'indexed' if indexed else 'plain'} {m}x{d}",
                        be,
                        tag,
                        t,
                        f"{gbs:.0f} GB/s",
                        f"{gbs / copy_gbs:.0%} of copy",
                        f"{err:.1e}",
                    )
                )

        # NMF, which="both"
        n, k, dd = 16384, 64, 4096
        V = torch.rand(n, dd, device=dev).to(dtype)
        H0, W0 = torch.rand(n, k, device=dev).to(dtype), torch.rand(k, dd, device=dev).to(dtype)
        flops = 2 * (2 * n * dd * k + 2 * k * k * dd + 2 * n * k * k)
        Hr, Wr = H0.clone(), W0.clone()
        ops.nmf_mu_update(V, Hr, Wr, which="both", backend="torch")
        for be in backends:
            H, W = H0.clone(), W0.clone()
            try:
                ops.nmf_mu_update(V, H, W, which="both", backend=be)
            except Exception as e:
                rows.append(("nmf both", be, tag, None, str(e)[:60], "", ""))
                continue
            err = max(_maxerr(H, Hr), _maxerr(W, Wr))
            H, W = H0.clone(), W0.clone()
            t = _time(lambda: ops.nmf_mu_update(V, H, W, which="both", backend=be), reps=10)
            rows.append((f"nmf both {n}x{k}x{dd}", be, tag, t, f"{flops / t / 1e12:.2f} TFLOP/s", "", f"{err:.1e}"))

        # linear block, tanh
        m2, k2, n2 = 8192, 4096, 4096
        x = torch.randn(m2, k2, device=dev).to(dtype)
        w = (torch.randn(n2, k2, device=dev) / 64).to(dtype)
        b = torch.randn(n2, device=dev).to(dtype)
        z, u = torch.randn(m2, n2, device=dev).to(dtype), (torch.randn(m2, n2, device=dev) * 0.1).to(dtype)
        flops = 6 * m2 * n2 * k2
        ref = ops.linear_block_fwd_bwd(x, w, b, z, u, rho=1.0, activation="tanh", backend="torch")
        for be in backends:
            try:
                got = ops.linear_block_fwd_bwd(x, w, b, z, u, rho=1.0, activation="tanh", backend=be)
            except Exception as e:
                rows.append(("linear tanh", be, tag, None, str(e)[:60], "", ""))
                continue
            rel = max(
                _maxerr(g, r) / max(float(r.double().abs().max()), 1e-30) for g, r in zip(got, ref) if r is not None
            )
            t = _time(lambda: ops.linear_block_fwd_bwd(x, w, b, z, u, rho=1.0, activation="tanh", backend=be), reps=10)
            rows.append(
                (f"linear tanh {m2}x{k2}->{n2}", be, tag, t, f"{flops / t / 1e12:.2f} TFLOP/s", "", f"{rel:.1e} rel")
            )
        x = w = b = z = u = V = H0 = W0 = None  # free before the next dtype (the timed lambdas keep the names)
        torch.cuda.empty_cache()
    rows += _hals_rows(backends, _time)

    head = ("op", "backend", "dtype", "ms", "rate", "fraction", "max err vs ref")
    table = [head] + [(r[0], r[1], r[2], "-" if r[3] is None else f"{r[3] * 1e3:.3f}", *r[4:]) for r in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        _say("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            _say("  ".join("-" * w for w in widths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-build", action="store_true", help="use the compiled modules already built")
    ap.add_argument("--no-tests", action="store_true", help="skip the correctness suite")
    ap.add_argument("--no-timing", action="store_true", help="skip the timing table")
    args = ap.parse_args(argv)

    ok, what = have_gpu()
    if not ok:
        _say(f"gpu_check: no GPU to check on: {what}. Run this on a machine with an NVIDIA GPU and nvcc.")
        return 2
    _say(f"gpu_check on {what}")
    sys.path.insert(0, ROOT)
    if not args.no_build and not build():
        return 1
    status = 0
    if not args.no_tests and not run_tests():
        status = 1
    if not args.no_timing:
        os.environ["TRITON_INTERPRET"] = "0"
        from blockadmm import _native, ops

        _say(f"[modules] _cpu: {_native.describe('_cpu')}; _cuda: {_native.describe('_cuda')}")
        st = ops.status()
        backends = [b for b in ("torch", "triton", "cuda") if st.get(b) is None]
        for b in ("triton", "cuda"):
            if st.get(b) is not None:
                _say(f"[timing] backend {b} unavailable: {st[b]}")
                status = 1
        timings(backends)
    return status


if __name__ == "__main__":
    sys.exit(main())
