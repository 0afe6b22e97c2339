"""How the stability study judges a run (its collapses) and shows them all: per recipe x net x data, a table and a
figure."""

from __future__ import annotations

import math
import os
from collections import defaultdict

from .common import mean, plt

ACC_DROP = 0.10  # a collapse: accuracy more than 10 points below its running best ...
LOSS_FACTOR = 3.0  # ... or the training loss above 3x its best


def collapses(history: list[dict], acc_drop: float = ACC_DROP, loss_factor: float = LOSS_FACTOR) -> list[dict]:
    """The collapse events of one run's per-epoch history: an epoch whose test_acc or val_acc is more than
    `acc_drop` below the best before it, or whose training loss is above `loss_factor` x the best before it (or not
    finite). Each event: {"epoch", "kind" ("acc" | "loss"), "metric", "value", "best"}."""
    events, best = [], {}
    for rec in history:
        for key in ("test_acc", "val_acc"):
            v = rec.get(key)
            if v is None:
                continue
            if key in best and v < best[key] - acc_drop:
                events.append({"epoch": rec["epoch"], "kind": "acc", "metric": key, "value": v, "best": best[key]})
            best[key] = max(best.get(key, v), v)
        loss = rec.get("loss")
        if loss is None:
            continue
        if not math.isfinite(loss) or ("loss" in best and loss > loss_factor * best["loss"]):
            events.append(
                {"epoch": rec["epoch"], "kind": "loss", "metric": "loss", "value": loss, "best": best.get("loss")}
            )
        if math.isfinite(loss):
            best["loss"] = min(best.get("loss", loss), loss)
    return events


def _pct(x) -> float | None:
    return None if x is None else 100.0 * x


def summary(records: list[dict]) -> list[dict]:
    """One row per (recipe, net, data): runs, collapsed runs (any collapse; by accuracy; by loss; runs ended by an
    error), mean and worst final test accuracy, mean and worst best test accuracy (%), the seeds and epochs."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["recipe"], r["net"], r["data"])].append(r)
    rows = []
    for (recipe, net, data), rs in groups.items():
        kinds = [{e["kind"] for e in r["collapses"]} for r in rs]
        final = [_pct(r["final_test_acc"]) or 0.0 for r in rs]
        best = [_pct(r["best_test_acc"]) or 0.0 for r in rs]
        rows.append(
            {
                "recipe": recipe,
                "net": net,
                "data": data,
                "runs": len(rs),
                "collapsed": sum(bool(k) for k in kinds),
                "acc_collapsed": sum("acc" in k for k in kinds),
                "loss_collapsed": sum("loss" in k for k in kinds),
                "errors": sum("error" in k for k in kinds),
                "loss_only": sum(k == {"loss"} for k in kinds),
                # the highest training loss at an event of the runs collapsed by their loss alone: a rise to 3x a tiny
                # best (0.003 -> 0.01) counts by the definition, and this says whether that is all it was
                "loss_only_max": max(
                    (e["value"] for r, k in zip(rs, kinds) if k == {"loss"} for e in r["collapses"]), default=None
                ),
                "final_mean": mean(final),
                "final_worst": min(final),
                "best_mean": mean(best),
                "best_worst": min(best),
                "seeds": sorted(r["seed"] for r in rs),
                "epochs": sorted({r["epochs"] for r in rs}),
                "first_collapse_epochs": sorted(min(e["epoch"] for e in r["collapses"]) for r in rs if r["collapses"]),
            }
        )
    return sorted(rows, key=lambda row: (row["recipe"], row["net"], row["data"]))


def per_recipe(rows: list[dict]) -> dict[str, dict]:
    """{recipe: {"runs", "collapsed"}} over every net and data."""
    out = defaultdict(lambda: {"runs": 0, "collapsed": 0})
    for row in rows:
        out[row["recipe"]]["runs"] += row["runs"]
        out[row["recipe"]]["collapsed"] += row["collapsed"]
    return dict(out)


def text_table(rows: list[dict]) -> str:
    lines = [f"{'recipe':<14}{'net':<11}{'data':<14}{'collapsed':>10}{'final mean (worst)':>22}{'best mean':>11}"]
    for r in rows:
        lines.append(
            f"{r['recipe']:<14}{r['net']:<11}{r['data']:<14}{r['collapsed']:>6}/{r['runs']:<3}"
            f"{r['final_mean']:>14.1f} ({r['final_worst']:5.1f}){r['best_mean']:>11.1f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: str) -> str:
    """Two maps, recipes x (net, data): the share of runs that collapsed (annotated "k/n, a acc": k runs collapsed,
    a of them by their accuracy), and the mean final test accuracy (annotated with the worst seed's)."""
    pyplot = plt()
    recipes = sorted({r["recipe"] for r in rows})
    cols = sorted({(r["net"], r["data"]) for r in rows})
    cell = {(r["recipe"], r["net"], r["data"]): r for r in rows}
    maps = (
        (
            "runs that collapsed (k/n; of which by accuracy)",
            lambda r: r["collapsed"] / r["runs"],
            lambda r: f"{r['collapsed']}/{r['runs']}\n{r['acc_collapsed']} acc",
            "Reds",
            (0, 1),
        ),
        (
            "final test accuracy, % (mean; worst seed)",
            lambda r: r["final_mean"],
            lambda r: f"{r['final_mean']:.1f}\n{r['final_worst']:.1f}",
            "viridis",
            (10, 100),
        ),
    )
    fig, axes = pyplot.subplots(2, 1, figsize=(max(6, 0.8 * len(cols) + 2), 0.5 * len(recipes) * 2 + 3))
    for ax, (title, value, fmt, cmap, (lo, hi)) in zip(axes, maps):
        grid = [[value(cell[(rc, *c)]) if (rc, *c) in cell else float("nan") for c in cols] for rc in recipes]
        ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        for i, rc in enumerate(recipes):
            for j, c in enumerate(cols):
                if (rc, *c) in cell:
                    v = (value(cell[(rc, *c)]) - lo) / (hi - lo)
                    dark = v > 0.5 if cmap == "Reds" else v < 0.5
                    ax.text(
                        j,
                        i,
                        fmt(cell[(rc, *c)]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        ax.set_yticks(range(len(recipes)), recipes)
        ax.set_xticks(range(len(cols)), [f"{n}\n{d}" for n, d in cols], fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "stability.png")
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
    return path
