"""The `blockadmm` command: train, info, and the subcommands of the experiment modules."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

from .argtypes import (
    ArgumentParser,
    device,
    int_list,
    log_kinds,
    modes,
    nonneg_float,
    nonneg_int,
    output_dir,
    positive_float,
    positive_int,
    run_command,
    seed,
)


def _train_parser(sub) -> argparse.ArgumentParser:
    from .data import DATASETS
    from .models import INITS
    from .trainer import AUX_STEPS, ORDERS, PRESETS, ADMMConfig

    d = ADMMConfig()
    p = sub.add_parser("train", help="train a network with Block-ADMM (default: MLP 784-256-256-10 on MNIST-5k)")
    p.add_argument("--data", default="mnist5k", choices=list(DATASETS))
    p.add_argument("--root", default=None, help="folder with the dataset files (mnist, fashion-mnist, cifar10)")
    p.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--hidden", type=int_list, default=[256, 256], help="MLP hidden widths, e.g. 256,256")
    p.add_argument("--activation", default="relu", choices=["relu", "sigmoid", "tanh", "leaky_relu"])
    p.add_argument("--blocks", type=positive_int, default=None, help="number of blocks (default: one layer per block)")
    p.add_argument(
        "--init",
        default="default",
        choices=list(INITS),
        help="weight init: PyTorch's (default), Glorot-uniform with the activation's gain (xavier: 4 sigmoid, "
        "5/3 tanh), He (kaiming), orthogonal",
    )
    p.add_argument("--mode", type=modes, default=["online"], help="online | batch | online,batch (both, side by side)")
    p.add_argument(
        "--table-storage", default=None, choices=["device", "pinned", "memmap"], help="batch mode (default device)"
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="a named recipe (ADMMConfig.preset: fast = one sweep per mini-batch, online; deep = deep "
        "sigmoid nets online, deep-batch = the same in batch mode); the flags below override its "
        "fields, --lr its Adam rate and --shared-optimizer its optimizer layout",
    )
    p.add_argument("--rho", type=positive_float, default=None, help=f"(default {d.rho})")
    p.add_argument("--lr-z", type=positive_float, default=None, help=f"(default {d.lr_z})")
    p.add_argument("--sweeps", type=positive_int, default=None, help=f"(default {d.sweeps})")
    p.add_argument("--k-z", type=positive_int, default=None, help=f"(default {d.k_z})")
    p.add_argument("--k-w", type=positive_int, default=None, help=f"(default {d.k_w})")
    p.add_argument("--order", default=None, choices=list(ORDERS), help=f"(default {d.order})")
    p.add_argument("--aux-step", default=None, choices=list(AUX_STEPS), help=f"(default {d.aux_step})")
    p.add_argument("--dual-step", type=nonneg_float, default=None, help=f"(default {d.dual_step})")
    p.add_argument("--rho-schedule", default=None, choices=["constant", "adaptive"], help=f"(default {d.rho_schedule})")
    p.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="Adam learning rate of every block (default 1e-3, or the preset's)",
    )
    p.add_argument(
        "--shared-optimizer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one Adam over every block instead of one per block: the same updates in one call per step "
        "(default off, or the preset's)",
    )
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument(
        "--val-fraction", type=nonneg_float, default=0.0, help="carve a validation split from the training data"
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: a Block-ADMM step is many small ops; on a 2-core machine "
        "shared with one other process, 2 threads ran 40x slower per step than 1)",
    )
    p.add_argument("--compare", default=None, choices=["backprop"], help="also train the same network by backprop")
    p.add_argument(
        "--out", type=output_dir, default="runs/train", help="folder for metrics.json, curves.png, checkpoints and logs"
    )
    p.add_argument(
        "--log",
        type=log_kinds,
        default=[],
        help="tensorboard and/or csv (comma list): per-step and per-epoch "
        "losses, residuals, rho, step time under OUT/logs/<run> (tensorboard needs the tensorboard package)",
    )
    p.add_argument("--log-every", type=positive_int, default=1, help="with --log: write every N-th step")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in OUT; the config flags and --lr given explicitly replace "
        "the checkpoint's values, the others are the checkpoint's",
    )
    p.add_argument("--overwrite", action="store_true", help="train into an OUT that holds an earlier run, replacing it")
    p.add_argument(
        "--on-divergence",
        choices=("warn", "stop", "restore", "rollback"),
        default=None,
        help="when the training loss or a boundary residual collapses: warn; stop (exit code 1); restore (put back "
        "the best weights seen and stop); rollback (put them back and go on at half the rate; the default)",
    )
    p.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        help="run the blocks on N local processes (blockadmm.distributed), at most one per block and core",
    )
    p.add_argument(
        "--schedule",
        default=None,
        choices=["sync", "pipeline"],
        help="with --nproc: sync (Jacobi order, exactly) or pipeline (mini-batches in flight; default)",
    )
    p.add_argument(
        "--staleness", type=nonneg_int, default=None, help="with --schedule pipeline: bound on in-flight batches"
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        help="with --nproc: seconds a rank may wait for another before the run stops naming it (default 60)",
    )
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
        raise ValueError(
            f"--preset {name} is the recipe for --mode {wants}, got --mode {','.join(args.mode)}: "
            f"pass --mode {wants} or the preset of the other mode"
        )
    base = ADMMConfig.preset(name)
    for f in _CONFIG_FLAGS:
        if getattr(args, f) is None:
            setattr(args, f, getattr(base, f))
    if args.lr is None:
        args.lr = PRESETS[name]["weight_lr"]
    if args.shared_optimizer is None:
        args.shared_optimizer = PRESETS[name].get("shared_optimizer", False)


def build_network(args, input_shape, num_classes):
    """(model, cuts) for --arch/--hidden/--activation/--blocks (models.build_network); bad values end the command."""
    from .models import build_network as build

    try:
        return build(
            args.arch,
            input_shape,
            num_classes,
            hidden=args.hidden,
            activation=args.activation,
            blocks=args.blocks,
            init=args.init,
        )
    except ValueError as e:
        raise ValueError(f"{e} (--arch {args.arch}, --data {args.data})") from None


def _loggers(args, run: str) -> list:
    """The --log callbacks of one run, writing under OUT/logs/<run>."""
    from .callbacks import CSVLogger, TensorBoardLogger

    folder = os.path.join(args.out, "logs", run)
    kinds = {"tensorboard": TensorBoardLogger, "csv": CSVLogger}
    return [kinds[kind](folder, every=args.log_every) for kind in args.log]


def _trainer_options(args, splits, mode: str) -> dict:
    """The keywords BlockADMM and DistributedBlockADMM both take from the train command line (one Adam per block)."""
    from .trainer import adam

    return {
        "input_shape": splits.input_shape,
        "mode": mode,
        "num_samples": len(splits.train),
        "optimizer": adam(args.lr),
        **{f: getattr(args, f) for f in _CONFIG_FLAGS},
        "table_storage": args.table_storage,
        "table_dir": os.path.join(args.out, f"tables-{mode}"),
        "backend": args.backend,
        "shared_optimizer": args.shared_optimizer,
        "seed": args.seed,
    }


def check_mode_options(args) -> None:
    """Refuse an option that does nothing in the chosen mode (one line naming flag and mode); fill in the defaults."""
    for flag in [f"--{n}" for n in ("schedule", "staleness", "timeout") if getattr(args, n) is not None]:
        if args.nproc == 1:
            raise ValueError(f"{flag} applies to runs on several processes; this is a one-process run "
                             f"(--nproc 1): drop {flag} or pass --nproc N")
    if args.staleness is not None and args.schedule == "sync":
        raise ValueError("--staleness bounds the mini-batches in flight of --schedule pipeline; --schedule sync has "
                         "none in flight: drop --staleness or use --schedule pipeline")
    if args.table_storage is not None and "batch" not in args.mode:
        raise ValueError(f"--table-storage {args.table_storage} places batch mode's tables; --mode "
                         f"{','.join(args.mode)} keeps none: drop --table-storage or pass --mode batch")
    args.schedule, args.timeout = args.schedule or "pipeline", args.timeout or 60.0
    args.table_storage = args.table_storage or "device"


def cmd_train(args) -> int:
    """`blockadmm train`, its run folder --out locked for the command's life (a second run into it is refused)."""
    from .engine.runlock import RunLock

    check_mode_options(args)
    with RunLock(os.path.join(args.out, ".blockadmm.lock"), f"--out {args.out}"):
        return _train(args)


def _train(args) -> int:
    from . import data
    from .report import plot_curves, print_table
    from .trainer import BlockADMM, DivergenceError, NonFiniteError, adam

    explicit = {f: getattr(args, f) for f in (*_CONFIG_FLAGS, "lr") if getattr(args, f) is not None}
    resolve_preset(args)
    earlier = os.path.exists(os.path.join(args.out, "metrics.json")) or any(
        n.startswith("checkpoint") for n in (os.listdir(args.out) if os.path.isdir(args.out) else [])
    )
    if earlier and not (args.resume or args.overwrite):
        raise ValueError(
            f"--out {args.out} holds an earlier run: pass --resume to continue it or --overwrite to replace it"
        )
    if args.nproc > 1:
        return launch_train(args, explicit)
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = data.load(
        args.data, args.root, val_fraction=args.val_fraction, split_seed=args.seed, image=args.arch == "cnn"
    )
    model, cuts = build_network(args, splits.input_shape, splits.num_classes)
    os.makedirs(args.out, exist_ok=True)
    optimizer = adam(args.lr)  # one Adam per block; backprop gets the same
    fit_kw = {"batch_size": args.batch_size, "test": splits.test, "val": splits.val, "progress": not args.quiet}
    runs, resumes = {}, {}
    for mode in args.mode:  # every run starts from the same initial weights and sees the same batches
        trainer = BlockADMM(
            copy.deepcopy(model),
            blocks=cuts,
            **_trainer_options(args, splits, mode),
            device=args.device,
        )
        ckpt = os.path.join(args.out, f"checkpoint-{mode}.pt")
        if args.resume:
            if not os.path.exists(ckpt):
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
            changed = trainer.load(ckpt, override=explicit)  # a damaged, foreign or mismatched file: one error line
            if changed:
                print(
                    f"resuming {ckpt} with " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
                    file=sys.stderr,
                )
            for f in _CONFIG_FLAGS:  # metrics.json records the values the run uses
                setattr(args, f, getattr(trainer.config, f))
            lrs = {g["lr"] for o in trainer.optimizers for g in o.param_groups}
            args.lr = lrs.pop() if len(lrs) == 1 else args.lr
            resumes["admm-" + mode] = trainer.resumes
        print(
            f"Block-ADMM ({mode}, {trainer.n_blocks} blocks, order {trainer.config.order}) on {args.data}",
            file=sys.stderr,
        )
        try:
            runs["admm-" + mode] = trainer.fit(
                splits.train,
                args.epochs,
                checkpoint=ckpt,
                **({"on_divergence": args.on_divergence} if args.on_divergence else {}),
                callbacks=_loggers(args, "admm-" + mode),
                **fit_kw,
            )
        except (NonFiniteError, DivergenceError) as e:
            raise type(e)(f"admm-{mode}: {e}") from None
    if args.compare == "backprop":
        print("Backprop (same network, initial weights, optimizer and batches)", file=sys.stderr)
        bp = BlockADMM(
            copy.deepcopy(model),
            blocks=1,
            input_shape=splits.input_shape,
            optimizer=optimizer,
            sweeps=1,
            device=args.device,
            seed=args.seed,
        )
        runs["backprop"] = bp.fit(splits.train, args.epochs, callbacks=_loggers(args, "backprop"), on_divergence="warn",
                                  **fit_kw)  # plain backprop, as a user runs it elsewhere
    metrics = {
        "command": " ".join(["blockadmm"] + sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "runs": runs,
        "resumes": resumes,
        "machine": {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0],
        },
        "final": {
            name: {k: h[-1][k] for k in ("train_acc", "test_acc", "val_acc") if k in h[-1]} for name, h in runs.items()
        },
        "epoch_wall_s": {name: sum(r["wall_s"] for r in h) / len(h) for name, h in runs.items()},
    }
    if "backprop" in runs:
        metrics["wall_ratio_vs_backprop"] = {
            name: metrics["epoch_wall_s"][name] / metrics["epoch_wall_s"]["backprop"]
            for name in runs
            if name != "backprop"
        }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    plot_curves(
        runs,
        os.path.join(args.out, "curves.png"),
        title=f"{args.data}, {trainer.n_blocks} blocks, batch {args.batch_size}",
    )
    print_table(metrics)
    return 0


def _train_from_args(args):
    """One rank of `blockadmm train --nproc N`: the same options as the single-process command."""
    import torch.distributed as dist

    from . import data
    from .distributed import DistributedBlockADMM

    splits = data.load(
        args.data, args.root, val_fraction=args.val_fraction, split_seed=args.seed, image=args.arch == "cnn"
    )
    runs, last = {}, None
    for mode in args.mode:  # every mode from the same initial weights and batches
        torch.manual_seed(args.seed)
        model, cuts = build_network(args, splits.input_shape, splits.num_classes)
        trainer = DistributedBlockADMM(
            model,
            blocks=cuts,
            **_trainer_options(args, splits, mode),
            schedule=args.schedule,
            staleness=args.staleness,
            timeout=args.timeout,
        )
        ckpt = os.path.join(args.out, f"checkpoint-dist-{mode}")
        if args.resume:
            trainer.load(ckpt)
            for name in _CONFIG_FLAGS:  # metrics.json records the values the run uses: the checkpoint's
                setattr(args, name, getattr(trainer.config, name))
            lrs = {g["lr"] for o in trainer.optimizers if o is not None for g in o.param_groups}
            args.lr = lrs.pop() if len(lrs) == 1 else args.lr
        run = f"admm-{mode}-{args.schedule}-{dist.get_world_size()}ranks"
        runs[run] = trainer.fit(
            splits.train,
            args.epochs,
            batch_size=args.batch_size,
            test=splits.test,
            val=splits.val,
            checkpoint=ckpt,
            progress=not args.quiet,
            callbacks=_loggers(args, run) if dist.get_rank() == 0 else (),  # the records are the same on every rank
        )
        last = trainer
    if dist.get_rank() == 0:
        os.makedirs(args.out, exist_ok=True)
        metrics = {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "world_size": dist.get_world_size(),
            "schedule": args.schedule,
            "staleness": last.staleness,
            "partition": last.partition,
            "runs": runs,
            "final": {
                n: {k: h[-1][k] for k in ("train_acc", "test_acc", "val_acc") if k in h[-1]} for n, h in runs.items()
            },
            "epoch_wall_s": {n: sum(r["wall_s"] for r in h) / len(h) for n, h in runs.items()},
        }
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)


def launch_train(args, explicit: dict) -> int:
    """`blockadmm train --nproc N`: check N against the blocks and the cores, then spawn N local ranks, each
    training with the options of `args`; a failed rank ends the command with one line naming it. `explicit`:
    the config flags given on the command line, which a distributed resume cannot take."""
    from .distributed import RankFailure, launch
    from .distributed.launcher import check_nproc
    from .models import network_blocks
    from .report import print_table

    try:
        n_blocks = network_blocks(args.arch, args.hidden, args.blocks)
    except ValueError as e:
        raise SystemExit(f"blockadmm train: {e}") from e
    if args.nproc > n_blocks:
        raise SystemExit(
            f"blockadmm train: --nproc {args.nproc} needs at least {args.nproc} blocks, the network has "
            f"{n_blocks}: use --nproc {n_blocks} or less (or more layers / --blocks)"
        )
    if args.on_divergence:
        raise SystemExit("blockadmm train: --on-divergence watches a run in one process; drop it with --nproc")
    if args.resume and explicit:
        flags = ", ".join("--" + name.replace("_", "-") for name in explicit)
        raise SystemExit(
            f"blockadmm train: --nproc {args.nproc} --resume continues with the checkpoint's "
            f"hyperparameters and cannot take {flags}: drop them, or resume without --nproc"
        )
    backend = "nccl" if str(args.device).startswith("cuda") and torch.cuda.device_count() >= args.nproc else "gloo"
    try:
        check_nproc(args.nproc, backend)
    except ValueError as e:
        raise SystemExit(f"blockadmm train: --nproc: {e}") from e
    if args.schedule == "sync" and args.order != "jacobi":
        # sync is the Jacobi order; a sequential order across ranks would run as a wave with no parallelism
        print(f"--schedule sync runs the Jacobi order (not {args.order})", file=sys.stderr)
        args.order = "jacobi"
    try:
        launch(_train_from_args, args.nproc, args, backend=backend, timeout=args.timeout)
    except RankFailure as e:
        raise SystemExit(f"blockadmm train: {e}") from e
    with open(os.path.join(args.out, "metrics.json")) as f:
        print_table(json.load(f))
    return 0


def cmd_info(args) -> int:
    from .info import main as info_main

    return info_main()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # subcommands owned by their modules take their own flags
    if argv and argv[0] == "experiment":
        from .experiments import run

        return run_command("blockadmm experiment", lambda: run(argv[1:]))
    if argv and argv[0] == "deepfacto":
        from .experiments.deepfacto_cli import main as deepfacto_main

        return run_command("blockadmm deepfacto", lambda: deepfacto_main(argv[1:]))
    parser = ArgumentParser(prog="blockadmm", description="Stochastic Block-ADMM training for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub).set_defaults(func=cmd_train)
    sub.add_parser("info", help="versions and which backends are available, and why not").set_defaults(func=cmd_info)
    sub.add_parser("experiment", help="the method's claims as experiments (blockadmm experiment --help)")
    sub.add_parser("deepfacto", help="DeepFacto NMF-layer training (blockadmm deepfacto --help)")
    args = parser.parse_args(argv)
    return run_command(f"blockadmm {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
