"""NMF by multiplicative updates: blockadmm against scikit-learn and torchnmf, at equal quality.

    pytest bench/bench_nmf.py --benchmark-columns=min,median,rounds     (or: python -m bench)

Same float32 data (digits: the 1797 x 64 scikit-learn digits, rank 16; MNIST-5k pixels: the 5000 x 784 train +
test images in [0, 1], rank 64; a random uniform 8192 x 512 matrix, rank 64), the same initial factors
(scikit-learn's "random" init scale sqrt(mean(V)/k), seed 0), the same number of iterations, no early stop, and
scikit-learn's BLAS limited to torch's thread count (threadpoolctl); the reconstruction error ||V - H W||_F / ||V||_F
each reaches is recorded, so the speeds are compared at equal quality.
FLOPs per iteration are counted as 4ndk + 4k^2(n+d) for every implementation (the work of the
algorithm, not of a particular way to do it), and reported as GFLOP/s next to the torch.mm ceiling.

  blockadmm cpu     blockadmm.ops.nmf_mu_update(backend="cpu"), which="both", iterated; its epilogue flushes
                    factor entries below sqrt(FLT_MIN) ~ 1.08e-19 to zero: on MNIST-5k multiplicative updates
                    drive tens of thousands of entries that low, and on some CPUs a GEMM whose products of two
                    of them are subnormal takes a slow path (test_nmf_subnormal_gemms measures whether this one
                    does; the reference, scikit-learn and torchnmf keep them);
                    its big GEMMs run one per thread on row blocks (see blockadmm/ops/_cpu.py)
  blockadmm eager   the same through the pure-torch reference (backend="torch")
  blockadmm cpu bf16-gemm   a variant measured here only, not a library option: the two big GEMMs
                    (V Wᵀ, Hᵀ V) on bfloat16 inputs (V converted once per run, inside the timing), float32
                    factors, Gram products and the C++ epilogue. torch on CPU returns bf16 GEMM outputs (no
                    float32 out_dtype), so the numerators are rounded to 8 bits: its error is what decides
  blockadmm NMF     the estimator blockadmm.nmf.NMF(init="custom", solver="mu", tol=0), fit_transform:
                    the op plus its input checks and final error, the same work as the sklearn row's
  sklearn mu        sklearn.decomposition.NMF(solver="mu", init="custom", tol=0), fit_transform on the float32
                    arrays, which it computes in (its time includes its input checks and the final error); the
                    baseline of every "x sklearn"
  sklearn mu float64  the same on float64 copies (what scikit-learn computes in for float64 input)
  torchnmf          torchnmf.nmf.NMF(...).fit(V, beta=2, tol=-inf): autograd-derived MU; it updates
                    the basis before the codes, so its error differs slightly
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from bench._common import pick, record, timed
from blockadmm import ops

RANKS = {"digits": pick(16, 16, 8), "mnist5k": 64, "random8192x512": 64}
ITERS = pick(200, 30, 2)
ROUNDS = pick(5, 1, 1)  # whole runs of ITERS iterations; the least disturbed one is reported (torchnmf: one)
DATASETS = pick(["digits", "mnist5k", "random8192x512"], ["digits", "mnist5k"], ["digits"])
IMPLS = ["blockadmm cpu", "blockadmm eager", "blockadmm cpu bf16-gemm", "blockadmm NMF", "sklearn mu",
         "sklearn mu float64", "torchnmf"]
_CACHE: dict = {}


def _data(name):
    if name not in _CACHE:
        if name == "random8192x512":
            V = torch.rand(8192, 512, generator=torch.Generator().manual_seed(0))
        else:  # mnist5k: all 5000 images; digits: the tiny stand-in for CI (1797 x 64)
            from blockadmm import data

            s = data.load(name)
            V = torch.cat([s.train.X, s.test.X]).flatten(1).float().contiguous()
            V = V / V.max()
        n, d = V.shape
        k = RANKS[name]
        g = torch.Generator().manual_seed(0)
        scale = math.sqrt(float(V.mean()) / k)
        H0 = torch.rand(n, k, generator=g) * scale
        W0 = torch.rand(k, d, generator=g) * scale
        _CACHE[name] = (V, H0, W0)
    return _CACHE[name]


def _rel_err(V, H, W) -> float:
    V64 = V.double()
    return float(torch.linalg.norm(V64 - H.double() @ W.double()) / torch.linalg.norm(V64))


def _skip(dataset, impl, reason):
    record("nmf", f"{dataset} {impl}", dataset=dataset, impl=impl, skipped=reason)
    pytest.skip(reason)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_nmf(benchmark, dataset, impl):
    V, H0, W0 = _data(dataset)
    n, d = V.shape
    k = RANKS[dataset]
    out = {}

    if impl == "blockadmm NMF":
        from blockadmm.nmf import NMF

        def run():
            m = NMF(k, init="custom", solver="mu", tol=0.0, max_iter=ITERS)
            codes = m.fit_transform(V, W=H0, H=W0)
            out.update(H=torch.from_numpy(codes), W=torch.from_numpy(m.components_))

        t = timed(benchmark, run, rounds=ROUNDS, warmup=0)
    elif impl.startswith("blockadmm"):
        backend = "torch" if impl.endswith("eager") else "cpu"
        if backend == "cpu":
            err = ops.backends()["cpu"].load_error()
            if err:
                _skip(dataset, impl, f"cpu backend unavailable: {err}")
        H, W = H0.clone(), W0.clone()

        def setup():
            H.copy_(H0)
            W.copy_(W0)

        if impl.endswith("bf16-gemm"):
            from blockadmm import _native

            mod = _native.load("_cpu")

            def mu(X, num, den):
                mod.nmf_mu_epilogue(
                    X.data_ptr(), num.data_ptr(), den.data_ptr(), X.numel(), 0.0, 0.0, 1e-12, torch.get_num_threads()
                )

            def run():
                Vb = V.bfloat16()
                for _ in range(ITERS):
                    num = torch.mm(Vb, W.T.contiguous().bfloat16()).float()
                    mu(H, num, torch.mm(H, torch.mm(W, W.T)))
                    Ht = H.T.contiguous()
                    num = torch.mm(Ht.bfloat16(), Vb).float()
                    mu(W, num, torch.mm(torch.mm(Ht, H), W))
        else:

            def run():
                for _ in range(ITERS):
                    ops.nmf_mu_update(V, H, W, which="both", backend=backend)

        t = timed(benchmark, run, rounds=ROUNDS, warmup=0, setup=setup)
        out = dict(H=H, W=W)
    elif impl.startswith("sklearn mu"):
        from sklearn.decomposition import NMF
        from threadpoolctl import threadpool_limits

        dtype = np.float64 if impl.endswith("float64") else np.float32
        Vn, H0n, W0n = (t.numpy().astype(dtype) for t in (V, H0, W0))

        def run():
            m = NMF(n_components=k, init="custom", solver="mu", beta_loss="frobenius", tol=0.0, max_iter=ITERS)
            with warnings.catch_warnings(), threadpool_limits(torch.get_num_threads()):
                warnings.simplefilter("ignore")
                Hs = m.fit_transform(Vn, W=H0n.copy(), H=W0n.copy())
            out.update(
                H=torch.from_numpy(np.ascontiguousarray(Hs)),
                W=torch.from_numpy(np.ascontiguousarray(m.components_)),
                dtype=str(Hs.dtype),
            )

        t = timed(benchmark, run, rounds=ROUNDS, warmup=0)
        if dtype == np.float32:  # its final factors keep their subnormal entries: test_nmf_subnormal_gemms
            _CACHE[("sklearn factors", dataset)] = (out["H"], out["W"])
    else:  # torchnmf
        try:
            from torchnmf.nmf import NMF as TNMF
        except Exception as e:
            _skip(dataset, impl, f"torchnmf not installed ({type(e).__name__}: {e}); pip install torchnmf")

        def run():
            m = TNMF(W=W0.T.clone(), H=H0.clone())  # torchnmf: V ~= H W^T, W is d x k
            m.fit(V, beta=2, tol=float("-inf"), max_iter=ITERS)
            out.update(H=m.H.detach().clone(), W=m.W.detach().T.contiguous())

        t = timed(benchmark, run, rounds=1, warmup=0)  # one round: by far the slowest implementation here

    if not out:  # timing disabled and nothing ran (never: pedantic runs once even then)
        pytest.fail("the implementation did not run")
    flops = 4 * n * d * k + 4 * k * k * (n + d)
    err = _rel_err(V, out["H"], out["W"])
    assert math.isfinite(err)
    record(
        "nmf",
        f"{dataset} {impl}",
        dataset=dataset,
        impl=impl,
        shape=[n, d, k],
        iters=ITERS,
        flops_per_iter=flops,
        rel_err=err,
        dtype=out.get("dtype", str(out["H"].dtype)),
        threads=torch.get_num_threads(),  # torch's, and (threadpoolctl) scikit-learn's BLAS's
        s_per_iter=None if t["s"] is None else t["s"] / ITERS,
        **t,
    )


@pytest.mark.parametrize("dataset", DATASETS)
def test_nmf_big_gemms(benchmark, dataset):
    """What the update's shapes allow torch's own GEMM: the two n x d x k GEMMs of an iteration (V Wᵀ and Hᵀ V,
    4ndk of its 4ndk + 4k²(n+d) FLOPs) alone, as plain torch.mm into kept outputs, nothing else, as a fraction
    of the square torch.mm rate. (The cpu backend splits these GEMMs over the threads itself, blockadmm/ops/_cpu.py,
    and can run above this.)"""
    V, H0, W0 = _data(dataset)
    n, d = V.shape
    H, W = H0.clone(), W0.clone()
    k = RANKS[dataset]
    num_h, num_w = torch.empty(n, k), torch.empty(k, d)

    def run():
        for _ in range(ITERS):
            torch.mm(V, W.T, out=num_h)
            torch.mm(H.T, V, out=num_w)

    t = timed(benchmark, run, rounds=ROUNDS, warmup=0)
    record(
        "nmf_big_gemms",
        f"{dataset} big GEMMs torch.mm",
        dataset=dataset,
        shape=[n, d, k],
        iters=ITERS,
        flops_per_iter=4 * n * d * k,
        s_per_iter=None if t["s"] is None else t["s"] / ITERS,
        **t,
    )


@pytest.mark.parametrize("operands", ["subnormal kept", "subnormal flushed"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_nmf_subnormal_gemms(benchmark, dataset, operands):
    """Whether this CPU's GEMMs slow down on subnormal operands: an iteration's four products (V Wᵀ, Hᵀ V, H (W Wᵀ),
    (Hᵀ H) W) through numpy's BLAS, as scikit-learn runs them, on scikit-learn's final float32 factors as they are
    against the same factors with their subnormal entries set to zero."""
    from threadpoolctl import threadpool_limits

    V, _, _ = _data(dataset)
    if ("sklearn factors", dataset) not in _CACHE:
        _skip(dataset, f"subnormal GEMMs {operands}", "the sklearn mu row did not run")
    tiny = np.finfo(np.float32).tiny
    H, W = (t.numpy() for t in _CACHE[("sklearn factors", dataset)])
    n_subnormal = int(sum(((x != 0) & (np.abs(x) < tiny)).sum() for x in (H, W)))
    if operands == "subnormal flushed":
        H, W = (np.where(np.abs(x) < tiny, np.float32(0), x) for x in (H, W))
    Vn = V.numpy()

    def run():
        with threadpool_limits(torch.get_num_threads()):
            for _ in range(ITERS):
                Vn @ W.T, H.T @ Vn, H @ (W @ W.T), (H.T @ H) @ W

    t = timed(benchmark, run, rounds=pick(5, 3, 1), warmup=1)  # the warm-up: numpy's first allocations
    record("nmf_subnormal", f"{dataset} subnormal GEMMs {operands}", dataset=dataset, operands=operands,
           n_subnormal=n_subnormal, iters=ITERS, s_per_iter=None if t["s"] is None else t["s"] / ITERS, **t)
