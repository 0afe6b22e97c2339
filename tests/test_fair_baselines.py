"""The init option, the fair-baseline grid, the robustness experiment and the unrolled-NMF baseline (issue 17)."""

import argparse
import math

import pytest
import torch
from torch import nn

from blockadmm.experiments import common as C
from blockadmm.experiments import deepfacto_unrolled as DU
from blockadmm.experiments import fair, grid, robustness
from blockadmm.models import INIT_GAINS, init_weights, mlp, mlp_blocks
from blockadmm.nmf import NMFLayer


# ------------------------------------------------------------------------------------------ init
def test_xavier_init_uses_the_activation_gain_on_hidden_layers_and_gain_1_on_the_logits():
    torch.manual_seed(0)
    model = mlp(300, [200, 200], 10, "sigmoid", init="xavier")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for lin, gain in zip(linears, [INIT_GAINS["sigmoid"]] * 2 + [1.0]):
        fan_out, fan_in = lin.weight.shape
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        top = float(lin.weight.detach().abs().max())
        assert 0.95 * bound < top <= bound  # uniform on the whole interval  # uniform on the whole interval
        assert torch.count_nonzero(lin.bias) == 0


def test_kaiming_orthogonal_and_explicit_gain():
    torch.manual_seed(1)
    model = mlp(500, [400], 10, "relu", init="kaiming")
    std = float(model[0].weight.detach().std())
    assert abs(std - math.sqrt(2.0 / 500)) < 0.05 * math.sqrt(2.0 / 500)
    model = mlp(64, [48], 10, "tanh")
    init_weights(model, "orthogonal", "tanh", gain=0.5)
    w = model[0].weight  # 48 x 64: orthogonal rows of norm 0.5
    assert torch.allclose(w @ w.T, 0.25 * torch.eye(48), atol=1e-5)
    out = model[2].weight  # the logits layer: gain 1
    assert torch.allclose(out @ out.T, torch.eye(10), atol=1e-5)


def test_default_init_is_pytorchs_and_bad_init_is_refused():
    torch.manual_seed(3)
    a = mlp(20, [8], 3, "relu")
    torch.manual_seed(3)
    b, _ = mlp_blocks(20, [8], 3, "relu", init="default")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="unknown init 'glorot'"):
        mlp(20, [8], 3, init="glorot")
    with pytest.raises(ValueError, match="gain must be > 0"):
        init_weights(a, "xavier", gain=0.0)


def test_cli_train_takes_init():
    from blockadmm.cli import build_network, main

    with pytest.raises(SystemExit):
        main(["train", "--init", "glorot"])
    args = argparse.Namespace(arch="mlp", hidden=[16], activation="sigmoid", blocks=None, data="digits", init="xavier")
    model, _ = build_network(args, (64,), 10)
    bound = INIT_GAINS["sigmoid"] * math.sqrt(6.0 / (64 + 16))
    assert float(model[0].weight.detach().abs().max()) <= bound and torch.count_nonzero(model[0].bias) == 0


# ------------------------------------------------------------------------------------------ fair grid
def test_candidates_cover_inits_optimizers_rates_and_presets():
    cands = fair.candidates("sigmoid", 8)
    labels = [c["label"] for c in cands]
    assert len(labels) == len(set(labels))
    bp = [c for c in cands if c["family"] == "backprop"]
    assert {c["init"] for c in bp} == {"xavier", "orthogonal"}
    assert {c["method"] for c in bp} == {"backprop-sgd", "backprop-adam"}
    admm = [c for c in cands if c["family"] == "block-admm"]
    assert {c["overrides"]["preset"] for c in admm} == {"default", "deep", "fast"}
    assert any(c["overrides"].get("lr_z") == 0.01 and c["init"] == "xavier" for c in admm)  # deep re-tuned on gain 4
    assert {c["init"] for c in fair.candidates("relu", 2)} == {"default", "kaiming", "orthogonal"}


def _row(family, accs, depth=8, act="sigmoid"):
    return {
        "depth": depth,
        "activation": act,
        "family": family,
        "config": family,
        "test_accs": accs,
        "mean_test": sum(accs) / len(accs),
        "worst_test": min(accs),
    }


def test_comparison_takes_the_strongest_baseline_and_needs_a_gap_above_the_seed_spread():
    rows = [
        _row("backprop", [0.80, 0.81, 0.82]),
        _row("local-greedy", [0.85, 0.85, 0.86]),
        _row("block-admm", [0.90, 0.89, 0.91]),
    ]
    (c,) = fair.comparisons(rows)
    assert c["baseline"] == "local-greedy" and c["verdict"] == "win"
    assert c["gap"] == pytest.approx(0.90 - (0.85 + 0.85 + 0.86) / 3)
    rows[2] = _row("block-admm", [0.99, 0.80, 0.91])  # a 4.7-point mean gap, but seeds spread over 19 points
    c = fair.comparisons(rows)[0]
    assert c["gap"] > 0.03 and c["seed_spread"] == pytest.approx(0.19) and c["verdict"] == "match"
    rows[2] = _row("block-admm", [0.85, 0.85, 0.85])  # 0.3 points below: a match
    assert fair.comparisons(rows)[0]["verdict"] == "match"
    rows[2] = _row("block-admm", [0.70, 0.71, 0.72])
    assert fair.comparisons(rows)[0]["verdict"] == "loss"
    chance = [_row(f, [0.10, 0.10, 0.11]) for f in fair.FAMILIES]
    assert fair.comparisons(chance)[0]["verdict"] == "no-training"
    one_seed = [_row("backprop", [0.80]), _row("block-admm", [0.90])]
    assert fair.comparisons(one_seed)[0]["verdict"] == "match"  # ahead, but one seed is no win


def test_choose_picks_the_best_validation_of_seed_0():
    recs = [
        {"family": "backprop", "seed": 0, "val_acc": 0.5, "label": "a"},
        {"family": "backprop", "seed": 1, "val_acc": 0.99, "label": "b"},
        {"family": "backprop", "seed": 0, "val_acc": 0.7, "label": "c"},
        {"family": "block-admm", "seed": 0, "val_acc": 0.9, "label": "d"},
    ]
    assert fair.choose(recs, "backprop")["label"] == "c"
    assert fair.choose(recs, "local-greedy") is None


@pytest.fixture(scope="module")
def tiny_splits():
    return C.load_data(train_size=200)


def test_fair_grid_selects_then_runs_the_seeds_and_resumes(tmp_path, tiny_splits):
    info = {"epochs": 1, "train": len(tiny_splits.train)}
    results = fair.ResultsFile(str(tmp_path), "fair", info, fair.record_key, "2xsigmoid.json")
    fair.run_net(results, 2, "sigmoid", 1, tiny_splits, quick=True)
    recs = results.records
    first = [r for r in recs if r["seed"] == 0]
    assert len(first) == len(fair.candidates("sigmoid", 2, quick=True))
    assert all(r["init"] in ("default", "xavier") and "label" in r for r in recs)
    for family in fair.FAMILIES:  # the chosen candidate of each family, and only it, ran seed 1
        chosen = fair.choose(recs, family)
        seeded = {r["label"] for r in recs if r["seed"] == 1 and r["family"] == family}
        assert seeded == {chosen["label"]}
    again = fair.ResultsFile(str(tmp_path), "fair", info, fair.record_key, "2xsigmoid.json")
    fair.run_net(again, 2, "sigmoid", 1, tiny_splits, quick=True)
    assert len(again.records) == len(recs)  # nothing re-run
    with pytest.raises(SystemExit, match="another protocol"):
        fair.ResultsFile(str(tmp_path), "fair", {"epochs": 2, "train": 200}, fair.record_key, "2xsigmoid.json")
    rows = fair.summary_rows(recs)
    assert {r["family"] for r in rows} == set(fair.FAMILIES) and all(len(r["test_accs"]) == 2 for r in rows)


def test_32_layers_run_3_seeds_and_retune_the_recipe_from_both_inits():
    assert fair.SEED0_ONLY_FROM > 32
    for act, preset in (("sigmoid", "deep"), ("tanh", "default")):
        admm = [c for c in fair.candidates(act, 32) if c["family"] == "block-admm"]
        for init in ("default", "xavier"):
            mine = [c["overrides"] for c in admm if c["init"] == init]
            assert mine[1]["lr_z"] == 0.1 and mine[2]["rho"] == 0.25
            assert all(o["preset"] == preset for o in mine[:3])
    assert not any("lr_z" in c["overrides"] or "rho" in c["overrides"] for c in fair.candidates("sigmoid", 16))


def test_a_results_file_of_another_batch_size_is_refused(tmp_path):
    info = {"epochs": 1, "train": 200}
    fair.ResultsFile(str(tmp_path), "fair", info, fair.record_key, "2xrelu.json").write()
    with pytest.raises(SystemExit, match="another protocol.*1/200/100, this is 1/200/20"):
        fair.ResultsFile(str(tmp_path), "fair", {**info, "batch_size": 20}, fair.record_key, "2xrelu.json")


def test_grid_units_cover_every_net_gain_and_part():
    units = grid.units("OUT", quick=False)
    argvs = [u["argv"] for u in units]
    nets = {a[a.index("--nets") + 1] for a in argvs if a[0] == "fair"}
    assert nets == {f"{d}x{a}" for d, a in fair.DEFAULT_NETS}
    gains = {float(a[a.index("--gains") + 1]) for a in argvs if "--gains" in a}
    assert gains == set(robustness.GAINS)
    settings = next(u for u in units if "noise,budget,batch" in u["argv"])
    assert settings["after"] == ["fair 2xrelu", "fair 8xsigmoid"]
    assert {u["name"] for u in units} >= set(settings["after"])
    assert any(a[0] == "deepfacto_unrolled" for a in argvs)
    assert all("--quick" in u["argv"] for u in grid.units("OUT", quick=True))


def test_grid_counts_the_runs_a_resumed_grid_did_not_time(tmp_path):
    info = {"epochs": 1, "train": 200}
    results = fair.ResultsFile(str(tmp_path / "fair"), "fair", info, fair.record_key, "2xrelu.json")
    for seed in (0, 1):
        results.add({"activation": "relu", "depth": 2, "label": "x", "seed": seed, "history": [{"epoch": 1}]})
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "full.json").write_text('{"records": [1, 2, 3]}')
    assert grid.runs_done(str(tmp_path)) == {"fair/2xrelu.json": 2}


def test_grid_retries_a_failed_unit_once_and_skips_the_units_that_wait_on_it(tmp_path):
    log = open(tmp_path / "log", "w")
    todo = [
        {"name": "bad", "argv": ["fair", "--nets", "8sigmoid"], "log": log},
        {"name": "waits", "after": ["bad"], "argv": ["fair", "--quick"], "log": log},
    ]
    reports = []
    grid.run_units(todo, 2, reports.append)
    bad, waits = todo
    assert bad["rc"] != 0 and bad["tries"] == 2 and waits["rc"] == "not run: bad failed"
    assert [u["name"] for u in reports] == ["bad", "waits"]
    log.close()
    assert "not DEPTHxACTIVATION" in (tmp_path / "log").read_text()


def test_parse_nets_refuses_a_bad_net():
    assert fair.parse_nets("8xsigmoid,16xtanh") == [(8, "sigmoid"), (16, "tanh")]
    with pytest.raises(SystemExit, match="not DEPTHxACTIVATION"):
        fair.parse_nets("8sigmoid")


# ------------------------------------------------------------------------------------------ robustness
def test_label_noise_flips_the_fraction_to_another_class(tiny_splits):
    noisy = robustness.noisy(tiny_splits, 0.3)
    changed = noisy.train.Y != tiny_splits.train.Y
    assert 0.15 < float(changed.float().mean()) < 0.45
    assert torch.equal(noisy.val.Y, tiny_splits.val.Y) and torch.equal(noisy.test.Y, tiny_splits.test.Y)
    assert torch.equal(robustness.noisy(tiny_splits, 0.3).train.Y, noisy.train.Y)  # fixed by its seed


def test_map_runs_each_gain_and_plots(tmp_path, tiny_splits):
    info = {"epochs": 1, "train": 200}
    files = {
        g: fair.ResultsFile(str(tmp_path), "robustness", info, robustness.key, f"map-g{g:g}.json") for g in (0.5, 4.0)
    }
    robustness.run_map(files, tiny_splits, 1, quick=True, bar=None)
    records = robustness.read_all(str(tmp_path))
    rows = robustness.map_rows(records)
    assert {(r["gain"], r["method"]) for r in rows} == {(g, m) for g in (0.5, 4.0) for m in robustness.MAP_ROWS}
    assert all(len(r["test_accs"]) == 2 for r in rows)  # seeds 0 and 1 of every chosen candidate
    assert all(r["init_gain"] == r["gain"] for r in records) and len(files[0.5].records) == len(records) // 2
    robustness.plot_map(rows, str(tmp_path / "map.png"))
    assert (tmp_path / "map.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no fair-grid results for 8xsigmoid"):
        robustness.fair_choices(str(tmp_path), 8, "sigmoid")


def test_small_batch_part_runs_each_fair_choice_with_its_batch_size(tmp_path, tiny_splits, monkeypatch):
    from blockadmm.experiments import training

    info = {"epochs": 1, "train": 200}
    fair_dir = str(tmp_path / "fair")
    fair.run_net(
        fair.ResultsFile(fair_dir, "fair", info, fair.record_key, "2xsigmoid.json"),
        2,
        "sigmoid",
        1,
        tiny_splits,
        quick=True,
    )
    sizes, real = [], training.make_loader
    monkeypatch.setattr(training, "make_loader", lambda ds, bs, **kw: sizes.append(bs) or real(ds, bs, **kw))
    results = fair.ResultsFile(str(tmp_path / "settings"), "robustness", info, robustness.key)
    robustness.run_choices(results, (2, "sigmoid"), tiny_splits, 1, fair_dir, None, {"part": "batch"}, batch_size=20)
    assert set(sizes) == {20}
    rows = robustness.part_rows(results.records, "batch")
    assert {r["family"] for r in rows} == set(fair.FAMILIES) and all(len(r["test_accs"]) == 3 for r in rows)
    again = fair.ResultsFile(str(tmp_path / "again"), "robustness", info, robustness.key)
    robustness.run_choices(again, (2, "sigmoid"), tiny_splits, 1, fair_dir, None, {"part": "b"}, reselect=True)
    for family, cands in robustness.trained_candidates(fair_dir, 2, "sigmoid").items():
        mine = [r for r in again.records if r["family"] == family]
        assert {r["label"] for r in mine if r["seed"] == 0} == {c["label"] for c in cands}
        best = max((r for r in mine if r["seed"] == 0), key=lambda r: r["val_acc"])
        assert {r["label"] for r in mine if r["seed"] > 0} == {best["label"]}


# ------------------------------------------------------------------------------------------ unrolled NMF
def test_unrolled_nmf_equals_the_solve_and_backprops_through_its_last_update():
    torch.manual_seed(0)
    nmf = NMFLayer(13, n_classes=3, per_class=2, n_iter=4, l1=0.05, solver="gram")
    V = torch.rand(7, 13, requires_grad=True)
    H = DU.UnrolledNMF(nmf)(V)
    assert torch.allclose(H, nmf(V.detach()), rtol=1e-5, atol=1e-6)
    weights = torch.rand_like(H)
    (H * weights).sum().backward()
    # reference: the last update with the first three (no autograd) as constants
    H3 = nmf.encode_rows(V.detach(), n_iter=3)
    W = nmf.W.detach()
    Vr = V.detach().clone().requires_grad_(True)
    ref = H3 * (Vr @ W.T) / (H3 @ (W @ W.T) + 0.05 + nmf.eps)
    (ref * weights).sum().backward()
    assert torch.allclose(V.grad, Vr.grad, rtol=1e-5, atol=1e-7) and float(V.grad.abs().sum()) > 0
    conv = DU.UnrolledNMF(nmf)(torch.rand(2, 13, 3, 4))  # conv features: codes per position
    assert conv.shape == (2, 6, 3, 4)


def test_the_benchs_best_backprop_row_is_the_fair_grids_choice():
    import os

    from bench import bench_end_to_end as bench

    path = os.path.join(os.path.dirname(__file__), "..", "results", "experiments", "fair", "2xrelu.json")
    chosen = fair.choose(C.read_results(path)["records"], "backprop")
    assert chosen["method"] == "backprop-adam"
    assert (chosen["lr"], chosen["init"]) == (bench.BACKPROP_FAST_LR, bench.BACKPROP_FAST_INIT)
