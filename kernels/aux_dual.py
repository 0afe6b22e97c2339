"""Triton fused auxiliary/dual update (DESIGN §2), one pass over the batch.

    zn = prox(z[j] - lr * step(rho * (z[j] - a[i] + u[j]) + g[i]));  u[j] += dual * (zn - a[i]);  z[j] = zn

Each program handles BLOCK consecutive batch elements; with `index` it reads and writes the table rows
j = index[i] directly (batch mode never gathers or scatters whole copies). Every program writes its
partial sum of (zn - a)^2 to `partials[pid]`; the launcher sums those (deterministic, no atomics).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._kernel_args import prox_args

BLOCK = 1024


@triton.jit
def _aux_dual_kernel(
    z_ptr, u_ptr, a_ptr, g_ptr, idx_ptr, part_ptr,
    numel, cols, rho, lr, dual, lo, hi, thr,
    HAS_G: tl.constexpr, HAS_INDEX: tl.constexpr, PROX: tl.constexpr, SIGN: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if HAS_INDEX:
        row = offs // cols
        j = tl.load(idx_ptr + row, mask=mask, other=0)
        zoffs = j * cols + (offs - row * cols)
    else:
        zoffs = offs
    zj = tl.load(z_ptr + zoffs, mask=mask, other=0.0).to(tl.float32)
    uj = tl.load(u_ptr + zoffs, mask=mask, other=0.0).to(tl.float32)
    ai = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = rho * (zj - ai + uj)
    if HAS_G:
        s = s + tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SIGN:
        s = tl.where(s > 0.0, 1.0, tl.where(s < 0.0, -1.0, s))
    zn = zj - lr * s
    if PROX == 1:
        zn = tl.where(zn < lo, lo, zn)
        zn = tl.where(zn > hi, hi, zn)
    elif PROX == 2:
        mag = tl.abs(zn) - thr
        mag = tl.where(mag > 0.0, mag, 0.0)
        zn = tl.where(zn > 0.0, mag, tl.where(zn < 0.0, -mag, zn * mag))
    diff = zn - ai
    tl.store(u_ptr + zoffs, (uj + dual * diff).to(u_ptr.dtype.element_ty), mask=mask)
    tl.store(z_ptr + zoffs, zn.to(z_ptr.dtype.element_ty), mask=mask)
    diff = tl.where(mask, diff, 0.0)
    tl.store(part_ptr + pid, tl.sum(diff * diff, axis=0))


def aux_dual_update(
    z: torch.Tensor, u: torch.Tensor, a: torch.Tensor, g: Optional[torch.Tensor], *,
    rho: float, lr: float, dual_step: float = 1.0, prox=None, index: Optional[torch.Tensor] = None, step: str = "grad",
) -> torch.Tensor:
    """In place on z, u (rows `index` when given); returns the float32 sum of squared primal residuals."""
    numel = a.numel()
    rows = a.shape[0] if a.dim() else 1
    cols = numel // rows if rows else 0
    kind, lo, hi, thr = prox_args(prox, lr)
    nprog = max(1, triton.cdiv(numel, BLOCK))
    partials = torch.empty(nprog, dtype=torch.float32, device=z.device)
    if numel == 0:
        return partials.zero_().sum()
    if index is not None:
        index = index.to(torch.int64).contiguous()
    _aux_dual_kernel[(nprog,)](
        z, u, a, g if g is not None else a, index if index is not None else a, partials,
        numel, max(cols, 1), float(rho), float(lr), float(dual_step), lo, hi, thr,
        HAS_G=g is not None, HAS_INDEX=index is not None, PROX=kind, SIGN=step == "sign", BLOCK=BLOCK,
    )
    return partials.sum()
