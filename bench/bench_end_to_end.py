"""End to end: Block-ADMM (online and batch, library defaults) against backprop, same MLP and data.

    pytest bench/bench_end_to_end.py -s     (or: python -m bench)

The foundation issue's default run: MLP 784-256-256-10 cut into 3 blocks, MNIST-5k (4000 train /
1000 test), batch 100, Adam 1e-3 per block, 10 epochs, the trainer's defaults otherwise (sweeps=2,
lr_z=0.5, top-down). Backprop is the same trainer with no blocks and sweeps=1, which is exactly plain
training with the same optimizer. All three start from the same initial weights and see the same
batches (as `blockadmm train` does).

Recorded per method: every epoch's training-loop wall time (`wall_s`, evaluation excluded) and test
accuracy, so the report gives the epoch time (median over epochs), its ratio to backprop, and the
time-to-accuracy: the training wall time summed over epochs until the test accuracy first reaches each
target (resolution: one epoch).
"""
from __future__ import annotations

import copy
import statistics

import pytest
import torch

from bench._common import pick, record, timed

DATASET = pick("mnist5k", "mnist5k", "digits")
HIDDEN = pick([256, 256], [256, 256], [32, 32])
EPOCHS = pick(10, 4, 1)
TARGETS = [0.85, 0.90, 0.92]
# admm-online-1sweep (full runs only): the same with sweeps=1, to show what the default second sweep costs
METHODS = ["backprop", "admm-online", "admm-batch"] + pick(["admm-online-1sweep"], [], [])
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


def time_to_accuracy(history, target):
    """Training wall time (summed epochs) until test accuracy first reaches `target`, else None."""
    total = 0.0
    for h in history:
        total += h["wall_s"]
        if h.get("test_acc", 0.0) >= target:
            return total
    return None


@pytest.mark.parametrize("method", METHODS)
def test_end_to_end(benchmark, method):
    from blockadmm.trainer import BlockADMM

    splits, model, cuts = _setup()
    adam = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
    out = {}

    def run():
        m = copy.deepcopy(model)
        if method == "backprop":
            tr = BlockADMM(m, input_shape=splits.input_shape, optimizer=adam, sweeps=1, seed=0)
        else:
            extra = {"sweeps": 1} if method.endswith("1sweep") else {}
            tr = BlockADMM(m, blocks=cuts, input_shape=splits.input_shape, mode=method.split("-")[1],
                           num_samples=len(splits.train), optimizer=adam, seed=0, **extra)
        out["history"] = tr.fit(splits.train, EPOCHS, batch_size=100, test=splits.test, progress=False)
        out["sweeps"] = getattr(tr.config, "sweeps", 1)

    t = timed(benchmark, run, rounds=1, warmup=0)
    hist = out["history"]
    walls = [h["wall_s"] for h in hist]
    record("end_to_end", method, method=method, dataset=DATASET, hidden=HIDDEN, epochs=EPOCHS, batch_size=100,
           sweeps=out["sweeps"], threads=torch.get_num_threads(),
           epoch_wall_s=walls, epoch_s=statistics.median(walls), epoch_min_s=min(walls),
           test_acc=[h["test_acc"] for h in hist], final_test_acc=hist[-1]["test_acc"],
           best_test_acc=max(h["test_acc"] for h in hist),
           tta={str(a): time_to_accuracy(hist, a) for a in TARGETS}, fit_s=t["s"], timing=t["s"] is not None)
