"""The machine's limits, measured in the same run as the suites that are reported against them.

    copy   dst.copy_(src) on a large float32 buffer: bytes read + written per second (memory-bound ops)
    mm     torch.mm of two large square float32 matrices: FLOP/s (GEMM-bound ops); also bf16 for reference

`python -m bench` runs this suite first and again last, and reports against the best of the two, so a
disturbed measurement of the limit cannot flatter the ops.
"""
from __future__ import annotations

import os

import torch

from bench._common import pick, record, timed

PHASE = os.environ.get("BENCH_PHASE", "start")
COPY_ELEMS = pick(8 * 2**20, 8 * 2**20, 2**16)
MM_N = pick(2048, 1536, 64)
ROUNDS = pick(30, 15, 1)


def test_copy_bandwidth(benchmark):
    src = torch.randn(COPY_ELEMS)
    dst = torch.empty_like(src)
    t = timed(benchmark, lambda: dst.copy_(src), rounds=ROUNDS, warmup=2)
    nbytes = 2 * COPY_ELEMS * 4
    record("limits", "copy", phase=PHASE, elems=COPY_ELEMS, bytes=nbytes, **t,
           GBps=None if t["s"] is None else nbytes / t["s"] / 1e9)


def test_mm_flops(benchmark):
    a, b = torch.randn(MM_N, MM_N), torch.randn(MM_N, MM_N)
    c = torch.empty(MM_N, MM_N)
    t = timed(benchmark, lambda: torch.mm(a, b, out=c), rounds=max(1, ROUNDS // 2), warmup=2)
    flops = 2 * MM_N**3
    record("limits", "mm", phase=PHASE, n=MM_N, flops=flops, **t,
           GFLOPs=None if t["s"] is None else flops / t["s"] / 1e9)


def test_mm_bf16_flops(benchmark):
    a, b = torch.randn(MM_N, MM_N).bfloat16(), torch.randn(MM_N, MM_N).bfloat16()
    t = timed(benchmark, lambda: torch.mm(a, b), rounds=max(1, ROUNDS // 2), warmup=2)
    flops = 2 * MM_N**3
    record("limits", "mm bf16", phase=PHASE, n=MM_N, flops=flops, **t,
           GFLOPs=None if t["s"] is None else flops / t["s"] / 1e9)
