"""The divergence guard: training that fails without a NaN is caught within a few steps, and `fit(on_divergence=...)`
warns, stops, restores the best weights seen, or rolls back to them and goes on at a reduced rate (ON_DIVERGENCE).

Two kinds of failure. A collapse: the training loss (averaged over a few steps) rises well above the best it
reached, or a boundary's primal residual rises far above its own best. A stall: the loss stays at chance level
for `stall_patience` steps (a net that never learned has no better weights to go back to: stop / restore end
the run, warn / rollback only warn).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

ON_DIVERGENCE = ("warn", "stop", "restore", "rollback")


class DivergenceError(RuntimeError):
    """Training stopped by the divergence guard."""


class DivergenceWarning(UserWarning):
    """The divergence guard tripped (on_divergence="warn" or "rollback")."""


@dataclass
class Trip:
    """What the guard saw: `reason` in words; `collapse` True for a collapse, False for a stall at chance."""

    reason: str
    collapse: bool


@dataclass
class DivergenceGuard:
    """Watches each step's training loss and boundary primal residuals.

    Two exponential averages of each (weight `fast` on the past: a few steps; `slow`: tens of steps); a value's
    best is its lowest slow average. A collapse: for `patience` steps in a row, the fast loss is above `factor`
    times its best and above best + `margin` x chance (ln C for C-class cross-entropy; without a chance level the
    factor alone), or a boundary's fast residual is above `residual_factor` times its best and above
    `residual_floor`. A stall: the slow loss at or above `chance_fraction` x chance for `stall_patience` steps.
    `rollback_factor` scales every optimizer's learning rate at each rollback. `improved`: the last update set a
    new best (fit keeps the weights of such steps for restore / rollback).
    """

    chance: float | None = None
    factor: float = 3.0
    margin: float = 0.25
    patience: int = 5
    fast: float = 0.7
    slow: float = 0.98
    residual_factor: float = 10.0
    residual_floor: float = 0.05
    chance_fraction: float = 0.98
    stall_patience: int = 100
    rollback_factor: float = 0.5
    loss_fast: float | None = None
    loss_slow: float | None = None
    best: float = math.inf
    res_fast: list = field(default_factory=list)
    res_slow: list = field(default_factory=list)
    res_best: list = field(default_factory=list)
    run: int = 0
    stall_run: int = 0
    rollbacks: int = 0
    improved: bool = False

    def __post_init__(self):
        for name in ("factor", "residual_factor"):
            if not getattr(self, name) > 1:
                raise ValueError(f"DivergenceGuard.{name} must be > 1, got {getattr(self, name)!r}")
        if not 0 < self.rollback_factor < 1:
            raise ValueError(f"DivergenceGuard.rollback_factor must be in (0, 1), got {self.rollback_factor!r}")
        if self.patience < 1 or self.stall_patience < 1:
            raise ValueError("DivergenceGuard.patience and stall_patience must be >= 1")

    @staticmethod
    def _ema(old, new, weight):
        return new if old is None else weight * old + (1 - weight) * new

    def update(self, loss: float, residuals=()) -> Trip | None:
        """Take one step's loss and primal residuals; a Trip while the guard is tripped, else None."""
        self.loss_fast = self._ema(self.loss_fast, loss, self.fast)
        self.loss_slow = self._ema(self.loss_slow, loss, self.slow)
        self.improved = self.loss_slow < self.best
        self.best = min(self.best, self.loss_slow)
        if len(self.res_fast) != len(residuals):
            self.res_fast, self.res_slow, self.res_best = [None] * len(residuals), [None] * len(residuals), [
                math.inf] * len(residuals)
        for k, r in enumerate(residuals):
            self.res_fast[k] = self._ema(self.res_fast[k], r, self.fast)
            self.res_slow[k] = self._ema(self.res_slow[k], r, self.slow)
            self.res_best[k] = min(self.res_best[k], self.res_slow[k])
        reason = self._collapse()
        self.run = self.run + 1 if reason else 0
        if self.run >= self.patience:
            return Trip(f"{reason}, for {self.run} steps", True)
        at_chance = self.chance is not None and self.loss_slow >= self.chance_fraction * self.chance
        self.stall_run = self.stall_run + 1 if at_chance else 0
        if self.stall_run >= self.stall_patience:
            return Trip(f"the training loss (averaged: {self.loss_slow:.3g}) is at or above chance level "
                        f"({self.chance:.3g}), for {self.stall_run} steps", False)
        return None

    def _collapse(self) -> str | None:
        limit = self.factor * self.best
        if self.chance is not None:
            limit = max(limit, self.best + self.margin * self.chance)
        if self.loss_fast > limit:
            return (f"the training loss (averaged over a few steps: {self.loss_fast:.3g}) rose above {limit:.3g} "
                    f"(its best: {self.best:.3g})")
        for k, (r, best) in enumerate(zip(self.res_fast, self.res_best)):
            if r > max(self.residual_factor * best, self.residual_floor):
                return (f"boundary {k}'s primal residual (averaged over a few steps: {r:.3g}) rose above "
                        f"{self.residual_factor:g} times its best ({best:.3g})")
        return None

    def rolled_back(self) -> None:
        """After the weights went back to the best ones: the averages restart from the best values."""
        self.loss_fast = self.loss_slow = self.best
        self.res_fast, self.res_slow = list(self.res_best), list(self.res_best)
        self.run = self.stall_run = 0
        self.rollbacks += 1

    STATE = ("loss_fast", "loss_slow", "best", "res_fast", "res_slow", "res_best", "run", "stall_run", "rollbacks")

    def state_dict(self) -> dict:
        return {name: copy.copy(getattr(self, name)) for name in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        if "average" in state:  # the earlier guard's checkpoint: one average, its best
            state = {"loss_fast": state["average"], "loss_slow": state["average"], "best": float(state["best"])}
        for name in self.STATE:
            if name in state:
                setattr(self, name, copy.copy(state[name]))


class BestWeights:
    """The weights and optimizer states of the best step so far, kept in memory for restore / rollback; taken at
    most once every `every` steps (a copy of the model and its optimizer state)."""

    def __init__(self, every: int = 20):
        self.every, self.step = every, None
        self.blocks: list[dict] | None = None
        self.optimizers: list[dict] | None = None
        self.rho: list[float] | None = None

    def due(self, step: int, improved: bool) -> bool:
        return self.blocks is None or (improved and step - self.step >= self.every)

    @torch.no_grad()
    def take(self, step: int, blocks, optimizers, rho) -> None:
        if self.blocks is None:
            self.blocks = [{k: v.detach().clone() for k, v in b.state_dict().items()} for b in blocks]
        else:
            for saved, b in zip(self.blocks, blocks):
                for k, v in b.state_dict().items():
                    saved[k].copy_(v)
        self.optimizers = [copy.deepcopy(o.state_dict()) for o in optimizers]
        self.rho, self.step = list(rho), step

    def put_back(self, blocks, optimizers) -> list[float]:
        """Load the kept state into blocks and optimizers (copies: the kept one stays intact); returns its rho."""
        for saved, b in zip(self.blocks, blocks):
            b.load_state_dict(saved)
        for saved, o in zip(self.optimizers, optimizers):
            o.load_state_dict(copy.deepcopy(saved))
        return list(self.rho)
