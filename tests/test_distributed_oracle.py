"""The distributed trainer against the float64 step oracle (sync schedule), and pipelined training that learns.

One spawn of 2 gloo ranks (test_distributed's launch helper) runs every case:
- sync schedule, one `run_batches` step on the oracle's net and batch (tests/test_step_oracle.py), tables
  seeded through their public API on each rank: the owned blocks' weights, the owned boundaries' tables and
  the per-rank statistics must equal the oracle's (Jacobi, as sync runs by default, and top-down; top-down
  with k_z > 1 is a known difference, marked xfail);
- pipeline schedule with staleness 1 and 2, 6 epochs: every rank's weights move, the training loss falls,
  each rank's optimizers step exactly sweeps x k_w times per batch, and the weights stay within a stated
  distance of the single-process top-down run on the same batches (staleness changes the order, not the
  method).
"""

import copy
from typing import ClassVar

import pytest
import torch
from step_oracle import oracle_step
from test_distributed import _data, _model, _spawn
from test_step_oracle import CONSTRAINTS, D_IN, DUAL_STEP, LR_W, LR_Z, RHO, make_batch, make_blocks, seed_values

from blockadmm.trainer import BlockADMM

ORACLE_CASES = [
    {
        "name": "sync-jacobi-batch-grad",
        "order": "jacobi",
        "mode": "batch",
        "aux_step": "grad",
        "k_z": 2,
        "k_w": 2,
        "unseen": 2,
    },
    {
        "name": "sync-jacobi-online-sign",
        "order": "jacobi",
        "mode": "online",
        "aux_step": "sign",
        "k_z": 1,
        "k_w": 1,
        "unseen": 0,
    },
    {
        "name": "sync-topdown-batch-adam",
        "order": "top-down",
        "mode": "batch",
        "aux_step": "adam",
        "k_z": 1,
        "k_w": 1,
        "unseen": 0,
    },
    # across a rank cut the top-down schedule holds the gradient from above fixed over the k_z steps, where
    # BlockADMM re-evaluates it at the moved z: equal only for k_z = 1 (found by this test; reported, not fixed)
    pytest.param(
        {
            "name": "sync-topdown-batch-grad-kz2",
            "order": "top-down",
            "mode": "batch",
            "aux_step": "grad",
            "k_z": 2,
            "k_w": 1,
            "unseen": 0,
        },
        marks=pytest.mark.xfail(strict=True, reason="distributed top-down: gradient from above fixed over k_z steps"),
    ),
]
SWEEPS, PIPE_EPOCHS, PIPE_BS, PIPE_SWEEPS, PIPE_LR = 2, 6, 16, 2, 1e-2
PIPE_CASES = [{"name": f"pipe-s{s}", "staleness": s} for s in (1, 2)]


class _CountingAdam(torch.optim.Adam):
    """Adam that counts its steps; every instance is listed in MADE (one process = one rank)."""

    MADE: ClassVar[list] = []

    def __init__(self, params, **kw):
        params = list(params)
        super().__init__(params, **kw)
        self.steps, self.param_ids = 0, {id(p) for p in params}
        _CountingAdam.MADE.append(self)

    def step(self, *args, **kw):
        self.steps += 1
        return super().step(*args, **kw)


def _pipe_kw():
    return {"input_shape": (12,), "mode": "batch", "num_samples": 80, "seed": 3, "lr_z": 0.3, "sweeps": PIPE_SWEEPS}


def _worker(rank, world, init, out, cases):
    torch.set_num_threads(1)
    from blockadmm.distributed import DistributedBlockADMM, exit_worker, init_distributed

    init_distributed("gloo", init_method=init, rank=rank, world_size=world, timeout=60)
    for case in (c for c in cases if c["kind"] == "oracle"):
        cons = CONSTRAINTS["nonneg-box"][0]
        tr = DistributedBlockADMM(
            make_blocks(),
            input_shape=(D_IN,),
            mode=case["mode"],
            num_samples=20,
            rho=RHO,
            lr_z=LR_Z,
            sweeps=SWEEPS,
            k_z=case["k_z"],
            k_w=case["k_w"],
            order=case["order"],
            aux_step=case["aux_step"],
            dual_step=DUAL_STEP,
            constraints=cons,
            schedule="sync",
            curvature_cap=False,  # a rank's top boundary has its consumer on the other rank: not capped
            optimizer=lambda p: torch.optim.SGD(p, lr=LR_W),
            partition=[(0, 2), (2, 4)],
        )
        x, y, index = make_batch()
        if case["mode"] == "batch":
            rows, zs, us = seed_values(index, case["unseen"])
            tr.tables.scatter(rows, [zs[k] for k in tr.owned], [us[k] for k in tr.owned])
        (stats,) = tr.run_batches([[x, y, index]], 0)
        tables = None if tr.tables is None else tr.tables.gather(index)
        torch.save(
            {
                "owned": tr.owned,
                "blocks": {k: b.state_dict() for k, b in tr.owned_blocks().items()},
                "stats": stats,
                "tables": tables,
            },
            f"{out}/{case['name']}-rank{rank}.pt",
        )
    for case in (c for c in cases if c["kind"] == "pipe"):
        model, cuts = _model((16, 16, 16))
        tr = DistributedBlockADMM(
            model,
            blocks=cuts,
            schedule="pipeline",
            staleness=case["staleness"],
            optimizer=lambda p: _CountingAdam(p, lr=PIPE_LR),
            **_pipe_kw(),
        )
        before = {k: copy.deepcopy(b.state_dict()) for k, b in tr.owned_blocks().items()}
        first = tr.evaluate(_data())["loss"]
        hist = tr.fit(_data(), PIPE_EPOCHS, batch_size=PIPE_BS, progress=False, eval_train=False)
        last = tr.evaluate(_data())["loss"]
        steps = {
            k: next(o.steps for o in _CountingAdam.MADE if id(next(b.parameters())) in o.param_ids)
            for k, b in tr.owned_blocks().items()
        }
        _CountingAdam.MADE.clear()
        torch.save(
            {
                "before": before,
                "after": {k: b.state_dict() for k, b in tr.owned_blocks().items()},
                "hist": hist,
                "loss": (first, last),
                "steps": steps,
                "step_count": tr.step_count,
            },
            f"{out}/{case['name']}-rank{rank}.pt",
        )
    exit_worker()


def _single_topdown():
    model, cuts = _model((16, 16, 16))
    tr = BlockADMM(
        model, blocks=cuts, order="top-down", optimizer=lambda p: torch.optim.Adam(p, lr=PIPE_LR), **_pipe_kw()
    )
    before = torch.cat([p.detach().flatten() for p in tr.blocks.parameters()])
    tr.fit(_data(), PIPE_EPOCHS, batch_size=PIPE_BS, progress=False)
    return before, torch.cat([p.detach().flatten() for p in tr.blocks.parameters()])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-oracle")
    oracle = [c.values[0] if hasattr(c, "marks") else c for c in ORACLE_CASES]  # pytest.param entries: their dict
    cases = [dict(c, kind="oracle") for c in oracle] + [dict(c, kind="pipe") for c in PIPE_CASES]
    out, _ = _spawn(2, tmp, cases, worker=_worker, limit=120)
    return out


def _load(out, name):
    return [torch.load(out / f"{name}-rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("case", ORACLE_CASES, ids=lambda c: c["name"])
def test_sync_step_matches_oracle(runs, case):
    x, y, index = make_batch()
    blocks = make_blocks()
    z0 = u0 = seen = None
    if case["mode"] == "batch":
        _, zs, us = seed_values(index, case["unseen"])
        seen = torch.zeros(len(index), dtype=torch.bool)
        seen[case["unseen"] :] = True
        z0 = [torch.cat([torch.zeros(case["unseen"], t.shape[1]), t]) for t in zs]
        u0 = [torch.cat([torch.zeros(case["unseen"], t.shape[1]), t]) for t in us]
    want = oracle_step(
        blocks,
        x,
        y,
        z0,
        u0,
        seen,
        rho=RHO,
        lr_z=LR_Z,
        lr_w=LR_W,
        sweeps=SWEEPS,
        k_z=case["k_z"],
        k_w=case["k_w"],
        order=case["order"],
        aux_step=case["aux_step"],
        dual_step=DUAL_STEP,
        constraints=CONSTRAINTS["nonneg-box"][1],
        online=case["mode"] == "online",
        curvature_cap=False,
    )
    assert want["sign_margin"] > 1e-5
    got = _load(runs, case["name"])
    assert sorted(k for g in got for k in g["blocks"]) == [0, 1, 2, 3]
    for g in got:
        for k, sd in g["blocks"].items():
            for (name, p), q in zip(sd.items(), want["blocks"][k].parameters()):
                torch.testing.assert_close(
                    p.double(), q.detach(), rtol=1e-4, atol=2e-5, msg=lambda m, k=k, n=name: f"block {k} {n}: {m}"
                )
        for k in g["owned"]:
            assert g["stats"]["primal"][k] == pytest.approx(want["primal"][k], rel=1e-4, abs=1e-6)
            assert g["stats"]["dual"][k] == pytest.approx(want["dual"][k], rel=1e-4, abs=1e-6)
        if g["tables"] is not None:
            tseen, tz, tu = g["tables"]
            assert bool(tseen.all())
            for j, k in enumerate(g["owned"]):
                torch.testing.assert_close(tz[j].double(), want["z"][k], rtol=1e-4, atol=2e-5)
                torch.testing.assert_close(tu[j].double(), want["u"][k], rtol=1e-4, atol=2e-5)
    assert got[1]["stats"]["head_loss"] == pytest.approx(want["loss"], rel=1e-5)


@pytest.mark.parametrize("case", PIPE_CASES, ids=lambda c: c["name"])
def test_pipelined_training_learns(runs, case):
    got = _load(runs, case["name"])
    n_batches = PIPE_EPOCHS * 5  # 80 samples in batches of 16
    for r, g in enumerate(got):
        assert g["step_count"] == n_batches
        # every optimizer of the rank stepped once per sweep (k_w = 1) of every batch
        assert g["steps"] and all(s == n_batches * PIPE_SWEEPS for s in g["steps"].values()), (r, g["steps"])
        for k, sd in g["after"].items():
            moved = max(float((p - g["before"][k][n]).abs().max()) for n, p in sd.items())
            assert moved > 1e-2, f"rank {r} block {k} did not move ({moved:.2g})"
        first, last = g["loss"]
        assert last < 0.7 * first, f"training loss {first:.3f} -> {last:.3f}"
    assert got[0]["loss"] == got[1]["loss"] and got[0]["hist"][-1]["head_loss"] < got[0]["hist"][0]["head_loss"]
    # staleness reorders the updates; the result stays near the sequential (top-down) run on the same batches:
    # the distance between the two is under half the distance the sequential run moved
    before, seq = _single_topdown()
    pipe = torch.cat([p.flatten() for k in range(4) for g in got if k in g["after"] for p in g["after"][k].values()])
    assert float((pipe - seq).norm()) < 0.5 * float((seq - before).norm())
