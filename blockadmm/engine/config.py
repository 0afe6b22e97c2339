"""The hyperparameters of Stochastic Block-ADMM (DESIGN §1)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from .presets import get_preset

ORDERS = ("top-down", "bottom-up", "jacobi")
ORDER_ALIASES = {"backward": "top-down", "forward": "bottom-up"}
AUX_STEPS = ("grad", "sign", "adam")


@dataclass
class ADMMConfig:
    """Hyperparameters of Stochastic Block-ADMM. The defaults train the shipped MLPs without tuning.

    rho: penalty per boundary (one number for all, or a list). lr_z: step size of the auxiliary step.
    sweeps: sweeps per mini-batch. k_z / k_w: auxiliary / weight steps per sweep. order: "top-down"
    (default), "bottom-up" (Gauss-Seidel) or "jacobi". aux_step: "grad" (plain prox-gradient, default),
    "sign" (the fixed-size normalized step z -= lr_z*sign(grad), for deep saturating nets) or "adam"
    (z -= lr_z*m_hat/(sqrt(v_hat)+eps), moments kept within one mini-batch's step only). rho_schedule
    "adaptive" multiplies rho by rho_factor (up to rho_max) when a boundary's mean primal residual over
    rho_check_every steps did not fall below rho_stall times that of the window before. The plain gradient
    step of boundary k uses min(lr_z, 1/rho_k, 2/(rho_k + L_{k+1})), L_{k+1} a bound on the consumer's curvature
    from its weights (engine.curvature) when curvature_cap is on (the `fast` preset: one sweep, a wide net's growing
    weights made its step diverge; off by default: on 784-1024x3-10 with inverted inputs the capped defaults stalled),
    else min(lr_z, 1/rho_k), so that a growing rho never makes the penalty term overshoot.
    """

    rho: object = 1.0
    lr_z: float = 0.3
    sweeps: int = 3
    k_z: int = 1
    k_w: int = 1
    order: str = "top-down"
    dual_step: float = 1.0
    aux_step: str = "grad"
    rho_schedule: str = "constant"
    rho_factor: float = 2.0
    rho_max: float = 100.0
    rho_check_every: int = 40
    rho_stall: float = 0.9
    curvature_cap: bool = False

    def __post_init__(self):
        self.order = ORDER_ALIASES.get(self.order, self.order)
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS} (or 'forward'/'backward'), got {self.order!r}")
        if self.aux_step not in AUX_STEPS:
            raise ValueError(f"aux_step must be one of {AUX_STEPS}, got {self.aux_step!r}")
        if self.rho_schedule not in ("constant", "adaptive"):
            raise ValueError(f"rho_schedule must be 'constant' or 'adaptive', got {self.rho_schedule!r}")
        for name in ("sweeps", "k_z", "k_w", "rho_check_every"):
            value = getattr(self, name)
            if not _is_number(value, integral=True) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.curvature_cap, bool):
            raise ValueError(f"curvature_cap must be True or False, got {self.curvature_cap!r}")
        rhos = list(self.rho) if isinstance(self.rho, (list, tuple)) else [self.rho]
        if not rhos or not all(_is_number(r) and r > 0 for r in rhos):
            raise ValueError(f"rho must be a finite number > 0, or a list of them (one per boundary), got {self.rho!r}")
        for name, low, strict in (("lr_z", 0, True), ("dual_step", 0, False), ("rho_factor", 1, False),
                                  ("rho_max", 0, True), ("rho_stall", 0, False)):
            value = getattr(self, name)
            if not _is_number(value) or value < low or (strict and value == low):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
        if self.rho_schedule == "adaptive" and self.rho_max < max(rhos):
            raise ValueError(f"rho_max ({self.rho_max}) is below rho ({self.rho}): "
                             f"the adaptive schedule only grows rho")

    @classmethod
    def preset(cls, name: str, **overrides) -> ADMMConfig:
        """The named recipe's configuration (engine.presets.PRESETS), with any field overridden."""
        values = {**get_preset(name).config, **overrides}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown ADMMConfig fields {sorted(unknown)}")
        return cls(**values)


def _is_number(value, integral: bool = False) -> bool:
    """A finite real number (an int when `integral`); bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integral else numbers.Real):
        return False
    return math.isfinite(value)
