"""A plain strided Triton GEMM, C = A @ B with float32 accumulation (IEEE float32 products, no TF32).

Shared by the ops that need an un-fused GEMM: the NMF Gram matrices (W Wᵀ, Hᵀ H, k×k) and the two
backward GEMMs of the linear block (gpᵀ x, gp W). A and B are any 2-D views (transposes are read
through their strides, never copied); C is written in its own dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K,
    sa0, sa1, sb0, sb1, sc0, sc1,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = (k0 + tl.arange(0, BK)).to(tl.int64)
        a = tl.load(
            a_ptr + rm[:, None] * sa0 + rk[None, :] * sa1, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0
        )
        b = tl.load(
            b_ptr + rk[:, None] * sb0 + rn[None, :] * sb1, mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0
        )
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    tl.store(
        c_ptr + rm[:, None] * sc0 + rn[None, :] * sc1,
        acc.to(c_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rn[None, :] < N),
    )


def matmul(
    a: torch.Tensor, b: torch.Tensor, out_dtype: Optional[torch.dtype] = None, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """A (M×K) @ B (K×N) -> C (M×N); any strides in, C contiguous (or `out`) in out_dtype (default float32)."""
    M, K = a.shape
    K2, N = b.shape
    assert K == K2, (a.shape, b.shape)
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype or torch.float32, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    _matmul_kernel[grid](
        a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K,
    )
    return out
