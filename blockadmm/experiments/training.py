"""The one epoch loop and the one backprop baseline of the experiments, the DeepFacto runs and the bench.

Every method trains on the batches `make_loader(train, batch_size, shuffle=True, seed=seed, epoch=e)`
gives, so methods run with the same seed see the same mini-batches in the same order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import nn

from ..data import make_loader
from ..models import init_weights

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]  # returns a dict of stats, a dataclass or None


def make_optimizer(params, optimizer="adam", lr: float | None = None) -> torch.optim.Optimizer:
    """SGD or Adam over `params` (lr defaults to DEFAULT_LR[optimizer]), or `optimizer(params)` for a factory such
    as `trainer.adam(lr)`, so that backprop can get exactly the optimizer the Block-ADMM blocks get."""
    if callable(optimizer):
        if lr is not None:
            raise ValueError("lr goes with an optimizer name; an optimizer factory sets its own rate")
        return optimizer(params)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or pass a factory")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if not lr > 0:
        raise ValueError(f"the learning rate must be > 0, got {lr}")
    return (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(params, lr=lr)


class Backprop:
    """Plain backprop of `model` on `loss_fn`: the baseline every Block-ADMM run is compared with.

    `init` (with `activation` and `gain`) re-initializes the model's layers by `models.init_weights` first,
    under `torch.manual_seed(seed)` when a seed is given, so one model can be trained under each init.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer="adam",
        lr: float | None = None,
        loss_fn=None,
        init: str | None = None,
        activation: str = "relu",
        gain: float | None = None,
        seed: int | None = None,
    ):
        if init is not None:
            if seed is not None:
                torch.manual_seed(seed)
            init_weights(model, init, activation, gain)
        self.model = model
        self.optimizer = make_optimizer(model.parameters(), optimizer, lr)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step on the mini-batch; returns its loss."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    __call__ = forward


@torch.no_grad()
def accuracy(forward: Callable, ds, batch_size: int = 1000) -> float:
    """Share of `ds` (X, Y tensors) whose argmax of forward(x) is the label."""
    correct = 0
    for i in range(0, len(ds.X), batch_size):
        correct += int((forward(ds.X[i : i + batch_size]).argmax(1) == ds.Y[i : i + batch_size]).sum())
    return correct / max(len(ds.X), 1)


def _add(sums: dict, stats) -> None:
    """Sum the step's stats (a dict or a dataclass such as trainer.StepStats) into `sums` per key; a list stat is
    summed per entry and stays a list."""
    if dataclasses.is_dataclass(stats):
        stats = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    for k, v in stats.items():
        if isinstance(v, (list, tuple)):
            sums[k] = list(v) if k not in sums else [a + b for a, b in zip(sums[k], v)]
        else:
            sums[k] = v if k not in sums else sums[k] + v


def train_epochs(
    step: Step,
    train,
    epochs: int,
    *,
    batch_size: int,
    seed: int,
    first_epoch: int = 0,
    before_epoch: Callable[[int], None] | None = None,
    evaluate: Callable[[], dict] | None = None,
    every: int = 0,
    on_batches: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> list[dict]:
    """Run `step(x, y, index)` over every mini-batch of epochs first_epoch..epochs-1; one record per epoch.

    A record holds "epoch" (1-based), "wall_s" (the time of the batch fetches and steps only) and the mean over
    the epoch of each stat the step returns (a dict or a dataclass; lists averaged per entry), then what
    `evaluate()` returns.
    Outside the timing: `before_epoch(epoch)` before an epoch, `on_batches(n, wall_s)` after every `every`-th
    mini-batch (n batches and wall_s seconds of training so far in the epoch), `on_epoch(record)` after each epoch
    (returning True stops training).
    """
    from tqdm.auto import tqdm

    if every and on_batches is None:
        raise ValueError("every= needs on_batches=")
    history = []
    for epoch in range(first_epoch, epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        loader = make_loader(train, batch_size, shuffle=True, seed=seed, epoch=epoch)
        bar = tqdm(total=len(loader), desc=f"{desc} {epoch + 1}/{epochs}", leave=False, disable=not progress)
        batches, wall, n, sums = iter(loader), 0.0, 0, {}
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            stats = step(batch[0], batch[1], batch[2] if len(batch) > 2 else None) if batch is not None else None
            wall += time.perf_counter() - start
            if batch is None:
                break
            n += 1
            _add(sums, stats or {})
            bar.update(1)
            if every and n % every == 0:
                on_batches(n, wall)
        bar.close()
        record = {"epoch": epoch + 1, "wall_s": wall}
        for k, v in sums.items():
            record[k] = [s / n for s in v] if isinstance(v, list) else v / n
        if evaluate is not None:
            record.update(evaluate())
        history.append(record)
        if on_epoch is not None and on_epoch(record):
            break
    return history


def run_backprop(
    model: nn.Module,
    train,
    epochs: int,
    *,
    batch_size: int,
    seed: int,
    optimizer="adam",
    lr: float | None = None,
    loss_fn=None,
    init: str | None = None,
    activation: str = "relu",
    gain: float | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    progress: bool = False,
    desc: str = "backprop",
) -> list[dict]:
    """Train `model` by backprop (Backprop's arguments) for `epochs`; evaluate(model) after each epoch, in eval mode."""
    learner = Backprop(
        model, optimizer=optimizer, lr=lr, loss_fn=loss_fn, init=init, activation=activation, gain=gain, seed=seed
    )

    def after_epoch():
        model.eval()
        return evaluate(model) if evaluate is not None else {}

    return train_epochs(
        learner.step,
        train,
        epochs,
        batch_size=batch_size,
        seed=seed,
        evaluate=after_epoch,
        progress=progress,
        desc=desc,
    )
