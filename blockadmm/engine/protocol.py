"""What a block that Block-ADMM does not train by backprop provides (DeepFacto's NMF layer, binary layers).

The trainer checks these once, when it is built, with isinstance: a block that is an `ADMMBlock` gets the
hook term (no optimizer, its own local step and input gradient); one that is also an `AuxStepBlock` brings
the auxiliary step of its output boundary; an `EpochScheduledBlock` hears the epoch from fit().
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from ..prox import Prox


@runtime_checkable
class ADMMBlock(Protocol):
    def admm_local_step(self, inp: torch.Tensor, target: torch.Tensor | None, dual: torch.Tensor | None, *,
                        rho: float | None, y: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
        """The block's weight step on its own term (the last block gets target=dual=rho=None); the loss."""

    def admm_input_grad(self, z_in: torch.Tensor, z_out: torch.Tensor | None, u_out: torch.Tensor | None, *,
                        rho: float | None, y: torch.Tensor, loss_fn: Callable,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient in z_in of the block's term, summed over the batch (not averaged). out: what the block's
        forward (run under no_grad) returned at z_in with its current weights, when the trainer kept it (else None),
        so that the block need not run it again."""


@runtime_checkable
class AuxStepBlock(Protocol):
    def admm_aux_update(self, z: torch.Tensor, u: torch.Tensor, a: torch.Tensor, grad_fn: Callable, *, rho: float,
                        lr: float, prox: Prox | None = None) -> None:
        """The auxiliary step of the block's output boundary, in place on z; grad_fn(z) is the consumer's gradient."""


@runtime_checkable
class EpochScheduledBlock(Protocol):
    def admm_set_epoch(self, epoch: int) -> None:
        """Called by fit() at the start of every epoch."""
