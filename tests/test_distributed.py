"""The distributed trainer (blockadmm.distributed) on CPU: gloo, spawned processes, one thread each.

Equality with the single-process trainer (Jacobi and top-down), batch-mode tables per rank, the
pipelined schedule, checkpoints, and faults (a killed rank is named, the run resumes to the same result).
The whole file keeps to a few spawns of tiny MLPs.
"""
import json
import os
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from blockadmm.data import IndexedDataset
from blockadmm.distributed import FAULT_ENV, CheckpointMismatch, build_schedule, partition_blocks, read_checkpoint_meta
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


def _single(hidden, mode, order, epochs=EPOCHS):
    model, cuts = _model(hidden)
    tr = BlockADMM(model, blocks=cuts, order=order, **_common(mode))
    tr.fit(_data(), epochs, batch_size=BS, progress=False)
    return [b.state_dict() for b in tr.blocks]


# ------------------------------------------------------------------------------------------ workers
def _worker(rank, world, init, out, cases):
    torch.set_num_threads(1)
    from blockadmm.distributed import DistributedBlockADMM, exit_worker, init_distributed

    init_distributed("gloo", init_method=init, rank=rank, world_size=world, timeout=60)
    try:
        for case in cases:
            if case.get("fault"):
                os.environ[FAULT_ENV] = case["fault"]
            model, cuts = _model(case["hidden"])
            tr = DistributedBlockADMM(model, blocks=cuts, schedule=case["schedule"], staleness=case.get("staleness"),
                                      timeout=case.get("timeout", 60), **case.get("kw", {}), **_common(case["mode"]))
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
            torch.save({"blocks": {k: b.state_dict() for k, b in tr.owned_blocks().items()}, "hist": hist},
                       os.path.join(out, f"{case['name']}-rank{rank}.pt"))
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
        blocks.update(torch.load(out / f"{name}-rank{r}.pt", weights_only=False)["blocks"])
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
        for st in (0, 1, 3):
            plans = build_schedule(5, 3, order=order, sweeps=2, staleness=st, task_cost=lambda r, k, s: 1.0 + r)
            for r, plan in enumerate(plans):
                assert len(plan) == 5 * 5
                started = []
                for t, kind, s in plan:  # staleness bound: batch t starts after batch t-1-st is done here
                    if kind == "F":
                        done = {
                            b
                            for b in range(t)
                            if (b, "U" if order != "jacobi" else "A", 2) in plan[: plan.index((t, kind, s))]
                        }
                        assert all(b in done for b in range(t - st)), (order, st, r, t)
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
    ]
    out, _ = _spawn(2, tmp_path, cases)
    _assert_same(_gather_blocks(out, "jac-online", 2), _single(H2, "online", "jacobi"))
    _assert_same(_gather_blocks(out, "jac-batch", 2), _single(H2, "batch", "jacobi"))
    _assert_same(_gather_blocks(out, "td-online", 2), _single(H2, "online", "top-down"))
    # the pipelined run trains (finite, same records on both ranks) but is not the sequential order
    h0 = torch.load(out / "pipe-rank0.pt", weights_only=False)["hist"]
    h1 = torch.load(out / "pipe-rank1.pt", weights_only=False)["hist"]
    assert h0 == [dict(h, wall_s=h0[i]["wall_s"]) for i, h in enumerate(h1)]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in h0) and 0.0 <= h0[-1]["train_acc"] <= 1.0


def test_three_ranks_match_single_process_and_a_killed_rank_is_named_then_resumed(tmp_path):
    ck = str(tmp_path / "ckpt")
    pipe = {"hidden": H2, "mode": "batch", "schedule": "pipeline", "staleness": 1, "checkpoint_every": 2}
    timeout = 5
    # one spawn: the 3-rank equality runs, then a pipelined run whose top rank 2 dies at global step 4
    # (epoch 2): rank 1 sees it die, rank 0 only sees rank 1 stop, and both must name rank 2
    cases = [{"name": "jac3", "hidden": H2, "mode": "online", "schedule": "sync"},
             {"name": "jac3b", "hidden": H2, "mode": "batch", "schedule": "sync"},
             dict(pipe, name="killed", checkpoint=ck, timeout=timeout, fault="rank=2,step=4")]
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
    cases = [dict(pipe, name="resumed", checkpoint=ck, resume=True),
             dict(pipe, name="whole", checkpoint=str(tmp_path / "ckpt-whole"))]
    out2, _ = _spawn(3, tmp_path, cases, tag="resume")
    _assert_same(_gather_blocks(out2, "resumed", 3), _gather_blocks(out2, "whole", 3), tol=0)


def test_nccl_wait_path_times_out_with_the_rank_named():
    """The NCCL branch of the watchdog (poll the work, deadline, name the rank) without a GPU: a fake work
    that never completes, a store that shows no other rank blocked."""
    from blockadmm.distributed import DistributedBlockADMM, RankFailure

    class NeverDone:
        def is_completed(self):
            return False

        def wait(self, timeout=None):
            raise AssertionError("wait() must not be reached before completion")

    class Store(dict):
        def set(self, k, v):
            self[k] = v

        def check(self, keys):
            return all(k in self for k in keys)

        def get(self, k):
            return self[k]

    tr = object.__new__(DistributedBlockADMM)
    tr.comm_backend, tr.timeout, tr.grace, tr.rank, tr.world, tr.step_count = "nccl", 0.2, 0.1, 0, 2, 7
    tr._store = Store()
    t0 = time.monotonic()
    with pytest.raises(RankFailure, match="rank 1 died or hangs") as e:
        tr._wait(NeverDone(), 1, "the gradient from above")
    assert e.value.rank == 1 and time.monotonic() - t0 < 2
    assert json.loads(tr._store["blockadmm/blocked/0"])["peer"] == 1
