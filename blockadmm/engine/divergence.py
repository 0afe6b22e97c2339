"""The divergence guard: training that fails without a NaN (the loss stuck at chance level, or grown far above
its best) is named in the log and the history, or stopped (fit(stop_on_divergence=True))."""
from __future__ import annotations

import math
from dataclasses import dataclass


class DivergenceError(RuntimeError):
    """Training stopped by the divergence guard."""


@dataclass
class DivergenceGuard:
    """Watches the training loss, smoothed over steps (exponential moving average with weight `smoothing` on the
    past). It trips when, for `patience` steps in a row, the smoothed loss is at or above `chance_fraction` times
    the chance-level loss `chance` (ln C for C-class cross-entropy; None: not checked) or above `factor` times
    its lowest value so far."""

    chance: float | None = None
    factor: float = 2.0
    patience: int = 100
    smoothing: float = 0.9
    chance_fraction: float = 0.98
    average: float | None = None
    best: float = math.inf
    run: int = 0

    def update(self, loss: float) -> str | None:
        """Take one step's loss; the reason while the guard is tripped, else None."""
        self.average = loss if self.average is None else self.smoothing * self.average + (1 - self.smoothing) * loss
        self.best = min(self.best, self.average)
        reason = None
        if self.chance is not None and self.average >= self.chance_fraction * self.chance:
            reason = f"the training loss (smoothed: {self.average:.3g}) is at or above chance level ({self.chance:.3g})"
        elif self.average > self.factor * self.best:
            reason = (f"the training loss (smoothed: {self.average:.3g}) is above {self.factor:g} times its lowest "
                      f"({self.best:.3g})")
        self.run = self.run + 1 if reason else 0
        return f"{reason}, for {self.run} steps" if self.run >= self.patience else None

    def state_dict(self) -> dict:
        return {"average": self.average, "best": self.best, "run": self.run}

    def load_state_dict(self, state: dict) -> None:
        self.average, self.best, self.run = state["average"], float(state["best"]), int(state["run"])
