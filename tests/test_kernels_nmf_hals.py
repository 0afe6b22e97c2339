"""nmf_hals_update: the torch reference against a literal float64 transcription of scikit-learn's loop and
against scikit-learn's own `_update_cdnmf_fast`; every compiled backend against the reference; the HALS
invariants; perm; bad input (DESIGN §4, issue 27)."""

import itertools

import numpy as np
import pytest
import torch
from kernel_backends import backend_params

from blockadmm import ops

BACKENDS = backend_params()
ALL = [pytest.param("torch", "cpu", id="torch"), *BACKENDS]
# (n, k): a masked row tail and several row blocks (n = 45, 70), k not a power of two (7, 37)
SHAPES = [(45, 7), (70, 37), (3, 1)]


def _problem(n, k, d=None, dtype=torch.float64, device="cpu", l1=0.0, l2=0.0, zeros=True):
    """H, A = V Wᵀ − l1, G = W Wᵀ + l2·I for a random non-negative V (n×d) and factors; some H entries 0."""
    d = d or k + 5
    V = torch.rand(n, d, dtype=torch.float64)
    W = torch.rand(k, d, dtype=torch.float64) + 0.05
    H = torch.rand(n, k, dtype=torch.float64)
    if zeros:
        H[torch.rand(n, k) < 0.2] = 0.0
    A = V @ W.T - l1
    G = W @ W.T + l2 * torch.eye(k, dtype=torch.float64)
    return (t.to(device=device, dtype=dtype) for t in (H, A, G))


def _sklearn_loop(H, A, G, perm):
    """scikit-learn's _update_cdnmf_fast written out element by element in Python floats (float64)."""
    H = [[float(x) for x in row] for row in H.tolist()]
    A, G = A.tolist(), G.tolist()
    k = len(G)
    violation = 0.0
    for t in perm:
        for i in range(len(H)):
            grad = -A[i][t]
            for r in range(k):
                grad += G[t][r] * H[i][r]
            pg = min(0.0, grad) if H[i][t] == 0 else grad
            violation += abs(pg)
            hess = G[t][t]
            if hess != 0:
                H[i][t] = max(H[i][t] - grad / hess, 0.0)
    return torch.tensor(H, dtype=torch.float64), violation


def _objective(V, H, W):
    return float((V - H @ W).square().sum())


@pytest.mark.parametrize("shuffle", [False, True])
def test_reference_matches_literal_sklearn_loop(shuffle):
    H, A, G = _problem(6, 5, l1=0.05, l2=0.1)
    G[2, 2] = 0.0  # a zero Hessian: that component is not updated, its violation still counts
    perm = torch.randperm(5) if shuffle else None
    expect_H, expect_v = _sklearn_loop(H, A, G, perm.tolist() if shuffle else range(5))
    v = ops.nmf_hals_update(H, A, G, perm=perm, backend="torch")
    assert v.dtype == torch.float64 and v.dim() == 0
    torch.testing.assert_close(H, expect_H, rtol=1e-12, atol=1e-12)
    assert abs(float(v) - expect_v) <= 1e-12 * max(1.0, expect_v)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_scikit_learn_update_cdnmf_fast(backend, device, shape):
    cdnmf = pytest.importorskip("sklearn.decomposition._cdnmf_fast")
    n, k = shape
    H, A, G = _problem(n, k, l1=0.02, l2=0.05)
    perm = torch.randperm(k)
    Hs = H.numpy().copy()
    expect_v = cdnmf._update_cdnmf_fast(Hs, G.numpy(), A.numpy(), perm.numpy().astype(np.intp))
    H, A, G, perm = (t.to(device) for t in (H, A, G, perm))
    v = ops.nmf_hals_update(H, A, G, perm=perm, backend=backend)
    torch.testing.assert_close(H.cpu(), torch.from_numpy(Hs), rtol=1e-10, atol=1e-10)
    assert v.dtype == torch.float64 and v.device == H.device
    assert abs(float(v) - expect_v) <= 1e-10 * max(1.0, expect_v)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "perm"])
def test_backend_matches_reference(backend, device, dtype, shape, shuffle, nan_empty):
    """Fresh random inputs of odd sizes, a zero Hessian entry, outputs the kernels allocate NaN-prefilled."""
    n, k = shape
    H, A, G = _problem(n, k, dtype=dtype, device=device, l1=0.02, l2=0.05)
    if k > 1:
        G[k // 2, k // 2] = 0.0
    perm = torch.randperm(k, device=device) if shuffle else None
    Hr = H.clone()
    vr = ops.nmf_hals_update(Hr, A, G, perm=perm, backend="torch")
    v = ops.nmf_hals_update(H, A, G, perm=perm, backend=backend)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H, Hr, **tol)
    assert v.dtype == vr.dtype and v.device == H.device and v.dim() == 0
    torch.testing.assert_close(v, vr, **tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backend_zero_rows(backend, device):
    fn = ops.backends()[backend].ops()["nmf_hals_update"]
    v = fn(torch.empty(0, 5, device=device), torch.empty(0, 5, device=device), torch.eye(5, device=device))
    assert v.dtype == torch.float32 and float(v) == 0.0


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpu_kernel_threads_match_reference_and_one_thread(threads, dtype):
    """n = 1000 rows (above the kernel's serial threshold) in blocks with a tail, over 2 and 3 OpenMP threads:
    the reference's values, and exactly the one-thread codes and violation (the sum runs in row order)."""
    if ops.backends()["cpu"].load_error() is not None:
        pytest.skip(ops.backends()["cpu"].load_error())
    H, A, G = _problem(1000, 37, dtype=dtype)
    perm = torch.randperm(37)
    Hr, H1 = H.clone(), H.clone()
    vr = ops.nmf_hals_update(Hr, A, G, perm=perm, backend="torch")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        v1 = ops.nmf_hals_update(H1, A, G, perm=perm, backend="cpu")
        torch.set_num_threads(threads)
        v = ops.nmf_hals_update(H, A, G, perm=perm, backend="cpu")
    finally:
        torch.set_num_threads(saved)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(H, Hr, **tol)
    torch.testing.assert_close(v, vr, **tol)
    assert torch.equal(H, H1) and torch.equal(v, v1)


def test_auto_on_cpu_is_the_cpu_kernel_for_both_dtypes():
    from blockadmm.ops._dispatch import resolve

    cpu = ops.backends()["cpu"]
    if cpu.load_error() is not None:
        pytest.skip(cpu.load_error())
    for dtype in (torch.float32, torch.float64):
        H, A, G = _problem(4, 3, dtype=dtype)
        fn = resolve("nmf_hals_update", "auto", "cpu", {"perm": None}, {"H": H, "A": A, "G": G})
        assert fn is cpu.ops()["nmf_hals_update"]


def test_triton_refuses_k_beyond_its_register_tile():
    triton = ops.backends()["triton"]
    if triton.load_error() is not None:
        pytest.skip(triton.load_error())
    from blockadmm.kernels.nmf_hals import MAX_K

    k = MAX_K + 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    H, A, G = torch.zeros(1, k, device=device), torch.zeros(1, k, device=device), torch.eye(k, device=device)
    with pytest.raises(ops.BackendUnavailable, match=f"k <= {MAX_K}"):
        ops.nmf_hals_update(H, A, G, backend="triton")


def test_float32_violation_dtype_and_sklearn_float32():
    cdnmf = pytest.importorskip("sklearn.decomposition._cdnmf_fast")
    H, A, G = _problem(45, 7, dtype=torch.float32)
    Hs = H.numpy().copy()
    expect_v = cdnmf._update_cdnmf_fast(Hs, G.numpy(), A.numpy(), np.arange(7, dtype=np.intp))
    v = ops.nmf_hals_update(H, A, G, backend="torch")
    assert v.dtype == torch.float32 and v.device == H.device
    torch.testing.assert_close(H, torch.from_numpy(Hs), rtol=1e-4, atol=1e-5)
    assert abs(float(v) - expect_v) <= 1e-4 * expect_v


def test_perm_is_honoured():
    """Another order gives other codes, the one the literal loop gives for that order."""
    H, A, G = _problem(8, 6)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    H1, H2 = H.clone(), H.clone()
    ops.nmf_hals_update(H1, A, G, backend="torch")
    ops.nmf_hals_update(H2, A, G, perm=perm, backend="torch")
    assert not torch.allclose(H1, H2)
    torch.testing.assert_close(H2, _sklearn_loop(H, A, G, perm.tolist())[0], rtol=1e-12, atol=1e-12)


def test_empty_rows_return_zero():
    for backend in ("torch", "auto"):
        v = ops.nmf_hals_update(torch.empty(0, 4), torch.empty(0, 4), torch.eye(4), backend=backend)
        assert v.dtype == torch.float32 and float(v) == 0.0


def _bad(H, A, G, match, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        ops.nmf_hals_update(H, A, G, **kw)


def test_bad_input_errors():
    H, A, G = _problem(5, 3, dtype=torch.float32)
    _bad(H, A[:, :2], G, r"need H \(n×k\), A")
    _bad(H, A, G[:2], r"need H \(n×k\), A")
    _bad(H[0], A, G, "H must be 2-D")
    _bad(H, A.double(), G, r"A is torch.float64 but H is torch.float32; pass A.to\(H.dtype\)", TypeError)
    _bad(H.half(), A.half(), G.half(), "H must be float32 or float64", TypeError)
    _bad(H, A.numpy(), G, "A must be a torch.Tensor", TypeError)
    _bad(H.T.contiguous().T, A, G, r"H is updated in place and must be contiguous")
    _bad(H, H, G, "H and A share memory")
    HG = torch.rand(3, 3)
    _bad(HG[:, :3], torch.rand(3, 3), HG, "H and G share memory")
    _bad(H, A, G, "permutation", perm=torch.tensor([0, 0, 2]))
    _bad(H, A, G, "length k = 3", perm=torch.tensor([0, 1]))
    _bad(H, A, G, "length k = 3", perm=torch.tensor([0.0, 1.0, 2.0]))
    _bad(H, A, G, "LongTensor", TypeError, perm=[0, 1, 2])
    _bad(H, A, G, "unknown backend", ops.BackendUnavailable, backend="nope")
    if torch.cuda.is_available():
        _bad(H, A.cuda(), G, "one device")


@pytest.mark.parametrize("backend,device", ALL)
def test_invariants_nonneg_and_objective_never_rises(backend, device):
    """Alternating H and W passes (W through the transposed problem): factors stay ≥ 0 and the Frobenius
    objective never rises across a pass (exact coordinate minimisation)."""
    n, k, d = 40, 6, 35
    V = torch.rand(n, d, dtype=torch.float64, device=device)
    H = torch.rand(n, k, dtype=torch.float64, device=device)
    Wt = torch.rand(d, k, dtype=torch.float64, device=device)
    losses = [_objective(V, H, Wt.T)]
    for _ in range(6):
        ops.nmf_hals_update(H, V @ Wt, Wt.T @ Wt, perm=torch.randperm(k, device=device), backend=backend)
        assert (H >= 0).all()
        losses.append(_objective(V, H, Wt.T))
        ops.nmf_hals_update(Wt, V.T @ H, H.T @ H, backend=backend)
        assert (Wt >= 0).all()
        losses.append(_objective(V, H, Wt.T))
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.9 * losses[0]
