"""The step statistics of a distributed run under the single-process trainer's names (`StepStats`): each rank
fills the entries it knows of each batch, one all-reduce per epoch sums them, and every rank reads the same steps.

Who knows what: the top rank the network's loss and accuracy (online mode: its input is the forward of the ranks
below; batch mode: it is the tables' z, so both are unknown, None) and the head loss; the rank owning boundary k its
penalty, residuals and rho; each rank its own time on the batch, and step_s is the largest.
"""
from __future__ import annotations

import math

import torch

SCALARS = ("loss", "acc", "head_loss")
PER_BOUNDARY = ("penalty", "primal", "dual", "rho")
NAMES = {"primal": "primal_residual", "dual": "dual_residual"}  # StepStats' names of the per-batch dicts' keys


def network_metrics(trainer, state) -> list[torch.Tensor] | None:
    """On the top rank, online: the network's loss (+ accuracy) as in BlockADMM.step. Batch mode: None (the top
    rank's input is the tables' z, not the forward)."""
    return None if trainer.tables is not None else trainer.engine.network_metrics(state)


def width(n_boundaries: int, world: int) -> int:
    return len(SCALARS) + len(PER_BOUNDARY) * n_boundaries + world


def pack(rows: list[dict], n_boundaries: int, world: int, rank: int) -> torch.Tensor:
    """This rank's entries of each batch ((batches, width) float64, zero where another rank knows the value;
    NaN where the value is unknown to all)."""
    table = torch.zeros(len(rows), width(n_boundaries, world), dtype=torch.float64)
    for i, s in enumerate(rows):
        for j, name in enumerate(SCALARS):
            if name in s:  # only the top rank's rows have them
                table[i, j] = math.nan if s[name] is None else s[name]
        for j, name in enumerate(PER_BOUNDARY):
            for k, v in s[name].items():
                table[i, len(SCALARS) + j * n_boundaries + k] = v
        table[i, len(SCALARS) + len(PER_BOUNDARY) * n_boundaries + rank] = s["step_s"]
    return table


def unpack(table: torch.Tensor, n_boundaries: int) -> list[dict]:
    """The summed table as one StepStats-named dict per batch."""
    out = []
    for row in table.tolist():
        s = {name: None if math.isnan(v) else v for name, v in zip(SCALARS, row)}
        for j, name in enumerate(PER_BOUNDARY):
            start = len(SCALARS) + j * n_boundaries
            s[NAMES.get(name, name)] = row[start:start + n_boundaries]
        s["step_s"] = max(row[len(SCALARS) + len(PER_BOUNDARY) * n_boundaries:])
        out.append(s)
    return out
