import itertools

import pytest
import torch
from torch import nn

from blockadmm.nmf import NMFBlock, NMFLayer, disentangling_score, group_energy
from blockadmm.trainer import BlockADMM


def _data(n=40, d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = torch.rand(n, k, generator=g)
    W = torch.rand(k, d, generator=g)
    return H @ W


def test_codes_nonneg_and_error_non_increasing():
    V = _data()
    layer = NMFLayer(12, n_components=5, n_iter=1)
    H = layer.warm_start(V)
    errs = [float(layer.loss(V, H))]
    for _ in range(30):
        H = layer.encode_rows(V, H, n_iter=1)
        assert bool((H >= 0).all())
        errs.append(float(layer.loss(V, H)))
    assert all(b <= a * (1 + 1e-5) + 1e-6 for a, b in itertools.pairwise(errs))
    assert errs[-1] < errs[0]


def test_shapes_2d_and_4d_and_per_position():
    layer = NMFLayer(6, n_classes=3, per_class=2, n_shared=1, n_iter=5)
    assert layer.n_components == 7 and layer.group.tolist() == [0, 0, 1, 1, 2, 2, -1]
    H2 = layer(torch.rand(4, 6))
    assert H2.shape == (4, 7) and bool((H2 >= 0).all())
    V4 = torch.rand(3, 6, 5, 4)
    H4 = layer(V4)
    assert H4.shape == (3, 7, 5, 4) and bool((H4 >= 0).all())
    # per position: the same as factorizing the position's feature vector alone
    torch.testing.assert_close(H4[1, :, 2, 3], layer(V4[1:2, :, 2, 3])[0], rtol=1e-5, atol=1e-6)
    assert layer.reconstruct(H4).shape == V4.shape
    assert group_energy(H4, layer.group, 3).shape == (3, 3, 5, 4)


def test_negative_input_error_says_where():
    layer = NMFLayer(4, n_components=2, name="my NMF")
    V = torch.rand(3, 4)
    V[2, 1] = -0.5
    with pytest.raises(ValueError, match=r"my NMF.*negative.*sample 2.*ReLU"):
        layer(V)
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.rand(2, 4, 3))


def test_zero_rows_give_zero_codes():
    layer = NMFLayer(4, n_components=3)
    V = torch.rand(5, 4)
    V[1] = 0
    H = layer(V)
    assert bool(torch.isfinite(H).all()) and float(H[1].abs().sum()) == 0.0
    assert float(layer(torch.zeros(2, 4, 3, 3)).abs().sum()) == 0.0


def test_group_energy_and_score():
    group = torch.tensor([0, 0, 1, 1, -1])
    H = torch.tensor([[1.0, 1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 3.0, 1.0, 0.0]])
    assert group_energy(H, group, 2).tolist() == [[2.0, 0.0], [0.0, 4.0]]
    assert disentangling_score(H, torch.tensor([0, 1]), group, 2) == pytest.approx((0.5 + 1.0) / 2)


def test_block_updates_W_then_freezes():
    blk = NMFBlock(6, n_components=3, update_epochs=1)
    V = torch.rand(8, 6)
    Ht = torch.rand(8, 3)
    W0 = blk.W.clone()
    blk.admm_set_epoch(0)
    blk.admm_local_step(V, Ht, torch.zeros_like(Ht), rho=1.0, y=None, loss_fn=None)
    assert not torch.equal(blk.W, W0) and bool((blk.W >= 0).all())
    blk.admm_set_epoch(1)
    assert blk.frozen
    W1 = blk.W.clone()
    blk.admm_local_step(V, Ht, torch.zeros_like(Ht), rho=1.0, y=None, loss_fn=None)
    assert torch.equal(blk.W, W1)


def _aux_objective(z, a, u, g, rho):
    """The code boundary's auxiliary objective with a linear consuming term <g, z>: per row, summed."""
    return 0.5 * rho * (z - a + u).square().sum() + (g * z).sum()


@pytest.mark.parametrize("steps", [1, 2])
def test_mirror_step_is_the_formula_with_the_autograd_gradient(steps):
    """z <- z * exp(clip(-lr * grad / mean|grad|)), each row rescaled to its energy, with grad the autograd gradient
    of (rho/2)|z - a + u|^2 + the consuming term (here <g, z>), re-evaluated at every step."""
    torch.manual_seed(3)
    blk = NMFBlock(4, n_components=6, eg_steps=steps, eg_lr=0.7, eg_clip=1.5)
    z, a = torch.rand(5, 6) + 0.1, torch.rand(5, 6)
    u, g = 0.3 * torch.randn(5, 6), torch.randn(5, 6)
    rho = 1.7
    want = z.double().clone()
    energy = want.sum(1, keepdim=True)
    for _ in range(steps):
        zg = want.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_aux_objective(zg, a.double(), u.double(), g.double(), rho), zg)
        step = (-0.7 * grad / grad.abs().mean(1, keepdim=True)).clamp(-1.5, 1.5)
        want = want * step.exp() + 1e-6 * energy / 6
        want = want * energy / want.sum(1, keepdim=True)
    calls = []
    blk.admm_aux_update(z, u, a, lambda zz: (calls.append(zz.clone()), g)[1], rho=rho, lr=0.5)
    assert len(calls) == steps
    torch.testing.assert_close(z.double(), want, rtol=1e-5, atol=1e-6)


def test_mirror_step_goes_downhill():
    """A small mirror step lowers the objective it is a step on, on every row."""
    torch.manual_seed(4)
    blk = NMFBlock(4, n_components=6, eg_steps=1, eg_lr=0.02)
    z, a = torch.rand(32, 6) + 0.1, torch.rand(32, 6)
    u, g = 0.3 * torch.randn(32, 6), torch.randn(32, 6)
    before = [float(_aux_objective(z[i], a[i], u[i], g[i], 1.3)) for i in range(32)]
    blk.admm_aux_update(z, u, a, lambda zz: g, rho=1.3, lr=0.5)
    after = [float(_aux_objective(z[i], a[i], u[i], g[i], 1.3)) for i in range(32)]
    assert all(b < a for a, b in zip(before, after)), [round(b - a, 5) for a, b in zip(before, after)]


def test_input_grad_is_the_gradient_of_the_block_term_through_the_linearized_codes():
    """admm_input_grad = -rho (z + u - H(V)) W: the autograd gradient in V of the block's own term
    (rho/2)|z + u - H|^2 with the codes linearized at V, H(V + dV) = H(V) + dV W^T."""
    torch.manual_seed(5)
    blk = NMFBlock(7, n_components=4, n_iter=20)
    V = torch.rand(6, 7)
    z, u = torch.rand(6, 4), 0.2 * torch.randn(6, 4)
    rho = 2.3
    H0 = blk(V).double()
    W = blk.W.detach().double()
    V64 = V.double().requires_grad_(True)
    H_lin = H0 + (V64 - V.double()) @ W.T
    (want,) = torch.autograd.grad(0.5 * rho * (z.double() + u.double() - H_lin).square().sum(), V64)
    got = blk.admm_input_grad(V, z, u, rho=rho, y=None, loss_fn=None)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_input_grad_step_moves_the_codes_toward_the_target():
    """A small step of the features against admm_input_grad brings the solved codes H(V) closer to z + u."""
    torch.manual_seed(6)
    blk = NMFBlock(7, n_components=4, n_iter=50)
    V = torch.rand(16, 7) + 0.2
    target = blk(V) + 0.3 * torch.randn(16, 4)
    z, u = target.clamp_min(0), torch.zeros(16, 4)
    g = blk.admm_input_grad(V, z, u, rho=1.0, y=None, loss_fn=None)
    def term(features):
        return float((z + u - blk(features)).square().sum())

    assert term((V - 0.01 * g).clamp_min(0)) < term(V)


def test_mirror_step_keeps_energy_and_sign():
    blk = NMFBlock(4, n_components=6, eg_steps=3)
    z = torch.rand(5, 6) + 0.1
    energy = z.sum(1).clone()
    u = torch.zeros_like(z)
    g = torch.randn(5, 6)
    blk.admm_aux_update(z, u, z.clone(), lambda zz: g, rho=1.0, lr=0.5)
    assert bool((z >= 0).all())
    torch.testing.assert_close(z.sum(1), energy)


def _assert_nonneg(trainer, ds):
    nmf = trainer.blocks[1]
    assert float(nmf.W.min()) >= 0, f"NMF basis went negative: min {float(nmf.W.min())}"
    with torch.no_grad():
        H = nmf(trainer.blocks[0](ds.X))
    assert float(H.min()) >= 0
    if trainer.tables is not None:
        assert float(trainer.tables.z[1].min()) >= 0 and float(trainer.tables.z[0].min()) >= 0


def _tiny_trainer(mode, n=60):
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    nmf = NMFBlock(16, n_classes=2, per_class=2, n_iter=5, update_epochs=1)
    head = nn.Linear(4, 2)
    X = torch.rand(n, 8)
    from blockadmm.data import IndexedDataset

    ds = IndexedDataset(X, (X[:, 0] > 0.5).long())
    kw = {"num_samples": n} if mode == "batch" else {}
    t = BlockADMM([feats, nmf, head], input_shape=(8,), mode=mode, constraints={0: "nonneg", 1: "nonneg"}, **kw)
    return t, ds


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_checkpoint_resume_with_nmf_block(tmp_path, mode):
    t, ds = _tiny_trainer(mode)
    t.fit(ds, 2, batch_size=20, progress=False)
    ref_W = t.blocks[1].W.clone()
    ref_hist = [h["loss"] for h in t.history]

    t2, _ = _tiny_trainer(mode)
    ck = str(tmp_path / "ck.pt")
    t2.fit(ds, 1, batch_size=20, progress=False, checkpoint=ck)
    t3, _ = _tiny_trainer(mode)
    t3.load(ck)
    assert t3.engine.optimizers[1] is None and int(t3.blocks[1].epoch) == 0
    t3.fit(ds, 2, batch_size=20, progress=False)
    torch.testing.assert_close(t3.blocks[1].W, ref_W)
    for trained in (t, t2, t3):  # every configuration trained here: basis, codes and code tables non-negative
        _assert_nonneg(trained, ds)
    assert [h["loss"] for h in t3.history] == pytest.approx(ref_hist)
    assert t3.blocks[1].frozen  # update_epochs=1: frozen in epoch 2
