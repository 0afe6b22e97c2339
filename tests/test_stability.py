"""The stability study (`blockadmm experiment stability`): its collapse counter, its recipes, the data variants it
trains on, a --quick run and the README block rendered from it; the bench's time-to-accuracy row."""

import json
import math
import os
import sys

import pytest
import torch

from blockadmm import data
from blockadmm.experiments import run
from blockadmm.experiments.results_io import read_results
from blockadmm.experiments.stability_recipes import fit_kwargs, parse_recipe, trainer_kwargs
from blockadmm.experiments.stability_report import collapses, per_recipe, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.bench_distributed import tta_row  # noqa: E402 (needs ROOT on sys.path)
from tools import readme_stability  # noqa: E402


def curve(accs, losses=None):
    losses = losses or [1.0 / (e + 1) for e in range(len(accs))]
    return [{"epoch": e + 1, "test_acc": a, "val_acc": a, "loss": v} for e, (a, v) in enumerate(zip(accs, losses))]


def test_a_smooth_curve_has_no_collapse():
    accs = [0.5 + 0.45 * (1 - math.exp(-e / 5)) for e in range(30)]
    assert collapses(curve(accs)) == []
    # wobbles below 10 points under the running best are not collapses either
    assert collapses(curve([0.9, 0.95, 0.851, 0.94])) == []


def test_a_late_accuracy_collapse_counts():
    accs = [0.5 + 0.45 * (1 - math.exp(-e / 5)) for e in range(30)]
    accs[28] = 0.60  # epoch 29 of 30, then back up: a late collapse counts however good the last epoch is
    events = collapses(curve(accs))
    assert {(e["epoch"], e["kind"], e["metric"]) for e in events} == {(29, "acc", "test_acc"), (29, "acc", "val_acc")}
    assert events[0]["best"] == pytest.approx(max(accs[:28]))
    # a drop in validation accuracy alone counts too
    hist = curve([0.9, 0.95, 0.96])
    hist[2]["val_acc"] = 0.80
    assert [(e["epoch"], e["metric"]) for e in collapses(hist)] == [(3, "val_acc")]


def test_a_loss_spike_above_three_times_its_best_counts():
    losses = [1.0, 0.5, 0.2, 0.1, 0.35, 0.12]  # 0.35 > 3 x 0.1; the accuracy never drops 10 points
    events = collapses(curve([0.8, 0.85, 0.9, 0.92, 0.9, 0.92], losses))
    assert [(e["epoch"], e["kind"], e["best"]) for e in events] == [(5, "loss", 0.1)]
    assert collapses(curve([0.8, 0.85, 0.9], [1.0, 0.2, 0.59])) == []  # below 3 x best: no collapse
    nan = collapses(curve([0.8, 0.85, 0.1], [1.0, 0.5, float("nan")]))
    assert {e["kind"] for e in nan} == {"acc", "loss"}


def test_summary_counts_collapsed_runs_per_recipe():
    def rec(recipe, seed, accs, losses=None):
        hist = curve(accs, losses)
        return {
            "recipe": recipe,
            "net": "2x256",
            "data": "mnist5k",
            "seed": seed,
            "epochs": len(hist),
            "final_test_acc": accs[-1],
            "best_test_acc": max(accs),
            "collapses": collapses(hist),
        }

    tiny_rise = rec("default", 1, [0.9, 0.92, 0.92], [0.5, 0.003, 0.01])  # by the loss alone, at a tiny loss
    rows = summary(
        [rec("fast", 0, [0.9, 0.95, 0.1]), rec("fast", 1, [0.9, 0.95, 0.96]), rec("default", 0, [0.9]), tiny_rise]
    )
    fast = next(r for r in rows if r["recipe"] == "fast")
    assert (fast["runs"], fast["collapsed"], fast["acc_collapsed"], fast["loss_collapsed"]) == (2, 1, 1, 0)
    assert fast["final_worst"] == pytest.approx(10.0) and fast["best_mean"] == pytest.approx(95.5)
    assert fast["first_collapse_epochs"] == [3]
    assert fast["loss_only"] == 0 and fast["loss_only_max"] is None
    default = next(r for r in rows if r["recipe"] == "default")
    assert (default["collapsed"], default["acc_collapsed"], default["loss_only"]) == (1, 0, 1)
    assert default["loss_only_max"] == 0.01
    assert per_recipe(rows) == {"default": {"runs": 2, "collapsed": 1}, "fast": {"runs": 2, "collapsed": 1}}


def test_recipes_from_the_command_line():
    name, recipe = parse_recipe("fast-eps:preset=fast,lr=2.5e-3,adam_eps=1e-4,sweeps=2")
    assert name == "fast-eps" and recipe == {"preset": "fast", "lr": 2.5e-3, "adam_eps": 1e-4, "sweeps": 2}
    kw = trainer_kwargs(recipe)
    assert kw["preset"] == "fast" and kw["sweeps"] == 2 and kw["shared_optimizer"] is True
    opt = kw["optimizer"]([torch.nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["lr"] == 2.5e-3 and opt.param_groups[0]["eps"] == 1e-4
    assert fit_kwargs(recipe) == {}
    assert parse_recipe("d:") == ("d", {"preset": "default"})
    for bad, words in (
        ("x:lr", "not key=value"),
        ("x:preset=nope", "unknown preset"),
        ("x:warp=9", "unknown key"),
        ("backprop:lr=1", "plain NAME"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_recipe(bad)


def test_transpose_invert_and_the_load_transform():
    x = torch.rand(3, 1, 4, 5)
    y = data.transpose_invert(x)
    assert y.shape == (3, 1, 5, 4) and torch.equal(y[1, 0, 2, 3], 1 - x[1, 0, 3, 2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        data.transpose_invert(torch.rand(3, 16))
    plain = data.load("digits", val_fraction=0.2, image=True)
    inverted = data.load("digits", val_fraction=0.2, image=True, transform=data.transpose_invert)
    for a, b in ((plain.train, inverted.train), (plain.val, inverted.val), (plain.test, inverted.test)):
        assert torch.equal(b.X, 1 - a.X.transpose(-1, -2)) and torch.equal(a.Y, b.Y)  # same samples, same splits
    # standardized after the transform: the statistics are those of the transformed training split
    both = data.load("digits", transform=data.transpose_invert, normalize=True)
    assert abs(float(both.train.X.mean())) < 1e-5
    with pytest.raises(ValueError, match="must keep it"):
        data.load("digits", transform=lambda x: x[:, :, :4])


def test_quick_run_resumes_and_renders(tmp_path, capsys):
    out = str(tmp_path / "before")
    assert run(["stability", "--quick", "--out", out, "--no-progress"]) == 0
    res = read_results(os.path.join(out, "results.json"))
    assert {r["recipe"] for r in res["records"]} == {"default", "fast", "backprop"}
    assert len(res["records"]) == 6 and all(r["epochs"] == 2 for r in res["records"])
    assert res["meta"]["commit"] and res["meta"]["cpu"]
    assert os.path.exists(os.path.join(out, "stability.png"))
    bp = [r for r in res["records"] if r["recipe"] == "backprop"]
    assert len({r["chosen_lr"] for r in bp}) == 1 and set(bp[0]["val_scores"]) == {"0.0003", "0.001"}
    unit = read_results(os.path.join(out, "units", "fast", "2x256", "digits", "seed1.json"))
    assert len(unit["records"][0]["history"]) == 2 and unit["meta"]["epochs"] == 2
    # a second run finds every unit done and writes the same results
    assert run(["stability", "--quick", "--out", out, "--no-progress"]) == 0
    with open(os.path.join(out, "timing.json")) as f:
        timing = json.load(f)["invocations"]
    assert [t["units_run"] for t in timing] == [6, 0] and timing[1]["units_done_before"] == 6
    assert read_results(os.path.join(out, "results.json"))["records"] == res["records"]
    md = readme_stability.render(str(tmp_path), "results/experiments/stability")
    assert "| fast | 2x256 | digits | 2 × 2 |" in md and "--quick --out" in md
    with pytest.raises(SystemExit, match="unknown net"):
        run(["stability", "--nets", "4x4", "--out", out])


def test_time_to_accuracy_row():
    hist = [{"wall_s": w, "test_acc": a} for w, a in zip([1.0, 2.0, 1.5, 1.0], [0.90, 0.93, 0.91, 0.95])]
    row = tta_row(hist, target=0.92, at=3)
    assert (row["time_to_target_s"], row["epochs_to_target"], row["test_acc_at_3"]) == (3.0, 2, 0.91)
    assert row["min_test_acc_after_target"] == 0.91 and row["final_test_acc"] == 0.95 and row["epoch_s"] == 1.25
    assert tta_row(hist, target=0.99)["time_to_target_s"] is None


def test_collected_records_keep_their_collapse_events(tmp_path):
    """A unit's collapse events (a list of dicts) go to its compressed history file; the summary must read them."""
    from blockadmm.experiments import stability

    hist = curve([0.9, 0.95, 0.1])
    rec = stability.record("fast", {"preset": "fast"}, "2x256", "digits", 0, hist)
    stability._save(stability.unit_path(str(tmp_path), "fast", "2x256", "digits", 0), rec, {"epochs": 3})
    (got,) = stability.collect(str(tmp_path))
    assert got["collapses"] == collapses(hist) != [] and "history" not in got
    assert summary([got])[0]["collapsed"] == 1
