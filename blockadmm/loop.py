"""The epoch loop and the evaluation of a trainer: data in the forms blockadmm.loader accepts, callbacks, per-epoch
schedulers, evaluation on a schedule, checkpoints, the history.

Works on any trainer with `step(x, y, index) -> StepStats`, `forward`, `blocks`, `epoch`, `history`, `seed`,
`schedulers`, `epoch_scheduled` (blocks told the epoch), `divergence` (engine.divergence.DivergenceGuard),
`best_weights` (engine.divergence.BestWeights), `optimizers`, `rho`, `save(path)` and `stop_training`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .callbacks import Callback
from .engine.batch import is_classification
from .engine.checkpoint import NonFiniteError
from .engine.divergence import ON_DIVERGENCE, DivergenceError, DivergenceWarning
from .engine.runlock import checkpoint_lock
from .loader import as_data, epoch_batches, epoch_length, is_single_use, unpack_batch


@torch.no_grad()
def evaluate(trainer, data, *, batch_size: int = 1000) -> dict[str, float]:
    """{"loss": mean task loss of F} on `data`, plus {"acc": accuracy} for integer class labels."""
    was = [b.training for b in trainer.blocks]
    for b in trainer.blocks:
        b.eval()
    total, loss_sum, correct, classification = 0, 0.0, 0, None
    try:
        for batch in epoch_batches(as_data(data), batch_size, shuffle=False, seed=0, epoch=0):
            x, y, _ = trainer.prepare_batch(*unpack_batch(batch, dtype=trainer.dtype))
            out = trainer.forward(x)
            loss_sum += float(trainer.loss_fn(out, y)) * x.shape[0]
            classification = is_classification(y)
            if classification:
                correct += int((out.argmax(1) == y).sum())
            total += x.shape[0]
    finally:
        for b, t in zip(trainer.blocks, was):
            b.train(t)
    if total == 0:
        raise ValueError("nothing to evaluate: the data yielded no samples")
    if not math.isfinite(loss_sum):
        raise NonFiniteError("evaluation gave a non-finite loss: the data hold NaN/inf, or the weights do; "
                             "check the data (an accuracy from it would mean nothing)")
    return {"loss": loss_sum / total, **({"acc": correct / total} if classification else {})}


def epoch_means(rows: list[tuple[dict, int]]) -> dict:
    """The history entries of an epoch from its steps' statistics ((stats dict, batch size) pairs): numbers and
    per-boundary lists averaged weighted by batch size, step_s as a plain mean; entries that are None are left out."""
    n = sum(m for _, m in rows)
    record = {}
    for name, first in rows[0][0].items():
        if first is None or name == "rho":  # rho: the epoch's record holds the penalties at its end
            continue
        if name == "step_s":
            record[name] = sum(s[name] for s, _ in rows) / len(rows)
        elif isinstance(first, list):
            record[name] = [sum(s[name][k] * m for s, m in rows) / n for k in range(len(first))]
        else:
            record[name] = sum(s[name] * m for s, m in rows) / n
    return record


def _report(event: str) -> None:
    """A divergence event to the log and to Python's warnings."""
    logging.getLogger(__name__).warning("%s", event)
    warnings.warn(event, DivergenceWarning, stacklevel=4)


def _step_scheduler(scheduler, record: dict) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(record.get("val_loss", record["loss"]))
    else:
        scheduler.step()


def fit(trainer, train, epochs: int, *, batch_size: int = 100, val=None, test=None, checkpoint: str | None = None,
        progress: bool = True, eval_train: bool = True, eval_every: int = 1, callbacks: Sequence[Callback] = (),
        on_epoch: Callable[[dict], None] | None = None, on_divergence: str = "rollback") -> list[dict]:
    """Train until `epochs` epochs are done (continuing from trainer.epoch after a resume); see BlockADMM.fit."""
    from tqdm.auto import tqdm

    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"on_divergence must be one of {ON_DIVERGENCE}, got {on_divergence!r}")

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    single_use = is_single_use(train)
    fixed = None if callable(train) and not isinstance(train, (Dataset, DataLoader)) else as_data(train)
    n_train = len(fixed.dataset) if isinstance(fixed, DataLoader) else (len(fixed) if isinstance(fixed, Dataset)
                                                                        else None)
    if n_train == 0:
        raise ValueError("the training set is empty")
    if trainer.tables is not None and n_train is not None and n_train != trainer.tables.num_samples:
        raise ValueError(f"the training set has {n_train} samples but the batch-mode tables were built for "
                         f"{trainer.tables.num_samples}: pass num_samples=len(train)")
    if trainer.epoch >= epochs:
        warnings.warn(f"fit(epochs={epochs}) trains nothing: this trainer has done {trainer.epoch} epochs already, and "
                      f"fit trains until `epochs` epochs are done in all (epochs={trainer.epoch + 1} for one more)",
                      stacklevel=3)
    callbacks = list(callbacks)
    if single_use and eval_train:
        warnings.warn("the training data is a single-use iterator (a generator): it cannot be read again to evaluate "
                      "the training set, so train_loss/train_acc are left out (pass a Dataset, an (X, y) tuple, a "
                      "list of batches, or a function that returns an epoch's batches to have them)", stacklevel=3)
        eval_train = False
    evaluated = {"train": eval_train, "val": val is not None, "test": test is not None}
    trainer.metric_names = {f"{name}_{m}" for name, on in evaluated.items() if on for m in ("loss", "acc")}
    trainer.stop_training = False

    def last_good() -> str:
        exists = checkpoint and os.path.exists(checkpoint)
        return f" The last good checkpoint is {checkpoint} (epoch {trainer.epoch})." if exists else ""

    lock = checkpoint_lock(checkpoint).acquire() if checkpoint else None  # one run at a time writes it
    was_training = [b.training for b in trainer.blocks]  # put back after fit (steps train, evaluations eval)
    first_epoch = trainer.epoch
    best, guard = trainer.best_weights, trainer.divergence

    def restore_best() -> str:
        rho = best.put_back(trainer.blocks, trainer.optimizers)
        trainer.rho = rho
        return f"the weights of step {best.step} (the lowest training loss) were put back"

    for cb in callbacks:
        cb.on_train_begin(trainer)
    try:
        for epoch in range(trainer.epoch, epochs):
            if single_use and epoch > first_epoch:
                raise ValueError(f"the training data is a single-use iterator (a generator), used up by epoch {epoch}: "
                                 f"pass a Dataset, an (X, y) tuple, a DataLoader or a list of batches, or a function "
                                 f"that returns an epoch's batches (fit(lambda: make_batches(), ...)); the "
                                 f"{epoch - first_epoch} epoch(s) trained are in trainer.history{last_good()}")
            for block in trainer.epoch_scheduled:  # blocks with epoch schedules (NMF: update W, then freeze it)
                block.admm_set_epoch(epoch)
            t0 = time.perf_counter()
            rows, diverging, events = [], None, []
            data = fixed if fixed is not None else as_data(train)
            batches = epoch_batches(data, batch_size, shuffle=True, seed=trainer.seed, epoch=epoch)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", total=epoch_length(data, batch_size),
                       disable=not progress, leave=False)
            for batch in bar:
                x, y, index = unpack_batch(batch, dtype=trainer.dtype)
                try:
                    stats = trainer.step(x, y, index)
                except NonFiniteError as e:
                    raise NonFiniteError(f"{e}{last_good()}") from e
                trip = guard.update(stats.loss, stats.primal_residual)
                if trip is None and best.due(trainer.step_count, guard.improved):
                    best.take(trainer.step_count, trainer.blocks, trainer.optimizers, trainer.rho)
                if trip is not None:
                    event = f"training diverges at step {trainer.step_count} (epoch {epoch + 1}): {trip.reason}"
                    if on_divergence == "stop":
                        raise DivergenceError(f"{event}; stopped (on_divergence='stop'). Resume from the last "
                                              f"checkpoint with a smaller learning rate, lr_z or rho.{last_good()}")
                    acted = on_divergence == "restore" or (on_divergence == "rollback" and trip.collapse)
                    if on_divergence == "restore":
                        event += f"; {restore_best()}; stopped (on_divergence='restore')"
                        trainer.stop_training = True
                    elif acted:
                        lrs = [[g["lr"] for g in o.param_groups] for o in trainer.optimizers]
                        event += f"; {restore_best()}, training goes on at {guard.rollback_factor:g} times the rate"
                        for o, old in zip(trainer.optimizers, lrs):
                            for g, lr in zip(o.param_groups, old):
                                g["lr"] = lr * guard.rollback_factor
                        guard.rolled_back()
                    if diverging is None or acted:  # warnings: once an epoch, and at every rollback
                        _report(event)
                        events.append(event)
                    diverging = diverging or event
                    if trainer.stop_training:
                        break
                step_stats = dataclasses.asdict(stats)
                rows.append((step_stats, x.shape[0]))
                bar.set_postfix(loss=f"{stats.loss:.3f}")
                for cb in callbacks:
                    cb.on_step(trainer, trainer.step_count, step_stats)
            if not rows:
                raise ValueError("the training data yielded no batches")
            record = {"epoch": epoch + 1, **epoch_means(rows), "rho": list(trainer.rho),
                      "lr": [group["lr"] for o in trainer.optimizers for group in o.param_groups],
                      "wall_s": time.perf_counter() - t0}
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                train_set = (train if fixed is None else fixed) if eval_train else None  # a function: called again
                for name, part in (("train", train_set), ("val", val), ("test", test)):
                    if part is not None:
                        record.update({f"{name}_{k}": v for k, v in evaluate(trainer, part).items()})
            if diverging:
                record["divergence"] = diverging
                record["divergence_events"] = events
            for scheduler in trainer.schedulers:
                _step_scheduler(scheduler, record)
            trainer.epoch = epoch + 1
            trainer.history.append(record)
            for cb in callbacks:
                cb.on_epoch(trainer, record)
            if checkpoint:
                trainer.save(checkpoint)
            if on_epoch:
                on_epoch(record)
            if trainer.stop_training:
                break
    finally:
        for b, t in zip(trainer.blocks, was_training):
            b.train(t)
        for cb in callbacks:
            cb.on_train_end(trainer)
        if lock is not None:
            lock.release()
    return trainer.history
