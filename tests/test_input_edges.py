"""Edges at the ops and the command line: non-finite sums of the C++ op, ops' scalars, aliasing, 0 rows
and negative V, num_samples, --seed, and options that do nothing in the chosen mode."""

import math

import pytest
import torch

from blockadmm import cli, ops
from blockadmm.engine.checkpoint import NonFiniteError
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM

CPU_BACKENDS = [b for b in ("torch", "cpu") if ops.status().get(b) is None]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_loss_beyond_float32_is_inf_on_every_backend_and_the_trainer_names_block_and_step(backend):
    # each r^2 fits float32 and so does their sum; (rho/2m) * sum does not (rho = 100, m = 20)
    x, w = torch.ones(20, 4), torch.full((3, 4), 5.6e17)
    zero = torch.zeros(20, 3)
    loss = ops.linear_block_fwd_bwd(x, w, None, zero, zero, rho=100.0, activation="identity", backend=backend)[0]
    assert loss.dtype == torch.float32 and math.isinf(float(loss))
    engine = _trainer(backend=backend).engine
    state = engine.new_batch(x, torch.zeros(20, dtype=torch.long), None, step=7, epoch=2)
    with pytest.raises(NonFiniteError, match="non-finite loss in block 1 at step 7 .epoch 2."):
        engine.check_finite([torch.tensor(0.0), loss], "loss", state)


def _trainer(**kw):
    torch.manual_seed(0)
    model, cuts = mlp_blocks(4, [3], 2)
    return BlockADMM(model, blocks=cuts, input_shape=(4,), **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_linear_block_with_0_rows_returns_empty_results(backend):
    x, w, b = torch.zeros(0, 5), torch.randn(3, 5), torch.randn(3)
    loss, gw, gb, gi, out = ops.linear_block_fwd_bwd(
        x, w, b, torch.zeros(0, 3), torch.zeros(0, 3), rho=1.0, backend=backend
    )
    assert float(loss) == 0.0 and torch.equal(gw, torch.zeros(3, 5)) and torch.equal(gb, torch.zeros(3))
    assert gi.shape == (0, 5) and out.shape == (0, 3)


BAD_SCALARS = [
    ("aux_dual_update", {"rho": math.nan}, "rho"),
    ("aux_dual_update", {"rho": -1.0}, "rho"),
    ("aux_dual_update", {"lr": math.inf}, "lr"),
    ("aux_dual_update", {"lr": -0.1}, "lr"),
    ("aux_dual_update", {"dual_step": math.nan}, "dual_step"),
    ("nmf_mu_update", {"eps": math.nan}, "eps"),
    ("nmf_mu_update", {"eps": 0.0}, "eps"),
    ("nmf_mu_update", {"l1": math.nan}, "l1"),
    ("nmf_mu_update", {"l2": -1.0}, "l2"),
    ("linear_block_fwd_bwd", {"rho": math.nan}, "rho"),
    ("linear_block_fwd_bwd", {"rho": -2.0}, "rho"),
]


def _call(op, backend="torch", alias=False, **kw):
    g = torch.Generator().manual_seed(0)
    if op == "aux_dual_update":
        z = torch.randn(6, 5, generator=g)
        u = z if alias else torch.randn(6, 5, generator=g)
        return ops.aux_dual_update(
            z, u, torch.randn(6, 5, generator=g), **{"rho": 1.0, "lr": 0.1, **kw}, backend=backend
        )
    if op == "nmf_mu_update":
        return ops.nmf_mu_update(
            torch.rand(6, 5, generator=g),
            torch.rand(6, 2, generator=g),
            torch.rand(2, 5, generator=g),
            **kw,
            backend=backend,
        )
    z = torch.randn(6, 3, generator=g)
    return ops.linear_block_fwd_bwd(
        torch.randn(6, 5, generator=g),
        torch.randn(3, 5, generator=g),
        None,
        z,
        z,
        **{"rho": 1.0, **kw},
        backend=backend,
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op, kw, name", BAD_SCALARS)
def test_ops_refuse_non_finite_or_out_of_range_scalars(op, kw, name, backend):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        _call(op, backend, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_aux_dual_update_refuses_aliased_in_place_outputs(backend):
    with pytest.raises(ValueError, match="z and u share memory"):
        _call("aux_dual_update", backend, alias=True)
    z = torch.randn(6, 5)
    with pytest.raises(ValueError, match="share memory"):  # a view of z as the target a
        ops.aux_dual_update(z, torch.zeros(6, 5), z[:], rho=1.0, lr=0.1, backend=backend)
    buf = torch.zeros(2, 6, 5)  # disjoint halves of one buffer are separate tensors: accepted
    ops.aux_dual_update(buf[0], buf[1], torch.randn(6, 5), rho=1.0, lr=0.1, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nmf_mu_update_refuses_negative_or_nan_v(backend):
    H, W = torch.rand(6, 2), torch.rand(2, 5)
    for bad in (-0.5, math.nan):
        V = torch.rand(6, 5)
        V[2, 3] = bad
        with pytest.raises(ValueError, match="V has negative or NaN entries"):
            ops.nmf_mu_update(V, H, W, backend=backend)
    assert (H >= 0).all() and (W >= 0).all()
    with pytest.raises(ValueError, match="H and W share memory"):
        ops.nmf_mu_update(torch.rand(2, 2), H[:2], H[:2], backend=backend)


@pytest.mark.parametrize("num_samples", [-1, 0, 2.7, True, "60"])
def test_num_samples_must_be_a_whole_number(num_samples):
    with pytest.raises(ValueError, match=f"num_samples must be a whole number >= 1 .*got {num_samples!r}"):
        _trainer(mode="batch", num_samples=num_samples)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", str(2**70)], "argument --seed: expected a seed: an integer in 0..4294967295"),
        (["--seed", "-1"], "argument --seed: expected a seed"),
        (["--staleness", "2"], "error: --staleness applies to runs on several processes; this is a one-process run"),
        (["--schedule", "sync"], "error: --schedule applies to runs on several processes; this is a one-process"),
        (["--timeout", "5"], "error: --timeout applies to runs on several processes; this is a one-process run"),
        (["--nproc", "2", "--schedule", "sync", "--staleness", "1"], "error: --staleness bounds the mini-batches"),
        (["--table-storage", "memmap"], "error: --table-storage memmap places batch mode's tables; --mode online"),
        (["--table-storage", "pinned", "--mode", "online"], "error: --table-storage pinned places batch mode's"),
    ],
)
def test_options_that_do_nothing_or_overflow_name_the_flag(argv, message, tmp_path, capsys):
    code = _cli(["train", "--data", "digits", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "metrics.json").exists()


def _cli(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's usage error
        return e.code
