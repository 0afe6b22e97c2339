"""In-memory datasets that yield ``(x, y, index)`` and a loader whose order is a function of ``(seed, epoch)``.

This part of the data layer needs only torch and numpy: it is what the trainers import. The named datasets
(scikit-learn's digits, MNIST-5k, MNIST files, ...) live in :mod:`blockadmm.data`, which needs the ``[data]`` extra.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, TensorDataset

__all__ = ["IndexedDataset", "make_loader", "epoch_batches", "epoch_length", "unpack_batch", "as_data",
           "is_single_use", "BATCH_FORMS"]

BATCH_FORMS = ("a Dataset or DataLoader whose items are (x, y) or (x, y, index) tuples of tensors, "
               "a whole set as an (X, y) tuple of tensors, any iterable of such batches, "
               "or a function that returns an epoch's batches")


class IndexedDataset(Dataset):
    """In-memory dataset over tensors ``X`` (N, ...) and ``Y`` (N,) or (N, K) yielding ``(x, y, index)``.

    ``Y`` of integer dtype holds class labels (stored as int64); a floating ``Y`` of shape (N, K) holds
    multi-hot targets. ``ds[i]`` returns one triple; ``ds[idx]`` with a list or 1-D tensor of indices
    returns the whole batch ``(X[idx], Y[idx], idx)`` at once, which :func:`make_loader` uses.
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, num_classes: int | None = None):
        if len(X) != len(Y):
            raise ValueError(f"X has {len(X)} samples but Y has {len(Y)}")
        self.X = X.float()
        self.Y = Y.float() if Y.is_floating_point() else Y.long()
        self.input_shape = tuple(self.X.shape[1:])
        if num_classes is None:
            if self.Y.is_floating_point():  # multi-hot rows (N, K); 1-D float targets are a regression
                num_classes = self.Y.shape[1] if self.Y.dim() == 2 else None
            else:
                num_classes = int(self.Y.max()) + 1 if len(self.Y) else 0
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i):
        if isinstance(i, (list, torch.Tensor, np.ndarray)):
            idx = torch.as_tensor(i, dtype=torch.int64)
            idx = torch.where(idx < 0, idx + len(self), idx)
            return self.X[idx], self.Y[idx], idx
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        i %= len(self)
        return self.X[i], self.Y[i], torch.tensor(i, dtype=torch.int64)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose batch order is a pure function of ``(seed, epoch)``.

    The permutation is drawn once, from a generator seeded with ``seed * 1000003 + epoch``, so every
    pass over the returned loader yields the same batches, and a resumed run that rebuilds the loader
    for the same epoch sees the same order (skip the batches already done). The global torch RNG is
    not touched. An :class:`IndexedDataset` is fetched a whole batch at a time; batches are
    ``[x, y, index]``.
    """
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    n = len(dataset)
    order = (torch.randperm(n, generator=g) if shuffle else torch.arange(n)).tolist()
    common = dict(num_workers=num_workers, generator=g)  # g also seeds the workers, not the global RNG
    if isinstance(dataset, IndexedDataset):
        batches = BatchSampler(order, batch_size, drop_last)
        return DataLoader(dataset, batch_size=None, sampler=batches, **common)
    return DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=drop_last, **common)


def as_data(data):
    """A whole set given as an (X, y) or (X, y, index) tuple of tensors (or arrays) with one row per sample becomes a
    TensorDataset (batched and shuffled like any Dataset); a function with no arguments is called for an epoch's
    batches; anything else is returned as it is."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
            isinstance(t, (torch.Tensor, np.ndarray)) for t in data):
        tensors = [torch.as_tensor(t) for t in data]
        if any(t.dim() == 0 for t in tensors) or len({len(t) for t in tensors}) != 1:
            raise ValueError(f"an (X, y) data tuple needs one row per sample in each tensor, got shapes "
                             f"{[tuple(t.shape) for t in tensors]}")
        return TensorDataset(*tensors)
    if callable(data) and not isinstance(data, (Dataset, DataLoader)):
        return as_data(data())
    return data


def is_single_use(data) -> bool:
    """Whether `data` can be iterated once only (a generator or another iterator): its second epoch would be empty."""
    return isinstance(data, Iterator)


def epoch_length(data, batch_size: int) -> int | None:
    """How many batches an epoch of `data` (as as_data returns it) has, when that is known without iterating."""
    if isinstance(data, Dataset) and not isinstance(data, DataLoader) and hasattr(data, "__len__"):
        return -(-len(data) // batch_size)
    try:
        return len(data)
    except TypeError:  # an iterable without a length (a generator, an IterableDataset's loader)
        return None


def unpack_batch(batch, *, dtype: torch.dtype = torch.float32):
    """``(x, y, index or None)`` of one batch: x cast to ``dtype`` (a float model's), integer labels to int64,
    float targets to ``dtype``; anything else is an error that names the accepted forms."""
    if isinstance(batch, dict):
        raise TypeError(f"got a batch of type dict (keys {sorted(map(str, batch))[:4]}); expected {BATCH_FORMS}: "
                        f"wrap the dataset so that it returns (x, y) or (x, y, index)")
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise TypeError(f"got a batch of type {type(batch).__name__}"
                        f"{f' with {len(batch)} items' if isinstance(batch, (tuple, list)) else ''}; "
                        f"expected {BATCH_FORMS}")
    x, y = (torch.as_tensor(t) for t in batch[:2])
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"inputs x have dtype {x.dtype}; expected a real-valued tensor")
    x = x.to(dtype)
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"targets y have dtype {y.dtype}; expected integer class labels or float targets")
    y = y.to(dtype) if y.is_floating_point() else y.long()
    if len(x) != len(y):
        raise ValueError(f"a batch has {len(x)} inputs but {len(y)} targets")
    index = None
    if len(batch) == 3:
        index = torch.as_tensor(batch[2])
        if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
            raise TypeError(f"sample indices have dtype {index.dtype}; expected integers (the third item of a batch "
                            f"is the sample's position in the training set)")
        index = index.long().reshape(-1)
        if len(index) != len(x):
            raise ValueError(f"a batch has {len(x)} inputs but {len(index)} sample indices")
    return x, y, index


def epoch_batches(data, batch_size: int, *, shuffle: bool, seed: int, epoch: int):
    """The batches of one epoch of ``data`` as ``(x, y, index or None)`` tuples (not yet cast, see unpack_batch).

    A map-style Dataset is batched by :func:`make_loader` (order a function of ``(seed, epoch)``) and its items'
    positions are the sample indices when the items carry none, so batch mode works on a plain TensorDataset.
    A DataLoader or any other iterable is taken as it is: its own order, its own indices (or none)."""
    if isinstance(data, DataLoader) or not isinstance(data, Dataset):
        if isinstance(data, (torch.Tensor, np.ndarray, str, bytes, dict)) or not hasattr(data, "__iter__"):
            raise TypeError(f"cannot train on a {type(data).__name__}; expected {BATCH_FORMS}")
        yield from data
        return
    if not hasattr(data, "__len__"):
        raise TypeError(f"the dataset {type(data).__name__} has no length; pass a DataLoader over it instead")
    if len(data) == 0:
        raise ValueError("the dataset is empty")
    loader = make_loader(data, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
    if isinstance(data, IndexedDataset):
        yield from loader
        return
    order = loader.sampler
    for start, batch in zip(range(0, len(data), batch_size), loader):
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            batch = (*batch, torch.as_tensor(order[start:start + batch_size]))
        yield batch
