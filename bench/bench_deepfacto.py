"""DeepFacto against backprop, per training step: seconds for `steps` steps on MNIST-5k of backprop (the feature
CNN + a linear layer, Adam) and of DeepFacto (the supervised recipe) with each NMF solver, in interleaved rounds on
the same batches; the ratio uses each one's fastest round.

    python -m bench.bench_deepfacto [--steps 40] [--rounds 3] [--out speed.json]
    pytest bench/bench_deepfacto.py -s
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from bench._common import pick, record


def speed_benchmark(*, steps: int = 40, rounds: int = 3, batch_size: int = 64, log=print) -> dict:
    """Seconds of each method's `steps` steps per round and each DeepFacto variant's ratio to backprop."""
    from blockadmm.data import load, make_loader
    from blockadmm.deepfacto import build_deepfacto, feature_cnn, init_basis
    from blockadmm.experiments.training import Backprop
    from blockadmm.trainer import BlockADMM

    train = load("mnist5k", image=True).train
    batches = [b for _, b in zip(range(steps), make_loader(train, batch_size, shuffle=True, seed=0, epoch=0))]
    torch.manual_seed(0)
    model = nn.Sequential(feature_cnn(1, normalize=False), nn.LazyLinear(10))
    model(train.X[:2])
    backprop = Backprop(model, optimizer="adam", lr=1e-3)

    def bp_steps():
        for x, y, i in batches:
            backprop.step(x, y, i)

    def df(solver):
        torch.manual_seed(0)
        blocks = build_deepfacto(
            feature_cnn(1),
            (3136,),
            10,
            normalize=False,
            head="energy",
            per_class=5,
            update_epochs=0,
            l1=0.1,
            solver=solver,
        )
        init_basis(blocks, train, contrast=2.0)
        t = BlockADMM(
            blocks,
            input_shape=(1, 28, 28),
            mode="online",
            constraints={0: "nonneg", 1: "nonneg"},
            rho=1.0,
            lr_z=0.5,
            sweeps=1,
            dual_step=0.5,
            optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        )
        return lambda: [t.step(x, y, i) for x, y, i in batches]

    runs = {
        "backprop": bp_steps,
        "deepfacto_op": df("op"),
        "deepfacto_gram": df("gram"),
    }
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    out = {
        "steps": steps,
        "rounds": rounds,
        "seconds": times,
        "ratio_to_backprop": {k: best[k] / best["backprop"] for k in runs if k != "backprop"},
    }
    log(f"[speed] {out['ratio_to_backprop']}")
    return out


def test_deepfacto_speed():
    out = speed_benchmark(steps=pick(40, 10, 2), rounds=pick(3, 2, 1))
    record("deepfacto", "speed", **out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = speed_benchmark(steps=a.steps, rounds=a.rounds)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
