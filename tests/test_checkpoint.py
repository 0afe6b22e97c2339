"""Checkpoint atomicity: a save that dies at any point leaves the previous checkpoint loadable and whole.

Every file-system step of `BlockADMM.save` (torch.save, each file of a table-folder copy, each rename,
each folder removal) is numbered; for each number the save is run again from the same files on disk, and
at that step it writes part of its bytes (or removes part of a folder) and raises, as a killed process or a
full disk would leave it. A fresh trainer must then load the previous checkpoint with exactly the weights,
tables and counters it was saved with (or, when the step that died came after the final rename, with
exactly the new state).
"""

import io
import os
import shutil

import pytest
import torch
from torch import nn

from blockadmm.trainer import BlockADMM

N = 24


class InjectedFault(OSError):
    pass


class FaultPoints:
    """Numbered file-system steps; the one numbered `fail_at` writes part of its work, then raises."""

    def __init__(self, fail_at):
        self.fail_at, self.count = fail_at, 0

    def hit(self) -> bool:
        self.count += 1
        return self.count == self.fail_at

    def install(self, monkeypatch):
        real_save, real_replace, real_rmtree = torch.save, os.replace, shutil.rmtree

        def save(obj, f, *args, **kw):
            if not self.hit():
                return real_save(obj, f, *args, **kw)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kw)
            data = buf.getvalue()
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
            raise InjectedFault(f"torch.save to {f} died after {len(data) // 2} of {len(data)} bytes")

        def replace(src, dst, *args, **kw):
            if self.hit():
                raise InjectedFault(f"os.replace({src}, {dst}) died")
            return real_replace(src, dst, *args, **kw)

        def copytree(src, dst, *args, **kw):
            os.makedirs(dst)
            for name in sorted(os.listdir(src)):
                with open(os.path.join(src, name), "rb") as f:
                    data = f.read()
                with open(os.path.join(dst, name), "wb") as out:
                    if self.hit():
                        out.write(data[: len(data) // 2])
                        raise InjectedFault(f"copying {name} died half-way")
                    out.write(data)
            return dst

        def rmtree(path, *args, **kw):
            if os.path.isdir(path) and self.hit():
                names = sorted(os.listdir(path))
                for name in names[: len(names) // 2 + 1]:
                    os.remove(os.path.join(path, name))
                raise InjectedFault(f"removing {path} died half-way")
            return real_rmtree(path, *args, **kw)

        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "copytree", copytree)
        monkeypatch.setattr(shutil, "rmtree", rmtree)


def _trainer(tmp_path, storage, tag):
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(5, 6), nn.ReLU()), nn.Sequential(nn.Linear(6, 4), nn.Tanh()), nn.Linear(4, 3)]
    return BlockADMM(
        blocks,
        input_shape=(5,),
        mode="batch",
        num_samples=N,
        table_storage=storage,
        table_dir=str(tmp_path / f"tables-{tag}"),
        rho=[0.5, 2.0],
    )


def _train(tr, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(N, generator=g)[:8]
        tr.step(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g), idx)


def _snapshot(tr):
    return {
        "weights": [p.detach().clone() for p in tr.blocks.parameters()],
        "step": tr.step_count,
        "seen": tr.tables.seen.clone(),
        "z": [t.clone() for t in tr.tables.z],
        "u": [t.clone() for t in tr.tables.u],
        "optim": [sd["state"][0]["exp_avg"].clone() for sd in tr.state_dict()["optimizers"]],
    }


def _assert_same(got, want):
    assert got["step"] == want["step"]
    for name in ("weights", "z", "u", "optim"):
        for a, b in zip(got[name], want[name]):
            assert torch.equal(a, b), f"{name} differs from the previous checkpoint"
    assert torch.equal(got["seen"], want["seen"])


@pytest.mark.parametrize("storage", ["device", "memmap"])
def test_save_dying_at_any_point_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, storage):
    ckpt_dir = tmp_path / "ck"
    ckpt_dir.mkdir()
    ckpt = str(ckpt_dir / "c.pt")
    tr = _trainer(tmp_path, storage, "live")
    _train(tr, 3, seed=1)
    tr.save(ckpt)
    previous = _snapshot(tr)
    _train(tr, 2, seed=2)  # weights, tables and counters move on
    assert not torch.equal(tr.tables.z[0], previous["z"][0])
    pristine = tmp_path / "pristine"
    shutil.copytree(ckpt_dir, pristine)

    current = _snapshot(tr)
    points, outcomes = 0, []
    for fail_at in range(1, 50):
        shutil.rmtree(ckpt_dir)
        shutil.copytree(pristine, ckpt_dir)
        with monkeypatch.context() as mp:
            faults = FaultPoints(fail_at)
            faults.install(mp)
            try:
                tr.save(ckpt)
            except InjectedFault:
                pass
            else:
                assert faults.count < fail_at, "a fault was injected but save did not raise"
                break
        points += 1
        fresh = _trainer(tmp_path, storage, f"fresh{fail_at}")
        fresh.load(ckpt)
        got = _snapshot(fresh)
        # whole: the previous state, or (a fault after the final rename, in the clean-up) the new one
        committed = got["step"] == current["step"]
        _assert_same(got, current if committed else previous)
        outcomes.append(committed)
    assert points >= 2 and not outcomes[0], f"{points} fault points in a save, outcomes {outcomes}"
    # and the uninterrupted save, from the same files, writes the new state (and one table folder only)
    fresh = _trainer(tmp_path, storage, "after")
    fresh.load(ckpt)
    _assert_same(_snapshot(fresh), current)
    if storage == "memmap":
        assert len([n for n in os.listdir(ckpt_dir) if ".tables" in n]) == 1, os.listdir(ckpt_dir)
