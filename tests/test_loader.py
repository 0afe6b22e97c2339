"""blockadmm.loader: what the trainers accept as data, and the errors for what they do not."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from blockadmm.loader import IndexedDataset, epoch_batches, unpack_batch


def test_tensor_dataset_batches_carry_their_positions():
    X, Y = torch.randn(23, 3), torch.randint(0, 4, (23,), dtype=torch.int32)
    batches = list(epoch_batches(TensorDataset(X, Y), 10, shuffle=True, seed=1, epoch=2))
    assert [len(b[0]) for b in batches] == [10, 10, 3]
    index = torch.cat([b[2] for b in batches])
    assert sorted(index.tolist()) == list(range(23)) and index.tolist() != list(range(23))
    for x, y, i in batches:
        assert torch.equal(x, X[i]) and torch.equal(y, Y[i])
    again = list(epoch_batches(TensorDataset(X, Y), 10, shuffle=True, seed=1, epoch=2))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(batches, again))


def test_loader_and_iterables_are_taken_as_they_are():
    X, Y = torch.randn(12, 2), torch.arange(12) % 3
    loader = DataLoader(TensorDataset(X, Y), batch_size=5)
    got = list(epoch_batches(loader, 100, shuffle=True, seed=0, epoch=0))
    assert [len(b[0]) for b in got] == [5, 5, 2] and torch.equal(got[0][0], X[:5])
    pairs = [(X[:6], Y[:6]), (X[6:], Y[6:])]
    assert list(epoch_batches(pairs, 100, shuffle=True, seed=0, epoch=0)) == pairs


def test_unpack_casts_and_keeps_regression_targets():
    x, y, index = unpack_batch((np.ones((4, 3)), torch.tensor([0, 1, 2, 1], dtype=torch.int32)))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and index is None
    batch = (torch.ones(4, 3, dtype=torch.float64), torch.rand(4), torch.arange(4, dtype=torch.int32))
    x, y, index = unpack_batch(batch)
    assert x.dtype == y.dtype == torch.float32 and y.shape == (4,) and index.dtype == torch.int64
    x, _, _ = unpack_batch((torch.ones(2, 1), torch.zeros(2)), dtype=torch.float64)
    assert x.dtype == torch.float64


def test_one_dimensional_float_targets_are_a_regression():
    ds = IndexedDataset(torch.randn(5, 2), torch.rand(5))
    assert ds.num_classes is None and ds[2][1].dtype == torch.float32


class DictDataset(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": torch.zeros(2), "label": 0}


X2 = torch.zeros(2, 2)


@pytest.mark.parametrize("batch, error, match", [
    ({"image": torch.zeros(2, 2), "label": torch.zeros(2)}, TypeError, r"batch of type dict .*\(x, y\)"),
    ((torch.zeros(2, 2),), TypeError, r"with 1 items; expected a Dataset or DataLoader"),
    (torch.zeros(2, 2), TypeError, r"batch of type Tensor"),
    ((torch.zeros(3, 2), torch.zeros(2)), ValueError, "3 inputs but 2 targets"),
    ((X2, torch.zeros(2), torch.tensor([True, False])), TypeError, "sample indices have dtype torch.bool"),
    ((X2, torch.zeros(2), torch.tensor([0.0, 1.0])), TypeError, "sample indices have dtype torch.float32"),
    ((X2, torch.zeros(2), torch.tensor([0, 1, 2])), ValueError, "2 inputs but 3 sample indices"),
    ((torch.zeros(2, 2), torch.tensor([True, False])), TypeError, "targets y have dtype torch.bool"),
])
def test_bad_batches_name_the_problem(batch, error, match):
    with pytest.raises(error, match=match):
        unpack_batch(batch)


def test_bad_data_names_the_forms():
    with pytest.raises(TypeError, match=r"cannot train on a Tensor; expected a Dataset or DataLoader"):
        next(epoch_batches(torch.zeros(3, 2), 2, shuffle=False, seed=0, epoch=0))
    with pytest.raises(ValueError, match="the dataset is empty"):
        next(epoch_batches(TensorDataset(torch.zeros(0, 2), torch.zeros(0)), 2, shuffle=False, seed=0, epoch=0))
    with pytest.raises(TypeError, match="batch of type dict"):
        unpack_batch(next(epoch_batches(DictDataset(), 2, shuffle=False, seed=0, epoch=0)))
