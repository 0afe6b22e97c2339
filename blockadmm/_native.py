"""Load the compiled modules once, and say why not when they are absent.

`blockadmm._cpu` (csrc/cpu) and `blockadmm._cuda` (csrc/cuda) are optional: setup.py builds them when it
can and records what it did in `_build_report.json` beside them. `load(name)` returns the module or
raises ImportError with a reason a user can act on (built? skipped and why? failed to import and why?).
Nothing here imports torch.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Dict, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPORT = os.path.join(_HERE, "_build_report.json")
_cache: Dict[str, object] = {}
_errors: Dict[str, str] = {}

REBUILD_HINT = "reinstall to build it: pip install -v -e . (or pip install -v .)"


def build_report() -> Dict[str, dict]:
    """What setup.py recorded for each compiled module ({} when it never ran here)."""
    try:
        with open(_REPORT) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _why_missing(name: str, err: Exception) -> str:
    rec = build_report().get(f"blockadmm.{name}")
    if rec is None:
        return f"blockadmm.{name} is not built (no build record; {REBUILD_HINT}); import said: {err}"
    if not rec.get("built"):
        return f"blockadmm.{name} was not built: {rec.get('reason', 'no reason recorded')}"
    return f"blockadmm.{name} was built but does not import ({type(err).__name__}: {err}); {REBUILD_HINT}"


def load(name: str):
    """Import blockadmm.<name> ("_cpu" or "_cuda") once; ImportError with the reason when it cannot."""
    if name in _cache:
        return _cache[name]
    if name in _errors:
        raise ImportError(_errors[name])
    try:
        mod = importlib.import_module(f"blockadmm.{name}")
    except ImportError as e:
        _errors[name] = _why_missing(name, e)
        raise ImportError(_errors[name]) from None
    _cache[name] = mod
    return mod


def describe(name: str) -> str:
    """One line on a compiled module: what loaded (and how it was built) or why it did not."""
    try:
        mod = load(name)
    except ImportError as e:
        return f"not available: {e}"
    rec = build_report().get(f"blockadmm.{name}", {})
    if name == "_cpu":
        omp = f"OpenMP, {mod.max_threads} threads" if mod.openmp else "no OpenMP (single-threaded)"
        return f"loaded ({omp})"
    if name == "_cuda":
        n, err = mod.device_count()
        v = mod.runtime_version()
        rt = f"CUDA runtime {v // 1000}.{(v % 1000) // 10} (static)"
        archs = ", ".join(f"sm_{a}" for a in rec.get("archs", [])) or "archs unknown"
        gpus = f"{n} GPU(s)" if n else f"no usable GPU ({err or 'none found'})"
        return f"loaded ({rt}, {archs}; {gpus})"
    return "loaded"


def native_status() -> Dict[str, Optional[str]]:
    """Module name -> None when it loaded, else the reason (for `blockadmm info`)."""
    out: Dict[str, Optional[str]] = {}
    for name in ("_cpu", "_cuda"):
        try:
            load(name)
            out[f"blockadmm.{name}"] = None
        except ImportError as e:
            out[f"blockadmm.{name}"] = str(e)
    return out
