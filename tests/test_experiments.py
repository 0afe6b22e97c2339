"""The experiment commands on tiny sub-grids: files, keys, plots (fast; the full --quick runs are CI's)."""
import json
import math
import os

import pytest
import torch

from blockadmm.experiments import common as C
from blockadmm.experiments import run

TINY = ["--epochs", "1", "--train-size", "200", "--no-progress"]


def _records(out):
    return C.read_results(os.path.join(out, "results.json"))["records"]


def test_depth_tiny(tmp_path):
    out = str(tmp_path / "depth")
    args = ["depth", "--depths", "2", "--activations", "sigmoid", "--methods", ",".join(C.METHODS), "--seeds", "0",
            "--out", out]
    assert run(args + TINY) == 0
    recs = _records(out)
    assert sorted(r["method"] for r in recs) == sorted(C.METHODS)
    for r in recs:
        assert set(C.RECORD_KEYS) <= set(r)
        assert 0.0 <= r["test_acc"] <= 1.0 and r["best_test_acc"] >= r["test_acc"] and r["wall_s"] > 0
        assert len(r["history"][-1]["spread"]) == 2  # one spread per hidden block
    admm = next(r for r in recs if r["method"] == "admm-online")
    assert len(admm["history"][-1]["primal_residual"]) == 2
    assert next(r for r in recs if r["method"] == "admm-nodual")["config"]["dual_step"] == 0.0
    assert admm["config"]["aux_step"] == "sign"  # sigmoid nets get the deep preset
    for png in ("heatmap.png", "diagnostics.png", "curves.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000


def test_depth_records_are_the_library_trained_directly(tmp_path):
    """The experiment's numbers are what plain torch (backprop-sgd, lr 0.1) and BlockADMM with the recorded
    config produce on the same batches from the same init: the records' test accuracies, reproduced exactly
    outside the runner."""
    from torch import nn

    from blockadmm import data
    from blockadmm.models import mlp_blocks
    from blockadmm.trainer import PRESETS, ADMMConfig, BlockADMM

    out = str(tmp_path / "depth")
    assert run(["depth", "--depths", "2", "--activations", "relu", "--methods", "backprop-sgd,admm-online",
                "--seeds", "0", "--out", out] + TINY) == 0
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    recs, meta = {r["method"]: r for r in res["records"]}, res["meta"]
    splits = data.load("mnist5k", val_fraction=0.2)
    train = data.IndexedDataset(splits.train.X[:200], splits.train.Y[:200], splits.num_classes)
    assert (meta["train"], meta["test"]) == (len(train), len(splits.test))

    def test_acc(forward):
        with torch.no_grad():
            return int((forward(splits.test.X).argmax(1) == splits.test.Y).sum()) / len(splits.test)

    torch.manual_seed(0)
    model, _ = mlp_blocks(784, [meta["width"]] * 2, 10, "relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y, _ in data.make_loader(train, meta["batch_size"], shuffle=True, seed=0, epoch=0):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert recs["backprop-sgd"]["test_acc"] == test_acc(model)

    torch.manual_seed(0)
    model, cuts = mlp_blocks(784, [meta["width"]] * 2, 10, "relu")
    admm = recs["admm-online"]
    lr = PRESETS[admm["recipe"]]["weight_lr"]
    tr = BlockADMM(model, blocks=cuts, input_shape=(784,), config=ADMMConfig(**admm["config"]),
                   optimizer=lambda p: torch.optim.Adam(p, lr=lr), seed=0)
    tr.fit(train, 1, batch_size=meta["batch_size"], progress=False)
    assert admm["test_acc"] == test_acc(tr.forward)
    sgd = recs["backprop-sgd"]
    assert (admm["test_acc"], admm["train_acc"]) != (sgd["test_acc"], sgd["train_acc"])


def test_depth_default_grid_has_three_seeds_at_the_claimed_nets():
    from blockadmm.experiments import depth, parser

    args = parser().parse_args(["depth"])
    cells = depth.grid(args)
    seeded = ((8, "sigmoid"), (8, "tanh"), (2, "relu"))
    for net in seeded:
        assert {s for m, d, a, s in cells if (d, a) == net} == {0, 1, 2}
    assert {s for m, d, a, s in cells if (d, a) not in seeded} == {0}
    assert {m for m, *_ in cells} == set(C.METHODS)


def test_same_batches_and_init_across_methods():
    sp = C.load_data()
    r1 = C.Run("backprop-sgd", 2, "relu", 3, 1, sp)
    m1, _ = C.build_mlp(r1, 784, 10)
    m2, _ = C.build_mlp(C.Run("admm-online", 2, "relu", 3, 1, sp), 784, 10)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_binary_tiny_chooses_each_method_on_validation_then_runs_its_seeds(tmp_path):
    from blockadmm.experiments import binary

    out = str(tmp_path / "binary")
    assert run(["binary", "--quick", "--depths", "1", "--seeds", "0,1", "--out", out] + TINY) == 0
    recs = _records(out)
    cands = binary.candidates(quick=True)
    assert {r["label"] for r in recs if r["seed"] == 0} == {c["label"] for c in cands}
    assert {c["init"] for c in cands} == {"default", "xavier"} and {r["init"] for r in recs} <= {"default", "xavier"}
    for method in binary.METHODS:  # seed 1: the method's best seed-0 validation candidate, and only it
        best = max((r for r in recs if r["method"] == method and r["seed"] == 0), key=lambda r: r["val_acc"])
        assert {r["label"] for r in recs if r["method"] == method and r["seed"] == 1} == {best["label"]}
    rows = C.read_results(os.path.join(out, "results.json"))["meta"]["summary"]
    assert {r["method"] for r in rows} == set(binary.METHODS) and all(r["seeds"] == [0, 1] for r in rows)
    assert os.path.getsize(os.path.join(out, "binary.png")) > 1000
    assert run(["binary", "--quick", "--depths", "1", "--seeds", "0,1", "--out", out] + TINY) == 0
    assert len(_records(out)) == len(recs)  # resumed: nothing ran again


def test_binary_xavier_init_reaches_the_binary_blocks():
    from blockadmm.experiments import binary

    sp = C.load_data(train_size=100)
    run_ = C.Run(method="backprop-ste", depth=2, activation="step", seed=0, epochs=1, splits=sp, init="xavier")
    model, _ = binary.binary_mlp(run_)
    lin = model[0].linear
    assert torch.count_nonzero(lin.bias) == 0 and float(lin.weight.detach().abs().max()) <= math.sqrt(6.0 / (784 + 256))


def test_blocks_tiny(tmp_path):
    out = str(tmp_path / "blocks")
    args = ["blocks", "--depth", "2", "--blocks", "1,3", "--orders", "top-down,jacobi", "--activations", "relu",
            "--out", out]
    assert run(args + TINY) == 0
    recs = _records(out)
    assert sorted((r["n_blocks"], r["order"]) for r in recs) == [(1, "-"), (3, "jacobi"), (3, "top-down")]
    assert all(r["time_per_epoch_s"] > 0 for r in recs)
    assert os.path.getsize(os.path.join(out, "blocks.png")) > 1000


def test_convergence_tiny(tmp_path):
    out = str(tmp_path / "convergence")
    assert run(["convergence", "--epochs", "2", "--schedules", "constant,adaptive", "--out", out, "--no-progress"]) == 0
    recs = _records(out)
    assert [r["schedule"] for r in recs] == ["constant", "adaptive"]
    for r in recs:
        ep = r["per_epoch"]
        assert len(ep) == 2 and all(len(e["primal"]) == 2 for e in ep)
        assert all(math.isfinite(x) for x in ep[-1]["dual"])  # defined from the second epoch on
        assert all(math.isfinite(e["lagrangian"]) for e in ep)
        assert all(p > 0 and math.isfinite(p) for e in ep for p in e["primal"])
    assert os.path.getsize(os.path.join(out, "convergence.png")) > 1000


def test_unknown_method_rejected(tmp_path):
    with pytest.raises(SystemExit):
        run(["depth", "--methods", "backprop-magic", "--out", str(tmp_path)] + TINY)


def test_depth_update_replaces_only_the_rerun_cells(tmp_path):
    out = str(tmp_path / "depth")
    base = ["depth", "--depths", "2", "--activations", "sigmoid", "--seeds", "0", "--out", out] + TINY
    assert run(base + ["--methods", "backprop-adam,admm-batch"]) == 0
    first = {r["method"]: r for r in _records(out)}
    assert first["admm-batch"]["recipe"] == "deep-batch" and first["admm-batch"]["config"]["rho"] == 0.25
    assert run(base + ["--methods", "admm-batch", "--rho", "0.5", "--update"]) == 0
    res = C.read_results(os.path.join(out, "results.json"))
    after = {r["method"]: r for r in res["records"]}
    assert set(after) == {"backprop-adam", "admm-batch"} and len(res["records"]) == 2
    assert after["backprop-adam"] == first["backprop-adam"] and after["admm-batch"]["config"]["rho"] == 0.5
    assert "--rho" not in res["meta"]["command"]  # the grid's command is kept
    with pytest.raises(SystemExit, match="--epochs 1"):
        run(
            base[: -len(TINY)]
            + ["--epochs", "2", "--train-size", "200", "--no-progress", "--methods", "admm-batch", "--update"]
        )


