"""The per-mini-batch state of a Block-ADMM step."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .terms import Kept


@dataclass
class BatchState:
    """Everything one step() keeps between its primitives, indexed by block (kept) and by boundary (the rest).

    z, u: the auxiliary variables and scaled duals; entries a trainer does not hold stay None (a rank holds
    its own boundaries and the one below them, z[lo-1], as its input). z_src, u_src: what neighbours read in
    this sweep (copies under Jacobi, z and u themselves otherwise). kept: each block's forward while its
    input and weights stay. z_start: z at the start of the step (dual residual). memory: the auxiliary rules'
    per-batch state. primal_sq: |z_k - f_k(z_{k-1})|^2 as last measured. losses: the last block's term per sweep.
    forward_in: the last block's input along the plain forward from x, before any update (its F(x) is the
    network's output on the batch), set by init_online / init_batch when the range holds the last block.
    """

    x: torch.Tensor | None
    y: torch.Tensor
    index: torch.Tensor | None
    z: list[torch.Tensor | None]
    u: list[torch.Tensor | None]
    kept: list[Kept | None]
    z_start: list[torch.Tensor | None]
    step: int = 0
    epoch: int = 0
    sweep: int = 0
    z_src: list[torch.Tensor | None] = field(default_factory=list)
    u_src: list[torch.Tensor | None] = field(default_factory=list)
    memory: dict[int, object] = field(default_factory=dict)
    primal_sq: dict[int, torch.Tensor] = field(default_factory=dict)
    losses: list[torch.Tensor] = field(default_factory=list)
    forward_in: torch.Tensor | None = None
    draws: dict[int, object] = field(default_factory=dict)  # block k -> its random state for this batch (randomness)

    @classmethod
    def empty(cls, n_blocks: int, x, y, index=None, *, step: int = 0, epoch: int = 0) -> BatchState:
        nb = n_blocks - 1
        return cls(x=x, y=y, index=index, z=[None] * nb, u=[None] * nb, kept=[None] * n_blocks,
                   z_start=[None] * nb, step=step, epoch=epoch, z_src=[None] * nb, u_src=[None] * nb)

    def input(self, k: int) -> torch.Tensor:
        """Block k's input as its neighbours see it in this sweep."""
        return self.x if k == 0 else self.z_src[k - 1]
