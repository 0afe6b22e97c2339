"""Training-loop hooks: per-step and per-epoch callbacks, CSV and TensorBoard loggers, early stopping.

A trainer's `fit(..., callbacks=[...])` calls `on_train_begin(trainer)`, then `on_step(trainer, step, stats)` after
every mini-batch (`stats` a dict of numbers and per-boundary lists), `on_epoch(trainer, record)` after every epoch
(the history record), and `on_train_end(trainer)`. A callback stops training by setting `trainer.stop_training`.
"""
from __future__ import annotations

import copy
import csv
import math
import os
from numbers import Real
from typing import Dict, List, Optional

__all__ = ["Callback", "CSVLogger", "TensorBoardLogger", "EarlyStopping", "scalars"]


class Callback:
    def on_train_begin(self, trainer) -> None:
        pass

    def on_step(self, trainer, step: int, stats: dict) -> None:
        pass

    def on_epoch(self, trainer, record: dict) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass


def scalars(values: dict) -> Dict[str, float]:
    """The numbers of a stats dict or history record, per-boundary lists flattened to `name/k`."""
    out = {}
    for name, v in values.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, Real):
            out[name] = float(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(e, Real) and not isinstance(e, bool) for e in v):
            out.update({f"{name}/{k}": float(e) for k, e in enumerate(v)})
    return out


class CSVLogger(Callback):
    """Writes `folder/epochs.csv` (one row per epoch) and, with `every` > 0, `folder/steps.csv` (every `every`-th
    step). Columns come from the first row; rows are flushed as they are written."""

    def __init__(self, folder: str, *, every: int = 1):
        if every < 0:
            raise ValueError(f"every must be >= 0 (0: no step rows), got {every}")
        self.folder, self.every = folder, every
        self._files: Dict[str, tuple] = {}

    def _write(self, name: str, row: dict) -> None:
        if name not in self._files:
            os.makedirs(self.folder, exist_ok=True)
            path = os.path.join(self.folder, name)
            f = open(path, "a", newline="")
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            self._files[name] = (f, writer)
        f, writer = self._files[name]
        writer.writerow(row)
        f.flush()

    def on_step(self, trainer, step, stats):
        if self.every and step % self.every == 0:
            self._write("steps.csv", {"step": step, **scalars(stats)})

    def on_epoch(self, trainer, record):
        self._write("epochs.csv", scalars(record))

    def on_train_end(self, trainer):
        for f, _ in self._files.values():
            f.close()
        self._files.clear()


class TensorBoardLogger(Callback):
    """Scalars under `train/` (every `every`-th step) and `epoch/` (every epoch) in a TensorBoard event file.
    Needs the `tensorboard` package (`pip install 'blockadmm[tensorboard]'`)."""

    def __init__(self, log_dir: str, *, every: int = 1):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"TensorBoard logging needs the tensorboard package: "
                              f"pip install 'blockadmm[tensorboard]' ({e})") from None
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.writer = SummaryWriter(log_dir)

    def on_step(self, trainer, step, stats):
        if step % self.every == 0:
            for name, v in scalars(stats).items():
                self.writer.add_scalar(f"train/{name}", v, step)

    def on_epoch(self, trainer, record):
        epoch = int(record.get("epoch", 0))
        for name, v in scalars(record).items():
            if name != "epoch":
                self.writer.add_scalar(f"epoch/{name}", v, epoch)
        self.writer.flush()

    def on_train_end(self, trainer):
        self.writer.close()


class EarlyStopping(Callback):
    """Stops when `monitor` (a history key, e.g. "val_loss" or "val_acc") has not improved by `min_delta` for
    `patience` epochs; with `restore_best`, the blocks get the weights of the best epoch back at the end."""

    def __init__(self, monitor: str = "val_loss", *, patience: int = 3, min_delta: float = 0.0,
                 mode: Optional[str] = None, restore_best: bool = True):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        mode = mode or ("min" if "loss" in monitor or "mse" in monitor else "max")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best = restore_best
        self.best: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self._best_state: Optional[List[dict]] = None
        self._waited = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_train_begin(self, trainer):
        evaluated = ("train_", "val_", "test_")
        if self.monitor.startswith(evaluated) and self.monitor not in trainer.metric_names:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not evaluate (it evaluates "
                             f"{sorted(trainer.metric_names)}); pass val= to fit to get val_* entries")

    def on_epoch(self, trainer, record):
        if self.monitor not in record:  # not evaluated this epoch (fit's eval_every)
            return
        value = float(record[self.monitor])
        if math.isfinite(value) and self._better(value):
            self.best, self.best_epoch, self._waited = value, int(record.get("epoch", 0)), 0
            if self.restore_best:
                self._best_state = [copy.deepcopy(b.state_dict()) for b in trainer.blocks]
            return
        self._waited += 1
        if self._waited >= self.patience:
            trainer.stop_training = True
            record["early_stop"] = f"{self.monitor} did not improve for {self.patience} epochs (best epoch " \
                                   f"{self.best_epoch}: {self.best})"

    def on_train_end(self, trainer):
        if self.restore_best and self._best_state is not None:
            for block, state in zip(trainer.blocks, self._best_state):
                block.load_state_dict(state)
