"""`blockadmm experiment fair`: each method at its best on deep MLPs, chosen on validation.

Per net (activation, depth) and method family, every candidate (init x optimizer x rate for backprop, init x preset
for Block-ADMM, init for local-greedy) trains with seed 0; the one with the best final validation accuracy then
trains with seeds 1 and 2 on the same batches (at 64 layers and more: seed 0 only, for time). Results go to one file
per net (DEPTHxACTIVATION.json under --out), written after every run; a rerun skips the runs already there, so
several processes can share a grid by taking different --nets.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from ..argtypes import positive_int
from . import common as C

FAMILIES = ("backprop", "block-admm", "local-greedy")
# the nets of the claims, most important first (a run cut short keeps the first ones whole)
DEFAULT_NETS = (
    (8, "sigmoid"),
    (8, "tanh"),
    (2, "relu"),
    (16, "sigmoid"),
    (16, "tanh"),
    (2, "sigmoid"),
    (2, "tanh"),
    (8, "relu"),
    (16, "relu"),
    (32, "sigmoid"),
    (32, "tanh"),
)
QUICK_NETS = ((2, "sigmoid"), (4, "sigmoid"))
SEEDS = (0, 1, 2)
SEED0_ONLY_FROM = 64  # nets this deep run the chosen candidates with seed 0 only
BACKPROP_RATES = {"backprop-sgd": (0.1, 0.3), "backprop-adam": (3e-4, 1e-3, 3e-3)}
DEEP_NET = 16  # from this depth on: backprop Adam 3e-4 / 1e-3 for every init, SGD 0.1 from the activation's gain init
DEEP_NET_RATES = {"backprop-sgd": (0.1,), "backprop-adam": (3e-4, 1e-3)}
# the deep preset re-tuned for the activation-gain init, where its default lr_z (0.3, tuned on PyTorch's init) fails
DEEP_RETUNED = ({"lr_z": 0.01},)
# at 32 layers, where every recipe fails from both inits: the recipe with a smaller z step and with a softer penalty
RETUNE_DEPTH = 32
RETUNED_32 = ({"lr_z": 0.1}, {"rho": 0.25})
CHANCE_MARGIN = 1.2  # a selection run whose validation accuracy is <= 1.2 / n_classes after half its epochs is stopped


def good_init(activation: str) -> str:
    """The init a careful user picks for this activation: He for ReLU, Glorot with the activation's gain otherwise."""
    return "kaiming" if activation == "relu" else "xavier"


def candidates(activation: str, depth: int, quick: bool = False) -> list[dict]:
    """Every (family, method, init, lr, overrides) tried on a net; `label` names it in the results.
    Backprop starts from the activation's gain init and orthogonal (PyTorch's default init never won its selection
    on a net where backprop trained; the depth experiment keeps the default-init table)."""
    inits = ["default", good_init(activation)]
    out = []
    for init in [good_init(activation)] + ([] if quick else ["orthogonal"]):
        for method, rates in BACKPROP_RATES.items():
            if depth >= DEEP_NET:  # fewer candidates on the slow nets: the rates that can train them
                rates = DEEP_NET_RATES[method] if method == "backprop-adam" or init == good_init(activation) else ()
            for lr in rates[:1] if quick else rates:
                out.append({"family": "backprop", "method": method, "init": init, "lr": lr, "overrides": {}})
    for init in inits:
        # up to 8 layers: the presets that suit the activation; deeper, only its own recipe (admm_recipe): the others
        # fail there (depth grid)
        presets = (
            ["default"] + (["deep"] if activation == "sigmoid" else []) + ["fast"]
            if depth <= 8
            else [C.admm_recipe(activation, depth)["preset"]]
        )
        tuned = []
        if activation == "sigmoid" and init != "default" and 8 <= depth < DEEP_NET:  # at 16 it stayed at chance
            tuned = [{"preset": "deep", **t} for t in DEEP_RETUNED]
        if depth == RETUNE_DEPTH:
            tuned = [{**preset_overrides(presets[0]), **t} for t in RETUNED_32]
            if init != "default":  # from the gain init the plain defaults did best at 8 layers (fast on tanh)
                tuned.append(preset_overrides("default" if activation == "sigmoid" else "fast"))
        for overrides in [preset_overrides(p) for p in presets] + ([] if quick else tuned):
            out.append(
                {"family": "block-admm", "method": "admm-online", "init": init, "lr": None, "overrides": overrides}
            )
        out.append({"family": "local-greedy", "method": "local-greedy", "init": init, "lr": 1e-3, "overrides": {}})
    for c in out:
        c["label"] = label(c)
    return out


def preset_overrides(preset: str) -> dict:
    """A preset as the experiments run it: the plain defaults with 3 sweeps (every committed result used 3)."""
    return {"preset": preset, "sweeps": 3} if preset == "default" else {"preset": preset}


def label(c: dict) -> str:
    """A candidate's name, e.g. "backprop-adam lr=0.001 init=xavier" or "admm-online preset=deep lr_z=0.03
    init=default"."""
    parts = [c["method"]] + ([f"lr={c['lr']:g}"] if c["lr"] is not None else [])
    parts += [
        f"{k}={v}"
        for k, v in c["overrides"].items()
        if not (k == "sweeps" and c["overrides"].get("preset") == "default")
    ]
    return " ".join(parts + [f"init={c['init']}"])


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nets", help="comma list of DEPTHxACTIVATION, e.g. 8xsigmoid,16xtanh (default: the claims' nets)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 10; --quick 2)")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--batch-size", type=positive_int, default=100, help="mini-batch size of every method (default 100)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="two small sigmoid nets, a reduced candidate list, 2 epochs, 1000 training samples (under 2 minutes)",
    )
    p.add_argument("--out", default="runs/experiments/fair")
    p.add_argument("--no-progress", action="store_true")


def parse_nets(text: str | None):
    if text is None:
        return None
    nets = []
    for item in C.parse_list(text):
        depth, _, act = item.partition("x")
        if not depth.isdigit() or act not in ("sigmoid", "tanh", "relu"):
            raise SystemExit(
                f"--nets: {item!r} is not DEPTHxACTIVATION (e.g. 8xsigmoid; activations sigmoid, tanh, relu)"
            )
        nets.append((int(depth), act))
    return nets


class ResultsFile:
    """The records of one experiment in `out`/`name`, rewritten after every run; keyed by `key(record)`."""

    def __init__(self, out: str, experiment: str, meta: dict, key, name: str = "results.json"):
        self.experiment, self.meta, self.key = experiment, meta, key
        self.path = os.path.join(out, name)
        self.records: list[dict] = []
        path = self.path
        if os.path.exists(path):
            old = C.read_results(path)
            protocol = ("epochs", "train", "batch_size")
            theirs = [old["meta"].get(k, 100 if k == "batch_size" else None) for k in protocol]
            mine = [meta.get(k, 100 if k == "batch_size" else None) for k in protocol]
            if theirs != mine:
                raise SystemExit(
                    f"{path} holds runs of another protocol (epochs/train size/batch size "
                    f"{'/'.join(map(str, theirs))}, this is {'/'.join(map(str, mine))}): use another --out"
                )
            self.records = old["records"]
        self.done = {key(r): r for r in self.records}

    def get(self, key) -> dict | None:
        return self.done.get(key)

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.done[self.key(record)] = record
        self.write()

    def write(self, **meta) -> None:
        """The records (per-epoch histories in the compressed file beside, results_io) and the meta, with `meta`
        added."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        C.save_results(
            self.path, {"experiment": self.experiment, "meta": {**self.meta, **meta}, "records": self.records}
        )


def record_key(r: dict) -> tuple:
    return r["activation"], r["depth"], r["label"], r["seed"]


def train(
    c: dict,
    depth: int,
    activation: str,
    seed: int,
    epochs: int,
    splits,
    select: bool,
    extra: dict | None = None,
    init_gain: float | None = None,
    progress=None,
    batch_size: int = 100,
) -> dict:
    """One run of candidate `c`; a selection run (`select`) stops early at chance (CHANCE_MARGIN)."""
    run = C.Run(
        method=c["method"],
        depth=depth,
        activation=activation,
        seed=seed,
        epochs=epochs,
        splits=splits,
        batch_size=batch_size,
        overrides=dict(c["overrides"]),
        init=c["init"],
        init_gain=init_gain,
        lr=c["lr"],
        eval_train_each_epoch=False,
        stop_at_chance=(epochs + 1) // 2 if select else None,
        extra={
            "family": c["family"],
            "label": c["label"],
            "lr": c["lr"],
            "phase": "select" if select else "seed",
            **(extra or {}),
        },
    )
    return C.run_method(run, progress=progress)


def choose(records: list[dict], family: str) -> dict | None:
    """The seed-0 record of `family` with the best final validation accuracy (the first one on a tie)."""
    pool = [r for r in records if r["family"] == family and r["seed"] == 0]
    return max(pool, key=lambda r: r["val_acc"]) if pool else None


def run_net(
    results: ResultsFile, depth: int, activation: str, epochs: int, splits, quick: bool, bar=None, batch_size: int = 100
) -> None:
    """Selection, then the chosen candidates' seeds, for one net."""
    cands = candidates(activation, depth, quick)
    by_label = {c["label"]: c for c in cands}

    def ensure(c, seed):
        key = (activation, depth, c["label"], seed)
        if results.get(key) is None:
            results.add(
                train(c, depth, activation, seed, epochs, splits, select=seed == 0, progress=bar, batch_size=batch_size)
            )
        return results.get(key)

    net = [ensure(c, 0) for c in cands]
    seeds = SEEDS[1:2] if quick else SEEDS[1:] if depth < SEED0_ONLY_FROM else ()
    for r in [choose(net, f) for f in FAMILIES]:
        for seed in seeds:
            ensure(by_label[r["label"]], seed)


def summary_rows(records: list[dict]) -> list[dict]:
    """Per net and family: the chosen candidate with its seeds' test accuracies."""
    rows = []
    nets = sorted({(r["depth"], r["activation"]) for r in records}, key=lambda n: (n[1], n[0]))
    for depth, act in nets:
        net = [r for r in records if r["depth"] == depth and r["activation"] == act]
        for family in FAMILIES:
            pick = choose(net, family)
            if pick is None:
                continue
            seeds = sorted((r for r in net if r["label"] == pick["label"]), key=lambda r: r["seed"])
            tests = [r["test_acc"] for r in seeds]
            rows.append(
                {
                    "depth": depth,
                    "activation": act,
                    "family": family,
                    "config": pick["label"],
                    "init": pick["init"],
                    "val_acc_seed0": pick["val_acc"],
                    "seeds": [r["seed"] for r in seeds],
                    "test_accs": tests,
                    "mean_test": C.mean(tests),
                    "worst_test": min(tests),
                    "candidates": sum(r["family"] == family and r["seed"] == 0 for r in net),
                    "time_per_epoch_s": C.mean(r["time_per_epoch_s"] for r in seeds),
                }
            )
    return rows


def comparisons(rows: list[dict]) -> list[dict]:
    """Block-ADMM against the strongest baseline (the higher mean of backprop and local-greedy) per net."""
    out = []
    for depth, act in sorted({(r["depth"], r["activation"]) for r in rows}, key=lambda n: (n[1], n[0])):
        by = {r["family"]: r for r in rows if r["depth"] == depth and r["activation"] == act}
        if "block-admm" not in by or not ({"backprop", "local-greedy"} & set(by)):
            continue
        admm = by["block-admm"]
        base = max((by[f] for f in ("backprop", "local-greedy") if f in by), key=lambda r: r["mean_test"])
        gap = admm["mean_test"] - base["mean_test"]
        spread = max(max(r["test_accs"]) - min(r["test_accs"]) for r in (admm, base))
        out.append(
            {
                "depth": depth,
                "activation": act,
                "admm_mean": admm["mean_test"],
                "admm_worst": admm["worst_test"],
                "baseline": base["family"],
                "baseline_config": base["config"],
                "baseline_mean": base["mean_test"],
                "baseline_worst": base["worst_test"],
                "gap": gap,
                "seed_spread": spread,
                "seeds": min(len(admm["test_accs"]), len(base["test_accs"])),
                "verdict": verdict(admm, base, gap, spread),
            }
        )
    return out


def verdict(admm: dict, base: dict, gap: float, spread: float) -> str:
    """ "win": >= 3 points ahead over 3 seeds, more than the seed spread; "match": within half a point or ahead;
    "no-training": both at chance."""
    if max(admm["mean_test"], base["mean_test"]) < 0.12:
        return "no-training"
    if gap >= 0.03 and gap > spread and min(len(admm["test_accs"]), len(base["test_accs"])) >= 3:
        return "win"
    return "match" if gap >= -0.005 else "loss"


def summary(records: list[dict]) -> str:
    rows = summary_rows(records)
    lines = ["net          family        mean   worst  seeds  config"]
    for r in rows:
        lines.append(
            f"{r['depth']:3d}x{r['activation']:8s}  {r['family']:12s}  {100 * r['mean_test']:5.1f}  "
            f"{100 * r['worst_test']:5.1f}  {len(r['seeds']):5d}  {r['config']}"
        )
    for c in comparisons(rows):
        lines.append(
            f"{c['depth']}x{c['activation']}: Block-ADMM {100 * c['admm_mean']:.1f} vs {c['baseline']} "
            f"{100 * c['baseline_mean']:.1f} (gap {100 * c['gap']:+.1f}, seed spread {100 * c['seed_spread']:.1f}): "
            f"{c['verdict']}"
        )
    return "\n".join(lines)


def meta(args, epochs: int, splits) -> dict:
    return {
        "dataset": "mnist5k",
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
        "epochs": epochs,
        "batch_size": args.batch_size,
        "width": 256,
        "quick": bool(args.quick),
        "threads": 1,
        "selection": "final validation accuracy, seed 0; selection runs at chance after half the epochs are stopped",
        "command": " ".join(
            ["blockadmm experiment fair"]
            + (["--quick"] if args.quick else [])
            + ([f"--nets {args.nets}"] if args.nets else [])
            + ([f"--epochs {args.epochs}"] if args.epochs else [])
            + ([f"--train-size {args.train_size}"] if args.train_size else [])
            + ([f"--batch-size {args.batch_size}"] if args.batch_size != 100 else [])
        ),
    }


def main(args) -> int:
    from tqdm.auto import tqdm

    C.setup_threads()
    train_size = args.train_size or (1000 if args.quick else None)
    splits = C.load_data(train_size=train_size)
    epochs = args.epochs or (2 if args.quick else 10)
    nets = parse_nets(args.nets) or list(QUICK_NETS if args.quick else DEFAULT_NETS)
    info = meta(args, epochs, splits)
    files = {net: ResultsFile(args.out, "fair", info, record_key, f"{net[0]}x{net[1]}.json") for net in nets}
    bar = tqdm(nets, desc="fair", disable=args.no_progress)
    for depth, act in bar:
        run_net(files[(depth, act)], depth, act, epochs, splits, args.quick, bar, args.batch_size)
    records = read_all(args.out)
    rows = summary_rows(records)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"meta": info, "rows": rows, "comparisons": comparisons(rows)}, f, indent=1)
    print(summary(records))
    return 0


def read_all(out: str) -> list[dict]:
    """Every record of the per-net files under `out`."""
    paths = [p for p in sorted(glob.glob(os.path.join(out, "*x*.json"))) if not p.endswith(".history.json")]
    return [r for path in paths for r in C.read_results(path)["records"]]
