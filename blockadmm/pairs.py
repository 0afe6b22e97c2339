"""MNIST-5k pairs: 64×64 canvases holding two digits of different classes (weak-supervision benchmark).

Each canvas gets two MNIST-5k digits of *different* classes pasted (pixel-wise max) at random
positions whose 28×28 boxes do not overlap, optionally with light clutter (8×8 stroke fragments cut
from other digits, scaled to `clutter_intensity`). Labels are multi-hot (both classes); the two
digits' ink boxes (x0, y0, x1, y1, inclusive pixel coordinates) and classes are kept for evaluation
only. Digits of the train canvases come from the MNIST-5k train split, those of the test canvases from
its test split; everything is a function of `seed`.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import DataSplits, IndexedDataset

__all__ = ["PairsDataset", "make_pairs", "load_pairs"]

CANVAS, DIGIT = 64, 28


class PairsDataset(IndexedDataset):
    """IndexedDataset of canvases (N, 1, 64, 64), multi-hot labels (N, 10), plus `boxes` (N, 2, 4) and
    `classes` (N, 2) for evaluation only (never yielded to training)."""

    def __init__(self, X, Y, boxes, classes):
        super().__init__(X, Y, num_classes=Y.shape[1])
        self.boxes, self.classes = boxes, classes


def _ink_box(img: np.ndarray, thr: float = 0.1):
    ys, xs = np.nonzero(img > thr)
    if len(ys) == 0:
        return 0, 0, img.shape[1] - 1, img.shape[0] - 1
    return xs.min(), ys.min(), xs.max(), ys.max()


def make_pairs(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    seed: int = 0,
    clutter: int = 0,
    clutter_intensity: float = 0.35,
    canvas: int = CANVAS,
) -> PairsDataset:
    """`n` canvases from `images` (M, 28, 28) in [0, 1] with class `labels` (M,)."""
    images = np.asarray(images, np.float32).reshape(-1, DIGIT, DIGIT)
    labels = np.asarray(labels).astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError("pairs need digits of at least two classes")
    rng = np.random.default_rng(seed)
    X = np.zeros((n, canvas, canvas), np.float32)
    boxes = np.zeros((n, 2, 4), np.int64)
    classes = np.zeros((n, 2), np.int64)
    span = canvas - DIGIT + 1
    for i in range(n):
        a = rng.integers(len(images))
        while True:
            b = rng.integers(len(images))
            if labels[b] != labels[a]:
                break
        while True:  # two 28×28 placements that do not overlap
            p = rng.integers(span, size=4)
            if abs(p[0] - p[2]) >= DIGIT or abs(p[1] - p[3]) >= DIGIT:
                break
        if clutter:
            for _ in range(clutter):
                src = images[rng.integers(len(images))]
                sy, sx = rng.integers(DIGIT - 8, size=2) + np.array([0, 0])
                frag = src[sy : sy + 8, sx : sx + 8] * clutter_intensity
                cy, cx = rng.integers(canvas - 8, size=2)
                X[i, cy : cy + 8, cx : cx + 8] = np.maximum(X[i, cy : cy + 8, cx : cx + 8], frag)
        for j, (idx, (px, py)) in enumerate(((a, (p[0], p[1])), (b, (p[2], p[3])))):
            img = images[idx]
            X[i, py : py + DIGIT, px : px + DIGIT] = np.maximum(X[i, py : py + DIGIT, px : px + DIGIT], img)
            x0, y0, x1, y1 = _ink_box(img)
            boxes[i, j] = (px + x0, py + y0, px + x1, py + y1)
            classes[i, j] = labels[idx]
    Y = np.zeros((n, 10), np.float32)
    Y[np.arange(n), classes[:, 0]] = 1
    Y[np.arange(n), classes[:, 1]] = 1
    return PairsDataset(
        torch.from_numpy(X[:, None]), torch.from_numpy(Y), torch.from_numpy(boxes), torch.from_numpy(classes)
    )


def load_pairs(
    n_train: int = 4000,
    n_test: int = 1000,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    clutter: int = 0,
    clutter_intensity: float = 0.35,
) -> DataSplits:
    """Train / val / test pairs built from the MNIST-5k train / test digits (val canvases: from train digits, own
    seed)."""
    from .data import load

    base = load("mnist5k", image=True)
    xtr, ytr = base.train.X[:, 0].numpy(), base.train.Y.numpy()
    xte, yte = base.test.X[:, 0].numpy(), base.test.Y.numpy()
    kw = dict(clutter=clutter, clutter_intensity=clutter_intensity)
    n_val = int(round(n_train * val_fraction))
    train = make_pairs(xtr, ytr, n_train - n_val, seed=seed * 3 + 1, **kw)
    val = make_pairs(xtr, ytr, n_val, seed=seed * 3 + 2, **kw) if n_val else None
    test = make_pairs(xte, yte, n_test, seed=seed * 3 + 3, **kw)
    return DataSplits(train, val, test, train.input_shape, 10, "pairs")
