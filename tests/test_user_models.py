"""Networks and data as a PyTorch user brings them (issue 29): modes, single-use iterables, (X, y) tuples, dtypes and
autocast, a scalar output, plain-weights export."""

import warnings

import pytest
import torch
from torch import nn

from blockadmm import BlockADMM, data


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", val_fraction=0.1)


def mlp(d=64, out=10, dtype=None):
    blocks = [nn.Sequential(nn.Linear(d, 48), nn.ReLU()), nn.Sequential(nn.Linear(48, 48), nn.Tanh()),
              nn.Linear(48, out)]
    return [b.to(dtype) for b in blocks] if dtype is not None else blocks


def toy(n=120, d=8):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g)
    return X, (X[:, 0] > 0).long()


# ------------------------------------------------------------------ modes
def test_inference_is_eval_mode_without_grad_and_fit_restores_the_mode():
    X, y = toy()
    blocks = [nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5)), nn.Linear(16, 2)]
    tr = BlockADMM(blocks, input_shape=(8,))
    for b in blocks:
        b.eval()
    tr.fit([(X, y)], 2, progress=False)
    assert [b.training for b in blocks] == [False, False]  # as before fit
    for b in blocks:
        b.train()
    tr.fit([(X, y)], 3, progress=False)
    assert [b.training for b in blocks] == [True, True]
    out = tr(X)
    assert torch.equal(out, tr(X)) and torch.equal(out, tr.predict(X))  # dropout off: one answer
    assert not out.requires_grad and [b.training for b in blocks] == [True, True]  # modes put back


# ------------------------------------------------------------------ data forms
def test_a_generator_trains_one_epoch_then_is_refused_in_one_line_with_the_history_kept(tmp_path):
    X, y = toy()
    tr = BlockADMM(mlp(8, 2), input_shape=(8,))
    batches = ((X[i:i + 40], y[i:i + 40]) for i in range(0, len(X), 40))
    with pytest.warns(UserWarning, match="single-use iterator"):  # eval_train cannot read it again
        with pytest.raises(ValueError, match="single-use iterator") as e:
            tr.fit(batches, 3, progress=False, checkpoint=str(tmp_path / "ck.pt"))
    msg = str(e.value)
    assert "\n" not in msg and "function that returns an epoch's batches" in msg and "trainer.history" in msg
    assert len(tr.history) == 1 and tr.epoch == 1 and (tmp_path / "ck.pt").exists()


def test_a_function_that_makes_an_epochs_batches_trains_every_epoch():
    X, y = toy()
    tr = BlockADMM(mlp(8, 2), input_shape=(8,))
    calls = []

    def batches():
        calls.append(1)
        return ((X[i:i + 40], y[i:i + 40]) for i in range(0, len(X), 40))

    hist = tr.fit(batches, 3, progress=False)
    assert len(hist) == 3 and all("train_acc" in h for h in hist)
    assert len(calls) == 6  # each epoch's batches, then the training-set evaluation


def test_x_y_tuples_as_train_val_and_test(digits):
    X, y = digits.train.X, digits.train.Y
    tr = BlockADMM(mlp(), input_shape=(64,), mode="batch", num_samples=len(X))
    hist = tr.fit((X, y), 2, val=(digits.val.X, digits.val.Y), test=(digits.test.X.numpy(), digits.test.Y.numpy()),
                  progress=False)
    assert {"train_acc", "val_acc", "test_acc"} <= set(hist[-1]) and hist[-1]["test_acc"] > 0.5
    with pytest.raises(ValueError, match="one row per sample"):
        tr.evaluate((X, y[:-1]))


def test_the_epoch_progress_bar_has_a_total(digits, monkeypatch):
    import tqdm.auto

    totals = []
    real = tqdm.auto.tqdm

    def spy(*args, **kwargs):
        totals.append(kwargs.get("total"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", spy)
    tr = BlockADMM(mlp(), input_shape=(64,))
    tr.fit(digits.train, 1, batch_size=100, progress=False, eval_train=False)
    tr.fit([(digits.val.X, digits.val.Y)] * 3, 2, progress=False, eval_train=False)
    assert totals == [-(-len(digits.train) // 100), 3]


# ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", ["online", "batch"])
def test_float64_and_bfloat16_models_train(digits, dtype, mode):
    torch.manual_seed(0)
    tr = BlockADMM(mlp(dtype=dtype), input_shape=(64,), mode=mode, num_samples=len(digits.train))
    hist = tr.fit(digits.train, 3 if mode == "online" else 5, test=digits.test, progress=False, eval_train=False)
    assert all(p.dtype == dtype for p in tr.blocks.parameters())
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"] and hist[-1]["test_acc"] > 0.85, hist[-1]
    assert tr(digits.test.X[:5]).dtype == dtype


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_autocast_bf16_on_cpu_trains_as_float32_does(digits, mode):
    """The whole step under torch.autocast: the forwards in bf16, the ops in their tensors' dtypes, and each weight
    step seen by the next forward (autocast caches weight casts for as long as its region lasts)."""
    accs = []
    for enabled in (False, True):
        torch.manual_seed(0)
        blocks = [nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten()),
                  nn.Sequential(nn.Linear(384, 48), nn.ReLU()), nn.Linear(48, 10)]
        tr = BlockADMM(blocks, input_shape=(64,), mode=mode, num_samples=len(digits.train))
        with torch.autocast("cpu", torch.bfloat16, enabled=enabled):
            hist = tr.fit(digits.train, 3 if mode == "online" else 5, test=digits.test, progress=False,
                          eval_train=False)
        accs.append(hist[-1]["test_acc"])
    assert accs[0] > 0.85 and accs[1] > accs[0] - 0.03, accs


# ------------------------------------------------------------------ outputs and export
def test_a_scalar_output_per_sample_regression_trains():
    X, _ = toy(200)
    y = X[:, :3].sum(1)
    tr = BlockADMM([nn.Sequential(nn.Linear(8, 32), nn.ReLU()), nn.Sequential(nn.Linear(32, 1), nn.Flatten(0))],
                   input_shape=(8,), loss=nn.MSELoss())
    hist = tr.fit((X, y), 15, batch_size=50, progress=False)
    assert tr.shapes[-1] == () and tr(X).shape == (200,)
    assert "acc" not in hist[-1] and hist[-1]["train_loss"] < 0.3 * float(y.var())


def test_save_weights_is_a_plain_state_dict_of_the_model_given(tmp_path, digits):
    seq = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    tr = BlockADMM(seq, blocks=[2], input_shape=(64,))
    tr.fit(digits.train, 1, progress=False, eval_train=False)
    tr.save_weights(tmp_path / "w.pt")
    sd = torch.load(tmp_path / "w.pt", weights_only=True)
    fresh = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(digits.test.X), tr(digits.test.X))
    listed = mlp()
    BlockADMM(listed, input_shape=(64,)).save_weights(tmp_path / "l.pt")
    nn.Sequential(*mlp()).load_state_dict(torch.load(tmp_path / "l.pt", weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(torch.load(tmp_path / "l.pt", weights_only=True)) == set(nn.Sequential(*listed).state_dict())


# ------------------------------------------------------------------ skips across a cut, constraints that kill
def test_a_skip_connection_across_a_cut_computes_the_residual_and_trains(digits):
    from blockadmm.blocks import AddSkip, CarrySkip

    torch.manual_seed(0)
    f, g = nn.Sequential(nn.Linear(48, 48), nn.ReLU()), nn.Sequential(nn.Linear(48, 48), nn.ReLU())
    stem = nn.Sequential(nn.Linear(64, 48), nn.ReLU())
    blocks = [stem, CarrySkip(f), AddSkip(g, skip_channels=48), nn.Linear(48, 10)]
    x = digits.test.X[:7]
    with torch.no_grad():
        h = stem(x)
        assert torch.equal(blocks[2](blocks[1](h)), h + g(f(h)))
    tr = BlockADMM(blocks, input_shape=(64,))
    assert tr.shapes[1] == (96,)  # the skip input travels in boundary 1's auxiliary variable
    hist = tr.fit(digits.train, 4, test=digits.test, progress=False, eval_train=False)
    assert hist[-1]["test_acc"] > 0.8


def test_a_constraint_that_zeroes_a_hidden_boundary_is_a_warning(digits):
    from blockadmm.prox import Prox

    torch.manual_seed(0)
    tr = BlockADMM(mlp(), input_shape=(64,), constraints={0: Prox.l1(0.1)})
    with pytest.warns(UserWarning, match=r"constraint l1 on boundary 0 leaves \d+% .* at zero"):
        tr.fit(digits.train, 4, progress=False, eval_train=False)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockADMM(mlp(), input_shape=(64,), constraints={0: Prox.l1(0.001), 1: "nonneg"}).fit(
            digits.train, 4, progress=False, eval_train=False)


def test_the_ops_take_float64_on_the_torch_backend_in_float64():
    from blockadmm import ops
    from blockadmm.ops import BackendUnavailable

    g = torch.Generator().manual_seed(0)
    z, u, a = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(3))
    z0, u0 = z.clone(), u.clone()
    res = ops.aux_dual_update(z, u, a, None, rho=1.0, lr=1e-9)  # auto: the torch reference, in float64
    zn = z0 - 1e-9 * (z0 - a + u0)
    assert torch.equal(z, zn) and float(res) == pytest.approx(float((zn - a).square().sum()))
    x, w = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    loss, gw, _, _, out = ops.linear_block_fwd_bwd(x, w, None, a[:4, :5].contiguous(), u0[:4, :5].contiguous(),
                                                   rho=1.0, activation="identity")
    assert out.dtype == gw.dtype == torch.float64 and torch.equal(out, x @ w.T) and loss.dtype == torch.float32
    with pytest.raises(BackendUnavailable, match="float32"):
        ops.aux_dual_update(z, u, a, None, rho=1.0, lr=0.1, backend="cpu")
