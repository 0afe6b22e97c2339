"""Trainer options for deep nets: auxiliary-step rules and named presets."""
import copy

import pytest
import torch
from torch import nn

from blockadmm.models import mlp_blocks
from blockadmm.trainer import PRESETS, ADMMConfig, BlockADMM


def _data(n=64, d=20, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :c].argmax(1)).long()
    return x, y


def test_defaults_unchanged():
    c = ADMMConfig()
    values = (c.rho, c.lr_z, c.sweeps, c.k_z, c.order, c.aux_step, c.dual_step)
    assert values == (1.0, 0.3, 3, 1, "top-down", "grad", 1.0)
    assert ADMMConfig.preset("default") == ADMMConfig()


def test_deep_preset_values_and_overrides():
    c = ADMMConfig.preset("deep")
    values = (c.aux_step, c.lr_z, c.order, c.sweeps, c.k_z, c.rho, c.dual_step)
    assert values == ("sign", 0.3, "top-down", 3, 1, 1.0, 1.0)
    assert ADMMConfig.preset("deep", sweeps=5).sweeps == 5
    with pytest.raises(ValueError, match="unknown preset"):
        ADMMConfig.preset("nope")
    with pytest.raises(TypeError):
        ADMMConfig.preset("deep", bogus=1)


def test_trainer_preset_sets_config_and_weight_lr():
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [16, 16], 3, "sigmoid")
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), preset="deep", sweeps=2)
    assert tr.config.aux_step == "sign" and tr.config.sweeps == 2
    assert all(o.param_groups[0]["lr"] == PRESETS["deep"].weight_lr for o in tr.optimizers)
    # an explicit optimizer wins
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), preset="deep",
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    assert all(isinstance(o, torch.optim.SGD) for o in tr.optimizers)
    with pytest.raises(ValueError, match="either preset"):
        BlockADMM(model, blocks=cuts, input_shape=(20,), preset="deep", config=ADMMConfig())


def test_unknown_aux_step_rejected():
    with pytest.raises(ValueError, match="aux_step"):
        ADMMConfig(aux_step="newton")


def _one_aux_move(aux_step, lr_z=0.1):
    """z after one sweep's auxiliary step on a 2-block net (weights frozen by lr=0)."""
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [8], 3, "relu")
    x, y = _data(8)
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), sweeps=1, aux_step=aux_step, lr_z=lr_z,
                   dual_step=0.0, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    z0 = tr.blocks[0](x).detach()
    zk = z0.clone().requires_grad_(True)
    g = torch.autograd.grad(nn.functional.cross_entropy(tr.blocks[1](zk), y) * x.shape[0], zk)[0]
    # capture z after the step through the dual variable: with dual_step=0 u stays 0, so read z via a hook
    seen = {}
    term = tr.engine.terms[0]
    orig = term.loss_and_grads

    def spy(inp, target, dual, y_, **kw):
        seen["z"] = target.clone()
        return orig(inp, target, dual, y_, **kw)

    term.loss_and_grads = spy
    tr.step(x, y)
    return z0, g, seen["z"]


@pytest.mark.parametrize("rule", ["grad", "sign", "adam"])
def test_aux_step_rules(rule):
    z0, g, z1 = _one_aux_move(rule)
    if rule == "grad":
        expected = z0 - 0.1 * g  # z = a and u = 0 at the start: the step is the gradient of the next term
    else:  # sign, and adam's bias-corrected first step, are both lr*sign(g)
        expected = z0 - 0.1 * g.sign()
    torch.testing.assert_close(z1, expected, atol=1e-5, rtol=1e-4)


def test_adam_aux_step_trains_and_keeps_no_state_between_batches():
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [16, 16], 3, "tanh")
    x, y = _data(128)
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), aux_step="adam", lr_z=0.05, k_z=2,
                   optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    first = tr.evaluate(torch.utils.data.TensorDataset(x, y))["loss"]
    for _ in range(30):
        tr.step(x, y)
    assert tr.evaluate(torch.utils.data.TensorDataset(x, y))["loss"] < first
    assert not any(k.startswith("adam") for k in vars(tr))  # no per-trainer moment tables


def test_adam_aux_step_applies_prox():
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [8], 3, "tanh")
    x, y = _data(16)
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), aux_step="adam", constraints={0: "nonneg"}, sweeps=1,
                   dual_step=0.0)
    seen = {}
    term = tr.engine.terms[0]
    orig = term.loss_and_grads
    term.loss_and_grads = lambda i, t, d, yy, **kw: (seen.setdefault(0, t), orig(i, t, d, yy, **kw))[1]
    tr.step(x, y)
    assert float(seen[0].min()) >= 0.0


def test_deep_batch_preset_is_deep_with_its_own_rho_and_refuses_online():
    c, deep = ADMMConfig.preset("deep-batch"), ADMMConfig.preset("deep")
    assert c.rho == PRESETS["deep-batch"].config["rho"] != deep.rho
    assert ADMMConfig(**{**vars(c), "rho": deep.rho}) == deep  # nothing else differs
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [16, 16], 3, "sigmoid")
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), preset="deep-batch", mode="batch", num_samples=8)
    assert tr.rho == [c.rho, c.rho]
    with pytest.raises(ValueError, match="mode='batch'"):
        BlockADMM(model, blocks=cuts, input_shape=(20,), preset="deep-batch")


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_shared_optimizer_trains_like_one_per_block_and_checkpoints(tmp_path, mode):
    """Adam is per element, so one optimizer over every block gives the per-block updates, in one call."""
    from blockadmm.trainer import adam

    x, y = _data()
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [16, 12], 3)
    kw = {"blocks": cuts, "input_shape": (20,), "mode": mode, "num_samples": len(x), "optimizer": adam(3e-3),
          "sweeps": 2}
    per_block = BlockADMM(copy.deepcopy(model), **kw)
    shared = BlockADMM(copy.deepcopy(model), shared_optimizer=True, **kw)
    assert len({id(o) for o in shared.optimizers}) == 1 and len({id(o) for o in per_block.optimizers}) == 3
    index = torch.arange(len(x))
    for _ in range(4):
        per_block.step(x, y, index), shared.step(x, y, index)
    flat = lambda tr: torch.cat([p.detach().flatten() for p in tr.blocks.parameters()])
    torch.testing.assert_close(flat(shared), flat(per_block), rtol=1e-6, atol=1e-7)
    untrained = BlockADMM(copy.deepcopy(model), **kw)
    assert float((flat(shared) - flat(untrained)).abs().max()) > 1e-3  # they moved
    path = str(tmp_path / "ckpt.pt")
    shared.save(path)
    resumed = BlockADMM(copy.deepcopy(model), shared_optimizer=True, **kw)
    resumed.load(path)
    shared.step(x, y, index), resumed.step(x, y, index)
    torch.testing.assert_close(flat(resumed), flat(shared), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shared_optimizer=True"):
        untrained.load(path)


def test_fast_preset_is_the_committed_tuning_choice_and_online_only():
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "results", "tune-fast.json")
    with open(path) as f:
        scores = json.load(f)["scores"]  # best first (bench/tune_defaults.py --grid fast)
    best = next(s for s in scores if s["sweeps"] == 1)
    fast = PRESETS["fast"]
    assert {k: fast.config[k] for k in ("sweeps", "rho", "lr_z")} == {k: best[k] for k in ("sweeps", "rho", "lr_z")}
    assert fast.weight_lr == best["weight_lr"] and fast.mode == "online" and fast.shared_optimizer
    torch.manual_seed(0)
    model, cuts = mlp_blocks(20, [16, 16], 3)
    tr = BlockADMM(model, blocks=cuts, input_shape=(20,), preset="fast")
    assert tr.shared_optimizer and tr.config.sweeps == 1 and tr.optimizers[0].param_groups[0]["lr"] == best["weight_lr"]
    assert not BlockADMM(model, blocks=cuts, input_shape=(20,), preset="fast", shared_optimizer=False).shared_optimizer
    with pytest.raises(ValueError, match="mode='online'"):
        BlockADMM(model, blocks=cuts, input_shape=(20,), preset="fast", mode="batch", num_samples=8)
