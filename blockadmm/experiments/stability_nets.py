"""The nets and data variants of the stability study (`blockadmm experiment stability`).

Every net is built after `torch.manual_seed(seed)`, so Block-ADMM and backprop start from the same weights (the
DeepFacto net's backprop reference is its feature net with a linear head, as in the DeepFacto experiments: an NMF
layer has no gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import transpose_invert
from ..deepfacto import build_deepfacto, feature_mlp, init_basis
from ..models import mlp_blocks, small_cnn

# name -> (hidden widths, activation) for the MLPs (one layer per block)
MLPS = {"2x256": ([256, 256], "relu"), "3x1024": ([1024] * 3, "relu"), "8x256tanh": ([256] * 8, "tanh")}
NETS = (*MLPS, "cnn", "deepfacto")
NEEDS_IMAGES = {net: net == "cnn" for net in NETS}
CNN_WIDTHS = (16, 32)  # the bench's small CNN: conv-relu-pool x 2, then linear; one stage a block
DEEPFACTO_FEATURES = 256
# the nets each preset claims (the rest: every net)
PRESET_NETS = {"fast": ("2x256", "3x1024", "cnn"), "deep": ("8x256tanh",)}
# name -> (dataset, data.load keywords)
DATA = {
    "mnist5k": ("mnist5k", {}),
    "inverted": ("mnist5k", {"transform": transpose_invert}),  # images transposed, 1 - x
    "standardized": ("mnist5k", {"normalize": True}),
    "digits": ("digits", {}),
}


def build(net: str, splits, seed: int, admm: bool):
    """admm: (list of blocks, constraints or None) for BlockADMM; else the nn.Module backprop trains."""
    if net not in NETS:
        raise ValueError(f"unknown net {net!r}; choose from {', '.join(NETS)}")
    torch.manual_seed(seed)
    shape, n_classes = splits.input_shape, splits.num_classes
    if net in MLPS:
        hidden, activation = MLPS[net]
        model, cuts = mlp_blocks(shape[0], hidden, n_classes, activation)
        if not admm:
            return model
        bounds = [0, *cuts, len(model)]
        return [model[a:b] for a, b in zip(bounds, bounds[1:])], None
    if net == "cnn":
        model = small_cnn(shape[0], n_classes, widths=CNN_WIDTHS, image_size=shape[-1])
        return (list(model), None) if admm else model
    if not admm:
        return nn.Sequential(
            feature_mlp(shape[0], (DEEPFACTO_FEATURES,) * 2, normalize=False), nn.Linear(DEEPFACTO_FEATURES, n_classes)
        )
    features = feature_mlp(shape[0], (DEEPFACTO_FEATURES,) * 2)
    blocks = build_deepfacto(features, (DEEPFACTO_FEATURES,), n_classes, normalize=False)
    init_basis(blocks, splits.train, seed=seed, contrast=2.0)
    return blocks, {0: "nonneg", 1: "nonneg"}
