"""How the trainer's defaults were chosen: a small grid on a validation split of MNIST-5k's training data.

MLP 784-256-256-10 (3 blocks), batch 100, 10 epochs, Adam 1e-3 per block; the test set is not used.
    python bench/tune_defaults.py [--out results/tune_defaults.json]
"""
import argparse
import itertools
import json
import time

import torch

from blockadmm import data
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM


def run(splits, seed, epochs, **kw):
    torch.manual_seed(seed)
    model, cuts = mlp_blocks(784, [256, 256], 10)
    blocks = kw.pop("blocks", cuts)
    tr = BlockADMM(model, blocks=blocks, input_shape=(784,), num_samples=len(splits.train), seed=seed, **kw)
    t0 = time.perf_counter()
    hist = tr.fit(splits.train, epochs, val=splits.val, progress=False)
    return {"val_acc": hist[-1]["val_acc"], "best_val_acc": max(h["val_acc"] for h in hist), "wall_s": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/tune_defaults.json")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    splits = data.load("mnist5k", val_fraction=0.2, split_seed=args.seed)
    records = [{"method": "backprop", **run(splits, args.seed, args.epochs, blocks=None, sweeps=1)}]
    print(records[-1], flush=True)
    for mode, lr_z, sweeps in itertools.product(["online", "batch"], [0.1, 0.5, 1.0], [1, 2, 3]):
        rec = {"method": f"admm-{mode}", "lr_z": lr_z, "sweeps": sweeps, **run(splits, args.seed, args.epochs, mode=mode, lr_z=lr_z, sweeps=sweeps)}
        records.append(rec)
        print(rec, flush=True)
    with open(args.out, "w") as f:
        json.dump({"command": "python bench/tune_defaults.py", "split": "mnist5k train 3200 / val 800 (split_seed 0)", "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
