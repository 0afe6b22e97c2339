"""What the distributed trainer takes and checks: its configuration from a preset or keywords (as BlockADMM
takes them) and the block partition."""

from __future__ import annotations

import copy
import dataclasses

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
