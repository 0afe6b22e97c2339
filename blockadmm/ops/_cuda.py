"""The "cuda" backend: the CUDA C++ module (csrc/cuda) behind the public ops.

The module exposes a torch-free C interface (raw pointers, sizes, device ordinal, cudaStream_t). This file
checks device, dtype, contiguity and sizes, allocates outputs and small partial-sum buffers with torch,
and passes `tensor.data_ptr()` and the current stream of the tensors' device. All arithmetic is float32;
float16/bfloat16 tensors are read and written in their own dtype.
"""
from __future__ import annotations

import torch

from .. import _native
from .._kernel_args import ACT_CODES, check_linear_residual, prox_args
from . import nmf_hals

DEVICES = ("cuda",)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def can_run(op: str, device: str, kwargs: dict) -> str | None:
    prox = kwargs.get("prox")
    if prox is not None and prox.kind == "custom":
        return "a Prox.custom callable runs only on the torch backend"
    return None


def load():
    mod = _native.load("_cuda")
    check_linear_residual(mod, "_cuda")
    n, err = mod.device_count()
    if n == 0:
        raise RuntimeError(f"blockadmm._cuda is built but sees no usable GPU ({err or 'no CUDA device'})")

    def _check(name, t, device, dtypes=DTYPE_CODES):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device}")
        if t.dtype not in dtypes:
            raise TypeError(f"{name} has dtype {t.dtype}; the cuda backend takes float32, float16, bfloat16")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous for the cuda backend")
        return DTYPE_CODES.get(t.dtype, 0)

    def _ctx(t):
        return t.device.index if t.device.index is not None else torch.cuda.current_device()

    def _stream(t):
        return torch.cuda.current_stream(t.device).cuda_stream

    def aux_dual_update(z, u, a, g, *, rho, lr, dual_step=1.0, prox=None, index=None, step="grad"):
        dev = z.device
        zdt = _check("z", z, dev)
        if _check("u", u, dev) != zdt:
            raise TypeError("u must have z's dtype")
        adt = _check("a", a, dev)
        gdt = _check("g", g, dev) if g is not None else 0
        rows = a.shape[0] if a.dim() else 1
        cols = a.numel() // rows if rows else 0
        if index is not None:
            index = index.to(torch.int64).contiguous()
            if index.device != dev or index.numel() != rows:
                raise ValueError("index must be on z's device with one entry per row of a")
            if tuple(z.shape[1:]) != tuple(a.shape[1:]):
                raise ValueError("with index, a's rows must have z's row shape")
        elif a.numel() != z.numel():
            raise ValueError("without index, a must have z's shape")
        kind, lo, hi, thr = prox_args(prox, lr)
        partials = torch.empty(mod.aux_dual_num_partials(a.numel()), dtype=torch.float32, device=dev)
        mod.aux_dual_update(
            _ctx(z), _stream(z), z.data_ptr(), u.data_ptr(), zdt, a.data_ptr(), adt,
            0 if g is None else g.data_ptr(), gdt, 0 if index is None else index.data_ptr(),
            rows if index is not None else 1, cols if index is not None else a.numel(),
            float(rho), float(lr), float(dual_step), kind, lo, hi, thr, step == "sign", partials.data_ptr(),
        )
        return partials.sum()

    def _gemm(A, B, C, M, N, K):
        """C (M×N contiguous) = A @ B; A and B are 2-D views whose strides the kernel follows."""
        mod.gemm(_ctx(C), _stream(C), A.data_ptr(), DTYPE_CODES[A.dtype], A.stride(0), A.stride(1),
                 B.data_ptr(), DTYPE_CODES[B.dtype], B.stride(0), B.stride(1),
                 C.data_ptr(), DTYPE_CODES[C.dtype], M, N, K)
        return C

    def _mu(X, A, B, G, l1, l2, eps, base, transposed):
        """X (= base, or base.T when transposed) <- X * (A @ B) / (X @ G + l1 + l2 X + eps), in place."""
        M, R = X.shape
        K = A.shape[1]
        if M == 0 or R == 0:
            return
        inplace = R <= mod.nmf_inplace_max_r()
        out = X if inplace else (torch.empty_like(base).T if transposed else torch.empty_like(base))
        mod.nmf_mu(_ctx(X), _stream(X), X.data_ptr(), DTYPE_CODES[X.dtype], X.stride(0), X.stride(1), out.data_ptr(),
                   A.data_ptr(), DTYPE_CODES[A.dtype], A.stride(0), A.stride(1),
                   B.data_ptr(), DTYPE_CODES[B.dtype], B.stride(0), B.stride(1),
                   G.data_ptr(), M, R, K, float(l1), float(l2), float(eps))
        if not inplace:
            X.copy_(out)

    def nmf_mu_update(V, H, W, *, which="both", eps=1e-12, l1=0.0, l2=0.0):
        dev = H.device
        for name, t in (("V", V), ("H", H), ("W", W)):
            _check(name, t, dev)
        k = H.shape[1]
        if which in ("H", "both"):
            G = torch.empty((k, k), dtype=torch.float32, device=dev)
            _gemm(W, W.T, G, k, k, W.shape[1])
            _mu(H, V, W.T, G, l1, l2, eps, base=H, transposed=False)
        if which in ("W", "both"):
            G = torch.empty((k, k), dtype=torch.float32, device=dev)
            _gemm(H.T, H, G, k, k, H.shape[0])
            _mu(W.T, V.T, H, G, l1, l2, eps, base=W, transposed=True)

    def linear_block_fwd_bwd(x, weight, bias, z, u, *, rho, activation="relu", need_input_grad=True):
        dev = x.device
        xdt = _check("x", x, dev)
        wdt = _check("weight", weight, dev)
        bdt = _check("bias", bias, dev) if bias is not None else 0
        zdt, udt = _check("z", z, dev), _check("u", u, dev)
        m, k = x.shape
        n = weight.shape[0]
        if m == 0 or n == 0:
            from ..ref import linear_block_fwd_bwd as ref
            return ref(x, weight, bias, z, u, rho=rho, activation=activation, need_input_grad=need_input_grad)
        out = torch.empty((m, n), dtype=x.dtype, device=dev)
        gp = torch.empty((m, n), dtype=torch.float32, device=dev)
        loss_part = torch.empty(mod.linear_grid(m, n), dtype=torch.float32, device=dev)
        tm = mod.tile_m()
        bias_part = torch.empty(((m + tm - 1) // tm, n), dtype=torch.float32, device=dev) if bias is not None else None
        mod.linear_fwd(_ctx(x), _stream(x), x.data_ptr(), xdt, weight.data_ptr(), wdt,
                       0 if bias is None else bias.data_ptr(), bdt, z.data_ptr(), zdt, u.data_ptr(), udt,
                       out.data_ptr(), xdt, gp.data_ptr(), m, n, k, float(rho) / m, ACT_CODES[activation],
                       loss_part.data_ptr(), 0 if bias_part is None else bias_part.data_ptr())
        loss = loss_part.sum() * (float(rho) / (2 * m))
        grad_weight = _gemm(gp.T, x, torch.empty((n, k), dtype=weight.dtype, device=dev), n, k, m)
        grad_bias = bias_part.sum(0).to(bias.dtype) if bias is not None else None
        grad_input = None
        if need_input_grad:
            grad_input = _gemm(gp, weight, torch.empty((m, k), dtype=x.dtype, device=dev), m, k, n)
        return loss, grad_weight, grad_bias, grad_input, out

    return {
        "aux_dual_update": aux_dual_update,
        "nmf_mu_update": nmf_mu_update,
        "nmf_hals_update": nmf_hals.cuda_kernel(mod),
        "linear_block_fwd_bwd": linear_block_fwd_bwd,
    }
