"""The values of a trainer's checkpoint state, checked before anything of a trainer changes.

A checkpoint's checksums prove only that the file is whole: a crafted one can hold a negative or NaN rho, NaN
weights, a string for a counter or a corrupt random-number state, all with valid checksums. `check_state_values`
runs the constructor's own validation (ADMMConfig) on the saved configuration and checks the rest, so that a load
either fits whole or raises a CheckpointError naming the field, with nothing of the trainer changed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from .checkpoint import CheckpointError
from .config import ADMMConfig


def check_state_values(state: Mapping, n_boundaries: int) -> None:
    """Raise CheckpointError naming the field unless `state` holds valid values: BlockADMM.state_dict's layout, or
    a distributed shard's (blocks as {index: state}, without the parts a shard does not keep)."""
    for name, kind in (
        ("config", dict),
        ("blocks", (list, dict)),
        ("optimizers", list),
        ("schedulers", list),
        ("shapes", list),
    ):
        if name in state and not isinstance(state[name], kind):
            raise CheckpointError(f"field {name!r} has the wrong type ({type(state[name]).__name__})")
    try:
        ADMMConfig(**state["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"field 'config' is invalid: {e}") from None
    rho = state["rho"]
    if not isinstance(rho, (list, tuple)) or len(rho) != n_boundaries or not all(_number(r) and r > 0 for r in rho):
        raise CheckpointError(f"field 'rho' must be {n_boundaries} finite number(s) > 0, got {rho!r}")
    for name in ("step_count", "epoch"):
        if not _number(state[name], integral=True) or state[name] < 0:
            raise CheckpointError(f"field {name!r} must be an integer >= 0, got {state[name]!r}")
    for name in ("history", "resumes"):
        if name in state and (not isinstance(state[name], list) or not all(isinstance(r, dict) for r in state[name])):
            raise CheckpointError(f"field {name!r} must be a list of records (dicts), got {type(state[name]).__name__}")
    window, prev = state["rho_window"], state["rho_prev"]
    if not (isinstance(window, list) and all(isinstance(w, list) and all(_number(v) for v in w) for w in window)):
        raise CheckpointError("field 'rho_window' must be lists of finite numbers")
    if not (isinstance(prev, list) and all(v is None or _number(v) for v in prev)):
        raise CheckpointError("field 'rho_prev' must be a list of finite numbers")
    guard = state.get("divergence", {})
    if not isinstance(guard, dict) or not all(_guard_value(v) for v in guard.values()):
        raise CheckpointError("field 'divergence' must map names to numbers or lists of numbers (not NaN)")
    blocks = state["blocks"]
    for k, block in blocks.items() if isinstance(blocks, dict) else enumerate(blocks):
        _finite(block, f"blocks[{k}]")
    for i, opt in enumerate(state["optimizers"]):
        _finite(opt, f"optimizers[{i}]")
    _check_rng(state["rng"])


def _number(value, integral: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integral else numbers.Real):
        return False
    return math.isfinite(value)


def _not_nan(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and not math.isnan(value)


def _guard_value(value) -> bool:
    """A divergence-guard entry: None, a number (inf allowed: "not seen yet"), or one such value per boundary."""
    if isinstance(value, list):
        return all(v is None or _not_nan(v) for v in value)
    return value is None or _not_nan(value)


def _finite(obj, where: str) -> None:
    """Every floating tensor and float in `obj` (a state dict) finite."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            raise CheckpointError(f"field '{where}' holds NaN or inf")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise CheckpointError(f"field '{where}' is {obj}")
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            _finite(value, f"{where}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _finite(value, f"{where}[{i}]")


def _check_rng(rng) -> None:
    """A CPU generator state torch accepts: tried on the live generator, which is put back as it was."""
    current = torch.get_rng_state()
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != current.shape:
        raise CheckpointError("field 'rng' is not a CPU random number generator state")
    try:
        torch.set_rng_state(rng.cpu())
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"field 'rng' is not a valid generator state ({str(e).splitlines()[0]})") from None
    finally:
        torch.set_rng_state(current)
