"""Binary {0, 1} hidden units trained by Block-ADMM: a layer whose step activation has no useful derivative.

`BinaryBlock` is a linear layer followed by the step h = 1[W x + b > 0]. Block-ADMM trains it without a gradient
through the step across blocks: each block fits its own target through a surrogate of its ADMM term (its own rule,
`admm_local_step` / `admm_input_grad`, with its own Adam), and only the auxiliary variables carry signal between
blocks. Two recipes, measured on MNIST-5k (README, "Binary hidden units"):

- **relaxed** (the better one): the auxiliary variables are left real (only the forward network is binary) and each
  block is fitted through its plain ADMM term (rho/2)|z + u - step(W z_prev + b)|^2 differentiated with its own
  straight-through step (surrogate "ste"); rho = 2, lr_z = 1/rho, 2 sweeps.
- **projected**: the auxiliary variables are binary too (`binary_projection()` on every hidden boundary) and each
  block is fitted through the hinge surrogate sum max(0, margin - (2t - 1) a) of its pre-activations a against the
  target t = clip(z + u, 0, 1); rho = 0.05, lr_z = 20, 2 sweeps.

Under plain autograd the step passes gradients straight through (the clipped identity 1[|a| <= 1]): the same
blocks make the straight-through backprop baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from .prox import Prox

__all__ = ["RECIPES", "SURROGATES", "BinaryBlock", "binary_blocks", "binary_projection", "binary_recipe"]

SURROGATES = ("hinge", "logistic", "ste")


class StepSTE(torch.autograd.Function):
    """1[a > 0], with the clipped identity 1[|a| <= 1] as its derivative (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return (a > 0).to(a.dtype)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (a.abs() <= 1).to(g.dtype)


class BinaryBlock(nn.Module):
    """Linear layer + step activation with outputs in {0, 1}, with its own Block-ADMM rule.

    lr: the Adam rate of the block's own surrogate fit. surrogate: "ste" (the ADMM term through the block's own
    straight-through step: the relaxed recipe), "hinge" (with `margin`: the projected recipe) or "logistic" (BCE on
    the pre-activations; its input gradient is never zero and drove every unit to a constant: kept for comparison).
    """

    def __init__(
        self, in_features: int, out_features: int, lr: float = 1e-3, surrogate: str = "hinge", margin: float = 0.1
    ):
        super().__init__()
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        self.linear = nn.Linear(in_features, out_features)
        self.lr, self.surrogate, self.margin = lr, surrogate, margin
        self._opt = None

    def surrogate_loss(self, inp, z, u):
        """Sum over the batch of the surrogate of |z + u - step(W inp + b)|: logistic, hinge or ste."""
        a = self.linear(inp)
        if self.surrogate == "ste":  # the ADMM term itself, through the block's own straight-through step
            return 0.5 * (z + u - StepSTE.apply(a)).square().sum()
        t = self._target(z, u)
        if self.surrogate == "logistic":
            return nn.functional.binary_cross_entropy_with_logits(a, t, reduction="sum")
        return torch.relu(self.margin - (2 * t - 1) * a).sum()

    def forward(self, x):
        a = self.linear(x)
        if torch.is_grad_enabled() and a.requires_grad:
            return StepSTE.apply(a)
        return (a > 0).to(a.dtype)

    @staticmethod
    def _target(z, u):
        return (z + u).clamp(0.0, 1.0)

    def admm_local_step(self, inp, target, dual, *, rho, y, loss_fn):
        if target is None:
            raise ValueError("a BinaryBlock cannot be the last block: put a linear head after it")
        if self._opt is None:
            self._opt = torch.optim.Adam(self.linear.parameters(), lr=self.lr)
        self._opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = rho * self.surrogate_loss(inp, target, dual) / inp.shape[0]
            loss.backward()
        self._opt.step()
        return loss.detach()

    def admm_input_grad(self, z_in, z_out, u_out, *, rho, y, loss_fn, out=None):
        """The surrogate's gradient in z_in; it needs the pre-activation's graph, which the kept forward (the step
        outputs, without a graph) does not hold, so `out` is not used."""
        if rho is None:
            raise ValueError("a BinaryBlock cannot be the last block: put a linear head after it")
        z_in = z_in.detach().requires_grad_(True)
        with torch.enable_grad():
            obj = rho * self.surrogate_loss(z_in, z_out, u_out)
            (g,) = torch.autograd.grad(obj, z_in)
        return g


def binary_projection() -> Prox:
    """Projection onto {0, 1} (the nearest point), as a custom prox (the torch backend runs it)."""
    return Prox.custom(lambda z, lr: (z > 0.5).to(z.dtype))


# the trainer's options of each recipe, and the surrogate its blocks use
RECIPES = {
    "relaxed": {"surrogate": "ste", "rho": 2.0, "lr_z": 0.5, "sweeps": 2},
    "projected": {"surrogate": "hinge", "rho": 0.05, "lr_z": 20.0, "sweeps": 2},
}


def binary_blocks(
    in_features: int, hidden, n_classes: int, *, recipe: str = "relaxed", lr: float = 1e-3, margin: float = 0.1
) -> list[nn.Module]:
    """[BinaryBlock for each width in `hidden`, ..., a linear head]: one binary layer per block, with the surrogate of
    `recipe`; train them with BlockADMM(blocks, **binary_recipe(recipe, len(hidden)))."""
    surrogate = _recipe(recipe)["surrogate"]
    blocks, prev = [], int(in_features)
    for width in hidden:
        blocks.append(BinaryBlock(prev, int(width), lr=lr, surrogate=surrogate, margin=margin))
        prev = int(width)
    return [*blocks, nn.Linear(prev, n_classes)]


def binary_recipe(recipe: str = "relaxed", n_hidden: int = 1) -> dict:
    """The BlockADMM keywords of `recipe` for a net of `n_hidden` binary blocks (the projected recipe constrains
    each hidden boundary to {0, 1})."""
    options = {k: v for k, v in _recipe(recipe).items() if k != "surrogate"}
    if recipe == "projected":
        options["constraints"] = {k: binary_projection() for k in range(n_hidden)}
    return options


def _recipe(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name]
