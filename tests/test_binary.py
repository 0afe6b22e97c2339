"""blockadmm.binary: binary {0, 1} hidden units as library blocks, and the README's recipes."""

import pytest
import torch
from torch import nn

from blockadmm import BlockADMM, data
from blockadmm.binary import BinaryBlock, binary_blocks, binary_projection, binary_recipe


def test_binary_block_outputs_are_binary_and_projection():
    blk = BinaryBlock(5, 4)
    with torch.no_grad():
        h = blk(torch.randn(7, 5))
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    z = torch.tensor([-0.3, 0.2, 0.6, 1.7])
    assert binary_projection().apply(z, 1.0).tolist() == [0.0, 0.0, 1.0, 1.0]
    # the hinge surrogate's input gradient vanishes where the block already meets its target by the margin
    x = torch.randn(3, 5)
    a = blk.linear(x).detach()
    target = (a > 0).float()
    blk.margin = 0.0
    g = blk.admm_input_grad(x, target, torch.zeros_like(target), rho=1.0, y=None, loss_fn=None)
    assert torch.count_nonzero(g) == 0


def test_binary_ste_surrogate_is_the_admm_term_through_the_straight_through_step():
    torch.manual_seed(1)
    blk = BinaryBlock(5, 4, surrogate="ste")
    x, z, u = (
        torch.randn(6, 5, dtype=torch.float64),
        torch.randn(6, 4, dtype=torch.float64),
        torch.randn(6, 4, dtype=torch.float64),
    )
    blk = blk.double()
    a = blk.linear(x).detach()
    r = z + u - (a > 0).double()
    rho = 0.7
    # d/dx of (rho/2)|z + u - step(Wx + b)|^2 with step' := 1[|a| <= 1]
    want = -rho * (r * (a.abs() <= 1).double()) @ blk.linear.weight.detach()
    got = blk.admm_input_grad(x, z, u, rho=rho, y=None, loss_fn=None)
    torch.testing.assert_close(got, want)
    assert torch.count_nonzero(got) > 0
    loss = blk.admm_local_step(x, z, u, rho=rho, y=None, loss_fn=None)
    torch.testing.assert_close(loss, rho * 0.5 * r.square().sum() / 6)


@pytest.mark.parametrize("recipe, epochs, floor", [("projected", 6, 0.9), ("relaxed", 4, 0.7)])
def test_the_readme_recipes_train_binary_units(recipe, epochs, floor):
    splits = data.load("digits")
    torch.manual_seed(0)
    blocks = binary_blocks(64, [128, 128], 10, recipe=recipe)
    tr = BlockADMM(blocks, input_shape=(64,), **binary_recipe(recipe, n_hidden=2))
    hist = tr.fit(splits.train, epochs, test=splits.test, progress=False, eval_train=False)
    assert hist[-1]["test_acc"] > floor, [h["test_acc"] for h in hist]
    with torch.no_grad():
        h = nn.Sequential(*blocks[:2])(splits.test.X)
    assert set(h.unique().tolist()) <= {0.0, 1.0}  # inference: the hard binary network
    if recipe == "projected":
        assert all(c is not None and c.kind == "custom" for c in tr.constraints)


def test_a_binary_block_as_the_last_block_or_an_unknown_recipe_is_an_error():
    with pytest.raises(ValueError, match="recipe must be one of"):
        binary_blocks(4, [3], 2, recipe="soft")
    with pytest.raises(ValueError, match="cannot be the last block"):
        BinaryBlock(4, 3).admm_local_step(torch.randn(2, 4), None, None, rho=None, y=None, loss_fn=None)
