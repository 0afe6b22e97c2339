"""Auxiliary-step rules: how boundary k moves z_k given a = f_k(z_{k-1}), u_k and the consumer's gradient.

A rule is chosen once per boundary (`make_rule`) and holds its step sizes; what it remembers within one
mini-batch (the Adam moments) lives in the batch state, made by `new_memory`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import ops
from ..prox import Prox
from .protocol import AuxStepBlock

CAP_FACTOR = 2.0  # below 2/L a gradient step on an L-smooth objective never diverges
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class GradRule:
    """k_z prox-gradient steps of size min(lr_z, 1/rho, 2/(rho + curvature)): the boundary's own penalty bends by rho
    (1/rho: it never overshoots), the consumer's term by at most `curvature` (engine.curvature; below 2/L a gradient
    step on an L-smooth objective never diverges), however large rho or the consumer's weights grow."""

    step = "grad"

    def __init__(self, lr_z: float, k_z: int, backend: str):
        self.lr_z, self.k_z, self.backend = lr_z, k_z, backend

    def lr(self, rho: float, curvature: float = 0.0) -> float:
        return min(self.lr_z, 1.0 / rho, CAP_FACTOR / (rho + curvature))

    def new_memory(self):
        return None

    def run(self, z, u, a, grad_fn: Callable, *, rho: float, prox: Prox | None, memory,
            curvature: float = 0.0) -> torch.Tensor | None:
        """In place on z; returns |z - a|^2 after the last step (the op's result)."""
        lr = self.lr(rho, curvature)
        for _ in range(self.k_z):
            res_sq = ops.aux_dual_update(z, u, a, grad_fn(z), rho=rho, lr=lr, dual_step=0.0, prox=prox,
                                         step=self.step, backend=self.backend)
        return res_sq


class SignRule(GradRule):
    """The fixed-size normalized step z -= lr_z * sign(grad) (deep saturating nets, DESIGN §1); never capped."""

    step = "sign"

    def lr(self, rho: float, curvature: float = 0.0) -> float:
        return self.lr_z


@dataclass
class AdamMoments:
    t: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None


class AdamRule(GradRule):
    """z -= lr_z * m_hat / (sqrt(v_hat) + eps), moments over the k_z steps and sweeps of one mini-batch."""

    def new_memory(self):
        return AdamMoments()

    def run(self, z, u, a, grad_fn, *, rho, prox, memory: AdamMoments, curvature: float = 0.0):
        beta1, beta2 = ADAM_BETAS
        for _ in range(self.k_z):
            g = grad_fn(z)
            d = rho * (z - a + u)
            if g is not None:
                d = d + g
            if memory.m is None:
                memory.m, memory.v = torch.zeros_like(d), torch.zeros_like(d)
            memory.t += 1
            memory.m.mul_(beta1).add_(d, alpha=1 - beta1)
            memory.v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
            direction = (memory.m / (1 - beta1 ** memory.t)) / ((memory.v / (1 - beta2 ** memory.t)).sqrt() + ADAM_EPS)
            # rho=0: the op's step is then lr * direction, with the prox applied by the op
            res_sq = ops.aux_dual_update(z, u, a, direction, rho=0.0, lr=self.lr_z, dual_step=0.0, prox=prox,
                                         backend=self.backend)
        return res_sq


class BlockRule:
    """The producer block's own step (`AuxStepBlock`, e.g. NMF mirror steps); it reports no residual."""

    def __init__(self, block: AuxStepBlock, lr_z: float):
        self.block, self.lr_z = block, lr_z

    def new_memory(self):
        return None

    def run(self, z, u, a, grad_fn, *, rho, prox, memory, curvature: float = 0.0) -> None:
        self.block.admm_aux_update(z, u, a, grad_fn, rho=rho, lr=self.lr_z, prox=prox)


def make_rule(producer, config, backend: str):
    """The rule of the boundary after block `producer`: the block's own step, else config.aux_step's."""
    if isinstance(producer, AuxStepBlock):
        return BlockRule(producer, config.lr_z)
    rule = {"grad": GradRule, "sign": SignRule, "adam": AdamRule}[config.aux_step]
    return rule(config.lr_z, int(config.k_z), backend)
