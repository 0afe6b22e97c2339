"""tools/readme.py, the README renderer (not installed), and the results files it reads
(blockadmm.experiments.results_io: plain final numbers, compressed histories)."""

import glob
import gzip
import json
import os
import sys

import pytest

from blockadmm.experiments import run
from blockadmm.experiments.results_io import history_path, load_json, read_results, save_results, write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tools import readme  # noqa: E402 (needs ROOT on sys.path)
from tools import readme_experiments as report  # noqa: E402

TINY = ["--epochs", "1", "--train-size", "200", "--no-progress"]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _tool(readme_path, results, bench_results=None):
    """Run the tool's main on these folders (bench results: an empty folder unless given)."""
    bench_results = bench_results or os.path.join(os.path.dirname(readme_path), "no-bench")
    return readme.main(["--readme", str(readme_path), "--results", str(results), "--bench-results", str(bench_results)])


def test_results_keep_final_numbers_plain_and_histories_compressed(tmp_path):
    records = [
        {"method": "a", "test_acc": 0.5, "history": [{"epoch": 1, "test_acc": 0.5}], "config": {"rho": 1.0}},
        {"method": "b", "test_acc": 0.7, "per_epoch": [{"epoch": 1, "x": [1, 2]}], "spread": [0.1, 0.2]},
    ]
    path = write_results(str(tmp_path), "exp", records, {"command": "c"})
    history = tmp_path / "results.history.json.gz"
    assert history_path(path) == str(history)
    with open(path) as f:
        plain = json.load(f)
    assert plain["records"] == [
        {"method": "a", "test_acc": 0.5, "config": {"rho": 1.0}},
        {"method": "b", "test_acc": 0.7, "spread": [0.1, 0.2]},
    ]
    with gzip.open(history, "rt") as f:
        assert json.load(f)["records"] == [{"history": records[0]["history"]}, {"per_epoch": records[1]["per_epoch"]}]
    assert read_results(path) == {"experiment": "exp", "meta": {"command": "c"}, "records": records}
    first = history.read_bytes()
    write_results(str(tmp_path), "exp", records, {"command": "c"})
    assert history.read_bytes() == first  # same histories, same bytes: a re-run adds nothing to git
    # a re-run without histories leaves no stale history file behind
    write_results(str(tmp_path), "exp", [{"method": "a", "test_acc": 0.5}], {})
    assert not history.exists() and read_results(path)["records"] == [{"method": "a", "test_acc": 0.5}]
    # any results file: NAME.json beside NAME.history.json.gz, extra top-level keys kept
    other = str(tmp_path / "8xsigmoid.json")
    save_results(other, {"rows": [1], "records": records})
    assert read_results(other) == {"rows": [1], "records": records}
    assert os.path.exists(tmp_path / "8xsigmoid.history.json.gz")


def test_mismatched_history_is_a_clear_error(tmp_path):
    path = write_results(str(tmp_path), "exp", [{"m": 1, "history": [{"e": 1}]}, {"m": 2, "history": [{"e": 1}]}], {})
    other = write_results(str(tmp_path / "other"), "exp", [{"m": 1, "history": [{"e": 1}]}], {})
    os.replace(history_path(other), history_path(path))
    with pytest.raises(ValueError, match="holds 1 records.*re-run"):
        read_results(path)


def test_load_json_reads_the_compressed_file_when_only_it_exists(tmp_path):
    with gzip.open(tmp_path / "m.json.gz", "wt") as f:
        json.dump({"a": 1}, f)
    assert load_json(str(tmp_path / "m.json")) == {"a": 1}


def test_committed_results_render_into_every_readme_block(tmp_path):
    """The committed results/ and bench/results/ render every block the README has, and the README's blocks are
    what the tool writes (the README is regenerated, never typed)."""
    blocks = readme.render_blocks(
        os.path.join(ROOT, "README.md"), os.path.join(ROOT, "results"), os.path.join(ROOT, "bench", "results")
    )
    assert {"train-results", "deepfacto", "bench", "results"} <= set(blocks)
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    for name, (body, _) in blocks.items():
        start = text.index(f"<!-- {name}:start -->") + len(f"<!-- {name}:start -->\n")
        assert text[start : text.index(f"<!-- {name}:end -->")].rstrip() == body.rstrip(), (
            f"README block {name} is stale"
        )


def test_experiments_block_renders_and_rewrites_markers(tmp_path):
    root = tmp_path / "results"
    run(["binary", "--depths", "1", "--seeds", "0", "--out", str(root / "experiments" / "binary")] + TINY)
    md = report.render(str(root / "experiments"), "res")
    assert "Binary hidden units" in md and "admm-online" in md
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n")
    assert _tool(readme, root) == 0
    text = readme.read_text()
    assert START in text and END in text and "Binary hidden units" in text and "](results/experiments/binary" in text
    # idempotent: a second rewrite replaces the block instead of appending another
    assert _tool(readme, root) == 0
    assert readme.read_text().count(START) == 1


def test_long_depth_runs_choose_epochs_on_validation():
    """E is the epoch count with the best mean validation accuracy; the test accuracy is read there, even
    when a later epoch has a better test accuracy; the claim comes from the longest run of the net."""

    def rec(seed, val, test):
        hist = [{"val_acc": v, "test_acc": t} for v, t in zip(val, test)]
        return {"method": "admm-batch", "activation": "sigmoid", "depth": 16, "seed": seed, "history": hist}

    val = [0.1] * 19 + [0.85] + [0.5] * 20  # best at epoch 20
    test = [0.1] * 19 + [0.83] + [0.95] * 20  # test would favour 30/40
    res = {"records": [rec(0, val, test), rec(1, val, [t - 0.02 for t in test])], "meta": {"command": "cmd"}}
    short = {"records": [rec(0, val[:10], test[:10])], "meta": {"command": "short"}}  # a 10-epoch run of the same net
    md = "\n".join(report.render_depth_long([(short, "a"), (res, "b")]))
    row = next(line for line in md.splitlines() if line.startswith("| sigmoid L=16 | admm-batch") and "| 2 |" in line)
    assert row.endswith("| 20 | 82.0 (81.0) |"), row
    claims = [line for line in md.splitlines() if line.startswith("- Depth 16")]
    assert claims == [
        (
            "- Depth 16 sigmoid, Block-ADMM in batch mode (per-sample tables), E = 20 of 40 epochs chosen on "
            "validation: test mean 82.0%, worst seed 81.0% (depth-16 target ≥ 80%: **reached**)."
        )
    ], claims


def test_rho_tuning_picks_the_best_validation_and_the_preset_follows_it():
    from blockadmm.trainer import PRESETS

    def res(rho, val_last, test_last):
        hist = [{"val_acc": 0.1, "test_acc": 0.1}] * 9 + [{"val_acc": val_last, "test_acc": test_last}]
        return {
            "records": [{"activation": "sigmoid", "depth": 8, "seed": 0, "history": hist, "config": {"rho": rho}}],
            "meta": {"command": f"cmd --rho {rho}"},
        }

    runs = [res(1.0, 0.7, 0.99), res(0.25, 0.9, 0.5)]  # the test set would pick rho 1
    assert report.chosen_rho(runs) == 0.25
    md = "\n".join(report.render_rho_tuning([(r, f"out-{i}") for i, r in enumerate(runs)]))
    assert (
        "**rho = 0.25**" in md and "| 0.25 | sigmoid L=8 | 1 | 90.0 |" in md and "| 1 | sigmoid L=8 | 1 | 70.0 |" in md
    )
    assert "--rho 0.25 --out out-1`" in md  # each command with its output folder
    # the shipped preset is the committed tuning's choice
    paths = sorted(
        glob.glob(
            os.path.join(
                os.path.dirname(__file__), "..", "results", "experiments", "tune-deep-batch", "rho-*", "results.json"
            )
        )
    )
    if not paths:
        pytest.skip("no committed tuning results")
    committed = [read_results(p) for p in paths]
    assert report.chosen_rho(committed) == PRESETS["deep-batch"]["config"]["rho"]


def test_depth_report_states_fast_against_the_defaults_and_where_it_falls_behind():
    def rec(method, depth, act, seed, acc):
        return {"method": method, "depth": depth, "activation": act, "seed": seed, "test_acc": acc}

    recs = [rec("admm-fast", 2, "relu", s, a) for s, a in enumerate((0.94, 0.93, 0.95))]
    recs += [rec("admm-online", 2, "relu", s, a) for s, a in enumerate((0.92, 0.93, 0.94))]
    recs += [
        rec("admm-fast", 8, "relu", 0, 0.30),
        rec("admm-online", 8, "relu", 0, 0.93),
        rec("admm-fast", 4, "relu", 0, 0.935),
        rec("admm-online", 4, "relu", 0, 0.94),
    ]
    res = {
        "records": recs,
        "meta": {"train": 3200, "val": 800, "test": 1000, "width": 256, "batch_size": 100, "epochs": 10},
    }
    md = "\n".join(report.render_depth(res, "r"))
    assert (
        "- Depth 2 relu (the foundation issue's net), seeds [0, 1, 2]: preset `fast` (one sweep) 94.0% (worst 93.0%), "
        "the defaults (3 sweeps) 93.0% (worst 92.0%)."
    ) in md
    # 4 layers is within 2 points, 8 is not
    assert "falls more than 2 points below Block-ADMM online's recipe at: relu L=8 (30.0 vs 93.0)." in md
