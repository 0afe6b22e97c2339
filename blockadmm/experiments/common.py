"""What every experiment shares: data, the method runners, the epoch loop, results files, plots.

Every method sees the same mini-batches: `make_loader(train, batch_size, shuffle=True, seed=seed,
epoch=e)`, and the same initial weights (the model is built after `torch.manual_seed(seed)`, then
re-initialized by `Run.init`; every record says its init).
A runner returns one record (the documented keys plus extras) with a per-epoch history.

Methods (names are the ones the experiments and results files use):
  backprop-sgd   plain backprop, SGD (lr 0.1 unless Run.lr)
  backprop-adam  plain backprop, Adam (lr 1e-3 unless Run.lr)
  admm-online    Block-ADMM, online mode, with the preset that suits the activation (`admm_recipe`)
  admm-batch     the recipe for batch mode (per-sample z/u tables)
  admm-fast      Block-ADMM online with the "fast" preset (one sweep, rho 0.125, Adam 5e-3), whatever the activation
  admm-nodual    the online recipe with dual step 0 (alternating minimization with a quadratic penalty)
  local-greedy   each block with its own linear classifier head trained on its own output, the input
                 of every block detached (no gradient between blocks), all blocks on every batch;
                 prediction is the plain network (the last block)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .. import data as bdata
from ..models import INITS, init_weights, mlp_blocks
from ..trainer import PRESETS, ADMMConfig, BlockADMM
from .results_io import read_results, save_results, write_results  # noqa: F401 (the experiments' results files)
from .training import Backprop, accuracy, train_epochs

METHODS = ("backprop-sgd", "backprop-adam", "admm-online", "admm-batch", "admm-fast", "admm-nodual", "local-greedy")
RECORD_KEYS = ("method", "depth", "activation", "seed", "init", "test_acc", "train_acc", "best_test_acc", "wall_s")


def setup_threads() -> None:
    """Experiments are single-threaded: the machines they run on are shared."""
    torch.set_num_threads(int(os.environ.get("BLOCKADMM_THREADS", "1")))


def add_init_arg(p) -> None:
    """The experiments' --init flag (models.init_weights; recorded in every record)."""
    p.add_argument(
        "--init",
        default="default",
        choices=list(INITS),
        help="weight init of every net (default: PyTorch's; xavier: Glorot with the activation's gain)",
    )


_DATA_CACHE: Dict[tuple, bdata.DataSplits] = {}


def load_data(name: str = "mnist5k", val_fraction: float = 0.2, train_size: Optional[int] = None) -> bdata.DataSplits:
    """Train / val / test splits; val is carved from training data (hyperparameters are chosen on it).
    `train_size` keeps the first n training samples, for quick runs."""
    key = (name, val_fraction)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = bdata.load(name, val_fraction=val_fraction)
    splits = _DATA_CACHE[key]
    if train_size:
        splits = bdata.DataSplits(
            subset(splits.train, train_size),
            splits.val,
            splits.test,
            splits.input_shape,
            splits.num_classes,
            splits.name,
            splits.stats,
        )
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
    init: str = "default"  # models.init_weights
    init_gain: Optional[float] = None  # None: the activation's usual gain
    lr: Optional[float] = None  # backprop / local-greedy learning rate (None: the method's default)
    eval_train_each_epoch: bool = (
        True  # False: train accuracy and spreads only after the last epoch (val/test every epoch)
    )
    stop_at_chance: Optional[int] = None  # stop after this epoch if validation accuracy is still <= 1.2 / n_classes


def build_mlp(run: Run, in_features: int, n_classes: int):
    torch.manual_seed(run.seed)
    model, cuts = mlp_blocks(in_features, [run.width] * run.depth, n_classes, run.activation, run.n_blocks)
    return init_weights(model, run.init, run.activation, run.init_gain), cuts


def block_list(model: nn.Sequential, cuts) -> List[nn.Module]:
    bounds = [0, *cuts, len(model)]
    return [model[a:b] for a, b in zip(bounds, bounds[1:])]


@torch.no_grad()
def block_spread(blocks: List[nn.Module], x: torch.Tensor) -> List[float]:
    """Across-sample spread of each block's output: the feature-mean of the std over samples."""
    out, h = [], x
    for b in blocks[:-1]:
        h = b(h)
        out.append(float(h.std(0).mean()))
    return out


def epoch_loop(run: Run, blocks: List[nn.Module], step: Callable, forward: Callable, progress=None) -> dict:
    """Train `epochs` epochs with `step(x, y, index) -> dict` (training.train_epochs); evaluate after each; return the
    record."""
    sp = run.splits
    probe = sp.train.X[:500]

    def evaluate(epoch: int) -> dict:
        for b in blocks:
            b.eval()
        val_acc = accuracy(forward, sp.val) if sp.val is not None and len(sp.val) else None
        stop = run.stop_at_chance == epoch and val_acc is not None and val_acc <= 1.2 / sp.num_classes
        full = run.eval_train_each_epoch or epoch == run.epochs or stop
        return {
            "train_acc": accuracy(forward, sp.train) if full else None,
            "val_acc": val_acc,
            "test_acc": accuracy(forward, sp.test),
            "spread": block_spread(blocks, probe) if full else None,
            "stopped_at_chance": stop,
        }

    def after_epoch(rec: dict) -> bool:
        rec.update(evaluate(rec["epoch"]))
        if progress is not None:
            progress.set_postfix_str(
                f"{run.method} d{run.depth} {run.activation} s{run.seed} ep{rec['epoch']} test {rec['test_acc']:.3f}"
            )
        return rec.pop("stopped_at_chance")

    def train_step(x, y, index):
        for b in blocks:
            b.train()
        return step(x, y, index)

    history = train_epochs(
        train_step, sp.train, run.epochs, batch_size=run.batch_size, seed=run.seed, on_epoch=after_epoch
    )
    wall = sum(h["wall_s"] for h in history)
    last = history[-1]
    record = {
        "method": run.method,
        "depth": run.depth,
        "activation": run.activation,
        "seed": run.seed,
        "init": run.init,
        "init_gain": run.init_gain,
        "test_acc": last["test_acc"],
        "train_acc": last["train_acc"],
        "best_test_acc": max(h["test_acc"] for h in history),
        "wall_s": wall,
        "val_acc": last["val_acc"],
        "epochs": len(history),
        "time_per_epoch_s": wall / len(history),
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


def run_backprop(
    run: Run, optimizer: str = "sgd", lr: Optional[float] = None, blocks_factory=None, progress=None
) -> dict:
    """Plain backprop of the run's net (training.Backprop); lr None: the optimizer's default."""
    model, blocks = model_and_blocks(run, blocks_factory)
    learner = Backprop(model, optimizer=optimizer, lr=lr)
    return epoch_loop(run, blocks, learner.step, model, progress)


def make_admm(
    run: Run, blocks: List[nn.Module], mode: str, constraints=None, weight_lr: Optional[float] = None
) -> BlockADMM:
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
        return run_backprop(run, "sgd", run.lr if run.lr is not None else 0.1, blocks_factory, progress)
    if m == "backprop-adam":
        return run_backprop(run, "adam", run.lr if run.lr is not None else 1e-3, blocks_factory, progress)
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
        return run_local_greedy(run, run.lr if run.lr is not None else 1e-3, blocks_factory, progress)
    raise ValueError(f"unknown method {m!r}; choose from {METHODS}")


# ------------------------------------------------------------------------------------------ files
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
