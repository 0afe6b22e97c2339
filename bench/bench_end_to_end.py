"""End to end: Block-ADMM (online and batch, library defaults) against backprop, same MLP and data.

    pytest bench/bench_end_to_end.py -s     (or: python -m bench)

The foundation issue's default run: MLP 784-256-256-10 cut into 3 blocks, MNIST-5k (4000 train /
1000 test), batch 100, the library's Adam 1e-3 per block (trainer.adam), 10 epochs, the trainer's
defaults otherwise, whatever they are when the bench runs (the sweeps are recorded per method).
Backprop is the experiments' baseline (blockadmm.experiments.training.Backprop) with the same Adam
factory as the blocks (trainer.adam). Beside them: `admm-online-fast`, the "fast" preset (one sweep, its own rho,
lr_z and Adam rate, one shared optimizer; chosen on validation, results/tune-fast.json), and (full runs)
`backprop-fast`, backprop at its best on this net: the init, optimizer and rate the fair grid chose for it on
validation (`blockadmm experiment fair`, 2×relu), so that neither side's time-to-accuracy gains from a setting the
other was denied. All see the same batches; all but backprop-fast start from the same initial weights.

Training runs each method's step over the loader that `fit` uses (same order, same steps) through the
experiments' epoch loop (training.train_epochs), timed as `fit` times an epoch (batch fetch + step), with
the test accuracy taken every EVAL_EVERY mini-batches outside the timing. The methods train in lockstep: epoch e of
every method, in an order rotated each epoch, so
that the machine's drift over the run (other load, clock changes) reaches all of them alike and the
epoch-time ratios compare epochs run side by side. Recorded per method: every epoch's training-loop wall
time and test accuracy, and the curve (training seconds, test accuracy), so the report gives the epoch
time (median over epochs), its ratio to backprop, and the time-to-accuracy: training seconds until the
test accuracy first reaches each target (resolution: EVAL_EVERY mini-batches).
"""

from __future__ import annotations

import copy
import statistics

import torch

from bench._common import pick, record, timed

DATASET = pick("mnist5k", "mnist5k", "digits")
HIDDEN = pick([256, 256], [256, 256], [32, 32])
EPOCHS = pick(10, 4, 1)
TARGETS = [0.85, 0.90, 0.92]
EVAL_EVERY = pick(8, 10, 5)  # mini-batches between test evaluations (an epoch of MNIST-5k is 40)
METHODS = ["backprop", "admm-online", "admm-batch", "admm-online-fast"] + pick(["backprop-fast"], [], [])
# backprop at its best on this net: the fair grid's choice on validation (results/experiments/fair/2xrelu.json)
BACKPROP_FAST_LR = 3e-3
BACKPROP_FAST_INIT = "kaiming"
_CACHE: dict = {}


def _setup():
    if not _CACHE:
        from blockadmm import data
        from blockadmm.models import mlp_blocks

        splits = data.load(DATASET)
        torch.manual_seed(0)
        model, cuts = mlp_blocks(splits.input_shape[0], HIDDEN, splits.num_classes)
        _CACHE.update(splits=splits, model=model, cuts=cuts)
    return _CACHE["splits"], _CACHE["model"], _CACHE["cuts"]


def make_trainer(method, splits, model, cuts):
    """The trainer of one method, from a copy of the shared initial weights."""
    from blockadmm.experiments.training import Backprop
    from blockadmm.trainer import BlockADMM, adam

    m = copy.deepcopy(model)
    if method.startswith("backprop"):
        init = BACKPROP_FAST_INIT if method == "backprop-fast" else None
        return Backprop(m, optimizer=adam(adam_lr(method)), init=init, activation="relu", seed=0)
    preset = "fast" if method.endswith("-fast") else None
    return BlockADMM(
        m,
        blocks=cuts,
        input_shape=splits.input_shape,
        mode=method.split("-")[1],
        num_samples=len(splits.train),
        preset=preset,
        seed=0,
    )


def adam_lr(method):
    from blockadmm.trainer import PRESETS

    return {"backprop-fast": BACKPROP_FAST_LR, "admm-online-fast": PRESETS["fast"]["weight_lr"]}.get(method, 1e-3)


class Run:
    """One method's training, an epoch at a time (training.train_epochs over the loader `fit` uses), with the test
    accuracy also taken every `eval_every` mini-batches outside the timing: per-epoch records (wall_s =
    training-loop time, batch fetch and step, as fit measures it) and the curve [(train s, test acc)]."""

    def __init__(self, trainer, splits, eval_every, seed=0):
        self.tr, self.splits, self.eval_every, self.seed = trainer, splits, eval_every, seed
        self.total, self.history = 0.0, []
        self.curve = [(0.0, self.test_acc())]

    def test_acc(self):
        from blockadmm.experiments.training import accuracy

        return accuracy(self.tr.forward, self.splits.test)

    def epoch(self):
        from blockadmm.experiments.training import train_epochs

        epoch = len(self.history)

        def on_batches(n, wall):
            self.curve.append((self.total + wall, self.test_acc()))

        (rec,) = train_epochs(
            self.tr.step,
            self.splits.train,
            epoch + 1,
            first_epoch=epoch,
            batch_size=100,
            seed=self.seed,
            every=self.eval_every,
            on_batches=on_batches,
        )
        self.total += rec["wall_s"]
        acc = self.test_acc()
        if self.curve[-1][0] != self.total:
            self.curve.append((self.total, acc))
        self.history.append({"epoch": epoch + 1, "wall_s": rec["wall_s"], "test_acc": acc})


def time_to_accuracy(curve, target):
    """Training wall time until the test accuracy first reaches `target`, else None."""
    return next((t for t, a in curve if a >= target), None)


def test_end_to_end(benchmark):
    splits, model, cuts = _setup()
    x, y, idx = splits.train[list(range(100))]
    for method in METHODS:  # first-call costs (backend loading, allocator, BLAS set-up) stay out of the timing
        warm = make_trainer(method, splits, model, cuts)
        for _ in range(3):
            warm.step(x, y, idx)
    out = {}

    def run():
        runs = {m: Run(make_trainer(m, splits, model, cuts), splits, EVAL_EVERY) for m in METHODS}
        for epoch in range(EPOCHS):
            shift = epoch % len(METHODS)
            for m in METHODS[shift:] + METHODS[:shift]:
                runs[m].epoch()
        out.update(runs)

    t = timed(benchmark, run, rounds=1, warmup=0)
    for method, r in out.items():
        walls = [h["wall_s"] for h in r.history]
        record(
            "end_to_end",
            method,
            method=method,
            dataset=DATASET,
            hidden=HIDDEN,
            epochs=EPOCHS,
            batch_size=100,
            sweeps=r.tr.config.sweeps if method.startswith("admm") else 1,
            adam_lr=adam_lr(method),
            threads=torch.get_num_threads(),
            init=BACKPROP_FAST_INIT if method == "backprop-fast" else "default",
            epoch_wall_s=walls,
            epoch_s=statistics.median(walls),
            epoch_min_s=min(walls),
            test_acc=[h["test_acc"] for h in r.history],
            final_test_acc=r.history[-1]["test_acc"],
            best_test_acc=max(h["test_acc"] for h in r.history),
            curve=r.curve,
            eval_every=EVAL_EVERY,
            lockstep=True,
            tta={str(a): time_to_accuracy(r.curve, a) for a in TARGETS},
            train_s=r.total,
            timing=t["s"] is not None,
        )


# ------------------------------------------------------------------ the small CNN
CNN_WIDTHS = pick((16, 32), (16, 32), (4, 8))
CNN_EPOCHS = pick(5, 2, 1)
# the 3-block cut (one conv layer a block) and the 2-block cut (both conv layers in block 0, whose input never moves)
CNN_METHODS = ["backprop", "admm-online", "admm-online-fast", "admm-online-2blocks", "admm-online-fast-2blocks"]


def cnn_blocks(in_channels, image_size, num_classes, widths):
    """Conv-ReLU-Pool | Conv-ReLU-Flatten | Linear, as a Sequential and its cut into 3 blocks (cut [2]: 2 blocks)."""
    from torch import nn

    c1, c2 = widths
    side = image_size // 2
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Flatten()),
        nn.Linear(c2 * side * side, num_classes),
    )
    return model, [1, 2]


def test_end_to_end_cnn(benchmark):
    """The small CNN on the same data, trained side by side (lockstep, as test_end_to_end): backprop (Adam 1e-3),
    Block-ADMM online with the defaults and with the fast preset, cut into 3 and into 2 blocks, from the same
    initial weights."""
    from blockadmm import data
    from blockadmm.trainer import BlockADMM, adam

    splits = data.load(DATASET, image=True)
    channels, side = splits.input_shape[0], splits.input_shape[-1]
    torch.manual_seed(0)
    model, cuts = cnn_blocks(channels, side, splits.num_classes, CNN_WIDTHS)

    def make(method):
        m = copy.deepcopy(model)
        if method == "backprop":
            return BlockADMM(m, blocks=1, input_shape=splits.input_shape, optimizer=adam(1e-3), sweeps=1, seed=0)
        preset = "fast" if "-fast" in method else None
        blocks = [cuts[-1]] if method.endswith("2blocks") else cuts
        return BlockADMM(m, blocks=blocks, input_shape=splits.input_shape, preset=preset, seed=0)

    x, y, idx = splits.train[list(range(100))]
    for method in CNN_METHODS:
        warm = make(method)
        for _ in range(3):
            warm.step(x, y, idx)
    runs = {}

    def run():
        runs.update({m: Run(make(m), splits, EVAL_EVERY) for m in CNN_METHODS})
        for epoch in range(CNN_EPOCHS):
            shift = epoch % len(CNN_METHODS)
            for m in CNN_METHODS[shift:] + CNN_METHODS[:shift]:
                runs[m].epoch()

    t = timed(benchmark, run, rounds=1, warmup=0)
    backprop_s = statistics.median(h["wall_s"] for h in runs["backprop"].history)
    for method, r in runs.items():
        walls = [h["wall_s"] for h in r.history]
        record(
            "end_to_end_cnn",
            method,
            method=method,
            dataset=DATASET,
            widths=list(CNN_WIDTHS),
            epochs=CNN_EPOCHS,
            batch_size=100,
            blocks=r.tr.n_blocks,
            sweeps=r.tr.config.sweeps,
            adam_lr=r.tr.optimizers[0].param_groups[0]["lr"],
            threads=torch.get_num_threads(),
            epoch_wall_s=walls,
            epoch_s=statistics.median(walls),
            test_acc=[h["test_acc"] for h in r.history],
            final_test_acc=r.history[-1]["test_acc"],
            best_test_acc=max(h["test_acc"] for h in r.history),
            curve=r.curve,
            eval_every=EVAL_EVERY,
            lockstep=True,
            train_s=r.total,
            timing=t["s"] is not None,
        )
        print(
            f"cnn {method}: epoch {statistics.median(walls):.3f} s ({statistics.median(walls) / backprop_s:.2f}x "
            f"backprop), test accuracy per epoch {[round(100 * h['test_acc'], 1) for h in r.history]}"
        )
