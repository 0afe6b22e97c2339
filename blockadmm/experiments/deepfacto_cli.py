"""`blockadmm deepfacto`: the DeepFacto runs (supervised MNIST-5k, weakly supervised pairs) with their baselines,
seeds summarized, metrics.json and the figures written to --out."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..argtypes import ArgumentParser, seed_list
from ..data import load
from ..deepfacto import class_group_matrix, codes_of
from .deepfacto_figures import fig_basis, fig_matrix, fig_pairs
from .deepfacto_runs import run_pairs, run_supervised


def _summ(values: list[float]) -> dict:
    """mean, worst, best and every seed's value."""
    return {
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "per_seed": [float(v) for v in values],
    }


def _clean(r: dict) -> dict:
    """The JSON-writable entries of a run's record."""
    return {k: v for k, v in r.items() if isinstance(v, (int, float, str, list, dict)) and k not in ("data",)}


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the seeds, write metrics.json and the figures; returns the exit status."""
    p = ArgumentParser(
        prog="blockadmm deepfacto",
        description="DeepFacto: NMF-layer networks trained by Block-ADMM "
        "(supervised disentangling on MNIST-5k, weakly supervised localization on MNIST-5k pairs).",
    )
    p.add_argument("--data", choices=["mnist5k", "pairs"], default="mnist5k")
    p.add_argument(
        "--epochs", type=int, default=None, help="default 12 (mnist5k) / 4 (pairs, after the curriculum); --quick: 2"
    )
    p.add_argument("--seeds", type=seed_list, default=None, help="comma list (default 0,1,2 for mnist5k, 0 for pairs)")
    p.add_argument(
        "--head", choices=["energy", "linear", "both"], default="both", help="mnist5k: DeepFacto head(s) to train"
    )
    p.add_argument("--arch", choices=["cnn", "mlp"], default="cnn", help="mnist5k feature block")
    p.add_argument("--out", default=None, help="output folder (default runs/deepfacto/<data>)")
    p.add_argument("--quick", action="store_true", help="a short smoke run: 2 epochs, 1 seed, 1000 training samples")
    p.add_argument("--device", default="cpu", help="only 'cpu' is wired for now")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument(
        "--select",
        action="store_true",
        help="report validation metrics only (hyperparameter selection; test untouched)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--update-epochs",
        type=int,
        default=0,
        help="epochs in which the NMF basis is updated by multiplicative updates before it is frozen "
        "(0: frozen at its class-specific init)",
    )
    p.add_argument("--per-class", type=int, default=None, help="components per class group (default 5)")
    p.add_argument("--sweeps", type=int, default=1)
    p.add_argument("--clutter", type=int, default=0, help="pairs: 8×8 fragments of clutter per canvas")
    p.add_argument("--n-train", type=int, default=None, help="pairs: training canvases (default 4000; --quick 1000)")
    p.add_argument("--n-test", type=int, default=None, help="pairs: test canvases (default 1000; --quick 300)")
    p.add_argument("--backend", default="auto", help="backend of the NMF op")
    p.add_argument(
        "--nmf-solver",
        choices=["op", "gram"],
        default=None,
        help="codes by blockadmm.ops.nmf_mu_update (op; default mnist5k) or by the same updates on V Wᵀ, W Wᵀ computed "
        "once per solve (gram; default pairs)",
    )
    p.add_argument(
        "--contrast",
        type=float,
        default=None,
        help="basis init: excess over this multiple of the mean feature (default 2)",
    )
    p.add_argument(
        "--l1",
        type=float,
        default=None,
        help="l1 penalty on the codes in the NMF solve (default 0.1 mnist5k, 0.03 pairs)",
    )
    p.add_argument(
        "--window-stride",
        type=int,
        default=2,
        help="pairs: stride (feature cells; 4 px each) of the 28×28-pixel windows",
    )
    p.add_argument(
        "--pool-r",
        type=float,
        default=4.0,
        help="pairs: smooth-max (power mean) exponent pooling group energy over positions",
    )
    p.add_argument(
        "--curriculum-epochs",
        type=int,
        default=15,
        help="pairs: epochs of the curriculum's first stage, for DeepFacto and CAM",
    )
    p.add_argument(
        "--curriculum",
        choices=["digits", "proposals"],
        default="proposals",
        help="pairs: first stage on single MNIST-5k digits with their labels (digits), or on the densest crops of the "
        "training canvases with their canvas's two labels (proposals: from the canvases alone)",
    )
    p.add_argument(
        "--cam-epochs",
        type=int,
        default=None,
        help="pairs: epochs of the CAM baseline on the canvases (default: --epochs)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.device != "cpu":
        p.error("--device: only cpu is wired in this version")
    torch.set_num_threads(a.threads)
    out = a.out or os.path.join("runs", "deepfacto", a.data)
    os.makedirs(out, exist_ok=True)
    epochs = a.epochs or (2 if a.quick else (12 if a.data == "mnist5k" else 4))
    seeds = a.seeds or ([0] if (a.quick or a.data == "pairs") else [0, 1, 2])
    use_test = not a.select
    prog = not a.no_progress
    metrics: dict = {"data": a.data, "epochs": epochs, "seeds": seeds, "args": vars(a)}

    if a.data == "mnist5k":
        heads = ["energy", "linear"] if a.head == "both" else [a.head]
        runs = {h: [] for h in heads}
        for seed in seeds:
            for i, h in enumerate(heads):
                r = run_supervised(
                    seed,
                    epochs=epochs,
                    batch_size=a.batch_size,
                    head=h,
                    arch=a.arch,
                    update_epochs=a.update_epochs,
                    per_class=a.per_class or 5,
                    sweeps=a.sweeps,
                    use_test=use_test,
                    baselines=(i == 0 and not a.no_baselines),
                    progress=prog,
                    n_train=1000 if a.quick else None,
                    backend=a.backend,
                    contrast=a.contrast if a.contrast is not None else 2.0,
                    l1=a.l1 if a.l1 is not None else 0.1,
                    solver=a.nmf_solver or "op",
                )
                runs[h].append(r)
        key = "test" if use_test else "val"
        for h, rs in runs.items():
            m = {
                f"{key}_acc": _summ([r[f"{key}_acc"] for r in rs]),
                f"best_{key}_acc": _summ([r[f"best_{key}_acc"] for r in rs]),
                f"{key}_disentangling": _summ([r[f"{key}_disentangling"] for r in rs]),
                "last_minus_best": _summ([r[f"{key}_acc"] - r[f"best_{key}_acc"] for r in rs]),
                "epoch_s": _summ([r["deepfacto_epoch_s"] for r in rs]),
                "per_seed": [_clean({k: v for k, v in r.items() if k not in ("trainer", "blocks")}) for r in rs],
            }
            metrics[f"deepfacto_{h}"] = m
        base = runs[heads[0]]
        if "backprop_linear" in base[0]:
            metrics["backprop_linear"] = {
                f"{key}_acc": _summ([r["backprop_linear"][f"{key}_acc"] for r in base]),
                "epoch_s": _summ([r["backprop_linear"]["epoch_s"] for r in base]),
            }
            if "backprop_gap" in base[0]:
                metrics["backprop_gap_cam"] = {
                    f"{key}_acc": _summ([r["backprop_gap"][f"{key}_acc"] for r in base]),
                    "epoch_s": _summ([r["backprop_gap"]["epoch_s"] for r in base]),
                }
            metrics["epoch_time_ratio"] = {
                h: float(
                    np.mean([r["deepfacto_epoch_s"] for r in runs[h]])
                    / np.mean([r["backprop_linear"]["epoch_s"] for r in base])
                )
                for h in heads
            }
        r0 = runs[heads[0]][0]
        blocks = r0["blocks"]
        ds = load("mnist5k", image=(a.arch == "cnn")).test if use_test else None
        feat_shape = tuple(blocks[0](torch.zeros(1, *((1, 28, 28) if a.arch == "cnn" else (784,)))).shape[1:])
        fig_basis(
            blocks[1],
            os.path.join(out, "basis.png"),
            (64, 7, 7) if a.arch == "cnn" else feat_shape,
            title=f"NMF basis (seed {seeds[0]}): per-component energy over the 7×7 feature positions",
        )
        if ds is not None:
            H = codes_of(blocks, ds.X)
            M = class_group_matrix(H, ds.Y, blocks[1].group, 10)
            fig_matrix(
                M,
                os.path.join(out, "class_group_energy.png"),
                f"share of code energy, test, seed {seeds[0]} ({heads[0]} head)",
            )
            metrics["class_group_matrix"] = M.round(4).tolist()
    else:
        rs = []
        for seed in seeds:
            rs.append(
                run_pairs(
                    seed,
                    epochs=epochs,
                    batch_size=a.batch_size,
                    per_class=a.per_class or 5,
                    update_epochs=a.update_epochs,
                    sweeps=a.sweeps,
                    clutter=a.clutter,
                    use_test=use_test,
                    baselines=not a.no_baselines,
                    progress=prog,
                    n_train=a.n_train or (1000 if a.quick else 4000),
                    n_test=a.n_test or (300 if a.quick else 1000),
                    backend=a.backend,
                    contrast=a.contrast if a.contrast is not None else 2.0,
                    l1=a.l1 if a.l1 is not None else 0.03,
                    solver=a.nmf_solver or "gram",
                    pool_r=a.pool_r,
                    curriculum_epochs=a.curriculum_epochs,
                    curriculum=a.curriculum,
                    cam_epochs=a.cam_epochs,
                    window_stride=a.window_stride,
                )
            )
        key = "test" if use_test else "val"
        for name in ("acc_both", "pointing", "disentangling", "cam_acc_both", "cam_pointing", "most_ink_pointing"):
            vals = [r[f"{key}_{name}"] for r in rs if f"{key}_{name}" in r]
            if vals:
                metrics[f"{key}_{name}"] = _summ(vals)
        metrics["deepfacto_epoch_s"] = _summ([r["deepfacto_epoch_s"] for r in rs])
        if "cam_epoch_s" in rs[0]:
            metrics["cam_epoch_s"] = _summ([r["cam_epoch_s"] for r in rs])
            metrics["epoch_time_ratio"] = float(
                np.mean([r["deepfacto_epoch_s"] for r in rs]) / np.mean([r["cam_epoch_s"] for r in rs])
            )
        metrics["per_seed"] = [
            _clean({k: v for k, v in r.items() if k not in ("blocks", "df_maps", "cam_maps")}) for r in rs
        ]
        r0 = rs[0]
        ds = r0["data"].test if use_test else r0["data"].val
        fig_basis(
            r0["blocks"][1],
            os.path.join(out, "basis.png"),
            (64, 7, 7),
            title="NMF basis (per-window components): energy over the 7×7 feature cells of a 28×28 window",
        )
        H = codes_of(r0["blocks"], ds.X[:500])
        M = class_group_matrix(H, ds.Y[:500], r0["blocks"][1].group, 10)
        fig_matrix(
            M, os.path.join(out, "class_group_energy.png"), "share of code energy over canvases holding the class"
        )
        metrics["class_group_matrix"] = M.round(4).tolist()
        fns = {"DeepFacto": r0["df_maps"]}
        if "cam_maps" in r0:
            fns["CAM"] = r0["cam_maps"]
        fig_pairs(ds, fns, os.path.join(out, "pairs_maps.png"))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, default=float)
    summary = {
        k: (v["mean"] if isinstance(v, dict) and "mean" in v else v)
        for k, v in metrics.items()
        if k not in ("per_seed", "args", "class_group_matrix")
    }
    for k, v in summary.items():
        if isinstance(v, dict):
            v = {
                kk: (vv["mean"] if isinstance(vv, dict) and "mean" in vv else vv)
                for kk, vv in v.items()
                if kk != "per_seed"
            }
        print(f"{k}: {v}")
    print(f"wrote {out}/metrics.json and figures")
    return 0
