"""What every experiment shares: data, the method runners, the epoch loop, results files, plots.

Every method sees the same mini-batches: `make_loader(train, batch_size, shuffle=True, seed=seed,
epoch=e)`, and the same initial weights (the model is built after `torch.manual_seed(seed)`).
A runner returns one record (the documented keys plus extras) with a per-epoch history.

Methods (names are the ones the experiments and results files use):
  backprop-sgd   plain backprop, SGD lr 0.1
  backprop-adam  plain backprop, Adam lr 1e-3
  admm-online    Block-ADMM, online mode, with the preset that suits the activation (`admm_recipe`)
  admm-batch     the recipe for batch mode (per-sample z/u tables)
  admm-fast      Block-ADMM online with the "fast" preset (one sweep, rho 0.125, Adam 5e-3), whatever the activation
  admm-nodual    the online recipe with dual step 0 (alternating minimization with a quadratic penalty)
  local-greedy   each block with its own linear classifier head trained on its own output, the input
                 of every block detached (no gradient between blocks), all blocks on every batch;
                 prediction is the plain network (the last block)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .. import data as bdata
from ..models import mlp_blocks
from ..trainer import PRESETS, ADMMConfig, BlockADMM

METHODS = ("backprop-sgd", "backprop-adam", "admm-online", "admm-batch", "admm-fast", "admm-nodual", "local-greedy")
RECORD_KEYS = ("method", "depth", "activation", "seed", "test_acc", "train_acc", "best_test_acc", "wall_s")


def setup_threads() -> None:
    """Experiments are single-threaded: the machines they run on are shared."""
    torch.set_num_threads(int(os.environ.get("BLOCKADMM_THREADS", "1")))


_DATA_CACHE: Dict[tuple, bdata.DataSplits] = {}


def load_data(name: str = "mnist5k", val_fraction: float = 0.2, train_size: Optional[int] = None) -> bdata.DataSplits:
    """Train / val / test splits; val is carved from training data (hyperparameters are chosen on it).
    `train_size` keeps the first n training samples, for quick runs."""
    key = (name, val_fraction)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = bdata.load(name, val_fraction=val_fraction)
    splits = _DATA_CACHE[key]
    if train_size:
        splits = bdata.DataSplits(subset(splits.train, train_size), splits.val, splits.test,
                                  splits.input_shape, splits.num_classes, splits.name, splits.stats)
    return splits


def subset(ds: bdata.IndexedDataset, n: Optional[int]) -> bdata.IndexedDataset:
    """The first n samples (indices renumbered 0..n-1), for quick runs."""
    if n is None or n >= len(ds):
        return ds
    return bdata.IndexedDataset(ds.X[:n], ds.Y[:n], ds.num_classes)


# ------------------------------------------------------------------------------------------ recipes
def admm_recipe(activation: str, depth: int, mode: str = "online") -> dict:
    """The Block-ADMM preset that suits an MLP of `depth` hidden layers of this activation, in this mode.

    sigmoid: the "deep" preset (sign step on z, top-down); it is what carries the label signal down
    a net whose forward signal collapses; in batch mode "deep-batch" (the same with rho 0.25).
    relu / tanh: the defaults (plain gradient step, top-down), which match backprop on ReLU MLPs; the
    sign step is unstable there.
    The plain-gradient recipe pins sweeps=3 (what every committed result used), so that tuning the
    library's shallow-net defaults does not silently change these experiments.
    """
    if activation == "sigmoid":
        preset = "deep-batch" if mode == "batch" else "deep"
        return {"preset": preset, "weight_lr": PRESETS[preset]["weight_lr"], "config": {}}
    return {"preset": "default", "weight_lr": PRESETS["default"]["weight_lr"], "config": {"sweeps": 3}}


@dataclass
class Run:
    """One training run: a net, a method, a seed, the data."""

    method: str
    depth: int
    activation: str
    seed: int
    epochs: int
    splits: bdata.DataSplits
    batch_size: int = 100
    width: int = 256
    n_blocks: Optional[int] = None  # None: one layer per block
    overrides: dict = field(default_factory=dict)  # ADMMConfig fields over the recipe
    extra: dict = field(default_factory=dict)  # copied into the record


def build_mlp(run: Run, in_features: int, n_classes: int):
    torch.manual_seed(run.seed)
    return mlp_blocks(in_features, [run.width] * run.depth, n_classes, run.activation, run.n_blocks)


def block_list(model: nn.Sequential, cuts) -> List[nn.Module]:
    bounds = [0, *cuts, len(model)]
    return [model[a:b] for a, b in zip(bounds, bounds[1:])]


@torch.no_grad()
def accuracy(forward: Callable, ds) -> float:
    x, y = ds.X, ds.Y
    correct = 0
    for i in range(0, len(x), 1000):
        correct += int((forward(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
    return correct / max(len(x), 1)


@torch.no_grad()
def block_spread(blocks: List[nn.Module], x: torch.Tensor) -> List[float]:
    """Across-sample spread of each block's output: the feature-mean of the std over samples."""
    out, h = [], x
    for b in blocks[:-1]:
        h = b(h)
        out.append(float(h.std(0).mean()))
    return out


def epoch_loop(run: Run, blocks: List[nn.Module], step: Callable, forward: Callable, progress=None) -> dict:
    """Train `epochs` epochs with `step(x, y, index) -> dict`; evaluate after each; return the record."""
    sp = run.splits
    probe = sp.train.X[:500]
    history, wall = [], 0.0
    for epoch in range(run.epochs):
        loader = bdata.make_loader(sp.train, run.batch_size, shuffle=True, seed=run.seed, epoch=epoch)
        t0 = time.perf_counter()
        sums: Dict[str, list] = {}
        n = 0
        for batch in loader:
            for b in blocks:
                b.train()
            stats = step(batch[0], batch[1], batch[2]) or {}
            for k, v in stats.items():
                v = v if isinstance(v, list) else [v]
                sums[k] = v if k not in sums else [a + b for a, b in zip(sums[k], v)]
            n += 1
        dt = time.perf_counter() - t0
        wall += dt
        for b in blocks:
            b.eval()
        rec = {
            "epoch": epoch + 1,
            "wall_s": dt,
            "train_acc": accuracy(forward, sp.train),
            "val_acc": accuracy(forward, sp.val) if sp.val is not None and len(sp.val) else None,
            "test_acc": accuracy(forward, sp.test),
            "spread": block_spread(blocks, probe),
        }
        for k, v in sums.items():
            vals = [x / n for x in v]
            rec[k] = vals if len(vals) > 1 or k in ("primal_residual", "dual_residual") else vals[0]
        history.append(rec)
        if progress is not None:
            progress.set_postfix_str(f"{run.method} d{run.depth} {run.activation} s{run.seed} ep{epoch + 1} test {rec['test_acc']:.3f}")
    last = history[-1]
    record = {
        "method": run.method,
        "depth": run.depth,
        "activation": run.activation,
        "seed": run.seed,
        "test_acc": last["test_acc"],
        "train_acc": last["train_acc"],
        "best_test_acc": max(h["test_acc"] for h in history),
        "wall_s": wall,
        "val_acc": last["val_acc"],
        "epochs": run.epochs,
        "time_per_epoch_s": wall / run.epochs,
        "history": history,
    }
    record.update(run.extra)
    return record


# ------------------------------------------------------------------------------------------ runners
def model_and_blocks(run: Run, blocks_factory=None):
    """(model, blocks) for a run: the experiment's own factory, or the MLP of the run, one layer per block."""
    if blocks_factory is not None:
        return blocks_factory(run)
    model, cuts = build_mlp(run, run.splits.train.input_shape[0], run.splits.num_classes)
    return model, block_list(model, cuts)


def run_backprop(run: Run, optimizer: str = "sgd", lr: Optional[float] = None, blocks_factory=None, progress=None) -> dict:
    model, blocks = model_and_blocks(run, blocks_factory)
    lr = lr if lr is not None else (0.1 if optimizer == "sgd" else 1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=lr) if optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y, index):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    return epoch_loop(run, blocks, step, model, progress)


def make_admm(run: Run, blocks: List[nn.Module], mode: str, constraints=None, weight_lr: Optional[float] = None) -> BlockADMM:
    recipe = admm_recipe(run.activation, run.depth, mode)
    overrides = dict(run.overrides)
    if "preset" not in overrides:  # the activation's recipe; a run naming its preset sets every field itself
        overrides = {**recipe["config"], **overrides}
    preset = overrides.pop("preset", recipe["preset"])
    lr = weight_lr if weight_lr is not None else overrides.pop("weight_lr", PRESETS[preset]["weight_lr"])
    overrides.pop("weight_lr", None)
    return BlockADMM(
        blocks,
        input_shape=run.splits.train.input_shape,
        mode=mode,
        num_samples=len(run.splits.train),
        config=ADMMConfig.preset(preset, **overrides),
        optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        constraints=constraints,
        seed=run.seed,
    )


def run_admm(run: Run, mode: str = "online", blocks_factory=None, constraints=None, progress=None) -> dict:
    _, blocks = model_and_blocks(run, blocks_factory)
    trainer = make_admm(run, blocks, mode, constraints)

    def step(x, y, index):
        s = trainer.step(x, y, index)
        return {"loss": s.loss, "primal_residual": s.primal_residual, "dual_residual": s.dual_residual}

    rec = epoch_loop(run, list(trainer.blocks), step, trainer.forward, progress)
    rec["config"] = {k: v for k, v in vars(trainer.config).items()}
    return rec


class _Head(nn.Module):
    def __init__(self, block: nn.Module, in_shape, n_classes: int):
        super().__init__()
        with torch.no_grad():
            feat = block(torch.zeros(1, *in_shape)).numel()
        self.lin = nn.Linear(feat, n_classes)

    def forward(self, h):
        return self.lin(h.flatten(1))


def run_local_greedy(run: Run, lr: float = 1e-3, blocks_factory=None, progress=None) -> dict:
    """Every block trained on its own linear head's cross-entropy; inputs detached between blocks."""
    sp = run.splits
    model, blocks = model_and_blocks(run, blocks_factory)
    shapes, h = [], torch.zeros(1, *sp.train.input_shape)
    with torch.no_grad():
        for b in blocks:
            shapes.append(tuple(h.shape[1:]))
            h = b(h)
    heads = [_Head(b, s, sp.num_classes) for b, s in zip(blocks[:-1], shapes[:-1])]
    params = [p for b in blocks for p in b.parameters()] + [p for hd in heads for p in hd.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def forward(x):
        for b in blocks:
            x = b(x)
        return x

    def step(x, y, index):
        opt.zero_grad(set_to_none=True)
        total, h = 0.0, x
        for k, b in enumerate(blocks):
            out = b(h.detach())
            loss = loss_fn(heads[k](out) if k < len(heads) else out, y)
            loss.backward()
            total = float(loss.detach())
            h = out
        opt.step()
        return {"loss": total}

    return epoch_loop(run, blocks, step, forward, progress)


def run_method(run: Run, progress=None, blocks_factory=None) -> dict:
    """Dispatch on run.method (one of METHODS)."""
    m = run.method
    if m == "backprop-sgd":
        return run_backprop(run, "sgd", 0.1, blocks_factory, progress)
    if m == "backprop-adam":
        return run_backprop(run, "adam", 1e-3, blocks_factory, progress)
    if m == "admm-online":
        return run_admm(run, "online", blocks_factory, progress=progress)
    if m == "admm-batch":
        return run_admm(run, "batch", blocks_factory, progress=progress)
    if m == "admm-fast":
        run.overrides = {**run.overrides, "preset": "fast"}
        return run_admm(run, "online", blocks_factory, progress=progress)
    if m == "admm-nodual":
        run.overrides = {**run.overrides, "dual_step": 0.0}
        return run_admm(run, "online", blocks_factory, progress=progress)
    if m == "local-greedy":
        return run_local_greedy(run, 1e-3, blocks_factory, progress)
    raise ValueError(f"unknown method {m!r}; choose from {METHODS}")


# ------------------------------------------------------------------------------------------ files
def write_results(out: str, experiment: str, records: List[dict], meta: dict) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.json")
    with open(path, "w") as f:
        json.dump({"experiment": experiment, "meta": meta, "records": records}, f, indent=1, default=float)
    return path


def read_results(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def parse_list(text: Optional[str], kind=str):
    if text is None:
        return None
    return [kind(t) for t in str(text).replace(" ", "").split(",") if t]
