import numpy as np
import pytest
import torch
from torch import nn

from blockadmm.deepfacto import (
    GroupEnergyHead,
    WindowFeatures,
    build_deepfacto,
    class_group_matrix,
    feature_mlp,
    init_basis,
    pointing_game,
)
from blockadmm.experiments.deepfacto_runs import ink_proposals
from blockadmm.nmf import disentangling_score
from blockadmm.pairs import make_pairs
from blockadmm.trainer import BlockADMM


def _digits_like(n=60, seed=0):
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, 28, 28), np.float32)
    imgs[:, 8:20, 10:18] = rng.random((n, 12, 8)) * 0.5 + 0.5
    return imgs, np.arange(n) % 10


def test_pairs_generator_classes_boxes_determinism():
    imgs, labels = _digits_like()
    a = make_pairs(imgs, labels, 50, seed=3, clutter=2)
    b = make_pairs(imgs, labels, 50, seed=3, clutter=2)
    c = make_pairs(imgs, labels, 50, seed=4, clutter=2)
    assert torch.equal(a.X, b.X) and torch.equal(a.boxes, b.boxes) and torch.equal(a.Y, b.Y)
    assert not torch.equal(a.X, c.X)
    assert a.X.shape == (50, 1, 64, 64) and a.Y.shape == (50, 10)
    assert bool((a.classes[:, 0] != a.classes[:, 1]).all())
    assert a.Y.sum(1).tolist() == [2.0] * 50
    assert bool((a.Y[torch.arange(50), a.classes[:, 0]] == 1).all())
    bx = a.boxes
    sep_x = (bx[:, 0, 2] < bx[:, 1, 0]) | (bx[:, 1, 2] < bx[:, 0, 0])
    sep_y = (bx[:, 0, 3] < bx[:, 1, 1]) | (bx[:, 1, 3] < bx[:, 0, 1])
    assert bool((sep_x | sep_y).all())  # boxes do not overlap
    assert int(bx.min()) >= 0 and int(bx.max()) <= 63
    # the dataset yields (x, y, index) and never the boxes
    x, y, i = a[7]
    assert x.shape == (1, 64, 64) and y.shape == (10,) and int(i) == 7


def test_ink_proposals_crop_each_digit_with_the_canvas_labels():
    """On canvases of two solid digits the two densest non-overlapping crops are the two digits (whose boxes
    are not shown to the rule), each crop labelled with both of its canvas's classes."""
    imgs, labels = _digits_like()
    pairs = make_pairs(imgs, labels, 30, seed=1)
    crops = ink_proposals(pairs.X, pairs.Y)
    assert crops.X.shape == (60, 1, 28, 28) and torch.equal(crops.Y, pairs.Y.repeat_interleave(2, 0))
    ink = pairs.X.sum((1, 2, 3))
    # each digit's ink (a 12×8 px block) lies in one of its canvas's two crops: together they hold it all (up to
    # an edge of one digit that the other's crop may also cover)
    got = crops.X.sum((1, 2, 3)).view(30, 2).sum(1)
    torch.testing.assert_close(got, ink, rtol=0.02, atol=0.0)
    assert bool((crops.X.sum((1, 2, 3)) > 0.3 * ink.repeat_interleave(2, 0)).all())  # no crop is background


def test_pointing_game_hits_and_misses():
    maps = torch.zeros(2, 10, 64, 64)
    boxes = torch.tensor([[[0, 0, 10, 10], [40, 40, 60, 60]], [[0, 0, 10, 10], [40, 40, 60, 60]]])
    classes = torch.tensor([[1, 2], [1, 2]])
    maps[0, 1, 5, 5] = 1  # hit
    maps[0, 2, 50, 50] = 1  # hit
    maps[1, 1, 12, 12] = 1  # within ±2 px: hit
    maps[1, 2, 5, 5] = 1  # the other digit: miss
    assert pointing_game(maps, boxes, classes)["pointing"] == pytest.approx(0.75)


def test_short_training_far_above_chance():
    from blockadmm.data import load

    torch.manual_seed(0)
    data = load("digits", val_fraction=0.0)
    feats = feature_mlp(64, (64,))
    blocks = build_deepfacto(feats, (64,), 10, head="energy", per_class=2, n_iter=5, update_epochs=1)
    init_basis(blocks, data.train)
    t = BlockADMM(blocks, input_shape=(64,), constraints={0: "nonneg", 1: "nonneg"}, sweeps=1, dual_step=0.5,
                  optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    t.fit(data.train, 4, batch_size=64, progress=False)
    acc = t.evaluate(data.test)["acc"]
    assert acc > 0.6, acc  # chance is 0.1
    with torch.no_grad():
        H = blocks[1](blocks[0](data.test.X))
    assert bool((H >= 0).all()) and bool((blocks[1].W >= 0).all()), "NMF codes and basis stay non-negative"
    assert disentangling_score(H, data.test.Y, blocks[1].group, 10) > 0.3
    M = class_group_matrix(H, data.test.Y, blocks[1].group, 10)
    assert M.shape == (10, 11) and np.allclose(M.sum(1), 1, atol=1e-4)


def _tiny_blocks(solver="op", seed=0):
    torch.manual_seed(seed)
    feats = feature_mlp(64, (32,))
    return build_deepfacto(feats, (32,), 10, head="energy", per_class=2, n_iter=5, update_epochs=0, solver=solver)


def test_kept_codes_change_nothing():
    """The codes the trainer keeps for the NMF block's input gradient give the same training as solving again,
    and halve the NMF solves: with 2 sweeps a step solves at the 2 points the features take (the forward, the
    dual step's), where solving again for every input gradient at those points made it 4."""
    from blockadmm.data import load, make_loader
    from blockadmm.nmf import NMFBlock

    data = load("digits", val_fraction=0.0)
    runs, solves = [], []
    for kept in (False, True):
        blocks = _tiny_blocks()
        init_basis(blocks, data.train)
        nmf, counted = blocks[1], []
        solve = nmf.encode_rows
        nmf.encode_rows = lambda *a, **kw: counted.append(1) or solve(*a, **kw)
        if not kept:  # the input gradient solves again instead of taking the kept codes
            nmf.admm_input_grad = lambda *a, out=None, b=nmf, **kw: NMFBlock.admm_input_grad(b, *a, **kw)
        t = BlockADMM(blocks, input_shape=(64,), constraints={0: "nonneg", 1: "nonneg"}, sweeps=2, dual_step=0.5,
                      optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
        counted.clear()  # the solve of the trainer's shape check
        for j, (x, y, i) in enumerate(make_loader(data.train, 64, shuffle=True, seed=0, epoch=0)):
            t.step(x, y, i)
            if j == 5:
                break
        runs.append([p.detach().clone() for p in blocks[0].parameters()])
        solves.append(len(counted))
    assert solves == [6 * 4, 6 * 2], solves
    for a, b in zip(*runs):
        assert torch.allclose(a, b, atol=1e-6)


def test_gram_solver_matches_op():
    from blockadmm.nmf import NMFLayer

    torch.manual_seed(0)
    V = torch.rand(40, 70)
    a = NMFLayer(70, n_classes=5, per_class=2, l1=0.05)
    b = NMFLayer(70, n_classes=5, per_class=2, l1=0.05, solver="gram")
    assert torch.allclose(a(V), b(V), atol=1e-5)


def test_mirror_step_keeps_energy_per_position():
    from blockadmm.nmf import NMFBlock

    nmf = NMFBlock(8, n_classes=2, per_class=2)
    z = torch.rand(3, 4, 5, 5)
    e0 = z.sum(1)
    g = torch.zeros_like(z)
    g[:, 0, 0, 0] = -10.0  # a strong push at one position only
    nmf.admm_aux_update(z, torch.zeros_like(z), z.clone(), lambda zz: g, rho=1.0, lr=0.5)
    assert torch.allclose(z.sum(1), e0, rtol=1e-4)


def test_pooled_head_and_multilabel_loss():
    from blockadmm.deepfacto import GroupEnergyHead, multilabel_softmax_loss

    group = torch.tensor([0, 0, 1, 1])
    H = torch.zeros(1, 4, 3, 3)
    H[0, 0, 1, 1] = 5.0  # class 0: all its energy at one position
    H[0, 2] = 5.0 / 9  # class 1: the same energy spread out
    mean_head = GroupEnergyHead(group, 2, pool_r=1.0)
    max_head = GroupEnergyHead(group, 2, pool_r=50.0)
    lm, lx = mean_head(H)[0], max_head(H)[0]
    assert abs(float(lm[0] - lm[1])) < 1e-3  # mean pooling: equal evidence
    assert float(lx[0] - lx[1]) > 1.5  # smooth max: the concentrated class wins
    y = torch.tensor([[1.0, 1.0, 0.0]])
    logits = torch.tensor([[2.0, 2.0, -10.0]])
    assert float(multilabel_softmax_loss(logits, y)) == pytest.approx(np.log(2), abs=1e-3)


def test_window_features_and_maps():
    from blockadmm.deepfacto import WindowFeatures, feature_cnn, window_maps

    torch.manual_seed(0)
    wf = WindowFeatures(feature_cnn(1, flatten=False, normalize=False), stride=2)
    with torch.no_grad():
        single, canvas = wf(torch.rand(2, 1, 28, 28)), wf(torch.rand(2, 1, 64, 64))
    assert single.shape == (2, 64 * 49, 1, 1) and canvas.shape == (2, 64 * 49, 5, 5)
    assert torch.allclose(canvas.norm(dim=1), torch.ones(2, 5, 5), atol=1e-4)  # each window: unit norm
    E = torch.zeros(1, 2, 5, 5)
    E[0, 0, 1, 3] = 2.0  # class 0: window (row 1, col 3), centre (13.5 + 8, 13.5 + 24)
    E[0, 1, 4, 0] = 1.0
    m = window_maps(E, (64, 64), pixel_stride=8)
    am = int(m[0, 0].argmax())
    assert abs(am // 64 - 21.5) <= 1 and abs(am % 64 - 37.5) <= 1
    am = int(m[0, 1].argmax())
    assert abs(am // 64 - 45.5) <= 1 and abs(am % 64 - 13.5) <= 1


def test_pairs_command_writes_metrics_and_figures(tmp_path):
    """`blockadmm deepfacto --data pairs` end to end on a few canvases: the from-scratch curriculum, baselines,
    metrics.json with the pointing and accuracy keys, the figures."""
    import json

    from blockadmm.experiments.deepfacto_cli import main

    out = tmp_path / "pairs"
    args = ["--data", "pairs", "--quick", "--n-train", "120", "--n-test", "40", "--epochs", "1",
            "--curriculum-epochs", "1", "--cam-epochs", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["args"]["curriculum"] == "proposals"
    for key in ("test_pointing", "test_acc_both", "test_cam_pointing", "test_most_ink_pointing"):
        assert 0.0 <= m[key]["mean"] <= 1.0, key
    assert m["test_most_ink_pointing"]["mean"] == pytest.approx(0.5)  # one map for both classes: one digit of two
    for fig in ("basis.png", "class_group_energy.png", "pairs_maps.png"):
        assert (out / fig).stat().st_size > 1000


def _user_features():
    """A user's own feature net: no normalization, ends in ReLU."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())


def test_build_deepfacto_defaults_train_a_users_feature_net():
    """The defaults are the supervised recipe (normalized features, class-specific frozen basis, l1 0.1): given
    basis_from, validation accuracy rises over the epochs instead of falling (with the earlier defaults, a random
    basis updated for 3 epochs, it fell from 0.77 to 0.55 over 8 epochs on this net)."""
    from blockadmm.data import load

    data = load("digits", val_fraction=0.2, split_seed=0)
    blocks = build_deepfacto(_user_features(), (64,), 10, basis_from=(data.train.X[:500], data.train.Y[:500]))
    assert bool(blocks[1].basis_fitted)
    t = BlockADMM(blocks, input_shape=(64,), constraints={0: "nonneg", 1: "nonneg"}, sweeps=1, lr_z=0.5,
                  dual_step=0.5, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    hist = t.fit(data.train, 4, batch_size=64, val=data.val, eval_train=False, progress=False)
    accs = [h["val_acc"] for h in hist]
    assert accs[-1] > 0.9 and accs[-1] >= accs[0], accs


def test_build_deepfacto_refuses_a_basis_it_cannot_train():
    from blockadmm.data import load

    data = load("digits", val_fraction=0.0)
    blocks = build_deepfacto(_user_features(), (64,), 10)  # no basis_from: W stays the random start, frozen
    t = BlockADMM(blocks, input_shape=(64,), constraints={0: "nonneg", 1: "nonneg"}, sweeps=1)
    with pytest.raises(ValueError, match=r"random start.*basis_from"):
        t.fit(data.train, 1, progress=False)
    with pytest.raises(ValueError, match="per-sample shape"):
        build_deepfacto(_user_features(), (32,), 10, basis_from=(data.train.X[:50], data.train.Y[:50]))
    signed = nn.Sequential(nn.Linear(64, 32))  # features with negative values: NMF cannot take them
    with pytest.raises(ValueError, match="non-negative"):
        build_deepfacto(signed, (32,), 10, normalize=False, basis_from=(data.train.X[:50], data.train.Y[:50]))


def test_nmf_layer_fit_basis_is_the_estimators_components():
    from blockadmm.nmf import NMF, NMFLayer

    V = torch.rand(60, 12)
    layer = NMFLayer(12, n_components=4)
    assert not bool(layer.basis_fitted)
    layer.fit_basis(V, init="nndsvda", max_iter=50, tol=0)
    # the estimator starts from scikit-learn's randomized SVD, the layer from the exact one: for 12 features
    # both are exact to rounding, so the fitted bases agree to float32 rounding carried through 50 iterations
    want = NMF(4, init="nndsvda", max_iter=50, tol=0).fit(V.numpy()).components_
    torch.testing.assert_close(layer.W.detach(), torch.as_tensor(want).float().clamp_min(1e-6), rtol=1e-3,
                               atol=1e-4)
    assert bool(layer.basis_fitted)
    H = layer(V)  # codes: V ≈ H W
    assert H.shape == (60, 4) and float((V - H @ layer.W).norm() / V.norm()) < 0.5


def test_build_deepfacto_trains_with_the_trainers_defaults():
    """No constraints, no recipe options: the NMF block's boundaries get their non-negativity from the block."""
    from blockadmm.data import load

    data = load("digits", val_fraction=0.0)
    blocks = build_deepfacto(_user_features(), (64,), 10, basis_from=(data.train.X[:500], data.train.Y[:500]))
    t = BlockADMM(blocks, input_shape=(64,))
    assert [c.kind for c in t.constraints] == ["nonneg", "nonneg"]
    hist = t.fit(data.train, 3, test=data.test, eval_train=False, progress=False)
    assert hist[-1]["test_acc"] > 0.9, [h["test_acc"] for h in hist]


def test_an_nmf_layer_in_a_list_of_blocks_trains_as_its_block_and_keeps_a_users_constraint():
    from blockadmm.nmf import NMFBlock, NMFLayer
    from blockadmm.prox import Prox

    layer = NMFLayer(64, n_classes=10, per_class=2, n_iter=5)
    head = GroupEnergyHead(layer.group, 10)
    t = BlockADMM([_user_features(), layer, head], input_shape=(64,), constraints={0: Prox.box(0.0, 5.0)})
    block = t.blocks[1]
    assert isinstance(block, NMFBlock) and block.W is layer.W and block.update_epochs == 3  # random basis: learned
    assert [c.kind for c in t.constraints] == ["box", "nonneg"]
    before = layer.W.detach().clone()
    t.step(torch.rand(32, 64), torch.randint(0, 10, (32,)))
    assert not torch.equal(before, layer.W)  # the user's layer holds what training did
    layer.init_basis_from(torch.rand(40, 64), torch.arange(40) % 10)
    assert BlockADMM([_user_features(), layer, head], input_shape=(64,)).blocks[1].update_epochs == 0  # fitted: frozen


def test_per_position_codes_of_a_conv_map_are_refused_saying_why_windows_pass():
    from blockadmm.nmf import NMFLayer

    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    layer = NMFLayer(16, n_classes=10, per_class=2)
    with pytest.raises(ValueError, match=r"\(16, 4, 4\).*nn\.Flatten\(\).*WindowFeatures") as e:
        BlockADMM([cnn, layer, GroupEnergyHead(layer.group, 10)], input_shape=(1, 8, 8))
    assert "\n" not in str(e.value)
    windows = WindowFeatures(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()), window=4, stride=2)
    layer = NMFLayer(64, n_classes=10, per_class=2)
    t = BlockADMM([windows, layer, GroupEnergyHead(layer.group, 10, pool_r=4.0)], input_shape=(1, 8, 8))
    assert t.shapes[1] == (20, 3, 3)
