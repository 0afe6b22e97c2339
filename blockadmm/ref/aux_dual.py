"""Reference fused auxiliary/dual update (DESIGN §2).

    zn = prox(z[j] - lr * step(rho * (z[j] - a[i] + u[j]) + g[i]))
    u[j] += dual_step * (zn - a[i]);  z[j] = zn;  returns sum ||zn - a||^2 (float32)
"""
from __future__ import annotations

import torch

from ..prox import Prox


def aux_dual_update(
    z: torch.Tensor,
    u: torch.Tensor,
    a: torch.Tensor,
    g: torch.Tensor | None,
    *,
    rho: float,
    lr: float,
    dual_step: float = 1.0,
    prox: Prox | None = None,
    index: torch.Tensor | None = None,
    step: str = "grad",
) -> torch.Tensor:
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32  # half types accumulate in float32
    zj = (z if index is None else z[index]).to(acc)
    uj = (u if index is None else u[index]).to(acc)
    af = a.to(acc)
    d = rho * (zj - af + uj)
    if g is not None:
        d = d + g.to(acc)
    if step == "sign":
        d = d.sign()
    zn = zj - lr * d
    if prox is not None:
        zn = prox.apply(zn, lr)
    diff = zn - af
    un = uj + dual_step * diff
    if index is None:
        z.copy_(zn)
        u.copy_(un)
    else:
        z[index] = zn.to(z.dtype)
        u[index] = un.to(u.dtype)
    return diff.square().sum().float()
