"""Small encodings shared by the compiled backends (C++ CPU, CUDA) and their Python wrappers."""
from __future__ import annotations

PROX_NONE, PROX_CLAMP, PROX_L1 = 0, 1, 2
ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}


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
