"""The recipes of the stability study and the time-to-accuracy bench: named presets, or `NAME:key=value,...` specs
from the command line, turned into BlockADMM's (or DistributedBlockADMM's) keyword arguments and fit()'s."""

from __future__ import annotations

import inspect

import torch

from ..engine.config import ADMMConfig
from ..engine.presets import PRESETS
from ..trainer import BlockADMM
from . import stability_nets as nets

RECIPES = {"default": {"preset": "default"}, "fast": {"preset": "fast"}, "deep": {"preset": "deep"}}
BACKPROP = "backprop"  # the reference row's name, not a recipe
OPTIMIZER_KEYS = ("lr", "adam_eps", "shared_optimizer")


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_recipe(spec: str) -> tuple[str, dict]:
    """`NAME:key=value,...` -> (NAME, {key: value}); keys: preset, lr (the blocks' Adam rate), adam_eps,
    shared_optimizer, ADMMConfig fields, and keyword arguments of BlockADMM.fit (e.g. a divergence guard)."""
    name, _, body = spec.partition(":")
    if not name or name == BACKPROP or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"--recipe {spec!r}: give NAME:key=value,... with a plain NAME other than {BACKPROP!r}")
    recipe = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--recipe {spec!r}: {item!r} is not key=value")
        recipe[key.strip()] = _value(value.strip())
    recipe.setdefault("preset", "default")
    if recipe["preset"] not in PRESETS:
        raise ValueError(f"--recipe {spec!r}: unknown preset {recipe['preset']!r}; choose one of {sorted(PRESETS)}")
    known = set(OPTIMIZER_KEYS) | {"preset"} | set(ADMMConfig.__dataclass_fields__) | _fit_keys()
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"--recipe {spec!r}: unknown key(s) {unknown}; known: {sorted(known)}")
    return name, recipe


def _fit_keys() -> set[str]:
    skip = {"self", "train", "epochs", "batch_size", "val", "test", "progress", "eval_train", "callbacks", "on_epoch"}
    return set(inspect.signature(BlockADMM.fit).parameters) - skip


def recipe_nets(recipe: dict) -> tuple[str, ...]:
    """The nets a recipe claims: its preset's (fast: the shallow nets; deep: the tanh net), default: all."""
    return nets.PRESET_NETS.get(recipe.get("preset", "default"), tuple(nets.NETS))


def trainer_kwargs(recipe: dict) -> dict:
    """The keyword arguments of BlockADMM (or DistributedBlockADMM) for a recipe: its preset, Adam with the recipe's
    rate and eps (fused, as the library's default Adam), the preset's optimizer sharing unless the recipe sets it, and
    the ADMMConfig fields it overrides."""
    preset = PRESETS[recipe["preset"]]
    lr, eps = recipe.get("lr", preset.weight_lr), recipe.get("adam_eps", 1e-8)
    return {
        "preset": recipe["preset"],
        "optimizer": lambda p: torch.optim.Adam(list(p), lr=lr, eps=eps, fused=True),
        "shared_optimizer": recipe.get("shared_optimizer", preset.shared_optimizer),
        **{k: v for k, v in recipe.items() if k in ADMMConfig.__dataclass_fields__},
    }


def fit_kwargs(recipe: dict) -> dict:
    """The keyword arguments of fit() a recipe sets (a divergence guard, say)."""
    return {k: v for k, v in recipe.items() if k in _fit_keys()}
