"""Block-parallel Stochastic Block-ADMM across processes and devices on ``torch.distributed``.

Each rank owns a contiguous group of blocks, their optimizers, and the auxiliary/dual variables of the
boundaries those blocks produce (boundary k is block k's output), and drives the engine's primitives
(blockadmm.engine) on them, as BlockADMM does on all blocks (:mod:`.trainer`). Neighbours exchange
boundary tensors with point-to-point messages: the rank below sends z_k up, the rank above sends down
g_k, the gradient of its bottom block's term in z_k. Epoch statistics, evaluation totals and checkpoint
commits use collectives. gloo on CPU, NCCL on CUDA.

Two schedules:

* ``schedule="sync"``: one mini-batch at a time, in Jacobi order (DESIGN §1) by default — exactly what
  ``BlockADMM(order="jacobi")`` computes, with the blocks of different ranks working at the same time
  within every sweep. (``order="top-down"`` is accepted too and then equals the single-process
  Gauss-Seidel trainer, but the sweep becomes a sequential wave down the ranks.)
* ``schedule="pipeline"``: several mini-batches in flight, each in top-down Gauss-Seidel order within
  itself, so that while the rank above works on batch t the rank below works on batch t-1's weight step
  and t+1's forward. ``staleness`` s bounds how far a rank runs ahead: it starts batch t only after
  finishing its own part of batch t-1-s. ``staleness=0`` is the sequential order.

The per-rank order of work is a static schedule computed identically on every rank (:mod:`.schedule`),
so a run is deterministic — the same numbers for any timing — and a resumed run repeats the uninterrupted
one. Every wait has a deadline and a failure names the rank that died, hangs or raised (:mod:`.comm`).
Checkpoints are one shard per rank (:mod:`.shards`); step statistics reach every rank once per epoch (:mod:`.stats`).

Launch with ``torchrun --nproc-per-node N your_script.py`` (calling :func:`init_distributed`), across
nodes with ``torchrun --nnodes M --node-rank i --rdzv-endpoint host:port ...``, with
``blockadmm train --nproc N`` or :func:`launch` from Python (:mod:`.launcher`).
"""

from .comm import RankFailure
from .launcher import exit_worker, init_distributed, launch
from .schedule import Task, build_schedule, partition_blocks
from .shards import CheckpointMismatch, read_checkpoint_meta
from .trainer import DistributedBlockADMM

__all__ = [
    "CheckpointMismatch",
    "DistributedBlockADMM",
    "RankFailure",
    "Task",
    "build_schedule",
    "exit_worker",
    "init_distributed",
    "launch",
    "partition_blocks",
    "read_checkpoint_meta",
]
