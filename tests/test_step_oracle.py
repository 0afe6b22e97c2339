"""One full `BlockADMM.step` against the float64 oracle of DESIGN §1 (tests/step_oracle.py).

A 4-block net (3 boundaries, a different penalty on each, one above 1/lr_z so the step-size cap binds, and the
consumer's curvature capping the step of another),
constraints on two boundaries, every order, every auxiliary rule, k_z and k_w above 1, online and batch
mode; in batch mode the tables are seeded through their public API with z far from f(z_prev) and u != 0
(and two rows left unseen, which must start from the forward pass). Compared: the new weights, the tables
written back, the reported loss, primal and dual residuals. SGD inside blocks, so float32 rounding is not
amplified; the trainer runs float32, the oracle float64.
"""

import copy

import pytest
import torch
from step_oracle import oracle_step
from torch import nn

from blockadmm.prox import Prox
from blockadmm.trainer import BlockADMM

D_IN, WIDTHS, N_CLS, M, N_ROWS = 7, (6, 5, 4), 3, 9, 20
RHO = [0.7, 2.5, 1.3]  # 2.5 > 1/LR_Z: the grad rule's step is capped at 1/rho on boundary 1
LR_Z, LR_W, DUAL_STEP = 0.6, 0.2, 0.8
CONSUMER_GAIN = 3.0
CONSTRAINTS = {
    "nonneg-box": ({0: Prox.nonneg(), 2: Prox.box(0.2, 0.7)}, [("nonneg",), None, ("box", 0.2, 0.7)]),
    "l1": ({1: Prox.l1(0.3)}, [None, ("l1", 0.3), None]),
}


def make_blocks(seed=0):
    torch.manual_seed(seed)
    (a, b, c) = WIDTHS
    blocks = [
        nn.Sequential(nn.Linear(D_IN, a), nn.Tanh()),
        nn.Sequential(nn.Linear(a, b), nn.Tanh()),
        nn.Sequential(nn.Linear(b, c), nn.Sigmoid()),
        nn.Linear(c, N_CLS),
    ]
    with torch.no_grad():  # block 1 steeper: its curvature caps boundary 0's step (2 / (rho_0 + rho_1 |W_1|^2))
        blocks[1][0].weight.mul_(CONSUMER_GAIN)
    return blocks


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, D_IN, generator=g)
    y = torch.randint(0, N_CLS, (M,), generator=g)
    index = torch.randperm(N_ROWS, generator=g)[:M]
    return x, y, index


def seed_values(index, unseen, seed=2):
    """Table rows for all rows of the batch but the first `unseen`: z far from the forward values, u != 0."""
    g = torch.Generator().manual_seed(seed)
    seeded = index[unseen:]
    zs = [torch.randn(len(seeded), w, generator=g) for w in WIDTHS]
    us = [0.5 * torch.randn(len(seeded), w, generator=g) for w in WIDTHS]
    return seeded, zs, us


def _seed_tables(tr, index, unseen):
    tr.tables.scatter(*seed_values(index, unseen))
    seen, z, u = tr.tables.gather(index)
    assert seen.tolist() == [False] * unseen + [True] * (M - unseen)
    return seen, z, u


def _flat(blocks):
    return torch.cat([p.detach().double().flatten() for b in blocks for p in b.parameters()])


def run_and_compare(
    *, order, aux_step, mode, k_z, k_w, sweeps=2, constraints="nonneg-box", backend="auto", fused_linear=True, loss=None
):
    blocks = make_blocks()
    cons, specs = CONSTRAINTS[constraints]
    tr = BlockADMM(
        copy.deepcopy(blocks),
        input_shape=(D_IN,),
        mode=mode,
        num_samples=N_ROWS,
        rho=RHO,
        lr_z=LR_Z,
        sweeps=sweeps,
        k_z=k_z,
        k_w=k_w,
        order=order,
        aux_step=aux_step,
        dual_step=DUAL_STEP,
        constraints=cons,
        curvature_cap=True,  # the `fast` preset's step (off by default)
        optimizer=lambda p: torch.optim.SGD(p, lr=LR_W),
        backend=backend,
        fused_linear=fused_linear,
        loss=loss,
    )
    x, y, index = make_batch()
    z0 = u0 = seen = None
    if mode == "batch":
        # a sign or Adam step of a row at rest (z = f(z_prev), u = 0, g = 0 up to rounding) is decided by rounding
        seen, z0, u0 = _seed_tables(tr, index, unseen=2 if aux_step == "grad" else 0)
    stats = tr.step(x, y, index)
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
        sweeps=sweeps,
        k_z=k_z,
        k_w=k_w,
        order=order,
        aux_step=aux_step,
        dual_step=DUAL_STEP,
        constraints=specs,
        online=mode == "online",
    )
    assert want["sign_margin"] > 1e-5, "a sign step of the oracle decided by rounding: choose other seeds"
    if aux_step == "grad":  # the consumer's curvature caps the step on some boundary, not on all
        assert any(want["capped"]) and not all(want["capped"]), want["capped"]
    moved = float((_flat(want["blocks"]) - _flat(blocks)).abs().max())
    assert moved > 1e-3, "the oracle's step must move the weights for the comparison to mean anything"
    torch.testing.assert_close(
        _flat(tr.blocks), _flat(want["blocks"]), rtol=1e-4, atol=2e-5, msg=lambda m: f"weights: {m}"
    )
    assert stats.loss == pytest.approx(want["network_loss"], rel=1e-5, abs=1e-6)
    assert stats.head_loss == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    assert stats.primal_residual == pytest.approx(want["primal"], rel=1e-4, abs=1e-6)
    assert stats.dual_residual == pytest.approx(want["dual"], rel=1e-4, abs=1e-6)
    assert stats.rho == RHO
    if mode == "batch":
        seen, z, u = tr.tables.gather(index)
        assert bool(seen.all())
        for k in range(len(WIDTHS)):
            torch.testing.assert_close(
                z[k].double(), want["z"][k], rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"z{k}: {m}"
            )
            torch.testing.assert_close(
                u[k].double(), want["u"][k], rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"u{k}: {m}"
            )
            assert float(want["u"][k].abs().max()) > 1e-2
    return stats, want


@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("aux_step", ["grad", "sign", "adam"])
@pytest.mark.parametrize("order", ["top-down", "bottom-up", "jacobi"])
def test_step_matches_oracle(order, aux_step, mode):
    """k_w = 2 in batch mode, k_z = 2 but for sign/Adam steps online: there two sign steps from rest can take a
    row back to z = f(z_prev) exactly, where the next sign is decided by rounding (the oracle checks its margin)."""
    k_z = 1 if mode == "online" and aux_step != "grad" else 2
    run_and_compare(order=order, aux_step=aux_step, mode=mode, k_z=k_z, k_w=2 if mode == "batch" else 1)


@pytest.mark.parametrize(
    "order,aux_step,mode", [("top-down", "grad", "batch"), ("jacobi", "sign", "online"), ("bottom-up", "adam", "batch")]
)
def test_step_matches_oracle_unfused_l1_three_sweeps(order, aux_step, mode):
    """The autograd paths (no fused linear blocks, an explicit loss: no closed-form head), an L1 prox, 3 sweeps."""
    run_and_compare(
        order=order,
        aux_step=aux_step,
        mode=mode,
        k_z=1,
        k_w=2,
        sweeps=3,
        constraints="l1",
        fused_linear=False,
        loss=nn.CrossEntropyLoss(),
    )


def _backends():
    from kernel_backends import backend_params

    return [p for p in backend_params() if p.values[1] == "cpu"] + [pytest.param("torch", "cpu", id="torch")]


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize(
    "order,aux_step,mode", [("top-down", "grad", "batch"), ("jacobi", "sign", "batch"), ("bottom-up", "adam", "online")]
)
def test_step_matches_oracle_on_every_backend(backend, device, order, aux_step, mode):
    run_and_compare(order=order, aux_step=aux_step, mode=mode, k_z=2 if mode == "batch" else 1, k_w=1, backend=backend)
