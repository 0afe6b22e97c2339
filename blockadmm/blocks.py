"""Cutting a network into blocks, and checking that the blocks chain."""
from __future__ import annotations

import itertools
import sys
import warnings
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


HOW_TO_CUT = ("pass a list of block modules ([block0, block1, ...], each output feeding the next block; a residual "
              "stage with its skip connection inside is one block), an nn.Sequential with blocks=N (cut into N blocks "
              "of about equal parameter count) or blocks=[cut indices], or blocks=1 to train the whole model as one "
              "block (plain backprop)")


def _unwrap_compiled(module: nn.Module, where: str) -> nn.Module:
    """The module a torch.compile wrapper holds: the trainer calls its blocks in several grad modes and shapes, which
    the wrapper would recompile for (and its state_dict keys carry an `_orig_mod.` prefix). The wrapper shares its
    parameters with the module, so the user's compiled model sees the training."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
        warnings.warn(f"{where} is a torch.compile'd module: Block-ADMM trains the module inside it (the compiled "
                      f"wrapper shares its weights); to run the blocks compiled, pass compile=True to the trainer",
                      stacklevel=3)
        return module._orig_mod
    return module


def make_blocks(model, blocks=None) -> list[nn.Module]:
    """Blocks from a model and a spec: a list of modules, an nn.Sequential with blocks=N (balanced) or cut indices,
    or any module with blocks=1 (one block). Anything else is an error that says how to cut the model."""
    if isinstance(model, (list, tuple, nn.ModuleList)):
        if blocks is not None:
            raise ValueError("pass either a list of block modules or a model with a `blocks` spec, not both")
        mods = list(model)
        if not mods or not all(isinstance(m, nn.Module) for m in mods):
            raise TypeError(f"a list of blocks must hold nn.Module objects; {HOW_TO_CUT}")
        return [_unwrap_compiled(m, f"block {k}") for k, m in enumerate(mods)]
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be an nn.Module or a list of them, got {type(model).__name__}; {HOW_TO_CUT}")
    model = _unwrap_compiled(model, "the model")
    name = type(model).__name__
    if blocks is None:
        raise ValueError(f"Block-ADMM trains a model cut into blocks, and this {name} was given no cut: "
                         f"{HOW_TO_CUT}")

    def integer(value):
        return isinstance(value, int) and not isinstance(value, bool)

    if not (integer(blocks) or (isinstance(blocks, (list, tuple)) and all(integer(c) for c in blocks))):
        raise TypeError(f"blocks must be a number of blocks (an int) or a list of cut indices (ints), got {blocks!r}")
    if blocks == 1:
        return [model]
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"blocks={blocks!r} needs an nn.Sequential to cut, but the model is a {name}, whose forward "
                        f"the trainer cannot cut: pass its blocks as a list of modules ([block0, block1, ...], each "
                        f"output feeding the next; a residual stage with its skip connection inside is one block)")
    if isinstance(blocks, int):
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        return list(split_balanced(model, blocks))
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


class CompiledBlock(nn.Module):
    """A block run through torch.compile, for the trainer's autograd path (BlockADMM(compile=True)).

    The trainer calls a block in three ways (without grad; with grad from a leaf input; with grad, no input grad)
    and every torch.compile'd module shares one compiled code object, whose cache holds 8 graphs by default: with
    a few blocks it overflowed and dynamo fell back to eager. Calls here allow `graphs_per_block` graphs per
    wrapped block. The trainer backpropagates twice through one kept graph (the input gradient, then the weight
    gradients), which AOTAutograd's donated buffers forbid: they are turned off, process-wide, when a
    CompiledBlock is built. The wrapper holds the block, so parameters and weights are the block's own; the
    trainer keeps the plain block for its state_dict and inference.
    """

    def __init__(self, block: nn.Module, n_compiled: int, graphs_per_block: int = 8, **compile_options):
        import torch._functorch.config as functorch_config

        super().__init__()
        functorch_config.donated_buffer = False
        self.block = block
        self.compiled = torch.compile(block, **compile_options)
        self.recompile_limit = max(8, graphs_per_block * n_compiled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._dynamo.config as dynamo_config

        with dynamo_config.patch(recompile_limit=self.recompile_limit):
            return self.compiled(x)


def compile_blocks(blocks: Sequence[nn.Module], options: dict, *, fused_linear: bool) -> list[nn.Module]:
    """The blocks the trainer steps: each block that goes through autograd wrapped in a CompiledBlock; blocks with
    their own rules (ADMMBlock) or that the fused linear op runs stay as they are."""
    from .engine.protocol import ADMMBlock

    chosen = [not isinstance(b, ADMMBlock) and not (fused_linear and fusable_linear(b)) for b in blocks]
    n = sum(chosen)
    return [CompiledBlock(b, n, **options) if c else b for b, c in zip(blocks, chosen)]


class CarrySkip(nn.Module):
    """The block before a cut that a skip connection crosses: returns cat([module(x), x], dim=1), so the skip input
    travels to the next block inside the boundary's auxiliary variable. With AddSkip after the cut,
    [CarrySkip(f), AddSkip(g, skip_channels=C)] computes x + g(f(x)) for an input x of C channels (features)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.module(x), x], dim=1)


class AddSkip(nn.Module):
    """The block after the cut: splits its input into (h, x), x the last `skip_channels` channels, and returns
    module(h) + x (module(h) must have x's shape)."""

    def __init__(self, module: nn.Module, skip_channels: int):
        super().__init__()
        self.module, self.skip_channels = module, int(skip_channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        c = self.skip_channels
        return self.module(t[:, :-c]) + t[:, -c:]
