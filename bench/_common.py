"""Shared pieces of the bench suites: sizes per mode, the record file, machine and version facts.

A suite times with pytest-benchmark (`benchmark.pedantic`) and calls `record(...)` with what it
measured plus what the report needs (bytes or FLOPs moved, backend, size, errors). Records go, one
JSON object a line, to the file named by BENCH_RECORDS (the runner, `python -m bench`, sets it and
merges them into bench/results/<machine>.json); without it they are only kept in memory (RECORDS),
so `pytest bench/bench_nmf.py` alone still runs and prints.

BENCH_MODE picks the sizes: "full" (the published numbers), "quick" (< 2 minutes), "tiny" (the
CI smoke test, run with --benchmark-disable: every path runs once, nothing is timed).
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from typing import Callable, Optional

MODE = os.environ.get("BENCH_MODE", "full")
if MODE not in ("full", "quick", "tiny"):
    raise ValueError(f"BENCH_MODE must be full, quick or tiny, got {MODE!r}")
RECORDS: list = []


def pick(full, quick, tiny):
    """The value for the current BENCH_MODE."""
    return {"full": full, "quick": quick, "tiny": tiny}[MODE]


def record(suite: str, name: str, **fields) -> dict:
    rec = {"suite": suite, "name": name, **fields}
    RECORDS.append(rec)
    path = os.environ.get("BENCH_RECORDS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec, default=_jsonable) + "\n")
    return rec


def _jsonable(x):
    try:
        return float(x)
    except Exception:
        return str(x)


def timed(benchmark, fn: Callable, *, rounds: int, warmup: int = 1, setup: Optional[Callable] = None) -> dict:
    """Run `fn` under pytest-benchmark; return {"s": min, "median_s", "rounds"} (s None when timing is off).

    The minimum is the headline number: on a shared machine it is the least disturbed run. With
    `setup` (called before each round, untimed) every round starts from the same state.
    """
    if setup is None:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    else:
        def _setup():
            setup()
            return (), {}
        benchmark.pedantic(fn, setup=_setup, rounds=rounds, warmup_rounds=warmup)
    st = getattr(benchmark, "stats", None)
    if not st or getattr(benchmark, "disabled", False):
        return {"s": None, "median_s": None, "rounds": 0}
    st = st.stats
    return {"s": st.min, "median_s": st.median, "rounds": st.rounds}


# ------------------------------------------------------------------ the machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> Optional[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


def slug(s: str) -> str:
    s = re.sub(r"\((r|tm|R|TM)\)", "", s)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def machine_name() -> str:
    """File stem of the results: the GPU's name where one is used, else the CPU model and core count."""
    g = gpu_name()
    if g:
        return slug(g)
    return f"{slug(cpu_model())}-{os.cpu_count()}c"


def machine_info() -> dict:
    import torch

    info = {
        "name": machine_name(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "memory_gb": _mem_gb(),
    }
    try:
        flags = open("/proc/cpuinfo").read()
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if re.search(rf"\b{f}\b", flags)]
    except OSError:
        pass
    return info


def _mem_gb():
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return round(kb / 2**20, 1)
    except Exception:
        return None


def versions() -> dict:
    v = {"python": sys.version.split()[0]}
    for mod in ("torch", "numpy", "sklearn", "triton", "torchnmf", "pytest_benchmark", "blockadmm"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "?")
        except Exception as e:
            v[mod] = None if isinstance(e, ImportError) else f"error: {type(e).__name__}"
    try:
        import torch

        v["blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
    except Exception:
        pass
    try:
        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        if v["git"] and dirty:
            v["git"] += "+dirty"
    except Exception:
        pass
    return v


def load_avg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------ compiled ref

def compiled(fn):
    """torch.compile of a reference, or (None, reason) where inductor cannot build here."""
    import torch

    try:
        return torch.compile(fn, dynamic=False), None
    except Exception as e:  # pragma: no cover - depends on the toolchain
        return None, f"{type(e).__name__}: {e}"
