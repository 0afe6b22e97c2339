"""The one dispatch: which backend runs an op.

`backend="auto"` (or the BLOCKADMM_BACKEND environment variable, when the argument is "auto") walks
AUTO_ORDER for the tensors' device and takes the first backend that loads and can run the call,
falling back silently. A backend asked for by name that cannot run raises BackendUnavailable with
the reason.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

BACKEND_ENV = "BLOCKADMM_BACKEND"

# Fastest first. On CUDA, the CUDA C++ module leads because it launches fewer kernels per op than the
# Triton path for the memory-bound ops; the kernel bench (bench/) is the record of that choice.
AUTO_ORDER: dict[str, tuple] = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}


class BackendUnavailable(RuntimeError):
    """A backend asked for by name cannot run this call."""


@dataclass
class Backend:
    name: str
    devices: tuple
    load: Callable[[], Mapping[str, Callable]]
    # (op, device_type, kwargs) -> None if it can run the call, else the reason it cannot
    can_run: Callable[[str, str, dict], str | None] = lambda op, device, kwargs: None
    _ops: Mapping[str, Callable] | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)

    def ops(self) -> Mapping[str, Callable] | None:
        if self._ops is None and self._error is None:
            try:
                self._ops = self.load()
            except Exception as e:  # noqa: BLE001 - a missing compiler, library or GPU is a reason, not a crash
                self._error = f"{type(e).__name__}: {e}"
        return self._ops

    def load_error(self) -> str | None:
        self.ops()
        return self._error

    def why_not(self, op: str, device: str, kwargs: dict, tensors: Mapping | None = None) -> str | None:
        if device not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors, these are on {device}"
        err = self.load_error()
        if err is not None:
            return f"not loaded ({err})"
        if op not in self._ops:
            return f"has no {op} kernel"
        # can_run sees the call's keyword arguments plus, under "tensors", the tensor arguments by name
        return self.can_run(op, device, dict(kwargs, tensors=dict(tensors or {})))


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def backends() -> dict[str, Backend]:
    return dict(_BACKENDS)


def _outside_autocast(fn: Callable, device: str) -> Callable:
    """fn run with torch.autocast off: an op computes in its tensors' own dtypes (a kernel that fills float32 buffers
    through torch GEMMs must not get half-precision results from them)."""
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return fn

    def run(*args, **kwargs):
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return run


def resolve(op: str, backend: str, device: str, kwargs: dict, tensors: Mapping | None = None) -> Callable:
    """Return the implementation of `op` that `backend` names (or the best one for "auto")."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if backend != "auto":
        if backend not in _BACKENDS:
            raise BackendUnavailable(
                f"unknown backend {backend!r}; known backends: {sorted(_BACKENDS)} or 'auto' "
                f"(check the argument and the {BACKEND_ENV} environment variable)"
            )
        reason = _BACKENDS[backend].why_not(op, device, kwargs, tensors)
        if reason is not None:
            raise BackendUnavailable(
                f"backend {backend!r} cannot run {op}: {reason}. Use backend='auto' to fall back, "
                f"or see `blockadmm info` for what is available."
            )
        return _outside_autocast(_BACKENDS[backend].ops()[op], device)
    for name in AUTO_ORDER.get(device, ("torch",)):
        b = _BACKENDS.get(name)
        if b is not None and b.why_not(op, device, kwargs, tensors) is None:
            return _outside_autocast(b.ops()[op], device)
    raise BackendUnavailable(f"no backend can run {op} on {device} tensors")


def status() -> dict[str, str | None]:
    """Backend name -> None when it loaded, else the reason it did not."""
    return {name: b.load_error() for name, b in _BACKENDS.items()}
