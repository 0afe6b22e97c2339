"""The DeepFacto runs: supervised disentangling on MNIST-5k and weakly supervised localization on MNIST-5k
pairs, each with its backprop baselines on the same batches (`blockadmm deepfacto`).

Recipes (chosen on validation splits): supervised, flat conv features (unit norm) -> NMF (10 groups of 5, basis
from each class's excess over twice the mean feature, frozen; l1 0.1) -> group-energy head, or a linear head on
per-sample-normalized codes; pairs, the same recipe on 28x28-pixel windows of the canvas features
(`WindowFeatures`), group energies pooled by a smooth max (r = 4), multi-label softmax loss, l1 0.03, trained
on "ink proposals" (`ink_proposals`) first, then on the canvases.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from ..data import IndexedDataset, load
from ..deepfacto import (
    LinearCodeHead,
    WindowFeatures,
    batched_apply,
    both_right,
    build_deepfacto,
    codes_of,
    feature_cnn,
    feature_mlp,
    init_basis,
    multilabel_softmax_loss,
    pointing_game,
    window_maps,
)
from ..nmf import disentangling_score
from ..pairs import load_pairs
from ..trainer import BlockADMM
from .training import accuracy, run_backprop


def upsample(maps, size):
    """Maps (n, C, h, w) to (n, C, *size), bilinear."""
    return functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class GAPLinear(nn.Module):
    """Global average pooling of conv features, then a linear layer: the CAM network's head."""

    def __init__(self, c, n):
        super().__init__()
        self.linear = nn.Linear(c, n)

    def forward(self, x):
        return self.linear(x.mean((2, 3)))


def run_supervised(
    seed: int,
    *,
    epochs: int,
    batch_size: int = 64,
    head: str = "energy",
    arch: str = "cnn",
    per_class: int = 5,
    update_epochs: int = 0,
    rho: float = 1.0,
    lr_z: float = 0.5,
    sweeps: int = 1,
    dual_step: float = 0.5,
    eg_steps: int = 3,
    eg_lr: float = 1.0,
    n_iter: int = 10,
    lr: float = 3e-3,
    contrast: float = 2.0,
    learn_head: bool = False,
    val_fraction: float = 0.1,
    use_test: bool = True,
    baselines: bool = True,
    progress: bool = True,
    n_train: int | None = None,
    l1: float = 0.1,
    solver: str = "op",
    eg_clip: float | None = None,
    backend: str = "auto",
    log=print,
) -> dict:
    """DeepFacto on MNIST-5k for one seed (with `baselines`: backprop of the same features with a linear head, and
    the CAM network), all on the same batches; per-epoch records and the final numbers."""
    data = load("mnist5k", image=(arch == "cnn"), val_fraction=val_fraction, split_seed=0)
    train, val, test = data.train, data.val, data.test
    if n_train:
        train = IndexedDataset(train.X[:n_train], train.Y[:n_train], 10)
    torch.manual_seed(seed)
    feats = feature_cnn(1) if arch == "cnn" else feature_mlp(train.input_shape[0])
    with torch.no_grad():
        feat_shape = tuple(feats(train.X[:2]).shape[1:])
    blocks = build_deepfacto(
        feats,
        feat_shape,
        10,
        normalize=False,
        head=head,
        per_class=per_class,
        n_iter=n_iter,
        update_epochs=update_epochs,
        eg_steps=eg_steps,
        eg_lr=eg_lr,
        learn_head=learn_head,
        l1=l1,
        solver=solver,
        eg_clip=eg_clip if eg_clip is not None else (2.0 if head == "energy" else 0.25),
        backend=backend,
    )
    init_basis(blocks, train, seed=seed, contrast=contrast)
    if isinstance(blocks[2], LinearCodeHead):
        blocks[2].set_scale(codes_of(blocks, train.X[:1000]))
    trainer = BlockADMM(
        blocks,
        input_shape=train.input_shape,
        mode="online",
        constraints={0: "nonneg", 1: "nonneg"},
        rho=rho,
        lr_z=lr_z,
        sweeps=sweeps,
        dual_step=dual_step,
        seed=seed,
        backend=backend,
        optimizer=lambda p: torch.optim.Adam(p, lr=lr),
    )
    per_epoch = []

    def on_epoch(rec):
        ev = {
            "epoch": rec["epoch"],
            "wall_s": rec["wall_s"],
            "train_acc": rec["train_acc"],
            "loss": rec["loss"],
            "primal": rec["primal_residual"],
        }
        for name, ds in (("val", val), ("test", test if use_test else None)):
            if ds is not None:
                ev[f"{name}_acc"] = rec[f"{name}_acc"]
                H = codes_of(blocks, ds.X)
                ev[f"{name}_disentangling"] = disentangling_score(H, ds.Y, blocks[1].group, 10)
        per_epoch.append(ev)
        log(
            f"[deepfacto seed {seed} {head}] epoch {ev['epoch']}: "
            + " ".join(f"{k}={v:.4f}" for k, v in ev.items() if isinstance(v, float))
        )

    trainer.fit(
        train,
        epochs,
        batch_size=batch_size,
        val=val,
        test=test if use_test else None,
        progress=progress,
        on_epoch=on_epoch,
    )
    out = {
        "seed": seed,
        "head": head,
        "epochs": per_epoch,
        "deepfacto_epoch_s": float(np.median([e["wall_s"] for e in per_epoch])),
        "trainer": trainer,
        "blocks": blocks,
    }
    last = per_epoch[-1]
    for k in ("val_acc", "test_acc", "val_disentangling", "test_disentangling"):
        if k in last:
            out[k] = last[k]
    key = "test_acc" if use_test else "val_acc"
    out[f"best_{key}"] = max(e[key] for e in per_epoch)
    if baselines:
        torch.manual_seed(seed)
        lin = nn.Sequential(
            feature_cnn(1, normalize=False) if arch == "cnn" else feature_mlp(train.input_shape[0], normalize=False),
            nn.LazyLinear(10),
        )
        lin(train.X[:2])

        def ev(m):
            r = {"val_acc": accuracy(m, val)} if val is not None else {}
            if use_test:
                r["test_acc"] = accuracy(m, test)
            return r

        def baseline(key, model, desc):
            h = run_backprop(model, train, epochs, batch_size=batch_size, seed=seed, lr=1e-3, evaluate=ev,
                             progress=progress, desc=desc)
            out[key] = h[-1] | {"epoch_s": float(np.median([e["wall_s"] for e in h]))}
            log(f"[{desc} seed {seed}] {out[key]}")

        baseline("backprop_linear", lin, "backprop linear")
        if arch == "cnn":
            torch.manual_seed(seed)
            baseline("backprop_gap", nn.Sequential(feature_cnn(1, flatten=False, normalize=False), GAPLinear(64, 10)),
                     "backprop GAP")
    return out


@torch.no_grad()
def _pairs_eval(logit_fn, map_fn, ds, bs=250) -> dict[str, float]:
    """both-labels-right accuracy and pointing game of a model on a PairsDataset."""
    logits = batched_apply(logit_fn, ds.X, bs)
    maps = batched_apply(lambda x: upsample(map_fn(x), ds.X.shape[-2:]), ds.X, bs)
    return {"acc_both": both_right(logits, ds.classes), **pointing_game(maps, ds.boxes, ds.classes)}


def most_ink_maps(x, window: int = 9):
    """The trivial rule: every class points at the densest ink (a box-filtered image), the same map for all."""
    m = functional.avg_pool2d(x, window, stride=1, padding=window // 2)
    return m.expand(-1, 10, -1, -1)


def ink_proposals(X: torch.Tensor, Y: torch.Tensor, k: int = 2, window: int = 28, stride: int = 4):
    """Digit-sized crops from the canvases themselves, by a rule that needs no labels and no boxes: the densest
    window x window crop of each canvas (windows every `stride` px), then the densest once that crop's pixels are
    blanked, k times. Each crop keeps its canvas's image-level labels — one of them is its digit's, which one is
    unknown. Returns an IndexedDataset of (N·k, 1, window, window) crops, canvas by canvas."""
    N, _, _, W = X.shape
    gw = (W - window) // stride + 1
    rest, rows, span = X.clone(), torch.arange(N).view(N, 1, 1), torch.arange(window)
    crops = []
    for _ in range(k):
        j = functional.avg_pool2d(rest, window, stride=stride).flatten(1).argmax(1)
        ys = ((j // gw) * stride).view(N, 1, 1) + span.view(1, window, 1)
        xs = ((j % gw) * stride).view(N, 1, 1) + span.view(1, 1, window)
        crops.append(X[rows, 0, ys, xs])
        rest[rows, 0, ys, xs] = 0.0
    C = torch.stack(crops, 1).reshape(N * k, 1, window, window)
    return IndexedDataset(C, Y.repeat_interleave(k, 0), Y.shape[1])


def run_pairs(
    seed: int,
    *,
    epochs: int,
    batch_size: int = 64,
    per_class: int = 5,
    n_shared: int = 0,
    update_epochs: int = 0,
    rho: float = 1.0,
    lr_z: float = 0.5,
    sweeps: int = 1,
    dual_step: float = 0.5,
    eg_steps: int = 3,
    eg_lr: float = 1.0,
    n_iter: int = 10,
    lr: float = 3e-3,
    clutter: int = 0,
    contrast: float = 2.0,
    n_train: int = 4000,
    n_test: int = 1000,
    val_fraction: float = 0.1,
    use_test: bool = True,
    pool_r: float | None = 4.0,
    loss: str = "softmax",
    learn_head: bool = False,
    l1: float = 0.03,
    cam_epochs: int | None = None,
    cam_lr: float = 3e-3,
    curriculum_epochs: int = 15,
    curriculum: str = "proposals",
    windows: bool = True,
    window_stride: int = 2,
    solver: str = "gram",
    baselines: bool = True,
    progress: bool = True,
    backend: str = "auto",
    log=print,
) -> dict:
    """DeepFacto on MNIST-5k pairs for one seed (with `baselines`: the CAM network trained by backprop with the
    same curriculum), the most-ink rule beside them; per-epoch records and the final numbers."""
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
    blocks = build_deepfacto(
        feats,
        feat_shape,
        10,
        normalize=False,
        head="energy",
        per_class=per_class,
        n_shared=n_shared,
        n_iter=n_iter,
        update_epochs=update_epochs,
        eg_steps=eg_steps,
        eg_lr=eg_lr,
        learn_head=learn_head,
        pool_r=pool_r,
        l1=l1,
        solver=solver,
        backend=backend,
    )
    if loss not in ("softmax", "bce"):
        raise ValueError(f"loss must be 'softmax' or 'bce', got {loss!r}")
    loss_fn = multilabel_softmax_loss if loss == "softmax" else nn.BCEWithLogitsLoss()
    if curriculum not in ("digits", "proposals"):
        raise ValueError(f"curriculum must be 'digits' or 'proposals', got {curriculum!r}")

    def make_trainer(input_shape):  # DeepFacto online, the same recipe for the curriculum and the canvases
        return BlockADMM(
            blocks,
            input_shape=input_shape,
            mode="online",
            constraints={0: "nonneg", 1: "nonneg"},
            loss=loss_fn,
            rho=rho,
            lr_z=lr_z,
            sweeps=sweeps,
            dual_step=dual_step,
            seed=seed,
            backend=backend,
            optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        )

    if curriculum_epochs:
        # stage 1 of a curriculum, on 28×28 crops with the same fully convolutional blocks: "digits", single
        # MNIST-5k training digits (the digits the training canvases are made of) with their labels; "proposals",
        # the densest crops of the training canvases themselves, each with its canvas's two labels (from scratch:
        # nothing but the canvases and their image-level labels)
        if curriculum == "digits":
            single = load("mnist5k", image=True).train
            single = IndexedDataset(single.X, functional.one_hot(single.Y, 10).float(), 10)
        else:
            single = ink_proposals(train.X, train.Y)
        init_basis(blocks, single, seed=seed, contrast=contrast)
        stage1 = make_trainer(single.input_shape)
        stage1.fit(
            single,
            curriculum_epochs,
            batch_size=batch_size,
            progress=progress,
            on_epoch=lambda rec: log(
                f"[deepfacto pairs seed {seed}] curriculum ({curriculum}) epoch {rec['epoch']}: "
                f"loss={rec['loss']:.4f} wall_s={rec['wall_s']:.1f}"
            ),
        )
    else:
        init_basis(blocks, train, seed=seed, contrast=contrast)
    trainer = make_trainer(train.input_shape)

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
            ev[f"{name}_disentangling"] = disentangling_score(
                codes_of(blocks, ds.X[:500]), ds.Y[:500], blocks[1].group, 10
            )
        per_epoch.append(ev)
        log(
            f"[deepfacto pairs seed {seed}] "
            + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.items())
        )

    trainer.fit(train, epochs, batch_size=batch_size, progress=progress, on_epoch=on_epoch)
    out = {
        "seed": seed,
        "epochs": per_epoch,
        "deepfacto_epoch_s": float(np.median([e["wall_s"] for e in per_epoch])),
        "blocks": blocks,
        "data": data,
        "df_maps": df_maps,
    }
    out.update({k: v for k, v in per_epoch[-1].items() if k.startswith(("val_", "test_"))})
    for name, ds in evals:
        out[f"{name}_most_ink_pointing"] = _pairs_eval(lambda x: torch.zeros(len(x), 10), most_ink_maps, ds)["pointing"]
    if baselines:
        torch.manual_seed(seed)
        cam = nn.Sequential(feature_cnn(1, flatten=False, normalize=False), GAPLinear(64, 10))

        def cam_maps(x):
            # class activation map: the class's linear weights over the last conv features, per position (on a net
            # at chance, with every class weight negative, its argmax is the zero background's first pixel)
            F = cam[0](x)
            return torch.einsum("nchw,kc->nkhw", F, cam[1].linear.weight) + cam[1].linear.bias.view(1, -1, 1, 1)

        if curriculum_epochs:  # the same curriculum as DeepFacto
            run_backprop(
                cam,
                single,
                curriculum_epochs,
                batch_size=batch_size,
                seed=seed,
                loss_fn=nn.BCEWithLogitsLoss(),
                lr=cam_lr,
                progress=progress,
                desc=f"backprop CAM (curriculum: {curriculum})",
            )
        h = run_backprop(
            cam,
            train,
            cam_epochs or epochs,
            batch_size=batch_size,
            seed=seed,
            loss_fn=nn.BCEWithLogitsLoss(),
            lr=cam_lr,
            progress=progress,
            desc="backprop CAM",
        )
        cam.eval()
        out["cam_epoch_s"] = float(np.median([e["wall_s"] for e in h]))
        for name, ds in evals:
            r = _pairs_eval(cam, cam_maps, ds)
            out[f"{name}_cam_acc_both"], out[f"{name}_cam_pointing"] = r["acc_both"], r["pointing"]
        out["cam_maps"] = cam_maps
        log(
            f"[CAM seed {seed}] "
            + " ".join(f"{k}={v:.4f}" for k, v in out.items() if "cam_" in k and isinstance(v, float))
        )
    log("[most ink] " + " ".join(f"{k}={v:.4f}" for k, v in out.items() if "most_ink" in k))
    return out
