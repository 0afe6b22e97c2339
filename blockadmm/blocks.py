"""Cutting a network into blocks, and checking that the blocks chain."""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

# Activation modules the fused linear-block op knows, by the name the op uses.
_FUSABLE_ACTIVATIONS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "identity"}


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def min_max_partition(costs: Sequence[float], parts: int) -> list[tuple[int, int]]:
    """Cut a sequence of costs into `parts` contiguous groups [lo, hi) minimising the largest group's sum
    (dynamic programming; sequences here are a few dozen long)."""
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot cut {n} items into {parts} non-empty contiguous groups")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    arg = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                cost = max(best[k - 1][i], prefix[j] - prefix[i])
                if cost < best[k][j]:
                    best[k][j], arg[k][j] = cost, i
    groups, j = [], n
    for k in range(parts, 0, -1):
        i = arg[k][j]
        groups.append((i, j))
        j = i
    return groups[::-1]


def split_sequential(model: nn.Sequential, at: Sequence[int]) -> list[nn.Sequential]:
    """Cut `model` before each index in `at`: at=[2, 4] gives model[:2], model[2:4], model[4:]."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"split_sequential needs an nn.Sequential, got {type(model).__name__}")
    cuts = [0, *at, len(model)]
    if any(b <= a for a, b in itertools.pairwise(cuts)):
        raise ValueError(f"cut indices must be increasing and inside 1..{len(model) - 1}, got {list(at)}")
    return [model[a:b] for a, b in itertools.pairwise(cuts)]


def split_balanced(model: nn.Sequential, n_blocks: int) -> list[nn.Sequential]:
    """Cut `model` into `n_blocks` contiguous blocks of about equal parameter count.

    Parameter-free modules (activations, pooling, flatten) stay with the layer before them, so a
    block ends after a layer's activation rather than between a layer and its activation.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"split_balanced needs an nn.Sequential, got {type(model).__name__}")
    # units: a parametric module with the parameter-free modules that follow it
    starts = [i for i, m in enumerate(model) if _n_params(m) > 0]
    if not starts:
        raise ValueError("the model has no parameters to split")
    starts[0] = 0
    if n_blocks < 1 or n_blocks > len(starts):
        raise ValueError(f"cannot cut a model with {len(starts)} parametric layers into {n_blocks} blocks")
    bounds = starts + [len(model)]
    sizes = [sum(_n_params(model[j]) for j in range(a, b)) for a, b in itertools.pairwise(bounds)]
    groups = min_max_partition(sizes, n_blocks)
    cuts = [bounds[lo] for lo, _ in groups[1:]]
    return split_sequential(model, cuts)


def make_blocks(model, blocks=None) -> list[nn.Module]:
    """Blocks from a model and a spec: a list of modules, an int (balanced), or cut indices."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        if blocks is not None:
            raise ValueError("pass either a list of block modules or a model with a `blocks` spec, not both")
        mods = list(model)
        if not mods or not all(isinstance(m, nn.Module) for m in mods):
            raise TypeError("a list of blocks must hold nn.Module objects")
        return mods
    if blocks is None:
        return [model]
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        return list(split_balanced(model, blocks))
    if not isinstance(blocks, (list, tuple)) or not all(isinstance(c, int) and not isinstance(c, bool) for c in blocks):
        raise TypeError(f"blocks must be a number of blocks (an int) or a list of cut indices (ints), got {blocks!r}")
    return list(split_sequential(model, list(blocks)))


def _describe(m: nn.Module) -> str:
    text = " ".join(repr(m).split())
    return text if len(text) <= 120 else text[:117] + "..."


def check_chain(blocks: Sequence[nn.Module], input_shape: tuple[int, ...], device=None,
                dtype=torch.float32) -> list[tuple[int, ...]]:
    """Run one dummy sample through the blocks; return each block's per-sample output shape.

    A block that cannot take its predecessor's output is reported with both blocks and shapes named.
    """
    x = torch.zeros((2, *input_shape), device=device, dtype=dtype)
    shapes = []
    was_training = [b.training for b in blocks]
    with torch.no_grad():
        for i, block in enumerate(blocks):
            block.eval()  # batch-norm style layers must not learn from the dummy input
            try:
                x = block(x)
            except Exception as e:
                came_from = f"block {i - 1} ({_describe(blocks[i - 1])}) outputs" if i else "the input has"
                raise ValueError(
                    f"blocks do not chain: {came_from} per-sample shape {tuple(x.shape[1:])}, "
                    f"but block {i} ({_describe(block)}) fails on it: {e}. "
                    f"Fix the cut points or the layer sizes so that block {i} accepts that shape."
                ) from e
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"block {i} must return a single tensor, got {type(x).__name__}")
            shapes.append(tuple(x.shape[1:]))
    for b, t in zip(blocks, was_training):
        b.train(t)
    return shapes


def fusable_linear(block: nn.Module) -> tuple[nn.Linear, str] | None:
    """(linear, activation name) when the block is Linear or Linear+activation, which the fused op runs."""
    mods = list(block) if isinstance(block, nn.Sequential) else [block]
    if not mods or not isinstance(mods[0], nn.Linear) or len(mods) > 2:
        return None
    if len(mods) == 1:
        return mods[0], "identity"
    act = mods[1]
    if isinstance(act, nn.LeakyReLU):
        return (mods[0], "leaky_relu") if act.negative_slope == 0.01 else None
    name = _FUSABLE_ACTIVATIONS.get(type(act))
    return (mods[0], name) if name else None
