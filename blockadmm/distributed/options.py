"""What the distributed trainer takes and checks: its configuration from a preset or keywords (as BlockADMM
takes them), the block partition, and each mini-batch before anything of it is used."""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..engine import ADMMConfig, get_preset
from ..trainer import adam, default_optimizer


def check_partition(parts, world: int, n_blocks: int) -> None:
    ok = (
        len(parts) == world
        and parts[0][0] == 0
        and parts[-1][1] == n_blocks
        and all(lo < hi for lo, hi in parts)
        and all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
    )
    if not ok:
        raise ValueError(
            f"partition {parts} must give each of the {world} ranks a non-empty contiguous "
            f"group of the {n_blocks} blocks, in order"
        )


def check_batch(x, y, index, input_shape, classes, tables) -> None:
    """x and y fit the model, labels lie in 0..classes-1 (classes None: a loss of the caller's), and in batch
    mode (tables not None) one distinct integer sample index per row, inside the tables."""
    if tuple(x.shape[1:]) != input_shape or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"a batch of x {tuple(x.shape)} and y {tuple(y.shape)} does not fit the model's per-sample "
            f"input shape {input_shape}"
        )
    labels_ok = y.dtype in (torch.int64, torch.int32) and y.dim() == 1
    if classes is not None and y.numel() and (not labels_ok or int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(
            f"cross-entropy needs 1-D integer class labels in 0..{classes - 1}, got {y.dtype} of shape {tuple(y.shape)}"
        )
    if tables is not None:
        if index is None:
            raise ValueError("batch mode needs the sample index of every row: use a dataset that yields (x, y, index)")
        if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
            raise TypeError(f"sample indices must be integers, got {index.dtype}: pass the dataset's index column")
        if index.shape != (x.shape[0],) or torch.unique(index).numel() != index.numel():
            raise ValueError(
                f"batch mode needs one distinct sample index per row, got {index.numel()} indices "
                f"({torch.unique(index).numel()} distinct) for {x.shape[0]} rows"
            )
        rows = tables.num_samples
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= rows):
            raise IndexError(f"sample index {int(index.min())}..{int(index.max())} outside the tables' 0..{rows - 1}")


def resolve_options(preset, config, overrides, mode, schedule, optimizer, shared_optimizer):
    """(config, optimizer factory, shared_optimizer) from a preset or config and keyword overrides, as
    BlockADMM takes them; the order is the schedule's (Jacobi for sync) unless the caller or the preset sets it."""
    recipe = None
    if preset is not None:
        if config is not None:
            raise ValueError("pass either preset= or config=, not both (override preset fields as keywords)")
        recipe = get_preset(preset)
        if recipe.mode is not None and recipe.mode != mode:
            raise ValueError(
                f"preset {preset!r} is the recipe for mode={recipe.mode!r}, got mode={mode!r}: "
                f"pass mode={recipe.mode!r} or the preset of the other mode"
            )
        config = ADMMConfig.preset(preset)
        if optimizer is default_optimizer:
            optimizer = adam(recipe.weight_lr)
        if shared_optimizer is None:
            shared_optimizer = recipe.shared_optimizer
    order_set = (
        "order" in overrides or (recipe is None and config is not None) or "order" in getattr(recipe, "config", {})
    )
    if not order_set:
        overrides = {**overrides, "order": "jacobi" if schedule == "sync" else "top-down"}
    names = {f.name for f in dataclasses.fields(ADMMConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(
            f"unknown argument(s) {sorted(unknown)}; trainer options are ADMMConfig fields: {sorted(names)}"
        )
    return (
        dataclasses.replace(copy.deepcopy(config) if config is not None else ADMMConfig(), **overrides),
        optimizer,
        shared_optimizer,
    )
