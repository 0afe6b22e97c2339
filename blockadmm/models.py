"""The networks the command line and examples build."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

CNN_WIDTHS = (16, 32, 64)
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}
INITS = ("default", "xavier", "kaiming", "orthogonal")
# the usual gain of each activation (Glorot & Bengio 2010 for sigmoid's 4; torch.nn.init.calculate_gain for the rest)
INIT_GAINS = {
    "sigmoid": 4.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": nn.init.calculate_gain("leaky_relu"),
}


def init_weights(
    model: nn.Module, init: str = "default", activation: str = "relu", gain: float | None = None
) -> nn.Module:
    """Re-initialize every Linear/Conv layer of `model` in place; "default" keeps PyTorch's init.

    xavier: Glorot-uniform, kaiming: He-normal (fan-in), orthogonal: orthogonal rows; biases zero. Hidden layers get
    `gain` (default: the activation's usual gain, INIT_GAINS); the last layer (the logits) gets gain 1.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if gain is not None and not gain > 0:
        raise ValueError(f"init gain must be > 0, got {gain}")
    if init == "default":
        return model
    hidden_gain = gain if gain is not None else INIT_GAINS.get(activation, 1.0)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for i, layer in enumerate(layers):
        g = hidden_gain if i < len(layers) - 1 else 1.0
        if init == "xavier":
            nn.init.xavier_uniform_(layer.weight, gain=g)
        elif init == "kaiming":  # He: std = g / sqrt(fan_in), with g = sqrt(2) for ReLU
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, std=g / math.sqrt(fan_in))
        else:
            nn.init.orthogonal_(layer.weight.view(layer.weight.shape[0], -1), gain=g)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return model


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu", init: str = "default"
) -> nn.Sequential:
    """Linear+activation per hidden layer, then a linear output layer (logits); weights by `init` (init_weights)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers, prev = [], in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), ACTIVATIONS[activation]()]
        prev = h
    layers.append(nn.Linear(prev, out_features))
    return init_weights(nn.Sequential(*layers), init, activation)


def mlp_blocks(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    activation: str = "relu",
    n_blocks: int | None = None,
    init: str = "default",
):
    """The MLP and its natural cut: one hidden layer per block, the output layer its own block.

    With `n_blocks` smaller than len(hidden)+1, consecutive layers share blocks (as evenly as possible).
    """
    model = mlp(in_features, hidden, out_features, activation, init)
    n_layers = len(hidden) + 1
    n_blocks = n_layers if n_blocks is None else n_blocks
    if not 1 <= n_blocks <= n_layers:
        raise ValueError(f"an MLP with {n_layers} layers can be cut into 1..{n_layers} blocks, not {n_blocks}")
    # each hidden layer is 2 modules (Linear, act); the output layer is 1
    per_block = [n_layers // n_blocks + (i < n_layers % n_blocks) for i in range(n_blocks)]
    cuts, layer = [], 0
    for size in per_block[:-1]:
        layer += size
        cuts.append(2 * layer)
    return model, cuts


def small_cnn(
    in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = CNN_WIDTHS, image_size: int = 28
) -> nn.Sequential:
    """conv-relu-pool stages, then a linear classifier; cut it after each stage."""
    layers, prev, size = [], in_channels, image_size
    for w in widths:
        layers += [nn.Sequential(nn.Conv2d(prev, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))]
        prev, size = w, size // 2
    layers.append(nn.Sequential(nn.Flatten(), nn.Linear(prev * size * size, num_classes)))
    return nn.Sequential(*layers)


def network_blocks(arch: str, hidden: Sequence[int] = (), blocks: int | None = None) -> int:
    """How many blocks :func:`build_network` cuts the network into (known before any data is loaded)."""
    if arch not in ("mlp", "cnn"):
        raise ValueError(f"unknown architecture {arch!r}; choose mlp or cnn")
    layers = len(hidden) + 1 if arch == "mlp" else len(CNN_WIDTHS) + 1
    n = layers if blocks is None else blocks
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= layers:
        raise ValueError(f"this {arch} has {layers} layers and can be cut into 1..{layers} blocks, not {n}")
    return n


def build_network(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (256, 256),
    activation: str = "relu",
    blocks: int | None = None,
    init: str = "default",
) -> tuple[nn.Module, object]:
    """(model, cuts for BlockADMM's `blocks=`): an MLP of `hidden` widths on flat inputs, or the small CNN
    on (C, H, W) images, cut into `blocks` blocks (default one layer per block); weights by `init` (init_weights)."""
    n = network_blocks(arch, hidden, blocks)
    if arch == "mlp":
        if len(input_shape) != 1:
            raise ValueError(f"an MLP needs flat inputs, the data gives {tuple(input_shape)}: use the cnn")
        return mlp_blocks(input_shape[0], hidden, num_classes, activation, n, init=init)
    if len(input_shape) != 3:
        raise ValueError(f"the cnn needs image inputs (C, H, W), the data gives {tuple(input_shape)}")
    return init_weights(small_cnn(input_shape[0], num_classes, image_size=input_shape[1]), init, "relu"), n
