"""DistributedBlockADMM: the Block-ADMM trainer with its blocks spread over the ranks of a process group."""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch import nn

from .. import ops
from ..tables import TableMismatch, VariableTables
from ..trainer import ADMMConfig, BlockADMM, NonFiniteError, default_optimizer
from .comm import Comm, Inbox, RankFailure, default_store
from .schedule import Task, build_schedule, last_task, messages, partition_blocks, step_costs, task_cost_model
from .shards import CheckpointMismatch, commit, load_shard, step_dir_name, write_shard


class DistributedBlockADMM:
    """Block-ADMM with the blocks spread over the ranks of a process group (see blockadmm.distributed).

    Call on every rank after :func:`init_distributed`, with the same arguments as :class:`BlockADMM`
    (every rank builds the whole model from the same seed and keeps only its blocks), plus:

    schedule: "sync" (one mini-batch at a time, Jacobi order unless `order=` says otherwise) or
    "pipeline" (several mini-batches in flight, top-down order within each). staleness: pipeline only,
    how many earlier batches' updates a rank may not have applied yet (default world_size - 1).
    partition: [(lo, hi), ...] block groups per rank (default: balanced by a cost model).
    timeout: seconds any wait on another rank may take before the run stops with a RankFailure.
    """

    def __init__(self, model, *, input_shape, blocks=None, mode: str = "online", num_samples: int | None = None,
                 optimizer: Callable = default_optimizer, loss: Callable | None = None, constraints=None,
                 config: ADMMConfig | None = None, schedule: str = "sync", staleness: int | None = None,
                 partition: Sequence[tuple[int, int]] | None = None, timeout: float = 60.0,
                 table_storage: str = "device", table_dir: str | None = None, backend: str = "auto",
                 fused_linear: bool = True, device=None, seed: int = 0, **config_overrides):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call blockadmm.distributed.init_distributed() "
                               "(under torchrun) or start the processes with blockadmm.distributed.launch()")
        if schedule not in ("sync", "pipeline"):
            raise ValueError(f"schedule must be 'sync' or 'pipeline', got {schedule!r}")
        if mode not in ("online", "batch"):
            raise ValueError(f"mode must be 'online' or 'batch', got {mode!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if "order" not in config_overrides and config is None:
            config_overrides["order"] = "jacobi" if schedule == "sync" else "top-down"
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if device is None:
            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        # the whole model, built the same way on every rank; this rank keeps its blocks only
        self._local = BlockADMM(model, input_shape=input_shape, blocks=blocks, mode="online", optimizer=optimizer,
                                loss=loss, constraints=constraints, config=config, backend=backend,
                                fused_linear=fused_linear, device=device, seed=seed, **config_overrides)
        local = self._local
        self.config, self.device, self.seed, self.mode = local.config, local.device, seed, mode
        if self.config.order == "bottom-up":
            raise ValueError("the distributed trainer runs order='jacobi' or 'top-down' (bottom-up is not offered)")
        self.schedule = schedule
        self.staleness = 0 if schedule == "sync" else (self.world - 1 if staleness is None else int(staleness))
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        self.B = local.n_blocks
        costs = step_costs(local.blocks, [f is not None for f in local._fused])
        self.partition = [tuple(p) for p in (partition or partition_blocks([sum(c.values()) for c in costs], self.world))]
        self._check_partition()
        self.lo, self.hi = self.partition[self.rank]
        for k in range(self.B):  # drop the blocks other ranks own
            if not self.lo <= k < self.hi:
                local.blocks[k] = nn.Identity()
                local.optimizers[k] = None
        self.owned = [k for k in range(self.lo, self.hi) if k < self.B - 1]  # boundaries this rank owns
        self.shapes = local.shapes
        self.tables = None
        if mode == "batch":
            if num_samples is None:
                raise ValueError("batch mode keeps variables per training sample: pass num_samples=len(train_dataset)")
            path = None if table_dir is None else os.path.join(table_dir, f"rank{self.rank}")
            # this rank's boundaries only (plus the seen flags): nothing is gathered to one rank
            self.tables = VariableTables(num_samples, [self.shapes[k] for k in self.owned], storage=table_storage,
                                         device=self.device, path=path)
        self.timeout = float(timeout)
        self.comm = Comm(self.rank, self.world, self.device, self.timeout, default_store())
        self.comm.join()
        self._task_cost = task_cost_model(costs, self.partition, sweeps=self.config.sweeps, online=mode == "online")
        self._tasks = {Task.FORWARD: None, Task.AUX_DOWN: self._aux_down, Task.UPDATE: self._update,
                       Task.SEND_GRAD: self._send_grad, Task.JACOBI_SWEEP: self._jacobi_sweep}
        self.step_count = 0
        self.epoch = 0
        self.epoch_step = 0  # batches of the current epoch done
        self.history: list[dict] = []
        self._in_flight: dict[int, dict] = {}  # batches in flight: a penalty change rescales their duals too

    def _check_partition(self):
        parts = self.partition
        ok = len(parts) == self.world and parts[0][0] == 0 and parts[-1][1] == self.B and all(
            lo < hi for lo, hi in parts) and all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
        if not ok:
            raise ValueError(f"partition {parts} must give each of the {self.world} ranks a non-empty contiguous "
                             f"group of the {self.B} blocks, in order")

    @property
    def blocks(self):
        return self._local.blocks

    @property
    def rho(self):
        return self._local.rho

    def owned_blocks(self) -> dict[int, nn.Module]:
        return {k: self._local.blocks[k] for k in range(self.lo, self.hi)}

    # ------------------------------------------------------------------ one segment of batches
    def run_batches(self, batches: Sequence, first_step: int) -> list[dict]:
        """Train on `batches` ([x, y, index] each, the same list on every rank) with the configured schedule;
        drains the pipeline before returning. Returns this rank's per-batch statistics."""
        cfg, world, r = self.config, self.world, self.rank
        n = len(batches)
        if n == 0:
            return []
        plans = build_schedule(n, world, order=cfg.order, sweeps=cfg.sweeps, staleness=self.staleness,
                               task_cost=self._task_cost)
        sizes = [int(b[0].shape[0]) for b in batches]
        self._below = self._above = None
        if r > 0:
            shape = self.shapes[self.lo - 1]

            def shape_up(key):  # batch mode sends the forward and the stored z of a new batch in one message
                rows = 2 * sizes[key[0]] if key[1] is Task.FORWARD and self.mode == "batch" else sizes[key[0]]
                return (rows, *shape)

            self._below = Inbox(self.comm, r - 1, "up", messages(plans[r - 1], r - 1, world, cfg.sweeps, "up"), shape_up)
        if r < world - 1:
            top_shape = self.shapes[self.hi - 1]
            self._above = Inbox(self.comm, r + 1, "down", messages(plans[r + 1], r + 1, world, cfg.sweeps, "down"),
                                lambda key: (sizes[key[0]], *top_shape))
        stats: list[dict | None] = [None] * n
        done = last_task(cfg.order)
        with self.comm.publishing_errors():
            for t, task, s in plans[r]:
                self.comm.step = first_step + t
                if task is Task.FORWARD:
                    self._in_flight[t] = self._forward(t, batches[t])
                    continue
                self._tasks[task](self._in_flight[t], s)
                if s == cfg.sweeps and task is done:
                    stats[t] = self._finish_batch(self._in_flight.pop(t))
            self.comm.flush_sends()
        return stats

    # ------------------------------------------------------------------ tasks
    def _inputs(self, work, k, src=False):
        if k == 0:
            return work["x"]
        if k == self.lo:
            return work["z_below"]
        return (work["z_src"] if src else work["z"])[k - 1]

    def _forward(self, t, batch):
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        index = batch[2] if len(batch) > 2 else None
        local = self._local
        local._check_batch(x, y, None)  # shapes and labels, on every rank (the last one computes the loss)
        if self.mode == "batch":
            if index is None:
                raise ValueError("batch mode needs the sample index of every row: use a dataset that yields (x, y, index)")
            index = torch.as_tensor(index, dtype=torch.long)
            nrows = self.tables.num_samples
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= nrows):
                raise IndexError(f"sample index {int(index.min())}..{int(index.max())} outside the tables' 0..{nrows - 1}")
        for k in range(self.lo, self.hi):
            local.blocks[k].train()
        m = x.shape[0]
        work = {"t": t, "x": x if self.lo == 0 else None, "y": y, "index": index, "z": {}, "u": {}, "a": {},
                "losses": [], "adam": {}}
        h = x
        if self.rank > 0:
            msg = self._below.get((t, Task.FORWARD, 0), "the forward activations")
            if self.mode == "batch":
                h, work["z_below"] = msg[:m], msg[m:]
            else:
                h = work["z_below"] = msg
        fwd = {}
        for k in self.owned:
            h = fwd[k] = local._forward(k, h)
        if self.mode == "online":
            for k in self.owned:
                work["z"][k], work["u"][k], work["a"][k] = fwd[k].clone(), torch.zeros_like(fwd[k]), fwd[k]
        else:
            seen, zs, us = self.tables.gather(index)
            for j, k in enumerate(self.owned):
                fresh = ~seen.view(-1, *([1] * (zs[j].dim() - 1)))
                work["z"][k] = torch.where(fresh, fwd[k], zs[j]).contiguous()
                work["u"][k] = us[j].contiguous()
            if self.lo == 0 and self.owned:
                work["a"][0] = fwd[0]
        work["z_start"] = {k: v.clone() for k, v in work["z"].items()}
        if self.rank < self.world - 1:
            top = self.hi - 1
            self.comm.isend(torch.cat([fwd[top], work["z"][top]]) if self.mode == "batch" else fwd[top],
                            self.rank + 1, "up")
        return work

    def _grad_from(self, work, k, z_src, u_src):
        return self._local._consumer_grad_fn(k, z_src, u_src, work["y"], self.config.order == "jacobi",
                                             work["a"].get(k + 1))

    def _cut_grad(self, work, z_src, u_src):
        """Gradient of this rank's bottom block's term in its input (for the rank below)."""
        lo = self.lo
        z_next = z_src[lo] if lo < self.B - 1 else None
        u_next = u_src[lo] if lo < self.B - 1 else None
        return self._local._next_term_grad(lo - 1, work["z_below"], z_next, u_next, work["y"], out=work["a"].get(lo))

    def _fixed_grad(self, grad):
        return lambda z_k: grad  # the gradient from above is fixed for the k_z steps of this sweep

    def _aux_down(self, work, s):
        """Top-down Gauss-Seidel: auxiliary steps from the top down, the new z up, the gradient down."""
        local = self._local
        z, u, kept = work["z"], work["u"], work["a"]
        top_remote = self.rank < self.world - 1
        for k in reversed(self.owned):
            if kept.get(k) is None:
                kept[k] = local._forward(k, self._inputs(work, k))
            if k == self.hi - 1 and top_remote:
                grad_fn = self._fixed_grad(self._above.get((work["t"], Task.AUX_DOWN, s), "the gradient from above"))
            else:
                grad_fn = self._grad_from(work, k, z, u)
            local._boundary_aux_step(k, z[k], u[k], kept[k], grad_fn, work["adam"])
            self._aux_primal(work, s, k, kept[k])
            if k + 1 < self.hi and k + 1 < self.B - 1:
                kept[k + 1] = None
            if k == self.hi - 1 and top_remote:
                self.comm.isend(z[k].clone(), self.rank + 1, "up")
        if self.rank > 0:
            self.comm.isend(self._cut_grad(work, z, u), self.rank - 1, "down")

    def _update(self, work, s):
        """Top-down Gauss-Seidel: weight and dual steps, once the new z from below is here."""
        if self.rank > 0:
            work["z_below"] = self._below.get((work["t"], Task.AUX_DOWN, s), "the new auxiliary variables from below")
            if self.lo < self.B - 1:
                work["a"][self.lo] = None
        self._weight_and_dual(work, s, src=False)

    def _send_grad(self, work, s):
        """Jacobi: the sweep-start values, and the sweep-start gradient to the rank below."""
        if self.rank > 0 and s > 1:
            work["z_below"] = self._below.get((work["t"], Task.JACOBI_SWEEP, s - 1), "the auxiliary variables from below")
        work["z_src"] = {k: v.clone() for k, v in work["z"].items()}
        work["u_src"] = {k: v.clone() for k, v in work["u"].items()}
        if self.rank > 0:
            self.comm.isend(self._cut_grad(work, work["z_src"], work["u_src"]), self.rank - 1, "down")

    def _jacobi_sweep(self, work, s):
        """Jacobi: auxiliary, weight and dual steps from the sweep-start values; the new top z up."""
        local = self._local
        z, u, kept = work["z"], work["u"], work["a"]
        top_remote = self.rank < self.world - 1
        inside = [k for k in reversed(self.owned) if not (top_remote and k == self.hi - 1)]
        for k in inside + ([self.hi - 1] if top_remote else []):
            if kept.get(k) is None:
                kept[k] = local._forward(k, self._inputs(work, k, src=True))
            if top_remote and k == self.hi - 1:
                grad_fn = self._fixed_grad(self._above.get((work["t"], Task.SEND_GRAD, s), "the gradient from above"))
            else:
                grad_fn = self._grad_from(work, k, work["z_src"], work["u_src"])
            local._boundary_aux_step(k, z[k], u[k], kept[k], grad_fn, work["adam"])
            self._aux_primal(work, s, k, kept[k])
        self._weight_and_dual(work, s, src=True)
        if top_remote and s < self.config.sweeps:
            self.comm.isend(z[self.hi - 1].clone(), self.rank + 1, "up")

    def _skips_dual(self, s):
        """Online, the last sweep's dual update would leave with the mini-batch (BlockADMM.step skips it too)."""
        return self.mode == "online" and s == self.config.sweeps

    def _aux_primal(self, work, s, k, a):
        if self._skips_dual(s):  # the residual reported is then that of the last auxiliary step
            work.setdefault("primal_sq", {})[k] = (work["z"][k] - a).float().square().sum()

    def _weight_and_dual(self, work, s, src):
        local, cfg, B = self._local, self.config, self.B
        z, u = work["z"], work["u"]
        for it in range(cfg.k_w):  # a kept forward serves the first of the k_w steps
            losses = [local._local_loss_and_grads(k, self._inputs(work, k, src), z[k] if k < B - 1 else None,
                                                  u[k] if k < B - 1 else None, work["y"],
                                                  out=work["a"].get(k) if it == 0 else None)
                      for k in range(self.lo, self.hi)]
            self._check_finite(losses)
            for k in range(self.lo, self.hi):
                if local.optimizers[k] is not None:
                    local.optimizers[k].step()
        if self.hi == B:
            work["losses"].append(losses[-1])
        if self._skips_dual(s):
            return
        work["primal_sq"] = {}
        for k in self.owned:
            a = local._forward(k, self._inputs(work, k, src))
            work["primal_sq"][k] = ops.aux_dual_update(z[k], u[k], a, None, rho=local.rho[k], lr=0.0,
                                                       dual_step=cfg.dual_step, prox=local.constraints[k],
                                                       backend=local.backend)
            work["a"][k] = None if cfg.order == "jacobi" else a

    def _check_finite(self, losses):
        if not losses or bool(torch.isfinite(torch.stack([v.float().reshape(()) for v in losses])).all()):
            return
        k = self.lo + next(i for i, v in enumerate(losses) if not bool(torch.isfinite(v)))
        raise NonFiniteError(f"non-finite loss in block {k} (rank {self.rank}) at step {self.step_count}; "
                             f"resume from the last checkpoint with a smaller learning rate, lr_z or rho")

    def _finish_batch(self, work) -> dict:
        z, z0, nb = work["z"], work["z_start"], len(self.owned)
        vals = ([work["losses"][-1].float()] if work["losses"] else []) \
            + [work["primal_sq"][k].float() for k in self.owned] + [z[k].float().square().sum() for k in self.owned] \
            + [(z[k] - z0[k]).float().square().sum() for k in self.owned]
        v = torch.stack(vals).cpu() if vals else torch.zeros(0)
        off = 1 if work["losses"] else 0
        prim_sq, norms, dz = v[off:off + nb], v[off + nb:off + 2 * nb].clamp_min(1e-30).sqrt(), v[off + 2 * nb:]
        if not bool(torch.isfinite(prim_sq).all()):
            raise NonFiniteError(f"non-finite primal residual on rank {self.rank} at step {self.step_count}")
        if self.tables is not None:
            self.tables.scatter(work["index"], [z[k] for k in self.owned], [work["u"][k] for k in self.owned])
        primal = (prim_sq.sqrt() / norms).tolist()
        dual = [self._local.rho[k] * float(d) for k, d in zip(self.owned, dz.sqrt() / norms)]
        self._update_rho(primal)
        self.step_count += 1
        return {"loss": float(v[0]) if off else None, "primal": dict(zip(self.owned, primal)),
                "dual": dict(zip(self.owned, dual))}

    def _update_rho(self, primal):
        """BlockADMM's adaptive penalty, per owned boundary (each rank decides for its own boundaries)."""
        local = self._local
        for k, r in zip(self.owned, primal):
            new = local._rho_growth(k, r)
            if new is None:
                continue
            if self.tables is not None:
                self.tables.scale_duals(self.owned.index(k), local.rho[k] / new)
            for work in self._in_flight.values():  # scaled duals of batches still in flight
                for key in ("u", "u_src"):
                    if key in work and k in work[key]:
                        work[key][k].mul_(local.rho[k] / new)
            local.rho[k] = new

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 1000) -> dict[str, float]:
        """Loss and accuracy of the composed network, the activations passed up the ranks; same result on all."""
        loader = data if isinstance(data, torch.utils.data.DataLoader) else torch.utils.data.DataLoader(data, batch_size=batch_size)
        local, r = self._local, self.rank
        for k in range(self.lo, self.hi):
            local.blocks[k].eval()
        loss_sum, correct, total = 0.0, 0, 0
        try:
            with self.comm.publishing_errors():
                for batch in loader:
                    x, y = batch[0].to(self.device), batch[1].to(self.device)
                    h = x
                    if r > 0:
                        h = self.comm.recv((x.shape[0], *self.shapes[self.lo - 1]), r - 1, "up", "activations for evaluation")
                    for k in range(self.lo, self.hi):
                        h = local.blocks[k](h)
                    if r < self.world - 1:
                        self.comm.isend(h.contiguous(), r + 1, "up")
                    else:
                        loss_sum += float(local.loss_fn(h, y)) * x.shape[0]
                        if y.dim() == 1:
                            correct += int((h.argmax(1) == y).sum())
                        total += x.shape[0]
                self.comm.flush_sends()
        finally:
            for k in range(self.lo, self.hi):
                local.blocks[k].train()
        v = self.comm.all_reduce(torch.tensor([loss_sum, float(correct), float(total)], dtype=torch.float64),
                                 "evaluation totals")
        tot = max(float(v[2]), 1.0)
        return {"loss": float(v[0]) / tot, "acc": float(v[1]) / tot}

    # ------------------------------------------------------------------ epochs
    def fit(self, train, epochs: int, *, batch_size: int = 100, test=None, val=None, checkpoint: str | None = None,
            checkpoint_every: int | None = None, progress: bool = True, eval_train: bool = True,
            on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Train until `epochs` epochs are done (continuing after a resume), like BlockADMM.fit.

        checkpoint: a folder; every rank writes its shard after every epoch and every `checkpoint_every`
        steps (the pipeline drains there). Records are identical on every rank.
        """
        from ..data import make_loader

        if self.tables is not None and len(train) != self.tables.num_samples:
            raise ValueError(f"the training set has {len(train)} samples but the batch-mode tables were built for "
                             f"{self.tables.num_samples}: pass num_samples=len(train)")
        nb, world = self.B - 1, self.world
        for epoch in range(self.epoch, epochs):
            for k in range(self.lo, self.hi):
                if hasattr(self._local.blocks[k], "admm_set_epoch"):
                    self._local.blocks[k].admm_set_epoch(epoch)
            loader = make_loader(train, batch_size, shuffle=True, seed=self.seed, epoch=epoch)
            t0, cpu0, wait0 = time.perf_counter(), time.process_time(), self.comm.wait_s
            # loss, primal and dual residual per boundary, batch count, then per rank CPU and wait seconds
            sums = torch.zeros(1 + 2 * nb + 1 + 2 * world, dtype=torch.float64)
            batches = list(loader)[self.epoch_step:]  # resumed mid-epoch: the batches done already are skipped
            pos = 0
            while pos < len(batches):
                seg = len(batches) - pos
                if checkpoint and checkpoint_every:
                    seg = min(seg, checkpoint_every - self.step_count % checkpoint_every)
                for s in self.run_batches(batches[pos:pos + seg], self.step_count):
                    if s["loss"] is not None:
                        sums[0] += s["loss"]
                    for k, v in s["primal"].items():
                        sums[1 + k] += v
                    for k, v in s["dual"].items():
                        sums[1 + nb + k] += v
                sums[1 + 2 * nb] += seg
                pos += seg
                self.epoch_step += seg
                if checkpoint and checkpoint_every and pos < len(batches) and self.step_count % checkpoint_every == 0:
                    self.save(checkpoint)
            sums[2 + 2 * nb + self.rank] = time.process_time() - cpu0
            sums[2 + 2 * nb + world + self.rank] = self.comm.wait_s - wait0
            tot = self.comm.all_reduce(sums, "epoch statistics")
            wall = time.perf_counter() - t0
            n = max(float(tot[1 + 2 * nb]) / world, 1.0)
            record = {"epoch": epoch + 1, "loss": float(tot[0]) / n, "primal_residual": [float(v) / n for v in tot[1:1 + nb]],
                      "dual_residual": [float(v) / n for v in tot[1 + nb:1 + 2 * nb]], "rho": self._gather_rho(),
                      "wall_s": wall, "world_size": world, "schedule": self.schedule, "staleness": self.staleness,
                      "rank_cpu_s": [round(float(v), 3) for v in tot[2 + 2 * nb:2 + 2 * nb + world]],
                      "rank_wait_s": [round(float(v), 3) for v in tot[2 + 2 * nb + world:]]}
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

    def _gather_rho(self) -> list[float]:
        v = torch.zeros(self.B - 1, dtype=torch.float64)
        for k in self.owned:
            v[k] = self._local.rho[k]
        return self.comm.all_reduce(v, "penalties").tolist()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        local = self._local
        return {
            "format": "blockadmm-distributed-1", "rank": self.rank, "world_size": self.world,
            "partition": [list(p) for p in self.partition], "config": asdict(self.config), "mode": self.mode,
            "schedule": self.schedule, "staleness": self.staleness, "shapes": self.shapes,
            "blocks": {k: local.blocks[k].state_dict() for k in range(self.lo, self.hi)},
            "optimizers": {k: None if local.optimizers[k] is None else local.optimizers[k].state_dict()
                           for k in range(self.lo, self.hi)},
            "rho": list(local.rho), "rho_window": copy.deepcopy(local._rho_window), "rho_prev": list(local._rho_prev),
            "step_count": self.step_count, "epoch": self.epoch, "epoch_step": self.epoch_step,
            "history": copy.deepcopy(self.history), "rng": torch.get_rng_state(),
            "tables": None if self.tables is None else self.tables.state_dict(),
        }

    def _agree(self, failed: BaseException | None, what: str) -> None:
        """Collective: every rank learns whether any rank failed `what`; this rank's own error comes first."""
        if failed is not None:
            self.comm.publish_error(failed)
        v = self.comm.all_reduce(torch.tensor([0.0 if failed is None else 1.0]), what)
        if failed is not None:
            raise failed
        if float(v[0]) > 0:
            raise RankFailure(f"another rank failed ({what}); see its error", None)

    def save(self, folder: str) -> str:
        """Every rank writes its shard atomically under folder/step-<n>/; then rank 0 commits `latest.json`.
        Collective: call on every rank. Returns the step folder."""
        step_dir = os.path.join(folder, step_dir_name(self.step_count))
        failed = None
        try:
            write_shard(step_dir, self.rank, self.world, self.state_dict(), self.tables)
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            failed = e
        self._agree(failed, f"writing the checkpoint shards under {step_dir}; latest.json not updated")
        if self.rank == 0:
            commit(folder, {"step": self.step_count, "epoch": self.epoch, "epoch_step": self.epoch_step,
                            "world_size": self.world, "partition": [list(p) for p in self.partition],
                            "dir": os.path.basename(step_dir)})
        self.comm.all_reduce(torch.zeros(1), "the checkpoint commit")
        return step_dir

    def load(self, folder: str) -> None:
        """Resume from the newest committed checkpoint in `folder` (collective: call on every rank)."""
        failed, state = None, None
        try:
            state = load_shard(folder, self.rank, self.world, self.partition, map_location=self.device)
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            failed = e
        self._agree(failed, f"loading the checkpoint shards from {folder}")
        self.load_state_dict(state)

    def load_state_dict(self, state: dict) -> None:
        local = self._local
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
            local.blocks[k].load_state_dict(state["blocks"][k])
            if local.optimizers[k] is not None:
                local.optimizers[k].load_state_dict(state["optimizers"][k])
        local.config = self.config = ADMMConfig(**state["config"])
        local.rho = list(state["rho"])
        local._rho_window = copy.deepcopy(state["rho_window"])
        local._rho_prev = list(state["rho_prev"])
        self.step_count, self.epoch, self.epoch_step = state["step_count"], state["epoch"], state["epoch_step"]
        self.comm.step = self.step_count
        self.history = copy.deepcopy(state["history"])
        torch.set_rng_state(state["rng"].cpu())
