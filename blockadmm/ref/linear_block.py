"""Reference block-local forward/backward of `act(x W^T + b)` against its ADMM target (DESIGN §2).

    out = act(x W^T + b),  r = out - z - u,  loss = (rho/2m) sum r^2,  gp = (rho/m) r * act'(pre)
    grad_weight = gp^T x,  grad_bias = sum_rows gp,  grad_input = gp W

u has the sign of aux_dual_update's (the scaled dual of the constraint z = out): r = -(z - out + u).
"""
from __future__ import annotations

import torch

LEAKY_SLOPE = 0.01
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


def activation_and_derivative(pre: torch.Tensor, activation: str):
    """Return (act(pre), act'(pre)) for the named activation."""
    if activation == "identity":
        return pre, torch.ones_like(pre)
    if activation == "relu":
        return pre.clamp_min(0.0), (pre > 0).to(pre.dtype)
    if activation == "leaky_relu":
        pos = pre > 0
        return torch.where(pos, pre, LEAKY_SLOPE * pre), torch.where(pos, 1.0, LEAKY_SLOPE).to(pre.dtype)
    if activation == "sigmoid":
        s = torch.sigmoid(pre)
        return s, s * (1 - s)
    if activation == "tanh":
        t = torch.tanh(pre)
        return t, 1 - t * t
    raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


def linear_block_fwd_bwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    z: torch.Tensor,
    u: torch.Tensor,
    *,
    rho: float,
    activation: str = "relu",
    need_input_grad: bool = True,
):
    m = x.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # half types accumulate in float32
    xf, wf = x.to(acc), weight.to(acc)
    pre = xf @ wf.T
    if bias is not None:
        pre = pre + bias.to(acc)
    out, dact = activation_and_derivative(pre, activation)
    r = out - z.to(acc) - u.to(acc)
    loss = ((rho / (2 * m)) * r.square().sum()).float()
    gp = (rho / m) * r * dact
    grad_weight = (gp.T @ xf).to(weight.dtype)
    grad_bias = gp.sum(0).to(bias.dtype) if bias is not None else None
    grad_input = (gp @ wf).to(x.dtype) if need_input_grad else None
    return loss, grad_weight, grad_bias, grad_input, out.to(x.dtype)
