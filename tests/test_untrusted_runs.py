"""Run folders and checkpoints as untrusted input (issue 28): no write through a symbolic link, no table file read
through one, loads whose memory is bounded by the file's size, one run at a time in a folder, checkpoint values
validated before anything changes."""

import gzip
import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from blockadmm import cli
from blockadmm.data import IndexedDataset
from blockadmm.engine import checkpoint as ckpt_mod
from blockadmm.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM

N, D = 60, 10
TRAIN = [
    "train",
    "--data",
    "digits",
    "--hidden",
    "16",
    "--quiet",
    "--mode",
    "batch",
    "--table-storage",
    "memmap",
    "--batch-size",
    "300",
]


def _dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return IndexedDataset(x, (x[:, 0] > 0).long())


def _trainer(**kw):
    torch.manual_seed(0)
    model, cuts = mlp_blocks(D, [12, 8], 2)
    return BlockADMM(model, blocks=cuts, input_shape=(D,), mode="batch", num_samples=N, **kw)


def _rewrite(path, header=None, payload=None):
    """Rewrite the checkpoint `path` with a changed header or payload, its checksums made right (a crafted file)."""
    old, offset = ckpt_mod._read_header(path)
    header = header or old
    payload = Path(path).read_bytes()[offset:] if payload is None else payload
    header["payload"] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    body = json.dumps(header, sort_keys=True).encode()
    Path(path).write_bytes(
        ckpt_mod.MAGIC + len(body).to_bytes(8, "little") + body + hashlib.sha256(body).digest() + payload
    )


def _peak_rss_increase_mb(code: str) -> tuple[float, str]:
    """Run `code` (which defines run()) in a fresh interpreter; the rise of its peak RSS during run(), in MB. The
    peak is the process's VmHWM (new at exec; getrusage's ru_maxrss would start from the parent's peak)."""
    script = textwrap.dedent(code) + textwrap.dedent("""
        def peak_kb():
            with open("/proc/self/status") as f:
                return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
        before = peak_kb()
        try:
            run()
        except Exception as e:
            print("ERROR", type(e).__name__, str(e)[:300])
        print("RISE_KB", peak_kb() - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    return int(out.split("RISE_KB")[-1]) / 1024, out


# ---------------------------------------------------------------- 1. no write through a link in a run folder
def test_a_linked_table_file_in_a_resumed_run_leaves_its_target_untouched(tmp_path, capsys):
    out, victim = tmp_path / "run", tmp_path / "user-file.txt"
    victim.write_bytes(b"the user's own data\n" * 10)
    assert cli.main(TRAIN + ["--epochs", "1", "--out", str(out)]) == 0
    table = out / "tables-batch" / "z0.npy"
    table.unlink()
    table.symlink_to(victim)
    cli.main(TRAIN + ["--epochs", "2", "--out", str(out), "--resume"])
    assert victim.read_bytes() == b"the user's own data\n" * 10
    assert not table.is_symlink()  # the link itself was replaced by a table file of the run


def test_a_linked_table_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tables.json").write_text("{}")
    (tmp_path / "tables").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="symbolic link"):
        _trainer(table_storage="memmap", table_dir=str(tmp_path / "tables"))
    assert os.listdir(elsewhere) == ["tables.json"]


# ---------------------------------------------------------------- 2. the manifest check resolves links
@pytest.fixture()
def with_tables(tmp_path):
    source = tmp_path / "src.npy"
    np.save(source, np.arange(6, dtype=np.float32))
    path = str(tmp_path / "ck" / "c.pt")
    save_checkpoint(path, {"x": torch.ones(1)}, tables={"z0.npy": str(source)})
    folder = next(p for p in (tmp_path / "ck").iterdir() if p.is_dir())
    return path, folder


def test_a_table_file_linked_out_of_the_folder_is_refused(with_tables, tmp_path):
    path, folder = with_tables
    outside = tmp_path / "outside.npy"
    outside.write_bytes((folder / "z0.npy").read_bytes())  # same bytes: size and sha256 match the manifest
    (folder / "z0.npy").unlink()
    (folder / "z0.npy").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"c\.pt: .*symbolic link"):
        load_checkpoint(path)


def test_a_linked_table_folder_in_a_checkpoint_is_refused(with_tables, tmp_path):
    path, folder = with_tables
    moved = tmp_path / "outside-folder"
    folder.rename(moved)
    folder.symlink_to(moved)
    with pytest.raises(CheckpointError, match=r"c\.pt: .*symbolic link"):
        load_checkpoint(path)


def test_a_table_file_linked_to_a_system_file_is_named(with_tables):
    path, folder = with_tables
    target = Path("/etc/hostname") if Path("/etc/hostname").exists() else Path(sys.executable)
    header, _ = ckpt_mod._read_header(path)
    entry = header["files"]["z0.npy"]
    entry["size"], entry["sha256"] = target.stat().st_size, hashlib.sha256(target.read_bytes()).hexdigest()
    _rewrite(path, header)
    (folder / "z0.npy").unlink()
    (folder / "z0.npy").symlink_to(target)
    with pytest.raises(CheckpointError, match=r"z0\.npy.*symbolic link"):
        load_checkpoint(path)


# ---------------------------------------------------------------- 3. bounded loading
BOMB = """
import hashlib, io, json, zipfile, torch
from blockadmm.engine import checkpoint as C

def bomb(path, megabytes):
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(4)}, buf)
    src, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info.filename))
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(entry, "w", force_zip64=True) as f:
                for _ in range(megabytes):
                    f.write(bytes(1 << 20))
    payload = out.getvalue()
    C.save_checkpoint(path, {"x": torch.ones(1)})
    header, _ = C._read_header(path)
    header["payload"] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    body = json.dumps(header, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(C.MAGIC + len(body).to_bytes(8, "little") + body + hashlib.sha256(body).digest() + payload)
"""


LINUX_PROC = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")


@LINUX_PROC
def test_a_small_checkpoint_that_inflates_is_refused_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.pt"
    code = (
        BOMB
        + f"""
bomb({str(path)!r}, 128)
def run():
    C.load_checkpoint({str(path)!r})
"""
    )
    rise, out = _peak_rss_increase_mb(code)
    assert path.stat().st_size < 1 << 20  # under 1 MB on disk, 128 MB inflated
    assert "ERROR CheckpointError" in out and "bomb.pt" in out, out
    assert rise < 64, (rise, out)


def _gz_idx(path, dims, data_mb):
    """A gzipped idx file whose header declares `dims` (uint8) over `data_mb` MB of zeros."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b"\0\0\x08" + bytes([len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims))
        for _ in range(data_mb):
            f.write(bytes(1 << 20))


@LINUX_PROC
def test_a_small_gzipped_idx_declaring_a_huge_array_is_refused_with_bounded_memory(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gz_idx(path, (1_000_000, 28, 28), 128)
    assert path.stat().st_size < 1 << 20
    rise, out = _peak_rss_increase_mb(f"""
from blockadmm.data import read_idx
def run():
    read_idx({str(path)!r})
""")
    assert "ERROR ValueError" in out and "train-images-idx3-ubyte.gz" in out and "(1000000, 28, 28)" in out, out
    assert rise < 64, (rise, out)


def test_an_idx_header_cut_short_names_the_file(tmp_path):
    for name, opener in (("cut-idx3-ubyte", open), ("cut-idx3-ubyte.gz", gzip.open)):
        with opener(tmp_path / name, "wb") as f:
            f.write(b"\0\0\x08\x03" + (60000).to_bytes(4, "big") + b"\0\0")
        with pytest.raises(ValueError, match=f"{name}: its idx header is cut short"):
            from blockadmm.data import read_idx

            read_idx(tmp_path / name)


def test_a_cifar_batch_larger_than_a_batch_is_refused_before_it_is_read(tmp_path):
    from blockadmm.data import load

    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(3073))  # one record: label 0, a black image
    with open(folder / "data_batch_2.bin", "wb") as f:
        f.truncate(10_001 * 3073)  # sparse: one record more than a CIFAR-10 batch holds, nothing on disk
    with pytest.raises(ValueError, match=r"data_batch_2\.bin: 30733073 bytes .* at most 10000"):
        load("cifar10", tmp_path)


# ---------------------------------------------------------------- 4. one run at a time in a folder
def _wait_for(pred, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_second_training_into_a_running_folder_is_refused_and_a_killed_run_frees_it(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "blockadmm.cli", *TRAIN, "--epochs", "500", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: (out / "tables-batch" / "tables.json").exists() or first.poll() is not None, "the first run")
        assert first.poll() is None, first.stderr.read()
        assert cli.main(TRAIN + ["--epochs", "1", "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"blockadmm train: error: --out {out} is in use by another run (pid {first.pid}"), err
        assert "\n" not in err
        model, cuts = mlp_blocks(64, [16], 10)
        tr = BlockADMM(model, blocks=cuts, input_shape=(64,))
        ckpt = out / "checkpoint-batch.pt"
        _wait_for(lambda: (out / f".{ckpt.name}.lock").exists() or ckpt.exists(), "the first run's fit")
        with pytest.raises(RuntimeError, match=f"checkpoint-batch.pt is in use by another run .pid {first.pid}"):
            data = IndexedDataset(torch.rand(20, 64), torch.arange(20) % 10)
            tr.fit(data, 1, checkpoint=str(ckpt), progress=False)
        time.sleep(0.5)
        assert first.poll() is None  # the first run goes on, its tables intact
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 released the lock: the folder can be trained into again
    assert cli.main(TRAIN + ["--epochs", "1", "--out", str(out), "--overwrite"]) == 0


# ---------------------------------------------------------------- 5. checkpoint values validated before any change
def _snapshot(tr):
    return (
        [p.detach().clone() for p in tr.blocks.parameters()],
        tr.epoch,
        tr.step_count,
        list(tr.rho),
        list(tr.history),
        torch.get_rng_state(),
    )


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1:5] == b[1:5] and torch.equal(a[5], b[5])


def _nan_weight(s):
    next(iter(s["blocks"][0].values())).fill_(math.nan)


def _nan_adam(s):
    next(iter(s["optimizers"][0]["state"].values()))["exp_avg"].fill_(math.nan)


def _corrupt_rng(s):
    s["rng"] = torch.full_like(s["rng"], 255)


CRAFTED = {
    "negative rho": (lambda s: s.update(rho=[-1.0]), "field 'rho'"),
    "NaN rho": (lambda s: s.update(rho=[math.nan]), "field 'rho'"),
    "NaN rho in the config": (lambda s: s["config"].update(rho=math.nan), "field 'config'"),
    "NaN weights": (_nan_weight, r"field 'blocks\[0\]\..*' holds NaN"),
    "NaN optimizer state": (_nan_adam, r"field 'optimizers\[0\]\.state\..*exp_avg' holds NaN"),
    "history not a list": (lambda s: s.update(history={"epoch": 1}), "field 'history'"),
    "string epoch": (lambda s: s.update(epoch="3"), "field 'epoch'"),
    "negative step count": (lambda s: s.update(step_count=-5), "field 'step_count'"),
    "corrupt RNG state": (_corrupt_rng, "field 'rng'"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_checkpoint_value_is_refused_naming_the_file_and_field_and_changes_nothing(case, tmp_path):
    craft, field = CRAFTED[case]
    tr = _trainer()
    tr.fit(_dataset(), 1, batch_size=20, progress=False)
    state = tr.state_dict()
    craft(state)
    path = str(tmp_path / "crafted.pt")
    _save_crafted(path, state)
    fresh = _trainer()
    torch.manual_seed(123)
    before = _snapshot(fresh)
    with pytest.raises(CheckpointError, match=f"crafted.pt: {field}") as e:
        fresh.load(path)
    assert "\n" not in str(e.value)
    assert _same(before, _snapshot(fresh))


def _save_crafted(path, state):
    """save_checkpoint refuses non-finite state: write a finite one, then swap in the crafted payload."""
    save_checkpoint(path, {"x": torch.ones(1)})
    buf = io.BytesIO()
    torch.save(state, buf)
    _rewrite(path, payload=buf.getvalue())
