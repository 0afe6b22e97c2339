"""A hint for a constraint that silences its boundary: most of its auxiliary variables at zero, the loss at chance."""
from __future__ import annotations

import warnings

from .state import BatchState


class ConstraintWatch:
    """Every `every` steps, warn (once per boundary) when a constraint leaves most of its boundary's auxiliary variables
    at zero and the signal between the blocks is gone: 90% zeros, or half of them with the mean loss of those steps at
    chance level after the first `every` steps (Prox.l1(0.1) on a hidden boundary: 55-98% zeros, chance accuracy)."""

    def __init__(self, constraints: list, chance: float | None, every: int = 25):
        self.constraints, self.chance, self.every = constraints, chance, every
        self.losses: list[float] = []
        self.warned: set[int] = set()

    def update(self, state: BatchState, loss: float, step: int) -> None:
        self.losses.append(loss)
        if len(self.losses) < self.every:
            return
        # (not in the first window: a net that learns starts at chance too)
        at_chance = (self.chance is not None and step > self.every
                     and sum(self.losses) / len(self.losses) >= 0.95 * self.chance)
        self.losses.clear()
        for k, prox in enumerate(self.constraints):
            if prox is None or k in self.warned or state.z[k] is None:
                continue
            share = float((state.z[k] == 0).float().mean())
            if share >= 0.9 or (at_chance and share >= 0.5):
                self.warned.add(k)
                warnings.warn(f"the constraint {prox.kind} on boundary {k} leaves {100 * share:.0f}% of its auxiliary "
                              f"variables at zero (step {step}{', the loss at chance level' if at_chance else ''}): "
                              f"the blocks above it get almost no signal from below; weaken it (a smaller lam for "
                              f"Prox.l1) or remove it", stacklevel=4)
