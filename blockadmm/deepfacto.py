"""DeepFacto: a feature block, an NMF block with one component group per class, and a head, trained by
Block-ADMM so that the NMF layer is never crossed by backprop. Models, heads, the basis init and the metrics;
the runners, baselines and recipes are in `blockadmm.experiments.deepfacto_runs`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from .nmf import NMFBlock, group_energy

# ------------------------------------------------------------------------------------------ models


class PerSampleNorm(nn.Module):
    """x / sqrt(mean over positions of |x_p|²): each sample's features get unit RMS norm per position."""

    def forward(self, x):
        P = 1 if x.dim() == 2 else x[0, 0].numel()
        n = x.flatten(1).norm(dim=1).clamp_min(1e-6) / math.sqrt(P)
        return x / n.view(-1, *([1] * (x.dim() - 1)))


def feature_cnn(
    in_channels: int = 1, widths=(16, 32, 64), *, flatten: bool = True, normalize: bool = True
) -> nn.Sequential:
    """conv-relu-pool, conv-relu-pool, conv-relu (no conv bias); 28×28 -> (64, 7, 7), 64×64 -> (64, 16, 16)."""
    layers, prev = [], in_channels
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(prev, w, 3, padding=1, bias=False), nn.ReLU()]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        prev = w
    if flatten:
        layers.append(nn.Flatten())
    if normalize:
        layers.append(PerSampleNorm())
    return nn.Sequential(*layers)


class WindowFeatures(nn.Module):
    """Conv features read as overlapping digit-sized windows: (n, c, h, w) -> (n, c·k², gh, gw).

    The conv net's feature map is cut into k×k windows (stride `stride` cells) and each window's features,
    flattened and scaled to unit norm, become one "position" of the NMF layer: the per-window codes are those
    of the flat supervised DeepFacto (a digit-sized template per component), and a window grid replaces the
    per-cell grid. With the default CNN (two 2×2 pools) k=7, stride=3 are 28×28-pixel windows every 12
    pixels: one window on a single 28×28 digit, a 4×4 grid on a 64×64 canvas.
    """

    object_sized_positions = True  # what an NMF layer after it checks for (NMFLayer.admm_check_input)

    def __init__(self, cnn: nn.Module, window: int = 7, stride: int = 3):
        super().__init__()
        self.cnn, self.window, self.stride = cnn, int(window), int(stride)

    def forward(self, x):
        F = self.cnn(x)
        n, c, h, w = F.shape
        gh, gw = (h - self.window) // self.stride + 1, (w - self.window) // self.stride + 1
        U = functional.unfold(F, self.window, stride=self.stride)  # n × (c·k²) × (gh·gw)
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return U.reshape(n, c * self.window**2, gh, gw)


def window_maps(
    E: torch.Tensor, size, *, pixel_stride: int = 12, window_px: int = 28, sigma: float = 6.0
) -> torch.Tensor:
    """Per-window evidence (n, C, gh, gw) -> maps (n, C, H, W) at image resolution: each window's evidence is a
    Gaussian bump at its centre, the map is their maximum (so its argmax is the centre of the best window)."""
    n, C, gh, gw = E.shape
    H, W = size
    cy = torch.arange(gh, dtype=torch.float32) * pixel_stride + (window_px - 1) / 2
    cx = torch.arange(gw, dtype=torch.float32) * pixel_stride + (window_px - 1) / 2
    yy, xx = torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32)
    by = torch.exp(-((yy.view(1, H) - cy.view(gh, 1)) ** 2) / (2 * sigma**2))  # gh × H
    bx = torch.exp(-((xx.view(1, W) - cx.view(gw, 1)) ** 2) / (2 * sigma**2))  # gw × W
    bump = by.view(gh, 1, H, 1) * bx.view(1, gw, 1, W)  # gh × gw × H × W
    out = (E.reshape(n, C, gh, gw, 1, 1) * bump).amax((2, 3))
    return out


def feature_mlp(in_features: int, hidden=(256, 256), *, normalize: bool = True) -> nn.Sequential:
    """linear-relu layers, then (normalize) unit RMS norm per sample."""
    layers, prev = [], in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    if normalize:
        layers.append(PerSampleNorm())
    return nn.Sequential(*layers)


class GroupEnergyHead(nn.Module):
    """The disentangling head: class score = a·log(group energy + eps) + b_c.

    Conv codes: the per-position group energies E_c(p) are pooled over positions, by their sum
    (pool_r = None) or by a smooth max, the power mean (mean_p E_c(p)^r)^(1/r) computed as a log-sum-exp of
    r·log E_c(p) (pool_r = r; r = 1 is the mean, r -> inf the max): the multiple-instance pooling of weak
    supervision, whose gradient goes to the positions that hold a class's evidence.
    """

    def __init__(
        self,
        group: torch.Tensor,
        n_classes: int,
        eps: float = 1e-4,
        init_scale: float = 1.0,
        learn: bool = False,
        pool_r: Optional[float] = None,
    ):
        super().__init__()
        self.register_buffer("group", group.clone())
        self.n_classes, self.eps, self.learn, self.pool_r = n_classes, eps, learn, pool_r
        # fixed (a = 1, b = 0, the default): softmax of the scores is each class group's share of the code
        # energy, so cross-entropy is -log(the true group's share), the disentangling objective itself
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learn)
        self.bias = nn.Parameter(torch.zeros(n_classes), requires_grad=learn)

    def energies(self, H):
        E = group_energy(H, self.group, self.n_classes)
        return E.sum((2, 3)) if E.dim() == 4 else E

    def log_evidence(self, H):
        """log of the pooled group energy, (n, n_classes)."""
        if H.dim() == 4 and self.pool_r is not None:
            r = float(self.pool_r)
            L = torch.log(group_energy(H, self.group, self.n_classes) + self.eps).flatten(2)  # n×C×P
            return (torch.logsumexp(r * L, 2) - math.log(L.shape[2])) / r
        return torch.log(self.energies(H) + self.eps)

    def forward(self, H):
        return self.log_scale.exp() * self.log_evidence(H) + self.bias


def multilabel_softmax_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(logits) against the multi-hot labels normalized to sum 1 (mean over the batch).
    With the fixed-scale group-energy head it is -mean over present classes of log(their group's share)."""
    t = y / y.sum(1, keepdim=True).clamp_min(1e-12)
    return -(t * torch.log_softmax(logits, 1)).sum(1).mean()


class LinearCodeHead(nn.Module):
    """A linear layer on the codes (conv codes are sum-pooled over positions first), times a fixed scale.

    Codes of unit-norm features are small (~0.1), too small for a linear layer to learn from quickly:
    normalize="fixed" multiplies them by `scale` (a buffer that `set_scale` fits to mean 1), "sample" divides
    each sample's codes by their mean.
    """

    def __init__(self, k: int, n_classes: int, normalize: str | None = "sample"):
        super().__init__()
        if normalize not in (None, "fixed", "sample"):
            raise ValueError(f"normalize must be None, 'fixed' or 'sample', got {normalize!r}")
        self.linear = nn.Linear(k, n_classes)
        self.normalize = normalize
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def set_scale(self, H):
        """Fit the fixed scale so that codes H (a sample of them) have mean 1."""
        h = H.sum((2, 3)) if H.dim() == 4 else H
        self.scale.fill_(1.0 / float(h.mean().clamp_min(1e-12)))

    def forward(self, H):
        h = H.sum((2, 3)) if H.dim() == 4 else H
        if self.normalize == "sample":
            h = h / h.mean(1, keepdim=True).clamp_min(1e-6)
        elif self.normalize == "fixed":
            h = h * self.scale
        return self.linear(h)


def build_deepfacto(
    features: nn.Module,
    feat_shape,
    n_classes: int,
    *,
    basis_from=None,
    head: str = "energy",
    per_class: int = 5,
    n_shared: int = 0,
    n_iter: int = 10,
    update_epochs: int | None = 0,
    l1: float = 0.1,
    contrast: float = 2.0,
    normalize: bool = True,
    eg_steps: int = 3,
    eg_lr: float = 1.0,
    learn_head: bool = False,
    pool_r: float | None = None,
    backend: str = "auto",
    solver: str = "op",
    eg_clip: float = 2.0,
):
    """[features, NMF block, head], by default the supervised recipe: unit-RMS features (normalize appends
    PerSampleNorm to features that do not end in one), a class-specific basis (each class group drawn from its
    class's features, less `contrast` times the mean feature vector), frozen (update_epochs=0), l1 = 0.1 on the
    codes. features must end in a non-negative activation (ReLU) and output feat_shape per sample.

    basis_from: (inputs, labels), a few hundred training samples the basis is drawn from (deepfacto.init_basis
    does the same later from a dataset). Without it, training refuses a basis that stays random and frozen.
    """
    if normalize and not isinstance(list(features.modules())[-1], PerSampleNorm):  # (PerSampleNorm is idempotent)
        features = nn.Sequential(features, PerSampleNorm())
    d = feat_shape[0]
    nmf = NMFBlock(
        d,
        n_classes=n_classes,
        per_class=per_class,
        n_shared=n_shared,
        n_iter=n_iter,
        update_epochs=update_epochs,
        eg_steps=eg_steps,
        eg_lr=eg_lr,
        eg_clip=eg_clip,
        l1=l1,
        backend=backend,
        solver=solver,
        name="NMF block (block 1)",
    )
    if basis_from is not None:
        inputs, labels = basis_from
        was = features.training
        features.eval()
        with torch.no_grad():
            F = batched_apply(features, torch.as_tensor(inputs).float())
        features.train(was)
        if tuple(F.shape[1:]) != tuple(feat_shape):
            raise ValueError(
                f"the features output per-sample shape {tuple(F.shape[1:])}, not feat_shape {tuple(feat_shape)}"
            )
        nmf._check_input(F)
        nmf.init_basis_from(F, torch.as_tensor(labels), contrast=contrast)
    if head == "energy":
        h = GroupEnergyHead(nmf.group, n_classes, learn=learn_head, pool_r=pool_r)
    elif head == "linear":
        h = LinearCodeHead(nmf.n_components, n_classes)
        with torch.no_grad():  # start at the group sums (the group-energy evidence, linear): consistent code targets
            onehot = (nmf.group.view(1, -1) == torch.arange(n_classes).view(-1, 1)).float()
            h.linear.weight.copy_(onehot)
            h.linear.bias.zero_()
    else:
        raise ValueError(f"head must be 'energy' or 'linear', got {head!r}")
    return [features, nmf, h]


# ------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def batched_apply(fn, X, bs=500):
    """fn over X in chunks of bs rows, concatenated (no autograd)."""
    return torch.cat([fn(X[i : i + bs]) for i in range(0, len(X), bs)])


@torch.no_grad()
def codes_of(blocks, X, bs=500):
    """The NMF block's codes of X (blocks in eval mode)."""
    for b in blocks:
        b.eval()
    return batched_apply(lambda x: blocks[1](blocks[0](x)), X, bs)


@torch.no_grad()
def init_basis(blocks, train, n: int = 1000, seed: int = 0, contrast: float = 0.0):
    """Start the NMF basis from the features of n training samples, each class group from its class's features."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:n]
    was = blocks[0].training
    blocks[0].eval()
    F = batched_apply(blocks[0], train.X[idx])
    blocks[0].train(was)
    blocks[1].init_basis_from(F, train.Y[idx], seed=seed, contrast=contrast)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, tol: int = 2) -> dict[str, float]:
    """maps (N, C, H, W) at canvas resolution; for each present class (classes (N, 2)) the map's argmax must fall
    inside that digit's box (x0, y0, x1, y1) ± tol. Returns the hit rate over present classes."""
    n, width = maps.shape[0], maps.shape[3]
    hits = 0
    for j in range(classes.shape[1]):
        am = maps[torch.arange(n), classes[:, j]].reshape(n, -1).argmax(1)
        py, px = am // width, am % width
        b = boxes[:, j]
        hit = (px >= b[:, 0] - tol) & (px <= b[:, 2] + tol) & (py >= b[:, 1] - tol) & (py <= b[:, 3] + tol)
        hits += int(hit.sum())
    return {"pointing": hits / (n * classes.shape[1])}


def both_right(logits: torch.Tensor, classes: torch.Tensor) -> float:
    """Share of samples whose two top-scoring classes are their two labels (classes (N, 2))."""
    top2 = logits.topk(2, dim=1).indices.sort(1).values
    return float((top2 == classes.sort(1).values).all(1).float().mean())


def class_group_matrix(H: torch.Tensor, labels: torch.Tensor, group, n_classes: int) -> np.ndarray:
    """Row c: the mean share of code energy in each group (columns; last = shared) over samples of class c
    (multi-hot labels: over samples holding c)."""
    E = group_energy(H, group, n_classes)
    if E.dim() == 4:
        E = E.sum((2, 3))
    tot = H.sum(tuple(range(1, H.dim()))).clamp_min(1e-30)
    share = torch.cat([E, (tot - E.sum(1)).clamp_min(0).unsqueeze(1)], 1) / tot.unsqueeze(1)
    L = labels.float() if labels.dim() == 2 else functional.one_hot(labels.long(), n_classes).float()
    M = (L.T @ share) / L.sum(0).clamp_min(1).unsqueeze(1)
    return M.numpy()
