"""The networks the command line and examples build."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

CNN_WIDTHS = (16, 32, 64)
ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu") -> nn.Sequential:
    """Linear+activation per hidden layer, then a linear output layer (logits)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers, prev = [], in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), ACTIVATIONS[activation]()]
        prev = h
    layers.append(nn.Linear(prev, out_features))
    return nn.Sequential(*layers)


def mlp_blocks(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu",
               n_blocks: int | None = None):
    """The MLP and its natural cut: one hidden layer per block, the output layer its own block.

    With `n_blocks` smaller than len(hidden)+1, consecutive layers share blocks (as evenly as possible).
    """
    model = mlp(in_features, hidden, out_features, activation)
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


def small_cnn(in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = CNN_WIDTHS,
              image_size: int = 28) -> nn.Sequential:
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


def build_network(arch: str, input_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (256, 256),
                  activation: str = "relu", blocks: int | None = None) -> tuple[nn.Module, object]:
    """(model, cuts for BlockADMM's `blocks=`): an MLP of `hidden` widths on flat inputs, or the small CNN
    on (C, H, W) images, cut into `blocks` blocks (default one layer per block)."""
    n = network_blocks(arch, hidden, blocks)
    if arch == "mlp":
        if len(input_shape) != 1:
            raise ValueError(f"an MLP needs flat inputs, the data gives {tuple(input_shape)}: use the cnn")
        return mlp_blocks(input_shape[0], hidden, num_classes, activation, n)
    if len(input_shape) != 3:
        raise ValueError(f"the cnn needs image inputs (C, H, W), the data gives {tuple(input_shape)}")
    return small_cnn(input_shape[0], num_classes, image_size=input_shape[1]), n
