"""Constraints and penalties on auxiliary variables, applied as proximal operators.

A `Prox` is a small value type: the ops and kernels read its `kind` and parameters, the torch
reference calls `apply`. `Prox.custom(fn)` wraps any user callable `fn(z, lr) -> z`; only the
torch backend can run those, so "auto" dispatch routes them there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

KINDS = ("nonneg", "box", "l1", "custom")


@dataclass(frozen=True)
class Prox:
    kind: str
    lo: float = float("-inf")
    hi: float = float("inf")
    lam: float = 0.0
    fn: Callable[[torch.Tensor, float], torch.Tensor] | None = None

    @staticmethod
    def nonneg() -> Prox:
        """Projection onto z >= 0."""
        return Prox("nonneg", lo=0.0)

    @staticmethod
    def box(lo: float, hi: float) -> Prox:
        """Projection onto lo <= z <= hi."""
        if not lo <= hi:
            raise ValueError(f"Prox.box needs lo <= hi, got lo={lo}, hi={hi}")
        return Prox("box", lo=float(lo), hi=float(hi))

    @staticmethod
    def l1(lam: float) -> Prox:
        """Soft threshold by lr*lam: the prox of lam*|z|_1."""
        if lam < 0:
            raise ValueError(f"Prox.l1 needs lam >= 0, got {lam}")
        return Prox("l1", lam=float(lam))

    @staticmethod
    def custom(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Prox:
        """Any user prox `fn(z, lr) -> z` (runs on the torch backend only)."""
        if not callable(fn):
            raise TypeError(f"Prox.custom needs a callable fn(z, lr) -> z, got {type(fn).__name__}")
        return Prox("custom", fn=fn)

    def apply(self, z: torch.Tensor, lr: float) -> torch.Tensor:
        if self.kind == "nonneg":
            return z.clamp_min(0.0)
        if self.kind == "box":
            return z.clamp(self.lo, self.hi)
        if self.kind == "l1":
            t = lr * self.lam
            return z.sign() * (z.abs() - t).clamp_min(0.0)
        out = self.fn(z, lr)
        if not isinstance(out, torch.Tensor) or out.shape != z.shape:
            raise ValueError("a Prox.custom function must return a tensor of the shape it was given")
        return out

    def __call__(self, z: torch.Tensor, lr: float) -> torch.Tensor:
        return self.apply(z, lr)


def as_prox(p) -> Prox | None:
    """Accept None, a Prox, a name ("nonneg") or a bare callable."""
    if p is None or isinstance(p, Prox):
        return p
    if isinstance(p, str):
        if p == "nonneg":
            return Prox.nonneg()
        raise ValueError(f"unknown constraint name {p!r}; use 'nonneg', Prox.box(lo, hi), Prox.l1(lam) or a callable")
    if callable(p):
        return Prox.custom(p)
    raise TypeError(f"a constraint must be None, a Prox, 'nonneg' or a callable, got {type(p).__name__}")
