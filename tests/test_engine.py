"""The engine's primitives on ranges of blocks: two engines over the same chain, each driving the blocks it owns
and passing boundary values and gradients by hand (as ranks do), reproduce BlockADMM.step under Jacobi."""
import copy

import pytest
import torch
from torch import nn

from blockadmm.engine import ADMMConfig, Engine
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _rank_engine(blocks, owned, config, default_loss):
    engine = Engine(blocks, config=config, rho=[1.0, 1.0], constraints=[None, None], loss_fn=nn.CrossEntropyLoss(),
                    default_loss=default_loss, online=True)
    engine.optimizers = [_sgd(b.parameters()) if k in owned else None for k, b in enumerate(blocks)]
    return engine


@pytest.mark.parametrize("closed_form_head", [True, False])
def test_two_ranges_reproduce_the_jacobi_step(closed_form_head):
    torch.manual_seed(0)
    model, cuts = mlp_blocks(12, [9, 7], 4, "tanh")
    config = ADMMConfig(order="jacobi", sweeps=3)
    reference = BlockADMM(copy.deepcopy(model), blocks=cuts, input_shape=(12,), config=copy.deepcopy(config),
                          optimizer=_sgd, loss=None if closed_form_head else nn.CrossEntropyLoss())
    blocks = [copy.deepcopy(b) for b in reference.blocks]
    low = _rank_engine(blocks, (0, 1), config, closed_form_head)  # blocks 0, 1 and boundaries 0, 1
    high = _rank_engine(blocks, (2,), config, closed_form_head)  # the last block, fed z_1 by the low rank
    assert type(high.terms[2]) is type(reference.engine.terms[2])
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        want = reference.step(x, y)
        lo, hi = low.new_batch(x, y), high.new_batch(None, y)
        low.init_online(lo, range(2))
        hi.z[1] = lo.z[1].clone()
        high.init_online(hi, range(2, 3), h=lo.kept[1].value)
        for sweep in range(config.sweeps):
            if sweep:
                hi.z[1], hi.kept[2] = lo.z[1].clone(), None  # the low rank's new z_1
            low.begin_sweep(lo, sweep)
            high.begin_sweep(hi, sweep)
            g_top = high.consumer_grad(hi, 1, hi.z_src[1], hi.kept[2])  # sent down
            for k in low.aux_order([0, 1]):
                low.aux_step(lo, k, grad_fn=(lambda z, g=g_top: g) if k == 1 else None)
            low.weight_step(lo, range(2))
            high.weight_step(hi, range(2, 3))
            if not low.skips_dual(sweep):
                low.dual_step(lo, [0, 1])
        _, primal, dual = low.statistics(lo, [0, 1])
        loss, no_primal, _ = high.statistics(hi, [])
        assert no_primal == [] and loss == want.head_loss
        assert primal == want.primal_residual and dual == want.dual_residual
    for mine, theirs in zip(blocks, reference.blocks):
        for p, q in zip(mine.parameters(), theirs.parameters()):
            assert torch.equal(p, q)
