"""Triton fused Lee-Seung multiplicative update (DESIGN §2).

    H <- H ⊙ (V Wᵀ) / (H (W Wᵀ) + l1 + l2 H + eps)          (which = "H", and first for "both")
    W <- W ⊙ (Hᵀ V) / ((Hᵀ H) W + l1 + l2 W + eps)           (which = "W", then for "both")

One kernel does both: for an output X (M×R) it forms the numerator A @ B (a K loop) and the denominator
X @ G (G = the small R×R Gram matrix) tile by tile in registers and applies the multiplicative epilogue,
so `V Wᵀ` and `H (W Wᵀ)` never exist as full matrices in memory. The W update is the same kernel on the
transposed problem Wᵀ <- Wᵀ ⊙ (Vᵀ H) / (Wᵀ (Hᵀ H) + ...), read through strides (no copies).
Only the R×R Gram (k×k) is materialised, by kernels.matmul.

In place is safe when one program spans all R columns (R <= MAX_INPLACE_R): it reads only its own rows
of X, and a barrier separates its last read from its first write. Wider R goes through a temporary.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .matmul import matmul

BLOCK_M, BLOCK_K = 32, 32
MAX_INPLACE_R = 64


@triton.jit
def _nmf_mu_kernel(
    x_ptr, o_ptr, a_ptr, b_ptr, g_ptr, M, R, K,
    sx0, sx1, so0, so1, sa0, sa1, sb0, sb1,
    l1, l2, eps,
    BM: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rr = (pid_r * BR + tl.arange(0, BR)).to(tl.int64)
    num = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = (k0 + tl.arange(0, BK)).to(tl.int64)
        a = tl.load(
            a_ptr + rm[:, None] * sa0 + rk[None, :] * sa1, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0
        )
        b = tl.load(
            b_ptr + rk[:, None] * sb0 + rr[None, :] * sb1, mask=(rk[:, None] < K) & (rr[None, :] < R), other=0.0
        )
        num = tl.dot(a.to(tl.float32), b.to(tl.float32), num, input_precision="ieee")
    den = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, R, BK):
        rk = (k0 + tl.arange(0, BK)).to(tl.int64)
        x = tl.load(
            x_ptr + rm[:, None] * sx0 + rk[None, :] * sx1, mask=(rm[:, None] < M) & (rk[None, :] < R), other=0.0
        )
        g = tl.load(g_ptr + rk[:, None] * R + rr[None, :], mask=(rk[:, None] < R) & (rr[None, :] < R), other=0.0)
        den = tl.dot(x.to(tl.float32), g, den, input_precision="ieee")
    tl.debug_barrier()  # every read of this program's rows of X is done before any write (in-place safety)
    mask = (rm[:, None] < M) & (rr[None, :] < R)
    xt = tl.load(x_ptr + rm[:, None] * sx0 + rr[None, :] * sx1, mask=mask, other=0.0).to(tl.float32)
    new = xt * num / (den + l1 + l2 * xt + eps)
    tl.store(o_ptr + rm[:, None] * so0 + rr[None, :] * so1, new.to(o_ptr.dtype.element_ty), mask=mask)


def _mu(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, G: torch.Tensor, l1: float, l2: float, eps: float) -> None:
    """X (M×R view) <- X ⊙ (A @ B) / (X @ G + l1 + l2 X + eps), in place."""
    M, R = X.shape
    K = A.shape[1]
    if M == 0 or R == 0:
        return
    inplace = R <= MAX_INPLACE_R
    BR = max(16, triton.next_power_of_2(R)) if inplace else MAX_INPLACE_R
    out = X if inplace else torch.empty(X.shape, dtype=X.dtype, device=X.device)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(R, BR))
    _nmf_mu_kernel[grid](
        X, out, A, B, G, M, R, K,
        X.stride(0), X.stride(1), out.stride(0), out.stride(1), A.stride(0), A.stride(1), B.stride(0), B.stride(1),
        float(l1), float(l2), float(eps),
        BM=BLOCK_M, BR=BR, BK=BLOCK_K,
    )
    if not inplace:
        X.copy_(out)


def nmf_mu_update(V: torch.Tensor, H: torch.Tensor, W: torch.Tensor, *, which: str = "both",
                  eps: float = 1e-12, l1: float = 0.0, l2: float = 0.0) -> None:
    """Multiplicative updates of H (n×k) and/or W (k×d) for V (n×d) ≈ H W, in place."""
    if which in ("H", "both"):
        G = matmul(W, W.T)                       # k×k, float32
        _mu(H, V, W.T, G, l1, l2, eps)            # H <- H ⊙ (V Wᵀ) / (H G + ...)
    if which in ("W", "both"):
        G = matmul(H.T, H)                       # k×k, float32
        _mu(W.T, V.T, H, G, l1, l2, eps)          # Wᵀ <- Wᵀ ⊙ (Vᵀ H) / (Wᵀ G + ...)
