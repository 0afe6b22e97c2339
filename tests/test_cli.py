"""The command line: train (with the backprop comparison), resume, info."""
import json
import os
import re
import subprocess
import sys

import pytest

from blockadmm.cli import main


def test_train_compare_writes_metrics_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--hidden", "32,24", "--epochs", "3", "--batch-size", "50",
            "--mode", "online,batch", "--compare", "backprop", "--out", str(out), "--quiet"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"admm-online", "admm-batch", "backprop"}
    for name, hist in metrics["runs"].items():
        assert len(hist) == 3
        assert {"loss", "train_acc", "test_acc", "primal_residual", "wall_s"} <= set(hist[-1])
        assert hist[-1]["test_acc"] > 0.5, (name, hist[-1])
    assert set(metrics["wall_ratio_vs_backprop"]) == {"admm-online", "admm-batch"}
    assert (out / "curves.png").stat().st_size > 10_000
    assert "admm-online" in capsys.readouterr().out

    # resume: two more epochs continue the checkpointed runs
    assert main(args[:6] + ["4"] + args[7:] + ["--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["runs"]["admm-batch"]] == [1, 2, 3, 4]


def test_bad_mode_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--mode", "offline"])
    assert "--mode takes online, batch" in capsys.readouterr().err


def test_train_preset_fills_the_flags_not_given(tmp_path, capsys):
    from blockadmm.trainer import PRESETS

    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--hidden", "16", "--activation", "sigmoid", "--epochs", "1", "--quiet",
            "--out", str(out)]
    assert main(args + ["--preset", "deep-batch", "--mode", "batch", "--sweeps", "2"]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    deep = PRESETS["deep-batch"]
    assert config["aux_step"] == "sign" and config["rho"] == deep["config"]["rho"] and config["lr"] == deep["weight_lr"]
    assert config["sweeps"] == 2  # an explicit flag wins
    assert main(args + ["--preset", "deep-batch"]) == 1
    assert "--mode batch" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0  # no preset: the ADMMConfig defaults and Adam 1e-3
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["aux_step"], config["rho"], config["sweeps"], config["lr"]) == ("grad", 1.0, 3, 1e-3)


def test_info_lists_backends():
    out = subprocess.run([sys.executable, "-m", "blockadmm", "info"], capture_output=True, text=True, check=True).stdout
    # the torch backend runs everywhere: its line says "available", not "unavailable: <why>"
    assert re.search(r"^\s+torch\s+on \S+\s+available$", out, re.MULTILINE), out
    assert re.search(r"^auto order: .*cpu: cpu > torch$", out, re.MULTILINE), out


def test_train_nproc_runs_the_blocks_on_local_processes(tmp_path, capsys):
    out = tmp_path / "dist"
    assert main(["train", "--data", "digits", "--hidden", "32,24", "--epochs", "3", "--nproc", "2",
                 "--schedule", "sync", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["schedule"] == "sync"
    assert metrics["config"]["order"] == "jacobi", "sync is the Jacobi order"
    (name,) = metrics["runs"]
    assert metrics["runs"][name][-1]["test_acc"] > 0.5
    assert name in capsys.readouterr().out


def test_readme_tool_regenerates_the_train_block(tmp_path):
    """README rendering is the repository tool tools/readme.py (no `blockadmm report` command)."""
    out = tmp_path / "results" / "train-mnist5k"
    assert main(["train", "--data", "digits", "--hidden", "16", "--epochs", "1", "--compare", "backprop",
                 "--out", str(out), "--quiet"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- train-results:start -->\nstale\n<!-- train-results:end -->\ntail\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(root, "tools", "readme.py"), "--readme", str(readme),
                        "--results", str(tmp_path / "results"), "--bench-results", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    text = readme.read_text()
    assert "stale" not in text and text.endswith("tail\n")
    assert "| admm-online |" in text and "| backprop |" in text and "load average" in text
    assert "](results/train-mnist5k/curves.png)" in text  # links relative to the README
    with pytest.raises(SystemExit):
        main(["report"])
