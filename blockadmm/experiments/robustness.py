"""`blockadmm experiment robustness`: where does Block-ADMM train when backprop does not?

map     8 sigmoid layers of 256, Glorot-uniform init at gains 0.25..8, five methods (each one's rate / preset chosen on
        validation per gain with seed 0, then seeds 1, 2): the band of gains where each trains (>= 80% test)
noise   2 ReLU layers, 30% of the training labels replaced by a random other class; each family's choice from the
        fair grid
budget  2 ReLU layers, a fixed training time: each family's choice trains as many epochs as fit in the time of
        Block-ADMM's 10 (from the per-epoch times measured in the fair grid)
batch   8 sigmoid layers, mini-batches of 20 instead of 100; each family's candidates that trained in the fair grid,
        chosen again on validation (seed 0) at batch 20, then seeds 1, 2
"""

from __future__ import annotations

import argparse
import glob
import os

import torch

from .. import data as bdata
from . import common as C
from . import fair

PARTS = ("map", "noise", "budget", "batch")
GAINS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAP_ROWS = {  # method -> candidates (lr for backprop / local-greedy, overrides for Block-ADMM)
    "backprop-adam": [{"lr": lr} for lr in (1e-3, 3e-3)],  # 3e-4 never won a gain (committed map, 6 gains)
    "backprop-sgd": [{"lr": lr} for lr in (0.1, 0.3)],
    "admm-online": [{"overrides": {"preset": "default", "sweeps": 3}}, {"overrides": {"preset": "deep"}}],
    "admm-batch": [{"overrides": {"preset": "deep-batch"}}],
    "local-greedy": [{"lr": 1e-3}],
}
TRAINS = 0.8  # the map's threshold: a gain where a method's mean test accuracy reaches 80%
NOISE_FRACTION = 0.3
NOISE_NETS = ((2, "relu"),)
BUDGET_NET = (2, "relu")
MAX_BUDGET_EPOCHS = 60
SMALL_BATCH_NET, SMALL_BATCH = (8, "sigmoid"), 20
CHANCE = fair.CHANCE_MARGIN / 10  # a 10-class net whose validation accuracy is at or below this has not trained


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", help=f"comma list of {','.join(PARTS)} (default all)")
    p.add_argument(
        "--fair",
        default="results/experiments/fair",
        help="the fair grid's folder (noise, budget and batch use its choices)",
    )
    p.add_argument(
        "--gains",
        help="map: comma list of init gains (default 0.25,0.5,1,2,4,8; one results file per gain, "
        "so several processes can share the map)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10; --quick 2)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the map only, on 2 sigmoid layers, gains 0.5 and 4, one "
        "candidate per method, 2 epochs, 1000 samples (under 2 minutes)",
    )
    p.add_argument("--out", default="runs/experiments/robustness")
    p.add_argument("--no-progress", action="store_true")


def map_candidates(quick: bool) -> list[dict]:
    out = []
    for method, options in MAP_ROWS.items():
        for o in options[:1] if quick else options:
            c = {
                "family": method,
                "method": method,
                "init": "xavier",
                "lr": o.get("lr"),
                "overrides": o.get("overrides", {}),
            }
            c["label"] = fair.label(c)
            out.append(c)
    return out


def run_map(files: dict, splits, epochs: int, quick: bool, bar) -> None:
    """Per gain (files: gain -> its ResultsFile): every candidate with seed 0, then seeds 1, 2 of each method's choice,
    the rows that decide the comparison (the best Block-ADMM and the best baseline) first."""
    depth, seeds = (2, (0, 1)) if quick else (8, fair.SEEDS)
    cands = map_candidates(quick)

    def ensure(c, gain, seed):
        key = ("map", gain, c["label"], seed)
        if files[gain].get(key) is None:
            files[gain].add(
                fair.train(
                    c,
                    depth,
                    "sigmoid",
                    seed,
                    epochs,
                    splits,
                    seed == 0,
                    {"part": "map", "gain": gain},
                    init_gain=gain,
                    progress=bar,
                )
            )
        return files[gain].get(key)

    first = {gain: [ensure(c, gain, 0) for c in cands] for gain in files}  # every gain's selection before any seed
    for gain in files:
        chosen = [fair.choose(first[gain], method) for method in MAP_ROWS]
        admm = max((r for r in chosen if r["family"].startswith("admm")), key=lambda r: r["val_acc"])
        base = max((r for r in chosen if not r["family"].startswith("admm")), key=lambda r: r["val_acc"])
        for r in [admm, base] + [r for r in chosen if r not in (admm, base)]:
            for seed in seeds[1:]:
                ensure(next(c for c in cands if c["label"] == r["label"]), gain, seed)


def map_rows(records: list[dict]) -> list[dict]:
    """Per gain and method: the chosen candidate's seeds' test accuracies."""
    rows = []
    recs = [r for r in records if r.get("part") == "map"]
    for gain in sorted({r["gain"] for r in recs}):
        at = [r for r in recs if r["gain"] == gain]
        for method in MAP_ROWS:
            best = fair.choose(at, method)
            if best is None:
                continue
            tests = [r["test_acc"] for r in at if r["label"] == best["label"]]
            rows.append(
                {
                    "gain": gain,
                    "method": method,
                    "config": best["label"],
                    "test_accs": tests,
                    "mean_test": C.mean(tests),
                    "worst_test": min(tests),
                    "trains": C.mean(tests) >= TRAINS,
                }
            )
    return rows


def fair_records(fair_dir: str, depth: int, activation: str) -> list[dict]:
    """The fair grid's runs on this net (a clear error when the grid has not run it)."""
    path = os.path.join(fair_dir, f"{depth}x{activation}.json")
    if not os.path.exists(path):
        raise SystemExit(
            f"no fair-grid results for {depth}x{activation} at {path}: run "
            f"`blockadmm experiment fair --nets {depth}x{activation} --out {fair_dir}` first, or pass --fair"
        )
    return C.read_results(path)["records"]


def fair_choices(fair_dir: str, depth: int, activation: str) -> list[dict]:
    """The fair grid's choice per family on this net, as candidates (with their measured time per epoch)."""
    records = fair_records(fair_dir, depth, activation)
    by_label = {c["label"]: c for c in fair.candidates(activation, depth)}
    out = []
    for family in fair.FAMILIES:
        best = fair.choose(records, family)
        if best is not None:
            seeds = [r for r in records if r["label"] == best["label"] and not r.get("stopped_at_chance")]
            out.append({**by_label[best["label"]], "time_per_epoch_s": C.mean(r["time_per_epoch_s"] for r in seeds)})
    return out


def trained_candidates(fair_dir: str, depth: int, activation: str) -> dict:
    """Per family, the candidates of the fair grid that trained on this net (seed-0 validation above chance), or its
    choice where none did."""
    records = fair_records(fair_dir, depth, activation)
    by_label = {c["label"]: c for c in fair.candidates(activation, depth)}
    out = {}
    for c in fair_choices(fair_dir, depth, activation):
        trained = [
            by_label[r["label"]]
            for r in records
            if r["family"] == c["family"] and r["seed"] == 0 and r["label"] in by_label and r["val_acc"] > CHANCE
        ]
        out[c["family"]] = trained or [c]
    return out


def noisy(splits: bdata.DataSplits, fraction: float, seed: int = 0) -> bdata.DataSplits:
    """The splits with `fraction` of the training labels replaced by a uniformly drawn other class (fixed by `seed`)."""
    g = torch.Generator().manual_seed(seed)
    y = splits.train.Y.clone()
    flip = torch.rand(len(y), generator=g) < fraction
    shift = torch.randint(1, splits.num_classes, (len(y),), generator=g)
    y[flip] = (y[flip] + shift[flip]) % splits.num_classes
    train = bdata.IndexedDataset(splits.train.X, y, splits.num_classes)
    return bdata.DataSplits(
        train, splits.val, splits.test, splits.input_shape, splits.num_classes, splits.name, splits.stats
    )


def run_choices(
    results: fair.ResultsFile, net, splits, epochs: int, fair_dir: str, bar, extra: dict, batch_size=100, reselect=False
):
    """Each family's choice from the fair grid on `net`, seeds 0-2, in the setting `extra` names (its "part").
    reselect: each family's candidates that trained in the fair grid run seed 0 in this setting, and the best of them
    on validation runs seeds 1, 2."""
    depth, act = net

    def ensure(c, seed):
        key = (extra["part"], depth, c["label"], seed)
        if results.get(key) is None:
            results.add(
                fair.train(c, depth, act, seed, epochs, splits, False, extra, progress=bar, batch_size=batch_size)
            )
        return results.get(key)

    if not reselect:
        for c in fair_choices(fair_dir, depth, act):
            for seed in fair.SEEDS:
                ensure(c, seed)
        return
    for cands in trained_candidates(fair_dir, depth, act).values():
        best = max((ensure(c, 0) for c in cands), key=lambda r: r["val_acc"])
        for seed in fair.SEEDS[1:]:
            ensure(next(c for c in cands if c["label"] == best["label"]), seed)


def run_noise(results: fair.ResultsFile, splits, epochs: int, fair_dir: str, bar) -> None:
    for net in NOISE_NETS:
        run_choices(
            results,
            net,
            noisy(splits, NOISE_FRACTION),
            epochs,
            fair_dir,
            bar,
            {"part": "noise", "noise": NOISE_FRACTION},
        )


def run_small_batch(results: fair.ResultsFile, splits, epochs: int, fair_dir: str, bar) -> None:
    run_choices(
        results,
        SMALL_BATCH_NET,
        splits,
        epochs,
        fair_dir,
        bar,
        {"part": "batch", "batch_size": SMALL_BATCH},
        batch_size=SMALL_BATCH,
        reselect=True,
    )


def run_budget(results: fair.ResultsFile, splits, epochs: int, fair_dir: str, bar) -> None:
    depth, act = BUDGET_NET
    choices = fair_choices(fair_dir, depth, act)
    admm = next(c for c in choices if c["family"] == "block-admm")
    budget_s = epochs * admm["time_per_epoch_s"]
    for c in choices:
        n_epochs = max(1, min(MAX_BUDGET_EPOCHS, int(budget_s / c["time_per_epoch_s"])))
        for seed in fair.SEEDS:
            key = ("budget", depth, c["label"], seed)
            if results.get(key) is None:
                results.add(
                    fair.train(
                        c,
                        depth,
                        act,
                        seed,
                        n_epochs,
                        splits,
                        False,
                        {"part": "budget", "budget_s": budget_s, "budget_epochs": n_epochs},
                        progress=bar,
                    )
                )


def key(r: dict) -> tuple:
    part = r.get("part")
    return (part, r["gain"] if part == "map" else r["depth"], r["label"], r["seed"])


def plot_map(rows: list[dict], path: str) -> None:
    """Mean test accuracy against init gain per method, every seed as a dot, the 80% line."""
    plt = C.plt()
    fig, ax = plt.subplots(figsize=(7.4, 4.2))
    for i, method in enumerate(MAP_ROWS):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["gain"])
        if not mine:
            continue
        gains = [r["gain"] for r in mine]
        ax.plot(gains, [100 * r["mean_test"] for r in mine], "o-", color=f"C{i}", label=method)
        for r in mine:
            ax.scatter(
                [r["gain"]] * len(r["test_accs"]), [100 * t for t in r["test_accs"]], s=9, color=f"C{i}", alpha=0.4
            )
    ax.axhline(100 * TRAINS, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    gains = sorted({r["gain"] for r in rows})
    ax.set_xticks(gains, [f"{g:g}" for g in gains])
    ax.set_xlabel("init gain (Glorot-uniform, hidden layers; output layer gain 1)")
    ax.set_ylabel("test accuracy (%), mean of seeds; dots: seeds")
    ax.set_title("8 sigmoid layers of 256, MNIST-5k, 10 epochs: where each method trains", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def part_rows(records: list[dict], part: str) -> list[dict]:
    """Per net and family of a `noise` / `budget` / `batch` part, the candidate with the best seed-0 validation: mean
    and worst test accuracy over its seeds."""
    rows = []
    recs = [r for r in records if r.get("part") == part]
    for depth, act, family in sorted({(r["depth"], r["activation"], r["family"]) for r in recs}):
        label = fair.choose([r for r in recs if (r["depth"], r["activation"]) == (depth, act)], family)["label"]
        rs = [r for r in recs if (r["depth"], r["activation"], r["label"]) == (depth, act, label)]
        tests = [r["test_acc"] for r in rs]
        rows.append(
            {
                "depth": depth,
                "activation": act,
                "family": rs[0]["family"],
                "config": label,
                "test_accs": tests,
                "mean_test": C.mean(tests),
                "worst_test": min(tests),
                "epochs": rs[0]["epochs"],
                "budget_s": rs[0].get("budget_s"),
            }
        )
    return rows


def main(args) -> int:
    from tqdm.auto import tqdm

    C.setup_threads()
    parts = C.parse_list(args.parts) or (["map"] if args.quick else list(PARTS))
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"unknown parts {bad}; choose from {', '.join(PARTS)}")
    if args.quick and parts != ["map"]:
        raise SystemExit("--quick runs the map only: drop --parts or pass --parts map")
    splits = C.load_data(train_size=1000 if args.quick else None)
    epochs = args.epochs or (2 if args.quick else 10)
    info = {
        "dataset": "mnist5k",
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
        "epochs": epochs,
        "batch_size": 100,
        "width": 256,
        "quick": bool(args.quick),
        "threads": 1,
        "noise_fraction": NOISE_FRACTION,
        "command": " ".join(
            ["blockadmm experiment robustness"]
            + (["--quick"] if args.quick else [])
            + ([f"--parts {args.parts}"] if args.parts else [])
        ),
    }
    gains = C.parse_list(args.gains, float) or ([0.5, 4.0] if args.quick else list(GAINS))
    bar = tqdm(parts, desc="robustness", disable=args.no_progress)
    for part in bar:
        if part == "map":
            files = {g: fair.ResultsFile(args.out, "robustness", info, key, f"map-g{g:g}.json") for g in gains}
            run_map(files, splits, epochs, args.quick, bar)
        else:
            results = fair.ResultsFile(args.out, "robustness", info, key)
            run = {"noise": run_noise, "budget": run_budget, "batch": run_small_batch}[part]
            run(results, splits, epochs, args.fair, bar)
    records = read_all(args.out)
    rows = {"map": map_rows(records), **{part: part_rows(records, part) for part in PARTS[1:]}}
    if rows["map"]:
        plot_map(rows["map"], os.path.join(args.out, "map.png"))
    print(summary(rows))
    return 0


def read_all(out: str) -> list[dict]:
    """Every record under `out`: the map's per-gain files and results.json (noise, budget)."""
    paths = sorted(glob.glob(os.path.join(out, "map-g*.json"))) + [os.path.join(out, "results.json")]
    return [r for p in paths if os.path.exists(p) for r in C.read_results(p)["records"]]


def summary(rows: dict) -> str:
    lines = ["map: gain  method          mean   worst  config"]
    lines += [
        f"  {r['gain']:5g}  {r['method']:14s}  {100 * r['mean_test']:5.1f}  {100 * r['worst_test']:5.1f}  {r['config']}"
        for r in rows["map"]
    ]
    for part in PARTS[1:]:
        lines += [
            f"{part}: {r['depth']}x{r['activation']} {r['family']:12s} {100 * r['mean_test']:5.1f} "
            f"(worst {100 * r['worst_test']:.1f}, {r['epochs']} epochs)  {r['config']}"
            for r in rows[part]
        ]
    return "\n".join(lines)
