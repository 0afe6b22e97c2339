"""The "cpu" backend: the C++ CPU module (csrc/cpu, OpenMP) behind the public ops.

The module takes raw float32 pointers (tensor.data_ptr()) and sizes, so it does not depend on the torch
build. The public front ends have already checked shapes and in-place contiguity; this file checks what
the compiled code additionally assumes (CPU, float32, contiguous) and hands over. GEMMs stay with torch's
BLAS; the fused parts are the aux/dual update (plain and indexed), the NMF multiplicative epilogue and the
linear-block residual/activation epilogue.
"""
from __future__ import annotations

import threading

import torch

from .. import _native
from .._kernel_args import ACT_CODES, check_linear_residual, prox_args
from ..ref import linear_block as _ref_linear
from . import nmf_hals

DEVICES = ("cpu",)
_SCRATCH = threading.local()
_SCRATCH_MAX_ELEMS = 4 * 2**20  # at most 16 MB per buffer is kept


def _scratch(name: str, shape) -> torch.Tensor:
    """A float32 CPU buffer of `shape` kept per thread and reused by later calls of the same shape: the
    NMF update's GEMM outputs, so each call does not fault in fresh pages (they are overwritten whole)."""
    numel = 1
    for n in shape:
        numel *= int(n)
    if numel > _SCRATCH_MAX_ELEMS:  # large problems: a fresh buffer, nothing held between calls
        return torch.empty(tuple(shape), dtype=torch.float32)
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    t = bufs.get(name)
    if t is None or tuple(t.shape) != tuple(shape):
        t = bufs[name] = torch.empty(tuple(shape), dtype=torch.float32)
    return t


# Below this many multiply-adds one threaded GEMM is as fast as the split (measured, 2 threads: 1024x256x16
# loses 25% split, 500x784x64 gains 15%, 5000x784x64 gains 13-18%).
_SPLIT_MIN_MACS = 2**24
# Aᵀ B split over its rows only while the k x d output is this small: the partial products of a wider one
# cost more than the split saves (measured, 2 threads: Hᵀ V with a 64 x 784 output 8-15% faster split,
# 128 x 1024 (16384 rows) 30% slower, whatever the number of row blocks).
_INNER_SPLIT_MAX_OUT = 2**16


def _split(rows: int, macs: int) -> int:
    threads = torch.get_num_threads()
    return threads if threads > 1 and rows >= threads and macs >= _SPLIT_MIN_MACS else 1


def _mm_rows(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    """out = A @ B with the rows of A shared out over the threads: one single-threaded GEMM per thread.

    torch.bmm runs its batch entries in parallel, each on one thread. For the NMF shapes (an output only k
    columns wide, or k rows high) that beats MKL's own threading: 2 threads, 5000 x 784 @ 784 x 64 runs at
    0.75 of the square-GEMM rate threaded, 0.88 of the 1-thread rate alone (bench/bench_nmf.py)."""
    t = _split(A.shape[0], A.shape[0] * A.shape[1] * B.shape[1])
    if t == 1:
        torch.mm(A, B, out=out)
        return
    q, B = A.shape[0] // t, B.contiguous()  # (Wᵀ: a contiguous copy is 8% faster in the batched GEMM)
    torch.bmm(A[: t * q].view(t, q, A.shape[1]), B.expand(t, *B.shape), out=out[: t * q].view(t, q, B.shape[1]))
    if t * q < A.shape[0]:
        torch.mm(A[t * q:], B, out=out[t * q:])


def _mm_inner(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor, scratch: str) -> None:
    """out = Aᵀ @ B (A, B with the same rows), the rows split over the threads and the partial products (kept
    in the scratch buffer of that name) summed."""
    t = _split(A.shape[0], A.shape[0] * A.shape[1] * B.shape[1]) if out.numel() <= _INNER_SPLIT_MAX_OUT else 1
    if t == 1:
        torch.mm(A.T, B, out=out)
        return
    q = A.shape[0] // t
    part = _scratch(scratch, (t, A.shape[1], B.shape[1]))
    torch.bmm(A[: t * q].view(t, q, A.shape[1]).transpose(1, 2), B[: t * q].view(t, q, B.shape[1]), out=part)
    torch.sum(part, 0, out=out)
    if t * q < A.shape[0]:
        out.addmm_(A[t * q:].T, B[t * q:])


def can_run(op: str, device: str, kwargs: dict) -> str | None:
    prox = kwargs.get("prox")
    if prox is not None and prox.kind == "custom":
        return "a Prox.custom callable runs only on the torch backend"
    if op == "nmf_hals_update":  # float32 and float64, the only dtypes the op takes
        return None
    for name, t in (kwargs.get("tensors") or {}).items():
        if t is not None and t.is_floating_point() and t.dtype != torch.float32:
            return f"the C++ CPU module handles float32 only ({name} is {t.dtype}); the torch backend runs other dtypes"
    return None


def _check(name: str, t: torch.Tensor) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor for the cpu backend, got {t.device}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32 for the cpu backend, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous for the cpu backend")


def load():
    mod = _native.load("_cpu")
    check_linear_residual(mod, "_cpu")

    def aux_dual_update(z, u, a, g, *, rho, lr, dual_step=1.0, prox=None, index=None, step="grad"):
        for name, t in (("z", z), ("u", u), ("a", a), ("g", g)):
            if t is not None:
                _check(name, t)
        rows = a.shape[0] if a.dim() else 1
        cols = a.numel() // rows if rows else 0
        if index is not None:
            index = index.to(torch.int64).contiguous()
        elif a.numel() != z.numel():
            raise ValueError("without index, a must have z's shape")
        kind, lo, hi, thr = prox_args(prox, lr)
        total = mod.aux_dual_update(
            z.data_ptr(), u.data_ptr(), a.data_ptr(), 0 if g is None else g.data_ptr(),
            0 if index is None else index.data_ptr(), rows, cols, float(rho), float(lr), float(dual_step),
            kind, lo, hi, thr, step == "sign", torch.get_num_threads(),
        )
        return torch.scalar_tensor(total, dtype=torch.float32)

    def _mu(X, num, den, l1, l2, eps):
        mod.nmf_mu_epilogue(X.data_ptr(), num.data_ptr(), den.data_ptr(), X.numel(), float(l1), float(l2), float(eps),
                            torch.get_num_threads())

    def nmf_mu_update(V, H, W, *, which="both", eps=1e-12, l1=0.0, l2=0.0):
        for name, t in (("V", V), ("H", H), ("W", W)):
            _check(name, t)
        # Measured on MNIST-5k shapes (5000 x 784, k = 64; bench/bench_nmf.py): writing the GEMM results into
        # per-thread scratch buffers that are reused across calls saves ~15% of an iteration over fresh
        # outputs (no page faults on every call); the GEMMs large enough run split over the threads
        # (_mm_rows, _mm_inner: 0.72 -> 0.83 of the torch.mm rate per iteration, 2 threads); the epilogues
        # (x * num / (den + l1 + l2 x + eps)) are one fused C++ pass each.
        k = H.shape[1]
        if which in ("H", "both"):
            num, den, gram = _scratch("nmf_numH", H.shape), _scratch("nmf_denH", H.shape), _scratch("nmf_gram", (k, k))
            _mm_rows(V, W.T, num)
            torch.mm(W, W.T, out=gram)
            _mm_rows(H, gram, den)
            _mu(H, num, den, l1, l2, eps)
        if which in ("W", "both"):
            num, den, gram = _scratch("nmf_numW", W.shape), _scratch("nmf_denW", W.shape), _scratch("nmf_gram", (k, k))
            _mm_inner(H, V, num, "nmf_partW")
            _mm_inner(H, H, gram, "nmf_partG")
            torch.mm(gram, W, out=den)
            _mu(W, num, den, l1, l2, eps)

    def linear_block_fwd_bwd(x, weight, bias, z, u, *, rho, activation="relu", need_input_grad=True):
        for name, t in (("x", x), ("weight", weight), ("bias", bias), ("z", z), ("u", u)):
            if t is not None:
                _check(name, t)
        m = x.shape[0]
        if m == 0 or weight.shape[0] == 0:
            return _ref_linear.linear_block_fwd_bwd(x, weight, bias, z, u, rho=rho, activation=activation,
                                                    need_input_grad=need_input_grad)
        pre = torch.addmm(bias, x, weight.T) if bias is not None else x @ weight.T
        pre = pre.contiguous()
        out = torch.empty_like(pre)
        ssq = mod.linear_epilogue(pre.data_ptr(), out.data_ptr(), z.data_ptr(), u.data_ptr(), pre.numel(),
                                  float(rho) / m, ACT_CODES[activation], torch.get_num_threads())
        gp = pre  # the epilogue overwrote pre with gp = (rho/m) r act'(pre)
        loss = torch.scalar_tensor((float(rho) / (2 * m)) * ssq, dtype=torch.float32)
        grad_weight = gp.T @ x
        grad_bias = gp.sum(0) if bias is not None else None
        grad_input = gp @ weight if need_input_grad else None
        return loss, grad_weight, grad_bias, grad_input, out

    return {
        "aux_dual_update": aux_dual_update,
        "nmf_mu_update": nmf_mu_update,
        "nmf_hals_update": nmf_hals.cpu_kernel(mod),
        "linear_block_fwd_bwd": linear_block_fwd_bwd,
    }
