"""The four ops on every backend that can run here, at small / medium / large sizes, in one run.

    pytest bench/bench_ops.py --benchmark-columns=min,median,rounds     (or: python -m bench)

Rows (op x size x implementation):
  eager     the pure-torch reference through the public op (backend="torch")
  compile   torch.compile of the reference (compiled once per shape, outside the timing)
  cpu       the C++ CPU module (backend="cpu"; GEMMs stay with torch's BLAS)
  triton    the Triton kernels (backend="triton"; CUDA tensors only: on a CPU there is no compiled Triton)
  cuda      the CUDA C++ module (backend="cuda")
  eager cuda, compile cuda   with a GPU: the reference and its torch.compile on CUDA tensors
  sklearn   (nmf_hals_update only) scikit-learn's own pass, `_update_cdnmf_fast`, on the same float32 inputs
Each row records the bytes (aux/dual: read z, u, a, g, write z, u) or FLOPs (NMF: 4ndk + 4k^2(n+d);
HALS pass: 2nk^2; linear block: 6mkn for forward, grad_weight and grad_input) it moves, so the report gives GB/s against
the copy bandwidth and GFLOP/s against torch.mm, both measured in the same run (bench_limits.py).
bench_ops_cpu.py (the kernel issue's file) holds the CPU acceptance checks of the aux/dual kernel,
the indexed (batch-mode) variant among them; this file is the matrix the README table is made from.
"""

from __future__ import annotations

import pytest
import torch

from bench._common import MODE, compiled, pick, record, timed
from blockadmm import ops, ref

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"

AUX_SIZES = pick(
    {"small": 2**16, "medium": 2**20, "large": 8 * 2**20},
    {"small": 2**16, "large": 8 * 2**20},
    {"tiny": 2**10},
)
NMF_SIZES = pick(
    {"small": (1024, 256, 16), "medium": (5000, 784, 64), "large": (16384, 1024, 128)},
    {"medium": (5000, 784, 64)},
    {"tiny": (32, 24, 4)},
)
# (rows n, components k) of the codes a HALS pass updates: digits (k=16), MNIST-5k (k=64), the sparse set (k=32)
HALS_SIZES = pick(
    {"small": (1797, 16), "medium": (5000, 64), "large": (20000, 32)},
    {"medium": (5000, 64)},
    {"tiny": (32, 4)},
)
LIN_SIZES = pick(
    {"small": (100, 784, 256), "medium": (1024, 784, 512), "large": (4096, 1024, 1024)},
    {"small": (100, 784, 256), "medium": (1024, 784, 512)},
    {"tiny": (8, 16, 12)},
)
# torch.compile costs seconds per shape: every size in a full run; in a quick run only the aux/dual target size
COMPILE_AT = pick(None, {"aux_dual_update": "large"}, {})
# eager / compile / cpu run on CPU tensors; with a GPU, the torch reference and its torch.compile run
# again on the GPU ("eager cuda", "compile cuda") beside the Triton and CUDA kernels
IMPLS = ["eager", "compile", "cpu", "triton", "cuda"] + (["eager cuda", "compile cuda"] if GPU else [])
AUX_KW = dict(rho=1.0, lr=0.1, dual_step=1.0)


def _rounds(nbytes_or_flops: float, eager: bool) -> int:
    if MODE == "tiny":
        return 1
    base = pick(20, 8, 1)
    if nbytes_or_flops > 1e8:  # the large sizes: fewer rounds, eager fewer still
        base = max(3, base // 2)
    return max(3, base // 3) if eager else base


def _device_for(impl: str) -> str:
    return "cuda" if impl in ("triton", "cuda") or impl.endswith(" cuda") else "cpu"


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _skip(op, impl, size, reason):
    record("ops", f"{op} {impl} {size}", op=op, impl=impl, size=size, skipped=reason)
    pytest.skip(reason)


def _impl_fn(op: str, impl: str, size: str):
    """The callable for `impl`, or skip (recorded) with the reason it cannot run here."""
    device = _device_for(impl)
    if impl in ("eager", "eager cuda", "cpu", "triton", "cuda"):
        backend = "torch" if impl.startswith("eager") else impl
        if backend != "torch":
            b = ops.backends().get(backend)
            err = "not registered" if b is None else b.load_error()
            if err:
                _skip(op, impl, size, f"{backend} backend unavailable: {err}")
            if impl == "triton" and not GPU:
                _skip(
                    op,
                    impl,
                    size,
                    "no GPU: Triton runs on CPU tensors only under its interpreter, which is not a speed",
                )
        fn = getattr(ops, op)
        return lambda *a, **k: fn(*a, backend=backend, **k), device
    # compile
    if COMPILE_AT is not None and COMPILE_AT.get(op) != size:
        _skip(op, impl, size, f"torch.compile timed only at the {COMPILE_AT.get(op, 'none')} size in {MODE} mode")
    fn, err = compiled(getattr(ref, op))
    if fn is None:
        _skip(op, impl, size, f"torch.compile unavailable: {err}")
    return fn, device


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", list(AUX_SIZES))
def test_aux_dual_update(benchmark, size, impl):
    op = "aux_dual_update"
    fn, device = _impl_fn(op, impl, size)
    n = AUX_SIZES[size]
    cols = 256 if n >= 256 * 4 else 32
    g = torch.Generator().manual_seed(0)
    z, u, a, gr = (torch.randn(n // cols, cols, generator=g).to(device) for _ in range(4))
    u.mul_(0.1)
    nbytes = 6 * n * 4

    def run():
        fn(z, u, a, gr, **AUX_KW)
        _sync(device)

    try:
        run()  # compile / load outside the timing
    except Exception as e:
        _skip(op, impl, size, f"{type(e).__name__}: {e}")
    t = timed(benchmark, run, rounds=_rounds(nbytes, impl == "eager"), warmup=2 if device == "cuda" else 1)
    record(
        "ops",
        f"{op} {impl} {size}",
        op=op,
        impl=impl,
        size=size,
        device=device,
        shape=[n // cols, cols],
        bytes=nbytes,
        bound="memory",
        **t,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", list(NMF_SIZES))
def test_nmf_mu_update(benchmark, size, impl):
    op = "nmf_mu_update"
    fn, device = _impl_fn(op, impl, size)
    n, d, k = NMF_SIZES[size]
    g = torch.Generator().manual_seed(0)
    V = torch.rand(n, d, generator=g).to(device)
    H0, W0 = torch.rand(n, k, generator=g).to(device), torch.rand(k, d, generator=g).to(device)
    H, W = H0.clone(), W0.clone()
    flops = 4 * n * d * k + 4 * k * k * (n + d)

    def run():
        fn(V, H, W, which="both")
        _sync(device)

    try:
        run()
    except Exception as e:
        _skip(op, impl, size, f"{type(e).__name__}: {e}")
    t = timed(benchmark, run, rounds=_rounds(flops, impl == "eager"), warmup=1)
    record(
        "ops",
        f"{op} {impl} {size}",
        op=op,
        impl=impl,
        size=size,
        device=device,
        shape=[n, d, k],
        flops=flops,
        bound="gemm",
        **t,
    )


def _sklearn_hals(H, A, G, perm):
    """scikit-learn's coordinate-descent pass on the same arrays (numpy views: in place on H), or skip."""
    try:
        from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast
    except ImportError as e:
        return None, f"scikit-learn unavailable: {e}"
    import numpy as np

    Hn, An, Gn, pn = H.numpy(), A.numpy(), G.numpy(), perm.numpy().astype(np.intp)
    return lambda: _update_cdnmf_fast(Hn, Gn, An, pn), None


@pytest.mark.parametrize("impl", IMPLS + ["sklearn"])
@pytest.mark.parametrize("size", list(HALS_SIZES))
def test_nmf_hals_update(benchmark, size, impl):
    op = "nmf_hals_update"
    n, k = HALS_SIZES[size]
    g = torch.Generator().manual_seed(0)
    V, W = torch.rand(n, 3 * k, generator=g), torch.rand(k, 3 * k, generator=g)
    H0, A, G = torch.rand(n, k, generator=g), V @ W.T, W @ W.T
    perm = torch.randperm(k, generator=g)
    if impl == "sklearn":
        device = "cpu"
        H = H0.clone()
        run, err = _sklearn_hals(H, A, G, perm)
        if run is None:
            _skip(op, impl, size, err)
    else:
        fn, device = _impl_fn(op, impl, size)
        H, A, G, perm = H0.to(device), A.to(device), G.to(device), perm.to(device)

        def run():
            fn(H, A, G, perm=perm)
            _sync(device)

    flops = 2 * n * k * k
    try:
        run()
    except Exception as e:
        _skip(op, impl, size, f"{type(e).__name__}: {e}")
    # every round from the same codes (a pass does the same arithmetic whatever the values, but not the same
    # branches in scikit-learn's loop)
    t = timed(benchmark, run, rounds=_rounds(flops, impl == "eager"), warmup=1, setup=lambda: H.copy_(H0))
    record(
        "ops",
        f"{op} {impl} {size}",
        op=op,
        impl=impl,
        size=size,
        device=device,
        shape=[n, k],
        flops=flops,
        bound="gemm",
        **t,
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", list(LIN_SIZES))
def test_linear_block_fwd_bwd(benchmark, size, impl):
    op = "linear_block_fwd_bwd"
    fn, device = _impl_fn(op, impl, size)
    m, kin, nout = LIN_SIZES[size]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, kin, generator=g).to(device)
    w = (torch.randn(nout, kin, generator=g) / kin**0.5).to(device)
    b = torch.randn(nout, generator=g).to(device)
    z = torch.randn(m, nout, generator=g).to(device)
    u = (torch.randn(m, nout, generator=g) * 0.1).to(device)
    flops = 6 * m * kin * nout

    def run():
        fn(x, w, b, z, u, rho=1.0, activation="relu", need_input_grad=True)
        _sync(device)

    try:
        run()
    except Exception as e:
        _skip(op, impl, size, f"{type(e).__name__}: {e}")
    t = timed(benchmark, run, rounds=_rounds(flops, impl == "eager"), warmup=1)
    record(
        "ops",
        f"{op} {impl} {size}",
        op=op,
        impl=impl,
        size=size,
        device=device,
        shape=[m, kin, nout],
        flops=flops,
        bound="gemm",
        **t,
    )
