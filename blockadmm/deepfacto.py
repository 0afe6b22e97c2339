"""DeepFacto: a feature block, an NMF block with one component group per class, and a head, trained by
Block-ADMM (the NMF layer is never crossed by backprop). Supervised disentangling on MNIST-5k and weakly
supervised localization on MNIST-5k pairs, with backprop baselines in the same run, metrics and figures.

Recipes (chosen on validation splits):
- supervised: flat conv features (unit norm) -> NMF (10 groups of 5, basis = each class's excess over twice the
  mean feature vector, frozen; l1 = 0.1 on the codes) -> group-energy head (CE = -log true group share) or a
  linear head on per-sample-normalized codes (started at the group sums, mirror steps clipped at 0.25);
- weakly supervised pairs: the same flat recipe applied to 28×28-pixel windows of the canvas's conv features
  (`WindowFeatures`), group energies pooled over windows by a smooth max (power mean, r = 4), multi-label
  softmax loss on image-level labels, l1 = 0.03; trained from scratch on the canvases alone: first 15 epochs on
  "ink proposals" (each training canvas's densest 28×28 crop, then the densest with that one blanked, each with
  its canvas's two labels), then 4 epochs on the canvases. Straight on the canvases the groups did not separate
  (validation pointing 31.5% after 4 epochs, 2000 canvases); a curriculum on single MNIST-5k digits with their
  labels is the other option.

`main(argv)` is the `blockadmm deepfacto` command.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn
import torch.nn.functional as Fn

from .nmf import NMFBlock, disentangling_score, group_energy

# ------------------------------------------------------------------------------------------ models


class PerSampleNorm(nn.Module):
    """x / sqrt(mean over positions of |x_p|²): each sample's features get unit RMS norm per position."""

    def forward(self, x):
        P = 1 if x.dim() == 2 else x[0, 0].numel()
        n = x.flatten(1).norm(dim=1).clamp_min(1e-6) / math.sqrt(P)
        return x / n.view(-1, *([1] * (x.dim() - 1)))


class ReuseForward(nn.Module):
    """The feature block as a submodule `module` (the layout of DeepFacto checkpoints). Block-ADMM keeps a block's
    forward graph itself (blockadmm.engine), so this wrapper no longer memoizes anything."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def feature_cnn(in_channels: int = 1, widths=(16, 32, 64), *, flatten: bool = True, normalize: bool = True) -> nn.Sequential:
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

    def __init__(self, cnn: nn.Module, window: int = 7, stride: int = 3):
        super().__init__()
        self.cnn, self.window, self.stride = cnn, int(window), int(stride)

    def forward(self, x):
        F = self.cnn(x)
        n, c, h, w = F.shape
        gh, gw = (h - self.window) // self.stride + 1, (w - self.window) // self.stride + 1
        U = Fn.unfold(F, self.window, stride=self.stride)  # n × (c·k²) × (gh·gw)
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return U.reshape(n, c * self.window ** 2, gh, gw)


def window_maps(E: torch.Tensor, size, *, pixel_stride: int = 12, window_px: int = 28, sigma: float = 6.0) -> torch.Tensor:
    """Per-window evidence (n, C, gh, gw) -> maps (n, C, H, W) at image resolution: each window's evidence is a
    Gaussian bump at its centre, the map is their maximum (so its argmax is the centre of the best window)."""
    n, C, gh, gw = E.shape
    H, W = size
    cy = torch.arange(gh, dtype=torch.float32) * pixel_stride + (window_px - 1) / 2
    cx = torch.arange(gw, dtype=torch.float32) * pixel_stride + (window_px - 1) / 2
    yy, xx = torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32)
    by = torch.exp(-(yy.view(1, H) - cy.view(gh, 1)) ** 2 / (2 * sigma ** 2))  # gh × H
    bx = torch.exp(-(xx.view(1, W) - cx.view(gw, 1)) ** 2 / (2 * sigma ** 2))  # gw × W
    bump = by.view(gh, 1, H, 1) * bx.view(1, gw, 1, W)  # gh × gw × H × W
    out = (E.reshape(n, C, gh, gw, 1, 1) * bump).amax((2, 3))
    return out


def feature_mlp(in_features: int, hidden=(256, 256), *, normalize: bool = True) -> nn.Sequential:
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

    def __init__(self, group: torch.Tensor, n_classes: int, eps: float = 1e-4, init_scale: float = 1.0, learn: bool = False,
                 pool_r: Optional[float] = None):
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

    Codes of unit-norm features are small (~0.1) and the plain linear layer on them learned very slowly (74%
    after 12 epochs); `scale` (a buffer, 1 by default; `set_scale` fits it) brings them to mean 1.
    normalize="sample" instead divides each sample's codes by their mean.
    """

    def __init__(self, k: int, n_classes: int, normalize: Optional[str] = "sample"):
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


def build_deepfacto(features: nn.Module, feat_shape, n_classes: int, *, basis_from=None, head: str = "energy",
                    per_class: int = 5, n_shared: int = 0, n_iter: int = 10, update_epochs: Optional[int] = 0,
                    l1: float = 0.1, contrast: float = 2.0, normalize: bool = True, eg_steps: int = 3,
                    eg_lr: float = 1.0, learn_head: bool = False, pool_r: Optional[float] = None,
                    backend: str = "auto", reuse_forward: bool = True, solver: str = "op", eg_clip: float = 2.0):
    """[features, NMF block, head], by default the supervised recipe: unit-RMS features (normalize appends
    PerSampleNorm to features that do not end in one), a class-specific basis (each class group drawn from its
    class's features, less `contrast` times the mean feature vector), frozen (update_epochs=0), l1 = 0.1 on the
    codes. features must end in a non-negative activation (ReLU) and output feat_shape per sample.

    basis_from: (inputs, labels), a few hundred training samples the basis is drawn from (deepfacto.init_basis
    does the same later from a dataset). Without it, training refuses a basis that stays random and frozen.
    reuse_forward wraps the features in ReuseForward (same results, one forward fewer per step).
    """
    if normalize and not isinstance(list(features.modules())[-1], PerSampleNorm):  # (PerSampleNorm is idempotent)
        features = nn.Sequential(features, PerSampleNorm())
    if reuse_forward and not isinstance(features, ReuseForward):
        features = ReuseForward(features)
    d = feat_shape[0]
    nmf = NMFBlock(d, n_classes=n_classes, per_class=per_class, n_shared=n_shared, n_iter=n_iter,
                   update_epochs=update_epochs, eg_steps=eg_steps, eg_lr=eg_lr, eg_clip=eg_clip, l1=l1, backend=backend,
                   solver=solver, name="NMF block (block 1)")
    if basis_from is not None:
        inputs, labels = basis_from
        was = features.training
        features.eval()
        with torch.no_grad():
            F = _batched(features, torch.as_tensor(inputs).float())
        features.train(was)
        if tuple(F.shape[1:]) != tuple(feat_shape):
            raise ValueError(f"the features output per-sample shape {tuple(F.shape[1:])}, not feat_shape "
                             f"{tuple(feat_shape)}")
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
def _batched(fn, X, bs=500):
    return torch.cat([fn(X[i:i + bs]) for i in range(0, len(X), bs)])


@torch.no_grad()
def codes_of(blocks, X, bs=500):
    for b in blocks:
        b.eval()
    return _batched(lambda x: blocks[1](blocks[0](x)), X, bs)


@torch.no_grad()
def init_basis(blocks, train, n: int = 1000, seed: int = 0, contrast: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=g)[:n]
    was = blocks[0].training
    blocks[0].eval()
    F = _batched(blocks[0], train.X[idx])
    blocks[0].train(was)
    blocks[1].init_basis_from(F, train.Y[idx], seed=seed, contrast=contrast)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, tol: int = 2) -> Dict[str, float]:
    """maps (N, C, H, W) at canvas resolution; for each present class (classes (N, 2)) the map's argmax must fall
    inside that digit's box (x0, y0, x1, y1) ± tol. Returns the hit rate over present classes."""
    N, C, Hh, Ww = maps.shape
    hits = 0
    for j in range(classes.shape[1]):
        m = maps[torch.arange(N), classes[:, j]].reshape(N, -1)
        am = m.argmax(1)
        py, px = am // Ww, am % Ww
        b = boxes[:, j]
        hit = (px >= b[:, 0] - tol) & (px <= b[:, 2] + tol) & (py >= b[:, 1] - tol) & (py <= b[:, 3] + tol)
        hits += int(hit.sum())
    return {"pointing": hits / (N * classes.shape[1])}


def _upsample(maps, size):
    return Fn.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def both_right(logits: torch.Tensor, classes: torch.Tensor) -> float:
    top2 = logits.topk(2, dim=1).indices.sort(1).values
    return float((top2 == classes.sort(1).values).all(1).float().mean())


# ------------------------------------------------------------------------------------------ backprop baselines


class GAPLinear(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        self.linear = nn.Linear(c, n)

    def forward(self, x):
        return self.linear(x.mean((2, 3)))


def train_backprop(model: nn.Module, train, epochs: int, *, batch_size: int, seed: int, loss_fn, lr: float = 1e-3,
                   evaluate=None, progress: bool = True, desc: str = "backprop"):
    """Plain Adam training on the same batches as the Block-ADMM run (make_loader with the same seed)."""
    from tqdm.auto import tqdm

    from .data import make_loader

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y, _ in tqdm(make_loader(train, batch_size, shuffle=True, seed=seed, epoch=epoch), desc=f"{desc} {epoch + 1}/{epochs}",
                            leave=False, disable=not progress):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        rec = {"epoch": epoch + 1, "wall_s": time.perf_counter() - t0}
        model.eval()
        if evaluate:
            rec.update(evaluate(model))
        hist.append(rec)
    return hist


@torch.no_grad()
def _acc(model_fn, ds, bs=500):
    out = _batched(model_fn, ds.X, bs)
    return float((out.argmax(1) == ds.Y).float().mean())


# ------------------------------------------------------------------------------------------ supervised


def run_supervised(seed: int, *, epochs: int, batch_size: int = 64, head: str = "energy", arch: str = "cnn",
                   per_class: int = 5, update_epochs: int = 0, rho: float = 1.0, lr_z: float = 0.5, sweeps: int = 1,
                   dual_step: float = 0.5, eg_steps: int = 3, eg_lr: float = 1.0, n_iter: int = 10, lr: float = 3e-3,
                   contrast: float = 2.0, learn_head: bool = False, val_fraction: float = 0.1, use_test: bool = True, baselines: bool = True, progress: bool = True,
                   n_train: Optional[int] = None, l1: float = 0.1, solver: str = "op", eg_clip: Optional[float] = None,
                   backend: str = "auto",
                   log=print) -> dict:
    from .data import load
    from .trainer import BlockADMM

    data = load("mnist5k", image=(arch == "cnn"), val_fraction=val_fraction, split_seed=0)
    train, val, test = data.train, data.val, data.test
    if n_train:
        from .data import IndexedDataset
        train = IndexedDataset(train.X[:n_train], train.Y[:n_train], 10)
    torch.manual_seed(seed)
    feats = feature_cnn(1) if arch == "cnn" else feature_mlp(train.input_shape[0])
    with torch.no_grad():
        feat_shape = tuple(feats(train.X[:2]).shape[1:])
    blocks = build_deepfacto(feats, feat_shape, 10, head=head, per_class=per_class, n_iter=n_iter,
                             update_epochs=update_epochs, eg_steps=eg_steps, eg_lr=eg_lr, learn_head=learn_head, l1=l1, solver=solver,
                             eg_clip=eg_clip if eg_clip is not None else (2.0 if head == "energy" else 0.25), backend=backend)
    init_basis(blocks, train, seed=seed, contrast=contrast)
    if isinstance(blocks[2], LinearCodeHead):
        blocks[2].set_scale(codes_of(blocks, train.X[:1000]))
    trainer = BlockADMM(blocks, input_shape=train.input_shape, mode="online", constraints={0: "nonneg", 1: "nonneg"},
                        rho=rho, lr_z=lr_z, sweeps=sweeps, dual_step=dual_step, seed=seed, backend=backend,
                        optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    per_epoch = []

    def on_epoch(rec):
        ev = {"epoch": rec["epoch"], "wall_s": rec["wall_s"], "train_acc": rec["train_acc"], "loss": rec["loss"],
              "primal": rec["primal_residual"]}
        for name, ds in (("val", val), ("test", test if use_test else None)):
            if ds is not None:
                ev[f"{name}_acc"] = rec[f"{name}_acc"]
                H = codes_of(blocks, ds.X)
                ev[f"{name}_disentangling"] = disentangling_score(H, ds.Y, blocks[1].group, 10)
        per_epoch.append(ev)
        log(f"[deepfacto seed {seed} {head}] epoch {ev['epoch']}: " + " ".join(
            f"{k}={v:.4f}" for k, v in ev.items() if isinstance(v, float)))

    trainer.fit(train, epochs, batch_size=batch_size, val=val, test=test if use_test else None, progress=progress, on_epoch=on_epoch)
    out = {"seed": seed, "head": head, "epochs": per_epoch, "deepfacto_epoch_s": float(np.median([e["wall_s"] for e in per_epoch])),
           "trainer": trainer, "blocks": blocks}
    last = per_epoch[-1]
    for k in ("val_acc", "test_acc", "val_disentangling", "test_disentangling"):
        if k in last:
            out[k] = last[k]
    key = "test_acc" if use_test else "val_acc"
    out[f"best_{key}"] = max(e[key] for e in per_epoch)
    if baselines:
        torch.manual_seed(seed)
        lin = nn.Sequential(feature_cnn(1, normalize=False) if arch == "cnn" else feature_mlp(train.input_shape[0], normalize=False),
                            nn.LazyLinear(10))
        lin(train.X[:2])

        def ev(m):
            r = {"val_acc": _acc(m, val)} if val is not None else {}
            if use_test:
                r["test_acc"] = _acc(m, test)
            return r

        h = train_backprop(lin, train, epochs, batch_size=batch_size, seed=seed, loss_fn=nn.CrossEntropyLoss(), evaluate=ev,
                           progress=progress, desc="backprop linear")
        out["backprop_linear"] = h[-1] | {"epoch_s": float(np.median([e["wall_s"] for e in h]))}
        log(f"[backprop linear seed {seed}] {out['backprop_linear']}")
        if arch == "cnn":
            torch.manual_seed(seed)
            cam = nn.Sequential(feature_cnn(1, flatten=False, normalize=False), GAPLinear(64, 10))
            h = train_backprop(cam, train, epochs, batch_size=batch_size, seed=seed, loss_fn=nn.CrossEntropyLoss(), evaluate=ev,
                               progress=progress, desc="backprop GAP")
            out["backprop_gap"] = h[-1] | {"epoch_s": float(np.median([e["wall_s"] for e in h]))}
            log(f"[backprop GAP seed {seed}] {out['backprop_gap']}")
    return out


# ------------------------------------------------------------------------------------------ weak supervision (pairs)


@torch.no_grad()
def _pairs_eval(logit_fn, map_fn, ds, bs=250) -> Dict[str, float]:
    """both-labels-right accuracy and pointing game of a model on a PairsDataset."""
    logits = _batched(logit_fn, ds.X, bs)
    maps = _batched(lambda x: _upsample(map_fn(x), ds.X.shape[-2:]), ds.X, bs)
    return {"acc_both": both_right(logits, ds.classes), **pointing_game(maps, ds.boxes, ds.classes)}


def most_ink_maps(x, window: int = 9):
    """The trivial rule: every class points at the densest ink (a box-filtered image), the same map for all."""
    m = Fn.avg_pool2d(x, window, stride=1, padding=window // 2)
    return m.expand(-1, 10, -1, -1)


def ink_proposals(X: torch.Tensor, Y: torch.Tensor, k: int = 2, window: int = 28, stride: int = 4):
    """Digit-sized crops from the canvases themselves, by a rule that needs no labels and no boxes: the densest
    window x window crop of each canvas (windows every `stride` px), then the densest once that crop's pixels are
    blanked, k times. Each crop keeps its canvas's image-level labels — one of them is its digit's, which one is
    unknown. Returns an IndexedDataset of (N·k, 1, window, window) crops, canvas by canvas."""
    from .data import IndexedDataset

    N, _, _, W = X.shape
    gw = (W - window) // stride + 1
    rest, rows, span = X.clone(), torch.arange(N).view(N, 1, 1), torch.arange(window)
    crops = []
    for _ in range(k):
        j = Fn.avg_pool2d(rest, window, stride=stride).flatten(1).argmax(1)
        ys = ((j // gw) * stride).view(N, 1, 1) + span.view(1, window, 1)
        xs = ((j % gw) * stride).view(N, 1, 1) + span.view(1, 1, window)
        crops.append(X[rows, 0, ys, xs])
        rest[rows, 0, ys, xs] = 0.0
    C = torch.stack(crops, 1).reshape(N * k, 1, window, window)
    return IndexedDataset(C, Y.repeat_interleave(k, 0), Y.shape[1])


def run_pairs(seed: int, *, epochs: int, batch_size: int = 64, per_class: int = 5, n_shared: int = 0,
              update_epochs: int = 0, rho: float = 1.0, lr_z: float = 0.5, sweeps: int = 1, dual_step: float = 0.5,
              eg_steps: int = 3, eg_lr: float = 1.0, n_iter: int = 10, lr: float = 3e-3, clutter: int = 0, contrast: float = 2.0,
              n_train: int = 4000, n_test: int = 1000, val_fraction: float = 0.1, use_test: bool = True,
              pool_r: Optional[float] = 4.0, loss: str = "softmax", learn_head: bool = False, l1: float = 0.03,
              cam_epochs: Optional[int] = None, cam_lr: float = 3e-3, curriculum_epochs: int = 15, curriculum: str = "proposals",
              windows: bool = True, window_stride: int = 2, solver: str = "gram",
              baselines: bool = True, progress: bool = True, backend: str = "auto", log=print) -> dict:
    from .pairs import load_pairs
    from .trainer import BlockADMM

    data = load_pairs(n_train, n_test, val_fraction=val_fraction, seed=0, clutter=clutter)
    train, val, test = data.train, data.val, data.test
    evals = [("val", val)] + ([("test", test)] if use_test else [])
    torch.manual_seed(seed)
    if windows:
        feats = WindowFeatures(feature_cnn(1, flatten=False, normalize=False), stride=window_stride)
    else:
        feats = feature_cnn(1, flatten=False)
    with torch.no_grad():
        feat_shape = tuple(feats(train.X[:2]).shape[1:])
    blocks = build_deepfacto(feats, feat_shape, 10, head="energy", per_class=per_class, n_shared=n_shared, n_iter=n_iter,
                             update_epochs=update_epochs, eg_steps=eg_steps, eg_lr=eg_lr, learn_head=learn_head, pool_r=pool_r,
                             l1=l1, solver=solver, backend=backend)
    if loss not in ("softmax", "bce"):
        raise ValueError(f"loss must be 'softmax' or 'bce', got {loss!r}")
    loss_fn = multilabel_softmax_loss if loss == "softmax" else nn.BCEWithLogitsLoss()
    if curriculum not in ("digits", "proposals"):
        raise ValueError(f"curriculum must be 'digits' or 'proposals', got {curriculum!r}")
    if curriculum_epochs:
        # stage 1 of a curriculum, on 28×28 crops with the same fully convolutional blocks: "digits", single
        # MNIST-5k training digits (the digits the training canvases are made of) with their labels; "proposals",
        # the densest crops of the training canvases themselves, each with its canvas's two labels (from scratch:
        # nothing but the canvases and their image-level labels)
        from .data import IndexedDataset, load

        if curriculum == "digits":
            single = load("mnist5k", image=True).train
            single = IndexedDataset(single.X, Fn.one_hot(single.Y, 10).float(), 10)
        else:
            single = ink_proposals(train.X, train.Y)
        init_basis(blocks, single, seed=seed, contrast=contrast)
        stage1 = BlockADMM(blocks, input_shape=single.input_shape, mode="online", constraints={0: "nonneg", 1: "nonneg"},
                           loss=loss_fn, rho=rho, lr_z=lr_z, sweeps=sweeps, dual_step=dual_step, seed=seed,
                           backend=backend, optimizer=lambda p: torch.optim.Adam(p, lr=lr))
        stage1.fit(single, curriculum_epochs, batch_size=batch_size, progress=progress,
                   on_epoch=lambda rec: log(f"[deepfacto pairs seed {seed}] curriculum ({curriculum}) epoch {rec['epoch']}: "
                                            f"loss={rec['loss']:.4f} wall_s={rec['wall_s']:.1f}"))
    else:
        init_basis(blocks, train, seed=seed, contrast=contrast)
    trainer = BlockADMM(blocks, input_shape=train.input_shape, mode="online", constraints={0: "nonneg", 1: "nonneg"},
                        loss=loss_fn, rho=rho, lr_z=lr_z, sweeps=sweeps, dual_step=dual_step, seed=seed,
                        backend=backend, optimizer=lambda p: torch.optim.Adam(p, lr=lr))

    def df_logits(x):
        return blocks[2](blocks[1](blocks[0](x)))

    def df_maps(x):
        E = blocks[1].group_energy(blocks[1](blocks[0](x)))
        return window_maps(E, x.shape[-2:], pixel_stride=4 * window_stride) if windows else E

    per_epoch = []

    def on_epoch(rec):
        for b in blocks:
            b.eval()
        ev = {"epoch": rec["epoch"], "wall_s": rec["wall_s"], "loss": rec["loss"]}
        for name, ds in evals:
            r = _pairs_eval(df_logits, df_maps, ds)
            ev[f"{name}_acc_both"], ev[f"{name}_pointing"] = r["acc_both"], r["pointing"]
            ev[f"{name}_disentangling"] = disentangling_score(codes_of(blocks, ds.X[:500]), ds.Y[:500], blocks[1].group, 10)
        per_epoch.append(ev)
        log(f"[deepfacto pairs seed {seed}] " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items()))

    trainer.fit(train, epochs, batch_size=batch_size, progress=progress, on_epoch=on_epoch)
    out = {"seed": seed, "epochs": per_epoch, "deepfacto_epoch_s": float(np.median([e["wall_s"] for e in per_epoch])),
           "blocks": blocks, "data": data, "df_maps": df_maps}
    out.update({k: v for k, v in per_epoch[-1].items() if k.startswith(("val_", "test_"))})
    for name, ds in evals:
        out[f"{name}_most_ink_pointing"] = _pairs_eval(lambda x: torch.zeros(len(x), 10), most_ink_maps, ds)["pointing"]
    if baselines:
        torch.manual_seed(seed)
        cam = nn.Sequential(feature_cnn(1, flatten=False, normalize=False), GAPLinear(64, 10))

        def cam_maps(x):
            # class activation map: the class's linear weights over the last conv features, per position. (The
            # 0% pointing of the first runs was this map on a net still at chance: every class weight had gone
            # negative, so the zero background was the maximum and argmax fell on its first pixel, (0, 0).)
            F = cam[0](x)
            return torch.einsum("nchw,kc->nkhw", F, cam[1].linear.weight) + cam[1].linear.bias.view(1, -1, 1, 1)

        if curriculum_epochs:  # the same curriculum as DeepFacto
            train_backprop(cam, single, curriculum_epochs, batch_size=batch_size, seed=seed, loss_fn=nn.BCEWithLogitsLoss(),
                           lr=cam_lr, progress=progress, desc=f"backprop CAM (curriculum: {curriculum})")
        h = train_backprop(cam, train, cam_epochs or epochs, batch_size=batch_size, seed=seed, loss_fn=nn.BCEWithLogitsLoss(),
                           lr=cam_lr, progress=progress, desc="backprop CAM")
        cam.eval()
        out["cam_epoch_s"] = float(np.median([e["wall_s"] for e in h]))
        for name, ds in evals:
            r = _pairs_eval(cam, cam_maps, ds)
            out[f"{name}_cam_acc_both"], out[f"{name}_cam_pointing"] = r["acc_both"], r["pointing"]
        out["cam_maps"] = cam_maps
        log(f"[CAM seed {seed}] " + " ".join(f"{k}={v:.4f}" for k, v in out.items() if "cam_" in k and isinstance(v, float)))
    log(f"[most ink] " + " ".join(f"{k}={v:.4f}" for k, v in out.items() if "most_ink" in k))
    return out


# ------------------------------------------------------------------------------------------ speed


def speed_benchmark(*, steps: int = 40, rounds: int = 3, batch_size: int = 64, log=print) -> dict:
    """Seconds per `steps` training steps on MNIST-5k of backprop (feature CNN + linear, Adam) and of DeepFacto
    (the supervised recipe) with each NMF solver, in interleaved rounds on the same batches (the machine's load
    then hits all of them alike); the ratio uses each one's fastest round."""
    from .data import load, make_loader
    from .trainer import BlockADMM

    train = load("mnist5k", image=True).train
    batches = [b for _, b in zip(range(steps), make_loader(train, batch_size, shuffle=True, seed=0, epoch=0))]
    torch.manual_seed(0)
    bp = nn.Sequential(feature_cnn(1, normalize=False), nn.LazyLinear(10))
    bp(train.X[:2])
    opt = torch.optim.Adam(bp.parameters(), lr=1e-3)

    def bp_steps():
        for x, y, _ in batches:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(bp(x), y).backward()
            opt.step()

    def df(solver, reuse=True):
        torch.manual_seed(0)
        blocks = build_deepfacto(feature_cnn(1), (3136,), 10, head="energy", per_class=5, update_epochs=0, l1=0.1,
                                 solver=solver, reuse_forward=reuse)
        init_basis(blocks, train, contrast=2.0)
        t = BlockADMM(blocks, input_shape=(1, 28, 28), mode="online", constraints={0: "nonneg", 1: "nonneg"}, rho=1.0,
                      lr_z=0.5, sweeps=1, dual_step=0.5, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
        return lambda: [t.step(x, y, i) for x, y, i in batches]

    runs = {"backprop": bp_steps, "deepfacto_op": df("op"), "deepfacto_gram": df("gram"),
            "deepfacto_op_no_reuse": df("op", reuse=False)}
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    out = {"steps": steps, "rounds": rounds, "seconds": times,
           "ratio_to_backprop": {k: best[k] / best["backprop"] for k in runs if k != "backprop"}}
    log(f"[speed] {out['ratio_to_backprop']}")
    return out


# ------------------------------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_basis(nmf, path: str, feat_shape, feature_to_image=None, title: str = "NMF basis components"):
    """Basis components as an image grid (rows: class groups, then shared). Components of flat conv features are shown
    as their (h, w) energy map; `feature_to_image(w_row) -> 2-D array` overrides that."""
    plt = _plt()
    W = nmf.W.detach().cpu()
    k = W.shape[0]
    groups = sorted(set(nmf.group.tolist()), key=lambda g: (g < 0, g))
    cols = max(int((nmf.group == g).sum()) for g in groups)
    fig, axes = plt.subplots(len(groups), cols, figsize=(1.3 * cols, 1.3 * len(groups)), squeeze=False)
    for r, g in enumerate(groups):
        idx = torch.nonzero(nmf.group == g).flatten().tolist()
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                w = W[idx[c]]
                if feature_to_image is not None:
                    img = feature_to_image(w)
                elif len(feat_shape) == 3:
                    img = w.view(*feat_shape).norm(dim=0).numpy()
                elif len(feat_shape) == 1 and len(w) > 1:
                    side = int(math.ceil(math.sqrt(len(w))))
                    img = np.zeros(side * side)
                    img[: len(w)] = w.numpy()
                    img = img.reshape(side, side)
                ax.imshow(img, cmap="magma")
        axes[r, 0].text(-0.3, 0.5, "shared" if g < 0 else f"class {g}", transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def class_group_matrix(H: torch.Tensor, labels: torch.Tensor, group, n_classes: int) -> np.ndarray:
    """Row c: the mean share of code energy in each group (columns; last = shared) over samples of class c
    (multi-hot labels: over samples holding c)."""
    E = group_energy(H, group, n_classes)
    if E.dim() == 4:
        E = E.sum((2, 3))
    tot = H.sum(tuple(range(1, H.dim()))).clamp_min(1e-30)
    share = torch.cat([E, (tot - E.sum(1)).clamp_min(0).unsqueeze(1)], 1) / tot.unsqueeze(1)
    L = labels.float() if labels.dim() == 2 else Fn.one_hot(labels.long(), n_classes).float()
    M = (L.T @ share) / L.sum(0).clamp_min(1).unsqueeze(1)
    return M.numpy()


def fig_matrix(M: np.ndarray, path: str, title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=max(1e-6, float(M.max())))
    ax.set_xlabel("component group")
    ax.set_ylabel("true class")
    ax.set_xticks(range(M.shape[1]), [str(i) for i in range(M.shape[1] - 1)] + ["sh"])
    ax.set_yticks(range(M.shape[0]))
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w" if M[i, j] < 0.5 * M.max() else "k")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def fig_pairs(ds, map_fns: Dict[str, object], path: str, n: int = 6):
    """Rows: canvases; columns: the canvas with both boxes, then each method's map for each present class (x = argmax)."""
    plt = _plt()
    names = list(map_fns)
    cols = 1 + 2 * len(names)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    x = ds.X[:n]
    maps = {k: _upsample(f(x), x.shape[-2:]) for k, f in map_fns.items()}
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(x[i, 0].numpy(), cmap="gray")
        for j in range(2):
            x0, y0, x1, y1 = ds.boxes[i, j].tolist()
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="cyan" if j == 0 else "orange", lw=1))
        ax.set_title(f"{ds.classes[i, 0].item()} & {ds.classes[i, 1].item()}", fontsize=7)
        for m, name in enumerate(names):
            for j in range(2):
                c = int(ds.classes[i, j])
                ax = axes[i, 1 + 2 * m + j]
                mp = maps[name][i, c]
                ax.imshow(mp.numpy(), cmap="magma")
                am = int(mp.argmax())
                ax.plot(am % mp.shape[1], am // mp.shape[1], "x", color="cyan" if j == 0 else "orange", ms=6, mew=2)
                x0, y0, x1, y1 = ds.boxes[i, j].tolist()
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="w", lw=0.6, ls="--"))
                if i == 0:
                    ax.set_title(f"{name}: class {'A' if j == 0 else 'B'}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------ command


def _summ(values: List[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)), "per_seed": [float(v) for v in values]}


def _clean(r: dict) -> dict:
    return {k: v for k, v in r.items() if isinstance(v, (int, float, str, list, dict)) and k not in ("data",)}


def main(argv: Optional[List[str]] = None) -> int:
    from .argtypes import ArgumentParser, seed_list

    p = ArgumentParser(prog="blockadmm deepfacto", description="DeepFacto: NMF-layer networks trained by Block-ADMM "
                                "(supervised disentangling on MNIST-5k, weakly supervised localization on MNIST-5k pairs).")
    p.add_argument("--data", choices=["mnist5k", "pairs"], default="mnist5k")
    p.add_argument("--epochs", type=int, default=None, help="default 12 (mnist5k) / 4 (pairs, after the curriculum); --quick: 2")
    p.add_argument("--seeds", type=seed_list, default=None, help="comma list (default 0,1,2 for mnist5k, 0 for pairs)")
    p.add_argument("--head", choices=["energy", "linear", "both"], default="both", help="mnist5k: DeepFacto head(s) to train")
    p.add_argument("--arch", choices=["cnn", "mlp"], default="cnn", help="mnist5k feature block")
    p.add_argument("--out", default=None, help="output folder (default runs/deepfacto/<data>)")
    p.add_argument("--quick", action="store_true", help="a short smoke run: 2 epochs, 1 seed, 1000 training samples")
    p.add_argument("--device", default="cpu", help="only 'cpu' is wired for now")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--select", action="store_true", help="report validation metrics only (hyperparameter selection; test untouched)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--update-epochs", type=int, default=0, help="epochs in which the NMF basis is updated by multiplicative updates before it is frozen (0: frozen at its class-specific init, best on validation)")
    p.add_argument("--per-class", type=int, default=None, help="components per class group (default 5)")
    p.add_argument("--sweeps", type=int, default=1)
    p.add_argument("--clutter", type=int, default=0, help="pairs: 8×8 fragments of clutter per canvas")
    p.add_argument("--n-train", type=int, default=None, help="pairs: training canvases (default 4000; --quick 1000)")
    p.add_argument("--n-test", type=int, default=None, help="pairs: test canvases (default 1000; --quick 300)")
    p.add_argument("--backend", default="auto", help="backend of the NMF op")
    p.add_argument("--nmf-solver", choices=["op", "gram"], default=None,
                   help="codes by blockadmm.ops.nmf_mu_update (op; default mnist5k) or by the same updates on V Wᵀ, W Wᵀ computed "
                        "once per solve (gram; default pairs)")
    p.add_argument("--contrast", type=float, default=None, help="basis init: excess over this multiple of the mean feature (default 2)")
    p.add_argument("--l1", type=float, default=None, help="l1 penalty on the codes in the NMF solve (default 0.1 mnist5k, 0.03 pairs: "
                   "at 0.1 one pairs seed of three lost all code energy in its first epoch on the canvases)")
    p.add_argument("--window-stride", type=int, default=2, help="pairs: stride (feature cells; 4 px each) of the 28×28-pixel windows")
    p.add_argument("--pool-r", type=float, default=4.0, help="pairs: smooth-max (power mean) exponent pooling group energy over positions")
    p.add_argument("--curriculum-epochs", type=int, default=15, help="pairs: epochs of the curriculum's first stage, for DeepFacto and CAM")
    p.add_argument("--curriculum", choices=["digits", "proposals"], default="proposals",
                   help="pairs: first stage on single MNIST-5k digits with their labels (digits), or on the densest crops of the "
                        "training canvases with their canvas's two labels (proposals: from the canvases alone)")
    p.add_argument("--cam-epochs", type=int, default=None, help="pairs: epochs of the CAM baseline on the canvases (default: --epochs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed", action="store_true", help="also time backprop vs DeepFacto steps in interleaved rounds (metrics 'speed')")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.device != "cpu":
        p.error("--device: only cpu is wired in this version")
    torch.set_num_threads(a.threads)
    out = a.out or os.path.join("runs", "deepfacto", a.data)
    os.makedirs(out, exist_ok=True)
    epochs = a.epochs or (2 if a.quick else (12 if a.data == "mnist5k" else 4))
    seeds = a.seeds or ([0] if (a.quick or a.data == "pairs") else [0, 1, 2])
    use_test = not a.select
    prog = not a.no_progress
    metrics: dict = {"data": a.data, "epochs": epochs, "seeds": seeds, "args": vars(a)}

    if a.data == "mnist5k":
        heads = ["energy", "linear"] if a.head == "both" else [a.head]
        runs = {h: [] for h in heads}
        for seed in seeds:
            for i, h in enumerate(heads):
                r = run_supervised(seed, epochs=epochs, batch_size=a.batch_size, head=h, arch=a.arch, update_epochs=a.update_epochs,
                                   per_class=a.per_class or 5, sweeps=a.sweeps, use_test=use_test, baselines=(i == 0 and not a.no_baselines),
                                   progress=prog, n_train=1000 if a.quick else None, backend=a.backend,
                                   contrast=a.contrast if a.contrast is not None else 2.0, l1=a.l1 if a.l1 is not None else 0.1,
                                   solver=a.nmf_solver or "op")
                runs[h].append(r)
        key = "test" if use_test else "val"
        for h, rs in runs.items():
            m = {f"{key}_acc": _summ([r[f"{key}_acc"] for r in rs]),
                 f"best_{key}_acc": _summ([r[f"best_{key}_acc"] for r in rs]),
                 f"{key}_disentangling": _summ([r[f"{key}_disentangling"] for r in rs]),
                 "last_minus_best": _summ([r[f"{key}_acc"] - r[f"best_{key}_acc"] for r in rs]),
                 "epoch_s": _summ([r["deepfacto_epoch_s"] for r in rs]),
                 "per_seed": [_clean({k: v for k, v in r.items() if k not in ("trainer", "blocks")}) for r in rs]}
            metrics[f"deepfacto_{h}"] = m
        base = runs[heads[0]]
        if "backprop_linear" in base[0]:
            metrics["backprop_linear"] = {f"{key}_acc": _summ([r["backprop_linear"][f"{key}_acc"] for r in base]),
                                          "epoch_s": _summ([r["backprop_linear"]["epoch_s"] for r in base])}
            if "backprop_gap" in base[0]:
                metrics["backprop_gap_cam"] = {f"{key}_acc": _summ([r["backprop_gap"][f"{key}_acc"] for r in base]),
                                               "epoch_s": _summ([r["backprop_gap"]["epoch_s"] for r in base])}
            metrics["epoch_time_ratio"] = {h: float(np.mean([r["deepfacto_epoch_s"] for r in runs[h]]) /
                                                    np.mean([r["backprop_linear"]["epoch_s"] for r in base])) for h in heads}
        r0 = runs[heads[0]][0]
        blocks = r0["blocks"]
        from .data import load

        ds = load("mnist5k", image=(a.arch == "cnn")).test if use_test else None
        feat_shape = tuple(blocks[0](torch.zeros(1, *((1, 28, 28) if a.arch == "cnn" else (784,)))).shape[1:])
        fig_basis(blocks[1], os.path.join(out, "basis.png"), (64, 7, 7) if a.arch == "cnn" else feat_shape,
                  title="NMF basis (seed %d): per-component energy over the 7×7 feature positions" % seeds[0])
        if ds is not None:
            H = codes_of(blocks, ds.X)
            M = class_group_matrix(H, ds.Y, blocks[1].group, 10)
            fig_matrix(M, os.path.join(out, "class_group_energy.png"), f"share of code energy, test, seed {seeds[0]} ({heads[0]} head)")
            metrics["class_group_matrix"] = M.round(4).tolist()
    else:
        rs = []
        for seed in seeds:
            rs.append(run_pairs(seed, epochs=epochs, batch_size=a.batch_size, per_class=a.per_class or 5, update_epochs=a.update_epochs,
                                sweeps=a.sweeps, clutter=a.clutter, use_test=use_test, baselines=not a.no_baselines, progress=prog,
                                n_train=a.n_train or (1000 if a.quick else 4000), n_test=a.n_test or (300 if a.quick else 1000),
                                backend=a.backend, contrast=a.contrast if a.contrast is not None else 2.0,
                                l1=a.l1 if a.l1 is not None else 0.03, solver=a.nmf_solver or "gram", pool_r=a.pool_r,
                                curriculum_epochs=a.curriculum_epochs, curriculum=a.curriculum, cam_epochs=a.cam_epochs,
                                window_stride=a.window_stride))
        key = "test" if use_test else "val"
        for name in ("acc_both", "pointing", "disentangling", "cam_acc_both", "cam_pointing", "most_ink_pointing"):
            vals = [r[f"{key}_{name}"] for r in rs if f"{key}_{name}" in r]
            if vals:
                metrics[f"{key}_{name}"] = _summ(vals)
        metrics["deepfacto_epoch_s"] = _summ([r["deepfacto_epoch_s"] for r in rs])
        if "cam_epoch_s" in rs[0]:
            metrics["cam_epoch_s"] = _summ([r["cam_epoch_s"] for r in rs])
            metrics["epoch_time_ratio"] = float(np.mean([r["deepfacto_epoch_s"] for r in rs]) / np.mean([r["cam_epoch_s"] for r in rs]))
        metrics["per_seed"] = [_clean({k: v for k, v in r.items() if k not in ("blocks", "df_maps", "cam_maps")}) for r in rs]
        r0 = rs[0]
        ds = r0["data"].test if use_test else r0["data"].val
        fig_basis(r0["blocks"][1], os.path.join(out, "basis.png"), (64, 7, 7),
                  title="NMF basis (per-window components): energy over the 7×7 feature cells of a 28×28 window")
        H = codes_of(r0["blocks"], ds.X[:500])
        M = class_group_matrix(H, ds.Y[:500], r0["blocks"][1].group, 10)
        fig_matrix(M, os.path.join(out, "class_group_energy.png"), "share of code energy over canvases holding the class")
        metrics["class_group_matrix"] = M.round(4).tolist()
        fns = {"DeepFacto": r0["df_maps"]}
        if "cam_maps" in r0:
            fns["CAM"] = r0["cam_maps"]
        fig_pairs(ds, fns, os.path.join(out, "pairs_maps.png"))
    if a.speed:
        metrics["speed"] = speed_benchmark()
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, default=float)
    summary = {k: (v["mean"] if isinstance(v, dict) and "mean" in v else v) for k, v in metrics.items()
               if k not in ("per_seed", "args", "class_group_matrix")}
    for k, v in summary.items():
        if isinstance(v, dict):
            v = {kk: (vv["mean"] if isinstance(vv, dict) and "mean" in vv else vv) for kk, vv in v.items() if kk != "per_seed"}
        print(f"{k}: {v}")
    print(f"wrote {out}/metrics.json and figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
