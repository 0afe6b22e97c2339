"""blockadmm.data: the (x, y, index) contract, fixed splits, idx / CIFAR-10 file loaders, loader order."""
import gzip
import hashlib
import pickle
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from blockadmm import data
from blockadmm.data import DATASETS, IndexedDataset, load, make_loader, read_idx


def write_idx(path, array):
    """Write ``array`` (uint8) as an idx file, gzipped when ``path`` ends in .gz."""
    raw = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(">u1").tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(raw)


def write_mnist(folder, n_train=30, n_test=20, gz=True):
    """Write the four MNIST idx files with random pixels and labels cycling 0..9; return the arrays."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = images, labels
    return arrays


def write_cifar(folder, per_batch=10):
    """Write the six CIFAR-10 binary batches, ``per_batch`` random images each; return the test batch's
    (images (n, 3072) uint8, labels list)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], images], 1).tobytes())
    return images, labels.tolist()


def check_triples(ds, n_check=5):
    """Each item is (float32 x of input_shape, int64 label in range, int64 index equal to its position)."""
    for i in list(range(n_check)) + [len(ds) - 1]:
        x, y, idx = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == ds.input_shape
        assert y.dtype == torch.int64 and 0 <= int(y) < ds.num_classes
        assert idx.dtype == torch.int64 and int(idx) == i


@pytest.mark.parametrize("name, n_train, n_test, shape", [
    ("digits", 1437, 360, (64,)),
    ("mnist5k", 4000, 1000, (784,)),
    ("mnist1d", 4000, 1000, (40,)),
])
def test_builtin_datasets(name, n_train, n_test, shape):
    s = load(name)
    assert (len(s.train), len(s.test), s.val) == (n_train, n_test, None)
    assert s.input_shape == shape and s.num_classes == 10 and s.name == name
    check_triples(s.train)
    check_triples(s.test)
    if name != "mnist1d":
        assert 0.0 <= float(s.train.X.min()) and float(s.train.X.max()) <= 1.0


def test_mnist5k_fixed_balanced_disjoint_split():
    a, b = load("mnist5k", split_seed=0), load("mnist5k", split_seed=7, val_fraction=0.1)
    assert torch.equal(a.test.X, b.test.X) and torch.equal(a.test.Y, b.test.Y)
    assert torch.equal(torch.bincount(a.test.Y), torch.full((10,), 100))
    assert torch.equal(torch.bincount(a.train.Y), torch.full((10,), 400))
    assert a.train.Y[:50].unique().numel() > 5  # the source is sorted by class: the split shuffles it
    train_rows = {r.tobytes() for r in a.train.X.numpy()}
    assert not any(r.tobytes() in train_rows for r in a.test.X.numpy())


def test_val_split_carved_from_train():
    full = load("mnist5k")
    s = load("mnist5k", split_seed=3, val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (3200, 800, 1000)
    check_triples(s.val)
    assert torch.equal(torch.bincount(s.val.Y), torch.full((10,), 80))
    full_rows = {r.tobytes() for r in full.train.X.numpy()}
    train_rows = {r.tobytes() for r in s.train.X.numpy()}
    val_rows = [r.tobytes() for r in s.val.X.numpy()]
    assert all(r in full_rows for r in val_rows) and not any(r in train_rows for r in val_rows)
    assert torch.equal(s.val.X, load("mnist5k", split_seed=3, val_fraction=0.2).val.X)
    assert not torch.equal(s.val.X, load("mnist5k", split_seed=4, val_fraction=0.2).val.X)


def test_image_layout_and_normalize():
    s = load("mnist5k", image=True, normalize=True)
    assert s.input_shape == (1, 28, 28) and s.test.X.shape == (1000, 1, 28, 28)
    assert abs(float(s.train.X.mean())) < 1e-4 and abs(float(s.train.X.std()) - 1) < 1e-3
    mean, std = s.stats
    assert mean.shape == std.shape == (1,)
    assert load("mnist1d", image=True).input_shape == (1, 40)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_loader(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    for name in ("mnist", "fashion-mnist"):
        s = load(name, tmp_path)
        assert (len(s.train), len(s.test), s.input_shape) == (30, 20, (784,))
        check_triples(s.train)
        images, labels = arrays["t10k"]
        assert torch.allclose(s.test.X, torch.as_tensor(images.reshape(20, -1) / 255.0, dtype=torch.float32))
        assert torch.equal(s.test.Y, torch.as_tensor(labels, dtype=torch.int64))
    assert load("mnist", tmp_path, image=True).input_shape == (1, 28, 28)


def test_mnist_torchvision_layout_and_val(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=100)
    s = load("mnist", tmp_path, val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)


def test_idx_bad_magic_and_truncated(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + bytes(3))
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(p)
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\xff\xff\xff\xff"))
    with pytest.raises(ValueError, match="bad magic number"):
        load("mnist", tmp_path)


def test_cifar10_loader(tmp_path):
    images, labels = write_cifar(tmp_path / "cifar-10-batches-bin")
    s = load("cifar10", tmp_path)
    assert (len(s.train), len(s.test), s.input_shape) == (50, 10, (3, 32, 32))
    check_triples(s.train)
    expect = torch.as_tensor(images.reshape(10, 3, 32, 32) / 255.0, dtype=torch.float32)
    assert torch.allclose(s.test.X, expect) and s.test.Y.tolist() == labels
    assert load("cifar10", tmp_path, image=False).input_shape == (3072,)
    mean, std = load("cifar10", tmp_path, normalize=True).stats
    assert mean.shape == std.shape == (3,)


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as e:
        load("mnist", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte") in str(e.value)
    with pytest.raises(FileNotFoundError, match="download=True") as e:
        load("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin") in str(e.value)


class _Marker:
    """A pickle that would create a file when loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_cifar_python_pickles_are_never_loaded(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Marker(marker), b"labels": []}))
    with pytest.raises(FileNotFoundError, match="pickles, which are never loaded"):
        load("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar_file_of_the_wrong_size_is_named(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    bad = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match="data_batch_3.bin: .* not a whole number"):
        load("cifar10", tmp_path)


def test_download_checks_md5_and_keeps_nothing_on_mismatch(tmp_path, monkeypatch):
    payload = b"idx bytes"

    def fake_retrieve(url, dest):
        Path(dest).write_bytes(payload)
        return str(dest), None

    monkeypatch.setattr(urllib.request, "urlretrieve", fake_retrieve)
    dest = tmp_path / "f.gz"
    with pytest.raises(OSError, match="expected 0+; nothing was kept"):
        data.fetch_file("https://example.invalid/f.gz", dest, "0" * 32)
    assert list(tmp_path.iterdir()) == []
    good = hashlib.md5(payload).hexdigest()
    assert data.fetch_file("https://example.invalid/f.gz", dest, good).read_bytes() == payload
    with pytest.raises(ValueError, match="plain http"):
        data.fetch_file("http://example.invalid/f.gz", dest, good)
    assert all(url.startswith("https://") for url in data._IDX_URLS.values()) and data._CIFAR_URL.startswith("https://")


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown dataset") as e:
        load("imagenet")
    assert all(n in str(e.value) for n in DATASETS)
    with pytest.raises(ValueError, match="val_fraction"):
        load("digits", val_fraction=1.0)


def loader_order(loader):
    return torch.cat([idx for _, _, idx in loader]).tolist()


@pytest.mark.parametrize("wrap", [False, True])
def test_make_loader_deterministic_by_seed_and_epoch(wrap):
    ds = IndexedDataset(torch.randn(50, 3), torch.arange(50) % 4)
    if wrap:  # a plain map-style dataset goes through per-item fetching and collation
        ds = torch.utils.data.Subset(ds, range(50))
    state = torch.get_rng_state()
    a = make_loader(ds, 8, shuffle=True, seed=1, epoch=2)
    order = loader_order(a)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert sorted(order) == list(range(50)) and order != list(range(50))
    assert order == loader_order(a) == loader_order(make_loader(ds, 8, shuffle=True, seed=1, epoch=2))
    assert order != loader_order(make_loader(ds, 8, shuffle=True, seed=1, epoch=3))
    assert order != loader_order(make_loader(ds, 8, shuffle=True, seed=2, epoch=2))
    assert loader_order(make_loader(ds, 8, shuffle=False, seed=1, epoch=2)) == list(range(50))
    x, y, idx = next(iter(a))
    assert x.shape == (8, 3) and y.dtype == idx.dtype == torch.int64
    assert torch.equal(x, torch.stack([ds[int(i)][0] for i in idx]))
    assert len(make_loader(ds, 8, shuffle=True, seed=0, epoch=0, drop_last=True)) == 6
