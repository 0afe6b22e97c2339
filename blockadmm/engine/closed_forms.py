"""Closed-form gradients the block terms use instead of an autograd graph."""
from __future__ import annotations

import torch

from ..ref.linear_block import ACTIVATIONS, LEAKY_SLOPE


def derivative_from_output(out: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(pre) from out = act(pre) alone (each activation here is monotone, so its output determines the
    derivative): a caller that kept a block's output skips the forward GEMM."""
    if activation == "identity":
        return torch.ones_like(out)
    if activation == "relu":
        # out >= 0, so sign(out) is 1 where pre > 0 and 0 elsewhere, in one pass (a bool compare and cast are two)
        return torch.sign(out)
    if activation == "leaky_relu":
        return torch.where(out > 0, 1.0, LEAKY_SLOPE).to(out.dtype)
    if activation == "sigmoid":
        return out * (1 - out)
    if activation == "tanh":
        return 1 - out * out
    raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


@torch.no_grad()
def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    *,
    need_weight_grad: bool = True,
    need_input_grad: bool = True,
    logits: torch.Tensor | None = None,
):
    """Mean cross-entropy of the logits x W^T + b against class labels y, with its gradients in closed form
    (d loss / d logits = (softmax - onehot(y)) / m), so a linear head needs no autograd graph. logits: x W^T + b
    when the caller kept them.

    Returns (loss, grad_weight, grad_bias, grad_input); the gradients not asked for are None."""
    m = x.shape[0]
    if logits is None:
        logits = torch.nn.functional.linear(x, weight, bias)
    logp = torch.log_softmax(logits.float(), 1)
    loss = torch.nn.functional.nll_loss(logp, y)
    d = logp.exp_()  # softmax; logp is not needed after the loss
    d.scatter_add_(1, y.unsqueeze(1), d.new_full((m, 1), -1.0))  # - onehot(y)
    d = d.div_(m).to(x.dtype)
    grad_weight = grad_bias = grad_input = None
    if need_weight_grad:
        grad_weight = d.T @ x
        grad_bias = d.sum(0) if bias is not None else None
    if need_input_grad:
        grad_input = d @ weight
    return loss, grad_weight, grad_bias, grad_input
