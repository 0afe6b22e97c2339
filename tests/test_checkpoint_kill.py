"""kill -9 during saves with memmap tables (issue 20): every checkpoint left behind loads whole and is
consistent, its weights and tables from the same save.

A child process fills every weight and every table entry with its save counter i, then saves, in a loop;
the test kills it with SIGKILL at a random moment (>= 30 times), then loads the checkpoint and checks that
all values equal one counter, never going back. The children are forked by one helper process that has
built the trainer once (an import and a trainer cost seconds, a fork milliseconds); it runs with one torch
thread, so forking it is safe.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM

N, D, KILLS = 400, 16, 30


def _trainer(table_dir):
    torch.manual_seed(0)
    model, cuts = mlp_blocks(D, [64, 48], 4)
    return BlockADMM(model, blocks=cuts, input_shape=(D,), mode="batch", num_samples=N, table_storage="memmap",
                     table_dir=table_dir)


def _fill(tr, value):
    with torch.no_grad():
        for p in tr.blocks.parameters():
            p.fill_(value)
    for t in tr.tables.z + tr.tables.u:
        t.fill_(value)
    tr.tables.seen.fill_(True)
    tr.step_count = value


_FORKER = """
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_checkpoint_kill import _save_forever, _trainer
trainer = _trainer({live!r})
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        _save_forever(trainer, {path!r}, int(line))
    print(pid, flush=True)
    os.waitpid(pid, 0)
"""


def _save_forever(tr, path, start):
    value = start
    while True:
        _fill(tr, value)
        tr.save(path)
        value += 1


def _saved_value(tr, path):
    tr.load(path)
    values = {float(v) for p in tr.blocks.parameters() for v in p.detach().unique()}
    values |= {float(v) for t in tr.tables.z + tr.tables.u for v in t.unique()}
    assert len(values) == 1, f"weights and tables of different saves: {sorted(values)[:5]}"
    (value,) = values
    assert tr.step_count == value and bool(tr.tables.seen.all())
    return int(value)


def test_kill_9_during_saves_leaves_a_whole_consistent_checkpoint(tmp_path):
    folder, path = str(tmp_path), str(tmp_path / "c.pt")
    checker = _trainer(str(tmp_path / "live-parent"))
    save_s = []
    for value in range(3):
        _fill(checker, value)
        t0 = time.perf_counter()
        checker.save(path)
        save_s.append(time.perf_counter() - t0)
    save_s = sorted(save_s)[1]  # kills fall within the first three saves of a child
    script = _FORKER.format(tests=os.path.dirname(__file__), live=str(tmp_path / "live-child"), path=path)
    forker = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rng = np.random.default_rng(0)
    last, mid_save, pid = 2, 0, None
    window = 3 * save_s  # widened while kills find a child that has not finished a save (a loaded machine)
    try:
        assert forker.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        for _ in range(KILLS):
            forker.stdin.write(f"{last + 1}\n")
            forker.stdin.flush()
            pid = int(forker.stdout.readline())
            time.sleep(float(rng.uniform(0.0, window)))
            os.kill(pid, signal.SIGKILL)
            pid = None
            names = os.listdir(folder)
            # a kill between a save's first new file and its clean-up leaves a temp file or a second table folder
            inside = any(".tmp-" in n for n in names) or sum(n.startswith("c.pt.tables-") for n in names) > 1
            mid_save += inside
            value = _saved_value(checker, path)
            assert value >= last, f"the checkpoint went back from save {last} to {value}"
            if value == last:  # no save finished in this child's lifetime: give the next one longer
                window = min(1.5 * window, max(30 * save_s, 2.0))
            last = value
        elapsed = time.perf_counter() - t0
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        forker.stdin.close()
        forker.wait(60)
    assert last >= 2 + KILLS // 3, f"the children saved too little to test anything: last save {last}"
    assert mid_save >= KILLS // 3, f"only {mid_save} of {KILLS} kills landed inside a save"
    _fill(checker, last + 1)
    checker.save(path)  # the next save removes what the killed ones left
    names = sorted(n for n in os.listdir(folder) if n.startswith("c.pt"))
    assert len(names) == 2 and names[0] == "c.pt" and names[1].startswith("c.pt.tables-"), names
    assert _saved_value(_trainer(str(tmp_path / "live-final")), path) == last + 1
    print(f"{KILLS} kills in {elapsed:.1f} s (a save {save_s:.3f} s), {mid_save} inside a save, {last - 2} saves "
          f"committed")
