"""`blockadmm experiment stochastic`: batch norm and dropout at the block cuts, Block-ADMM vs backprop.

Net: 784 → 128 (BatchNorm, ReLU, Dropout) → 128 (BatchNorm, ReLU, Dropout) → 10 on MNIST-5k, one layer per block, so
each cut sits right after a dropout. Block-ADMM with its defaults and with preset "fast", backprop with Adam 1e-3;
the same initial weights and batch order for every method, test accuracy per epoch, seeds 0-2.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import subprocess
import time

import torch
from torch import nn

from ..loader import make_loader
from ..trainer import BlockADMM
from . import common as C
from .results_io import write_results

METHODS = ("backprop", "admm", "admm-fast")


def net(width: int, p: float) -> list[nn.Module]:
    return [nn.Sequential(nn.Linear(784, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(p)),
            nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(p)),
            nn.Linear(width, 10)]


def accuracy(model: nn.Module, ds) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(ds.X).argmax(1) == ds.Y).float().mean())


def run_one(method: str, seed: int, epochs: int, splits, width: int, p: float) -> dict:
    torch.manual_seed(seed)
    blocks = net(width, p)
    t0, accs = time.perf_counter(), []
    if method == "backprop":
        model = nn.Sequential(*copy.deepcopy(blocks))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for epoch in range(epochs):
            model.train()
            for x, y, _ in make_loader(splits.train, 100, shuffle=True, seed=seed, epoch=epoch):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            accs.append(accuracy(model, splits.test))
    else:
        tr = BlockADMM(blocks, input_shape=(784,), seed=seed, preset="fast" if method == "admm-fast" else None)
        hist = tr.fit(splits.train, epochs, test=splits.test, progress=False, eval_train=False)
        accs = [h["test_acc"] for h in hist]
    return {"method": method, "seed": seed, "test_acc": accs[-1], "test_acc_per_epoch": accs,
            "wall_s": time.perf_counter() - t0}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help="seed 0, 1 epoch")
    p.add_argument("--out", default="runs/experiments/stochastic")


def main(args) -> int:
    C.setup_threads()
    splits = C.load_data(val_fraction=0.0)  # fixed recipes, nothing chosen: the whole training set
    seeds = [0] if args.quick else C.parse_list(args.seeds, int)
    epochs = 1 if args.quick else args.epochs
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    meta = {"epochs": epochs, "seeds": seeds, "width": args.width, "dropout": args.dropout, "commit": commit,
            "cpu": cpu, "threads": torch.get_num_threads(), "load_start": os.getloadavg(),
            "command": f"blockadmm experiment stochastic --seeds {','.join(map(str, seeds))} --epochs {epochs}"}
    records = [run_one(m, s, epochs, splits, args.width, args.dropout) for s in seeds for m in METHODS]
    meta["load_end"] = os.getloadavg()
    write_results(args.out, "stochastic", records, meta)
    for m in METHODS:
        accs = [r["test_acc"] for r in records if r["method"] == m]
        print(f"{m:10s} test acc per seed {' / '.join(f'{100 * a:.1f}' for a in accs)}, mean {100 * C.mean(accs):.1f}")
    return 0
