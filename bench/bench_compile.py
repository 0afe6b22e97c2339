"""BlockADMM(compile=True) against the eager blocks: steady-state step time of a small CNN, interleaved.

    pytest bench/bench_compile.py -s        (or: python bench/bench_compile.py [results.json])

The CNN of the end-to-end bench's CNN row (conv 16 - conv 32 - linear, 3 blocks, MNIST-sized 28x28 inputs,
batch 100, the library defaults), on random data: both trainers start from the same weights, the compiled one is
warmed up first (its graphs: every grad mode, a smaller last batch, evaluation), then both run rounds of steps in
alternation so that the machine's drift reaches them alike. Recorded: the median step time of each, their ratio,
the warm-up (compile) time, and the number of graphs before and after the timed rounds (equal: no step
recompiled).
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from bench._common import pick, record

ROUNDS = pick(7, 3, 1)
STEPS = pick(10, 4, 1)
BATCH = 100


def cnn_blocks():
    torch.manual_seed(0)
    return [nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 10))]


def measure(backend: str = "inductor") -> dict:
    from torch._dynamo.utils import counters

    from blockadmm.trainer import BlockADMM

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH * STEPS, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH * STEPS,), generator=g)
    eager = BlockADMM(cnn_blocks(), input_shape=(1, 28, 28))
    compiled = BlockADMM(cnn_blocks(), input_shape=(1, 28, 28), compile={"backend": backend})

    def run(trainer, n=STEPS):
        t0 = time.perf_counter()
        for i in range(n):
            trainer.step(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
        return (time.perf_counter() - t0) / n

    t0 = time.perf_counter()
    run(compiled, min(STEPS, 2))
    compiled.step(x[:BATCH // 3], y[:BATCH // 3])  # a smaller last batch
    warmup_s = time.perf_counter() - t0
    run(eager, 1)
    graphs = counters["stats"]["unique_graphs"]
    eager_s, compiled_s = [], []
    for _ in range(ROUNDS):
        eager_s.append(run(eager))
        compiled_s.append(run(compiled))
    e, c = statistics.median(eager_s), statistics.median(compiled_s)
    return {"backend": backend, "eager_step_s": e, "compiled_step_s": c, "ratio_compiled_to_eager": c / e,
            "warmup_s": warmup_s, "graphs_after_warmup": graphs,
            "graphs_after_timing": counters["stats"]["unique_graphs"], "threads": torch.get_num_threads(),
            "rounds": ROUNDS, "steps_per_round": STEPS}


def test_compile_step_time():
    result = measure()
    record("compile", "cnn-3-blocks", **result)
    print(result)
    assert result["graphs_after_timing"] == result["graphs_after_warmup"]


if __name__ == "__main__":
    import json
    import os
    import sys

    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    result = {"command": "python bench/bench_compile.py", **measure(), "torch": torch.__version__,
              "cores": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=1)
