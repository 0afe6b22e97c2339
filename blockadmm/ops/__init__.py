"""Public ops (DESIGN §2): validated front ends over the one dispatch.

Each op checks its arguments once here, so every backend receives the same well-formed call:
shapes, dtypes, devices, contiguity of in-place outputs, unique indices.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import ref
from ..prox import Prox, as_prox
from ._dispatch import (
    AUTO_ORDER,
    BACKEND_ENV,
    Backend,
    BackendUnavailable,
    backends,
    register_backend,
    resolve,
    status,
)
from .nmf_hals import nmf_hals_update

__all__ = [
    "AUTO_ORDER",
    "BACKEND_ENV",
    "Backend",
    "BackendUnavailable",
    "Prox",
    "aux_dual_update",
    "backends",
    "compiled_modules",
    "linear_block_fwd_bwd",
    "nmf_hals_update",
    "nmf_mu_update",
    "register_backend",
    "status",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: the torch backend only


register_backend(
    Backend(
        name="torch",
        devices=("cpu", "cuda", "mps", "xpu"),
        load=lambda: {
            "aux_dual_update": ref.aux_dual_update,
            "nmf_mu_update": ref.nmf_mu_update,
            "nmf_hals_update": ref.nmf_hals_update,
            "linear_block_fwd_bwd": ref.linear_block_fwd_bwd,
        },
    )
)


def _register_compiled() -> None:
    """The compiled backends (DESIGN §2). Each loads lazily on first use; a load failure is a reason
    (reported by status() and `blockadmm info`), never an import error of blockadmm.ops."""
    from . import _cpu, _cuda, _triton

    register_backend(Backend(name="cpu", devices=_cpu.DEVICES, load=_cpu.load, can_run=_cpu.can_run))
    register_backend(Backend(name="triton", devices=_triton.DEVICES, load=_triton.load, can_run=_triton.can_run))
    register_backend(Backend(name="cuda", devices=_cuda.DEVICES, load=_cuda.load, can_run=_cuda.can_run))


_register_compiled()


def compiled_modules() -> dict:
    """Compiled module name -> one line: "loaded (...how it was built...)" or "not available: <why>"
    (what setup.py recorded: skipped, compile failed, or built but not importable). For `blockadmm info`."""
    from .. import _native

    return {f"blockadmm.{name}": _native.describe(name) for name in ("_cpu", "_cuda")}


def needs_torch_backend(op: str, device: str, kwargs: dict) -> str | None:
    """`can_run` helper for compiled backends: what only the torch reference can do."""
    prox = kwargs.get("prox")
    if prox is not None and prox.kind == "custom":
        return "a Prox.custom callable runs only on the torch backend"
    if op != "nmf_hals_update" and any(  # the HALS kernels take float64 too
        t is not None and t.dtype == torch.float64 for t in (kwargs.get("tensors") or {}).values()
    ):
        return "float64 runs only on the torch backend (the kernels take float32, float16, bfloat16)"
    return None


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _same_device(**tensors) -> str:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    return next(iter(devices.values())).type


def _check_inplace(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name} is updated in place and must be contiguous; "
                         f"pass {name}.contiguous() and use the result")


def _check_scalars(**values) -> None:
    """Each value (given as name=(value, low, strict)) a finite real number >= low (> low when strict)."""
    for name, (value, low, strict) in values.items():
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < low or (strict and value == low):
            raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")


def _check_no_alias(outputs: dict, others: dict) -> None:
    """Refuse an in-place output that shares memory with another argument (`z is u`): one kernel pass would
    read what it has already overwritten, and the backends would disagree."""
    def span(t):
        return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()

    items = [(n, t) for n, t in {**outputs, **others}.items() if t is not None and t.numel()]
    for i, (name, t) in enumerate(items):
        for other, o in items[i + 1:]:
            if name in outputs or other in outputs:
                (a0, a1), (b0, b1) = span(t), span(o)
                if t.device == o.device and a0 < b1 and b0 < a1:
                    raise ValueError(f"{name} and {other} share memory, and {name if name in outputs else other} "
                                     f"is updated in place: pass separate tensors (e.g. {other}.clone())")


def aux_dual_update(
    z: torch.Tensor,
    u: torch.Tensor,
    a: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    rho: float,
    lr: float,
    dual_step: float = 1.0,
    prox=None,
    index: torch.Tensor | None = None,
    step: str = "grad",
    backend: str = "auto",
) -> torch.Tensor:
    """Fused auxiliary/dual update, in place on z and u (rows `index` of them when given).

    zn = prox(z[j] - lr*(rho*(z[j] - a[i] + u[j]) + g[i]));  u[j] += dual_step*(zn - a[i]);  z[j] = zn.
    With step="sign" the step is lr*sign(...). Returns the float32 sum of ||zn - a||^2 as a 0-d tensor.
    """
    prox = as_prox(prox)
    for name, t in (("z", z), ("u", u), ("a", a), ("g", g)):
        if t is not None:
            _check_float(name, t)
    device = _same_device(z=z, u=u, a=a, g=g, index=index)
    if u.shape != z.shape or u.dtype != z.dtype:
        raise ValueError(f"u must match z in shape and dtype: z {tuple(z.shape)} {z.dtype}, "
                         f"u {tuple(u.shape)} {u.dtype}")
    _check_inplace("z", z)
    _check_inplace("u", u)
    if index is None:
        if a.shape != z.shape:
            raise ValueError(f"a has shape {tuple(a.shape)} but z has {tuple(z.shape)}; without index they must match")
    else:
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"index must be a 1-D int64/int32 tensor of table rows, "
                             f"got {index.dtype} of shape {tuple(index.shape)}")
        if index.shape[0] != a.shape[0] or a.shape[1:] != z.shape[1:]:
            raise ValueError(
                f"with index, a must be (len(index), *z.shape[1:]) = "
                f"({index.shape[0]}, {', '.join(map(str, z.shape[1:]))}), got {tuple(a.shape)}"
            )
        if index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= z.shape[0]:
                raise IndexError(f"index holds rows {lo}..{hi} but the table has {z.shape[0]} rows")
            if index.unique().numel() != index.numel():
                raise ValueError("index rows must be unique (a row updated twice in one pass is undefined)")
        index = index.long()
    if g is not None and g.shape != a.shape:
        raise ValueError(f"g has shape {tuple(g.shape)} but a has {tuple(a.shape)}")
    if step not in ("grad", "sign"):
        raise ValueError(f"step must be 'grad' or 'sign', got {step!r}")
    _check_scalars(rho=(rho, 0, False), lr=(lr, 0, False), dual_step=(dual_step, 0, False))
    a = a.contiguous()
    g = g.contiguous() if g is not None else None
    _check_no_alias({"z": z, "u": u}, {"a": a, "g": g})
    kwargs = {"rho": float(rho), "lr": float(lr), "dual_step": float(dual_step), "prox": prox, "index": index,
              "step": step}
    fn = resolve("aux_dual_update", backend, device, kwargs, {"z": z, "u": u, "a": a, "g": g})
    return fn(z, u, a, g, **kwargs)


def nmf_mu_update(
    V: torch.Tensor,
    H: torch.Tensor,
    W: torch.Tensor,
    *,
    which: str = "both",
    eps: float = 1e-12,
    l1: float = 0.0,
    l2: float = 0.0,
    backend: str = "auto",
) -> None:
    """Lee-Seung multiplicative updates of H (n×k) and/or W (k×d) for V ≈ H W, in place.

    V must be non-negative: a negative entry makes the numerators, and so H and W, negative (the updates keep
    factors non-negative only for V >= 0), so V with a negative (or NaN) entry is refused (one min over V).

    The cpu backend sets entries that an update takes below sqrt(FLT_MIN) ≈ 1.1e-19 to zero: long runs
    drive many entries that low, and on CPUs with a slow path for subnormal products a GEMM that forms them
    runs several times slower (bench/bench_nmf.py measures it per machine). The other backends keep them."""
    for name, t in (("V", V), ("H", H), ("W", W)):
        _check_float(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    device = _same_device(V=V, H=H, W=W)
    n, d = V.shape
    if H.shape[0] != n or W.shape[1] != d or H.shape[1] != W.shape[0]:
        raise ValueError(f"need V (n×d) ≈ H (n×k) @ W (k×d); "
                         f"got V {tuple(V.shape)}, H {tuple(H.shape)}, W {tuple(W.shape)}")
    if which not in ("H", "W", "both"):
        raise ValueError(f"which must be 'H', 'W' or 'both', got {which!r}")
    _check_scalars(eps=(eps, 0, True), l1=(l1, 0, False), l2=(l2, 0, False))
    _check_inplace("H", H)
    _check_inplace("W", W)
    _check_no_alias({"H": H, "W": W}, {"V": V})
    if V.numel() and not bool(V.min() >= 0):
        raise ValueError("V has negative or NaN entries: multiplicative updates need V >= 0 (a negative V turns "
                         "H and W negative); shift or clip V first")
    kwargs = {"which": which, "eps": float(eps), "l1": float(l1), "l2": float(l2)}
    fn = resolve("nmf_mu_update", backend, device, kwargs, {"V": V, "H": H, "W": W})
    fn(V.contiguous(), H, W, **kwargs)


def linear_block_fwd_bwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    z: torch.Tensor,
    u: torch.Tensor,
    *,
    rho: float,
    activation: str = "relu",
    need_input_grad: bool = True,
    backend: str = "auto",
):
    """Local ADMM loss and gradients of the block act(x W^T + b) against target z with scaled dual u:
    out = act(x W^T + b), r = out - z - u (u with the sign of aux_dual_update's), loss = (rho/2m) sum r^2.

    Returns (loss, grad_weight, grad_bias, grad_input, out); grad_input is None unless needed. With 0 rows:
    loss 0, zero gradients, empty grad_input and out (the mean over no rows is taken as 0, not 0/0).
    """
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("z", z), ("u", u)):
        if t is not None:
            _check_float(name, t)
    device = _same_device(x=x, weight=weight, bias=bias, z=z, u=u)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"need x (m×k) and weight (n×k); got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    out_shape = (x.shape[0], weight.shape[0])
    if tuple(z.shape) != out_shape or tuple(u.shape) != out_shape:
        raise ValueError(f"z and u must be (m×n) = {out_shape}; got z {tuple(z.shape)}, u {tuple(u.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if activation not in ref.ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ref.ACTIVATIONS}")
    _check_scalars(rho=(rho, 0, False))
    if x.shape[0] == 0:
        return (torch.zeros((), dtype=torch.float32, device=x.device), torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias), x.new_empty(x.shape) if need_input_grad else None,
                x.new_empty(out_shape))
    kwargs = {"rho": float(rho), "activation": activation, "need_input_grad": bool(need_input_grad)}
    tensors = {"x": x, "weight": weight, "bias": bias, "z": z, "u": u}
    fn = resolve("linear_block_fwd_bwd", backend, device, kwargs, tensors)
    return fn(
        x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(), z.contiguous(),
        u.contiguous(), **kwargs
    )
