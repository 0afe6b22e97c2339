"""The DeepFacto figures: the NMF basis, the class x group energy matrix, the pairs' code maps."""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import plt as pyplot
from .deepfacto_runs import upsample


def fig_basis(nmf, path: str, feat_shape, feature_to_image=None, title: str = "NMF basis components"):
    """Basis components as an image grid (rows: class groups, then shared). Components of flat conv features are shown
    as their (h, w) energy map; `feature_to_image(w_row) -> 2-D array` overrides that."""
    plt = pyplot()
    W = nmf.W.detach().cpu()
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
                    side = math.ceil(math.sqrt(len(w)))
                    img = np.zeros(side * side)
                    img[: len(w)] = w.numpy()
                    img = img.reshape(side, side)
                ax.imshow(img, cmap="magma")
        axes[r, 0].text(
            -0.3,
            0.5,
            "shared" if g < 0 else f"class {g}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def fig_matrix(M: np.ndarray, path: str, title: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=max(1e-6, float(M.max())))
    ax.set_xlabel("component group")
    ax.set_ylabel("true class")
    ax.set_xticks(range(M.shape[1]), [str(i) for i in range(M.shape[1] - 1)] + ["sh"])
    ax.set_yticks(range(M.shape[0]))
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            ax.text(
                j,
                i,
                f"{M[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="w" if M[i, j] < 0.5 * M.max() else "k",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def fig_pairs(ds, map_fns: dict[str, object], path: str, n: int = 6):
    """Rows: canvases; columns: the canvas with both boxes, then each method's map for each present class (x =
    argmax)."""
    plt = pyplot()
    names = list(map_fns)
    cols = 1 + 2 * len(names)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    x = ds.X[:n]
    maps = {k: upsample(f(x), x.shape[-2:]) for k, f in map_fns.items()}
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(x[i, 0].numpy(), cmap="gray")
        for j in range(2):
            x0, y0, x1, y1 = ds.boxes[i, j].tolist()
            ax.add_patch(
                plt.Rectangle(
                    (x0 - 0.5, y0 - 0.5),
                    x1 - x0 + 1,
                    y1 - y0 + 1,
                    fill=False,
                    color="cyan" if j == 0 else "orange",
                    lw=1,
                )
            )
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
                ax.add_patch(
                    plt.Rectangle(
                        (x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="w", lw=0.6, ls="--"
                    )
                )
                if i == 0:
                    ax.set_title(f"{name}: class {'A' if j == 0 else 'B'}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
