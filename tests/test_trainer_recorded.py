"""The trainer against values recorded from the pre-engine trainer (commit e311ec8): 30 steps with SGD inside
blocks on an 8-layer tanh MLP (one layer per block), the 3-block MLP 784-256-256-10 and a 3-block CNN, online and
batch, on generated data. Regenerate (only when the semantics change on purpose): python tests/test_trainer_recorded.py
"""
import json
import os

import pytest
import torch

from blockadmm.models import mlp_blocks, small_cnn
from blockadmm.trainer import BlockADMM

RECORDED = os.path.join(os.path.dirname(__file__), "data", "trainer_recorded.json")
STEPS, BATCH, SAMPLES = 30, 50, 200
RECORDED_STEPS = (0, 9, 29)  # the StepStats stored

CASES = {
    "tanh8-online": {"net": "tanh8", "mode": "online"},
    "tanh8-batch": {"net": "tanh8", "mode": "batch"},
    "tanh8-online-sign": {"net": "tanh8", "mode": "online", "aux_step": "sign"},
    "mlp3-online": {"net": "mlp3", "mode": "online"},
    "mlp3-batch": {"net": "mlp3", "mode": "batch"},
    "mlp3-online-autograd": {"net": "mlp3", "mode": "online", "fused_linear": False},
    "mlp3-batch-jacobi-adam": {"net": "mlp3", "mode": "batch", "order": "jacobi", "aux_step": "adam", "lr_z": 0.05},
    "mlp3-online-nonneg-bottom-up": {"net": "mlp3", "mode": "online", "order": "bottom-up",
                                     "constraints": {0: "nonneg"}},
    "cnn-online": {"net": "cnn", "mode": "online"},
    "cnn-batch-k2": {"net": "cnn", "mode": "batch", "k_z": 2, "k_w": 2},
}


def _data(input_shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, *input_shape, generator=gen)
    teacher = torch.randn(x[0].numel(), 10, generator=gen)
    return x, (x.flatten(1) @ teacher).argmax(1)


def run_case(net, mode, **options):
    """Train STEPS steps; return per-block weight sums and the StepStats of RECORDED_STEPS."""
    torch.manual_seed(0)
    if net == "tanh8":
        (model, cuts), input_shape = mlp_blocks(64, [32] * 7, 10, "tanh", 8), (64,)
    elif net == "mlp3":
        (model, cuts), input_shape = mlp_blocks(784, [256, 256], 10, "relu", 3), (784,)
    else:
        model, cuts, input_shape = small_cnn(1, 10, (4, 8), image_size=8), [1, 2], (1, 8, 8)
    x, y = _data(input_shape)
    trainer = BlockADMM(model, blocks=cuts, input_shape=input_shape, mode=mode, num_samples=SAMPLES,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **options)
    stats = []
    for step in range(STEPS):
        index = torch.arange(step * BATCH, (step + 1) * BATCH) % SAMPLES
        s = trainer.step(x[index], y[index], index)
        if step in RECORDED_STEPS:
            stats.append({"loss": s.head_loss, "primal": s.primal_residual, "dual": s.dual_residual})
    sums = [[float(p.detach().double().sum()), float(p.detach().double().abs().sum())] for b in trainer.blocks
            for p in b.parameters()]
    return {"weight_sums": sums, "stats": stats}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_recorded_values(name):
    with open(RECORDED) as f:
        want = json.load(f)[name]
    got = run_case(**CASES[name])
    torch.testing.assert_close(torch.tensor(got["weight_sums"], dtype=torch.float64),
                               torch.tensor(want["weight_sums"], dtype=torch.float64), rtol=1e-6, atol=1e-6)

    def flat(s):
        return torch.tensor([s["loss"], *s["primal"], *s["dual"]], dtype=torch.float64)

    for g, w in zip(got["stats"], want["stats"], strict=True):
        torch.testing.assert_close(flat(g), flat(w), rtol=1e-6, atol=1e-6)


if __name__ == "__main__":
    torch.set_num_threads(1)  # as in the test session (tests/conftest.py)
    os.makedirs(os.path.dirname(RECORDED), exist_ok=True)
    with open(RECORDED, "w") as f:
        json.dump({name: run_case(**case) for name, case in CASES.items()}, f, indent=1)
