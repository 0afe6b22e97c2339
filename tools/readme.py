"""Regenerate README.md's result blocks from the committed results files (a repository tool, not installed).

    python tools/readme.py            all blocks: train-results, bench, deepfacto, stability, results (the experiments)
    python tools/readme.py --print    the markdown on stdout instead

Each block sits between `<!-- NAME:start -->` and `<!-- NAME:end -->`; a block whose results are absent is left
as it is; the bench and experiment blocks are appended (with their markers) when the README has none.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.report import render as render_bench_run  # noqa: E402 (needs ROOT on sys.path)
from tools import readme_experiments, readme_stability  # noqa: E402


def replace_section(text: str, name: str, body: str, *, append_heading: str | None = None) -> str:
    """`text` with `body` between `<!-- name:start -->` and `<!-- name:end -->`; with `append_heading`, markers
    missing from `text` are appended under that heading, otherwise missing markers are an error."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        if append_heading is None:
            raise ValueError(f"README has no {start} … {end} markers")
        text = text.rstrip("\n") + (f"\n\n{append_heading}" if append_heading else "") + f"\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.rstrip()}\n{end}{tail}"


def _pct(stat: dict) -> str:
    """'mean% (worst w%; per seed a/b/c)' from a {mean, min, per_seed} record."""
    seeds = "/".join(f"{100 * v:.1f}" for v in stat["per_seed"])
    return f"{100 * stat['mean']:.1f}% (worst {100 * stat['min']:.1f}; seeds {seeds})"


# ------------------------------------------------------------------------------------------ blockadmm train
def render_train_results(metrics: dict, source: str) -> str:
    """Markdown for a `blockadmm train --compare backprop` metrics.json."""
    cfg = metrics["config"]
    lines = [
        (
            f"**{cfg['data']}, MLP {'-'.join(map(str, cfg['hidden']))} {cfg['activation']}, batch {cfg['batch_size']}, "
            f"{cfg['epochs']} epochs, seed {cfg['seed']}** — `{metrics['command']}` ({source})"
        ),
    ]
    machine = metrics.get("machine")
    if machine:
        lines += [
            "",
            (
                f"Timed on {machine['device']} with {machine['torch_threads']} torch threads, {machine['cores']} "
                f"cores; "
                f"load average {machine['load_average_start']:.1f} at the start, {machine['load_average_end']:.1f} at "
                f"the end "
                f"(a load above the core count means other work shared the machine and inflated the times)."
            ),
        ]
    lines += [
        "",
        "| run | train acc | test acc | best test acc | s / epoch | × backprop time |",
        "|---|---|---|---|---|---|",
    ]
    ratios = metrics.get("wall_ratio_vs_backprop", {})
    for name, hist in metrics["runs"].items():
        final = hist[-1]
        best = max(h["test_acc"] for h in hist)
        ratio = ratios.get(name)
        lines.append(
            f"| {name} | {100 * final['train_acc']:.2f}% | {100 * final['test_acc']:.2f}% | {100 * best:.2f}% | "
            f"{metrics['epoch_wall_s'][name]:.2f} | {'—' if ratio is None else f'{ratio:.2f}×'} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ DeepFacto
def render_deepfacto(results: str, link: str) -> str:
    """Markdown for the DeepFacto runs under `results`/deepfacto/<data>/metrics.json (`link`: that folder as the
    README links it)."""
    lines = []
    sup = os.path.join(results, "deepfacto", "mnist5k", "metrics.json")
    if os.path.exists(sup):
        with open(sup) as f:
            m = json.load(f)
        folder = f"{link}/deepfacto/mnist5k"
        lines += [
            (
                f"**Supervised disentangling, MNIST-5k** ({m['epochs']} epochs, seeds {m['seeds']}; "
                f"`blockadmm deepfacto --data mnist5k --epochs {m['epochs']} --seeds {','.join(map(str, m['seeds']))} "
                f"--head both --out {folder}`; {folder}/metrics.json)"
            ),
            "",
            "| model | test acc | disentangling |",
            "|---|---|---|",
            (
                f"| DeepFacto, group-energy head | {_pct(m['deepfacto_energy']['test_acc'])} | "
                f"{_pct(m['deepfacto_energy']['test_disentangling'])} |"
            ),
            (
                f"| DeepFacto, linear head on pooled codes | {_pct(m['deepfacto_linear']['test_acc'])} | "
                f"{_pct(m['deepfacto_linear']['test_disentangling'])} |"
            ),
            f"| backprop: same features + linear head | {_pct(m['backprop_linear']['test_acc'])} | — |",
            f"| backprop: features + GAP + linear (CAM net) | {_pct(m['backprop_gap_cam']['test_acc'])} | — |",
            "",
            "Epoch time of DeepFacto / backprop of the same feature network: "
            + ", ".join(f"{k} head {v:.2f}×" for k, v in m["epoch_time_ratio"].items())
            + ".",
            "",
            f"![basis]({folder}/basis.png) ![class × group energy]({folder}/class_group_energy.png)",
            "",
        ]
    for sub in ("pairs", "pairs-digits"):
        pairs = os.path.join(results, "deepfacto", sub, "metrics.json")
        if not os.path.exists(pairs):
            continue
        with open(pairs) as f:
            m = json.load(f)
        folder, args = f"{link}/deepfacto/{sub}", m["args"]
        curriculum = args.get("curriculum", "digits")  # runs before the option existed used single digits
        first = (
            f"{args.get('curriculum_epochs') or 0} epochs on single MNIST-5k digits with their labels first"
            if curriculum == "digits"
            else f"from scratch on the canvases alone: {args.get('curriculum_epochs') or 0} epochs on ink proposals "
            f"first "
            f"(each training canvas's densest 28×28 crop, then the densest with that one blanked, each with the "
            f"canvas's two labels)"
        )
        lines += [
            (
                f"**Weak supervision, MNIST-5k pairs** (64×64 canvases with two digits of different classes, "
                f"image-level "
                f"labels only; {first}, then {m['epochs']} epochs on the canvases; CAM gets the same curriculum; "
                f"seeds {m['seeds']}; `blockadmm deepfacto --data pairs --curriculum {curriculum} "
                f"--curriculum-epochs {args.get('curriculum_epochs')} --epochs {m['epochs']} "
                f"--seeds {','.join(map(str, m['seeds']))} --cam-epochs {args.get('cam_epochs')} --out {folder}`; "
                f"{folder}/metrics.json)"
            ),
            "",
            "| method | pointing game | both labels right |",
            "|---|---|---|",
            f"| DeepFacto (class group code maps) | {_pct(m['test_pointing'])} | {_pct(m['test_acc_both'])} |",
            f"| CAM of a multi-label CNN (backprop) | {_pct(m['test_cam_pointing'])} | {_pct(m['test_cam_acc_both'])} "
            f"|",
            f"| most ink | {_pct(m['test_most_ink_pointing'])} | — |",
            "",
            f"![code maps]({folder}/pairs_maps.png)",
            "",
        ]
    return "\n".join(lines).rstrip() if lines else "(no DeepFacto results yet)"


# ------------------------------------------------------------------------------------------ bench
DIST_ROWS = {
    "single-1t": "BlockADMM, one process, 1 thread (the baseline)",
    "single-2t": "BlockADMM, one process, 2 threads",
    "dist-1r": "DistributedBlockADMM, 1 rank",
    "sync-2r": "2 ranks, sync (Jacobi)",
    "pipe-2r": "2 ranks, pipelined (staleness 1)",
    "pipe-2r-s2": "2 ranks, pipelined (staleness 2)",
}


def render_bench(bench_results: str, link: str) -> str:
    """The bench block: the latest timed CPU run and, where measured, GPU runs, then the distributed trainer's."""
    runs = []
    for path in sorted(glob.glob(os.path.join(bench_results, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        if "machine" in r and "targets" in r:
            runs.append(r)
    cpu = [r for r in runs if not r["machine"].get("gpu") and r.get("timing", True)]
    gpu = [r for r in runs if r["machine"].get("gpu") and r.get("timing", True)]
    lines = [
        "### Benchmarks",
        "",
        (
            "Generated by `python tools/readme.py` from `bench/results/*.json` (not typed). "
            "Reproduce with the command given for each machine, from the repository root (`bench/` is not "
            "installed with the package). Each results file also records library versions and the raw records."
        ),
    ]
    for title, group in (("CPU", cpu), ("GPU", gpu)):
        lines.append("")
        if not group:
            if title == "CPU":
                lines.append("No timed CPU results yet: run `python -m bench`, then `python tools/readme.py`.")
            else:
                lines += [
                    "#### GPU",
                    "",
                    (
                        "No GPU was lent to the benchmark issue's session, so there is no GPU table "
                        "yet; `python -m bench` on a CUDA machine adds the Triton and CUDA rows and a table here."
                    ),
                ]
            continue
        # the table: the newest run at the default threads (one per core); other thread counts are linked
        latest = max(group, key=lambda r: ("--threads" not in r.get("command", ""), r.get("started", "")))
        lines += [
            f"#### {title}: {latest['machine']['cpu'] if title == 'CPU' else latest['machine']['gpu']}",
            "",
            render_bench_run(latest, heading=False, plots_prefix=f"{link}/"),
        ]
        others = sorted((r for r in group if r is not latest), key=lambda r: r.get("started", ""), reverse=True)
        if others:
            lines += [
                "",
                "Other runs: "
                + "; ".join(
                    f"[{r['machine']['name']}]({link}/{r['machine']['name']}.md) (`{r['command']}`, "
                    f"{r.get('started')}, "
                    f"{r['machine'].get('torch_threads')} threads, load {r.get('load_avg', {}).get('start')})"
                    for r in others
                )
                + ".",
            ]
    dist = render_distributed(bench_results, link)
    return "\n".join(lines + (["", dist] if dist else []))


def render_distributed(bench_results: str, link: str) -> str:
    """The distributed trainer's speed and accuracy (bench/bench_distributed.py), from its results files."""
    lines = []
    for path in sorted(glob.glob(os.path.join(bench_results, "distributed-speed-*.json"))):
        with open(path) as f:
            r = json.load(f)
        lines += [
            f"#### Distributed trainer, speed ({r['host']}, {r['cpus']} cores, torch {r['torch']})",
            "",
            (
                f"`python bench/bench_distributed.py` → `{link}/{os.path.basename(path)}`: {r['what']}; every rank "
                f"one torch thread (a rank stands for a device); load average {r['load_avg_before_after'][0]} at the "
                f"start, {r['load_avg_before_after'][1]} at the end; {r['bench_s']:.0f} s."
            ),
            "",
            (
                "| run | s / epoch (median) | best | speedup over 1 process, 1 thread (median / best) | "
                "CPU s per rank and epoch | waiting s per rank | test acc |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for name, label in DIST_ROWS.items():
            row = r["rows"].get(name)
            if row is None:
                continue
            cpu = [c for c in row.get("rank_cpu_s", []) if c and None not in c]
            waits = [w for w in row.get("rank_wait_s", []) if w and None not in w]
            part = f" {row['partition']}" if "partition" in row else ""
            lines.append(
                f"| {label}{part} | {row['epoch_s']:.2f} | {row['epoch_s_best']:.2f} | "
                f"{row['speedup_median_vs_single_1t']:.2f}× / {row['speedup_best_vs_single_1t']:.2f}× | "
                f"{_per_rank(cpu)} | {_per_rank(waits)} | {100 * row['test_acc']:.1f}% |"
            )
        lines.append("")
    for path in sorted(glob.glob(os.path.join(bench_results, "distributed-accuracy-*.json"))):
        with open(path) as f:
            r = json.load(f)
        lines += [
            "#### Distributed trainer, accuracy",
            "",
            f"`python bench/bench_distributed.py accuracy` → `{link}/{os.path.basename(path)}`: {r['what']}.",
            "",
            "| run | test acc (last epoch) | mean of the last 3 epochs | s / epoch |",
            "|---|---|---|---|",
        ]
        for name, row in r["rows"].items():
            lines.append(
                f"| {name} | {100 * row['test_acc']:.1f}% | {100 * row['test_acc_mean_last3']:.1f}% | "
                f"{row['epoch_s']:.2f} |"
            )
        lines.append("")
    tta = readme_stability.render_time_to_accuracy(bench_results, link)
    return "\n".join(lines + ([tta] if tta else [])).rstrip()


def _per_rank(rows) -> str:
    """Mean over epochs of each rank's value, 'a / b / ...'."""
    return " / ".join(f"{sum(v) / len(v):.2f}" for v in zip(*rows)) if rows else "—"


# ------------------------------------------------------------------------------------------ the README
def render_blocks(readme: str, results: str, bench_results: str) -> dict[str, tuple[str, str | None]]:
    """{block name: (markdown, heading to append it under when the README lacks its markers, or None)} for every
    block whose results exist; links are relative to the README's folder."""
    base = os.path.dirname(os.path.abspath(readme))

    def link(path):
        return os.path.relpath(path, base)

    blocks: dict[str, tuple[str, str | None]] = {}
    train = os.path.join(results, "train-mnist5k", "metrics.json")
    if os.path.exists(train):
        with open(train) as f:
            body = render_train_results(json.load(f), link(train))
        blocks["train-results"] = (body + f"\n\n![curves]({link(os.path.dirname(train))}/curves.png)", None)
    if os.path.isdir(os.path.join(results, "deepfacto")):
        blocks["deepfacto"] = (render_deepfacto(results, link(results)), None)
    if os.path.isdir(bench_results):
        blocks["bench"] = (render_bench(bench_results, link(bench_results)), "")
    experiments = os.path.join(results, "experiments")
    stability = readme_stability.render(os.path.join(experiments, "stability"), link(experiments) + "/stability")
    if stability:
        blocks["stability"] = (stability, None)
    if os.path.isdir(experiments):
        blocks["results"] = (readme_experiments.render(experiments, link(experiments)), "## Experiments")
    return blocks


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or print) every block whose results exist; returns the exit status."""
    p = argparse.ArgumentParser(prog="python tools/readme.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    p.add_argument("--results", default=os.path.join(ROOT, "results"), help="folder of the results files")
    p.add_argument("--bench-results", default=os.path.join(ROOT, "bench", "results"), help="folder of the bench runs")
    p.add_argument("--print", action="store_true", help="print the blocks instead of rewriting the README")
    a = p.parse_args(argv)
    if not os.path.exists(a.readme):
        p.error(f"--readme: no file at {a.readme}")
    blocks = render_blocks(a.readme, a.results, a.bench_results)
    if a.print:
        for name, (body, _) in blocks.items():
            print(f"<!-- {name} -->\n{body}\n")
        return 0
    with open(a.readme) as f:
        text = f.read()
    done = []
    for name, (body, heading) in blocks.items():
        if heading is None and f"<!-- {name}:start -->" not in text:
            print(f"{a.readme}: no <!-- {name}:start --> marker, block {name} left out")
            continue
        text = replace_section(text, name, body, append_heading=heading)
        done.append(name)
    with open(a.readme, "w") as f:
        f.write(text)
    print(f"{a.readme}: regenerated {', '.join(done) or 'nothing (no results found)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
