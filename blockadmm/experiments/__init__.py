"""The method's claims as experiments: `blockadmm experiment <name> [flags]`.

    depth        deep MLPs (2-16 sigmoid/tanh/ReLU layers): Block-ADMM vs backprop, no-dual, local-greedy
    fair         every method at its best (init x optimizer x rate / preset chosen on validation), 3 seeds
    robustness   init-gain map on 8 sigmoid layers; label noise; a fixed training-time budget
    deepfacto_unrolled  DeepFacto vs its NMF layer trained by backprop through unrolled updates (one-step gradient)
    grid         fair + robustness + deepfacto_unrolled in one timed command (--jobs worker processes)
    blocks       one 8-layer net cut into 1, 2, 4, 8 blocks; top-down, bottom-up, Jacobi
    convergence  batch mode on a small problem: augmented Lagrangian, residuals; constant vs adaptive rho
    binary       MLP with binary {0,1} hidden units: Block-ADMM (projection) vs straight-through backprop
    stability    every recipe over nets, data, seeds and 30 epochs: collapses counted, backprop beside

Each writes results.json and PNG plots under --out (default runs/experiments/<name>/); --quick runs
a reduced grid in under 2 minutes.
"""
from __future__ import annotations

import argparse
import importlib
from typing import List, Optional

from ..argtypes import ArgumentParser

EXPERIMENTS = ("depth", "fair", "robustness", "deepfacto_unrolled", "grid", "blocks", "convergence", "binary",
               "stability")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="blockadmm experiment", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="name", required=True, metavar="{" + ",".join(EXPERIMENTS) + "}")
    for name in EXPERIMENTS:
        mod = importlib.import_module(f"{__name__}.{name}")
        sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().split("\n")[0])
        mod.add_args(sp)
    return p


def run(argv: Optional[List[str]] = None) -> int:
    """Parse `<name> [flags]` and run that experiment; returns the exit status."""
    args = parser().parse_args(argv)
    mod = importlib.import_module(f"{__name__}.{args.name}")
    return int(mod.main(args) or 0)


def main(argv: Optional[List[str]] = None) -> int:
    return run(argv)


if __name__ == "__main__":
    import sys

    raise SystemExit(run(sys.argv[1:]))
