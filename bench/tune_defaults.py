"""How the trainer's defaults and the "fast" preset were chosen: grids on a validation split of MNIST-5k's
training data; the test set is not used.

MLP 784-256-256-10 (3 blocks), batch 100, 10 epochs. A setting is scored by its worst validation accuracy
over the last 5 epochs, averaged over seeds and modes, so that a setting that swings from epoch to epoch
loses to one that stays put.
    python bench/tune_defaults.py [--out results/tune_defaults.json]
        the defaults: lr_z x sweeps, Adam 1e-3 per block, online and batch, seeds 0 and 1
    python bench/tune_defaults.py --grid fast --out results/tune-fast.json
        the "fast" preset: one sweep per mini-batch, rho x lr_z x Adam rate, online, seeds 0-2
"""

import argparse
import itertools
import json
import time

import torch
from tqdm.auto import tqdm

from blockadmm import data
from blockadmm.experiments.training import accuracy, run_backprop
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM, adam

GRIDS = {
    "defaults": {
        "grid": {"lr_z": [0.1, 0.3, 0.5], "sweeps": [2, 3]},
        "seeds": (0, 1),
        "modes": ("online", "batch"),
        "backprop_lr": [1e-3],
    },
    "fast": {
        "grid": {
            "sweeps": [1],
            "rho": [0.0625, 0.125, 0.25, 0.5],
            "lr_z": [0.1, 0.3, 1.0],
            "weight_lr": [2e-3, 3e-3, 5e-3, 8e-3],
        },
        "seeds": (0, 1, 2),
        "modes": ("online",),
        "backprop_lr": [1e-3, 2e-3, 3e-3, 5e-3],
        # the defaults, scored beside the grid: the accuracy the preset is meant to keep
        "extra": [{"sweeps": 3, "rho": 1.0, "lr_z": 0.3, "weight_lr": 1e-3}],
    },
}


def val_curve(splits, seed, epochs, weight_lr=1e-3, **kw):
    """Validation accuracy per epoch of Block-ADMM with these settings on the 3-block MLP."""
    torch.manual_seed(seed)
    model, cuts = mlp_blocks(784, [256, 256], 10)
    tr = BlockADMM(
        model,
        blocks=cuts,
        input_shape=(784,),
        num_samples=len(splits.train),
        seed=seed,
        optimizer=adam(weight_lr),
        **kw,
    )
    t0 = time.perf_counter()
    hist = tr.fit(splits.train, epochs, val=splits.val, progress=False)
    return {"val_acc": [h["val_acc"] for h in hist], "wall_s": time.perf_counter() - t0}


def backprop_val_curve(splits, seed, epochs, weight_lr):
    """The same for backprop of the same MLP (the experiments' baseline, the blocks' Adam factory)."""
    torch.manual_seed(seed)
    model, _ = mlp_blocks(784, [256, 256], 10)
    t0 = time.perf_counter()
    hist = run_backprop(
        model,
        splits.train,
        epochs,
        batch_size=100,
        seed=seed,
        optimizer=adam(weight_lr),
        evaluate=lambda m: {"val_acc": accuracy(m, splits.val)},
    )
    return {"val_acc": [h["val_acc"] for h in hist], "wall_s": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grid", choices=sorted(GRIDS), default="defaults")
    p.add_argument("--out", default="results/tune_defaults.json")
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    spec = GRIDS[args.grid]
    grid, seeds, modes = spec["grid"], spec["seeds"], spec["modes"]
    torch.set_num_threads(1)
    splits = data.load("mnist5k", val_fraction=0.2, split_seed=0)
    runs = [
        dict(method="backprop", seed=s, weight_lr=lr, **backprop_val_curve(splits, s, args.epochs, lr))
        for lr in spec["backprop_lr"]
        for s in seeds
    ]
    settings = [dict(zip(grid, v)) for v in itertools.product(*grid.values())] + spec.get("extra", [])
    for setting, mode, seed in tqdm(list(itertools.product(settings, modes, seeds)), desc="grid"):
        runs.append(
            dict(
                method=f"admm-{mode}",
                seed=seed,
                **setting,
                **val_curve(splits, seed, args.epochs, mode=mode, **setting),
            )
        )
    scores = []
    for setting in settings:
        mine = [r for r in runs if r["method"] != "backprop" and all(r.get(k) == v for k, v in setting.items())]
        scores.append(
            {
                **setting,
                "score": sum(min(r["val_acc"][-5:]) for r in mine) / len(mine),
                "final": sum(r["val_acc"][-1] for r in mine) / len(mine),
            }
        )
    scores.sort(key=lambda s: -s["score"])
    for s in scores:
        print(s)
    with open(args.out, "w") as f:
        command = "python bench/tune_defaults.py" + (
            f" --grid {args.grid} --out {args.out}" if args.grid != "defaults" else ""
        )
        json.dump(
            {
                "command": command,
                "split": "mnist5k train 3200 / val 800 (split_seed 0)",
                "criterion": "mean over seeds and modes of the worst val accuracy in the last 5 epochs",
                "scores": scores,
                "runs": runs,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
