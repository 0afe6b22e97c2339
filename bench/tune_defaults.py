"""How the trainer's defaults were chosen: a grid on a validation split of MNIST-5k's training data.

MLP 784-256-256-10 (3 blocks), batch 100, 10 epochs, Adam 1e-3 per block, seeds 0 and 1; the test set
is not used. A setting is scored by its worst validation accuracy over the last 5 epochs, averaged over
seeds and both modes (online and batch), so that a default that swings from epoch to epoch loses to
one that stays put.
    python bench/tune_defaults.py [--out results/tune_defaults.json]
"""
import argparse
import itertools
import json
import time

import torch
from tqdm.auto import tqdm

from blockadmm import data
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM

GRID = {"lr_z": [0.1, 0.3, 0.5], "sweeps": [2, 3]}
SEEDS = (0, 1)
MODES = ("online", "batch")


def val_curve(splits, seed, epochs, **kw):
    torch.manual_seed(seed)
    model, cuts = mlp_blocks(784, [256, 256], 10)
    blocks = kw.pop("blocks", cuts)
    tr = BlockADMM(model, blocks=blocks, input_shape=(784,), num_samples=len(splits.train), seed=seed, **kw)
    t0 = time.perf_counter()
    hist = tr.fit(splits.train, epochs, val=splits.val, progress=False)
    return {"val_acc": [h["val_acc"] for h in hist], "wall_s": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/tune_defaults.json")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    splits = data.load("mnist5k", val_fraction=0.2, split_seed=0)
    runs = [dict(method="backprop", seed=s, **val_curve(splits, s, args.epochs, blocks=None, sweeps=1)) for s in SEEDS]
    settings = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    for setting, mode, seed in tqdm(list(itertools.product(settings, MODES, SEEDS)), desc="grid"):
        runs.append(dict(method=f"admm-{mode}", seed=seed, **setting, **val_curve(splits, seed, args.epochs, mode=mode, **setting)))
    scores = []
    for setting in settings:
        mine = [r for r in runs if all(r.get(k) == v for k, v in setting.items())]
        scores.append({**setting, "score": sum(min(r["val_acc"][-5:]) for r in mine) / len(mine),
                       "final": sum(r["val_acc"][-1] for r in mine) / len(mine)})
    scores.sort(key=lambda s: -s["score"])
    for s in scores:
        print(s)
    with open(args.out, "w") as f:
        json.dump({"command": "python bench/tune_defaults.py", "split": "mnist5k train 3200 / val 800 (split_seed 0)",
                   "criterion": "mean over seeds and modes of the worst val accuracy in the last 5 epochs",
                   "scores": scores, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
