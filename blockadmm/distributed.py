"""Block-parallel Stochastic Block-ADMM across processes and devices on ``torch.distributed``.

Each rank owns a contiguous group of blocks, their optimizers, and the auxiliary/dual variables of the
boundaries those blocks produce (boundary k is block k's output). Neighbours exchange boundary tensors with
point-to-point messages: the rank below sends z_k up, the rank above sends down g_k, the gradient of its
bottom block's term in z_k. Epoch statistics, evaluation totals, checkpoint commits and stopping decisions
use collectives. gloo on CPU, NCCL on CUDA.

Two schedules:

* ``schedule="sync"``: one mini-batch at a time, in Jacobi order (DESIGN §1) by default — exactly what
  ``BlockADMM(order="jacobi")`` computes, with the blocks of different ranks working at the same time
  within every sweep. (``order="top-down"`` is accepted too and then equals the single-process
  Gauss-Seidel trainer, but the sweep becomes a sequential wave down the ranks.)
* ``schedule="pipeline"``: several mini-batches in flight, each in top-down Gauss-Seidel order within
  itself (a gradient wave down the ranks, the new z up), so that while the rank above works on batch t
  the rank below works on batch t-1's weight step and t+1's forward. ``staleness`` s bounds how far a
  rank runs ahead: it starts batch t only after finishing its own part of batch t-1-s, so the weights a
  batch meets miss the updates of at most s earlier batches. ``staleness=0`` is the sequential order.

The per-rank order of work is a static schedule computed identically on every rank (a list schedule of
the task graph with a cost model from the block sizes), so a run is deterministic — the same numbers for
any timing — and a run resumed from a checkpoint repeats the uninterrupted one. The pipeline drains at
every epoch end and at every ``checkpoint_every`` steps.

Faults: every wait has a deadline (``timeout``); a rank whose wait fails publishes what it was waiting
for in the rendezvous store and names the rank at the end of the chain of waits — the one that died or
hangs — in a :class:`RankFailure`, within ``timeout`` plus a short grace period. A rank that raises
(non-finite values, bad input) publishes its error first, so the others report it by rank.

Launch with ``torchrun --nproc-per-node N your_script.py`` (calling :func:`init_distributed`), across
nodes with ``torchrun --nnodes M --node-rank i --rdzv-endpoint host:port ...``, with
``blockadmm train --nproc N`` or :func:`launch` from Python.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from . import ops
from .blocks import min_max_partition
from .tables import TableMismatch, VariableTables
from .trainer import ADMMConfig, BlockADMM, NonFiniteError, adam, default_optimizer

__all__ = [
    "DistributedBlockADMM", "RankFailure", "CheckpointMismatch", "init_distributed", "launch", "launch_train",
    "partition_blocks", "build_schedule", "read_checkpoint_meta",
]

FAULT_ENV = "BLOCKADMM_FAULT"  # tests: "rank=R,step=S[,how=exit|hang]" makes rank R die/hang at global step S


class RankFailure(RuntimeError):
    """Another rank died, hung or raised; `.rank` is the culprit (None when it could not be told)."""

    def __init__(self, msg: str, rank: Optional[int] = None):
        super().__init__(msg)
        self.rank = rank


class CheckpointMismatch(ValueError):
    """A distributed checkpoint that this run cannot resume (world size, partition, missing shard)."""


# ---------------------------------------------------------------------------------------------- setup
def init_distributed(backend: Optional[str] = None, *, init_method: Optional[str] = None, rank: Optional[int] = None,
                     world_size: Optional[int] = None, timeout: float = 300.0) -> Tuple[int, int, torch.device]:
    """Join the process group (torchrun's env:// by default); returns (rank, world_size, device).

    backend: "nccl" when CUDA is available, else "gloo". Under NCCL each process uses
    cuda:LOCAL_RANK (or rank % device_count).
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        kw = {}
        if rank is not None:
            kw.update(rank=rank, world_size=world_size)
        dist.init_process_group(backend, init_method=init_method or "env://", timeout=datetime.timedelta(seconds=timeout), **kw)
    r, w = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        local = int(os.environ.get("LOCAL_RANK", r % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return r, w, device


def _param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters()) or 1


def step_costs(blocks: Sequence[nn.Module], fused: Sequence) -> List[Dict[str, float]]:
    """Relative work of each block per sweep, in units of one forward through it: its weight step ("w"),
    its dual step's forward ("d") and the gradient for its input ("g"). A fused linear block takes its
    first weight step on block 0 (whose input never moves) and the gradient for its input from the kept
    forward, so each is one GEMM fewer; the last block's input gradient is that of the task loss."""
    B = len(blocks)
    out = []
    for k, b in enumerate(blocks):
        p = float(_param_count(b))
        kept = fused[k] is not None and k < B - 1
        out.append({"w": p * (1 if kept and k == 0 else 2), "d": p if k < B - 1 else 0.0,
                    "g": 0.0 if k == 0 else p * (1 if kept else 2)})
    return out


def partition_blocks(costs: Sequence[float], world: int) -> List[Tuple[int, int]]:
    """Contiguous groups [lo, hi) of blocks, one per rank, minimising the largest group cost."""
    n = len(costs)
    if not 1 <= world <= n:
        raise ValueError(f"{n} blocks cannot be shared by {world} ranks: every rank needs at least one block "
                         f"(use at most {n} processes, or cut the model into more blocks)")
    return min_max_partition(costs, world)


# ---------------------------------------------------------------------------------------------- schedule
def _batch_tasks(order: str, sweeps: int) -> List[Tuple[str, int]]:
    if order == "jacobi":
        return [("F", 0)] + [(kind, s) for s in range(1, sweeps + 1) for kind in ("G", "A")]
    return [("F", 0)] + [(kind, s) for s in range(1, sweeps + 1) for kind in ("D", "U")]


def _cross_deps(kind: str, s: int, r: int, R: int, sweeps: int) -> List[Tuple[int, str, int]]:
    """(rank, kind, sweep) of the same batch whose message this task needs."""
    if kind == "F":
        return [(r - 1, "F", 0)] if r > 0 else []
    if kind == "D":  # the gradient from above
        return [(r + 1, "D", s)] if r < R - 1 else []
    if kind == "U":  # the new z from below
        return [(r - 1, "D", s)] if r > 0 else []
    if kind == "G":  # the sweep-start z from below
        return [(r - 1, "A", s - 1)] if r > 0 and s > 1 else []
    if kind == "A":  # the sweep-start gradient from above
        return [(r + 1, "G", s)] if r < R - 1 else []
    raise ValueError(kind)


def _sends(kind: str, s: int, r: int, R: int, sweeps: int) -> List[str]:
    """Directions ('up', 'down') in which a task sends one message, in send order."""
    out = []
    if kind == "F" and r < R - 1:
        out.append("up")
    elif kind == "D":
        if r < R - 1:
            out.append("up")
        if r > 0:
            out.append("down")
    elif kind == "G" and r > 0:
        out.append("down")
    elif kind == "A" and r < R - 1 and s < sweeps:
        out.append("up")
    return out


def build_schedule(n_batches: int, world: int, *, order: str, sweeps: int, staleness: int,
                   task_cost: Callable[[int, str, int], float]) -> List[List[Tuple[int, str, int]]]:
    """Per rank, the list of tasks (batch, kind, sweep) in execution order.

    A list schedule of the task graph: each rank runs, among its ready tasks, the one that can start first
    by the cost model (ties: older batch). Rank r admits batch t only after finishing its own part of
    batch t-1-staleness. Every rank's list follows one global topological order, so executing the lists with
    blocking receives cannot deadlock, whatever the real costs.
    """
    R, P = world, staleness + 1
    seq = _batch_tasks(order, sweeps)
    nxt = [[0] * n_batches for _ in range(R)]
    finish: Dict[Tuple[int, int, str, int], float] = {}
    free = [0.0] * R
    low = [0] * R  # oldest batch not finished on rank r
    out: List[List[Tuple[int, str, int]]] = [[] for _ in range(R)]
    remaining = n_batches * len(seq) * R
    while remaining:
        best = None
        for r in range(R):
            for t in range(low[r], min(n_batches, low[r] + P)):
                i = nxt[r][t]
                if i == len(seq):
                    continue
                kind, s = seq[i]
                deps = [(r, t) + seq[i - 1]] if i > 0 else []
                if i == 0 and t > 0:
                    deps.append((r, t - 1, "F", 0))  # forwards in batch order on each rank
                deps += [(q, t, k2, s2) for q, k2, s2 in _cross_deps(kind, s, r, R, sweeps)]
                if any(d not in finish for d in deps):
                    continue
                start = max([free[r]] + [finish[d] for d in deps])
                key = (start, t, r)
                if best is None or key < best[0]:
                    best = (key, r, t, kind, s)
        if best is None:  # cannot happen for a well-formed graph
            raise RuntimeError("pipeline schedule deadlocked; this is a bug")
        (start, _, _), r, t, kind, s = best
        end = start + max(task_cost(r, kind, s), 1e-9)
        finish[(r, t, kind, s)] = end
        free[r] = end
        nxt[r][t] += 1
        out[r].append((t, kind, s))
        remaining -= 1
        while low[r] < n_batches and nxt[r][low[r]] == len(seq):
            low[r] += 1
    return out


def _messages(tasks: List[Tuple[int, str, int]], r: int, R: int, sweeps: int, direction: str) -> List[Tuple[int, str, int]]:
    """Message keys (batch, kind, sweep of the sending task) that rank r sends in `direction`, in order."""
    return [(t, kind, s) for t, kind, s in tasks if direction in _sends(kind, s, r, R, sweeps)]


# ---------------------------------------------------------------------------------------------- comm
class _Inbox:
    """Receives one neighbour's messages in the order it sends them (irecvs posted ahead, matched by key)."""

    def __init__(self, owner, peer, group, keys, shape_of, window=2):
        self.owner, self.peer, self.group = owner, peer, group
        self.keys, self.shape_of, self.window = keys, shape_of, window
        self.pos, self.posted = 0, {}

    def _post(self):
        key = self.keys[self.pos]
        buf = torch.empty(self.shape_of(key), dtype=torch.float32, device=self.owner.device)
        self.posted[key] = (buf, dist.irecv(buf, src=self.peer, group=self.group))
        self.pos += 1

    def get(self, key, what):
        while key not in self.posted:
            if self.pos >= len(self.keys):
                raise RuntimeError(f"message {key} from rank {self.peer} is not in the schedule; this is a bug")
            self._post()
        buf, work = self.posted.pop(key)
        self.owner._wait(work, self.peer, what)
        while len(self.posted) < self.window and self.pos < len(self.keys):
            self._post()
        return buf


def _parse_fault(rank: int):
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    kv = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    if int(kv.get("rank", -1)) != rank:
        return None
    return int(kv["step"]), kv.get("how", "exit")


# ---------------------------------------------------------------------------------------------- trainer
class DistributedBlockADMM:
    """Block-ADMM with the blocks spread over the ranks of a process group (see the module docstring).

    Call on every rank after :func:`init_distributed`, with the same arguments as :class:`BlockADMM`
    (every rank builds the whole model from the same seed and keeps only its blocks), plus:

    schedule: "sync" (one mini-batch at a time, Jacobi order unless `order=` says otherwise) or
    "pipeline" (several mini-batches in flight, top-down order within each). staleness: pipeline only,
    how many earlier batches' updates a rank may not have applied yet (default world_size - 1).
    partition: [(lo, hi), ...] block groups per rank (default: balanced by a cost model).
    timeout: seconds any wait on another rank may take before the run stops with a RankFailure.
    """

    def __init__(self, model, *, input_shape, blocks=None, mode: str = "online", num_samples: Optional[int] = None,
                 optimizer: Callable = default_optimizer, loss: Optional[Callable] = None, constraints=None,
                 config: Optional[ADMMConfig] = None, schedule: str = "sync", staleness: Optional[int] = None,
                 partition: Optional[Sequence[Tuple[int, int]]] = None, timeout: float = 60.0,
                 table_storage: str = "device", table_dir: Optional[str] = None, backend: str = "auto",
                 fused_linear: bool = True, device=None, seed: int = 0, **config_overrides):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call blockadmm.distributed.init_distributed() "
                               "(under torchrun) or start the processes with blockadmm.distributed.launch()")
        if schedule not in ("sync", "pipeline"):
            raise ValueError(f"schedule must be 'sync' or 'pipeline', got {schedule!r}")
        if mode not in ("online", "batch"):
            raise ValueError(f"mode must be 'online' or 'batch', got {mode!r}")
        order_given = "order" in config_overrides or config is not None
        if not order_given:
            config_overrides["order"] = "jacobi" if schedule == "sync" else "top-down"
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.comm_backend = dist.get_backend()
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if self.comm_backend == "nccl" else torch.device("cpu")
        # the whole model, built the same way on every rank; this rank keeps its blocks only
        self._t = BlockADMM(model, input_shape=input_shape, blocks=blocks, mode="online", optimizer=optimizer,
                            loss=loss, constraints=constraints, config=config, backend=backend,
                            fused_linear=fused_linear, device=device, seed=seed, **config_overrides)
        t = self._t
        self.config, self.device, self.seed, self.mode = t.config, t.device, seed, mode
        if self.config.order == "bottom-up":
            raise ValueError("the distributed trainer runs order='jacobi' or 'top-down' (bottom-up is not offered)")
        if schedule == "pipeline" and self.config.order == "jacobi" and staleness is None:
            staleness = self.world - 1
        self.schedule = schedule
        self.staleness = 0 if schedule == "sync" else (self.world - 1 if staleness is None else int(staleness))
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        self.B = t.n_blocks
        costs = step_costs(t.blocks, t._fused)
        self.partition = [tuple(p) for p in (partition or partition_blocks([sum(c.values()) for c in costs], self.world))]
        self._check_partition()
        self.lo, self.hi = self.partition[self.rank]
        for k in range(self.B):  # drop the blocks other ranks own
            if not self.lo <= k < self.hi:
                t.blocks[k] = nn.Identity()
                t.engine.optimizers[k] = None
        self.owned = [k for k in range(self.lo, self.hi) if k < self.B - 1]  # boundaries this rank owns
        self.shapes = t.shapes
        self.tables = None
        if mode == "batch":
            if num_samples is None:
                raise ValueError("batch mode keeps variables per training sample: pass num_samples=len(train_dataset)")
            tdir = None if table_dir is None else os.path.join(table_dir, f"rank{self.rank}")
            # this rank's boundaries only (plus the seen flags): nothing is gathered to one rank
            self.tables = VariableTables(num_samples, [self.shapes[k] for k in self.owned], storage=table_storage,
                                         device=self.device, path=tdir)
        self.timeout = float(timeout)
        self.grace = min(3.0, max(0.5, self.timeout / 4))  # for the ranks of a chain of waits to publish
        # one group per direction: each (pair, group) carries messages one way only (NCCL needs this)
        self._up = dist.new_group(list(range(self.world)), timeout=datetime.timedelta(seconds=self.timeout))
        self._down = dist.new_group(list(range(self.world)), timeout=datetime.timedelta(seconds=self.timeout))
        self._store = _default_store()
        # task costs for the list schedule, from this model (identical on every rank)
        self._task_costs = self._make_task_costs(costs)
        self.step_count = 0
        self.epoch = 0
        self.epoch_step = 0  # batches of the current epoch done
        self.history: List[dict] = []
        self._pending: List[Tuple[object, torch.Tensor, int]] = []
        self._wait_s = 0.0  # time blocked on other ranks (reported per epoch)
        self._fault = _parse_fault(self.rank)

    # ------------------------------------------------------------------ helpers
    def _check_partition(self):
        parts = self.partition
        ok = len(parts) == self.world and parts[0][0] == 0 and parts[-1][1] == self.B and all(
            lo < hi for lo, hi in parts) and all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
        if not ok:
            raise ValueError(f"partition {parts} must give each of the {self.world} ranks a non-empty contiguous "
                             f"group of the {self.B} blocks, in order")

    def _make_task_costs(self, costs):
        B, parts = self.B, self.partition

        def cost(r, kind, s):
            lo, hi = parts[r]
            bnd = [k for k in range(lo, hi) if k < B - 1]
            fwd = sum(costs[k]["d"] for k in bnd)  # a forward through each block with an output boundary
            dual = 0.0 if self._skips_dual(s) else fwd
            g_internal = sum(costs[k + 1]["g"] for k in bnd if k + 1 < hi)
            g_down = costs[lo]["g"] if r > 0 else 0.0
            if kind == "F":
                return fwd + 1.0
            if kind in ("D", "A"):
                extra = sum(costs[k]["w"] for k in range(lo, hi)) + dual if kind == "A" else 0.0
                return g_internal + (g_down if kind == "D" else 0.0) + extra + 1.0
            if kind == "U":
                return sum(costs[k]["w"] for k in range(lo, hi)) + dual + 1.0
            if kind == "G":
                return g_down + 1.0
            raise ValueError(kind)

        return cost

    @property
    def blocks(self):
        return self._t.blocks

    @property
    def rho(self):
        return self._t.rho

    def owned_blocks(self) -> Dict[int, nn.Module]:
        return {k: self._t.blocks[k] for k in range(self.lo, self.hi)}

    # ------------------------------------------------------------------ waits and faults
    def _isend(self, tensor, peer, group):
        work = dist.isend(tensor, dst=peer, group=group)
        self._pending.append((work, tensor, peer))
        if len(self._pending) > 8:
            w, _, q = self._pending.pop(0)
            self._wait(w, q, "a message to be taken")

    def _flush_sends(self):
        while self._pending:
            w, _, q = self._pending.pop(0)
            self._wait(w, q, "a message to be taken")

    def _wait(self, work, peer, what):
        t0 = time.perf_counter()
        try:
            if self.comm_backend == "nccl":
                deadline = time.monotonic() + self.timeout
                while not work.is_completed():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no completion within {self.timeout:.0f} s")
                    time.sleep(0.0001)
                work.wait()
            else:
                work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except Exception as e:  # noqa: BLE001 - every communication failure becomes a RankFailure
            self._raise_failure(peer, what, e)
        self._wait_s += time.perf_counter() - t0

    def _store_set(self, key, value):
        try:
            self._store.set(key, json.dumps(value))
        except Exception:  # noqa: BLE001 - the store itself may be gone with the rank that hosted it
            pass

    def _store_get(self, key):
        try:
            if self._store.check([key]):
                return json.loads(self._store.get(key))
        except Exception:  # noqa: BLE001
            pass
        return None

    def _raise_failure(self, peer, what, exc):
        """Publish what this rank waited for; name the rank at the end of the chain of waits."""
        me = self.rank
        self._store_set(f"blockadmm/blocked/{me}", {"peer": peer, "what": what, "step": self.step_count})
        deadline = time.monotonic() + self.grace
        while True:
            culprit, reason = self._diagnose(peer)
            if reason is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if culprit is None:
            msg = f"rank {me}: a collective failed ({what}) and no rank could be named: {exc}"
        elif reason is not None:
            msg = f"rank {culprit} failed: {reason} (rank {me} stopped while waiting for {what})"
        else:
            how = "got no answer within" if "imed out" in str(exc) or isinstance(exc, TimeoutError) else "lost the connection before"
            msg = (f"rank {culprit} died or hangs: rank {me} waited for {what} from rank {peer} at step {self.step_count} "
                   f"and {how} the {self.timeout:.0f} s timeout ({type(exc).__name__}: {str(exc)[:200]})")
        raise RankFailure(msg, culprit) from exc

    def _diagnose(self, peer):
        """(culprit, reason or None): follow the published waits from `peer` to a rank that is not waiting."""
        if peer is None:  # a collective: the ranks that are neither blocked nor failed
            silent = []
            for q in range(self.world):
                f = self._store_get(f"blockadmm/fault/{q}")
                if f is not None:
                    return q, f["error"]
                if q != self.rank and self._store_get(f"blockadmm/blocked/{q}") is None:
                    silent.append(q)
            return (silent[0] if silent else None), None
        q, seen = peer, set()
        while q not in seen:
            seen.add(q)
            f = self._store_get(f"blockadmm/fault/{q}")
            if f is not None:
                return q, f["error"]
            b = self._store_get(f"blockadmm/blocked/{q}")
            if b is None or b["peer"] is None:
                return q, None
            q = b["peer"]
        return q, None

    def _publish_error(self, e: BaseException):
        self._store_set(f"blockadmm/fault/{self.rank}", {"error": f"{type(e).__name__}: {e}"[:2000], "step": self.step_count})

    def _maybe_fault(self, step):
        if self._fault is not None and step == self._fault[0]:
            if self._fault[1] == "hang":
                while True:
                    time.sleep(3600)
            os._exit(17)

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, t: torch.Tensor, what: str) -> torch.Tensor:
        t = t.to(self.device)
        work = dist.all_reduce(t, async_op=True)
        self._wait(work, None, what)
        return t.cpu()

    # ------------------------------------------------------------------ one segment of batches
    def _shape_up(self, key, m):
        t, kind, s = key
        shape = self.shapes[self.lo - 1]
        rows = 2 * m if (kind == "F" and self.mode == "batch") else m
        return (rows, *shape)

    def run_batches(self, batches: Sequence, first_step: int) -> List[dict]:
        """Train on `batches` ([x, y, index] each, the same list on every rank) with the configured schedule;
        drains the pipeline before returning. Returns this rank's per-batch statistics."""
        cfg, R, r = self.config, self.world, self.rank
        n = len(batches)
        if n == 0:
            return []
        plans = build_schedule(n, R, order=cfg.order, sweeps=cfg.sweeps, staleness=self.staleness, task_cost=self._task_costs)
        sizes = [int(b[0].shape[0]) for b in batches]
        below = above = None
        if r > 0:
            keys = _messages(plans[r - 1], r - 1, R, cfg.sweeps, "up")
            below = _Inbox(self, r - 1, self._up, keys, lambda key: self._shape_up(key, sizes[key[0]]))
        if r < R - 1:
            keys = _messages(plans[r + 1], r + 1, R, cfg.sweeps, "down")
            shape = self.shapes[self.hi - 1]
            above = _Inbox(self, r + 1, self._down, keys, lambda key: (sizes[key[0]], *shape))
        self._below, self._above = below, above
        states: Dict[int, dict] = {}
        self._states = states  # batches in flight: a penalty change rescales their duals too
        stats: List[Optional[dict]] = [None] * n
        try:
            for t, kind, s in plans[r]:
                if kind == "F":
                    self._maybe_fault(first_step + t)
                    states[t] = self._task_forward(t, batches[t])
                else:
                    st = states[t]
                    getattr(self, "_task_" + kind)(st, s)
                    if s == cfg.sweeps and kind in ("U", "A"):
                        stats[t] = self._finish_batch(states.pop(t))
            self._flush_sends()
        except RankFailure:
            raise
        except Exception as e:
            self._publish_error(e)
            raise
        return stats

    # ------------------------------------------------------------------ tasks
    def _inputs(self, st, k, src=False):
        if k == 0:
            return st["x"]
        if k == self.lo:
            return st["z_below"]
        return (st["z_src"] if src else st["z"])[k - 1]

    def _task_forward(self, t, batch):
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        index = batch[2] if len(batch) > 2 else None
        tr = self._t
        tr._check_batch(x, y, None)  # shapes and labels, on every rank (the last one computes the loss)
        if self.mode == "batch":
            if index is None:
                raise ValueError("batch mode needs the sample index of every row: use a dataset that yields (x, y, index)")
            index = torch.as_tensor(index, dtype=torch.long)
            nrows = self.tables.num_samples
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= nrows):
                raise IndexError(f"sample index {int(index.min())}..{int(index.max())} outside the tables' 0..{nrows - 1}")
        for k in range(self.lo, self.hi):
            tr.blocks[k].train()
        m = x.shape[0]
        st = {"t": t, "x": x if self.lo == 0 else None, "y": y, "index": index, "m": m, "z": {}, "u": {}, "a": {},
              "losses": [], "adam": {}}
        if self.rank > 0:
            msg = self._below.get((t, "F", 0), "the forward activations")
            if self.mode == "batch":
                h, st["z_below"] = msg[:m], msg[m:]
            else:
                h = st["z_below"] = msg
        else:
            h = x
        fwd = {}
        for k in self.owned:
            h = tr._forward(k, h)
            fwd[k] = h
        if self.mode == "online":
            for k in self.owned:
                st["z"][k] = fwd[k].clone()
                st["u"][k] = torch.zeros_like(fwd[k])
                st["a"][k] = fwd[k]
        else:
            seen, zs, us = self.tables.gather(index)
            for j, k in enumerate(self.owned):
                fresh = ~seen.view(-1, *([1] * (zs[j].dim() - 1)))
                st["z"][k] = torch.where(fresh, fwd[k], zs[j]).contiguous()
                st["u"][k] = us[j].contiguous()
            if self.lo == 0 and self.owned:
                st["a"][0] = fwd[0]
        st["z_start"] = {k: v.clone() for k, v in st["z"].items()}
        if self.rank < self.world - 1:
            top = self.hi - 1
            msg = torch.cat([fwd[top], st["z"][top]]) if self.mode == "batch" else fwd[top]
            self._isend(msg, self.rank + 1, self._up)
        return st

    def _grad_from(self, st, k, zsrc, usrc):
        return self._t._consumer_grad_fn(k, zsrc, usrc, st["y"], self.config.order == "jacobi", st["a"].get(k + 1))

    def _cut_grad(self, st, z_lo_minus_1, zsrc, usrc):
        """Gradient of this rank's bottom block's term in its input (for the rank below)."""
        B, lo = self.B, self.lo
        z_next = zsrc[lo] if lo < B - 1 else None
        u_next = usrc[lo] if lo < B - 1 else None
        return self._t._next_term_grad(lo - 1, z_lo_minus_1, z_next, u_next, st["y"], out=st["a"].get(lo))

    # Gauss-Seidel top-down: the gradient wave down, then the weight and dual steps once z_{lo-1} is new
    def _task_D(self, st, s):
        tr, B = self._t, self.B
        z, u, a_cache = st["z"], st["u"], st["a"]
        for k in reversed(self.owned):
            if a_cache.get(k) is None:
                a_cache[k] = tr._forward(k, self._inputs(st, k))
            a = a_cache[k]
            if k == self.hi - 1 and self.rank < self.world - 1:
                g_top = self._above.get((st["t"], "D", s), "the gradient from above")
                grad_fn = lambda zk, g=g_top: g  # noqa: E731 - fixed for the k_z steps of this sweep
            else:
                grad_fn = self._grad_from(st, k, z, u)
            tr._boundary_aux_step(k, z[k], u[k], a, grad_fn, st["adam"])
            self._aux_primal(st, s, k, a)
            if k + 1 < self.hi and k + 1 < B - 1:
                a_cache[k + 1] = None
            if k == self.hi - 1 and self.rank < self.world - 1:
                self._isend(z[k].clone(), self.rank + 1, self._up)
        if self.rank > 0:
            self._isend(self._cut_grad(st, st["z_below"], z, u), self.rank - 1, self._down)

    def _task_U(self, st, s):
        if self.rank > 0:
            st["z_below"] = self._below.get((st["t"], "D", s), "the new auxiliary variables from below")
            if self.lo < self.B - 1:
                st["a"][self.lo] = None
        self._weight_and_dual(st, s, src=False)

    # Jacobi: G sends the sweep-start gradient down, A does the rest from sweep-start values
    def _task_G(self, st, s):
        if self.rank > 0 and s > 1:
            st["z_below"] = self._below.get((st["t"], "A", s - 1), "the auxiliary variables from below")
        st["z_src"] = {k: v.clone() for k, v in st["z"].items()}
        st["u_src"] = {k: v.clone() for k, v in st["u"].items()}
        if self.rank > 0:
            self._isend(self._cut_grad(st, st["z_below"], st["z_src"], st["u_src"]), self.rank - 1, self._down)

    def _task_A(self, st, s):
        tr = self._t
        z, u, a_cache = st["z"], st["u"], st["a"]
        top_remote = self.rank < self.world - 1
        local = [k for k in reversed(self.owned) if not (top_remote and k == self.hi - 1)]
        for k in local + ([self.hi - 1] if top_remote else []):
            if a_cache.get(k) is None:
                a_cache[k] = tr._forward(k, self._inputs(st, k, src=True))
            a = a_cache[k]
            if top_remote and k == self.hi - 1:
                g_top = self._above.get((st["t"], "G", s), "the gradient from above")
                grad_fn = lambda zk, g=g_top: g  # noqa: E731
            else:
                grad_fn = self._grad_from(st, k, st["z_src"], st["u_src"])
            tr._boundary_aux_step(k, z[k], u[k], a, grad_fn, st["adam"])
            self._aux_primal(st, s, k, a)
        self._weight_and_dual(st, s, src=True)
        if top_remote and s < self.config.sweeps:
            self._isend(z[self.hi - 1].clone(), self.rank + 1, self._up)

    def _skips_dual(self, s):
        """Online, the last sweep's dual update would leave with the mini-batch (BlockADMM.step skips it too)."""
        return self.mode == "online" and s == self.config.sweeps

    def _aux_primal(self, st, s, k, a):
        if self._skips_dual(s):  # the residual reported is then that of the last auxiliary step
            st.setdefault("primal_sq", {})[k] = (st["z"][k] - a).float().square().sum()

    def _weight_and_dual(self, st, s, src):
        tr, cfg, B = self._t, self.config, self.B
        z, u = st["z"], st["u"]
        for it in range(cfg.k_w):  # a kept forward (st["a"]) serves the first of the k_w steps
            losses = [tr._local_loss_and_grads(k, self._inputs(st, k, src), z[k] if k < B - 1 else None,
                                               u[k] if k < B - 1 else None, st["y"],
                                               out=st["a"].get(k) if it == 0 else None) for k in range(self.lo, self.hi)]
            self._check_finite(losses, "loss", st)
            for k in range(self.lo, self.hi):
                if tr.engine.optimizers[k] is not None:
                    tr.engine.optimizers[k].step()
        if self.hi == B:
            st["losses"].append(losses[-1])
        if self._skips_dual(s):
            return
        st["primal_sq"] = {}
        for k in self.owned:
            a = tr._forward(k, self._inputs(st, k, src))
            st["primal_sq"][k] = ops.aux_dual_update(z[k], u[k], a, None, rho=tr.rho[k], lr=0.0, dual_step=cfg.dual_step,
                                                     prox=tr.constraints[k], backend=tr.backend)
            st["a"][k] = None if cfg.order == "jacobi" else a

    def _check_finite(self, values, what, st):
        if not values or bool(torch.isfinite(torch.stack([v.float().reshape(()) for v in values])).all()):
            return
        k = self.lo + next(i for i, v in enumerate(values) if not bool(torch.isfinite(v)))
        raise NonFiniteError(f"non-finite {what} in block {k} (rank {self.rank}) at step {self.step_count}; "
                             f"resume from the last checkpoint with a smaller learning rate, lr_z or rho")

    def _finish_batch(self, st) -> dict:
        z, z0 = st["z"], st["z_start"]
        vals = ([st["losses"][-1].float()] if st["losses"] else []) + [st["primal_sq"][k].float() for k in self.owned] \
            + [z[k].float().square().sum() for k in self.owned] + [(z[k] - z0[k]).float().square().sum() for k in self.owned]
        v = torch.stack(vals).cpu() if vals else torch.zeros(0)
        off = 1 if st["losses"] else 0
        nb = len(self.owned)
        prim_sq, norms, dz = v[off:off + nb], v[off + nb:off + 2 * nb].clamp_min(1e-30).sqrt(), v[off + 2 * nb:]
        if not bool(torch.isfinite(prim_sq).all()):
            raise NonFiniteError(f"non-finite primal residual on rank {self.rank} at step {self.step_count}")
        if self.tables is not None:
            self.tables.scatter(st["index"], [z[k] for k in self.owned], [st["u"][k] for k in self.owned])
        primal = (prim_sq.sqrt() / norms).tolist()
        dual = [self._t.rho[k] * float(d) for k, d in zip(self.owned, dz.sqrt() / norms)]
        self._update_rho(primal)
        self.step_count += 1
        return {"loss": float(v[0]) if off else None, "primal": dict(zip(self.owned, primal)), "dual": dict(zip(self.owned, dual))}

    def _update_rho(self, primal):
        """BlockADMM's adaptive penalty, per owned boundary (each rank decides for its own boundaries)."""
        tr = self._t
        for k, r in zip(self.owned, primal):
            new = tr._rho_growth(k, r)
            if new is not None:
                if self.tables is not None:
                    self.tables.scale_duals(self.owned.index(k), tr.rho[k] / new)
                for st in getattr(self, "_states", {}).values():  # scaled duals of batches still in flight
                    for key in ("u", "u_src"):
                        if key in st and k in st[key]:
                            st[key][k].mul_(tr.rho[k] / new)
                tr.rho[k] = new

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 1000) -> Dict[str, float]:
        """Loss and accuracy of the composed network, the activations passed up the ranks; same result on all."""
        loader = data if isinstance(data, torch.utils.data.DataLoader) else torch.utils.data.DataLoader(data, batch_size=batch_size)
        tr, r, R = self._t, self.rank, self.world
        for k in range(self.lo, self.hi):
            tr.blocks[k].eval()
        loss_sum, correct, total = 0.0, 0, 0
        try:
            for batch in loader:
                x, y = batch[0].to(self.device), batch[1].to(self.device)
                h = x
                if r > 0:
                    h = torch.empty((x.shape[0], *self.shapes[self.lo - 1]), device=self.device)
                    self._wait(dist.irecv(h, src=r - 1, group=self._up), r - 1, "activations for evaluation")
                for k in range(self.lo, self.hi):
                    h = tr.blocks[k](h)
                if r < R - 1:
                    self._isend(h.contiguous(), r + 1, self._up)
                else:
                    loss_sum += float(tr.loss_fn(h, y)) * x.shape[0]
                    if y.dim() == 1:
                        correct += int((h.argmax(1) == y).sum())
                    total += x.shape[0]
            self._flush_sends()
        except RankFailure:
            raise
        except Exception as e:
            self._publish_error(e)
            raise
        finally:
            for k in range(self.lo, self.hi):
                tr.blocks[k].train()
        v = self._all_reduce(torch.tensor([loss_sum, float(correct), float(total)], dtype=torch.float64), "evaluation totals")
        tot = max(float(v[2]), 1.0)
        return {"loss": float(v[0]) / tot, "acc": float(v[1]) / tot}

    # ------------------------------------------------------------------ epochs
    def fit(self, train, epochs: int, *, batch_size: int = 100, test=None, val=None, checkpoint: Optional[str] = None,
            checkpoint_every: Optional[int] = None, progress: bool = True, eval_train: bool = True,
            on_epoch: Optional[Callable[[dict], None]] = None) -> List[dict]:
        """Train until `epochs` epochs are done (continuing after a resume), like BlockADMM.fit.

        checkpoint: a folder; every rank writes its shard after every epoch and every `checkpoint_every`
        steps (the pipeline drains there). Records are identical on every rank.
        """
        from .data import make_loader

        if self.tables is not None and len(train) != self.tables.num_samples:
            raise ValueError(f"the training set has {len(train)} samples but the batch-mode tables were built for "
                             f"{self.tables.num_samples}: pass num_samples=len(train)")
        for epoch in range(self.epoch, epochs):
            for k in range(self.lo, self.hi):
                if hasattr(self._t.blocks[k], "admm_set_epoch"):
                    self._t.blocks[k].admm_set_epoch(epoch)
            loader = make_loader(train, batch_size, shuffle=True, seed=self.seed, epoch=epoch)
            t0, cpu0, wait0 = time.perf_counter(), time.process_time(), self._wait_s
            nb = self.B - 1
            sums = torch.zeros(1 + 2 * nb + 1 + 2 * self.world, dtype=torch.float64)  # loss, primal per boundary, dual per boundary, n
            it = iter(loader)
            for _ in range(self.epoch_step):  # resumed mid-epoch: the batches done already
                next(it)
            batches = list(it)
            pos = 0
            while pos < len(batches):
                seg = len(batches) - pos
                if checkpoint and checkpoint_every:
                    seg = min(seg, checkpoint_every - self.step_count % checkpoint_every)
                stats = self.run_batches(batches[pos:pos + seg], self.step_count)
                for s in stats:
                    if s["loss"] is not None:
                        sums[0] += s["loss"]
                    for k, v in s["primal"].items():
                        sums[1 + k] += v
                    for k, v in s["dual"].items():
                        sums[1 + nb + k] += v
                sums[1 + 2 * nb] += len(stats)
                pos += seg
                self.epoch_step += seg
                if checkpoint and checkpoint_every and pos < len(batches) and self.step_count % checkpoint_every == 0:
                    self.save(checkpoint)
            # this rank's CPU time and time blocked on others, for the record (rank_cpu_s, rank_wait_s)
            sums[2 + 2 * nb + self.rank] = time.process_time() - cpu0
            sums[2 + 2 * nb + self.world + self.rank] = self._wait_s - wait0
            tot = self._all_reduce(sums, "epoch statistics")
            wall = time.perf_counter() - t0
            n = max(float(tot[1 + 2 * nb]) / self.world, 1.0)
            record = {"epoch": epoch + 1, "loss": float(tot[0]) / n, "primal_residual": [float(v) / n for v in tot[1:1 + nb]],
                      "dual_residual": [float(v) / n for v in tot[1 + nb:1 + 2 * nb]], "rho": self._gather_rho(),
                      "wall_s": wall, "world_size": self.world, "schedule": self.schedule, "staleness": self.staleness,
                      "rank_cpu_s": [round(float(v), 3) for v in tot[2 + 2 * nb:2 + 2 * nb + self.world]],
                      "rank_wait_s": [round(float(v), 3) for v in tot[2 + 2 * nb + self.world:]]}
            if eval_train:
                record["train_acc"] = self.evaluate(train)["acc"]
            for name, ds in (("val", val), ("test", test)):
                if ds is not None:
                    ev = self.evaluate(ds)
                    record[f"{name}_acc"], record[f"{name}_loss"] = ev["acc"], ev["loss"]
            self.epoch, self.epoch_step = epoch + 1, 0
            self.history.append(record)
            if checkpoint:
                self.save(checkpoint)
            if on_epoch:
                on_epoch(record)
            if progress and self.rank == 0:
                print(f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}"
                      + "".join(f", {k} {record[k]:.4f}" for k in ("train_acc", "test_acc") if k in record)
                      + f", {wall:.2f} s", flush=True)
        return self.history

    def _gather_rho(self) -> List[float]:
        v = torch.zeros(self.B - 1, dtype=torch.float64)
        for k in self.owned:
            v[k] = self._t.rho[k]
        return self._all_reduce(v, "penalties").tolist()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        tr = self._t
        return {
            "format": "blockadmm-distributed-1", "rank": self.rank, "world_size": self.world,
            "partition": [list(p) for p in self.partition], "config": asdict(self.config), "mode": self.mode,
            "schedule": self.schedule, "staleness": self.staleness, "shapes": self.shapes,
            "blocks": {k: tr.blocks[k].state_dict() for k in range(self.lo, self.hi)},
            "optimizers": {k: None if tr.engine.optimizers[k] is None else tr.engine.optimizers[k].state_dict() for k in range(self.lo, self.hi)},
            "rho": list(tr.rho), "rho_window": copy.deepcopy(tr._rho_window), "rho_prev": list(tr._rho_prev),
            "step_count": self.step_count, "epoch": self.epoch, "epoch_step": self.epoch_step,
            "history": copy.deepcopy(self.history), "rng": torch.get_rng_state(),
            "tables": None if self.tables is None else self.tables.state_dict(),
        }

    def save(self, folder: str) -> str:
        """Every rank writes its shard atomically under folder/step-<id>/; then rank 0 commits `latest.json`.
        Collective: call on every rank. Returns the step folder."""
        step_dir = os.path.join(folder, f"step-{self.step_count:09d}")
        ok = 1.0
        try:
            os.makedirs(step_dir, exist_ok=True)
            state = self.state_dict()
            if self.tables is not None and self.tables.storage == "memmap":
                dst = os.path.join(step_dir, f"tables-rank{self.rank:03d}")
                self.tables.copy_files(dst)
                state["tables"]["path"] = dst
            path = os.path.join(step_dir, _shard_name(self.rank, self.world))
            tmp = f"{path}.tmp.{os.getpid()}"
            torch.save(state, tmp)
            os.replace(tmp, path)
        except Exception as e:  # noqa: BLE001
            self._publish_error(e)
            ok = 0.0
            err = e
        v = self._all_reduce(torch.tensor([ok]), "checkpoint shards")
        if float(v[0]) < self.world:
            if ok == 0.0:
                raise err
            raise RankFailure(f"another rank failed to write its checkpoint shard under {step_dir}; latest.json not updated")
        if self.rank == 0:
            meta = {"step": self.step_count, "epoch": self.epoch, "epoch_step": self.epoch_step, "world_size": self.world,
                    "partition": [list(p) for p in self.partition], "dir": os.path.basename(step_dir)}
            tmp = os.path.join(folder, f"latest.json.tmp.{os.getpid()}")
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, os.path.join(folder, "latest.json"))
            for name in sorted(os.listdir(folder)):  # keep the two newest step folders
                if name.startswith("step-") and name < f"step-{self.step_count:09d}" and name not in _newest(folder, 2):
                    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        self._all_reduce(torch.zeros(1), "the checkpoint commit")
        return step_dir

    def load(self, folder: str) -> None:
        """Resume from the newest committed checkpoint in `folder` (collective: call on every rank)."""
        err, state = None, None
        try:
            meta = read_checkpoint_meta(folder, self.world, self.partition)
            path = os.path.join(folder, meta["dir"], _shard_name(self.rank, self.world))
            if not os.path.exists(path):
                raise CheckpointMismatch(f"checkpoint shard {path} of rank {self.rank} is missing: the checkpoint "
                                         f"at step {meta['step']} is incomplete; restore the file or start without resuming")
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # noqa: BLE001
            err = e
        v = self._all_reduce(torch.tensor([0.0 if err is None else 1.0 + self.rank]), "checkpoint loading")
        if err is not None:
            raise err
        if float(v[0]) > 0:
            raise CheckpointMismatch(f"another rank could not load its checkpoint shard from {folder} (see its error)")
        self.load_state_dict(state)

    def load_state_dict(self, state: dict) -> None:
        tr = self._t
        if state["world_size"] != self.world or [tuple(p) for p in state["partition"]] != self.partition:
            raise CheckpointMismatch(f"shard from a run with {state['world_size']} ranks, partition {state['partition']}; "
                                     f"this run has {self.world} ranks, partition {self.partition}")
        if state["shapes"] != self.shapes or state["mode"] != self.mode:
            raise CheckpointMismatch(f"the checkpoint is for another model or mode ({state['mode']}, shapes {state['shapes']})")
        if (state["tables"] is None) != (self.tables is None):
            raise TableMismatch("the checkpoint and this trainer disagree on having batch-mode tables")
        if self.tables is not None:
            self.tables.load_state_dict(state["tables"])
        for k in range(self.lo, self.hi):
            tr.blocks[k].load_state_dict(state["blocks"][k])
            if tr.engine.optimizers[k] is not None:
                tr.engine.optimizers[k].load_state_dict(state["optimizers"][k])
        tr.config = self.config = ADMMConfig(**state["config"])
        tr.rho = list(state["rho"])
        tr._rho_window = copy.deepcopy(state["rho_window"])
        tr._rho_prev = list(state["rho_prev"])
        self.step_count, self.epoch, self.epoch_step = state["step_count"], state["epoch"], state["epoch_step"]
        self.history = copy.deepcopy(state["history"])
        torch.set_rng_state(state["rng"].cpu())


def _shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:03d}-of-{world:03d}.pt"


def _newest(folder, n):
    return sorted(d for d in os.listdir(folder) if d.startswith("step-") and not d.endswith(".tmp"))[-n:]


def read_checkpoint_meta(folder: str, world_size: int, partition=None) -> dict:
    """The committed checkpoint of `folder` (latest.json), checked against this run's world size."""
    latest = os.path.join(folder, "latest.json")
    if not os.path.exists(latest):
        raise FileNotFoundError(f"no distributed checkpoint in {folder} (latest.json is missing)")
    with open(latest) as f:
        meta = json.load(f)
    if meta["world_size"] != world_size:
        raise CheckpointMismatch(
            f"the checkpoint in {folder} was written by {meta['world_size']} ranks, this run has {world_size}: "
            f"resume with {meta['world_size']} processes (e.g. --nproc {meta['world_size']})")
    if partition is not None and [list(p) for p in partition] != meta["partition"]:
        raise CheckpointMismatch(f"the checkpoint in {folder} splits the blocks as {meta['partition']}, "
                                 f"this run as {[list(p) for p in partition]}: pass partition= to match")
    return meta


def _default_store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------------------------------------- launching
def exit_worker() -> None:
    """End a spawned rank whose work is done and written, once every rank got here, without running the
    process-group destructors: at interpreter exit, after its peers have gone, gloo's can abort the
    process ("terminate called without an active exception", seen in CI dry runs) and turn a finished
    run into a failed one."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank, fn, nproc, init_method, backend, threads, timeout, args, kwargs):
    torch.set_num_threads(threads)
    init_distributed(backend, init_method=init_method, rank=rank, world_size=nproc, timeout=timeout)
    try:
        fn(*args, **kwargs)
        exit_worker()
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass


def launch(fn: Callable, nproc: int, *args, backend: Optional[str] = None, init_method: Optional[str] = None,
           threads: Optional[int] = None, timeout: float = 300.0, **kwargs) -> None:
    """Run fn(*args, **kwargs) in `nproc` new local processes (torch.multiprocessing spawn), each joined to
    one process group (file rendezvous; gloo on CPU, NCCL when every process can have its own GPU).
    threads: torch threads per process (default: CPU cores / nproc, at least 1). Raises if a process fails."""
    import tempfile

    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc else "gloo"
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    tmp = None
    if init_method is None:
        tmp = tempfile.mkdtemp(prefix="blockadmm-rdzv-")
        init_method = "file://" + os.path.join(tmp, "store")
    try:
        mp.spawn(_worker, args=(fn, nproc, init_method, backend, threads, timeout, args, kwargs), nprocs=nproc, join=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _train_from_args(args, schedule, staleness):
    """One rank of `blockadmm train --nproc N`: the same options as the single-process command."""
    from . import data
    from .cli import build_network

    modes = args.mode if isinstance(args.mode, (list, tuple)) else [args.mode]
    splits = data.load(args.data, args.root, val_fraction=args.val_fraction, split_seed=args.seed, image=args.arch == "cnn")
    runs, last = {}, None
    for mode in modes:  # every mode from the same initial weights and batches
        torch.manual_seed(args.seed)
        model, cuts = build_network(args, splits.input_shape, splits.num_classes)
        tr = DistributedBlockADMM(
            model, blocks=cuts, input_shape=splits.input_shape, mode=mode, num_samples=len(splits.train),
            optimizer=adam(args.lr), rho=args.rho, lr_z=args.lr_z, sweeps=args.sweeps, k_z=args.k_z, k_w=args.k_w,
            order=args.order, aux_step=args.aux_step, dual_step=args.dual_step, rho_schedule=args.rho_schedule,
            table_storage=args.table_storage, table_dir=os.path.join(args.out, f"tables-{mode}"), backend=args.backend,
            seed=args.seed, schedule=schedule, staleness=staleness,
        )
        ckpt = os.path.join(args.out, f"checkpoint-dist-{mode}")
        if getattr(args, "resume", False):
            tr.load(ckpt)
        runs[f"admm-{mode}-{schedule}-{dist.get_world_size()}ranks"] = tr.fit(
            splits.train, args.epochs, batch_size=args.batch_size, test=splits.test, val=splits.val,
            checkpoint=ckpt, progress=not args.quiet)
        last = tr
    if dist.get_rank() == 0:
        os.makedirs(args.out, exist_ok=True)
        metrics = {"config": {k: v for k, v in vars(args).items() if k != "func"}, "world_size": dist.get_world_size(),
                   "schedule": schedule, "staleness": last.staleness, "partition": last.partition, "runs": runs,
                   "final": {n: {k: h[-1][k] for k in ("train_acc", "test_acc", "val_acc") if k in h[-1]} for n, h in runs.items()},
                   "epoch_wall_s": {n: sum(r["wall_s"] for r in h) / len(h) for n, h in runs.items()}}
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)


def launch_train(args, nproc: int, *, schedule: str = "pipeline", staleness: Optional[int] = None) -> None:
    """`blockadmm train --nproc N`: spawn N local ranks, each training with the options of `args` (the train
    command's argparse namespace). One torch thread per rank on CPU unless cores allow more."""
    if isinstance(args, dict):
        import argparse
        args = argparse.Namespace(**args)
    backend = "nccl" if str(getattr(args, "device", "cpu")).startswith("cuda") and torch.cuda.device_count() >= nproc else "gloo"
    launch(_train_from_args, nproc, args, schedule, staleness, backend=backend)
