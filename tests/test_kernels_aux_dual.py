"""aux_dual_update: every compiled backend against the torch reference (DESIGN §4)."""
import pytest
import torch
from kernel_backends import backend_params, half_rule, half_skip_reason

from blockadmm import Prox, ops

PROXES = [None, Prox.nonneg(), Prox.box(-0.3, 0.5), Prox.l1(0.7)]
BACKENDS = backend_params()


def _inputs(m, d, table_rows, indexed, with_g, device, dtype=torch.float32):
    z = torch.randn(table_rows, d, device=device).to(dtype)
    u = (torch.randn(table_rows, d, device=device) * 0.1).to(dtype)
    a = torch.randn(m, d, device=device).to(dtype)
    g = torch.randn(m, d, device=device).to(dtype) if with_g else None
    index = torch.randperm(table_rows, device=device)[:m] if indexed else None
    return z, u, a, g, index


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("prox", PROXES, ids=lambda p: "none" if p is None else p.kind)
@pytest.mark.parametrize("indexed", [False, True], ids=["plain", "indexed"])
@pytest.mark.parametrize("step", ["grad", "sign"])
@pytest.mark.parametrize("with_g", [False, True], ids=["g0", "g"])
def test_aux_dual_matches_reference(backend, device, prox, indexed, step, with_g, nan_empty):
    # 37 x 61 = 2257 elements: three Triton programs of 1024, the last one masked
    m, d = 37, 61
    table_rows = 80 if indexed else m
    z, u, a, g, index = _inputs(m, d, table_rows, indexed, with_g, device)
    z_ref, u_ref = z.clone(), u.clone()
    kw = {"rho": 1.7, "lr": 0.23, "dual_step": 0.8, "prox": prox, "index": index, "step": step}
    res_ref = ops.aux_dual_update(z_ref, u_ref, a, g, backend="torch", **kw)
    z0, u0 = z.clone(), u.clone()
    res = ops.aux_dual_update(z, u, a, g, backend=backend, **kw)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-6)
    assert res.dtype == torch.float32 and res.dim() == 0
    torch.testing.assert_close(res, res_ref, rtol=1e-4, atol=1e-5)
    rows = index if indexed else torch.arange(m, device=device)
    # the residual the kernel returns is the one its outputs give
    torch.testing.assert_close(res.double(), (z[rows].double() - a.double()).square().sum(), rtol=1e-4, atol=1e-5)
    if indexed:  # rows outside the batch are untouched
        untouched = torch.ones(table_rows, dtype=torch.bool, device=device)
        untouched[rows] = False
        assert torch.equal(z[untouched], z0[untouched]) and torch.equal(u[untouched], u0[untouched])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("indexed", [False, True], ids=["plain", "indexed"])
def test_aux_dual_large_multithreaded(backend, device, indexed):
    """Several OpenMP chunks / many Triton programs, a feature size that is not a multiple of anything."""
    if backend == "triton" and device == "cpu":
        m, d = 70, 333  # 23k elements, 23 interpreted programs
    else:
        m, d = 700, 333
    z, u, a, g, index = _inputs(m, d, 2 * m if indexed else m, indexed, True, device)
    z_ref, u_ref = z.clone(), u.clone()
    kw = {"rho": 0.9, "lr": 0.1, "prox": Prox.box(-1.0, 1.0), "index": index}
    res_ref = ops.aux_dual_update(z_ref, u_ref, a, g, backend="torch", **kw)
    res = ops.aux_dual_update(z, u, a, g, backend=backend, **kw)
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res, res_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_aux_dual_feature_shape_and_empty_batch(backend, device):
    """Tables of shape (N, C, H, W) and an empty mini-batch."""
    z = torch.randn(20, 3, 5, 7, device=device)
    u = torch.randn_like(z) * 0.1
    a, g = torch.randn(9, 3, 5, 7, device=device), torch.randn(9, 3, 5, 7, device=device)
    index = torch.randperm(20, device=device)[:9]
    z_ref, u_ref = z.clone(), u.clone()
    kw = {"rho": 1.3, "lr": 0.2, "prox": Prox.nonneg(), "index": index.int()}
    r_ref = ops.aux_dual_update(z_ref, u_ref, a, g, backend="torch", **kw)
    r = ops.aux_dual_update(z, u, a, g, backend=backend, **kw)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(u, u_ref)
    torch.testing.assert_close(r, r_ref, rtol=1e-4, atol=1e-5)
    empty = torch.empty(0, 3, 5, 7, device=device)
    r0 = ops.aux_dual_update(
        z, u, empty, None, rho=1.0, lr=0.1, index=torch.empty(0, dtype=torch.long, device=device), backend=backend
    )
    assert float(r0) == 0.0
    torch.testing.assert_close(z, z_ref)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("indexed", [False, True], ids=["plain", "indexed"])
@pytest.mark.parametrize("prox", [None, Prox.l1(0.3)], ids=["none", "l1"])
def test_aux_dual_half_precision(backend, device, dtype, indexed, prox, nan_empty):
    if half_skip_reason(backend, device, dtype):
        pytest.skip(half_skip_reason(backend, device, dtype))
    m, d = 37, 61
    table_rows = 80 if indexed else m
    z, u, a, g, index = _inputs(m, d, table_rows, indexed, True, device, dtype)
    kw = {"rho": 1.7, "lr": 0.23, "dual_step": 0.8, "prox": prox, "index": index}
    zt, ut = z.float(), u.float()  # truth: the same update in float32, unrounded
    res_t = ops.aux_dual_update(zt, ut, a.float(), g.float(), backend="torch", **kw)
    zr, ur = z.clone(), u.clone()  # the reference run in the low precision
    res_r = ops.aux_dual_update(zr, ur, a, g, backend="torch", **kw)
    res_k = ops.aux_dual_update(z, u, a, g, backend=backend, **kw)
    assert z.dtype == dtype and u.dtype == dtype
    half_rule(z, zr, zt, "z")
    half_rule(u, ur, ut, "u")
    half_rule(res_k.reshape(1), res_r.reshape(1), res_t.reshape(1), "residual", slack=1e-3 * float(res_t))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_aux_dual_custom_prox_is_refused(backend, device):
    z = torch.zeros(4, 3, device=device)
    with pytest.raises(ops.BackendUnavailable, match="Prox.custom"):
        ops.aux_dual_update(z, z.clone(), z.clone(), rho=1, lr=1, prox=Prox.custom(lambda t, lr: t), backend=backend)
    # auto falls back to the torch reference silently
    ops.aux_dual_update(z, z.clone(), z.clone(), rho=1, lr=1, prox=Prox.custom(lambda t, lr: t))
