"""`blockadmm experiment convergence`: batch mode run long, augmented Lagrangian and residuals.

A small problem (default: sklearn digits, 1,437 train / 360 test, or MNIST-1D), an MLP
in → 64 → 64 → 10 ReLU cut one layer per block, batch-mode Block-ADMM (per-sample z/u tables) with the
default recipe (plain gradient step, top-down, 2 sweeps), mini-batches of 100, run for many epochs, under a constant ρ
and the adaptive schedule
(ρ doubled, up to 100, when a boundary's mean primal residual over 40 steps stops falling by 10%) and
the same schedule checked only every 10 epochs ("adaptive-slow").

Measured after every epoch over the whole training set, from the tables:
  augmented Lagrangian  L = (1/N) Σ_i [ ℓ(f_B(z_{B-1,i}), y_i)
                                      + Σ_b (ρ_b/2)(‖z_{b,i} − f_b(z_{b-1,i}) + u_{b,i}‖² − ‖u_{b,i}‖²) ]
  primal residual       ‖z_b − f_b(z_{b-1})‖ / ‖z_b‖ per boundary (all samples)
  dual residual         ρ_b ‖z_b(epoch t) − z_b(epoch t−1)‖ / ‖z_b‖ per boundary
plus the task loss and accuracy of the plain forward network; per iteration, the mini-batch residuals
the trainer reports.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from .. import data as bdata
from . import common as C
from .training import train_epochs

SCHEDULES = ("constant", "adaptive", "adaptive-slow")
# adaptive: the trainer's default check (every 40 mini-batch steps); adaptive-slow: every 10 epochs,
# so that in batch mode every sample's z/u has been revisited many times between two checks


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", choices=["digits", "mnist1d"])
    p.add_argument("--epochs", type=int, default=None, help="default 150 (--quick 15)")
    p.add_argument("--rho", type=float, default=1.0, help="initial rho")
    p.add_argument("--schedules", help="comma list of constant,adaptive,adaptive-slow")
    p.add_argument("--seeds", help="comma list (default 0)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="runs/experiments/convergence")
    p.add_argument("--no-progress", action="store_true")


@torch.no_grad()
def table_metrics(trainer, X, Y, z_prev):
    """Augmented Lagrangian, primal and dual residuals over the whole training set (batch-mode tables)."""
    tabs, B = trainer.tables, trainer.n_blocks
    zs = [t.to(trainer.device) for t in tabs.z]
    us = [t.to(trainer.device) for t in tabs.u]
    inp, primal, dual, L = X, [], [], 0.0
    n = X.shape[0]
    for b in range(B - 1):
        a = trainer.blocks[b](inp)
        r = zs[b] - a
        norm = float(zs[b].square().sum().sqrt().clamp_min(1e-30))
        primal.append(float(r.square().sum().sqrt()) / norm)
        dual.append(
            trainer.rho[b] * float((zs[b] - z_prev[b]).square().sum().sqrt()) / norm
            if z_prev is not None
            else float("nan")
        )
        L += 0.5 * trainer.rho[b] * float(((r + us[b]).square().sum() - us[b].square().sum())) / n
        inp = zs[b]
    task = float(nn.functional.cross_entropy(trainer.blocks[-1](zs[-1]), Y))
    return {"lagrangian": task + L, "task_on_z": task, "primal": primal, "dual": dual}, [z.clone() for z in zs]


@torch.no_grad()
def _forward_loss(trainer, X, Y) -> float:
    return float(nn.functional.cross_entropy(trainer.forward(X), Y))


def run_one(splits, schedule, rho, epochs, seed, progress=None):
    torch.manual_seed(seed)
    model, cuts = C.mlp_blocks(splits.train.input_shape[0], [64, 64], splits.num_classes, "relu")
    blocks = C.block_list(model, cuts)
    run = C.Run(
        method=f"admm-batch {schedule}",
        depth=2,
        activation="relu",
        seed=seed,
        epochs=epochs,
        splits=splits,
        overrides={
            "preset": "default",
            "sweeps": 2,
            "rho": rho,
            "rho_schedule": "constant" if schedule == "constant" else "adaptive",
        },
    )
    if schedule == "adaptive-slow":
        run.overrides["rho_check_every"] = 10 * -(-len(splits.train) // 100)
    trainer = C.make_admm(run, blocks, "batch")
    X, Y = splits.train.X, splits.train.Y
    per_epoch, per_step, z_prev = [], [], None

    def step(x, y, idx):
        s = trainer.step(x, y, idx)
        per_step.append({"loss": s.loss, "primal": s.primal_residual, "dual": s.dual_residual, "rho": list(s.rho)})

    def after_epoch(rec):
        nonlocal z_prev
        m, z_prev = table_metrics(trainer, X, Y, z_prev)
        m.update(
            {
                "epoch": rec["epoch"],
                "iteration": len(per_step),
                "rho": list(trainer.rho),
                "train_acc": C.accuracy(trainer.forward, splits.train),
                "test_acc": C.accuracy(trainer.forward, splits.test),
                "forward_loss": _forward_loss(trainer, X, Y),
            }
        )
        per_epoch.append(m)
        if progress is not None:
            progress.set_postfix_str(
                f"{schedule} ep{rec['epoch']} L {m['lagrangian']:.3f} primal {max(m['primal']):.3g}"
            )
            progress.update(1)

    train_epochs(step, splits.train, epochs, batch_size=100, seed=seed, on_epoch=after_epoch)
    return {
        "method": run.method,
        "schedule": schedule,
        "rho0": rho,
        "seed": seed,
        "epochs": epochs,
        "iterations": len(per_step),
        "test_acc": per_epoch[-1]["test_acc"],
        "train_acc": per_epoch[-1]["train_acc"],
        "final": {k: per_epoch[-1][k] for k in ("lagrangian", "primal", "dual", "rho", "forward_loss")},
        "per_epoch": per_epoch,
        "per_step_every_10": per_step[::10],
    }


def main(args) -> int:
    from tqdm.auto import tqdm

    C.setup_threads()
    splits = bdata.load(args.dataset)
    epochs = args.epochs or (15 if args.quick else 150)
    schedules = C.parse_list(args.schedules) or list(SCHEDULES)
    seeds = C.parse_list(args.seeds, int) or [0]
    meta = {
        "dataset": args.dataset,
        "train": len(splits.train),
        "test": len(splits.test),
        "net": "in-64-64-10 relu, 3 blocks",
        "mode": "batch",
        "batch_size": 100,
        "epochs": epochs,
        "rho0": args.rho,
        "quick": bool(args.quick),
        "command": "blockadmm experiment convergence" + (" --quick" if args.quick else ""),
    }
    records = []
    bar = tqdm(total=epochs * len(schedules) * len(seeds), desc="convergence", disable=args.no_progress)
    for s in seeds:
        for sch in schedules:
            records.append(run_one(splits, sch, args.rho, epochs, s, bar))
            C.write_results(args.out, "convergence", records, meta)
    bar.close()
    plot(records, args.out)
    print(summary(records))
    return 0


def summary(records) -> str:
    lines = ["schedule  seed  iters  L(end)   primal(end, per boundary)  dual(end)            rho(end)      test"]
    for r in records:
        f = r["final"]
        lines.append(
            f"{r['schedule']:8s}  {r['seed']:4d}  {r['iterations']:5d}  {f['lagrangian']:7.4f}  "
            f"{', '.join(f'{p:.2e}' for p in f['primal']):25s}  {', '.join(f'{p:.1e}' for p in f['dual']):19s}  "
            f"{', '.join(f'{p:g}' for p in f['rho']):12s}  {r['test_acc']:.3f}"
        )
    return "\n".join(lines)


def plot(records, out):
    plt = C.plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for i, r in enumerate(records):
        ep = r["per_epoch"]
        it = [e["iteration"] for e in ep]
        lab = f"{r['schedule']} ρ (seed {r['seed']})"
        axes[0].plot(it, [e["lagrangian"] for e in ep], color=f"C{i}", label=lab)
        axes[0].plot(it, [e["forward_loss"] for e in ep], "--", color=f"C{i}", alpha=0.6)
        for b in range(len(ep[0]["primal"])):
            axes[1].semilogy(
                it,
                [e["primal"][b] for e in ep],
                color=f"C{i}",
                ls=["-", ":", "-."][b % 3],
                label=f"{lab}, boundary {b}",
            )
            axes[2].semilogy(it[1:], [e["dual"][b] for e in ep[1:]], color=f"C{i}", ls=["-", ":", "-."][b % 3])
            axes[3].semilogy(it, [e["rho"][b] for e in ep], color=f"C{i}", ls=["-", ":", "-."][b % 3])
    axes[0].set_yscale("symlog", linthresh=0.01)
    axes[0].set_title("augmented Lagrangian (solid), forward loss (dashed)")
    axes[1].set_title("primal residual ‖z−f(z_prev)‖/‖z‖ (all samples)")
    axes[2].set_title("dual residual ρ‖Δz‖/‖z‖ per epoch")
    axes[3].set_title("ρ")
    for ax in axes:
        ax.set_xlabel("iteration (mini-batch steps)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "convergence.png"), dpi=110)
    plt.close(fig)
