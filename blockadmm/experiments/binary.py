"""`blockadmm experiment binary`: an MLP with binary {0,1} hidden units, Block-ADMM vs straight-through.

The blocks and their rules are the library's (`blockadmm.binary`); this module runs the comparison.

Net: 784 → L×256 step units (h = 1[Wx + b > 0]) → 10 linear logits, one layer per block.

Block-ADMM (online): the auxiliary variables carry the binary constraint, applied by projection
(`Prox.custom`: z ← 1[z > 1/2], torch backend), after a plain gradient step on z (lr_z = 1/ρ, the
largest the trainer allows: z ← proj(f(z_prev) − u − g/ρ)). A step unit has no useful derivative, so
each binary block is fitted through a surrogate of its own: the **hinge surrogate** — the block's
pre-activations a = W z_prev + b are scored against its target t = clip(z + u, 0, 1) by
Σ max(0, γ − (2t − 1)·a) with margin γ = 0.1, one Adam step (lr 1e-3) per sweep, 2 sweeps; the gradient that
the auxiliary step of the block's input needs is that of the same surrogate, times ρ. It vanishes where
a block already agrees with its target by the margin, so the lower codes move only where the upper
ones asked for a change. (A logistic surrogate, BCE on the pre-activations, was tried first: its input
gradient is never zero and drove every hidden unit to a constant.) Defaults ρ = 0.05, lr_z = 20,
γ = 0.1 were chosen on the validation split (3 epochs, depth 2). Inference is the hard binary
forward network.

Block-ADMM relaxed (`admm-relaxed`): the same trainer with the auxiliary variables left unconstrained
(no projection: z is real, only the forward network is binary) and each binary block fitted through its
plain ADMM term (ρ/2)|z + u − step(W z_prev + b)|² differentiated with the straight-through step of the
block itself (the **ste surrogate**; no gradient crosses a block); ρ = 2, lr_z = 1/ρ, 2 sweeps, chosen
on the validation split (ρ ∈ {0.5, 1, 2}, depths 2 and 4, seeds 0 and 1, 10 epochs, mean final
validation accuracy: 92.1 / 91.6 / 92.2%; one sweep fails: 30% / 10%). With the projection the ste
surrogate trains to 72% / 37% (depth 2 / 4, 5 epochs), projecting onto the box [0, 1] instead to 48% / 10%.

Baseline: backprop with the straight-through estimator on the same net (forward 1[a > 0], backward
the clipped identity 1[|a| ≤ 1]), same batches, same initial weights. Each method at its best: init x optimizer x
rate for the baseline, init x block rate (admm-online) / init x ρ (admm-relaxed) for Block-ADMM, chosen on the
validation accuracy of the first seed; the chosen candidate of each then runs the other seeds.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from ..binary import SURROGATES, BinaryBlock, binary_projection
from ..models import init_weights
from . import common as C
from . import fair

METHODS = ("admm-online", "admm-relaxed", "backprop-ste")
INITS = ("default", "xavier", "orthogonal")  # xavier/orthogonal with gain 1 on the step units
STE_RATES = {"sgd": (0.1, 0.3), "adam": (3e-4, 1e-3, 3e-3)}  # the straight-through baseline's optimizers and rates
BLOCK_LRS = (1e-3, 3e-3)  # admm-online: Adam rate of each block's surrogate fit
RELAXED_RHOS = (1.0, 2.0)  # admm-relaxed: the penalty (lr_z = 1/rho)


def binary_mlp(run: C.Run):
    sp = run.splits
    torch.manual_seed(run.seed)
    blocks, prev = [], sp.train.input_shape[0]
    for _ in range(run.depth):
        blocks.append(
            BinaryBlock(
                prev,
                run.width,
                lr=run.extra.get("block_lr", 1e-3),
                surrogate=run.extra.get("surrogate", "hinge"),
                margin=run.extra.get("margin", 0.1),
            )
        )
        prev = run.width
    blocks.append(nn.Sequential(nn.Linear(prev, sp.num_classes)))
    model = init_weights(nn.Sequential(*blocks), run.init, "step")  # a step unit has no usual gain: 1
    return model, list(model)


def candidates(quick: bool = False) -> list[dict]:
    """Each method's candidates (init x optimizer x rate for the straight-through baseline, init x block rate /
    penalty for Block-ADMM), each with its `label`; --quick: two inits and one setting per method."""
    out = []
    for init in INITS[:2] if quick else INITS:
        for optimizer, rates in STE_RATES.items():
            for lr in rates[1:2] if quick else rates:
                out.append({"method": "backprop-ste", "init": init, "optimizer": optimizer, "lr": lr})
        for block_lr in BLOCK_LRS[:1] if quick else BLOCK_LRS:
            out.append({"method": "admm-online", "init": init, "block_lr": block_lr})
        for rho in RELAXED_RHOS[-1:] if quick else RELAXED_RHOS:
            out.append({"method": "admm-relaxed", "init": init, "rho": rho})
    if quick:
        out = [c for c in out if c.get("optimizer") != "sgd"]
    for c in out:
        c["label"] = " ".join(
            [c["method"]]
            + [
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in c.items()
                if k not in ("method", "init")
            ]
            + [f"init={c['init']}"]
        )
    return out


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depths", help="comma list of binary hidden-layer counts (default 2,4)")
    p.add_argument("--methods", help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--seeds", help="comma list (default 0,1,2); the first one chooses each method's candidate")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (--quick 3)")
    p.add_argument(
        "--lr-z", type=float, default=20.0, help="auxiliary step size of Block-ADMM (capped at 1/rho by the trainer)"
    )
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--sweeps", type=int, default=2, help="sweeps per mini-batch")
    p.add_argument("--margin", type=float, default=0.1, help="hinge-surrogate margin")
    p.add_argument("--surrogate", default="hinge", choices=SURROGATES)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="depth 2, seed 0, 3 epochs, a reduced candidate list")
    p.add_argument("--out", default="runs/experiments/binary")
    p.add_argument("--no-progress", action="store_true")


def train(c: dict, depth: int, seed: int, epochs: int, splits, args, progress) -> dict:
    """One run of candidate `c` on the binary net of `depth` hidden layers."""
    method, relaxed = c["method"], c["method"] == "admm-relaxed"
    run = C.Run(
        method=method,
        depth=depth,
        activation="step",
        seed=seed,
        epochs=epochs,
        splits=splits,
        init=c["init"],
        extra={
            "block_lr": c.get("block_lr", 1e-3),
            "surrogate": "ste" if relaxed else args.surrogate,
            "margin": args.margin,
        },
    )
    if method == "backprop-ste":
        rec = C.run_backprop(run, c["optimizer"], c["lr"], blocks_factory=binary_mlp, progress=progress)
    else:
        rho = c["rho"] if relaxed else args.rho
        run.overrides = {
            "preset": "default",
            "lr_z": 1.0 / rho if relaxed else args.lr_z,
            "rho": rho,
            "sweeps": args.sweeps,
            "weight_lr": run.extra["block_lr"],
        }
        constraints = None if relaxed else {k: binary_projection() for k in range(depth)}
        rec = C.run_admm(run, "online", blocks_factory=binary_mlp, progress=progress, constraints=constraints)
        rec.pop("config", None)
    return {**rec, "family": method, "label": c["label"], "phase": "select" if seed == args.seed_list[0] else "seed"}


def key(r: dict) -> tuple:
    return r["depth"], r.get("label", r["method"]), r["seed"]


def main(args) -> int:
    from tqdm.auto import tqdm

    C.setup_threads()
    splits = C.load_data(train_size=args.train_size)
    depths = C.parse_list(args.depths, int) or ([2] if args.quick else [2, 4])
    methods = C.parse_list(args.methods) or list(METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    args.seed_list = C.parse_list(args.seeds, int) or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (3 if args.quick else 10)
    meta = {
        "dataset": "mnist5k",
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
        "epochs": epochs,
        "batch_size": 100,
        "width": 256,
        "lr_z": args.lr_z,
        "rho": args.rho,
        "sweeps": args.sweeps,
        "surrogate": args.surrogate,
        "margin": args.margin,
        "projection": "z <- 1[z > 1/2]",
        "selection": f"final validation accuracy, seed {args.seed_list[0]}, per method",
        "quick": bool(args.quick),
        "command": "blockadmm experiment binary" + (" --quick" if args.quick else ""),
    }
    results = fair.ResultsFile(args.out, "binary", meta, key)
    cands = [c for c in candidates(args.quick) if c["method"] in methods]
    bar = tqdm(depths, desc="binary", disable=args.no_progress)

    def ensure(c, depth, seed):
        if results.get((depth, c["label"], seed)) is None:
            results.add(train(c, depth, seed, epochs, splits, args, bar))
        return results.get((depth, c["label"], seed))

    for depth in bar:
        first = [ensure(c, depth, args.seed_list[0]) for c in cands]
        for method in methods:
            best = max((r for r in first if r["family"] == method), key=lambda r: r["val_acc"])
            for seed in args.seed_list[1:]:
                ensure(next(c for c in cands if c["label"] == best["label"]), depth, seed)
    rows = summary_rows(results.records, args.seed_list[0])
    results.write(summary=rows)
    plot(results.records, rows, args.out)
    print(summary(rows))
    return 0


def summary_rows(records: list[dict], first_seed: int = 0) -> list[dict]:
    """Per depth and method: the candidate chosen on validation (seed `first_seed`) and its seeds' test accuracies."""
    rows = []
    for depth in sorted({r["depth"] for r in records}):
        at = [r for r in records if r["depth"] == depth]
        for method in METHODS:
            pool = [r for r in at if r["method"] == method and r["seed"] == first_seed]
            if not pool:
                continue
            best = max(pool, key=lambda r: r["val_acc"])
            rs = sorted(
                (r for r in at if r.get("label", r["method"]) == best.get("label", method)), key=lambda r: r["seed"]
            )
            tests = [r["test_acc"] for r in rs]
            rows.append(
                {
                    "depth": depth,
                    "method": method,
                    "config": best.get("label", method),
                    "init": best.get("init", "default"),
                    "candidates": len(pool),
                    "seeds": [r["seed"] for r in rs],
                    "test_accs": tests,
                    "mean_test": C.mean(tests),
                    "worst_test": min(tests),
                }
            )
    return rows


def summary(rows: list[dict]) -> str:
    lines = ["depth  method         seeds  mean_test  worst_test  config"]
    for r in rows:
        lines.append(
            f"{r['depth']:5d}  {r['method']:13s}  {len(r['seeds']):5d}  {r['mean_test']:9.3f}  "
            f"{r['worst_test']:10.3f}  {r['config']}"
        )
    return "\n".join(lines)


def plot(records, rows, out):
    """Test accuracy per epoch of each method's chosen candidate, every seed, one panel per depth."""
    plt = C.plt()
    depths = sorted({r["depth"] for r in rows})
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.4), squeeze=False)
    for ax, d in zip(axes[0], depths):
        for i, m in enumerate(METHODS):
            row = next((r for r in rows if r["depth"] == d and r["method"] == m), None)
            rs = [r for r in records if r["depth"] == d and row and r.get("label", m) == row["config"]]
            for k, r in enumerate(rs):
                ax.plot(
                    range(1, len(r["history"]) + 1),
                    [h["test_acc"] for h in r["history"]],
                    color=f"C{i}",
                    label=m if k == 0 else None,
                )
        ax.set_title(f"{d} binary hidden layers of 256")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "binary.png"), dpi=110)
    plt.close(fig)
