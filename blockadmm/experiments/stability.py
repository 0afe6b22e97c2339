"""`blockadmm experiment stability`: every recipe over nets, data, seeds and epochs, counting collapses.

Each recipe (`default`, `fast` on the nets it claims, `deep` on the tanh net, and recipes given as
`--recipe NAME:preset=fast,lr=2.5e-3,adam_eps=1e-4`) trains online with `fit`, batch 100, next to backprop (Adam,
its rate chosen on the validation accuracy of seed 0, the same batches and initial weights). A run collapses when
its test or validation accuracy falls more than 10 points below its running best, or its training loss rises above
3x its best (DESIGN §4). One results file per (recipe, net, data, seed) under OUT/units/, so the grid resumes and can
run piecewise; OUT/results.json holds every run's summary and the table, OUT/timing.json the wall time and load,
OUT/stability.png the collapse map and the final accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from .. import data as bdata
from ..argtypes import positive_int
from ..trainer import BlockADMM
from . import stability_nets as nets
from . import stability_report as report
from .common import parse_list, setup_threads
from .grid import LoadSampler
from .results_io import load_json, provenance, read_results, save_results
from .stability_recipes import BACKPROP, RECIPES, fit_kwargs, parse_recipe, recipe_nets, trainer_kwargs
from .stability_report import ACC_DROP, LOSS_FACTOR, collapses
from .training import Backprop, accuracy, train_epochs

BACKPROP_RATES = (3e-4, 1e-3, 3e-3)
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = 30
BATCH = 100
QUICK = {"nets": ["2x256"], "data": ["digits"], "seeds": [0, 1], "epochs": 2, "train_size": 400}


# ------------------------------------------------------------------------------------------ one run
def load_splits(name: str, image: bool, train_size: int | None = None) -> bdata.DataSplits:
    """The data variant `name` (nets.DATA) with a validation split of 20% carved from the training data."""
    kind, kwargs = nets.DATA[name]
    splits = bdata.load(kind, val_fraction=0.2, image=image, **kwargs)
    if train_size:
        tr = splits.train
        splits.train = bdata.IndexedDataset(tr.X[:train_size], tr.Y[:train_size], tr.num_classes)
    return splits


def _history_row(rec: dict) -> dict:
    keep = ("epoch", "loss", "val_acc", "test_acc", "val_loss", "test_loss", "wall_s", "primal_residual", "lr",
            "divergence_events")
    return {k: rec[k] for k in keep if k in rec}


def train_admm(recipe: dict, net: str, splits, seed: int, epochs: int) -> tuple[list[dict], str | None]:
    """fit() of the recipe on the net; (history, the error that ended it early or None)."""
    blocks, constraints = nets.build(net, splits, seed, admm=True)
    trainer = BlockADMM(
        blocks,
        input_shape=splits.input_shape,
        mode="online",
        constraints=constraints,
        seed=seed,
        **trainer_kwargs(recipe),
    )
    error = None
    try:
        trainer.fit(
            splits.train,
            epochs,
            batch_size=BATCH,
            val=splits.val,
            test=splits.test,
            progress=False,
            eval_train=False,
            **fit_kwargs(recipe),
        )
    except Exception as e:  # a run that raises (non-finite loss, the guard stopping it) is a collapse, recorded
        error = f"{type(e).__name__}: {e}".split("\n")[0]
    return [_history_row(r) for r in trainer.history], error


def train_backprop(net: str, splits, seed: int, epochs: int, lr: float) -> list[dict]:
    model = nets.build(net, splits, seed, admm=False)
    learner = Backprop(model, optimizer="adam", lr=lr)

    def evaluate():
        model.eval()
        out = {"val_acc": accuracy(model, splits.val), "test_acc": accuracy(model, splits.test)}
        model.train()
        return out

    hist = train_epochs(learner.step, splits.train, epochs, batch_size=BATCH, seed=seed, evaluate=evaluate)
    return [_history_row(r) for r in hist]


def record(recipe_name: str, recipe: dict, net: str, data: str, seed: int, history: list[dict], **extra) -> dict:
    events = collapses(history)
    if extra.get("error"):
        events.append({"epoch": len(history) + 1, "kind": "error", "metric": "error", "value": None, "best": None})
    last = history[-1] if history else {}
    return {
        "recipe": recipe_name,
        "spec": recipe,
        "net": net,
        "data": data,
        "seed": seed,
        "epochs": len(history),
        "final_test_acc": last.get("test_acc"),
        "final_val_acc": last.get("val_acc"),
        "best_test_acc": max((h["test_acc"] for h in history), default=None),
        "collapsed": bool(events),
        "collapses": events,
        "wall_s": sum(h.get("wall_s", 0.0) for h in history),
        **extra,
        "history": history,
    }


# ------------------------------------------------------------------------------------------ units
def unit_path(out: str, recipe: str, net: str, data: str, seed: int) -> str:
    return os.path.join(out, "units", recipe, net, data, f"seed{seed}.json")


def _done(path: str, epochs: int, spec) -> bool:
    if not os.path.exists(path):
        return False
    meta = load_json(path)["meta"]
    return meta.get("epochs") == epochs and meta.get("spec") == spec


def _save(path: str, rec: dict, meta: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_results(path, {"experiment": "stability", "meta": meta, "records": [rec]})


def backprop_record(unit: dict, splits, meta: dict) -> dict:
    """Backprop on the unit's seed at the rate with the best validation accuracy of seed 0 (mean of the last 5
    epochs); the selection runs (seed 0, each rate) are files of their own, made by the first unit that needs them."""
    out, net, data, seed, epochs = (unit[k] for k in ("out", "net", "data", "seed", "epochs"))
    histories, scores = {}, {}
    for lr in unit["rates"]:
        path = os.path.join(out, "units", f"{BACKPROP}-select", net, data, f"lr{lr:g}.json")
        if not _done(path, epochs, unit["spec"]):
            history = train_backprop(net, splits, 0, epochs, lr)
            _save(path, record(f"{BACKPROP} lr={lr:g}", {"lr": lr}, net, data, 0, history), meta)
        histories[lr] = read_results(path)["records"][0]["history"]
        scores[f"{lr:g}"] = sum(h["val_acc"] for h in histories[lr][-5:]) / len(histories[lr][-5:])
    lr = max(histories, key=lambda r: scores[f"{r:g}"])
    history = histories[lr] if seed == 0 else train_backprop(net, splits, seed, epochs, lr)
    return record(BACKPROP, {"lr": lr}, net, data, seed, history, chosen_lr=lr, val_scores=scores)


def run_unit(unit: dict) -> dict:
    """Train one (recipe, net, data, seed) unless its file holds it already; returns {path, wall_s, skipped}."""
    setup_threads()
    out, name, net, data, seed, epochs = (unit[k] for k in ("out", "recipe", "net", "data", "seed", "epochs"))
    spec = unit.get("spec")
    path = unit_path(out, name, net, data, seed)
    if _done(path, epochs, spec):
        return {"path": path, "wall_s": 0.0, "skipped": True}
    t0 = time.monotonic()
    splits = load_splits(data, nets.NEEDS_IMAGES[net], unit.get("train_size"))
    meta = {
        **provenance(),
        "epochs": epochs,
        "spec": spec,
        "batch_size": BATCH,
        "train": len(splits.train),
        "threads": torch.get_num_threads(),
    }
    if name == BACKPROP:
        rec = backprop_record(unit, splits, meta)
    else:
        history, error = train_admm(spec, net, splits, seed, epochs)
        rec = record(name, spec, net, data, seed, history, error=error)
    _save(path, rec, meta)
    return {"path": path, "wall_s": time.monotonic() - t0, "skipped": False}


# ------------------------------------------------------------------------------------------ the command
def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipes",
        default=f"default,fast,deep,{BACKPROP}",
        help="built-in recipes to run (default, fast, deep) and/or backprop, comma-separated",
    )
    p.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="a recipe of its own, e.g. fast-lr:preset=fast,lr=2.5e-3,adam_eps=1e-4 (repeatable); keys: "
        "preset, lr, adam_eps, shared_optimizer, ADMMConfig fields, fit() keywords",
    )
    p.add_argument(
        "--nets",
        default=",".join(nets.NETS),
        help=f"of {', '.join(nets.NETS)} (each recipe runs only "
        "on the nets its preset claims: fast on the MLPs and the CNN, deep on the tanh net)",
    )
    p.add_argument("--data", default=",".join(nets.DATA), help=f"of {', '.join(nets.DATA)}")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--epochs", type=positive_int, default=EPOCHS)
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes at once (one torch thread each)")
    p.add_argument("--quick", action="store_true", help="2x256 on 400 digits, 2 seeds, 2 epochs (seconds)")
    p.add_argument("--out", default="runs/experiments/stability")
    p.add_argument("--no-progress", action="store_true")


def command(args) -> str:
    """The flags of this invocation that differ from the defaults (what reproduces it, after `blockadmm experiment
    stability`)."""
    parser = argparse.ArgumentParser()
    add_args(parser)
    defaults = vars(parser.parse_args([]))
    flags = []
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key] or key == "no_progress":
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        else:
            flags += [f"{flag} {v}" for v in (value if isinstance(value, list) else [value])]
    return " ".join(flags)


def plan(args) -> tuple[list[list[dict]], dict]:
    """The units in phases (Block-ADMM runs; backprop's rate selection on seed 0; backprop's other seeds), each
    phase ordered by seed, then net and data, so a run cut short holds every cell at its first seeds."""
    q = QUICK if args.quick else {}
    try:
        recipes = {}
        for name in parse_list(args.recipes):
            if name not in (*RECIPES, BACKPROP):
                raise ValueError(f"--recipes: unknown recipe {name!r}; built-in: {', '.join((*RECIPES, BACKPROP))}")
            recipes[name] = RECIPES.get(name)
        recipes.update(parse_recipe(s) for s in args.recipe)
        net_list, data_list = q.get("nets") or parse_list(args.nets), q.get("data") or parse_list(args.data)
        for kind, names, known in (("net", net_list, nets.NETS), ("data", data_list, nets.DATA)):
            bad = [n for n in names if n not in known]
            if bad:
                flag = "--nets" if kind == "net" else "--data"
                raise ValueError(f"{flag}: unknown {kind} {bad}; choose from {', '.join(known)}")
        seeds = q.get("seeds") or parse_list(args.seeds, int)
    except ValueError as e:
        raise SystemExit(f"blockadmm experiment stability: {e}") from None
    epochs = q.get("epochs", args.epochs)
    base = {"out": args.out, "epochs": epochs, "train_size": q.get("train_size")}
    rates = BACKPROP_RATES[:2] if args.quick else BACKPROP_RATES
    admm, select, rest = [], [], []
    for seed in seeds:
        for net in net_list:
            for data in data_list:
                cell = {**base, "net": net, "data": data, "seed": seed}
                for name, spec in recipes.items():
                    if name == BACKPROP:
                        (select if seed == 0 else rest).append(
                            {**cell, "recipe": name, "spec": list(rates), "rates": rates}
                        )
                    elif net in recipe_nets(spec):
                        admm.append({**cell, "recipe": name, "spec": spec})
    if rest and 0 not in seeds:
        raise SystemExit("blockadmm experiment stability: backprop chooses its rate on seed 0: include seed 0")
    return [admm, select, rest], {
        "epochs": epochs,
        "seeds": seeds,
        "nets": net_list,
        "data": data_list,
        "recipes": recipes,
        "quick": bool(args.quick),
    }


def run_phases(phases: list[list[dict]], jobs: int, log) -> list[dict]:
    """Every unit of every phase (a phase starts when the one before ends), `jobs` processes at once."""
    done = []
    if jobs == 1:
        for phase in phases:
            for unit in phase:
                done.append({**unit, **run_unit(unit)})
                log(done[-1])
        return done
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for phase in phases:
            for unit, result in zip(phase, pool.map(run_unit, phase)):
                done.append({**unit, **result})
                log(done[-1])
    return done


def collect(out: str) -> list[dict]:
    """Every run's record under OUT/units with its collapse events, without its per-epoch history; backprop's
    selection runs left out."""
    records = []
    for root, _, files in os.walk(os.path.join(out, "units")):
        if f"{os.sep}{BACKPROP}-select" in root:
            continue
        for f in sorted(files):
            if f.endswith(".json"):
                rec = read_results(os.path.join(root, f))["records"][0]
                records.append({k: v for k, v in rec.items() if k != "history"})
    return sorted(records, key=lambda r: (r["recipe"], r["net"], r["data"], r["seed"]))


def append_invocation(path: str, invocation: dict) -> None:
    """Add one invocation's timing to `path`, under a lock: invocations into one OUT may run side by side."""
    import fcntl

    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)  # the lock: the folder, no stray file
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        timing = load_json(path) if os.path.exists(path) else {"invocations": []}
        timing["invocations"].append(invocation)
        with open(path + ".tmp", "w") as f:
            json.dump(timing, f, indent=1)
        os.replace(path + ".tmp", path)
    finally:
        os.close(folder)


def main(args) -> int:
    phases, info = plan(args)
    os.makedirs(args.out, exist_ok=True)
    n_units, t0, load = sum(map(len, phases)), time.monotonic(), LoadSampler()
    load.start()

    ran: list[dict] = []

    def log(unit):
        ran.append(unit)
        if not args.no_progress:
            state = "done before" if unit["skipped"] else f"{unit['wall_s']:.0f} s"
            print(
                f"[{len(ran)}/{n_units} {time.monotonic() - t0:6.0f} s, load {os.getloadavg()[0]:.1f}] "
                f"{unit['recipe']} {unit['net']} {unit['data']} seed {unit['seed']}: {state}",
                flush=True,
            )

    run_phases(phases, args.jobs, log)
    load.halt.set()
    samples = load.samples
    invocation = {
        **provenance(),
        "argv": command(args),
        "jobs": args.jobs,
        "wall_s": time.monotonic() - t0,
        "loadavg_1min": {"mean": sum(samples) / len(samples), "max": max(samples), "samples": samples},
        "units_run": sum(not u["skipped"] for u in ran),
        "units_done_before": sum(u["skipped"] for u in ran),
        "unit_wall_s": {
            f"{u['recipe']} {u['net']} {u['data']} seed{u['seed']}": round(u["wall_s"], 1)
            for u in ran
            if not u["skipped"]
        },
        **{k: v for k, v in info.items() if k != "recipes"},
    }
    append_invocation(os.path.join(args.out, "timing.json"), invocation)
    records = collect(args.out)
    rows = report.summary(records)
    meta = {
        **provenance(),
        "batch_size": BATCH,
        "acc_drop": ACC_DROP,
        "loss_factor": LOSS_FACTOR,
        "recipes": {r["recipe"]: r["spec"] for r in records if r["recipe"] != BACKPROP},
        "backprop_rates": list(BACKPROP_RATES),
        "val_fraction": 0.2,
    }
    save_results(
        os.path.join(args.out, "results.json"),
        {
            "experiment": "stability",
            "meta": meta,
            "summary": rows,
            "per_recipe": report.per_recipe(rows),
            "records": records,
        },
    )
    report.plot(rows, args.out)
    print(report.text_table(rows))
    return 0
