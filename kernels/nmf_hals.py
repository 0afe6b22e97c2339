"""Triton HALS / coordinate-descent pass on NMF codes (DESIGN §2, issue 27; the contract is
blockadmm.ops.nmf_hals_update).

One program per block of BM rows of H holds them in registers as a BM×BK tile (BK = k rounded up to a power
of two, masked) and walks the components t in the order perm: the gradient of column t for all BM rows is
the row-wise sum of the tile times G[t, :], the column is replaced in the tile by its update, and the tile
is written back once at the end. Rows are independent, so programs never share data. Arithmetic in H's
dtype (float32 or float64); each row's violation goes to `viol`, summed by the launcher.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_K = 1024  # the row tile lives in registers: wider k runs on the other backends
TILE_ELEMS = 4096  # BM × BK per program


@triton.jit
def _nmf_hals_kernel(
    h_ptr, a_ptr, g_ptr, perm_ptr, viol_ptr, N, K, HAS_PERM: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr
):
    rm = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    rk = tl.arange(0, BK)
    row_ok = rm < N
    mask = row_ok[:, None] & (rk[None, :] < K)
    h = tl.load(h_ptr + rm[:, None] * K + rk[None, :], mask=mask, other=0.0)
    viol = tl.zeros((BM,), dtype=h.dtype)
    for s in range(0, K):
        if HAS_PERM:
            t = tl.load(perm_ptr + s)
        else:
            t = s
        g = tl.load(g_ptr + t * K + rk, mask=rk < K, other=0.0)
        hess = tl.load(g_ptr + t * K + t)
        sel = rk[None, :] == t
        ht = tl.sum(tl.where(sel, h, 0.0), axis=1)
        grad = tl.sum(h * g[None, :], axis=1) - tl.load(a_ptr + rm * K + t, mask=row_ok, other=0.0)
        pg = tl.where(ht == 0, tl.where(grad < 0, grad, 0.0), grad)
        viol += tl.abs(pg)
        upd = ht - grad / tl.where(hess != 0, hess, 1.0)
        upd = tl.where(upd < 0, 0.0, upd)  # NaN propagates, as torch.clamp
        new = tl.where(hess != 0, upd, ht)
        h = tl.where(sel, new[:, None].to(h.dtype), h)
    tl.store(h_ptr + rm[:, None] * K + rk[None, :], h, mask=mask)
    tl.store(viol_ptr + rm, viol, mask=row_ok)


def block_sizes(k: int) -> tuple[int, int]:
    """(BM rows, BK columns) of a program's tile for k components."""
    bk = max(16, triton.next_power_of_2(k))
    return max(1, min(64, TILE_ELEMS // bk)), bk


def nmf_hals_update(
    H: torch.Tensor, A: torch.Tensor, G: torch.Tensor, *, perm: torch.Tensor | None = None
) -> torch.Tensor:
    """One HALS pass in place on H (n×k, contiguous, k <= MAX_K) given A (n×k) and G (k×k) of H's dtype and
    perm (int64, k entries) or None; returns the violation summed over rows (float64 for float64 H, else
    float32)."""
    n, k = H.shape
    if k > MAX_K:
        raise ValueError(f"the Triton nmf_hals_update holds a row in registers: k = {k} > {MAX_K}")
    out_dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    if n == 0 or k == 0:
        return torch.zeros((), dtype=out_dtype, device=H.device)
    viol = torch.empty(n, dtype=H.dtype, device=H.device)
    bm, bk = block_sizes(k)
    _nmf_hals_kernel[(triton.cdiv(n, bm),)](
        H, A, G, H if perm is None else perm, viol, n, k, HAS_PERM=perm is not None, BM=bm, BK=bk
    )
    return viol.sum(dtype=torch.float64).to(out_dtype)
