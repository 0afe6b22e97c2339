"""The `blockadmm` command: train, info, and the subcommands of the experiment modules."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import List, Optional

import torch


def _ints(text: str) -> List[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _modes(text: str) -> List[str]:
    modes = [t.strip() for t in text.split(",") if t.strip()]
    if not modes or any(m not in ("online", "batch") for m in modes):
        raise argparse.ArgumentTypeError(f"--mode takes online, batch or online,batch; got {text!r}")
    return modes


def _train_parser(sub) -> argparse.ArgumentParser:
    from .models import INITS
    from .trainer import AUX_STEPS, ORDERS, PRESETS, ADMMConfig

    d = ADMMConfig()
    p = sub.add_parser("train", help="train a network with Block-ADMM (default: MLP 784-256-256-10 on MNIST-5k)")
    p.add_argument("--data", default="mnist5k", help="digits | mnist5k | mnist1d | mnist | fashion-mnist | cifar10")
    p.add_argument("--root", default=None, help="folder with the dataset files (mnist, fashion-mnist, cifar10)")
    p.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--hidden", type=_ints, default=[256, 256], help="MLP hidden widths, e.g. 256,256")
    p.add_argument("--activation", default="relu", choices=["relu", "sigmoid", "tanh", "leaky_relu"])
    p.add_argument("--init", default="default", choices=list(INITS),
                   help="weight init: PyTorch's (default), Glorot-uniform with the activation's gain (xavier: 4 sigmoid, "
                        "5/3 tanh), He (kaiming), orthogonal")
    p.add_argument("--blocks", type=int, default=None, help="number of blocks (default: one layer per block)")
    p.add_argument("--mode", type=_modes, default=["online"], help="online | batch | online,batch (both, side by side)")
    p.add_argument("--table-storage", default="device", choices=["device", "pinned", "memmap"])
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="a named recipe (ADMMConfig.preset: fast = one sweep per mini-batch, online; deep = deep sigmoid "
                        "nets online, deep-batch = the same in batch mode); the flags below override its fields, --lr its "
                        "Adam rate and --shared-optimizer its optimizer layout")
    p.add_argument("--rho", type=float, default=None, help=f"(default {d.rho})")
    p.add_argument("--lr-z", type=float, default=None, help=f"(default {d.lr_z})")
    p.add_argument("--sweeps", type=int, default=None, help=f"(default {d.sweeps})")
    p.add_argument("--k-z", type=int, default=None, help=f"(default {d.k_z})")
    p.add_argument("--k-w", type=int, default=None, help=f"(default {d.k_w})")
    p.add_argument("--order", default=None, choices=list(ORDERS), help=f"(default {d.order})")
    p.add_argument("--aux-step", default=None, choices=list(AUX_STEPS), help=f"(default {d.aux_step})")
    p.add_argument("--dual-step", type=float, default=None, help=f"(default {d.dual_step})")
    p.add_argument("--rho-schedule", default=None, choices=["constant", "adaptive"], help=f"(default {d.rho_schedule})")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate of every block (default 1e-3, or the preset's)")
    p.add_argument("--shared-optimizer", action=argparse.BooleanOptionalAction, default=None,
                   help="one Adam over every block instead of one per block: the same updates in one call per step "
                        "(default off, or the preset's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--val-fraction", type=float, default=0.0, help="carve a validation split from the training data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: a Block-ADMM step is many small ops; on a 2-core machine "
                        "shared with one other process, 2 threads ran 40x slower per step than 1)")
    p.add_argument("--compare", default=None, choices=["backprop"], help="also train the same network by backprop")
    p.add_argument("--out", default="runs/train", help="folder for metrics.json, curves.png and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT")
    p.add_argument("--nproc", type=int, default=1, help="run the blocks on N local processes (blockadmm.distributed)")
    p.add_argument("--schedule", default="pipeline", choices=["sync", "pipeline"],
                   help="with --nproc: sync (Jacobi order, exactly) or pipeline (mini-batches in flight)")
    p.add_argument("--staleness", type=int, default=None, help="with --schedule pipeline: bound on in-flight batches")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


_CONFIG_FLAGS = ("rho", "lr_z", "sweeps", "k_z", "k_w", "order", "aux_step", "dual_step", "rho_schedule")


def resolve_preset(args) -> None:
    """Fill the config flags that were not given from --preset (or the ADMMConfig defaults), and --lr from the
    preset's Adam rate, so that args holds every value the run uses (and metrics.json records them)."""
    from .trainer import PRESETS, ADMMConfig

    name = args.preset or "default"
    wants = PRESETS[name].get("mode")
    if wants is not None and any(m != wants for m in args.mode):
        raise SystemExit(f"--preset {name} is the recipe for --mode {wants}, got --mode {','.join(args.mode)}: "
                         f"pass --mode {wants} or the preset of the other mode")
    base = ADMMConfig.preset(name)
    for f in _CONFIG_FLAGS:
        if getattr(args, f) is None:
            setattr(args, f, getattr(base, f))
    if args.lr is None:
        args.lr = PRESETS[name]["weight_lr"]
    if args.shared_optimizer is None:
        args.shared_optimizer = PRESETS[name].get("shared_optimizer", False)


def build_network(args, input_shape, num_classes):
    """(model, cut indices) for --arch/--hidden/--activation/--blocks."""
    from .models import init_weights, mlp_blocks, small_cnn

    if args.arch == "mlp":
        in_features = 1
        for s in input_shape:
            in_features *= s
        if len(input_shape) != 1:
            raise SystemExit(f"--arch mlp needs flat inputs; {args.data} gives {input_shape}: use --arch cnn")
        return mlp_blocks(in_features, args.hidden, num_classes, args.activation, args.blocks, init=args.init)
    if len(input_shape) != 3:
        raise SystemExit(f"--arch cnn needs image inputs (C,H,W); {args.data} gives {input_shape}")
    model = init_weights(small_cnn(input_shape[0], num_classes, image_size=input_shape[1]), args.init, "relu")
    n = args.blocks or len(model)
    return model, n


def cmd_train(args) -> int:
    from .report import plot_curves, print_table

    from . import data
    from .trainer import BlockADMM, adam

    resolve_preset(args)
    if args.nproc > 1:
        from .distributed import launch_train

        if args.shared_optimizer:
            print("--nproc: every rank keeps one optimizer per block (--shared-optimizer applies to one process)", file=sys.stderr)
        if args.schedule == "sync" and args.order != "jacobi":
            # sync is the Jacobi order; a sequential order across ranks would run as a wave with no parallelism
            print(f"--schedule sync runs the Jacobi order (not {args.order})", file=sys.stderr)
            args.order = "jacobi"
        launch_train(args, args.nproc, schedule=args.schedule, staleness=args.staleness)
        with open(os.path.join(args.out, "metrics.json")) as f:
            print_table(json.load(f))
        return 0
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = data.load(args.data, args.root, val_fraction=args.val_fraction, split_seed=args.seed, image=args.arch == "cnn")
    model, cuts = build_network(args, splits.input_shape, splits.num_classes)
    os.makedirs(args.out, exist_ok=True)
    optimizer = adam(args.lr)  # one Adam per block; backprop gets the same
    fit_kw = dict(batch_size=args.batch_size, test=splits.test, val=splits.val, progress=not args.quiet)
    runs = {}
    for mode in args.mode:  # every run starts from the same initial weights and sees the same batches
        trainer = BlockADMM(
            copy.deepcopy(model), blocks=cuts, input_shape=splits.input_shape, mode=mode, num_samples=len(splits.train),
            optimizer=optimizer, rho=args.rho, lr_z=args.lr_z, sweeps=args.sweeps, k_z=args.k_z, k_w=args.k_w,
            order=args.order, aux_step=args.aux_step, dual_step=args.dual_step, rho_schedule=args.rho_schedule,
            table_storage=args.table_storage, table_dir=os.path.join(args.out, f"tables-{mode}"), backend=args.backend,
            shared_optimizer=args.shared_optimizer, device=args.device, seed=args.seed,
        )
        ckpt = os.path.join(args.out, f"checkpoint-{mode}.pt")
        if args.resume:
            if not os.path.exists(ckpt):
                raise SystemExit(f"--resume: no checkpoint at {ckpt}")
            trainer.load(ckpt)
        print(f"Block-ADMM ({mode}, {trainer.n_blocks} blocks, order {trainer.config.order}) on {args.data}", file=sys.stderr)
        runs["admm-" + mode] = trainer.fit(splits.train, args.epochs, checkpoint=ckpt, **fit_kw)
    if args.compare == "backprop":
        print("Backprop (same network, initial weights, optimizer and batches)", file=sys.stderr)
        bp = BlockADMM(copy.deepcopy(model), input_shape=splits.input_shape, optimizer=optimizer, sweeps=1, device=args.device, seed=args.seed)
        runs["backprop"] = bp.fit(splits.train, args.epochs, **fit_kw)
    metrics = {
        "command": " ".join(["blockadmm"] + sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "runs": runs,
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                    "load_average_start": load_start, "load_average_end": os.getloadavg()[0]},
        "final": {name: {k: h[-1][k] for k in ("train_acc", "test_acc", "val_acc") if k in h[-1]} for name, h in runs.items()},
        "epoch_wall_s": {name: sum(r["wall_s"] for r in h) / len(h) for name, h in runs.items()},
    }
    if "backprop" in runs:
        metrics["wall_ratio_vs_backprop"] = {
            name: metrics["epoch_wall_s"][name] / metrics["epoch_wall_s"]["backprop"] for name in runs if name != "backprop"
        }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    plot_curves(runs, os.path.join(args.out, "curves.png"), title=f"{args.data}, {trainer.n_blocks} blocks, batch {args.batch_size}")
    print_table(metrics)
    return 0


def cmd_info(args) -> int:
    from .info import main as info_main

    return info_main()


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # subcommands owned by their modules take their own flags
    if argv and argv[0] == "experiment":
        from .experiments import run

        return run(argv[1:])
    if argv and argv[0] == "deepfacto":
        from .experiments.deepfacto_cli import main as deepfacto_main

        return deepfacto_main(argv[1:])
    parser = argparse.ArgumentParser(prog="blockadmm", description="Stochastic Block-ADMM training for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub).set_defaults(func=cmd_train)
    sub.add_parser("info", help="versions and which backends are available, and why not").set_defaults(func=cmd_info)
    sub.add_parser("experiment", help="the method's claims as experiments (blockadmm experiment --help)")
    sub.add_parser("deepfacto", help="DeepFacto NMF-layer training (blockadmm deepfacto --help)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
