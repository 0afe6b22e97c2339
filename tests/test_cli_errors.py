"""Bad command lines end in one line on stderr and a non-zero exit, never a traceback; Ctrl-C keeps the checkpoint;
`blockadmm train --log tensorboard|csv` writes the scalars under --out."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from blockadmm import data
from blockadmm.cli import main
from blockadmm.engine.checkpoint import load_checkpoint

TINY = ["--data", "digits", "--hidden", "16", "--batch-size", "200", "--quiet"]


def blockadmm(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("BLOCKADMM_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "blockadmm", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def assert_one_line_error(result, *words):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0] and all(w in lines[0] for w in words), lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-epoch run (digits, hidden 16) with its checkpoint."""
    out = tmp_path_factory.mktemp("run")
    result = blockadmm("train", *TINY, "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def bad_command_lines(tmp_path, trained_run):
    """(argv, words the error line must hold) for each kind of bad input."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint-online.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    cases = [
        (["train", "--epochs", "-3"], ["--epochs", "integer >= 1", "'-3'"]),
        (["train", "--epochs", "0"], ["--epochs"]),
        (["train", "--blocks", "0"], ["--blocks"]),
        (["train", "--rho", "-1"], ["--rho", "> 0"]),
        (["train", "--rho", "nan"], ["--rho"]),
        (["train", "--batch-size", "0"], ["--batch-size"]),
        (["train", "--lr", "0"], ["--lr"]),
        (["train", "--hidden", "16,,8"], ["--hidden", "comma-separated"]),
        (["train", "--data", "no-such-data"], ["--data", "no-such-data"]),
        (["train", "--mode", "offline"], ["--mode"]),
        (["train", "--log", "wandb"], ["--log", "tensorboard"]),
        (["train", "--out", str(a_file)], ["--out", "is a file"]),
        (["train", "--out", str(a_file / "run")], ["--out", "cannot write"]),
        (["train", *TINY, "--epochs", "1", "--out", str(corrupt), "--resume"], [str(corrupt)]),
        (["train", *TINY, "--epochs", "2", "--hidden", "8", "--out", str(trained_run), "--resume"], ["checkpoint"]),
        (["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "empty"), "--resume"], ["no checkpoint"]),
        (["train", *TINY, "--epochs", "1", "--hidden", "16,8", "--blocks", "9", "--out", str(tmp_path / "b")],
         ["blocks"]),
        (["train", "--preset", "deep-batch", *TINY, "--epochs", "1", "--out", str(tmp_path / "p")], ["--mode batch"]),
        (["deepfacto", "--seeds", "0", "1"], ["unrecognized arguments: 1"]),
        (["deepfacto", "--seeds", "0,x"], ["--seeds"]),
        (["experiment", "nonsense"], ["nonsense"]),
        (["no-such-command"], ["no-such-command"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", "--device", "cuda"], ["--device", "no CUDA device"]))
    return cases


def test_bad_command_lines_end_in_one_line(tmp_path, trained_run, capsys):
    for args, words in bad_command_lines(tmp_path, trained_run):
        try:
            status = main(args)
        except SystemExit as e:  # argparse's usage error
            status = e.code
        result = subprocess.CompletedProcess(args, status, "", capsys.readouterr().err)
        assert_one_line_error(result, *words)


def test_bad_command_lines_in_a_fresh_process(tmp_path, trained_run):
    """The same through `python -m blockadmm`, a few kinds at a time (each process pays torch's import)."""
    cases = [case for i, case in enumerate(bad_command_lines(tmp_path, trained_run)) if i % 4 == 0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("BLOCKADMM_TRACEBACK", None)
    procs = [(subprocess.Popen([sys.executable, "-m", "blockadmm", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env), words) for args, words in cases]
    for proc, words in procs:
        out, err = proc.communicate(timeout=240)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), *words)


def test_ctrl_c_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "blockadmm", "train", *TINY, "--epochs", "10000", "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ckpt = out / "checkpoint-online.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()[1] if proc.poll() is not None else "no checkpoint within 180 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("blockadmm train: interrupted"), err
    state = load_checkpoint(str(ckpt))
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]


def test_train_log_tensorboard_and_csv_write_the_named_scalars(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    result = blockadmm("train", *TINY, "--hidden", "16,12", "--epochs", "2", "--val-fraction", "0.2",
                       "--log", "tensorboard,csv", "--out", str(out))
    assert result.returncode == 0, result.stderr
    folder = out / "logs" / "admm-online"
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    per_step = {"train/loss", "train/acc", "train/head_loss", "train/step_s"} | {
        f"train/{name}/{k}" for name in ("penalty", "primal_residual", "dual_residual", "rho") for k in (0, 1)}
    per_epoch = {"epoch/loss", "epoch/val_loss", "epoch/val_acc", "epoch/train_acc", "epoch/lr/0", "epoch/wall_s",
                 "epoch/primal_residual/1", "epoch/rho/0"}
    assert per_step | per_epoch <= tags, sorted(per_step | per_epoch - tags)
    steps = acc.Scalars("train/loss")
    n_train = len(data.load("digits", val_fraction=0.2, split_seed=0).train)
    assert [e.step for e in steps] == list(range(1, 2 * -(-n_train // 200) + 1))
    assert all(0 < e.value < 5 for e in steps)
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [1, 2]
    rows = list(csv.DictReader(open(folder / "epochs.csv")))
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0] and "primal_residual/0" in rows[0]
    assert acc.Scalars("epoch/val_acc")[-1].value == pytest.approx(float(rows[-1]["val_acc"]))


def test_train_nproc_logs_the_single_process_scalars(tmp_path):
    """--nproc 2 --log tensorboard,csv: the same scalar names as one process; sync Jacobi online equals the
    single-process Jacobi run step for step; batch mode leaves out the network loss (no rank sees the forward)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    common = [*TINY, "--hidden", "16,12", "--epochs", "2", "--order", "jacobi", "--log", "tensorboard,csv"]
    dist_out, single_out = tmp_path / "dist", tmp_path / "single"
    result = blockadmm("train", *common, "--mode", "online,batch", "--nproc", "2", "--schedule", "sync",
                       "--out", str(dist_out))
    assert result.returncode == 0, result.stderr
    result = blockadmm("train", *common, "--out", str(single_out))
    assert result.returncode == 0, result.stderr
    folder = dist_out / "logs" / "admm-online-sync-2ranks"
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    per_step = {"train/loss", "train/acc", "train/head_loss", "train/step_s"} | {
        f"train/{name}/{k}" for name in ("penalty", "primal_residual", "dual_residual", "rho") for k in (0, 1)}
    per_epoch = {"epoch/loss", "epoch/acc", "epoch/head_loss", "epoch/train_acc", "epoch/test_acc", "epoch/wall_s",
                 "epoch/penalty/1", "epoch/primal_residual/1", "epoch/dual_residual/0", "epoch/rho/0"}
    assert per_step | per_epoch <= tags, sorted(per_step | per_epoch - tags)
    n_steps = 2 * -(-len(data.load("digits", val_fraction=0.0, split_seed=0).train) // 200)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, n_steps + 1))
    assert all(e.value > 0 for e in acc.Scalars("train/step_s"))

    def rows(out, run, name):
        return list(csv.DictReader(open(out / "logs" / run / name)))

    dist_steps, single_steps = rows(dist_out, "admm-online-sync-2ranks", "steps.csv"), rows(single_out, "admm-online",
                                                                                           "steps.csv")
    assert len(dist_steps) == len(single_steps) == n_steps
    compared = ["loss", "acc", "head_loss", "penalty/0", "penalty/1", "primal_residual/0", "primal_residual/1",
                "dual_residual/1", "rho/0"]
    for d, s in zip(dist_steps, single_steps):
        assert d["step"] == s["step"]
        for name in compared:
            assert float(d[name]) == pytest.approx(float(s[name]), rel=1e-4, abs=1e-6), (d["step"], name)
    assert float(acc.Scalars("train/loss")[-1].value) == pytest.approx(float(dist_steps[-1]["loss"]), rel=1e-6)
    epochs = rows(dist_out, "admm-online-sync-2ranks", "epochs.csv")
    assert [float(r["epoch"]) for r in epochs] == [1.0, 2.0]
    batch = rows(dist_out, "admm-batch-sync-2ranks", "steps.csv")
    assert len(batch) == n_steps and "loss" not in batch[0] and "acc" not in batch[0]
    assert all(float(r["head_loss"]) > 0 and float(r["primal_residual/1"]) >= 0 for r in batch)
