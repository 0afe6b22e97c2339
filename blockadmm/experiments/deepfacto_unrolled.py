"""`blockadmm experiment deepfacto_unrolled`: DeepFacto against an NMF layer trained by backprop.

The baseline is DeepFacto's network (same features, same class-grouped NMF basis init and l1, same head, same loss,
same initial weights) with the NMF codes solved by unrolled multiplicative updates and trained by backprop through a
one-step gradient: the first n_iter-1 updates without autograd, the last one with it (the "Hamburger" approach, Geng
et al. 2021, ICLR). Tasks: supervised MNIST-5k (accuracy, disentangling) and MNIST-5k pairs (pointing game, both
labels right), beside DeepFacto (Block-ADMM) and the CAM network, 3 seeds; the baseline's Adam rate is chosen on
validation with seed 0.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ..data import load
from ..deepfacto import (
    WindowFeatures,
    build_deepfacto,
    codes_of,
    feature_cnn,
    init_basis,
    multilabel_softmax_loss,
    window_maps,
)
from ..nmf import NMFLayer, _from_rows, _to_rows, disentangling_score
from ..pairs import load_pairs
from . import common as C
from . import fair
from .deepfacto_runs import _pairs_eval, ink_proposals, run_pairs, run_supervised
from .training import run_backprop

TASKS = ("supervised", "pairs")
RATES = (1e-3, 3e-3)
SCORE = {"supervised": "val_acc", "pairs": "val_pointing"}  # the baseline's rate is chosen on this
# the protocol of each task: the recipes with fewer samples and epochs than DeepFacto's own section (supervised: 1,500
# of the 3,600 training digits, 6 epochs instead of 12; pairs: 600 / 300 canvases instead of 4,000 / 1,000, 3 curriculum
# and 3 canvas epochs, CAM 9), the same for every method, so that 3 seeds fit the grid's time on a shared machine
PROTOCOL = {
    "supervised": {"epochs": 6, "n_train": 1500},
    "pairs": {"epochs": 3, "n_train": 600, "n_test": 300, "curriculum_epochs": 3, "window_stride": 2, "cam_epochs": 9},
}
# DeepFacto's own protocol (its section of the README: 4,000 / 1,000 canvases, 15 curriculum epochs on ink proposals,
# 4 on the canvases, CAM 15), for the pairs task; `--full`
FULL = {
    "supervised": {"epochs": 12, "n_train": None},
    "pairs": {"epochs": 4, "n_train": 4000, "n_test": 1000, "curriculum_epochs": 15, "window_stride": 2,
              "cam_epochs": 15},
}
QUICK = {
    "supervised": {"epochs": 1, "n_train": 300},
    "pairs": {"epochs": 1, "n_train": 200, "n_test": 100, "curriculum_epochs": 1, "window_stride": 2, "cam_epochs": 1},
}


class UnrolledNMF(nn.Module):
    """Codes of `nmf`'s basis by its multiplicative updates, unrolled: all but the last without autograd, the last
    with it, so backprop reaches the features through one update (the one-step gradient). Values equal nmf(V)."""

    def __init__(self, nmf: NMFLayer):
        super().__init__()
        self.nmf = nmf

    def forward(self, V: torch.Tensor) -> torch.Tensor:
        V2, spatial = _to_rows(V)
        H = self.nmf.encode_rows(V2, n_iter=self.nmf.n_iter - 1)
        W = self.nmf.W.detach()
        H = H * (V2 @ W.T) / (H @ (W @ W.T) + (self.nmf.l1 + self.nmf.eps))
        return _from_rows(H, spatial)


def _unrolled_model(feats: nn.Module, sample: torch.Tensor, **recipe) -> tuple[list, nn.Sequential]:
    """DeepFacto's blocks with its recipe (energy head, 5 atoms a class, 10 NMF iterations, frozen basis; `recipe`
    adds the task's) and the backprop model over them: features, the NMF layer unrolled, the head."""
    with torch.no_grad():
        feat_shape = tuple(feats(sample).shape[1:])
    blocks = build_deepfacto(feats, feat_shape, 10, normalize=False, head="energy", per_class=5, n_iter=10,
                             update_epochs=0, solver="gram", **recipe)
    return blocks, nn.Sequential(blocks[0], UnrolledNMF(blocks[1]), blocks[2])


def supervised_unrolled(
    seed: int,
    lr: float,
    *,
    epochs: int,
    n_train=None,
    batch_size: int = 64,
    use_test: bool = True,
    progress: bool = False,
) -> dict:
    """The baseline on supervised MNIST-5k, built as run_supervised builds DeepFacto (energy head, its recipe)."""
    data = load("mnist5k", image=True, val_fraction=0.1, split_seed=0)
    train = C.subset(data.train, n_train)
    torch.manual_seed(seed)
    blocks, model = _unrolled_model(feature_cnn(1), train.X[:2], l1=0.1)
    init_basis(blocks, train, seed=seed, contrast=2.0)

    def evaluate(m):
        out = {}
        for name, ds in (("val", data.val), ("test", data.test if use_test else None)):
            if ds is not None:
                out[f"{name}_acc"] = C.accuracy(m, ds)
                out[f"{name}_disentangling"] = disentangling_score(codes_of(blocks, ds.X), ds.Y, blocks[1].group, 10)
        return out

    history = run_backprop(
        model,
        train,
        epochs,
        batch_size=batch_size,
        seed=seed,
        optimizer="adam",
        lr=lr,
        evaluate=evaluate,
        progress=progress,
        desc="backprop unrolled NMF",
    )
    return {**history[-1], "history": history, "epoch_s": C.mean(h["wall_s"] for h in history)}


def pairs_unrolled(
    seed: int,
    lr: float,
    *,
    epochs: int,
    n_train: int,
    n_test: int,
    curriculum_epochs: int,
    window_stride: int,
    batch_size: int = 64,
    use_test: bool = True,
    progress: bool = False,
) -> dict:
    """The baseline on MNIST-5k pairs, built and trained as run_pairs trains DeepFacto (window features, smooth-max
    pooled energy head, multi-label softmax loss, the ink-proposal curriculum first)."""
    data = load_pairs(n_train, n_test, val_fraction=0.1, seed=0)
    torch.manual_seed(seed)
    feats = WindowFeatures(feature_cnn(1, flatten=False, normalize=False), stride=window_stride)
    blocks, model = _unrolled_model(feats, data.train.X[:2], pool_r=4.0, l1=0.03)
    kw = {
        "batch_size": batch_size,
        "seed": seed,
        "optimizer": "adam",
        "lr": lr,
        "loss_fn": multilabel_softmax_loss,
        "progress": progress,
    }
    if curriculum_epochs:
        single = ink_proposals(data.train.X, data.train.Y)
        init_basis(blocks, single, seed=seed, contrast=2.0)
        run_backprop(model, single, curriculum_epochs, desc="unrolled NMF curriculum", **kw)
    else:
        init_basis(blocks, data.train, seed=seed, contrast=2.0)

    def maps(x):
        return window_maps(
            blocks[1].group_energy(blocks[1](blocks[0](x))), x.shape[-2:], pixel_stride=4 * window_stride
        )

    def evaluate(m):
        out = {}
        for name, ds in (("val", data.val), ("test", data.test if use_test else None)):
            if ds is not None:
                r = _pairs_eval(m, maps, ds)
                out[f"{name}_acc_both"], out[f"{name}_pointing"] = r["acc_both"], r["pointing"]
                out[f"{name}_disentangling"] = disentangling_score(
                    codes_of(blocks, ds.X[:500]), ds.Y[:500], blocks[1].group, 10
                )
        return out

    history = run_backprop(model, data.train, epochs, evaluate=evaluate, desc="unrolled NMF", **kw)
    return {**history[-1], "history": history, "epoch_s": C.mean(h["wall_s"] for h in history)}


def deepfacto_and_cam(task: str, seed: int, protocol: dict, progress: bool) -> list[dict]:
    """DeepFacto (Block-ADMM) and its backprop baselines of the same run (CAM; supervised: also the linear head)."""
    if task == "supervised":
        r = run_supervised(
            seed,
            epochs=protocol["epochs"],
            head="energy",
            n_train=protocol["n_train"],
            progress=progress,
            log=lambda *a: None,
        )
        recs = [
            {
                "method": "deepfacto",
                "val_acc": r["val_acc"],
                "test_acc": r["test_acc"],
                "val_disentangling": r["val_disentangling"],
                "test_disentangling": r["test_disentangling"],
                "epoch_s": r["deepfacto_epoch_s"],
            },
            {"method": "cam", **r["backprop_gap"]},
            {"method": "backprop-linear", **r["backprop_linear"]},
        ]
    else:
        r = run_pairs(
            seed,
            epochs=protocol["epochs"],
            n_train=protocol["n_train"],
            n_test=protocol["n_test"],
            curriculum_epochs=protocol["curriculum_epochs"],
            cam_epochs=protocol["cam_epochs"],
            window_stride=protocol["window_stride"],
            progress=progress,
            log=lambda *a: None,
        )
        recs = [
            {
                "method": "deepfacto",
                **{
                    f"{s}_{k}": r[f"{s}_{k}"]
                    for s in ("val", "test")
                    for k in ("acc_both", "pointing", "disentangling")
                },
                "epoch_s": r["deepfacto_epoch_s"],
            },
            {
                "method": "cam",
                **{f"{s}_{k}": r[f"{s}_cam_{k}"] for s in ("val", "test") for k in ("acc_both", "pointing")},
                "epoch_s": r["cam_epoch_s"],
            },
            {"method": "most-ink", "test_pointing": r["test_most_ink_pointing"]},
        ]
    return [{k: v for k, v in rec.items() if k not in ("history", "epoch")} for rec in recs]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", help=f"comma list of {','.join(TASKS)} (default both)")
    p.add_argument("--quick", action="store_true", help="1 epoch on a few hundred samples, seeds 0 and 1 (smoke run)")
    p.add_argument("--full", action="store_true",
                   help="DeepFacto's own protocol (pairs: 4,000 canvases, 15 curriculum epochs, 4 on the canvases)")
    p.add_argument("--seeds", help="comma list of seeds (default 0,1,2; the rate is chosen on the first)")
    p.add_argument("--out", default="runs/experiments/deepfacto_unrolled")
    p.add_argument("--no-progress", action="store_true")


def key(r: dict) -> tuple:
    return r["task"], r["label"], r["seed"]


def unrolled(results: fair.ResultsFile, task: str, protocol: dict, seed: int, lr: float, progress: bool) -> dict:
    """The unrolled-NMF baseline's run of `task` with this seed and Adam rate, from `results` if it is there."""
    label = f"unrolled-nmf lr={lr:g}"
    if results.get((task, label, seed)) is None:
        run = supervised_unrolled if task == "supervised" else pairs_unrolled
        r = run(seed, lr, progress=progress, **{k: v for k, v in protocol.items() if k != "cam_epochs"})
        results.add(
            {
                "task": task,
                "method": "unrolled-nmf",
                "label": label,
                "seed": seed,
                "lr": lr,
                "init": "default",
                **{k: v for k, v in r.items() if k not in ("history", "epoch")},
            }
        )
    return results.get((task, label, seed))


def main(args) -> int:
    C.setup_threads()
    tasks = C.parse_list(args.tasks) or list(TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"unknown tasks {bad}; choose from {', '.join(TASKS)}")
    if args.quick and args.full:
        raise SystemExit("pass --quick or --full, not both")
    protocols = QUICK if args.quick else FULL if args.full else PROTOCOL
    seeds = [int(s) for s in C.parse_list(args.seeds)] if args.seeds else fair.SEEDS[:2] if args.quick else fair.SEEDS
    info = {
        "protocol": protocols,
        "seeds": list(seeds),
        "rates": list(RATES),
        "quick": bool(args.quick),
        "epochs": None,
        "train": None,
        "command": " ".join(
            ["blockadmm experiment deepfacto_unrolled"]
            + (["--quick"] if args.quick else [])
            + (["--full"] if args.full else [])
            + ([f"--seeds {args.seeds}"] if args.seeds else [])
            + ([f"--tasks {args.tasks}"] if args.tasks else [])
        ),
    }
    results = fair.ResultsFile(args.out, "deepfacto_unrolled", info, key)
    progress = not args.no_progress
    for task in tasks:
        score = SCORE[task]
        best = max(
            (unrolled(results, task, protocols[task], seeds[0], lr, progress) for lr in RATES), key=lambda r: r[score]
        )
        for seed in seeds:
            unrolled(results, task, protocols[task], seed, best["lr"], progress)
            if results.get((task, "deepfacto", seed)) is None:
                for rec in deepfacto_and_cam(task, seed, protocols[task], progress):
                    if results.get((task, rec["method"], seed)) is None:
                        results.add({"task": task, "label": rec["method"], "seed": seed, "init": "default", **rec})
    results.write(summary=summary_rows(results.records))
    print(summary(summary_rows(results.records)))
    return 0


def summary_rows(records: list[dict]) -> list[dict]:
    """Per task and method (the unrolled baseline: its chosen rate), mean and worst over seeds of each test metric."""
    rows = []
    for task in TASKS:
        recs = [r for r in records if r["task"] == task]
        firsts = [r for r in recs if r["method"] == "unrolled-nmf" and r["seed"] == 0]
        chosen = max(firsts, key=lambda r: r[SCORE[task]])["label"] if firsts else None
        for label in ["deepfacto", chosen, "cam", "backprop-linear", "most-ink"]:
            rs = [r for r in recs if r["label"] == label]
            if not rs:
                continue
            metrics = sorted({k for r in rs for k in r if k.startswith("test_")})
            rows.append(
                {
                    "task": task,
                    "method": rs[0]["method"],
                    "config": label,
                    "seeds": [r["seed"] for r in rs],
                    **{
                        m: {
                            "mean": C.mean(r[m] for r in rs),
                            "worst": min(r[m] for r in rs),
                            "per_seed": [r[m] for r in rs],
                        }
                        for m in metrics
                    },
                }
            )
    return rows


def summary(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        metrics = " ".join(
            f"{k[5:]} {100 * v['mean']:.1f} (worst {100 * v['worst']:.1f})"
            for k, v in r.items()
            if k.startswith("test_")
        )
        lines.append(f"{r['task']:10s} {r['config']:24s} seeds {len(r['seeds'])}: {metrics}")
    return "\n".join(lines)
