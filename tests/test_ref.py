"""The pure-torch references against a direct float64 / autograd computation of each formula."""
import itertools

import pytest
import torch

from blockadmm import ops
from blockadmm.prox import Prox
from blockadmm.ref import ACTIVATIONS

PROXES = [None, Prox.nonneg(), Prox.box(-0.3, 0.5), Prox.l1(0.7), Prox.custom(lambda z, lr: z.clamp(-1, 1))]


def _prox64(prox, z, lr):
    if prox is None:
        return z
    if prox.kind == "l1":
        return torch.where(z.abs() > lr * prox.lam, z - lr * prox.lam * z.sign(), torch.zeros_like(z))
    return prox.apply(z, lr)


@pytest.mark.parametrize("prox", PROXES, ids=lambda p: "none" if p is None else p.kind)
@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("step", ["grad", "sign"])
@pytest.mark.parametrize("with_g", [False, True])
def test_aux_dual_update_matches_formula(prox, indexed, step, with_g):
    m, n_rows, d = 37, 53, 19
    rho, lr, dual = 1.7, 0.23, 0.8
    table_rows = n_rows if indexed else m
    z = torch.randn(table_rows, d)
    u = torch.randn(table_rows, d) * 0.1
    a = torch.randn(m, d)
    g = torch.randn(m, d) if with_g else None
    index = torch.randperm(n_rows)[:m] if indexed else None
    z0, u0 = z.double().clone(), u.double().clone()
    rows = index if indexed else torch.arange(m)

    res = ops.aux_dual_update(z, u, a, g, rho=rho, lr=lr, dual_step=dual, prox=prox, index=index, step=step,
                              backend="torch")

    zj, uj = z0[rows], u0[rows]
    d64 = rho * (zj - a.double() + uj) + (g.double() if with_g else 0)
    zn = _prox64(prox, zj - lr * (d64.sign() if step == "sign" else d64), lr)
    un = uj + dual * (zn - a.double())
    torch.testing.assert_close(z[rows].double(), zn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u[rows].double(), un, rtol=1e-5, atol=1e-5)
    untouched = torch.ones(table_rows, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(z[untouched].double(), z0[untouched]) and torch.equal(u[untouched].double(), u0[untouched])
    assert res.dtype == torch.float32
    torch.testing.assert_close(res.double(), (zn - a.double()).square().sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["H", "W", "both"])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.05, 0.1)])
def test_nmf_mu_update_matches_formula(which, l1, l2):
    n, k, d = 45, 7, 29
    V = torch.rand(n, d)
    H, W = torch.rand(n, k), torch.rand(k, d)
    H64, W64, V64 = H.double(), W.double(), V.double()
    eps = 1e-12
    ops.nmf_mu_update(V, H, W, which=which, eps=eps, l1=l1, l2=l2, backend="torch")
    if which in ("H", "both"):
        H64 = H64 * (V64 @ W64.T) / (H64 @ (W64 @ W64.T) + l1 + l2 * H64 + eps)
    if which in ("W", "both"):
        W64 = W64 * (H64.T @ V64) / ((H64.T @ H64) @ W64 + l1 + l2 * W64 + eps)
    torch.testing.assert_close(H.double(), H64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(W.double(), W64, rtol=1e-5, atol=1e-6)
    assert (H >= 0).all() and (W >= 0).all()


def test_nmf_loss_does_not_rise():
    V = torch.rand(60, 33)
    H, W = torch.rand(60, 5), torch.rand(5, 33)
    losses = []
    for _ in range(20):
        ops.nmf_mu_update(V, H, W, which="both", backend="torch")
        losses.append(float((V - H @ W).square().sum()))
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(losses))


def _assert_loss_and_grads(got, loss64, grads, atol):
    """float32 (loss, grad_input, grad_weight, grad_bias or None) against float64 autograd: loss64 and the
    gradients in [input, weight(, bias)]."""
    loss, gx, gw, gb = got
    torch.testing.assert_close(loss.double(), loss64.detach(), rtol=1e-5, atol=atol)
    for name, g, want in zip(("input", "weight", "bias"), (gx, gw, gb), grads):
        torch.testing.assert_close(g.double(), want, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"grad_{name}: {m}")
    if len(grads) == 2:
        assert gb is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_block_fwd_bwd_matches_autograd(activation, with_bias):
    m, k, n = 23, 31, 17
    rho = 2.5
    x = torch.randn(m, k, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True) if with_bias else None
    z, u = torch.randn(m, n, dtype=torch.float64), torch.randn(m, n, dtype=torch.float64) * 0.1
    act = {
        "identity": lambda t: t,
        "relu": torch.relu,
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.01),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }[activation]
    out64 = act(torch.nn.functional.linear(x, w, b))
    loss64 = rho / (2 * m) * (out64 - z - u).square().sum()  # u with aux_dual_update's sign
    grads = torch.autograd.grad(loss64, [x, w] + ([b] if with_bias else []))

    loss, gw, gb, gx, out = ops.linear_block_fwd_bwd(
        x.detach().float(), w.detach().float(), None if b is None else b.detach().float(), z.float(), u.float(),
        rho=rho, activation=activation, backend="torch",
    )
    torch.testing.assert_close(out.double(), out64.detach(), rtol=1e-5, atol=1e-5)
    _assert_loss_and_grads((loss, gx, gw, gb), loss64, grads, atol=1e-5)
    *_, gx_none, _ = ops.linear_block_fwd_bwd(x.detach().float(), w.detach().float(), None, z.float(), u.float(),
                                              rho=rho, activation=activation, need_input_grad=False)
    assert gx_none is None


def test_unknown_backend_is_a_clear_error():
    z = torch.zeros(3, 2)
    with pytest.raises(ops.BackendUnavailable, match="unknown backend 'nope'"):
        ops.aux_dual_update(z, z.clone(), z.clone(), rho=1.0, lr=0.1, backend="nope")


def test_backend_env_var_is_honoured(monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, "nope")
    z = torch.zeros(3, 2)
    with pytest.raises(ops.BackendUnavailable, match="BLOCKADMM_BACKEND"):
        ops.aux_dual_update(z, z.clone(), z.clone(), rho=1.0, lr=0.1)


def test_op_argument_errors():
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="must be unique"):
        ops.aux_dual_update(torch.zeros(10, 3), torch.zeros(10, 3), z, rho=1, lr=1, index=torch.tensor([1, 1, 2, 3]))
    with pytest.raises(IndexError, match="table has 10 rows"):
        ops.aux_dual_update(torch.zeros(10, 3), torch.zeros(10, 3), z, rho=1, lr=1, index=torch.tensor([1, 11, 2, 3]))
    with pytest.raises(ValueError, match="without index they must match"):
        ops.aux_dual_update(z, z.clone(), torch.zeros(4, 2), rho=1, lr=1)
    with pytest.raises(ValueError, match="must be contiguous"):
        zt = torch.zeros(3, 4).T
        ops.aux_dual_update(zt, zt.clone(), zt.contiguous(), rho=1, lr=1)
    with pytest.raises(ValueError, match="H \\(n×k\\)"):
        ops.nmf_mu_update(torch.rand(5, 4), torch.rand(5, 2), torch.rand(3, 4))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_derivative_from_output_matches_derivative_of_pre(activation):
    from blockadmm.engine.closed_forms import derivative_from_output
    from blockadmm.ref.linear_block import activation_and_derivative

    pre = torch.randn(37, 19) * 3
    pre[0, :5] = 0.0  # the kink of relu / leaky relu: both sides take derivative 0 / slope there
    out, dact = activation_and_derivative(pre, activation)
    torch.testing.assert_close(derivative_from_output(out, activation), dact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_cross_entropy_matches_autograd(with_bias):
    from blockadmm.engine.closed_forms import linear_cross_entropy

    m, k, c = 29, 13, 7
    x = torch.randn(m, k, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, requires_grad=True) if with_bias else None
    y = torch.randint(0, c, (m,))
    loss64 = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w, b), y)
    grads = torch.autograd.grad(loss64, [x, w] + ([b] if with_bias else []))

    xf, wf, bf = x.detach().float(), w.detach().float(), None if b is None else b.detach().float()
    loss, gw, gb, gx = linear_cross_entropy(xf, wf, bf, y)
    _assert_loss_and_grads((loss, gx, gw, gb), loss64, grads, atol=1e-6)
    _, gw_none, gb_none, gx_only = linear_cross_entropy(xf, wf, bf, y, need_weight_grad=False)
    assert gw_none is None and gb_none is None
    torch.testing.assert_close(gx_only, gx)
    assert linear_cross_entropy(xf, wf, bf, y, need_input_grad=False)[3] is None
