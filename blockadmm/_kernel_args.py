"""Small encodings shared by the compiled backends (C++ CPU, CUDA) and their Python wrappers."""
from __future__ import annotations

PROX_NONE, PROX_CLAMP, PROX_L1 = 0, 1, 2
ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}
# the linear-block residual the compiled modules compute (their LINEAR_RESIDUAL attribute); a module built from
# sources of the other sign (r = out - z + u) is refused rather than trusted
LINEAR_RESIDUAL = "out - z - u"


def check_linear_residual(mod, name: str) -> None:
    if getattr(mod, "LINEAR_RESIDUAL", None) != LINEAR_RESIDUAL:
        raise RuntimeError(f"blockadmm.{name} was built from older sources (its linear-block residual is not "
                           f"{LINEAR_RESIDUAL}): rebuild it with pip install -e .")


def prox_args(prox, lr: float):
    """(kind code, lo, hi, threshold) of a built-in Prox: nonneg/box clamp to [lo, hi], l1 soft-thresholds by lr*lam."""
    inf = float("inf")
    if prox is None:
        return PROX_NONE, -inf, inf, 0.0
    if prox.kind in ("nonneg", "box"):
        return PROX_CLAMP, float(prox.lo), float(prox.hi), 0.0
    if prox.kind == "l1":
        return PROX_L1, -inf, inf, float(lr) * float(prox.lam)
    raise ValueError(f"the compiled kernels run the built-in proxes only, not {prox.kind!r} (use backend='torch')")
