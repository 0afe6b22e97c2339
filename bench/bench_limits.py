"""The machine's limits, measured in the same run as the suites that are reported against them.

    copy   dst.copy_(src) of 24M float32 elements: bytes read + written per second (memory-bound ops)
    mm     torch.mm of two large square float32 matrices: FLOP/s (GEMM-bound ops); also bf16 for reference

`python -m bench` runs this suite first and again last, and reports against the best of the two, so a
disturbed measurement of the limit cannot flatter the ops.
"""
from __future__ import annotations

import os

import pytest
import torch

from bench._common import pick, record, timed

PHASE = os.environ.get("BENCH_PHASE", "start")
# The reference copy moves as many bytes (192 MB: 96 MB read, 96 MB written) as the aux/dual update on
# 8M elements does (z, u, a, g read, z, u written: 6 x 32 MB), so both stream from memory even where
# the last-level cache would hold a smaller copy (this VM reports a 480 MB L3). The 8M-element copy
# (64 MB moved) is recorded too, for comparison with bench_ops_cpu.py.
COPY_ELEMS = pick(24 * 2**20, 24 * 2**20, 2**16)
COPY_8M = pick(8 * 2**20, 8 * 2**20, 2**12)
MM_N = pick(2048, 1536, 64)
ROUNDS = pick(30, 15, 1)


@pytest.mark.parametrize("name,elems", [("copy", COPY_ELEMS), ("copy 8M", COPY_8M)])
def test_copy_bandwidth(benchmark, name, elems):
    src = torch.randn(elems)
    dst = torch.empty_like(src)
    t = timed(benchmark, lambda: dst.copy_(src), rounds=ROUNDS, warmup=2)
    nbytes = 2 * elems * 4
    record("limits", name, phase=PHASE, elems=elems, bytes=nbytes, **t,
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



GPU = torch.cuda.is_available()


@pytest.mark.skipif(not GPU, reason="no GPU")
def test_cuda_copy_bandwidth(benchmark):
    """On a GPU machine, the same limits on the GPU: the GPU rows are reported against these."""
    n = pick(64 * 2**20, 32 * 2**20, 2**16)
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        torch.cuda.synchronize()

    t = timed(benchmark, copy, rounds=ROUNDS, warmup=3)
    record("limits", "copy cuda", phase=PHASE, elems=n, bytes=2 * n * 4, **t,
           GBps=None if t["s"] is None else 2 * n * 4 / t["s"] / 1e9)


@pytest.mark.skipif(not GPU, reason="no GPU")
def test_cuda_mm_flops(benchmark):
    m = pick(8192, 4096, 64)
    a, b = torch.randn(m, m, device="cuda"), torch.randn(m, m, device="cuda")

    def mm():
        torch.mm(a, b)
        torch.cuda.synchronize()

    t = timed(benchmark, mm, rounds=max(1, ROUNDS // 2), warmup=3)
    record("limits", "mm cuda", phase=PHASE, n=m, flops=2 * m**3, **t,
           GFLOPs=None if t["s"] is None else 2 * m**3 / t["s"] / 1e9)
