"""The hyperparameters of Stochastic Block-ADMM (DESIGN §1)."""
from __future__ import annotations

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
    step of boundary k uses min(lr_z, 1/rho_k), so that a growing rho never makes the penalty term overshoot.
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

    def __post_init__(self):
        self.order = ORDER_ALIASES.get(self.order, self.order)
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS} (or 'forward'/'backward'), got {self.order!r}")
        if self.aux_step not in AUX_STEPS:
            raise ValueError(f"aux_step must be one of {AUX_STEPS}, got {self.aux_step!r}")
        if self.rho_schedule not in ("constant", "adaptive"):
            raise ValueError(f"rho_schedule must be 'constant' or 'adaptive', got {self.rho_schedule!r}")
        for name in ("sweeps", "k_z", "k_w"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_z <= 0:
            raise ValueError(f"lr_z must be > 0, got {self.lr_z}")

    @classmethod
    def preset(cls, name: str, **overrides) -> ADMMConfig:
        """The named recipe's configuration (engine.presets.PRESETS), with any field overridden."""
        values = {**get_preset(name).config, **overrides}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown ADMMConfig fields {sorted(unknown)}")
        return cls(**values)
