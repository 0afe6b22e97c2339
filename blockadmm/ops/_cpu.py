"""The "cpu" backend: the C++ CPU module (csrc/cpu, OpenMP) behind the public ops.

The module takes raw float32 pointers (tensor.data_ptr()) and sizes, so it does not depend on the torch
build. The public front ends have already checked shapes and in-place contiguity; this file checks what
the compiled code additionally assumes (CPU, float32, contiguous) and hands over. GEMMs stay with torch's
BLAS; the fused parts are the aux/dual update (plain and indexed), the NMF multiplicative epilogue and the
linear-block residual/activation epilogue.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _native
from ..ref import linear_block as _ref_linear
from .._kernel_args import ACT_CODES, prox_args

DEVICES = ("cpu",)


def can_run(op: str, device: str, kwargs: dict) -> Optional[str]:
    prox = kwargs.get("prox")
    if prox is not None and prox.kind == "custom":
        return "a Prox.custom callable runs only on the torch backend"
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
        return torch.tensor(total, dtype=torch.float32)

    def _mu(X, num, den, l1, l2, eps):
        mod.nmf_mu_epilogue(X.data_ptr(), num.data_ptr(), den.data_ptr(), X.numel(), float(l1), float(l2), float(eps),
                            torch.get_num_threads())

    def nmf_mu_update(V, H, W, *, which="both", eps=1e-12, l1=0.0, l2=0.0):
        for name, t in (("V", V), ("H", H), ("W", W)):
            _check(name, t)
        # GEMM shapes (bench/bench_nmf.py measures them): V Wᵀ as one NT GEMM; for the W update, Hᵀ is
        # made contiguous once (k x n, a small copy) so HᵀV and HᵀH are plain NN GEMMs into fresh
        # contiguous outputs; the k x k Gram products are applied to the skinny side. The epilogues
        # (x * num / (den + l1 + l2 x + eps)) are one fused C++ pass each.
        if which in ("H", "both"):
            num = torch.mm(V, W.T)
            den = torch.mm(H, torch.mm(W, W.T))
            _mu(H, num, den, l1, l2, eps)
        if which in ("W", "both"):
            Ht = H.T.contiguous()
            num = torch.mm(Ht, V)
            den = torch.mm(torch.mm(Ht, H), W)
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
        loss = torch.tensor((float(rho) / (2 * m)) * ssq, dtype=torch.float32)
        grad_weight = gp.T @ x
        grad_bias = gp.sum(0) if bias is not None else None
        grad_input = gp @ weight if need_input_grad else None
        return loss, grad_weight, grad_bias, grad_input, out

    return {
        "aux_dual_update": aux_dual_update,
        "nmf_mu_update": nmf_mu_update,
        "linear_block_fwd_bwd": linear_block_fwd_bwd,
    }
