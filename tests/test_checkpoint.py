"""Checkpoints (issue 20): safe loading, corrupted files, failures at every write, moved and copied runs,
validation before any change, and resuming with new hyperparameters."""
import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from blockadmm.data import IndexedDataset
from blockadmm.engine import checkpoint as ckpt_mod
from blockadmm.engine.checkpoint import CheckpointError, NonFiniteError, load_checkpoint, save_checkpoint
from blockadmm.models import mlp_blocks
from blockadmm.tables import TableMismatch
from blockadmm.trainer import BlockADMM

N, D = 60, 10


def _dataset(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    return IndexedDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _trainer(table_dir, *, hidden=(12, 8), mode="batch", storage="memmap", model=None, **kw):
    torch.manual_seed(0)
    model, cuts = model or mlp_blocks(D, list(hidden), 3)
    return BlockADMM(model, blocks=cuts, input_shape=(D,), mode=mode, num_samples=N, table_storage=storage,
                     table_dir=str(table_dir), **kw)


def _snapshot(tr):
    """Everything a load could change, copied."""
    tables = [] if tr.tables is None else [t.clone() for t in [tr.tables.seen] + tr.tables.z + tr.tables.u]
    opt = [{k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
           for o in tr.optimizers for s in o.state.values()]
    return ([p.detach().clone() for p in tr.blocks.parameters()], tables, opt, tr.epoch, tr.step_count, list(tr.rho),
            [g["lr"] for o in tr.optimizers for g in o.param_groups])


def _same(a, b):
    def eq(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(eq(i, j) for i, j in zip(x, y))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        return x == y
    return eq(a, b)


def _leftovers(folder, base="c.pt"):
    names = sorted(os.listdir(folder))
    return [n for n in names if n.startswith(f"{base}.tmp-")], [n for n in names if n.startswith(f"{base}.tables-")]


@pytest.fixture()
def saved(tmp_path):
    """A batch-mode trainer with memmap tables, trained one epoch and saved to tmp_path/c.pt."""
    tr = _trainer(tmp_path / "live")
    tr.fit(_dataset(), 1, batch_size=20, progress=False)
    path = str(tmp_path / "c.pt")
    tr.save(path)
    return tr, path


# ---------------------------------------------------------------- format
def test_round_trip_with_manifest_relative_to_the_checkpoint(saved, tmp_path):
    tr, path = saved
    tmps, folders = _leftovers(tmp_path)
    assert tmps == [] and len(folders) == 1
    header = ckpt_mod._read_header(path)[0]
    assert sorted(header["files"]) == sorted(tr.tables.file_names())
    for name, entry in header["files"].items():
        assert entry["path"] == f"{folders[0]}/{name}"  # relative to the checkpoint's folder
        assert entry["size"] == os.path.getsize(tmp_path / folders[0] / name)
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and set(state["table_files"]) == set(header["files"])
    fresh = _trainer(tmp_path / "live2")
    fresh.load(path)
    assert _same(_snapshot(fresh), _snapshot(tr))


def test_truncated_empty_and_flipped_checkpoints_name_the_file(saved, tmp_path):
    _, path = saved
    good = Path(path).read_bytes()
    bad = tmp_path / "bad.pt"
    cuts = [0, 5, len(ckpt_mod.MAGIC) + 3, 60, len(good) // 2, len(good) - 1]
    for data in [good[:n] for n in cuts] + [good + b"\0", b"hello, not a checkpoint"]:
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match="bad.pt"):
            load_checkpoint(bad)
    header_end = ckpt_mod._read_header(path)[1]
    rng = np.random.default_rng(0)
    positions = list(range(0, header_end, 7)) + rng.integers(header_end, len(good), 60).tolist()
    for pos in positions:  # any flipped byte is caught: header, its checksum or the payload's
        flipped = bytearray(good)
        flipped[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="bad.pt"):
            load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_a_damaged_table_file_is_named(saved, tmp_path):
    path = saved[1]
    (folder,) = _leftovers(tmp_path)[1]
    table = tmp_path / folder / "z0.npy"
    good = table.read_bytes()
    table.write_bytes(good[:-4])
    with pytest.raises(CheckpointError, match="c.pt: its table file .*z0.npy has .* bytes, the manifest says"):
        load_checkpoint(path)
    flipped = bytearray(good)
    flipped[-3] ^= 0x10
    table.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="z0.npy is corrupted"):
        load_checkpoint(path)
    table.unlink()
    fresh = _trainer(tmp_path / "live2")
    before = _snapshot(fresh)
    with pytest.raises(CheckpointError, match="z0.npy is missing"):
        fresh.load(path)
    assert _same(_snapshot(fresh), before)


# ---------------------------------------------------------------- code in a checkpoint
def _write_marker(path):
    with open(path, "w") as f:
        f.write("code ran")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def _malicious_files(tmp_path, marker):
    """Three crafted files: a bare pickle, a torch.save file, and this package's container around a payload
    whose unpickling would call _write_marker (its header and checksums are right)."""
    evil = {"blocks": _Evil(marker)}
    raw, zipped, wrapped = (str(tmp_path / n) for n in ("raw.pt", "zip.pt", "wrapped.pt"))
    with open(raw, "wb") as f:
        pickle.dump(evil, f)
    torch.save(evil, zipped)
    save_checkpoint(wrapped, evil)
    return raw, zipped, wrapped


def test_malicious_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    files = _malicious_files(tmp_path, str(marker))
    torch.load(files[1], weights_only=False)  # the control: loading it unsafely does run the code
    assert marker.exists()
    marker.unlink()
    tr = _trainer(tmp_path / "live", mode="online")
    for path in files:
        with pytest.raises(CheckpointError, match=os.path.basename(path)) as e:
            tr.load(path)
        assert "\n" not in str(e.value)
        with pytest.raises(CheckpointError, match=os.path.basename(path)):
            load_checkpoint(path)
    assert not marker.exists()


def test_malicious_checkpoint_through_the_cli_runs_no_code(tmp_path, capsys):
    from blockadmm.cli import main

    marker = tmp_path / "marker"
    out = tmp_path / "run"
    out.mkdir()
    wrapped = _malicious_files(tmp_path, str(marker))[2]
    shutil.copy(wrapped, out / "checkpoint-online.pt")
    args = ["train", "--data", "digits", "--hidden", "8", "--epochs", "2", "--quiet", "--out", str(out), "--resume"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "checkpoint-online.pt" in err and "\n" not in err and not marker.exists()


# ---------------------------------------------------------------- failures while saving
def _failing(real, fail_at, counter, partial=True):
    """A stand-in for `real(f, data)` that writes half of the bytes at call `fail_at`, then raises ENOSPC."""
    def write(f, data):
        counter[0] += 1
        if counter[0] == fail_at:
            if partial:
                f.write(bytes(memoryview(data)[: len(memoryview(data)) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, data)
    return write


def test_a_failure_at_any_write_of_a_save_keeps_the_previous_checkpoint_whole(saved, tmp_path, monkeypatch):
    tr, path = saved
    expected = _snapshot(_loaded(tmp_path, path))
    tr.fit(_dataset(), 2, batch_size=20, progress=False)  # the state moves on: a half-written save would show
    real = ckpt_mod._write_all
    counter = [0]
    monkeypatch.setattr(ckpt_mod, "_write_all", _failing(real, 0, counter))
    tr.save(str(tmp_path / "count.pt"))
    n_writes = counter[0]
    assert n_writes >= 2 * len(tr.tables.file_names()) + 5  # header, digest, payload, every table's header and rows
    failures = []
    for fail_at in range(1, n_writes + 1):
        counter[0] = 0
        monkeypatch.setattr(ckpt_mod, "_write_all", _failing(real, fail_at, counter))
        with pytest.raises(OSError, match="could not write the checkpoint .*c.pt.*previous one is unchanged"):
            tr.save(path)
        failures.append(fail_at)
        tmps, folders = _leftovers(tmp_path)
        assert tmps == [] and len(folders) == 1, (fail_at, tmps, folders)
    monkeypatch.setattr(ckpt_mod, "_write_all", real)

    def torch_save_dies(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    for target, stand_in in [(torch, ("save", torch_save_dies)), (os, ("replace", _raise_oserror)),
                             (os, ("fsync", _raise_oserror))]:
        with monkeypatch.context() as m:
            m.setattr(target, *stand_in)
            with pytest.raises(OSError):
                tr.save(path)
        failures.append(stand_in[0])
        tmps, folders = _leftovers(tmp_path)
        assert tmps == [] and len(folders) == 1, (stand_in[0], tmps, folders)
    assert _same(_snapshot(_loaded(tmp_path, path)), expected), failures
    tr.save(path)  # and a save that succeeds moves on
    assert _loaded(tmp_path, path).epoch == 2


def _raise_oserror(*args, **kwargs):
    raise OSError(errno.EIO, "I/O error")


def _loaded(tmp_path, path):
    tr = _trainer(tmp_path / f"check-{np.random.default_rng().integers(1 << 30)}")
    tr.load(path)
    return tr


def test_non_finite_tables_are_refused_without_leaving_files(saved, tmp_path):
    tr, path = saved
    good = Path(path).read_bytes()
    tr.tables.z[1][3, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to overwrite .*c.pt with non-finite table z1.npy"):
        tr.save(path)
    assert Path(path).read_bytes() == good
    assert _leftovers(tmp_path)[0] == [] and len(_leftovers(tmp_path)[1]) == 1


def test_stale_files_of_interrupted_saves_are_removed_by_the_next_save(saved, tmp_path):
    tr, path = saved
    (tmp_path / "c.pt.tmp-dead").write_bytes(b"half")
    (tmp_path / "c.pt.tables-dead").mkdir()
    (tmp_path / "c.pt.tables-dead" / "z0.npy").write_bytes(b"half")
    (tmp_path / "other.pt.tmp-keep").write_bytes(b"not ours")
    tr.save(path)
    tmps, folders = _leftovers(tmp_path)
    assert tmps == [] and len(folders) == 1 and folders[0] != "c.pt.tables-dead"
    assert (tmp_path / "other.pt.tmp-keep").exists()
    _loaded(tmp_path, path)


# ---------------------------------------------------------------- where the files are
def test_a_moved_run_resumes_and_a_copied_one_reads_its_own_tables(saved, tmp_path):
    expected = _snapshot(saved[0])
    run, moved, copied = tmp_path / "run", tmp_path / "moved", tmp_path / "copied"
    run.mkdir()
    for name in os.listdir(tmp_path):
        if name.startswith("c.pt"):
            shutil.move(str(tmp_path / name), str(run / name))
    shutil.move(str(run), str(moved))
    assert _same(_snapshot(_loaded(tmp_path, str(moved / "c.pt"))), expected)
    shutil.copytree(moved, copied)
    (folder,) = _leftovers(moved)[1]
    z0 = np.load(moved / folder / "z0.npy")
    np.save(moved / folder / "z0.npy", z0 + 1)  # the original's tables change; the copy must not see it
    assert _same(_snapshot(_loaded(tmp_path, str(copied / "c.pt"))), expected)
    with pytest.raises(CheckpointError, match="moved/c.pt: its table file"):
        _loaded(tmp_path, str(moved / "c.pt"))


def test_a_manifest_naming_files_outside_the_folder_is_refused(tmp_path):
    source = tmp_path / "secret.npy"
    np.save(source, np.zeros(3, np.float32))
    path = str(tmp_path / "sub" / "c.pt")
    save_checkpoint(path, {"x": torch.ones(1)}, tables={"z0.npy": str(source)})
    header, offset = ckpt_mod._read_header(path)
    payload = Path(path).read_bytes()[offset:]
    header["files"]["z0.npy"]["path"] = "../secret.npy"  # a crafted header, with its checksum made right
    body = json.dumps(header, sort_keys=True).encode()
    Path(path).write_bytes(ckpt_mod.MAGIC + len(body).to_bytes(8, "little") + body + hashlib.sha256(body).digest()
                           + payload)
    with pytest.raises(CheckpointError, match="outside its folder"):
        load_checkpoint(path)


def test_a_trainer_never_wipes_the_folder_it_would_load(saved, tmp_path):
    path = saved[1]
    (folder,) = _leftovers(tmp_path)[1]
    before = {n: (tmp_path / folder / n).read_bytes() for n in os.listdir(tmp_path / folder)}
    with pytest.raises(ValueError, match="not a table folder of this package"):
        _trainer(tmp_path / folder)
    with pytest.raises(ValueError, match="not a table folder"):
        _trainer(tmp_path)  # the run folder itself
    assert {n: (tmp_path / folder / n).read_bytes() for n in os.listdir(tmp_path / folder)} == before
    _loaded(tmp_path, path)


# ---------------------------------------------------------------- validation before any change
@pytest.mark.parametrize("storage", ["memmap", "device"])
def test_a_mismatched_model_fails_before_anything_changed(tmp_path, storage):
    tr = _trainer(tmp_path / "live", storage=storage)
    tr.fit(_dataset(), 1, batch_size=20, progress=False)
    path = str(tmp_path / "c.pt")
    tr.save(path)
    # the same boundaries (12 and 8 features, so the tables fit) but a wider inner layer in block 1
    torch.manual_seed(1)
    inner = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.ReLU())
    blocks = [torch.nn.Sequential(torch.nn.Linear(D, 12), torch.nn.ReLU()), inner, torch.nn.Linear(8, 3)]
    cases = {
        "inner layer": lambda: BlockADMM(blocks, input_shape=(D,), mode="batch", num_samples=N, table_storage=storage,
                                         table_dir=str(tmp_path / "other")),
        "mode": lambda: _trainer(tmp_path / "o2", mode="online", storage=storage),
        "optimizer count": lambda: _trainer(tmp_path / "o3", storage=storage, shared_optimizer=True),
        "table rows": lambda: BlockADMM(*mlp_blocks(D, [12, 8], 3)[:1], blocks=3, input_shape=(D,), mode="batch",
                                        num_samples=N + 1, table_storage=storage, table_dir=str(tmp_path / "o4")),
    }
    messages = {}
    for name, make in cases.items():
        other = make()
        if name != "table rows":  # a trained trainer: its optimizers hold state a load could clobber
            other.fit(_dataset(), 1, batch_size=20, progress=False)
        before = _snapshot(other)
        with pytest.raises((CheckpointError, TableMismatch), match="c.pt") as e:
            other.load(path)
        messages[name] = str(e.value)
        assert _same(_snapshot(other), before), name
    assert "block 1's state does not fit" in messages["inner layer"]
    assert "online mode" in messages["mode"] and "shared_optimizer" in messages["optimizer count"]


# ---------------------------------------------------------------- resuming with new hyperparameters
def test_resume_after_nan_with_a_smaller_rate_trains_on(tmp_path):
    def sgd(lr):
        return lambda params: torch.optim.SGD(params, lr=lr)

    ds = _dataset()
    path = str(tmp_path / "c.pt")
    tr = _trainer(tmp_path / "live", optimizer=sgd(0.1))
    tr.fit(ds, 1, batch_size=20, progress=False, checkpoint=path)
    # resumed with a rate far too large, training blows up and names the last good checkpoint
    assert tr.load(path, override={"lr": 1e4}) == {"lr": (0.1, 1e4)}
    with pytest.raises(NonFiniteError, match=r"at step \d+ .*smaller learning rate.*last good checkpoint is .*c.pt"):
        tr.fit(ds, 4, batch_size=20, progress=False, checkpoint=path)
    assert tr.load(path) == {} and tr.epoch == 1  # the checkpoint kept epoch 1 and its own rate
    assert [g["lr"] for o in tr.optimizers for g in o.param_groups] == [0.1] * 3
    changed = tr.load(path, override={"lr": 0.05, "lr_z": 0.2, "sweeps": 2})
    assert changed == {"lr": (0.1, 0.05), "lr_z": (0.3, 0.2), "sweeps": (3, 2)}
    tr.fit(ds, 4, batch_size=20, progress=False, checkpoint=path)
    assert tr.epoch == 4 and all(np.isfinite(h["loss"]) for h in tr.history)
    assert (tr.config.lr_z, tr.config.sweeps) == (0.2, 2)
    assert [rule.lr_z for rule in tr.engine.rules] == [0.2, 0.2]  # the auxiliary steps use the new rate
    assert tr.resumes == [{"epoch": 1, "step": 3, "changed": changed}]
    again = _loaded(tmp_path, path)  # the values used and the resume record travel with the checkpoint
    assert again.resumes == tr.resumes and again.config.lr_z == 0.2
    assert [g["lr"] for o in again.optimizers for g in o.param_groups] == [0.05] * 3


def test_a_new_rho_on_resume_rescales_the_scaled_duals(saved, tmp_path):
    tr, path = saved
    u_before = [u.clone() for u in tr.tables.u]
    assert float(u_before[0].abs().sum()) > 0
    fresh = _trainer(tmp_path / "live2")
    assert fresh.load(path, override={"rho": [0.5, 2.0]}) == {"rho": ([1.0, 1.0], [0.5, 2.0])}
    assert fresh.rho == [0.5, 2.0]
    torch.testing.assert_close(fresh.tables.u[0], u_before[0] * 2.0)  # y = rho u is kept
    torch.testing.assert_close(fresh.tables.u[1], u_before[1] * 0.5)
    for bad, error in [({"lr_w": 1.0}, TypeError), ({"lr": -1.0}, ValueError), ({"rho": [1.0]}, ValueError)]:
        before = _snapshot(fresh)
        with pytest.raises(error):
            fresh.load(path, override=bad)
        assert _same(_snapshot(fresh), before)


def test_cli_resume_takes_the_flags_given_and_an_earlier_run_is_not_overwritten(tmp_path, capsys):
    from blockadmm.cli import main

    out = tmp_path / "run"
    base = ["train", "--data", "digits", "--hidden", "16", "--quiet", "--out", str(out), "--mode", "batch",
            "--table-storage", "memmap"]
    assert main(base + ["--epochs", "1", "--rho", "0.5"]) == 0
    assert main(base + ["--epochs", "1"]) == 1
    assert "holds an earlier run: pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main(base + ["--epochs", "2", "--resume", "--lr-z", "0.2", "--lr", "5e-4"]) == 0
    assert "lr_z 0.3 -> 0.2" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    config = metrics["config"]
    assert (config["lr_z"], config["lr"], config["rho"]) == (0.2, 5e-4, 0.5)  # rho: the checkpoint's, not the default
    (resume,) = metrics["resumes"]["admm-batch"]
    assert resume["epoch"] == 1 and resume["changed"] == {"lr_z": [0.3, 0.2], "lr": [1e-3, 5e-4]}
    assert [h["epoch"] for h in metrics["runs"]["admm-batch"]] == [1, 2]
    assert metrics["runs"]["admm-batch"][-1]["rho"] == [0.5]
    assert main(base + ["--epochs", "1", "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["resumes"] == {}
