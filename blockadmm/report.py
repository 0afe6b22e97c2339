"""What people look at: the results table on the terminal and training curves as PNG."""
from __future__ import annotations

from typing import Dict, List


def plot_curves(runs: Dict[str, List[dict]], path: str, title: str = "") -> None:
    """Test (or val) accuracy and training loss per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, hist) in enumerate(runs.items()):
        color = f"C{i}"  # one colour per run, one line style per split
        epochs = [r["epoch"] for r in hist]
        for key, style in (("test_acc", "-"), ("val_acc", "--"), ("train_acc", ":")):
            if key in hist[0]:
                ax_acc.plot(epochs, [100 * r[key] for r in hist], style, color=color, label=f"{name} {key.split('_')[0]}")
        ax_loss.plot(epochs, [r["loss"] for r in hist], color=color, label=name)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (solid: test, dotted: train)")
    # for Block-ADMM this is the last block's loss on its auxiliary input, as seen during training
    ax_loss.set(xlabel="epoch", ylabel="last block's task loss (training steps)", yscale="log", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(metrics: dict) -> None:
    rows = []
    for name, final in metrics["final"].items():
        wall = metrics["epoch_wall_s"][name]
        ratio = metrics.get("wall_ratio_vs_backprop", {}).get(name)
        rows.append((name, final.get("train_acc"), final.get("val_acc"), final.get("test_acc"), wall, ratio))
    print(f"{'run':<28} {'train acc':>9} {'val acc':>8} {'test acc':>9} {'s/epoch':>8} {'× backprop':>10}")
    fmt = lambda v: "—" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    for name, tr, va, te, wall, ratio in rows:
        print(f"{name:<28} {fmt(tr):>9} {fmt(va):>8} {fmt(te):>9} {wall:>8.2f} {'—' if ratio is None else f'{ratio:.2f}':>10}")


def render_train_results(metrics: dict, source: str) -> str:
    """Markdown for a `blockadmm train --compare backprop` metrics.json."""
    cfg = metrics["config"]
    lines = [
        f"**{cfg['data']}, MLP {'-'.join(map(str, cfg['hidden']))} {cfg['activation']}, batch {cfg['batch_size']}, "
        f"{cfg['epochs']} epochs, seed {cfg['seed']}** — `{metrics['command']}` ({source})",
    ]
    machine = metrics.get("machine")
    if machine:
        lines += [
            "",
            f"Timed on {machine['device']} with {machine['torch_threads']} torch threads, {machine['cores']} cores; "
            f"load average {machine['load_average_start']:.1f} at the start, {machine['load_average_end']:.1f} at the end "
            f"(a load above the core count means other work shared the machine and inflated the times).",
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


def replace_section(text: str, name: str, body: str) -> str:
    """Put `body` between `<!-- name:start -->` and `<!-- name:end -->` in `text`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"README has no {start} … {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(readme: str = "README.md", results: str = "results") -> List[str]:
    """Regenerate the README's result blocks from the committed results files; returns what it rewrote."""
    import json
    import os

    from .experiments import report as experiments_report

    with open(readme) as f:
        text = f.read()
    done = []
    train = os.path.join(results, "train-mnist5k", "metrics.json")
    if os.path.exists(train):
        with open(train) as f:
            body = render_train_results(json.load(f), train)
        text = replace_section(text, "train-results", body + f"\n\n![curves]({os.path.dirname(train)}/curves.png)")
        done.append(train)
    if "<!-- deepfacto:start -->" in text:
        text = replace_section(text, "deepfacto", render_deepfacto(results))
        done.append(os.path.join(results, "deepfacto"))
    experiments = os.path.join(results, "experiments")
    if os.path.isdir(experiments):
        text = experiments_report.rewrite(text, experiments_report.render(experiments))
        done.append(experiments)
    with open(readme, "w") as f:
        f.write(text)
    return done


def _pct(stat: dict) -> str:
    """'mean% (worst w%; per seed a/b/c)' from a {mean, min, per_seed} record."""
    seeds = "/".join(f"{100 * v:.1f}" for v in stat["per_seed"])
    return f"{100 * stat['mean']:.1f}% (worst {100 * stat['min']:.1f}; seeds {seeds})"


def render_deepfacto(results: str) -> str:
    """Markdown for the DeepFacto runs under results/deepfacto/<data>/metrics.json."""
    import json
    import os

    lines = []
    sup = os.path.join(results, "deepfacto", "mnist5k", "metrics.json")
    if os.path.exists(sup):
        with open(sup) as f:
            m = json.load(f)
        folder = os.path.dirname(sup)
        lines += [
            f"**Supervised disentangling, MNIST-5k** ({m['epochs']} epochs, seeds {m['seeds']}; "
            f"`python -m blockadmm.deepfacto --data mnist5k --epochs {m['epochs']} --seeds {' '.join(map(str, m['seeds']))} "
            f"--head both --out {folder}`; {sup})",
            "",
            "| model | test acc | disentangling |",
            "|---|---|---|",
            f"| DeepFacto, group-energy head | {_pct(m['deepfacto_energy']['test_acc'])} | {_pct(m['deepfacto_energy']['test_disentangling'])} |",
            f"| DeepFacto, linear head on pooled codes | {_pct(m['deepfacto_linear']['test_acc'])} | {_pct(m['deepfacto_linear']['test_disentangling'])} |",
            f"| backprop: same features + linear head | {_pct(m['backprop_linear']['test_acc'])} | — |",
            f"| backprop: features + GAP + linear (CAM net) | {_pct(m['backprop_gap_cam']['test_acc'])} | — |",
            "",
            "Epoch time of DeepFacto / backprop of the same feature network: "
            + ", ".join(f"{k} head {v:.2f}×" for k, v in m["epoch_time_ratio"].items()) + ".",
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
        folder, args = os.path.dirname(pairs), m["args"]
        curriculum = args.get("curriculum", "digits")  # runs before the option existed used single digits
        first = (f"{args.get('curriculum_epochs') or 0} epochs on single MNIST-5k digits with their labels first"
                 if curriculum == "digits" else
                 f"from scratch on the canvases alone: {args.get('curriculum_epochs') or 0} epochs on ink proposals first "
                 f"(each training canvas's densest 28×28 crop, then the densest with that one blanked, each with the "
                 f"canvas's two labels)")
        lines += [
            f"**Weak supervision, MNIST-5k pairs** (64×64 canvases with two digits of different classes, image-level "
            f"labels only; {first}, then {m['epochs']} epochs on the canvases; CAM gets the same curriculum; seeds {m['seeds']}; "
            f"`python -m blockadmm.deepfacto --data pairs --curriculum {curriculum} --curriculum-epochs {args.get('curriculum_epochs')} "
            f"--epochs {m['epochs']} --seeds {' '.join(map(str, m['seeds']))} --cam-epochs {args.get('cam_epochs')} --out {folder}`; {pairs})",
            "",
            "| method | pointing game | both labels right |",
            "|---|---|---|",
            f"| DeepFacto (class group code maps) | {_pct(m['test_pointing'])} | {_pct(m['test_acc_both'])} |",
            f"| CAM of a multi-label CNN (backprop) | {_pct(m['test_cam_pointing'])} | {_pct(m['test_cam_acc_both'])} |",
            f"| most ink | {_pct(m['test_most_ink_pointing'])} | — |",
            "",
            f"![code maps]({folder}/pairs_maps.png)",
            "",
        ]
    return "\n".join(lines).rstrip() if lines else "(no DeepFacto results yet)"
