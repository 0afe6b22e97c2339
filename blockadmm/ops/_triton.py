"""The "triton" backend: the Triton kernels in kernels/ (installed as blockadmm.kernels).

On CUDA tensors they run compiled. On CPU tensors they run only under the Triton interpreter
(TRITON_INTERPRET=1, set before the kernels are first imported), which is how CI tests them; "auto" on CPU
never picks Triton (AUTO_ORDER["cpu"] does not list it), only backend="triton" does.
"""
from __future__ import annotations

import os

DEVICES = ("cuda", "cpu")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def can_run(op: str, device: str, kwargs: dict) -> str | None:
    prox = kwargs.get("prox")
    if prox is not None and prox.kind == "custom":
        return "a Prox.custom callable runs only on the torch backend"
    if device == "cpu" and not interpreting():
        return ("Triton kernels run on CPU tensors only under the interpreter "
                "(set TRITON_INTERPRET=1 before importing blockadmm)")
    if op == "nmf_hals_update":
        from ..kernels.nmf_hals import MAX_K

        k = kwargs["tensors"]["H"].shape[1]
        if k > MAX_K:
            return f"the Triton nmf_hals_update keeps a row in registers, k <= {MAX_K} (k = {k})"
    return None


def load():
    try:
        import triton  # noqa: F401 - only whether it imports
    except ImportError as e:
        raise ImportError(f"triton is not installed ({e}); pip install 'blockadmm[triton]'") from None
    from ..kernels import aux_dual, linear_block, nmf, nmf_hals

    return {
        "aux_dual_update": aux_dual.aux_dual_update,
        "nmf_mu_update": nmf.nmf_mu_update,
        "nmf_hals_update": nmf_hals.nmf_hals_update,
        "linear_block_fwd_bwd": linear_block.linear_block_fwd_bwd,
    }
