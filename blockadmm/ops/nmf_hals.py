"""The public op `nmf_hals_update` (DESIGN §2, issue 27): its checks, and the glue of its compiled backends.

One HALS / coordinate-descent pass on the codes H of V ≈ H W; the GEMMs (A = V Wᵀ − l1, G = W Wᵀ + l2·I)
stay with the caller's BLAS, the sequential per-row loop over the k components runs here. The Triton
launcher is kernels/nmf_hals.py; the C++ CPU and CUDA kernels are csrc/cpu/nmf_hals.cpp and
csrc/cuda/nmf_hals.cu.
"""

from __future__ import annotations

import torch

from ._dispatch import resolve

DTYPES = (torch.float32, torch.float64)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) byte addresses a tensor's elements occupy (an empty one spans nothing)."""
    if t.numel() == 0:
        return 0, 0
    extent = sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True)) + 1
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a.device == b.device and a0 < b1 and b0 < a1


def _check_perm(perm, k: int, device: torch.device) -> torch.Tensor | None:
    if perm is None:
        return None
    if not isinstance(perm, torch.Tensor):
        raise TypeError(
            f"perm must be None or a 1-D LongTensor permutation of 0..{k - 1}, got {type(perm).__name__}; "
            f"pass torch.as_tensor(perm)"
        )
    if perm.dim() != 1 or perm.dtype not in (torch.int64, torch.int32) or perm.numel() != k:
        raise ValueError(
            f"perm must be a 1-D int64 tensor of length k = {k} (a permutation of 0..{k - 1}), "
            f"got {perm.dtype} of shape {tuple(perm.shape)}"
        )
    perm = perm.to(device=device, dtype=torch.int64).contiguous()
    if k and not torch.equal(perm.sort().values, torch.arange(k, device=device)):
        raise ValueError(
            f"perm must hold each of 0..{k - 1} exactly once (a permutation); "
            f"use torch.randperm({k}) or None for the order 0..{k - 1}"
        )
    return perm


def nmf_hals_update(
    H: torch.Tensor,
    A: torch.Tensor,
    G: torch.Tensor,
    *,
    perm: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One HALS (coordinate-descent) pass on the codes H (n×k) of V ≈ H W, in place; returns the violation.

    A = V Wᵀ − l1 (n×k) and G = W Wᵀ + l2·I (k×k) come from the caller (the W update is the same op on the
    transposed problem: Wᵀ, A = Vᵀ H − l1, G = Hᵀ H + l2·I). Rows are independent; within a row the
    components t are visited in the order `perm` (a permutation of 0..k-1; None: 0..k-1), as in
    scikit-learn's `_update_cdnmf_fast`:

        grad = Σ_r G[t, r]·H[i, r] − A[i, t];  violation += |min(0, grad) if H[i, t] == 0 else grad|
        H[i, t] = max(H[i, t] − grad / G[t, t], 0)   (unless G[t, t] == 0)

    float32 or float64 (H, A and G alike). Returns the violation summed over all rows as a 0-d tensor on H's
    device: float64 for float64 H, else float32 (accumulated per row in float32).
    """
    for name, t in (("H", H), ("A", A), ("G", G)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if H.dtype not in DTYPES:
        raise TypeError(f"H must be float32 or float64, got {H.dtype}; pass H.float() (and use the result)")
    for name, t in (("A", A), ("G", G)):
        if t.dtype != H.dtype:
            raise TypeError(f"{name} is {t.dtype} but H is {H.dtype}; pass {name}.to(H.dtype)")
    devices = {"H": H.device, "A": A.device, "G": G.device}
    if len(set(devices.values())) > 1:
        raise ValueError(f"H, A and G must be on one device, got {devices}; move them with .to(H.device)")
    n, k = H.shape
    if A.shape != H.shape or G.shape != (k, k):
        raise ValueError(
            f"need H (n×k), A = V Wᵀ − l1 (n×k) and G = W Wᵀ + l2·I (k×k); "
            f"got H {tuple(H.shape)}, A {tuple(A.shape)}, G {tuple(G.shape)}"
        )
    if not H.is_contiguous():
        raise ValueError("H is updated in place and must be contiguous; pass H.contiguous() and use the result")
    for name, t in (("A", A), ("G", G)):
        if _overlaps(H, t):
            raise ValueError(f"H and {name} share memory; H is written in place, so pass {name}.clone()")
    perm = _check_perm(perm, k, H.device)
    out_dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    if n == 0 or k == 0:
        return torch.zeros((), dtype=out_dtype, device=H.device)
    A, G = A.contiguous(), G.contiguous()
    fn = resolve("nmf_hals_update", backend, H.device.type, {"perm": perm}, {"H": H, "A": A, "G": G})
    return fn(H, A, G, perm=perm)


def _violation_dtype(H: torch.Tensor) -> torch.dtype:
    return torch.float64 if H.dtype == torch.float64 else torch.float32


def _check_kernel_args(H, A, G, perm, device_type: str) -> None:
    """What the compiled kernels assume beyond the public checks (their ops may be called directly too)."""
    for name, t in (("H", H), ("A", A), ("G", G)):
        if t.device.type != device_type or t.dtype != H.dtype or t.dtype not in DTYPES or not t.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous float32/float64 {device_type} tensor of H's dtype, "
                f"got {t.dtype} on {t.device}"
            )
    if perm is not None and (perm.dtype != torch.int64 or perm.device != H.device or not perm.is_contiguous()):
        raise ValueError("perm must be a contiguous int64 tensor on H's device")


def cpu_kernel(mod):
    """The "cpu" backend's nmf_hals_update: the C++ kernel of csrc/cpu/nmf_hals.cpp (OpenMP over rows)."""

    def nmf_hals_update(H, A, G, *, perm=None):
        _check_kernel_args(H, A, G, perm, "cpu")
        n, k = H.shape
        total = mod.nmf_hals_update(
            H.data_ptr(),
            A.data_ptr(),
            G.data_ptr(),
            0 if perm is None else perm.data_ptr(),
            n,
            k,
            int(H.dtype == torch.float64),
            torch.get_num_threads(),
        )
        return torch.scalar_tensor(total, dtype=_violation_dtype(H))

    return nmf_hals_update


CUDA_DTYPE_CODES = {torch.float32: 0, torch.float64: 3}


def cuda_kernel(mod):
    """The "cuda" backend's nmf_hals_update: the kernel of csrc/cuda/nmf_hals.cu (one warp per row)."""

    def nmf_hals_update(H, A, G, *, perm=None):
        _check_kernel_args(H, A, G, perm, "cuda")
        n, k = H.shape
        viol = torch.empty(n, dtype=H.dtype, device=H.device)
        if n == 0 or k == 0:
            return torch.zeros((), dtype=_violation_dtype(H), device=H.device)
        device = H.device.index if H.device.index is not None else torch.cuda.current_device()
        mod.nmf_hals_update(
            device,
            torch.cuda.current_stream(H.device).cuda_stream,
            H.data_ptr(),
            A.data_ptr(),
            G.data_ptr(),
            0 if perm is None else perm.data_ptr(),
            n,
            k,
            CUDA_DTYPE_CODES[H.dtype],
            viol.data_ptr(),
        )
        return viol.sum(dtype=torch.float64).to(_violation_dtype(H))

    return nmf_hals_update
