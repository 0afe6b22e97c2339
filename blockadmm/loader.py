"""In-memory datasets that yield ``(x, y, index)`` and a loader whose order is a function of ``(seed, epoch)``.

This part of the data layer needs only torch and numpy: it is what the trainers import. The named datasets
(scikit-learn's digits, MNIST-5k, MNIST files, ...) live in :mod:`blockadmm.data`, which needs the ``[data]`` extra.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

__all__ = ["IndexedDataset", "make_loader"]


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
            if self.Y.is_floating_point():
                num_classes = self.Y.shape[1]
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
