"""blockadmm.experiments.training: the one epoch loop and the one backprop baseline of the experiments and the bench."""

import copy
import itertools
from dataclasses import dataclass

import pytest
import torch

from blockadmm.data import IndexedDataset, make_loader
from blockadmm.experiments.training import Backprop, accuracy, make_optimizer, run_backprop, train_epochs
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM, adam


def _data(n=53, d=7, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    return IndexedDataset(X, (X[:, 0] > 0).long() + (X[:, 1] > 1).long(), classes)


@dataclass
class _Stats:
    loss: float
    primal: list


def test_train_epochs_sees_make_loaders_batches_and_averages_the_stats():
    train = _data()
    seen = []

    def step(x, y, index):
        seen.append(index.clone())
        return {"loss": float(index[0]), "pair": [1.0, float(len(index))]}

    hist = train_epochs(step, train, 3, batch_size=10, seed=4, first_epoch=1)
    expected = [b[2] for e in (1, 2) for b in make_loader(train, 10, shuffle=True, seed=4, epoch=e)]
    assert len(seen) == len(expected) == 12 and all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert [h["epoch"] for h in hist] == [2, 3] and all(h["wall_s"] > 0 for h in hist)
    first = [b[2] for b in make_loader(train, 10, shuffle=True, seed=4, epoch=1)]
    assert hist[0]["loss"] == pytest.approx(sum(float(i[0]) for i in first) / 6)
    assert hist[0]["pair"] == pytest.approx([1.0, 53 / 6])  # a list stat stays a list, averaged per entry


def test_train_epochs_takes_dataclass_stats_stops_and_calls_back_outside_the_timing():
    train, calls = _data(), []

    def on_batches(n, wall):
        calls.append((n, wall))

    hist = train_epochs(
        lambda x, y, i: _Stats(2.0, [0.5]),
        train,
        5,
        batch_size=10,
        seed=0,
        every=2,
        on_batches=on_batches,
        evaluate=lambda: {"val_acc": 0.25},
        on_epoch=lambda rec: rec["epoch"] == 2,
    )
    assert len(hist) == 2, "on_epoch returning True stops after that epoch"
    assert hist[-1]["loss"] == 2.0 and hist[-1]["primal"] == [0.5] and hist[-1]["val_acc"] == 0.25
    assert [n for n, _ in calls] == [2, 4, 6] * 2
    assert all(a[1] < b[1] for a, b in itertools.pairwise(calls[:3]))  # training seconds so far grow in an epoch
    with pytest.raises(ValueError, match="on_batches"):
        train_epochs(lambda x, y, i: None, train, 1, batch_size=10, seed=0, every=2)


def test_backprop_equals_the_one_block_trainer_with_the_same_optimizer():
    train = _data(n=64, d=9)
    torch.manual_seed(0)
    model, _ = mlp_blocks(9, [8, 6], 3, "tanh")
    one_block = BlockADMM(copy.deepcopy(model), blocks=1, input_shape=(9,), optimizer=adam(3e-3), sweeps=1, seed=0)
    backprop = Backprop(copy.deepcopy(model), optimizer=adam(3e-3))
    for learner in (one_block, backprop):
        train_epochs(learner.step, train, 2, batch_size=16, seed=0)
    ours = list(backprop.model.parameters())
    theirs = [p for b in one_block.blocks for p in b.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert accuracy(backprop, train) == accuracy(one_block.forward, train)


def test_run_backprop_inits_and_evaluates_in_eval_mode():
    train = _data(n=40)
    torch.manual_seed(1)
    model, _ = mlp_blocks(7, [5], 3, "sigmoid")
    before = model[0].weight.detach().clone()
    modes = []
    hist = run_backprop(
        model,
        train,
        2,
        batch_size=8,
        seed=3,
        optimizer="sgd",
        lr=0.05,
        init="orthogonal",
        activation="sigmoid",
        evaluate=lambda m: modes.append(m.training) or {"acc": accuracy(m, train)},
    )
    assert modes == [False, False] and [h["epoch"] for h in hist] == [1, 2] and 0 <= hist[-1]["acc"] <= 1
    torch.manual_seed(3)
    again, _ = mlp_blocks(7, [5], 3, "sigmoid")
    Backprop(again, optimizer="sgd", lr=0.05, init="orthogonal", activation="sigmoid", seed=3)
    assert not torch.equal(again[0].weight, before)  # re-initialized, reproducibly from the seed
    torch.manual_seed(1)
    fresh, _ = mlp_blocks(7, [5], 3, "sigmoid")
    Backprop(fresh, init="orthogonal", activation="sigmoid", seed=3)
    assert torch.equal(fresh[0].weight, again[0].weight)


def test_make_optimizer_refuses_bad_arguments():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(params, "sgd"), torch.optim.SGD)
    assert make_optimizer(params, "adam").param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(params, "rmsprop")
    with pytest.raises(ValueError, match="must be > 0"):
        make_optimizer(params, "sgd", lr=0.0)
    with pytest.raises(ValueError, match="factory sets its own rate"):
        make_optimizer(params, adam(1e-3), lr=1e-2)
