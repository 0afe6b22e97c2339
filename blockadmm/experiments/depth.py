"""`blockadmm experiment depth`: deep MLPs where backprop stalls, Block-ADMM against honest baselines.

MNIST-5k (3,200 train / 800 val / 1,000 test, no normalization, default init), MLP 784 → L×256 → 10,
batch 100, 10 epochs; every method on the same batches from the same initial weights.
Default grid: L ∈ {2, 4, 8, 16}, sigmoid / tanh / ReLU, every method; seeds 0–2 at depth 8 sigmoid,
seed 0 elsewhere.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

from . import common as C

DEFAULT_DEPTHS = (2, 4, 8, 16)
DEFAULT_ACTS = ("sigmoid", "tanh", "relu")
# nets run with seeds 0, 1, 2 by default (0 elsewhere): the nets of the claims (deep sigmoid, deep tanh) and the
# foundation issue's net
SEEDED_NETS = {(8, "sigmoid"), (8, "tanh"), (2, "relu")}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--depths", help="comma list of hidden-layer counts (default 2,4,8,16)")
    p.add_argument("--activations", help="comma list of sigmoid,tanh,relu")
    p.add_argument("--methods", help=f"comma list of {','.join(C.METHODS)}")
    p.add_argument(
        "--seeds", help="comma list; default: 0,1,2 at depth 8 sigmoid, depth 8 tanh and depth 2 relu, 0 elsewhere"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10; --quick 3)")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training samples")
    p.add_argument(
        "--rho", type=float, default=None, help="override the recipe's rho in every Block-ADMM run (for tuning)"
    )
    p.add_argument("--quick", action="store_true", help="reduced grid (depths 2,8; sigmoid; 3 epochs; under 2 minutes)")
    p.add_argument(
        "--update",
        action="store_true",
        help="run only the selected cells and replace their records in the --out results, keeping the others "
        "and the command that made them (a cell's run depends only on its method, net and seed: with the same code it "
        "gives what the full grid gives)",
    )
    C.add_init_arg(p)
    p.add_argument("--out", default="runs/experiments/depth")
    p.add_argument("--no-progress", action="store_true")


def grid(args):
    depths = C.parse_list(args.depths, int) or ([2, 8] if args.quick else list(DEFAULT_DEPTHS))
    acts = C.parse_list(args.activations) or (["sigmoid"] if args.quick else list(DEFAULT_ACTS))
    methods = C.parse_list(args.methods) or list(C.METHODS)
    bad = [m for m in methods if m not in C.METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; choose from {', '.join(C.METHODS)}")
    seeds = C.parse_list(args.seeds, int)
    cells = []
    for act in acts:
        for d in depths:
            ss = seeds if seeds is not None else ([0, 1, 2] if (d, act) in SEEDED_NETS and not args.quick else [0])
            for s in ss:
                for m in methods:
                    cells.append((m, d, act, s))
    return cells


def main(args) -> int:
    from tqdm.auto import tqdm

    C.setup_threads()
    splits = C.load_data(train_size=args.train_size)
    epochs = args.epochs or (3 if args.quick else 10)
    cells = grid(args)
    info, kept = meta(args, epochs, args.train_size, splits), []
    if args.update:
        old = C.read_results(os.path.join(args.out, "results.json"))
        if old["meta"]["epochs"] != epochs:
            raise SystemExit(
                f"--update: {args.out} holds {old['meta']['epochs']}-epoch runs, this is {epochs}: pass --epochs "
                f"{old['meta']['epochs']}"
            )
        info = old["meta"]
        rerun = {(m, d, act, s) for m, d, act, s in cells}
        kept = [r for r in old["records"] if (r["method"], r["depth"], r["activation"], r["seed"]) not in rerun]
    records = []
    bar = tqdm(cells, desc="depth", disable=args.no_progress)
    for m, d, act, s in bar:
        overrides = {"rho": args.rho} if args.rho is not None and m.startswith("admm") else {}
        run = C.Run(
            method=m, depth=d, activation=act, seed=s, epochs=epochs, splits=splits, overrides=overrides, init=args.init
        )
        rec = C.run_method(run, progress=bar)
        rec["recipe"] = (
            (
                "fast"
                if m == "admm-fast"
                else C.admm_recipe(act, d, "batch" if m == "admm-batch" else "online")["preset"]
            )
            if m.startswith("admm")
            else None
        )
        records.append(rec)
        C.write_results(args.out, "depth", kept + records, info)  # partial results survive
    records = kept + records
    C.write_results(args.out, "depth", records, info)
    plot(records, args.out)
    print(summary(records))
    return 0


def meta(args, epochs, train_size, splits):
    return {
        "dataset": "mnist5k",
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
        "epochs": epochs,
        "batch_size": 100,
        "width": 256,
        "quick": bool(args.quick),
        "command": command(args),
    }


def command(args) -> str:
    """The command line that reproduces this run (the grid flags given, the output folder)."""
    flags = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("depths", "activations", "methods", "seeds", "epochs", "train_size", "rho", "init")
        if getattr(args, name, None) not in (None, "default")
    ]
    return " ".join(["blockadmm experiment depth"] + (["--quick"] if args.quick else []) + flags)


def table(records):
    """{(activation, method, depth): [records]}"""
    t = defaultdict(list)
    for r in records:
        t[(r["activation"], r["method"], r["depth"])].append(r)
    return t


def summary(records) -> str:
    lines = ["activation  method          depth  seeds  mean_test  worst_test  best_epoch_test"]
    for (act, m, d), rs in sorted(table(records).items()):
        lines.append(
            f"{act:10s}  {m:14s}  {d:5d}  {len(rs):5d}  {C.mean(r['test_acc'] for r in rs):9.3f}  "
            f"{min(r['test_acc'] for r in rs):10.3f}  {C.mean(r['best_test_acc'] for r in rs):15.3f}"
        )
    return "\n".join(lines)


def plot(records, out):
    plt = C.plt()
    t = table(records)
    acts = sorted({r["activation"] for r in records})
    methods = [m for m in C.METHODS if any(r["method"] == m for r in records)]
    depths = sorted({r["depth"] for r in records})
    fig, axes = plt.subplots(
        1, len(acts), figsize=(1.2 + 1.3 * len(depths) * len(acts), 0.6 + 0.45 * len(methods)), squeeze=False
    )
    for ax, act in zip(axes[0], acts):
        grid = [[C.mean(r["test_acc"] for r in t.get((act, m, d), [])) for d in depths] for m in methods]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        ax.set_xticks(range(len(depths)), [str(d) for d in depths])
        ax.set_yticks(range(len(methods)), methods if ax is axes[0][0] else [""] * len(methods))
        ax.set_xlabel("hidden layers")
        ax.set_title(f"{act}: mean test acc (%)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(os.path.join(out, "heatmap.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    # per-layer diagnostics of Block-ADMM (online) beside backprop-adam, seed 0 of each net
    nets = sorted({(r["activation"], r["depth"]) for r in records})
    if not nets:
        return
    fig, axes = plt.subplots(2, len(nets), figsize=(2.6 * len(nets), 5.2), squeeze=False)
    for j, (act, d) in enumerate(nets):
        ax_s, ax_p = axes[0][j], axes[1][j]
        for m, style in (("admm-online", "-"), ("admm-batch", ":"), ("backprop-adam", "--"), ("backprop-sgd", "-.")):
            rs = [r for r in t.get((act, m, d), []) if r["seed"] == min(x["seed"] for x in t[(act, m, d)])]
            if not rs:
                continue
            h = rs[0]["history"]
            ax_s.semilogy(
                range(1, d + 1), h[0]["spread"], style, alpha=0.4, color="C0" if m.startswith("admm") else "C1"
            )
            ax_s.semilogy(
                range(1, d + 1), h[-1]["spread"], style, label=m, color="C0" if m.startswith("admm") else "C1"
            )
            if m == "admm-online" and "primal_residual" in h[-1]:
                ax_p.plot(range(1, d + 1), h[0]["primal_residual"], "o-", alpha=0.4, label="epoch 1")
                ax_p.plot(range(1, d + 1), h[-1]["primal_residual"], "o-", label=f"epoch {len(h)}")
        ax_s.set_title(f"{act}, {d} layers", fontsize=9)
        ax_s.set_xlabel("block")
        ax_p.set_xlabel("boundary")
        if j == 0:
            ax_s.set_ylabel("output spread across samples")
            ax_p.set_ylabel("primal residual (admm-online)")
            for ax in (ax_s, ax_p):
                if ax.get_legend_handles_labels()[0]:  # the residual panel is empty without admm-online
                    ax.legend(fontsize=6)
    fig.suptitle("faint: after epoch 1, solid: last epoch", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "diagnostics.png"), dpi=110)
    plt.close(fig)

    # test accuracy per epoch at depth 8 sigmoid (or the first net), every seed
    act, d = ("sigmoid", 8) if ("sigmoid", 8) in nets else nets[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(methods):
        for k, r in enumerate(t.get((act, m, d), [])):
            ax.plot([h["test_acc"] for h in r["history"]], color=f"C{i}", label=m if k == 0 else None, alpha=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{d} {act} layers of 256, every seed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)
