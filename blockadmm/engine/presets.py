"""Named recipes: ADMMConfig fields plus the optimizer and mode choices that go with them (one home for
BlockADMM, the distributed trainer, the CLI and the experiments). How each was chosen and where it fails: the
README's paragraphs on them. Every preset was tuned from PyTorch's default init (models.init_weights, init="default");
from the Glorot gain-4 init of sigmoid nets the deep presets fail (the README's fair-baseline table).

The nets each was tuned on (a validation split of MNIST-5k's training data), and checked on for collapses:
- default: tuned on 784-256-256-10 ReLU (bench/tune_defaults.py); checked for collapses on that net and 784-1024x3-10
  over MNIST-5k as shipped, transposed + inverted, standardized and digits (`blockadmm experiment stability`); no
  curvature cap (capped, it stalled on the wide net with inverted inputs): the divergence guard catches its drops;
- fast: tuned on 784-256-256-10 ReLU; with the curvature cap it also trains 784-1024-1024-1024-10 (where it
  collapsed without), and the study checks it on those two nets and the small CNN;
- deep, deep-batch: tuned on 8x256 sigmoid; their sign step is not capped, and online `deep` still collapses late
  on some seeds (README); not re-tuned with the cap: the divergence guard's rollback is their protection."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch


@dataclass(frozen=True)
class Preset:
    """config: ADMMConfig fields; weight_lr: the Adam rate of the block optimizers when none is passed;
    mode: the only mode the recipe is for (None: both); shared_optimizer: one optimizer over all blocks."""

    name: str
    config: Mapping[str, object] = field(default_factory=dict)
    weight_lr: float = 1e-3
    mode: str | None = None
    shared_optimizer: bool = False

    def __post_init__(self):
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))  # a recipe is read-only

    # item access, for callers written against the earlier dict form of PRESETS
    def __getitem__(self, key: str):
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key, default)


_DEEP = {"rho": 1.0, "lr_z": 0.3, "sweeps": 3, "k_z": 1, "k_w": 1, "order": "top-down", "dual_step": 1.0,
         "aux_step": "sign"}

PRESETS: dict[str, Preset] = {
    # shallow nets (a few blocks) and ReLU MLPs: the ADMMConfig defaults
    "default": Preset("default"),
    # one sweep per mini-batch, a softer penalty, a faster Adam over all blocks at once: shallow nets only, online
    # (and its auxiliary step capped by the consumer's curvature: without it, wide nets diverge)
    "fast": Preset("fast", {"sweeps": 1, "rho": 0.125, "lr_z": 0.3, "curvature_cap": True}, weight_lr=5e-3,
                   mode="online", shared_optimizer=True),
    # deep narrow saturating nets (8+ sigmoid layers, one per block) from PyTorch's default init: the fixed-size sign
    # step on z (unstable on ReLU; fails from the gain-4 xavier init, where the defaults do better)
    "deep": Preset("deep", _DEEP, weight_lr=3e-3),
    # the same nets in batch mode (per-sample tables), where they need a softer penalty
    "deep-batch": Preset("deep-batch", {**_DEEP, "rho": 0.25}, weight_lr=3e-3, mode="batch"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def adam(lr: float = 1e-3) -> Callable:
    """A factory of per-block Adam optimizers; fused (one pass over all of a block's tensors) on CPU and
    CUDA, which on this package's small blocks halves the step time of the per-tensor loop."""

    def make(params):
        params = list(params)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, fused=fused or None)

    return make


default_optimizer = adam(1e-3)
