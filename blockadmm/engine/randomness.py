"""One random state per block and mini-batch, and running statistics updated once per step.

A Block-ADMM step runs a block's forward many times on one mini-batch (the forward pass, the auxiliary steps, the
weight steps, the dual steps of every sweep). A block with dropout would draw a new mask each time, so the targets
of a sweep would chase noise; a block with batch norm would update its running statistics once per forward, several
times per step. `SameRandomness` wraps such a block for the trainer, as activation checkpointing replays the RNG
state of a recomputed forward: within one mini-batch every forward of the block runs from the same random state
(drawn from the global generator when the batch starts, so a seeded run is reproducible), and only its first
forward — the plain forward from x the step starts with — updates running statistics.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from .protocol import ADMMBlock, AuxStepBlock

# modules that draw random numbers in training mode
RANDOM_MODULES = (_DropoutNd, nn.RReLU)


class BatchDraw:
    """A block's random state for one mini-batch (a seed) and how many of its forwards ran on that batch."""

    __slots__ = ("seed", "forwards")

    def __init__(self, seed: int):
        self.seed, self.forwards = seed, 0


class SameRandomness(nn.Module):
    """`block` run from the random state of the mini-batch it is bound to (`bind`), its running statistics updated
    by the first forward of the batch only. Unbound, or with the block in eval mode, it is the block itself."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.random = any(isinstance(m, RANDOM_MODULES) for m in block.modules())
        self.norms = [m for m in block.modules() if isinstance(m, _NormBase) and m.track_running_stats]
        self.draw: BatchDraw | None = None

    def bind(self, draw: BatchDraw | None) -> None:
        self.draw = draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        draw = self.draw
        if draw is None or not self.block.training:
            return self.block(x)
        draw.forwards += 1
        frozen = self.norms if draw.forwards > 1 else []
        for m in frozen:  # batch statistics still normalize; the running ones stay as the first forward left them
            m.track_running_stats = False
        try:
            if not self.random:
                return self.block(x)
            cuda = x.device.type == "cuda"
            with torch.random.fork_rng(devices=[x.device] if cuda else [], device_type="cuda"):
                torch.default_generator.manual_seed(draw.seed)
                if cuda:
                    with torch.cuda.device(x.device):
                        torch.cuda.manual_seed(draw.seed)
                return self.block(x)
        finally:
            for m in frozen:
                m.track_running_stats = True


def needs_same_randomness(block: nn.Module) -> bool:
    """Whether the trainer must wrap `block`: it draws random numbers or keeps running statistics (blocks with their
    own ADMM rules run their forwards themselves and are left alone)."""
    if isinstance(block, (ADMMBlock, AuxStepBlock)):
        return False
    return any(isinstance(m, RANDOM_MODULES) or (isinstance(m, _NormBase) and m.track_running_stats)
               for m in block.modules())


def new_draws(wrapped) -> dict[int, BatchDraw]:
    """{k: a fresh BatchDraw} for each index k in `wrapped`, the seeds drawn from the global generator (nothing is
    drawn when no block is wrapped: the random stream of a net without such layers is left as it was)."""
    seeds = torch.randint(0, 2**62, (len(wrapped),)).tolist() if wrapped else []
    return {k: BatchDraw(s) for k, s in zip(wrapped, seeds)}
