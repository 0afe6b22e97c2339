"""The README's fair-baseline sections: each method at its best (experiment fair), the robustness experiment and
DeepFacto against the unrolled-NMF backprop layer, with the claims stated against the strongest baseline.
Built only from the results files under results/experiments; numbers are never typed by hand."""

from __future__ import annotations

import glob
import json
import math
import os

from blockadmm.experiments import fair, robustness
from blockadmm.experiments.common import mean
from blockadmm.experiments.deepfacto_unrolled import summary_rows as unrolled_rows
from blockadmm.experiments.results_io import read_results

CHANCE = 0.12  # below this mean test accuracy a 10-class net has not trained
WIN = 0.03  # the bar: Block-ADMM ahead of the strongest baseline by >= 3 points, more than the seed spread
TITLE = {"backprop": "backprop", "block-admm": "Block-ADMM", "local-greedy": "local-greedy"}


def pct(x) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _stat(accs) -> str:
    """mean (worst of n) of test accuracies."""
    return f"{pct(mean(accs))} ({pct(min(accs))}, n={len(accs)})" if len(accs) > 1 else f"{pct(accs[0])} (n=1)"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _config(label: str) -> str:
    """A candidate label without its method prefix where the column says it (e.g. "adam lr=0.001 init=xavier")."""
    return (
        label.replace("backprop-", "")
        .replace("admm-online ", "")
        .replace("local-greedy ", "")
        .replace("preset=", "")
        .replace(" init=", ", init ")
    )


def _verdict(gap: float, spread: float, seeds: int, best: float = 1.0) -> str:
    """How Block-ADMM stands against the strongest baseline; `best`: the higher of the two means."""
    if best < CHANCE:
        return "no method trains (all at chance)"
    if gap >= WIN and gap > spread and seeds >= 3:
        return f"**Block-ADMM wins** by {100 * gap:.1f}"
    if gap >= -0.005:
        return "**reached** (matches)" if gap < 0.005 else f"**reached** (+{100 * gap:.1f})"
    return f"missed: {100 * -gap:.1f} below"


def render_fair(root: str, rel: str) -> tuple[list[str], list[str]]:
    """The fair table and its claims; also returns the settings tried (for the win search)."""
    records = fair.read_all(root)
    rows = fair.summary_rows(records)
    comps = {(c["depth"], c["activation"]): c for c in fair.comparisons(rows)}
    by = {(r["depth"], r["activation"], r["family"]): r for r in rows}
    nets = sorted(
        {(r["depth"], r["activation"]) for r in rows}, key=lambda n: (("sigmoid", "tanh", "relu").index(n[1]), n[0])
    )
    meta = read_results(os.path.join(root, f"{nets[0][0]}x{nets[0][1]}.json"))["meta"] if nets else {}
    n_candidates = {f: sorted({r["candidates"] for r in rows if r["family"] == f}) for f in fair.FAMILIES}
    batch = meta.get("batch_size", 100)
    flag = f" --batch-size {batch}" if batch != 100 else ""
    out = [
        f"### Each method at its best{f', batch {batch}' if flag else ''} (`blockadmm experiment fair{flag} --out "
        f"{rel}`)",
        "",
        (
            f"MNIST-5k, {meta.get('train')} train / {meta.get('val')} val / {meta.get('test')} test, MLP 784 → L×256 → "
            f"10, batch {batch}, {meta.get('epochs')} epochs, one torch thread; every method on the same batches. For "
            "each net and method every candidate trains with seed 0 and the one with the best final **validation** "
            f"accuracy is run with seeds 1 and 2 (from {fair.SEED0_ONLY_FROM} layers: seed 0 only, for time). "
            "Candidates — backprop: init (Glorot-uniform with the activation's gain: 4 sigmoid, 5/3 tanh; He for "
            "ReLU; orthogonal) × SGD 0.1 / 0.3 × Adam 3e-4 / 1e-3 / 3e-3, from 16 layers Adam 3e-4 / 1e-3 from both "
            "inits and SGD 0.1 from the gain init (PyTorch's default init is not a backprop candidate: it never won "
            "backprop's selection on any net where backprop trained, in an earlier run of this grid that had it); "
            "Block-ADMM online: init (PyTorch's default, the activation's gain init) × preset (the defaults, `deep` "
            "for sigmoid, `fast`; from 16 layers only the activation's recipe: `deep` for sigmoid, the defaults "
            "otherwise), plus `deep` with lr_z 0.01 from the gain-4 init at 8 sigmoid layers, and at 32 layers the "
            "recipe re-tuned from both inits (lr_z 0.1; ρ 0.25) and, from the gain init, the defaults (sigmoid) / "
            "`fast` (tanh); local-greedy: the two inits, Adam 1e-3 "
            f"({', '.join(f'{TITLE[f]} {max(v)}' for f, v in n_candidates.items() if v)} candidates per net at most). "
            "A selection run whose validation accuracy is still at chance after half its epochs is stopped. Test "
            "accuracy (%) at the last epoch: mean (worst seed, n seeds); the chosen candidate under each."
        ),
        "",
        "| net | backprop | Block-ADMM | local-greedy | Block-ADMM vs the strongest baseline |",
        "|---|---|---|---|---|",
    ]
    for depth, act in nets:
        cells = []
        for f in fair.FAMILIES:
            r = by.get((depth, act, f))
            cells.append(f"{_stat(r['test_accs'])}<br>{_config(r['config'])}" if r else "")
        c = comps.get((depth, act))
        cells.append(
            f"{_verdict(c['gap'], c['seed_spread'], c['seeds'], max(c['admm_mean'], c['baseline_mean']))} vs "
            f"{TITLE[c['baseline']]} "
            f"(seed spread {100 * c['seed_spread']:.1f})"
            if c
            else ""
        )
        out.append(f"| {depth}×{act} | " + " | ".join(cells) + " |")
    out.append("")
    out += _candidate_notes(records, nets)
    reached = [
        f"{d}×{a}"
        for (d, a), c in comps.items()
        if c["gap"] >= -0.005 and max(c["admm_mean"], c["baseline_mean"]) >= CHANCE
    ]
    bp_wins = [
        f"{d}×{a} ({pct(c['baseline_mean'])} vs {pct(c['admm_mean'])})"
        for (d, a), c in comps.items()
        if c["gap"] < -0.005 and c["baseline"] == "backprop"
    ]
    local_wins = [
        f"{d}×{a} ({pct(c['baseline_mean'])} vs {pct(c['admm_mean'])})"
        for (d, a), c in comps.items()
        if c["gap"] < -0.005 and c["baseline"] == "local-greedy"
    ]
    out.append(
        "- Block-ADMM matches or beats the strongest baseline (within half a point or above) at: "
        + (", ".join(reached) if reached else "none of these nets")
        + "."
    )
    if bp_wins:
        out.append(
            "- **Backprop wins** (best of its init × optimizer × rate, vs Block-ADMM at its best) at: "
            + "; ".join(bp_wins)
            + "."
        )
    if local_wins:
        out.append("- **Local-greedy wins** at: " + "; ".join(local_wins) + ".")
    local_beats = [
        f"{d}×{a} ({pct(by[(d, a, 'local-greedy')]['mean_test'])} vs {pct(by[(d, a, 'block-admm')]['mean_test'])})"
        for d, a in nets
        if (d, a, "local-greedy") in by
        and (d, a, "block-admm") in by
        and by[(d, a, "local-greedy")]["mean_test"] > by[(d, a, "block-admm")]["mean_test"] + 0.005
    ]
    if local_beats:
        out.append(
            "- **Local-greedy** (each layer trained on its own linear head, no gradient between layers) **beats "
            "Block-ADMM** at: " + "; ".join(local_beats) + "."
        )
    bp_default = [
        f"{r['depth']}×{r['activation']}" for r in rows if r["family"] == "backprop" and r["init"] == "default"
    ]
    picked = sorted({r["init"] for r in rows if r["family"] == "backprop"})
    out.append(
        f"- Backprop's chosen inits: {', '.join(picked)}"
        + (f" (PyTorch's default chosen at {', '.join(bp_default)})" if bp_default else " (never PyTorch's default)")
        + "."
    )
    out.append("")
    settings = [f"{d}×{a}{f' batch {batch}' if flag else ''} ({_seeds(c['seeds'])})" for (d, a), c in comps.items()]
    wins = [
        f"{d}×{a}: +{100 * c['gap']:.1f} over {TITLE[c['baseline']]}"
        for (d, a), c in comps.items()
        if _verdict(c["gap"], c["seed_spread"], c["seeds"]).startswith("**Block-ADMM wins")
    ]
    return out, [("the fair grid" + (f", batch {batch}" if flag else ""), settings, wins)]


def _candidate_notes(records: list[dict], nets: list[tuple]) -> list[str]:
    """A line per net whose seed-0 runs are not the command's candidate list (a net kept from an earlier run)."""
    out = []
    for depth, act in nets:
        ran = {r["label"] for r in records if (r["depth"], r["activation"], r["seed"]) == (depth, act, 0)}
        listed = {c["label"] for c in fair.candidates(act, depth)}
        extra, missing = ran - listed, listed - ran
        if extra or missing:
            out.append(
                f"- {depth}×{act} is from an earlier run of the grid: {len(ran)} candidates"
                + (f", {len(extra)} of them no longer listed ({'; '.join(sorted(extra))})" if extra else "")
                + (f"; {len(missing)} listed ones not run ({'; '.join(sorted(missing))})" if missing else "")
                + "."
            )
    return out + [""] if out else []


def render_grid_timing(root: str, rel: str) -> list[str]:
    """The timed runs of `blockadmm experiment grid` (every grid/*.json: full.json, quick.json and earlier runs
    renamed beside them), as measured."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "grid", "*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        with open(path) as f:
            g = json.load(f)
        what = "`--quick`" if "--quick" in g["command"] else "The whole grid"
        load = g["loadavg_1min"]
        done = [u for u in g["units"] if u["rc"] == 0]
        status = (
            f"finished in {g['wall_s'] / 60:.1f} min"
            if g["complete"]
            else f"stopped after {g['wall_s'] / 60:.1f} min with {len(done)} of {len(done) + len(g['not_finished'])} "
            f"units finished (not finished: {', '.join(g['not_finished'])})"
        )
        out.append(
            f"- {what} (`{g['command']} --out ...`, started {g['start_utc']}): {status}, {g['jobs']} worker "
            f"processes on {g['cpu_count']} CPU cores shared with other jobs, 1-minute load average {load['mean']:.1f} "
            f"on average (max {load['max']:.1f}). Per unit: "
            + ", ".join(f"{u['name']} {u['wall_s'] / 60:.1f} min" for u in done)
            + f" ([{name}.json]({rel}/{name}.json))."
            + (
                f" Resumed: {sum(g['runs_done_before'].values())} runs were already done before this run started "
                f"({', '.join(f'{k} {v}' for k, v in g['runs_done_before'].items() if v)}), so their time is not in it."
                if sum(g.get("runs_done_before", {}).values())
                else ""
            )
        )
    return (["**Run time.**", ""] + out + [""]) if out else []


def _part_table(rows: list[dict], title: str) -> tuple[list[str], list[tuple]]:
    out, found = (
        [f"| {title} | method (chosen on validation) | test % mean (worst, n) | epochs |", "|---|---|---|---|"],
        [],
    )
    nets = sorted({(r["depth"], r["activation"]) for r in rows})
    for depth, act in nets:
        mine = [r for r in rows if (r["depth"], r["activation"]) == (depth, act)]
        for r in mine:
            out.append(
                f"| {depth}×{act} | {TITLE[r['family']]}: {_config(r['config'])} | {_stat(r['test_accs'])} | "
                f"{r['epochs']} |"
            )
        admm = next((r for r in mine if r["family"] == "block-admm"), None)
        base = max((r for r in mine if r["family"] != "block-admm"), key=lambda r: r["mean_test"], default=None)
        if admm and base:
            spread = max(max(r["test_accs"]) - min(r["test_accs"]) for r in (admm, base))
            found.append(
                (
                    f"{depth}×{act}",
                    admm["mean_test"] - base["mean_test"],
                    spread,
                    min(len(admm["test_accs"]), len(base["test_accs"])),
                    base,
                )
            )
    return out + [""], found


def render_robustness(records: list[dict], meta: dict, rel: str) -> tuple[list[str], list[tuple]]:
    """The init-gain map and/or the label-noise, time-budget and small-batch tables of one robustness folder."""
    rows = {"map": robustness.map_rows(records), **{p: robustness.part_rows(records, p) for p in robustness.PARTS[1:]}}
    parts = [p for p in robustness.PARTS if rows[p]]
    names = {"noise": "label noise", "budget": "a fixed time budget", "batch": "small batches"}
    heading = (
        "Where does Block-ADMM train when backprop does not?"
        if rows["map"]
        else ", ".join(names[p] for p in parts).capitalize()
    )
    command = f"blockadmm experiment robustness --parts {','.join(parts)}"
    out = [f"### {heading} (`{command} --out {rel}`)", ""]
    tried = []
    if rows["map"]:
        gains = sorted({r["gain"] for r in rows["map"]})
        out += [
            (
                "8 sigmoid layers of 256, Glorot-uniform init with gain g on the hidden layers (gain 1 on the logits), "
                "10 epochs. Per gain and method the candidate with the best validation accuracy (seed 0) is chosen — "
                + "; ".join(f"{m}: {' / '.join(_map_option(o) for o in opts)}" for m, opts in _map_candidates(records))
                + " — then run with seeds 1, 2. Test accuracy (%), mean (worst, n)."
            ),
            "",
            "| method | " + " | ".join(f"g={g:g}" for g in gains) + " | trains (≥ 80%) at |",
            "|---|" + "---|" * (len(gains) + 1),
        ]
        for method in robustness.MAP_ROWS:
            mine = {r["gain"]: r for r in rows["map"] if r["method"] == method}
            band = [f"{g:g}" for g in gains if g in mine and mine[g]["trains"]]
            out.append(
                f"| {method} | "
                + " | ".join(_stat(mine[g]["test_accs"]) if g in mine else "" for g in gains)
                + f" | {', '.join(band) if band else 'none'} |"
            )
        out += ["", f"![init-gain map]({rel}/map.png)", ""]
        map_wins, map_settings, near = [], [], []
        for g in gains:
            at = [r for r in rows["map"] if r["gain"] == g]
            admm = max((r for r in at if r["method"].startswith("admm")), key=lambda r: r["mean_test"], default=None)
            base = max(
                (r for r in at if not r["method"].startswith("admm")), key=lambda r: r["mean_test"], default=None
            )
            if admm and base:
                spread = max(max(r["test_accs"]) - min(r["test_accs"]) for r in (admm, base))
                n = min(len(admm["test_accs"]), len(base["test_accs"]))
                gap = admm["mean_test"] - base["mean_test"]
                map_settings.append(f"gain {g:g} ({_seeds(n)})")
                if gap >= WIN and gap > spread and n >= 3:
                    map_wins.append(f"gain {g:g}: {admm['method']} +{100 * gap:.1f} over {base['method']}")
                elif gap >= WIN:
                    near.append(f"gain {g:g} (+{100 * gap:.1f} mean, seeds spread over {100 * spread:.1f})")
                out.append(
                    f"- Gain {g:g}: best Block-ADMM ({admm['method']}) {pct(admm['mean_test'])} vs best baseline "
                    f"({base['method']}) {pct(base['mean_test'])}, {_seeds(n)}, seed spread {100 * spread:.1f}: "
                    f"{_verdict(gap, spread, n, max(admm['mean_test'], base['mean_test']))}."
                )
        if near:
            out.append(
                "- Block-ADMM leads the strongest baseline by ≥ 3 points in mean at "
                + "; ".join(near)
                + ", but not by more than the seed spread: short of a win by the bar of the summary below."
            )
        out.append("")
        tried.append(("the init-gain map (8×sigmoid)", map_settings, map_wins))
    for part, title, text in (
        (
            "noise",
            "label noise",
            (
                f"{int(100 * meta.get('noise_fraction', 0.3))}% of the training "
                "labels replaced by another class (validation and test clean), each "
                "method's choice from the fair grid, 10 epochs."
            ),
        ),
        (
            "budget",
            "time budget",
            (
                "A fixed training time: each method's choice from the fair grid "
                "trains as many epochs as fit in the time of Block-ADMM's 10 "
                "(per-epoch times measured in the fair grid)."
            ),
        ),
        (
            "batch",
            f"batch {robustness.SMALL_BATCH}",
            (
                f"Mini-batches of {robustness.SMALL_BATCH} instead of 100 (5× the steps per epoch), 10 epochs: each "
                "method's candidates that trained in the fair grid at batch 100 (validation above chance) run seed 0 "
                f"at batch {robustness.SMALL_BATCH}, the best on validation then seeds 1, 2."
            ),
        ),
    ):
        if rows[part]:
            table, found = _part_table(rows[part], title)
            out += [f"**{title.capitalize()}.** {text}", ""] + table
            for net, gap, spread, n, base in found:
                out.append(
                    f"- {title.capitalize()}, {net}: Block-ADMM vs {TITLE[base['family']]}: "
                    f"{_verdict(gap, spread, n, max(gap + base['mean_test'], base['mean_test']))}."
                )
            out.append("")
            tried.append(
                (
                    title,
                    [f"{net} ({_seeds(n)})" for net, _, _, n, _ in found],
                    [
                        f"{net}: +{100 * gap:.1f}"
                        for net, gap, spread, n, _ in found
                        if gap >= WIN and gap > spread and n >= 3
                    ],
                )
            )
    return out, tried


def _map_candidates(records: list[dict]) -> list[tuple]:
    """Per map method, the options its seed-0 runs tried (over all gains)."""
    recs = [r for r in records if r.get("part") == "map" and r["seed"] == 0]
    return [(m, sorted({r["label"] for r in recs if r["method"] == m})) for m in robustness.MAP_ROWS]


def _map_option(label: str) -> str:
    return " ".join(w for w in label.split() if not w.startswith(("init=", "admm-", "backprop-", "local-")))


def render_win_search(tried: list[tuple]) -> list[str]:
    """The issue's question answered from the settings tried: a >= 3-point win over the strongest baseline, or none."""
    wins = [w for _, _, ws in tried for w in ws]
    names = " ".join(name + " " + " ".join(settings) for name, settings, _ in tried)
    not_tried = [what for what, key in (("64-layer nets", "64×"), ("small batches", "batch ")) if key not in names]
    not_tried.append("other datasets")
    listing = "; ".join(f"{name}: {', '.join(settings)}" for name, settings, _ in tried if settings)
    if wins:
        return [
            (
                f"**Where Block-ADMM beats the strongest baseline by ≥ 3 points** (mean over 3 seeds, more than the "
                f"seed "
                f"spread, chosen on validation): {'; '.join(wins)}. Settings tried: {listing}."
            ),
            "",
        ]
    return [
        (
            f"**No setting was found where Block-ADMM beats the strongest baseline by ≥ 3 points** (mean over 3 seeds, "
            f"more than the seed spread) among the settings tried: {listing}. Every net has no normalization layers. "
            f"Not tried: {', '.join(not_tried)}."
        ),
        "",
    ]


def render_deepfacto_unrolled(res: dict, rel: str) -> list[str]:
    p = res["meta"]["protocol"]
    full = "--full" in res["meta"]["command"]  # DeepFacto's own pairs protocol (deepfacto_unrolled --full)
    seeds_run = sorted({r["seed"] for r in res["records"] if r["method"] == "deepfacto"})
    paired = [r for r in res["records"] if r["seed"] in seeds_run]  # a seed counts when every method ran on it
    unpaired = [r for r in res["records"] if r["seed"] not in seeds_run]
    rows = unrolled_rows(paired if full else res["records"])
    size_note = "(DeepFacto's own protocol)" if full else "(fewer than DeepFacto's own section, for time)"
    supervised = any(r["task"] == "supervised" for r in res["records"])
    out = [
        f"### DeepFacto against an NMF layer trained by backprop (`{res['meta']['command']} --out {rel}`)",
        "",
        (
            "The same network (conv features, the class-grouped NMF layer with the same basis init and l1, the "
            "group-energy head, the same initial weights) trained two ways: DeepFacto (Block-ADMM, the NMF layer never "
            "crossed by backprop) and backprop through the NMF codes solved by unrolled multiplicative updates with a "
            "one-step gradient (the last update differentiated, the others constants: the approach of Hamburger, Geng "
            "et "
            "al. 2021), its Adam rate (1e-3 or 3e-3) chosen on validation; the CAM network (conv features, global "
            "average "
            f"pooling, linear) beside them. "
            f"{'Supervised MNIST-5k: ' + str(p['supervised']['epochs']) + ' epochs. ' if supervised else ''}Pairs: "
            f"{p['pairs']['n_train']} training / {p['pairs']['n_test']} test canvases "
            f"{size_note}, "
            f"{p['pairs']['curriculum_epochs']} curriculum epochs on ink proposals then "
            f"{p['pairs']['epochs']} "
            f"on the canvases (CAM: {p['pairs']['cam_epochs']}). Test metrics (%), mean (worst, n)."
            + (f" Seeds run: {', '.join(map(str, seeds_run))} of {', '.join(map(str, res['meta']['seeds']))} "
               f"(the others did not fit the session's time; the command resumes them)."
               + (" Left out, for want of their seed's DeepFacto run: "
                  + "; ".join(f"{r['label']} seed {r['seed']} (pointing {pct(r['test_pointing'])}, both "
                              f"{pct(r['test_acc_both'])})" for r in unpaired) + "." if unpaired else "")
               if full and len(seeds_run) < len(res["meta"]["seeds"]) else "")
        ),
        "",
    ]
    for task, metrics in (
        ("supervised", ("test_acc", "test_disentangling")),
        ("pairs", ("test_pointing", "test_acc_both", "test_disentangling")),
    ):
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        out += [f"| {task} | " + " | ".join(m[5:] for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
        for r in mine:
            out.append(
                f"| {r['config']} | " + " | ".join(_stat(r[m]["per_seed"]) if m in r else "" for m in metrics) + " |"
            )
        out.append("")
        df = next((r for r in mine if r["method"] == "deepfacto"), None)
        un = next((r for r in mine if r["method"] == "unrolled-nmf"), None)
        cam = next((r for r in mine if r["method"] == "cam"), None)
        if task == "pairs" and cam and "test_pointing" in cam and cam["test_pointing"]["mean"] < 0.1:
            out.append(
                f"- On this reduced pairs protocol CAM did not train (pointing {pct(cam['test_pointing']['mean'])}%) "
                f"and "
                "no method names both digits of most canvases: the pairs comparison is weak evidence either way; "
                "DeepFacto's own section above has the full-size run (DeepFacto and CAM only)."
            )
        if df and un:
            for m in metrics:
                if m in df and m in un:
                    gap = df[m]["mean"] - un[m]["mean"]
                    word = (
                        "DeepFacto ahead"
                        if gap > 0.005
                        else "the unrolled-NMF backprop layer ahead"
                        if gap < -0.005
                        else "a tie"
                    )
                    out.append(
                        f"- {task}, {m[5:]}: DeepFacto {pct(df[m]['mean'])} vs unrolled NMF {pct(un[m]['mean'])}: "
                        f"{word} ({100 * gap:+.1f} points)."
                    )
            out.append("")
    return out


def render(root: str = "results/experiments", link_root: str | None = None) -> str:
    """Markdown for the fair grid, the robustness experiment, the win search and the unrolled-NMF comparison."""
    link_root = link_root if link_root is not None else root
    out, tried = render_grid_timing(root, f"{link_root}/grid"), []
    for folder in sorted(glob.glob(os.path.join(root, "fair*")), key=lambda p: (p != os.path.join(root, "fair"), p)):
        if fair.read_all(folder):
            name = os.path.basename(folder)
            lines, t = render_fair(folder, f"{link_root}/{name}")
            out, tried = out + lines, tried + t
    for name in ("robustness", "settings"):
        paths = sorted(glob.glob(os.path.join(root, name, "map-g*.json"))) + [os.path.join(root, name, "results.json")]
        path = next((p for p in paths if os.path.exists(p)), None)
        if path is not None:
            lines, t = render_robustness(
                robustness.read_all(os.path.dirname(path)), read_results(path)["meta"], f"{link_root}/{name}"
            )
            out, tried = out + lines, tried + t
    if tried:
        out += render_win_search(tried)
    for name in ("deepfacto_unrolled", "deepfacto_unrolled_full"):
        path = os.path.join(root, name, "results.json")
        if os.path.exists(path):
            out += render_deepfacto_unrolled(read_results(path), f"{link_root}/{name}")
    return "\n".join(out).rstrip() + "\n" if out else ""
