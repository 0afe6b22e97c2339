"""nmf_mu_update: every compiled backend against the torch reference, plus the NMF invariants (DESIGN §4)."""
import itertools

import pytest
import torch
from kernel_backends import backend_params, half_rule, half_skip_reason

from blockadmm import ops

BACKENDS = backend_params()
# (n, k, d): k = 7 updates in place (one column tile); k = 70 spans two column tiles and goes through a
# temporary. n = 45 and d = 70 give masked tails, several row tiles and a K loop in both updates.
SHAPES = [(45, 7, 70), (45, 70, 37)]


def _factors(n, k, d, device, dtype=torch.float32):
    V = torch.rand(n, d, device=device).to(dtype)
    H = (torch.rand(n, k, device=device) + 0.05).to(dtype)
    W = (torch.rand(k, d, device=device) + 0.05).to(dtype)
    return V, H, W


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("which", ["H", "W", "both"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.05, 0.1)], ids=["plain", "reg"])
def test_nmf_matches_reference(backend, device, which, shape, l1, l2, nan_empty):
    V, H, W = _factors(*shape, device)
    Hr, Wr = H.clone(), W.clone()
    ops.nmf_mu_update(V, Hr, Wr, which=which, l1=l1, l2=l2, backend="torch")
    ops.nmf_mu_update(V, H, W, which=which, l1=l1, l2=l2, backend=backend)
    torch.testing.assert_close(H, Hr, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(W, Wr, rtol=1e-4, atol=1e-6)
    assert (H >= 0).all() and (W >= 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nmf_invariants(backend, device):
    """Factors stay non-negative and the Frobenius loss never rises across updates."""
    V, H, W = _factors(40, 6, 35, device)
    losses = [float((V - H @ W).square().sum())]
    for _ in range(8):
        ops.nmf_mu_update(V, H, W, which="both", backend=backend)
        assert (H >= 0).all() and (W >= 0).all()
        losses.append(float((V - H @ W).square().sum()))
    assert all(b <= a * (1 + 1e-5) for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("which", ["H", "both"])
def test_nmf_half_precision(backend, device, dtype, which, nan_empty):
    if half_skip_reason(backend, device, dtype):
        pytest.skip(half_skip_reason(backend, device, dtype))
    V, H, W = _factors(45, 7, 70, device, dtype)
    Ht, Wt = H.float(), W.float()
    ops.nmf_mu_update(V.float(), Ht, Wt, which=which, backend="torch")  # truth: float32, unrounded
    Hr, Wr = H.clone(), W.clone()
    ops.nmf_mu_update(V, Hr, Wr, which=which, backend="torch")          # reference in low precision
    ops.nmf_mu_update(V, H, W, which=which, backend=backend)
    assert H.dtype == dtype and W.dtype == dtype
    half_rule(H, Hr, Ht, "H")
    half_rule(W, Wr, Wt, "W")


def test_nmf_auto_on_cpu_is_the_cpu_module():
    from blockadmm.ops._dispatch import resolve

    cpu = ops.backends()["cpu"]
    if cpu.load_error() is not None:
        pytest.skip(cpu.load_error())
    V, H, W = _factors(5, 2, 4, "cpu")
    fn = resolve("nmf_mu_update", "auto", "cpu", {"which": "both"}, {"V": V, "H": H, "W": W})
    assert fn is cpu.ops()["nmf_mu_update"]
    # a half-precision call is not the cpu module's: auto routes it to the torch reference
    fn = resolve("nmf_mu_update", "auto", "cpu", {"which": "both"}, {"V": V.half(), "H": H.half(), "W": W.half()})
    assert fn is ops.backends()["torch"].ops()["nmf_mu_update"]
    with pytest.raises(ops.BackendUnavailable, match="float32 only"):
        ops.nmf_mu_update(V.half(), H.half(), W.half(), backend="cpu")


def _cpu_module():
    cpu = ops.backends()["cpu"]
    if cpu.load_error() is not None:
        pytest.skip(cpu.load_error())
    from blockadmm.ops import _cpu

    return _cpu


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("which", ["H", "W", "both"])
def test_nmf_cpu_split_gemms_match_reference(threads, which, monkeypatch, nan_empty):
    """The GEMMs split over threads (forced here on small shapes) give the reference's update; n = 47
    leaves a remainder row block for every thread count."""
    _cpu = _cpu_module()
    monkeypatch.setattr(_cpu, "_SPLIT_MIN_MACS", 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        V, H, W = _factors(47, 9, 31, "cpu")
        Hr, Wr = H.clone(), W.clone()
        for _ in range(3):
            ops.nmf_mu_update(V, Hr, Wr, which=which, l1=0.01, backend="torch")
            ops.nmf_mu_update(V, H, W, which=which, l1=0.01, backend="cpu")
    finally:
        torch.set_num_threads(saved)
    torch.testing.assert_close(H, Hr, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(W, Wr, rtol=1e-4, atol=1e-6)


def test_nmf_cpu_split_helpers_exact_shapes(monkeypatch):
    _cpu = _cpu_module()
    monkeypatch.setattr(_cpu, "_SPLIT_MIN_MACS", 0)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        A, B = torch.rand(11, 5), torch.rand(5, 3)
        out = torch.full((11, 3), float("nan"))
        _cpu._mm_rows(A, B, out)
        torch.testing.assert_close(out, A @ B)
        C = torch.rand(11, 4)
        out = torch.full((5, 4), float("nan"))
        _cpu._mm_inner(A, C, out, "test_partial")
        torch.testing.assert_close(out, A.T @ C)
    finally:
        torch.set_num_threads(saved)


def test_nmf_cpu_flushes_entries_below_sqrt_float_min():
    """Entries that fall below sqrt(FLT_MIN) become 0, so no product of two factor entries inside a GEMM is
    subnormal (the slow path); entries above it are the reference's."""
    _cpu_module()
    V = torch.ones(2, 3)
    H = torch.tensor([[1e-19], [1.0]])  # with W = 1e-19: row 0 becomes ~3e-26 (flushed), row 1 ~3e-7 (kept)
    W = torch.full((1, 3), 1e-19)
    Hr, Wr = H.clone(), W.clone()
    ops.nmf_mu_update(V, Hr, Wr, which="H", backend="torch")
    ops.nmf_mu_update(V, H, W, which="H", backend="cpu")
    small = Hr.abs() < 1.0842022e-19
    assert small.any() and (~small).any()
    assert (H[small] == 0).all()
    torch.testing.assert_close(H[~small], Hr[~small])
