"""The static schedule of the distributed trainer: block partition, cost model, per-rank task lists.

Pure functions of the model sizes and the options, computed identically on every rank, so that a run is
deterministic whatever the timing and every rank knows which messages its neighbours send, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

from torch import nn

from ..blocks import min_max_partition


class Task(str, Enum):
    """What a rank does for one mini-batch at one point of its schedule."""

    FORWARD = "forward"  # forward through the owned blocks, start z and u, send the top output up
    AUX_DOWN = "aux-down"  # top-down: auxiliary steps from the top block down, the new z up, the gradient down
    UPDATE = "update"  # top-down: weight and dual steps, once the new z from below has arrived
    SEND_GRAD = "send-grad"  # Jacobi: send the sweep-start gradient of the bottom block's term down
    JACOBI_SWEEP = "jacobi-sweep"  # Jacobi: auxiliary, weight and dual steps from the sweep-start values


TaskKey = tuple[int, Task, int]  # (batch, task, sweep)
TaskCost = Callable[[int, Task, int], float]  # (rank, task, sweep) -> relative cost


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) or 1


def step_costs(blocks: Sequence[nn.Module], keeps_forward: Sequence[bool]) -> list[dict[str, float]]:
    """Relative work of each block per sweep, in units of one forward through it: its weight step ("w"),
    its dual step's forward ("d") and the gradient for its input ("g"). A block that keeps its forward
    (a fused linear block) takes block 0's first weight step and its input gradient one GEMM cheaper;
    the last block's input gradient is that of the task loss."""
    n_blocks = len(blocks)
    out = []
    for k, block in enumerate(blocks):
        params = float(_param_count(block))
        kept = keeps_forward[k] and k < n_blocks - 1
        out.append(
            {
                "w": params * (1 if kept and k == 0 else 2),
                "d": params if k < n_blocks - 1 else 0.0,
                "g": 0.0 if k == 0 else params * (1 if kept else 2),
            }
        )
    return out


def partition_blocks(costs: Sequence[float], world: int) -> list[tuple[int, int]]:
    """Contiguous groups [lo, hi) of blocks, one per rank, minimising the largest group cost."""
    n = len(costs)
    if not 1 <= world <= n:
        raise ValueError(
            f"{n} blocks cannot be shared by {world} ranks: every rank needs at least one block "
            f"(use at most {n} processes, or cut the model into more blocks)"
        )
    return min_max_partition(costs, world)


def task_cost_model(
    costs: Sequence[dict[str, float]], partition: Sequence[tuple[int, int]], *, sweeps: int, online: bool
) -> TaskCost:
    """Cost of each task of rank r from the block costs; online, the last sweep skips the dual step."""
    n_blocks = len(costs)

    def cost(rank: int, task: Task, sweep: int) -> float:
        lo, hi = partition[rank]
        boundaries = [k for k in range(lo, hi) if k < n_blocks - 1]
        forward = sum(costs[k]["d"] for k in boundaries)  # a forward through each block with an output boundary
        dual = 0.0 if online and sweep == sweeps else forward
        weights = sum(costs[k]["w"] for k in range(lo, hi))
        grad_inside = sum(costs[k + 1]["g"] for k in boundaries if k + 1 < hi)
        grad_down = costs[lo]["g"] if rank > 0 else 0.0
        return (
            1.0
            + {
                Task.FORWARD: forward,
                Task.AUX_DOWN: grad_inside + grad_down,
                Task.UPDATE: weights + dual,
                Task.SEND_GRAD: grad_down,
                Task.JACOBI_SWEEP: grad_inside + weights + dual,
            }[task]
        )

    return cost


def batch_tasks(order: str, sweeps: int) -> list[tuple[Task, int]]:
    """The tasks of one mini-batch on every rank, in order: (task, sweep)."""
    per_sweep = (Task.SEND_GRAD, Task.JACOBI_SWEEP) if order == "jacobi" else (Task.AUX_DOWN, Task.UPDATE)
    return [(Task.FORWARD, 0)] + [(task, s) for s in range(1, sweeps + 1) for task in per_sweep]


def last_task(order: str) -> Task:
    """The task that finishes a mini-batch's sweep."""
    return Task.JACOBI_SWEEP if order == "jacobi" else Task.UPDATE


def _cross_deps(task: Task, sweep: int, rank: int, world: int) -> list[tuple[int, Task, int]]:
    """(rank, task, sweep) of the same batch whose message this task needs."""
    top = rank == world - 1
    if task is Task.FORWARD:
        return [(rank - 1, Task.FORWARD, 0)] if rank > 0 else []
    if task is Task.AUX_DOWN:  # the gradient from above
        return [] if top else [(rank + 1, Task.AUX_DOWN, sweep)]
    if task is Task.UPDATE:  # the new z from below
        return [(rank - 1, Task.AUX_DOWN, sweep)] if rank > 0 else []
    if task is Task.SEND_GRAD:  # the sweep-start z from below
        return [(rank - 1, Task.JACOBI_SWEEP, sweep - 1)] if rank > 0 and sweep > 1 else []
    return [] if top else [(rank + 1, Task.SEND_GRAD, sweep)]  # JACOBI_SWEEP: the sweep-start gradient from above


def sends(task: Task, sweep: int, rank: int, world: int, sweeps: int) -> list[str]:
    """Directions ("up", "down") in which a task sends one message, in send order."""
    top = rank == world - 1
    if task is Task.FORWARD:
        return [] if top else ["up"]
    if task is Task.AUX_DOWN:
        return ([] if top else ["up"]) + (["down"] if rank > 0 else [])
    if task is Task.SEND_GRAD:
        return ["down"] if rank > 0 else []
    if task is Task.JACOBI_SWEEP:
        return ["up"] if not top and sweep < sweeps else []
    return []


def build_schedule(
    n_batches: int, world: int, *, order: str, sweeps: int, staleness: int, task_cost: TaskCost
) -> list[list[TaskKey]]:
    """Per rank, the list of tasks (batch, task, sweep) in execution order.

    A list schedule of the task graph: each rank runs, among its ready tasks, the one that can start first
    by the cost model (ties: older batch). Rank r admits batch t only after finishing its own part of
    batch t-1-staleness. Every rank's list follows one global topological order, so executing the lists with
    blocking receives cannot deadlock, whatever the real costs.
    """
    in_flight = staleness + 1
    seq = batch_tasks(order, sweeps)
    next_task = [[0] * n_batches for _ in range(world)]
    finish: dict[tuple[int, int, Task, int], float] = {}
    free = [0.0] * world
    oldest = [0] * world  # oldest batch not finished on rank r
    out: list[list[TaskKey]] = [[] for _ in range(world)]
    remaining = n_batches * len(seq) * world
    while remaining:
        best = None
        for r in range(world):
            for t in range(oldest[r], min(n_batches, oldest[r] + in_flight)):
                i = next_task[r][t]
                if i == len(seq):
                    continue
                task, s = seq[i]
                deps = [(r, t) + seq[i - 1]] if i > 0 else []
                if i == 0 and t > 0:
                    deps.append((r, t - 1, Task.FORWARD, 0))  # forwards in batch order on each rank
                deps += [(q, t, task2, s2) for q, task2, s2 in _cross_deps(task, s, r, world)]
                if any(d not in finish for d in deps):
                    continue
                start = max([free[r]] + [finish[d] for d in deps])
                if best is None or (start, t, r) < best[0]:
                    best = ((start, t, r), r, t, task, s)
        if best is None:  # cannot happen for a well-formed graph
            raise RuntimeError("pipeline schedule deadlocked; this is a bug")
        (start, _, _), r, t, task, s = best
        end = start + max(task_cost(r, task, s), 1e-9)
        finish[(r, t, task, s)] = end
        free[r] = end
        next_task[r][t] += 1
        out[r].append((t, task, s))
        remaining -= 1
        while oldest[r] < n_batches and next_task[r][oldest[r]] == len(seq):
            oldest[r] += 1
    return out


def messages(tasks: Sequence[TaskKey], rank: int, world: int, sweeps: int, direction: str) -> list[TaskKey]:
    """Message keys (batch, task, sweep of the sending task) that `rank` sends in `direction`, in order."""
    return [(t, task, s) for t, task, s in tasks if direction in sends(task, s, rank, world, sweeps)]
