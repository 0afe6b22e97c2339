"""Trainer behaviour: equivalences, resume, the online pitfall, constraints, and clear errors."""

import copy
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from blockadmm import data, ops
from blockadmm.blocks import check_chain, split_balanced, split_sequential
from blockadmm.engine import AutogradTerm, FusedLinearTerm, LinearHeadTerm
from blockadmm.models import mlp_blocks
from blockadmm.prox import Prox
from blockadmm.trainer import ADMMConfig, BlockADMM, NonFiniteError


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def small_mlp(seed=0, hidden=(32, 24), n_blocks=None, activation="relu"):
    torch.manual_seed(seed)
    return mlp_blocks(64, list(hidden), 10, activation, n_blocks)


def weights(tr):
    return torch.cat([p.detach().flatten() for p in tr.blocks.parameters()])


def test_one_block_is_plain_training(digits):
    model, _ = small_mlp()
    ref_model = copy.deepcopy(model)
    tr = BlockADMM(
        model, blocks=1, input_shape=(64,), sweeps=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)
    )
    tr.fit(digits.train, 2, batch_size=50, progress=False)

    opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(2):
        for x, y, _ in data.make_loader(digits.train, 50, shuffle=True, seed=0, epoch=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(ref_model(x), y).backward()
            opt.step()
    ref_weights = torch.cat([p.detach().flatten() for p in ref_model.parameters()])
    torch.testing.assert_close(weights(tr), ref_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["online", "batch"])
@pytest.mark.parametrize("order", ["top-down", "bottom-up", "jacobi"])
def test_trains_far_above_chance(digits, mode, order):
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,), mode=mode, num_samples=len(digits.train), order=order)
    hist = tr.fit(digits.train, 3, batch_size=50, test=digits.test, progress=False)
    assert hist[-1]["test_acc"] > 0.7, hist[-1]
    assert len(hist[-1]["primal_residual"]) == 2


def test_hidden_blocks_learn_in_online_mode_with_one_sweep(digits):
    """DESIGN §1's pitfall: if the weight step ran before the auxiliary step, z = f(z_in) and u = 0 would
    give every hidden block an exactly zero gradient, and with one sweep only the last block would learn."""
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,), sweeps=1)
    before = [copy.deepcopy(b.state_dict()) for b in tr.blocks]
    x, y, _ = next(iter(data.make_loader(digits.train, 50, shuffle=True, seed=0, epoch=0)))
    tr.step(x, y)
    for k, (b, sd) in enumerate(zip(tr.blocks, before)):
        moved = max(float((p - sd[name]).abs().max()) for name, p in b.state_dict().items())
        assert moved > 1e-5, f"block {k} did not move in its first step"


@pytest.mark.parametrize(
    "activation,order,mode,k_z,k_w",
    [
        ("tanh", "top-down", "online", 1, 1),
        ("relu", "top-down", "batch", 1, 1),
        ("sigmoid", "bottom-up", "online", 2, 1),
        ("leaky_relu", "jacobi", "online", 1, 2),
        ("relu", "jacobi", "batch", 2, 2),
        ("tanh", "bottom-up", "batch", 1, 2),
    ],
)
def test_fused_linear_path_matches_autograd(digits, monkeypatch, activation, order, mode, k_z, k_w):
    """The fused path, including the gradients it takes from kept forwards (the weight step of block 0, the
    first gradient through each hidden block), against plain autograd on every block."""
    model, cuts = small_mlp(activation=activation, hidden=(32, 24, 16))
    # SGD: Adam would amplify the last-bit differences of near-zero gradients into visible ones
    kw = {
        "blocks": cuts,
        "input_shape": (64,),
        "mode": mode,
        "num_samples": len(digits.train),
        "order": order,
        "k_z": k_z,
        "k_w": k_w,
        "sweeps": 3,
        "optimizer": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    }
    a = BlockADMM(copy.deepcopy(model), fused_linear=True, **kw)
    b = BlockADMM(copy.deepcopy(model), fused_linear=False, **kw)
    assert isinstance(a.engine.terms[0], FusedLinearTerm) and a.engine.terms[0].activation == activation
    assert type(b.engine.terms[0]) is AutogradTerm and type(b.engine.terms[-1]) is AutogradTerm
    assert isinstance(a.engine.terms[-1], LinearHeadTerm)  # the closed-form linear + cross-entropy head
    op_rows = []  # rows of x passed to the fused op: block 0's (64 columns) come only from forwards not kept
    real_op = ops.linear_block_fwd_bwd
    monkeypatch.setattr(
        ops, "linear_block_fwd_bwd", lambda x, *args, **kws: (op_rows.append(x.shape[1]), real_op(x, *args, **kws))[1]
    )
    for x, y, i in list(data.make_loader(digits.train, 64, shuffle=True, seed=1, epoch=0))[:5]:
        sa, sb = a.step(x, y, i), b.step(x, y, i)
        assert sa.loss == pytest.approx(sb.loss, rel=1e-4)
    torch.testing.assert_close(weights(a), weights(b), rtol=1e-4, atol=1e-5)
    # block 0's input never changes within a step: its first weight step per sweep reuses the kept forward
    assert op_rows.count(64) == 5 * 3 * (k_w - 1)


@pytest.mark.parametrize("fused", [True, False])
def test_online_skips_the_last_dual_update_without_changing_training(digits, monkeypatch, fused):
    """Online, the last sweep's dual update would be dropped with the mini-batch, so the step skips it (and
    its forwards); batch mode on first visits (z from the forward, u from zero, as online) keeps it. The two
    must train identically."""
    model, cuts = small_mlp(hidden=(32, 24, 16))
    kw = {
        "blocks": cuts,
        "input_shape": (64,),
        "num_samples": len(digits.train),
        "fused_linear": fused,
        "optimizer": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    }
    online = BlockADMM(copy.deepcopy(model), mode="online", **kw)
    batch = BlockADMM(copy.deepcopy(model), mode="batch", **kw)
    calls = {}
    for name, tr in (("online", online), ("batch", batch)):
        for term in tr.engine.terms[:-1]:
            real = term.forward
            monkeypatch.setattr(
                term,
                "forward",
                lambda inp, real=real, name=name, **kw: (calls.update({name: calls.get(name, 0) + 1}), real(inp, **kw))[
                    1
                ],
            )
    # every row a first visit
    for x, y, i in list(data.make_loader(digits.train, 64, shuffle=True, seed=1, epoch=0))[:4]:
        so, sb = online.step(x, y, i), batch.step(x, y, i)
        assert so.loss == pytest.approx(sb.loss, rel=1e-6)
        assert all(0 <= p < 10 for p in so.primal_residual)  # the residual of the last auxiliary step
    torch.testing.assert_close(weights(online), weights(batch), rtol=1e-6, atol=1e-7)
    # per step: the initial forward of the 3 hidden blocks, then their dual forwards in sweeps 1 and 2 only
    assert calls["online"] == 4 * (3 + 2 * 3)


@pytest.mark.parametrize("storage", ["device", "memmap"])
@pytest.mark.parametrize("mode", ["online", "batch"])
def test_resume_is_bit_identical(digits, tmp_path, mode, storage):
    if mode == "online" and storage == "memmap":
        pytest.skip("online mode has no tables")

    def make(tag):
        model, cuts = small_mlp()
        return BlockADMM(
            model,
            blocks=cuts,
            input_shape=(64,),
            mode=mode,
            num_samples=len(digits.train),
            table_storage=storage,
            table_dir=str(tmp_path / f"tables-{tag}"),
            rho_schedule="adaptive",
            rho_check_every=5,
        )

    whole = make("whole")
    whole.fit(digits.train, 3, batch_size=64, progress=False)

    ckpt = str(tmp_path / "ckpt.pt")
    first = make("first")
    first.fit(digits.train, 2, batch_size=64, progress=False, checkpoint=ckpt)
    first.fit(digits.train, 3, batch_size=64, progress=False)  # runs on, changing the live tables
    resumed = make("resumed")
    resumed.load(ckpt)
    assert resumed.epoch == 2
    resumed.fit(digits.train, 3, batch_size=64, progress=False)
    assert torch.equal(weights(whole), weights(resumed))
    assert whole.rho == resumed.rho
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    if mode == "batch":
        for tw, tr_ in zip(whole.tables.z + whole.tables.u, resumed.tables.z + resumed.tables.u):
            assert torch.equal(tw, tr_)


def test_checkpoint_is_never_overwritten_with_nan(digits, tmp_path):
    """(Atomicity against a save that dies part-way: tests/test_checkpoint.py.)"""
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,))
    ckpt = str(tmp_path / "c.pt")
    tr.fit(digits.train, 1, batch_size=64, progress=False, checkpoint=ckpt)
    good = Path(ckpt).read_bytes()
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    with torch.no_grad():
        tr.blocks[1][0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to overwrite"):
        tr.save(ckpt)
    assert Path(ckpt).read_bytes() == good


def test_nan_in_training_names_block_and_step_and_keeps_checkpoint(digits, tmp_path):
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,))
    ckpt = str(tmp_path / "c.pt")
    tr.fit(digits.train, 1, batch_size=64, progress=False, checkpoint=ckpt)
    good = Path(ckpt).read_bytes()
    with torch.no_grad():
        tr.blocks[1][0].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"block 1 at step \d+.*last good checkpoint") as e:
        tr.fit(digits.train, 2, batch_size=64, progress=False, checkpoint=ckpt)
    assert "Block 1's weights are non-finite" in str(e.value)
    assert Path(ckpt).read_bytes() == good


def test_nan_in_input_is_reported(digits):
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,), mode="batch", num_samples=len(digits.train))
    x, y, idx = next(iter(data.make_loader(digits.train, 32, shuffle=False, seed=0, epoch=0)))
    x = x.clone()
    x[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match="input batch itself"):
        tr.step(x, y, idx)
    assert not bool(tr.tables.seen.any()), "tables must not be written by a failed step"


class _InputRecorder(nn.Module):
    """A block that records every input it is called on (the auxiliary variable below it)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_constraints_hold_on_auxiliary_variables(digits, mode):
    """Online (no table, and no dual step in the last sweep to re-apply the prox): the inputs of the last weight
    step, the last call of each block, satisfy the constraints; batch mode: the tables. Block 0 ends in tanh, so
    its forward values break the non-negativity constraint."""
    torch.manual_seed(0)
    blocks = [
        nn.Sequential(nn.Linear(64, 32), nn.Tanh()),
        _InputRecorder(nn.Sequential(nn.Linear(32, 24), nn.Tanh())),
        _InputRecorder(nn.Linear(24, 10)),
    ]
    tr = BlockADMM(
        blocks,
        input_shape=(64,),
        mode=mode,
        num_samples=len(digits.train),
        constraints={0: Prox.nonneg(), 1: Prox.box(0.0, 0.5)},
        lr_z=2.0,
        sweeps=2,
    )
    if mode == "online":
        x, y, _ = next(iter(data.make_loader(digits.train, 64, shuffle=True, seed=0, epoch=0)))
        blocks[1].inputs.clear(), blocks[2].inputs.clear()  # the chain check's calls
        tr.step(x, y)
        assert float(blocks[1].inputs[0].min()) < 0  # the forward pass, before any auxiliary step
        z0, z1 = blocks[1].inputs[-1], blocks[2].inputs[-1]
        assert float(z0.min()) >= 0 and float(z1.min()) >= 0 and float(z1.max()) <= 0.5
        assert float((z0 - blocks[1].inputs[0]).abs().max()) > 0.1  # the constraint moved it
    else:
        tr.fit(digits.train, 1, batch_size=64, progress=False)
        assert bool(tr.tables.seen.all())
        assert float(tr.tables.z[0].min()) >= 0
        assert float(tr.tables.z[1].min()) >= 0 and float(tr.tables.z[1].max()) <= 0.5


def test_adaptive_rho_grows_and_rescales_duals(digits):
    model, cuts = small_mlp()
    tr = BlockADMM(
        model,
        blocks=cuts,
        input_shape=(64,),
        mode="batch",
        num_samples=len(digits.train),
        rho_schedule="adaptive",
        rho_check_every=3,
        rho_stall=0.0,
        rho_max=8.0,  # stall=0: always "stalled"
    )
    (x, y, idx), (x2, y2, idx2) = list(data.make_loader(digits.train, 64, shuffle=False, seed=0, epoch=0))[:2]
    for _ in range(5):
        tr.step(x, y, idx)
    u_before = tr.tables.u[0][idx].clone()
    tr.step(x2, y2, idx2)  # 6th step, on other rows: the second window ends and rho doubles
    assert tr.rho == [2.0, 2.0]
    # scaled duals u = y/rho: every stored u is halved when rho doubles, including rows not in the batch
    torch.testing.assert_close(tr.tables.u[0][idx], u_before / 2)
    assert u_before.abs().sum() > 0
    for _ in range(12):
        tr.step(x, y, idx)
    assert tr.rho == [8.0, 8.0], "rho is capped at rho_max"


# ------------------------------------------------------------------ blocks
def test_split_sequential_and_balanced():
    model = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 5))
    assert [len(b) for b in split_sequential(model, [2, 4])] == [2, 2, 1]
    blocks = split_balanced(model, 2)
    assert len(blocks) == 2 and isinstance(blocks[0][-1], nn.ReLU), "activations stay with their layer"
    with pytest.raises(ValueError, match="cannot cut"):
        split_balanced(model, 4)


def test_block_shape_mismatch_names_both_blocks():
    blocks = [nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Sequential(nn.Linear(12, 4))]
    with pytest.raises(
        ValueError, match=r"block 0 \(Sequential.*outputs per-sample shape \(16,\).*block 1 \(Sequential"
    ):
        BlockADMM(blocks, input_shape=(8,))
    assert check_chain([nn.Linear(8, 16), nn.Linear(16, 3)], (8,)) == [(16,), (3,)]


# ------------------------------------------------------------------ bad input
def test_batch_mode_errors(digits):
    model, cuts = small_mlp()
    with pytest.raises(ValueError, match="num_samples"):
        BlockADMM(model, blocks=cuts, input_shape=(64,), mode="batch")
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,), mode="batch", num_samples=100)
    x, y = torch.rand(4, 64), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="batch mode needs the sample index"):
        tr.step(x, y)
    with pytest.raises(IndexError, match="outside the tables' 0..99"):
        tr.step(x, y, torch.tensor([0, 1, 2, 100]))
    with pytest.raises(ValueError, match="built for 100"):
        tr.fit(digits.train, 1, progress=False)


def test_label_and_input_shape_errors():
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9"):
        tr.step(torch.rand(3, 64), torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match="per-sample shape"):
        tr.step(torch.rand(3, 63), torch.tensor([0, 1, 2]))


def test_unknown_backend_in_trainer():
    model, cuts = small_mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,), backend="warp-drive")
    with pytest.raises(ops.BackendUnavailable, match="unknown backend 'warp-drive'"):
        tr.step(torch.rand(3, 64), torch.tensor([0, 1, 2]))


def test_config_errors():
    with pytest.raises(ValueError, match="order must be one of"):
        ADMMConfig(order="sideways")
    model, cuts = small_mlp()
    with pytest.raises(TypeError, match="unknown argument 'lr_w'"):
        BlockADMM(model, blocks=cuts, input_shape=(64,), lr_w=0.1)
    with pytest.raises(ValueError, match="rho has 3 values but the model has 2"):
        BlockADMM(model, blocks=cuts, input_shape=(64,), rho=[1, 1, 1])


def test_resume_with_mismatched_tables_is_an_error(digits, tmp_path):
    model, cuts = small_mlp()
    tr = BlockADMM(
        model,
        blocks=cuts,
        input_shape=(64,),
        mode="batch",
        num_samples=len(digits.train),
        table_storage="memmap",
        table_dir=str(tmp_path / "t"),
    )
    ckpt = str(tmp_path / "c.pt")
    tr.fit(digits.train, 1, batch_size=64, progress=False, checkpoint=ckpt)
    other_model, other_cuts = small_mlp(hidden=(32, 20))  # a different width at boundary 1
    with pytest.raises(ValueError):
        other = BlockADMM(
            other_model, blocks=other_cuts, input_shape=(64,), mode="batch", num_samples=len(digits.train)
        )
        other.load(ckpt)
    # same model, but the saved table files were replaced by ones of another size: the manifest catches it
    import numpy as np

    from blockadmm.engine.checkpoint import CheckpointError

    (snapshot,) = tmp_path.glob("c.pt.tables-*")
    np.save(str(snapshot / "z1.npy"), np.zeros((5, 24), np.float32))
    fresh = BlockADMM(
        small_mlp()[0],
        blocks=cuts,
        input_shape=(64,),
        mode="batch",
        num_samples=len(digits.train),
        table_storage="memmap",
        table_dir=str(tmp_path / "t2"),
    )
    with pytest.raises(CheckpointError, match="c.pt: its table file .*z1.npy has 608 bytes, the manifest says"):
        fresh.load(ckpt)


def test_autograd_blocks_reuse_kept_forwards():
    """A block's forward runs once per input and weights: online, top-down, S sweeps, three autograd blocks (an
    explicit loss keeps the head off the closed form). Block 0: its forward per sweep (the first is the initial
    one), its weight step on the kept graph; block 1: the initial or dual-step forward (whose graph gives block 0's
    boundary its input gradient) and the weight step's; the head: the same, its first input gradient from the
    initial forward."""
    torch.manual_seed(0)
    calls = [0, 0, 0]

    class Counted(nn.Sequential):
        def forward(self, x):
            calls[self.k] += 1
            return super().forward(x)

    blocks = [
        Counted(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        Counted(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten()),
        Counted(nn.Linear(64, 10)),
    ]
    for k, b in enumerate(blocks):
        b.k = k
    sweeps = 3
    tr = BlockADMM(blocks, input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(), sweeps=sweeps)
    assert [type(t) for t in tr.engine.terms] == [AutogradTerm] * 3
    calls[:] = [0, 0, 0]
    tr.step(torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,)))
    assert calls == [sweeps, 2 * sweeps, 2 * sweeps]
