"""linear_block_fwd_bwd: every compiled backend against the torch reference, every output and gradient (DESIGN §4)."""
import pytest
import torch
from kernel_backends import backend_params, half_rule, half_skip_reason

from blockadmm import ops
from blockadmm.ref import ACTIVATIONS

BACKENDS = backend_params()
NAMES = ("loss", "grad_weight", "grad_bias", "grad_input", "out")


def _inputs(m, k, n, with_bias, device, dtype=torch.float32):
    x = torch.randn(m, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if with_bias else None
    z = torch.randn(m, n, device=device).to(dtype)
    u = (torch.randn(m, n, device=device) * 0.1).to(dtype)
    return x, w, b, z, u


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("need_input_grad", [True, False], ids=["gx", "nogx"])
def test_linear_block_matches_reference(backend, device, activation, with_bias, need_input_grad, nan_empty):
    # m=37, n=45: two row and two column tiles of 32 with masked tails; k=70: a K loop of three steps
    x, w, b, z, u = _inputs(37, 70, 45, with_bias, device)
    kw = {"rho": 2.5, "activation": activation, "need_input_grad": need_input_grad}
    ref = ops.linear_block_fwd_bwd(x, w, b, z, u, backend="torch", **kw)
    got = ops.linear_block_fwd_bwd(x, w, b, z, u, backend=backend, **kw)
    for name, r, g in zip(NAMES, ref, got):
        if r is None:
            assert g is None, name
            continue
        assert g.dtype == r.dtype and g.shape == r.shape, name
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_linear_block_half_precision(backend, device, dtype, activation, nan_empty):
    if half_skip_reason(backend, device, dtype):
        pytest.skip(half_skip_reason(backend, device, dtype))
    x, w, b, z, u = _inputs(37, 70, 45, True, device, dtype)
    kw = {"rho": 2.5, "activation": activation}
    truth = ops.linear_block_fwd_bwd(x.float(), w.float(), b.float(), z.float(), u.float(), backend="torch", **kw)
    ref = ops.linear_block_fwd_bwd(x, w, b, z, u, backend="torch", **kw)
    got = ops.linear_block_fwd_bwd(x, w, b, z, u, backend=backend, **kw)
    for name, t, r, g in zip(NAMES, truth, ref, got):
        assert g.dtype == r.dtype, name
        half_rule(g.reshape(-1), r.reshape(-1), t.reshape(-1), name, slack=1e-6 + 1e-5 * float(t.abs().max()))


def test_linear_block_auto_on_cpu_never_picks_triton(monkeypatch):
    from blockadmm.ops._dispatch import resolve

    fn = resolve("linear_block_fwd_bwd", "auto", "cpu", {"rho": 1.0}, {})
    triton_ops = ops.backends()["triton"].ops()
    assert triton_ops is None or fn is not triton_ops["linear_block_fwd_bwd"]
    x, w, b, z, u = _inputs(3, 4, 2, True, "cpu")
    # without the interpreter, asking Triton for CPU tensors is a clear error
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.BackendUnavailable, match="TRITON_INTERPRET=1"):
        ops.linear_block_fwd_bwd(x, w, b, z, u, rho=1.0, backend="triton")


def test_cuda_backend_on_cpu_tensors_is_a_clear_error():
    x, w, b, z, u = _inputs(3, 4, 2, True, "cpu")
    with pytest.raises(ops.BackendUnavailable,
                       match="backend 'cuda' cannot run linear_block_fwd_bwd: runs on cuda tensors"):
        ops.linear_block_fwd_bwd(x, w, b, z, u, rho=1.0, backend="cuda")


@pytest.mark.parametrize("backend,device", [pytest.param("torch", "cpu", id="torch"), *BACKENDS])
def test_u_has_the_sign_of_aux_dual_update(backend, device):
    """The op's residual is out - z - u, the scaled dual of aux_dual_update (r = z - a + u there): where the aux
    step's residual z - out + u vanishes, so do the op's loss and gradients."""
    x, w, b, _, u = _inputs(37, 70, 45, True, device)
    out = torch.tanh(torch.nn.functional.linear(x, w, b))
    loss, grad_weight, grad_bias, grad_input, _ = ops.linear_block_fwd_bwd(x, w, b, out - u, u, rho=2.5,
                                                                           activation="tanh", backend=backend)
    assert float(loss) < 1e-10
    for g in (grad_weight, grad_bias, grad_input):
        assert float(g.abs().max()) < 1e-5
    loss_other_sign = ops.linear_block_fwd_bwd(x, w, b, out + u, u, rho=2.5, activation="tanh", backend=backend)[0]
    assert float(loss_other_sign) > 1e-3


def test_compiled_module_of_the_other_sign_is_refused():
    """A compiled module built before the sign of u changed (no LINEAR_RESIDUAL) is not trusted: rebuild."""
    from types import SimpleNamespace

    from blockadmm._kernel_args import LINEAR_RESIDUAL, check_linear_residual

    with pytest.raises(RuntimeError, match=r"blockadmm\._cpu was built from older sources.*pip install -e"):
        check_linear_residual(SimpleNamespace(), "_cpu")
    with pytest.raises(RuntimeError, match="older sources"):
        check_linear_residual(SimpleNamespace(LINEAR_RESIDUAL="out - z + u"), "_cuda")
    check_linear_residual(SimpleNamespace(LINEAR_RESIDUAL=LINEAR_RESIDUAL), "_cpu")
