"""Which compiled backends the kernel tests run here, and on which device (helpers, not tests)."""
import pytest
import torch

from blockadmm import ops


def backend_params():
    """pytest params (backend, device) for every compiled backend, skipped with the reason when it cannot run here."""
    out = []
    for name, device in (("cpu", "cpu"), ("triton", "cuda" if torch.cuda.is_available() else "cpu"), ("cuda", "cuda")):
        b = ops.backends().get(name)
        reason = None
        if b is None:
            reason = f"backend {name} is not registered"
        elif device == "cuda" and not torch.cuda.is_available():
            reason = "no CUDA device"
        else:
            reason = b.load_error()
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        out.append(pytest.param(name, device, id=name, marks=marks))
    return out


def half_skip_reason(backend: str, device: str, dtype) -> str:
    """Why (backend, device) is not tested in this half dtype, or "" when it is.

    The C++ CPU module is float32 only (auto sends half types to the torch backend). The Triton
    interpreter converts float32 to bfloat16 without round-to-nearest-even (checked: up to 1 ulp off, even
    with fp_downcast_rounding="rtne"), so bfloat16 Triton is checked on a GPU only (bench/gpu_check.py)."""
    if backend == "cpu":
        return "the C++ CPU module runs float32 only"
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter rounds float32->bfloat16 by truncation; bf16 is checked on GPU"
    return ""


def half_rule(kernel, ref_lowp, truth, what, slack=1e-6):
    """Flash-attention rule: the kernel's max error is at most twice the reference's own low-precision error."""
    ek = (kernel.double() - truth.double()).abs().max().item() if kernel.numel() else 0.0
    er = (ref_lowp.double() - truth.double()).abs().max().item() if ref_lowp.numel() else 0.0
    assert ek <= 2 * er + slack, f"{what}: kernel error {ek:.3g} > 2 x reference low-precision error {er:.3g}"
