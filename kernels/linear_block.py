"""Triton block-local forward/backward of `act(x Wᵀ + b)` against its ADMM target (DESIGN §2).

    out = act(x Wᵀ + b),  r = out - z - u,  loss = (rho/2m) Σ r²,  gp = (rho/m) r ⊙ act'(pre)
    grad_weight = gpᵀ x,  grad_bias = Σ_rows gp,  grad_input = gp W

The forward GEMM carries the whole epilogue: it writes `out` and `gp` (float32), a per-program partial
of Σ r² and, per row tile, the column sums of gp (the bias gradient) — no atomics, summed by the
launcher. The two backward GEMMs are kernels.matmul on strided views (gpᵀ is never copied).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._kernel_args import ACT_CODES
from .matmul import matmul

BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32
LEAKY_SLOPE = 0.01


@triton.jit
def _linear_fwd_kernel(
    x_ptr, w_ptr, b_ptr, z_ptr, u_ptr, out_ptr, gp_ptr, loss_ptr, bias_ptr,
    M, N, K, scale,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SLOPE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = (k0 + tl.arange(0, BK)).to(tl.int64)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if ACT == 0:
        y = acc
        d = tl.full((BM, BN), 1.0, tl.float32)
    elif ACT == 1:
        y = tl.where(acc < 0.0, 0.0, acc)
        d = tl.where(acc > 0.0, 1.0, 0.0)
    elif ACT == 2:
        y = tl.where(acc > 0.0, acc, SLOPE * acc)
        d = tl.where(acc > 0.0, 1.0, SLOPE)
    elif ACT == 3:
        y = 1.0 / (1.0 + tl.exp(-acc))
        d = y * (1.0 - y)
    else:
        e = tl.exp(-2.0 * tl.abs(acc))
        t = (1.0 - e) / (1.0 + e)
        y = tl.where(acc < 0.0, -t, t)
        d = 1.0 - y * y
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    off = rm[:, None] * N + rn[None, :]
    zt = tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    ut = tl.load(u_ptr + off, mask=mask, other=0.0).to(tl.float32)
    r = tl.where(mask, y - zt - ut, 0.0)
    gp = scale * r * d
    tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(gp_ptr + off, gp, mask=mask)
    tl.store(loss_ptr + pid_m * tl.num_programs(1) + pid_n, tl.sum(tl.sum(r * r, axis=1), axis=0))
    if HAS_BIAS:
        tl.store(bias_ptr + pid_m * N + rn, tl.sum(gp, axis=0), mask=rn < N)


def linear_block_fwd_bwd(x, weight, bias, z, u, *, rho: float, activation: str = "relu", need_input_grad: bool = True):
    """(loss, grad_weight, grad_bias, grad_input, out); inputs contiguous (the public op sees to it)."""
    m, k = x.shape
    n = weight.shape[0]
    if m == 0 or n == 0:
        from ..ref import linear_block_fwd_bwd as ref  # pragma: no cover - degenerate shapes
        return ref(x, weight, bias, z, u, rho=rho, activation=activation, need_input_grad=need_input_grad)
    dev = x.device
    gm, gn = triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N)
    out = torch.empty((m, n), dtype=x.dtype, device=dev)
    gp = torch.empty((m, n), dtype=torch.float32, device=dev)
    loss_part = torch.empty(gm * gn, dtype=torch.float32, device=dev)
    bias_part = torch.empty((gm, n), dtype=torch.float32, device=dev) if bias is not None else loss_part
    _linear_fwd_kernel[(gm, gn)](
        x, weight, bias if bias is not None else x, z, u, out, gp, loss_part, bias_part,
        m, n, k, float(rho) / m,
        HAS_BIAS=bias is not None, ACT=ACT_CODES[activation], SLOPE=LEAKY_SLOPE,
        BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K,
    )
    loss = loss_part.sum() * (float(rho) / (2 * m))
    grad_weight = matmul(gp.T, x, out_dtype=weight.dtype)
    grad_bias = bias_part.sum(0).to(bias.dtype) if bias is not None else None
    grad_input = matmul(gp, weight, out_dtype=x.dtype) if need_input_grad else None
    return loss, grad_weight, grad_bias, grad_input, out
