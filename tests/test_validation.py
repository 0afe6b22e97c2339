"""Values that must not be accepted (issue 20 item 4): each gets a clear error (divergence without NaN, item 5:
test_divergence.py)."""
import math

import pytest
import torch

from blockadmm import data
from blockadmm.models import mlp_blocks
from blockadmm.trainer import ADMMConfig, BlockADMM


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _mlp(seed=0):
    torch.manual_seed(seed)
    return mlp_blocks(64, [24, 16], 10)


@pytest.mark.parametrize(("field", "value"), [
    ("rho", 0.0), ("rho", -1.0), ("rho", math.nan), ("rho", math.inf), ("rho", [1.0, math.nan]), ("rho", True),
    ("rho", []), ("lr_z", math.nan), ("lr_z", 0.0), ("dual_step", -0.5), ("dual_step", math.nan),
    ("rho_factor", -2.0), ("rho_factor", 0.5), ("rho_factor", math.nan), ("rho_max", 0.0), ("rho_max", math.inf),
    ("rho_stall", -0.1), ("sweeps", 2.5), ("sweeps", True), ("sweeps", 0), ("k_z", math.nan), ("rho_check_every", 0),
    ("curvature_cap", 1),
])
def test_bad_hyperparameters_are_refused_at_construction(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        ADMMConfig(**{field: value})
    model, cuts = _mlp()
    with pytest.raises(ValueError, match=f"^{field} must be"):
        BlockADMM(model, blocks=cuts, input_shape=(64,), **{field: value})


def test_edge_values_that_mean_something_are_accepted():
    ADMMConfig(dual_step=0.0, rho_stall=0.0, rho_factor=1.0, rho=[0.5, 2.0])
    with pytest.raises(ValueError, match="rho_max .* is below rho"):
        ADMMConfig(rho=10.0, rho_max=5.0, rho_schedule="adaptive")
    ADMMConfig(rho=10.0, rho_max=5.0)  # a constant schedule never reads rho_max


@pytest.mark.parametrize("blocks", [True, 2.5, "2", [1, 2.0], [True]])
def test_blocks_must_be_an_int_or_a_list_of_ints(blocks):
    model, _ = _mlp()
    with pytest.raises(TypeError, match="blocks must be a number of blocks .* or a list of cut indices"):
        BlockADMM(model, blocks=blocks, input_shape=(64,))


def test_sample_indices_are_checked_before_the_tables_are_written(digits):
    model, cuts = _mlp()
    tr = BlockADMM(model, blocks=cuts, input_shape=(64,), mode="batch", num_samples=len(digits.train))
    x, y, index = next(iter(data.make_loader(digits.train, 8, shuffle=False, seed=0, epoch=0)))
    bad = {
        "bool": (torch.ones(8, dtype=torch.bool), TypeError, "integers, got torch.bool"),
        "float": (index.float() + 0.5, TypeError, "integers, got torch.float32"),
        "duplicate": (torch.tensor([0, 1, 2, 3, 4, 5, 6, 0]), ValueError, "appears twice in one batch"),
        "shape": (index[:5], ValueError, r"has shape \(5,\), the batch 8 rows"),
        "range": (index + len(digits.train), IndexError, "outside the tables"),
    }
    for name, (idx, error, message) in bad.items():
        with pytest.raises(error, match=message):
            tr.step(x, y, idx)
        assert not bool(tr.tables.seen.any()), name
    tr.step(x, y, index)
    assert int(tr.tables.seen.sum()) == 8
    online = BlockADMM(_mlp()[0], blocks=cuts, input_shape=(64,))
    online.step(x, y, torch.zeros(8, dtype=torch.bool))  # online mode keeps no per-sample state: index unused


def test_label_and_input_dtypes_are_cast_and_empty_data_is_named():
    from blockadmm.data import IndexedDataset

    def make():
        model, cuts = _mlp()
        return BlockADMM(model, blocks=cuts, input_shape=(64,))

    def weights(tr):
        return torch.cat([p.detach().flatten() for p in tr.blocks.parameters()])

    torch.manual_seed(0)
    x, y = torch.randn(40, 64), torch.randint(0, 10, (40,))
    reference, cast = make(), make()
    reference.step(x, y)
    cast.step(x.double(), y.int())  # float64 input, int32 labels: cast to float32 / int64, the same step
    assert torch.equal(weights(cast), weights(reference))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.double(), y.int()), batch_size=16)
    assert cast.evaluate(loader) == pytest.approx(cast.evaluate(IndexedDataset(x, y)), rel=1e-6)
    assert math.isfinite(make().step(x.half(), y.to(torch.int16)).loss)
    with pytest.raises(ValueError, match="the mini-batch is empty"):
        reference.step(x[:0], y[:0])
    with pytest.raises(ValueError, match="the training set is empty"):
        reference.fit(IndexedDataset(x[:0], y[:0]), 1, progress=False)
    x_nan = x.clone()
    x_nan[3, 5] = math.nan
    with pytest.raises(FloatingPointError, match="evaluation gave a non-finite loss: the data hold NaN"):
        reference.evaluate(IndexedDataset(x_nan, y))


def test_a_channels_last_model_trains():
    from blockadmm.models import small_cnn

    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    for model_format, input_format in [(torch.channels_last, torch.contiguous_format),
                                       (torch.contiguous_format, torch.channels_last)]:
        torch.manual_seed(0)
        model = small_cnn(1, 3, image_size=12).to(memory_format=model_format)
        tr = BlockADMM(model, blocks=3, input_shape=(1, 12, 12), mode="online")
        stats = tr.step(x.contiguous(memory_format=input_format), y)
        assert math.isfinite(stats.loss)
