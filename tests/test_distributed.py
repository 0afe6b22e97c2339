"""The distributed trainer (blockadmm.distributed) on CPU: gloo, spawned processes, one thread each.

Equality with the single-process trainer (Jacobi and top-down), batch-mode tables per rank, the
pipelined schedule, checkpoints, faults (a killed rank is named, the run resumes to the same result),
untrusted checkpoint files, and the launcher (ranks die with it, failures as one line naming the rank).
Faults are injected by a test-only subclass (FaultyTrainer). The file keeps to a few spawns of tiny MLPs.
"""

import json
import os
import signal
import subprocess
import sys
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from blockadmm.data import IndexedDataset
from blockadmm.distributed import (
    CheckpointMismatch,
    DistributedBlockADMM,
    RankFailure,
    build_schedule,
    launch,
    partition_blocks,
    read_checkpoint_meta,
)
from blockadmm.distributed.comm import Comm
from blockadmm.distributed.launcher import failure_line
from blockadmm.distributed.schedule import Task
from blockadmm.distributed.shards import load_shard, shard_name
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM

D_IN, N_CLS, N = 12, 4, 80
EPOCHS, BS = 2, 32  # 3 batches an epoch, the last of 16 rows


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D_IN, generator=g)
    return IndexedDataset(X, X[:, :N_CLS].argmax(1), N_CLS)


def _model(hidden):
    torch.manual_seed(0)
    return mlp_blocks(D_IN, hidden, N_CLS, "relu")


def _common(mode):
    return {"input_shape": (D_IN,), "mode": mode, "num_samples": N, "seed": 3, "lr_z": 0.3, "sweeps": 2}


def _single(hidden, mode, order, epochs=EPOCHS, **kw):
    model, cuts = _model(hidden)
    tr = BlockADMM(model, blocks=cuts, order=order, **kw, **_common(mode))
    tr.fit(_data(), epochs, batch_size=BS, progress=False)
    return [b.state_dict() for b in tr.blocks]


# ------------------------------------------------------------------------------------------ workers
class FaultyTrainer(DistributedBlockADMM):
    """The trainer with one rank that dies ("kill": SIGKILL, "exit": exit code 17), hangs or raises when it
    reaches global step `fault["step"]`: fault injection lives here, not in the library."""

    def __init__(self, *args, fault, **kwargs):
        super().__init__(*args, **kwargs)
        self.fault = fault

    def run_batches(self, batches, first_step):
        if self.rank == self.fault["rank"] and first_step <= self.fault["step"] < first_step + len(batches):
            _fail(self.fault["how"], self.fault.get("stamp"))
        return super().run_batches(batches, first_step)


def _fail(how, stamp=None):
    if stamp:  # when the fault happened (wall clock), for the parent to time the reaction
        with open(stamp, "w") as f:
            f.write(repr(time.time()))
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "exit":
        os._exit(17)
    if how == "hang":
        while True:
            time.sleep(3600)
    raise ValueError("injected bad input on this rank")


def _build(case):
    model, cuts = _model(case["hidden"])
    cls, extra = (FaultyTrainer, {"fault": case["fault"]}) if case.get("fault") else (DistributedBlockADMM, {})
    return cls(
        model,
        blocks=cuts,
        schedule=case["schedule"],
        staleness=case.get("staleness"),
        timeout=case.get("timeout", 60),
        **extra,
        **case.get("kw", {}),
        **_common(case["mode"]),
    )


def _worker(rank, world, init, out, cases):
    torch.set_num_threads(1)
    from blockadmm.distributed import exit_worker, init_distributed

    init_distributed("gloo", init_method=init, rank=rank, world_size=world, timeout=60)
    try:
        for case in cases:
            tr = _build(case)
            ck = case.get("checkpoint")
            if case.get("resume"):
                tr.load(ck)
            t0 = time.monotonic()
            try:
                hist = tr.fit(
                    _data(),
                    case.get("epochs", EPOCHS),
                    batch_size=BS,
                    checkpoint=ck,
                    checkpoint_every=case.get("checkpoint_every"),
                    progress=False,
                    eval_train=case.get("eval", False),
                )
            except Exception as e:  # noqa: BLE001 - reported to the parent
                with open(os.path.join(out, f"{case['name']}-err{rank}.json"), "w") as f:
                    json.dump(
                        {
                            "type": type(e).__name__,
                            "msg": str(e),
                            "rank": getattr(e, "rank", None),
                            "after_s": time.monotonic() - t0,
                            "tb": traceback.format_exc(),
                        },
                        f,
                    )
                return
            torch.save(
                {"blocks": {k: b.state_dict() for k, b in tr.owned_blocks().items()}, "hist": hist},
                os.path.join(out, f"{case['name']}-rank{rank}.pt"),
            )
            if "poison_save" in case:  # a NaN weight on one rank: that rank's save refuses, the other names it
                if rank == case["poison_save"]:
                    next(iter(tr.owned_blocks().values()))[0].weight.data[0, 0] = float("nan")
                try:
                    tr.save(ck)
                except Exception as e:  # noqa: BLE001 - reported to the parent
                    with open(os.path.join(out, f"{case['name']}-save{rank}.json"), "w") as f:
                        json.dump({"type": type(e).__name__, "msg": str(e), "rank": getattr(e, "rank", None)}, f)
        if not any(c.get("fault") for c in cases):
            exit_worker()
    finally:
        import torch.distributed as dist

        if dist.is_initialized() and not any(c.get("fault") for c in cases):
            dist.destroy_process_group()


def _spawn(world, tmp_path, cases, tag="run", limit=60, worker=None):
    """Run the cases on `world` spawned ranks (by `worker`, default _worker: worker(rank, world, init, out, cases));
    waits for every rank (a failing one does not stop the others)."""
    out = tmp_path / tag
    out.mkdir()
    init = "file://" + str(tmp_path / f"rdzv-{tag}")
    ctx = mp.start_processes(worker or _worker, args=(world, init, str(out), cases), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + limit
    for p in ctx.processes:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
    alive = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
    for r in alive:
        ctx.processes[r].kill()
    codes = [p.exitcode for p in ctx.processes]
    if alive:
        raise TimeoutError(f"ranks {alive} still running after {limit} s (exit codes {codes})")
    if not any(c.get("fault") for c in cases) and any(codes):
        raise RuntimeError(f"ranks exited with {codes}")
    return out, codes


def _gather_blocks(out, name, world):
    blocks = {}
    for r in range(world):
        blocks.update(torch.load(out / f"{name}-rank{r}.pt", weights_only=True)["blocks"])
    return [blocks[k] for k in sorted(blocks)]


def _assert_same(got, ref, tol=1e-5):
    assert len(got) == len(ref)
    for k, (a, b) in enumerate(zip(got, ref)):
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=f"block {k} {name}")


# ------------------------------------------------------------------------------------------ pure parts
def test_partition_and_schedule_are_consistent():
    assert partition_blocks([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert partition_blocks([10, 1, 1, 1], 2) == [(0, 1), (1, 4)]
    with pytest.raises(ValueError, match="at least one block"):
        partition_blocks([1, 1], 3)
    for order in ("jacobi", "top-down"):
        last = Task.JACOBI_SWEEP if order == "jacobi" else Task.UPDATE
        for stale in (0, 1, 3):
            plans = build_schedule(5, 3, order=order, sweeps=2, staleness=stale, task_cost=lambda r, k, s: 1.0 + r)
            for r, plan in enumerate(plans):
                assert len(plan) == 5 * 5
                started = []
                for t, task, s in plan:  # staleness bound: batch t starts after batch t-1-stale is done here
                    if task is Task.FORWARD:
                        done = {b for b in range(t) if (b, last, 2) in plan[: plan.index((t, task, s))]}
                        assert all(b in done for b in range(t - stale)), (order, stale, r, t)
                        started.append(t)
                assert started == sorted(started)
    seq = build_schedule(3, 2, order="top-down", sweeps=2, staleness=0, task_cost=lambda r, k, s: 1.0)
    assert [t for t, _, _ in seq[0]] == sorted(t for t, _, _ in seq[0])  # staleness 0: one batch at a time


def test_checkpoint_meta_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="latest.json"):
        read_checkpoint_meta(str(tmp_path), 2)
    (tmp_path / "latest.json").write_text(
        json.dumps({"step": 3, "world_size": 3, "partition": [[0, 1], [1, 2], [2, 4]], "dir": "step-000000003"})
    )
    with pytest.raises(CheckpointMismatch, match="written by 3 ranks, this run has 2"):
        read_checkpoint_meta(str(tmp_path), 2)
    with pytest.raises(CheckpointMismatch, match="splits the blocks"):
        read_checkpoint_meta(str(tmp_path), 3, [(0, 2), (2, 3), (3, 4)])


# ------------------------------------------------------------------------------------------ spawned
H2 = (16, 16, 16)  # 4 blocks


def test_two_ranks_match_single_process(tmp_path):
    cases = [
        {"name": "jac-online", "hidden": H2, "mode": "online", "schedule": "sync"},
        {"name": "jac-batch", "hidden": H2, "mode": "batch", "schedule": "sync"},
        {"name": "td-online", "hidden": H2, "mode": "online", "schedule": "pipeline", "staleness": 0},
        {"name": "pipe", "hidden": H2, "mode": "batch", "schedule": "pipeline", "staleness": 1, "eval": True},
        {"name": "fast", "hidden": H2, "mode": "online", "schedule": "sync", "kw": {"preset": "fast"}},
        {
            "name": "nan-save",
            "hidden": H2,
            "mode": "online",
            "schedule": "sync",
            "epochs": 1,
            "checkpoint": str(tmp_path / "ck-nan"),
            "poison_save": 1,
        },
    ]
    out, _ = _spawn(2, tmp_path, cases)
    # a preset (here with one shared optimizer over each rank's blocks) as in the single-process trainer
    _assert_same(_gather_blocks(out, "fast", 2), _single(H2, "online", "jacobi", preset="fast"))
    # the poisoned rank refuses to write, the other names it; latest.json still names the last good shards
    err1, err0 = (json.loads((out / f"nan-save-save{r}.json").read_text()) for r in (1, 0))
    assert err1["type"] == "NonFiniteError" and "refusing to overwrite" in err1["msg"], err1
    assert err0["type"] == "RankFailure" and err0["rank"] == 1 and "NonFiniteError" in err0["msg"], err0
    assert json.loads((tmp_path / "ck-nan" / "latest.json").read_text())["step"] == 3
    _assert_same(_gather_blocks(out, "jac-online", 2), _single(H2, "online", "jacobi"))
    _assert_same(_gather_blocks(out, "jac-batch", 2), _single(H2, "batch", "jacobi"))
    _assert_same(_gather_blocks(out, "td-online", 2), _single(H2, "online", "top-down"))
    # the pipelined run trains (finite, same records on both ranks) but is not the sequential order
    h0 = torch.load(out / "pipe-rank0.pt", weights_only=True)["hist"]
    h1 = torch.load(out / "pipe-rank1.pt", weights_only=True)["hist"]
    assert h0 == [dict(h, wall_s=h0[i]["wall_s"]) for i, h in enumerate(h1)]
    # batch mode: the head loss (the network's loss needs the forward, which no rank sees there)
    assert all(torch.isfinite(torch.tensor(h["head_loss"])) and "loss" not in h for h in h0)
    assert 0.0 <= h0[-1]["train_acc"] <= 1.0


def test_three_ranks_match_single_process_and_a_killed_rank_is_named_then_resumed(tmp_path):
    ck = str(tmp_path / "ckpt")
    pipe = {"hidden": H2, "mode": "batch", "schedule": "pipeline", "staleness": 1, "checkpoint_every": 2}
    timeout = 5
    # one spawn: the 3-rank equality runs, then a pipelined run whose top rank 2 dies at global step 4
    # (epoch 2): rank 1 sees it die, rank 0 only sees rank 1 stop, and both must name rank 2
    cases = [
        {"name": "jac3", "hidden": H2, "mode": "online", "schedule": "sync"},
        {"name": "jac3b", "hidden": H2, "mode": "batch", "schedule": "sync"},
        dict(
            pipe,
            name="killed",
            checkpoint=ck,
            timeout=timeout,
            fault={"rank": 2, "step": 4, "how": "exit"},
            kw={"table_storage": "memmap", "table_dir": str(tmp_path / "tables-killed")},
        ),
    ]
    out, codes = _spawn(3, tmp_path, cases, tag="killed")
    _assert_same(_gather_blocks(out, "jac3", 3), _single(H2, "online", "jacobi"))
    _assert_same(_gather_blocks(out, "jac3b", 3), _single(H2, "batch", "jacobi"))
    assert codes[2] == 17  # the injected death
    for r in (0, 1):
        err = json.loads((out / f"killed-err{r}.json").read_text())
        assert err["type"] == "RankFailure" and err["rank"] == 2, err
        assert "rank 2" in err["msg"]
        assert err["after_s"] < timeout + 10, err
    meta = json.loads((tmp_path / "ckpt" / "latest.json").read_text())
    assert meta["step"] == 4 and meta["world_size"] == 3  # checkpoints at steps 2, 3 (epoch end), 4
    # resume with 3 ranks and finish; the uninterrupted run is done in the same spawn on a fresh folder
    cases = [
        dict(
            pipe,
            name="resumed",
            checkpoint=ck,
            resume=True,
            kw={"table_storage": "memmap", "table_dir": str(tmp_path / "tables-resumed")},
        ),
        dict(
            pipe,
            name="whole",
            checkpoint=str(tmp_path / "ckpt-whole"),
            kw={"table_storage": "memmap", "table_dir": str(tmp_path / "tables-whole")},
        ),
    ]
    out2, _ = _spawn(3, tmp_path, cases, tag="resume")
    _assert_same(_gather_blocks(out2, "resumed", 3), _gather_blocks(out2, "whole", 3), tol=0)


class _Store(dict):
    """The rendezvous store's set/check/get, in memory."""

    def set(self, k, v):
        self[k] = v

    def check(self, keys):
        return all(k in self for k in keys)

    def get(self, k):
        return self[k]


def test_nccl_wait_path_times_out_with_the_rank_named():
    """The NCCL branch of the watchdog (poll the work, deadline, name the rank) without a GPU: a fake work
    that never completes, a store that shows no other rank blocked."""

    class NeverDone:
        def is_completed(self):
            return False

        def wait(self, timeout=None):
            raise AssertionError("wait() must not be reached before completion")

    comm = Comm(0, 2, torch.device("cpu"), 0.2, _Store(), backend="nccl")
    comm.step = 7
    t0 = time.monotonic()
    with pytest.raises(RankFailure, match="rank 1 died or hangs") as e:
        comm.wait(NeverDone(), 1, "the gradient from above")
    assert e.value.rank == 1 and time.monotonic() - t0 < 2
    assert json.loads(comm.store["blockadmm/blocked/0"]) == {"peer": 1, "what": "the gradient from above", "step": 7}


def test_setup_names_the_rank_that_never_joined(monkeypatch):
    """A rank that died before building its trainer: the group set-up times out and names it."""
    import torch.distributed as dist

    def new_group(*args, **kwargs):
        raise RuntimeError("Wait timeout after 100ms")

    monkeypatch.setattr(dist, "new_group", new_group)
    store = _Store()
    store.set("blockadmm/joined/0", "{}")
    store.set("blockadmm/joined/2", "{}")
    comm = Comm(2, 3, torch.device("cpu"), 0.1, store, backend="gloo")
    with pytest.raises(RankFailure, match="rank 1 never joined the run during set-up") as e:
        comm.join()
    assert e.value.rank == 1 and "blockadmm/joined/2" in store


# ------------------------------------------------------------------------------------------ untrusted files
class _Payload:
    """A pickle that writes a file when it is loaded: what a crafted checkpoint can do to pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _index(folder, step_dir="step-000000004", world=2):
    folder.mkdir(exist_ok=True)
    (folder / "latest.json").write_text(
        json.dumps(
            {
                "step": 4,
                "epoch": 1,
                "epoch_step": 0,
                "world_size": world,
                "partition": [[0, 2], [2, 4]],
                "dir": step_dir,
            }
        )
    )


def test_latest_json_cannot_point_outside_the_checkpoint_folder(tmp_path):
    parts = [(0, 2), (2, 4)]
    for bad in ("../elsewhere", "../../elsewhere/x", "/tmp/x", "step-000000004/../../x", "."):
        _index(tmp_path / "ck", bad)
        with pytest.raises(CheckpointMismatch, match="not a step-<n> folder inside"):
            load_shard(str(tmp_path / "ck"), 0, 2, parts)
    (tmp_path / "ck" / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointMismatch, match="latest.json is not a blockadmm checkpoint index"):
        read_checkpoint_meta(str(tmp_path / "ck"), 2)
    (tmp_path / "ck" / "latest.json").write_text(
        json.dumps({"step": "4", "world_size": 2, "partition": [], "dir": "x"})
    )
    with pytest.raises(CheckpointMismatch, match="fields of the wrong type"):
        read_checkpoint_meta(str(tmp_path / "ck"), 2)


def test_a_crafted_or_damaged_shard_runs_no_code_and_is_named(tmp_path):
    from blockadmm.distributed.shards import FORMAT
    from blockadmm.engine.checkpoint import CheckpointError, save_checkpoint

    folder, marker, parts = tmp_path / "ck", tmp_path / "pwned", [(0, 2), (2, 4)]
    _index(folder)
    step = folder / "step-000000004"
    step.mkdir()
    shard = step / shard_name(0, 2)
    torch.save({"format": FORMAT, "blocks": _Payload(str(marker))}, shard)
    with pytest.raises(CheckpointError, match=f"{shard} is a torch.save or pickle file, not a blockadmm checkpoint"):
        load_shard(str(folder), 0, 2, parts)
    assert not marker.exists()
    torch.load(shard, weights_only=False)  # the same file loaded the unsafe way does write: a real exploit
    assert marker.exists()
    save_checkpoint(str(shard), {"format": "a single-process trainer's"})
    with pytest.raises(CheckpointMismatch, match="not a shard of the distributed trainer"):
        load_shard(str(folder), 0, 2, parts)
    save_checkpoint(str(shard), {"format": FORMAT, "blocks": {0: {"w": torch.ones(3)}}})
    assert load_shard(str(folder), 0, 2, parts)["blocks"][0]["w"].tolist() == [1.0, 1.0, 1.0]
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"{shard} is truncated"):
        load_shard(str(folder), 0, 2, parts)


# ------------------------------------------------------------------------------------------ the launcher
def _train_with_fault(fault, timeout):
    """A launched rank's work: build the trainer (a "setup" fault kills rank 1 before that) and train."""
    import torch.distributed as dist

    if fault["step"] == "setup" and dist.get_rank() == fault["rank"]:
        _fail("kill", fault["stamp"])
    case = {"hidden": H2, "mode": "online", "schedule": "sync", "timeout": timeout, "fault": fault}
    if fault["step"] == "setup":
        case.pop("fault")
    _build(case).fit(_data(), EPOCHS, batch_size=BS, progress=False, eval_train=False)


@pytest.mark.parametrize(
    "how, step, named",
    [
        ("kill", 2, "rank 1 died (killed by SIGKILL)"),
        ("kill", "setup", "rank 1 died (killed by SIGKILL)"),
        ("hang", 2, "rank 1 hangs (stopped by the launcher)"),
        ("raise", 1, "rank 1 failed: ValueError: injected bad input on this rank"),
    ],
)
def test_launch_names_the_failed_rank_in_one_line(how, step, named, capfd, tmp_path):
    timeout, stamp = 4, tmp_path / "fault-time"
    with pytest.raises(RankFailure) as e:
        launch(
            _train_with_fault,
            2,
            {"rank": 1, "step": step, "how": how, "stamp": str(stamp)},
            timeout,
            backend="gloo",
            threads=1,
            timeout=timeout,
        )
    reaction = time.time() - float(stamp.read_text())
    msg = str(e.value)
    assert e.value.rank == 1 and msg.startswith(named) and "\n" not in msg, msg
    assert "rank 0" in msg or how == "kill", msg  # the other rank's report: it stopped because of rank 1
    assert "Traceback" not in capfd.readouterr().err
    # from the fault to the launcher's answer: at most the timeout, the diagnosis and the launcher's grace
    assert reaction < timeout + 3 + 5 + 5, reaction


def test_failure_line_prefers_a_rank_s_own_error_then_a_silent_death():
    rf = {"error": "RankFailure: rank 2 died or hangs", "culprit": 2}
    assert failure_line([1, 1, -9], [rf, rf, None]) == (
        "rank 2 died (killed by SIGKILL); ranks 0, 1 stopped because of it",
        2,
    )
    assert failure_line([1, 1, 1], [rf, {"error": "NonFiniteError: nan", "culprit": None}, rf])[1] == 1
    assert failure_line([1, None], [{"error": "RankFailure: x", "culprit": 1}, None])[0].startswith("rank 1 hangs")
    assert failure_line([1, 1], [None, None]) == ("rank 0 died (exit code 1)", 0)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _sleeping_rank(pid_dir):
    import torch.distributed as dist

    with open(os.path.join(pid_dir, f"rank{dist.get_rank()}"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_ranks_die_with_their_launcher_and_leave_no_rendezvous_files(tmp_path, sig):
    pids, tmp = tmp_path / "pids", tmp_path / "tmp"
    pids.mkdir()
    tmp.mkdir()
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys; sys.path.insert(0, {here!r}); from test_distributed import _sleeping_rank; "
        f"from blockadmm.distributed import launch; launch(_sleeping_rank, 2, {str(pids)!r}, backend='gloo')"
    )
    env = dict(os.environ, TMPDIR=str(tmp))
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(pids)) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None, "the ranks did not start"
            time.sleep(0.2)
        time.sleep(0.5)
        ranks = [int((pids / name).read_text()) for name in sorted(os.listdir(pids))]
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in ranks), f"ranks {ranks} outlived their launcher ({sig.name})"
        assert os.listdir(tmp) == [], "the launcher left files in the temp folder"
    finally:
        if launcher.poll() is None:
            launcher.kill()


# ------------------------------------------------------------------------------------------ the command line
def _cli(tmp_path, *flags):
    from blockadmm.cli import main

    return main(["train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", *flags])


@pytest.mark.parametrize(
    "flags, error",
    [
        (["--nproc", "0"], "argument --nproc: expected an integer >= 1, got '0'"),
        (["--nproc", "2", "--timeout", "0"], "argument --timeout: expected a finite number > 0, got '0'"),
        (["--nproc", "3", "--hidden", "16"], "--nproc 3 needs at least 3 blocks, the network has 2"),
        (["--nproc", "3", "--hidden", "16,16,16"], "--nproc: 3 processes on 2 CPU cores: each rank needs a core"),
        (["--nproc", "2", "--on-divergence", "stop"], "--on-divergence watches a run in one process"),
        (
            ["--nproc", "2", "--resume", "--lr", "0.01"],
            (
                "--resume continues with the checkpoint's hyperparameters and "
                "cannot take --lr: drop them, or resume without --nproc"
            ),
        ),
    ],
)
def test_cli_checks_nproc_before_spawning_anything(tmp_path, monkeypatch, capsys, flags, error):
    import blockadmm.distributed
    import blockadmm.distributed.launcher

    spawned = []
    monkeypatch.setattr(blockadmm.distributed, "launch", lambda *a, **k: spawned.append(a))
    monkeypatch.setattr(blockadmm.distributed.launcher, "available_cores", lambda: 2)
    with pytest.raises(SystemExit) as e:
        _cli(tmp_path, *flags)
    assert error in str(e.value.code) + capsys.readouterr().err
    assert spawned == []


def test_cli_reports_a_failed_rank_in_one_line(tmp_path, capfd):
    with pytest.raises(SystemExit) as e:
        _cli(tmp_path, "--nproc", "2", "--hidden", "16", "--resume", "--timeout", "20")
    msg = str(e.value.code)
    assert msg.startswith("blockadmm train: rank 0 failed: FileNotFoundError: no distributed checkpoint in ")
    assert msg.endswith("rank 1 failed as well") and "\n" not in msg, msg
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------ one rank, in-process
@pytest.fixture
def one_rank(tmp_path):
    """A process group of this test process alone (gloo, a file store): the trainer without spawning."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_equals_single_process_and_checks_each_batch(one_rank):
    model, cuts = _model(H2)
    tr = DistributedBlockADMM(model, blocks=cuts, schedule="sync", **_common("batch"))
    tr.fit(_data(), EPOCHS, batch_size=BS, progress=False, eval_train=False)
    _assert_same([b.state_dict() for b in tr.blocks], _single(H2, "batch", "jacobi"))
    x, y = torch.randn(3, D_IN), torch.tensor([0, 1, 2])
    bad = [
        ((x, y, torch.tensor([True, False, True])), TypeError, "sample indices must be integers"),
        ((x, y, torch.tensor([1.0, 2.0, 3.0])), TypeError, "sample indices must be integers"),
        ((x, y, torch.tensor([4, 4, 5])), ValueError, "a sample index appears twice in one batch"),
        ((x, y, torch.tensor([4, 5])), ValueError, "the sample index has shape"),
        ((x[:0], y[:0], torch.tensor([], dtype=torch.long)), ValueError, "the mini-batch is empty"),
        ((x, y, torch.tensor([0, 1, N])), IndexError, f"outside the tables' 0..{N - 1}"),
        ((x, y), ValueError, "needs the sample index of every row"),
        ((x, y.float(), torch.tensor([0, 1, 2])), ValueError, "integer class labels"),
        ((x, torch.tensor([0, 1, N_CLS]), torch.tensor([0, 1, 2])), ValueError, f"labels must lie in 0..{N_CLS - 1}"),
        ((torch.randn(3, D_IN + 1), y, torch.tensor([0, 1, 2])), ValueError, "input batch has per-sample shape"),
    ]
    tables = [t.clone() for t in [tr.tables.seen] + tr.tables.z + tr.tables.u]
    for batch, error, match in bad:
        with pytest.raises(error, match=match):
            tr.run_batches([batch], tr.step_count)
    assert tr.step_count == 6  # nothing counted, nothing written by the refused batches
    assert all(torch.equal(a, b) for a, b in zip(tables, [tr.tables.seen] + tr.tables.z + tr.tables.u))
