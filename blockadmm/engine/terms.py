"""Block terms: a block's part of the augmented Lagrangian, its gradients and its kept forward.

Block k < B-1 has the term (rho_k/2m)|z_k - f_k(inp) + u_k|^2, the last block the task loss. A term is
chosen once per block when a trainer is built (`make_term`): plain autograd, the fused linear op, the
closed-form cross-entropy of a linear head, or the block's own hooks (`ADMMBlock`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..blocks import fusable_linear
from .closed_forms import derivative_from_output, linear_cross_entropy
from .protocol import ADMMBlock


@dataclass
class Kept:
    """A block's forward at its current input and weights, kept while both stay: `value` (no graph) for
    the auxiliary and dual steps; `out`, its autograd graph, recorded from `leaf` (the input as a leaf that
    requires grad; None for block 0) for the weight step and the input gradient."""

    value: torch.Tensor
    out: torch.Tensor | None = None
    leaf: torch.Tensor | None = None


class AutogradTerm:
    """Any block, differentiated by autograd; a kept forward with its graph saves the forward."""

    keeps_graph = True  # its kept forwards carry their autograd graph
    keeps_last = True  # as the last block, its forward at the initial z is kept too

    def __init__(self, block: nn.Module, *, last: bool, loss_fn: Callable, first: bool):
        self.block, self.last, self.loss_fn, self.first = block, last, loss_fn, first
        self.params = [p for p in block.parameters() if p.requires_grad]
        self.trainable = bool(self.params)

    def forward(self, inp: torch.Tensor, *, keep_graph: bool = False) -> Kept:
        if not (keep_graph and self.keeps_graph):
            with torch.no_grad():
                return Kept(self.block(inp))
        leaf = None if self.first else inp.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.block(inp if leaf is None else leaf)
        return Kept(out.detach(), out, leaf)

    def _objective(self, out, target, dual, y, rho, m, mean: bool):
        """(the term averaged over the batch (mean, with its value) or summed over it (no value), the gradient to
        send into `out`, None for the task loss). The hidden term's gradient -rho (z - out + u) (/m) is formed
        here, in place on one buffer: autograd through the square would spend a slow elementwise pow on it."""
        if self.last:
            loss = self.loss_fn(out, y)
            return (loss if mean else loss * m), None
        base = torch.sub(target, out.detach()).add_(dual)
        if not mean:
            return None, base.mul_(-rho)
        flat = base.reshape(-1) if base.dtype == torch.float32 else base.reshape(-1).float()
        return (0.5 * rho / m) * torch.dot(flat, flat), base.mul_(-(rho / m))

    def loss_and_grads(self, inp, target, dual, y, *, rho, kept: Kept | None = None) -> torch.Tensor:
        """The block's term (a 0-d tensor, detached), its gradients left in the block's parameters."""
        m = inp.shape[0]
        graph = kept is not None and kept.out is not None
        if not self.trainable:
            with torch.no_grad():
                out = kept.value if kept is not None else self.block(inp)
                return self._objective(out, target, dual, y, rho, m, mean=True)[0]
        self.block.zero_grad(set_to_none=True)  # this block's gradients only: an optimizer may be shared
        with torch.enable_grad():
            out = kept.out if graph else self.block(inp)
            loss, grad_out = self._objective(out, target, dual, y, rho, m, mean=True)
            # a kept graph reaches the input too: no gradient for it
            (out if grad_out is not None else loss).backward(grad_out, inputs=self.params if graph else None)
        return loss.detach()

    def input_grad(self, inp, target, dual, y, *, rho, kept: Kept | None = None) -> torch.Tensor:
        """The gradient in inp of the block's term summed over the batch (per-sample terms, not their mean)."""
        if kept is not None and kept.leaf is not None:
            leaf, out = kept.leaf, kept.out
        else:
            leaf = inp.detach().requires_grad_(True)
            with torch.enable_grad():
                out = self.block(leaf)
        with torch.enable_grad():
            obj, grad_out = self._objective(out, target, dual, y, rho, inp.shape[0], mean=False)
        retain = kept is not None and kept.leaf is not None
        (g,) = torch.autograd.grad(out if grad_out is not None else obj, leaf, grad_out, retain_graph=retain)
        return g


class FusedLinearTerm(AutogradTerm):
    """A hidden Linear(+activation) block: the fused op, and closed forms from a kept output (one GEMM
    fewer for the weight step and the input gradient)."""

    keeps_graph = False

    def __init__(self, block, linear: nn.Linear, activation: str, *, backend: str, **kw):
        super().__init__(block, **kw)
        self.linear, self.activation, self.backend = linear, activation, backend

    def _kept_term(self, out, target, dual, scale, need_ssq=False):
        """(scale * r * act'(pre), sum r^2 or None) with r = out - z - u, in place on one buffer (on small
        blocks each pass costs about as much as its arithmetic)."""
        r = torch.sub(out, target).sub_(dual)
        ssq = None
        if need_ssq:
            flat = r.reshape(-1) if r.dtype == torch.float32 else r.reshape(-1).float()
            ssq = torch.dot(flat, flat)
        return r.mul_(derivative_from_output(out, self.activation)).mul_(scale), ssq

    def loss_and_grads(self, inp, target, dual, y, *, rho, kept=None):
        if not self.trainable:
            return super().loss_and_grads(inp, target, dual, y, rho=rho, kept=kept)
        m = inp.shape[0]
        if kept is not None:
            gp, ssq = self._kept_term(kept.value, target, dual, rho / m, need_ssq=True)
            return _set_grads(self.linear, gp.T @ inp, gp.sum(0), (rho / (2 * m)) * ssq)
        loss, gw, gb, _, _ = ops.linear_block_fwd_bwd(inp, self.linear.weight, self.linear.bias, target, dual,
                                                      rho=rho, activation=self.activation, need_input_grad=False,
                                                      backend=self.backend)
        return _set_grads(self.linear, gw, gb, loss.detach())

    def input_grad(self, inp, target, dual, y, *, rho, kept=None):
        if kept is None:
            return super().input_grad(inp, target, dual, y, rho=rho)
        g, _ = self._kept_term(kept.value, target, dual, rho)
        return g @ self.linear.weight.detach()


class LinearHeadTerm(AutogradTerm):
    """The last block as one nn.Linear under the default cross-entropy: gradients in closed form, no graph
    (on small heads the graph costs several times the GEMMs); a kept forward is its logits."""

    keeps_graph = False

    def __init__(self, block, linear: nn.Linear, **kw):
        super().__init__(block, **kw)
        self.linear = linear

    def loss_and_grads(self, inp, target, dual, y, *, rho, kept=None):
        if not self.trainable:
            return super().loss_and_grads(inp, target, dual, y, rho=rho, kept=kept)
        loss, gw, gb, _ = linear_cross_entropy(inp, self.linear.weight, self.linear.bias, y, need_input_grad=False,
                                               logits=None if kept is None else kept.value)
        return _set_grads(self.linear, gw, gb, loss)

    def input_grad(self, inp, target, dual, y, *, rho, kept=None):
        _, _, _, g = linear_cross_entropy(inp, self.linear.weight, self.linear.bias, y, need_weight_grad=False,
                                          logits=None if kept is None else kept.value)
        return g * inp.shape[0]  # the gradient of the per-sample losses summed


class HookTerm:
    """A block with its own rules (`ADMMBlock`): it gets no optimizer."""

    keeps_graph = False
    keeps_last = False
    trainable = False

    def __init__(self, block: ADMMBlock, *, last: bool, loss_fn: Callable, first: bool):
        self.block, self.loss_fn = block, loss_fn

    def forward(self, inp, *, keep_graph=False) -> Kept:
        with torch.no_grad():
            return Kept(self.block(inp))

    def loss_and_grads(self, inp, target, dual, y, *, rho, kept=None):
        return self.block.admm_local_step(inp, target, dual, rho=rho, y=y, loss_fn=self.loss_fn).detach()

    def input_grad(self, inp, target, dual, y, *, rho, kept=None):
        return self.block.admm_input_grad(inp, target, dual, rho=rho, y=y, loss_fn=self.loss_fn,
                                          out=None if kept is None else kept.value)


def make_term(block: nn.Module, k: int, n_blocks: int, *, loss_fn: Callable, default_loss: bool, fused_linear: bool,
              backend: str):
    """Block k's term: its hooks, the closed-form head, the fused linear op, or autograd."""
    kw = {"last": k == n_blocks - 1, "loss_fn": loss_fn, "first": k == 0}
    if isinstance(block, ADMMBlock):
        return HookTerm(block, **kw)
    fused = fusable_linear(block) if fused_linear else None
    if fused is not None and kw["last"]:
        closed_form = default_loss and fused[1] == "identity"
        return LinearHeadTerm(block, fused[0], **kw) if closed_form else AutogradTerm(block, **kw)
    if fused is not None:
        return FusedLinearTerm(block, *fused, backend=backend, **kw)
    return AutogradTerm(block, **kw)


def _set_grads(linear: nn.Linear, grad_weight, grad_bias, loss):
    linear.weight.grad = grad_weight
    if linear.bias is not None:
        linear.bias.grad = grad_bias
    return loss
