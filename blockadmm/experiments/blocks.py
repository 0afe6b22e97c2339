"""`blockadmm experiment blocks`: one 8-layer MLP cut into 1, 2, 4, 8 (and 9) blocks, three orders.

784 → 8×256 → 10 (9 layers) on MNIST-5k, online Block-ADMM with the recipe of the activation
(sigmoid: the "deep" preset; ReLU: the defaults), blocks of consecutive layers as even as possible
(8 blocks: the first holds two layers; 9: one layer per block). Orders: sequential top-down,
sequential bottom-up, Jacobi. One block is plain backprop with the block's optimizer (Adam at the
recipe's learning rate). Accuracy and time per epoch, same batches and initial weights for all.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

from . import common as C

ORDERS = ("top-down", "bottom-up", "jacobi")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blocks", help="comma list of block counts (default 1,2,4,8,9)")
    p.add_argument("--orders", help="comma list of top-down,bottom-up,jacobi")
    p.add_argument("--activations", help="comma list (default sigmoid,relu)")
    p.add_argument("--depth", type=int, default=8, help="hidden layers (default 8)")
    p.add_argument("--seeds", help="comma list (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (--quick 3)")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="sigmoid; 1, 4, 9 blocks; top-down, jacobi; 3 epochs")
    C.add_init_arg(p)
    p.add_argument("--out", default="runs/experiments/blocks")
    p.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    from tqdm.auto import tqdm

    C.setup_threads()
    splits = C.load_data(train_size=args.train_size)
    n_layers = args.depth + 1
    counts = C.parse_list(args.blocks, int) or ([1, 4, n_layers] if args.quick else [1, 2, 4, 8, n_layers])
    counts = [c for c in counts if 1 <= c <= n_layers]
    orders = C.parse_list(args.orders) or (["top-down", "jacobi"] if args.quick else list(ORDERS))
    acts = C.parse_list(args.activations) or (["sigmoid"] if args.quick else ["sigmoid", "relu"])
    seeds = C.parse_list(args.seeds, int) or [0]
    epochs = args.epochs or (3 if args.quick else 10)
    cells = []
    for act in acts:
        for s in seeds:
            for nb in counts:
                for order in ["-"] if nb == 1 else orders:
                    cells.append((act, s, nb, order))
    meta = {
        "dataset": "mnist5k",
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
        "depth": args.depth,
        "epochs": epochs,
        "batch_size": 100,
        "quick": bool(args.quick),
        "init": args.init,
        "command": "blockadmm experiment blocks"
        + (" --quick" if args.quick else "")
        + (f" --init {args.init}" if args.init != "default" else ""),
    }
    records = []
    bar = tqdm(cells, desc="blocks", disable=args.no_progress)
    for act, s, nb, order in bar:
        method = "backprop (1 block)" if nb == 1 else f"admm {order}"
        run = C.Run(
            method=method,
            depth=args.depth,
            activation=act,
            seed=s,
            epochs=epochs,
            splits=splits,
            n_blocks=nb,
            overrides={} if nb == 1 else {"order": order},
            init=args.init,
        )
        rec = C.run_admm(run, "online", progress=bar)
        rec.update({"n_blocks": nb, "order": order, "recipe": C.admm_recipe(act, args.depth)["preset"]})
        records.append(rec)
        C.write_results(args.out, "blocks", records, meta)
    plot(records, args.out)
    print(summary(records))
    return 0


def summary(records) -> str:
    lines = ["activation  blocks  order      seed  test_acc  s/epoch"]
    for r in sorted(records, key=lambda r: (r["activation"], r["n_blocks"], r["order"], r["seed"])):
        lines.append(
            f"{r['activation']:10s}  {r['n_blocks']:6d}  {r['order']:9s}  {r['seed']:4d}  {r['test_acc']:8.3f}  "
            f"{r['time_per_epoch_s']:7.2f}"
        )
    return "\n".join(lines)


def plot(records, out):
    plt = C.plt()
    acts = sorted({r["activation"] for r in records})
    fig, axes = plt.subplots(2, len(acts), figsize=(4.6 * len(acts), 6.4), squeeze=False)
    for j, act in enumerate(acts):
        rs = [r for r in records if r["activation"] == act]
        one = [r for r in rs if r["n_blocks"] == 1]
        for i, order in enumerate(ORDERS):
            t = defaultdict(list)
            for r in rs:
                if r["order"] == order:
                    t[r["n_blocks"]].append(r)
            xs = sorted(t) if t else []
            if one and xs:
                xs = [1] + xs
                t[1] = one
            if not xs:
                continue
            axes[0][j].plot(xs, [C.mean(r["test_acc"] for r in t[x]) for x in xs], "o-", color=f"C{i}", label=order)
            axes[1][j].plot(
                xs, [C.mean(r["time_per_epoch_s"] for r in t[x]) for x in xs], "o-", color=f"C{i}", label=order
            )
        axes[0][j].set_title(f"{act}, {rs[0]['depth']} layers of 256")
        axes[0][j].set_ylabel("test accuracy (last epoch)")
        axes[1][j].set_ylabel("seconds per epoch (1 CPU thread)")
        for ax in axes[:, j]:
            ax.set_xlabel("blocks (1 = backprop)")
            ax.set_xscale("log", base=2)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "blocks.png"), dpi=110)
    plt.close(fig)
