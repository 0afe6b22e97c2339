"""DistributedBlockADMM: Block-ADMM with its blocks spread over the ranks of a process group, each rank
driving the engine's primitives (blockadmm.engine) on the blocks it owns."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..blocks import check_chain, fusable_linear, make_blocks
from ..callbacks import Callback, EarlyStopping
from ..engine import ADMMConfig, BatchState, Engine, EpochScheduledBlock
from ..engine.batch import check_batch, on_device
from ..loop import epoch_means
from ..prox import as_prox
from ..tables import VariableTables
from ..trainer import default_optimizer
from . import stats as step_stats
from .comm import Comm, Inbox, default_store
from .options import check_partition, resolve_options
from .schedule import Task, build_schedule, last_task, messages, partition_blocks, step_costs, task_cost_model
from .shards import load_shards, save_shards, shard_state


class DistributedBlockADMM:
    """Block-ADMM with the blocks spread over the ranks of a process group (see blockadmm.distributed).

    Call on every rank after :func:`init_distributed`, with the same arguments as :class:`BlockADMM`
    (every rank builds the whole model from the same seed and keeps only its blocks), plus:

    schedule: "sync" (one mini-batch at a time, Jacobi order unless `order=` or the preset says otherwise) or
    "pipeline" (several mini-batches in flight, top-down order within each). staleness: pipeline only,
    how many earlier batches' updates a rank may not have applied yet (default world_size - 1).
    partition: [(lo, hi), ...] block groups per rank (default: balanced by a cost model).
    timeout: seconds any wait on another rank may take before the run stops with a RankFailure.
    """

    def __init__(
        self,
        model,
        *,
        input_shape,
        blocks=None,
        mode: str = "online",
        num_samples: int | None = None,
        optimizer: Callable = default_optimizer,
        loss: Callable | None = None,
        constraints=None,
        config: ADMMConfig | None = None,
        preset: str | None = None,
        schedule: str = "sync",
        staleness: int | None = None,
        partition: Sequence[tuple[int, int]] | None = None,
        timeout: float = 60.0,
        table_storage: str = "device",
        table_dir: str | None = None,
        backend: str = "auto",
        fused_linear: bool = True,
        shared_optimizer: bool | None = None,
        device=None,
        seed: int = 0,
        **config_overrides,
    ):
        if not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialized: call blockadmm.distributed.init_distributed() "
                "(under torchrun) or start the processes with blockadmm.distributed.launch()"
            )
        if schedule not in ("sync", "pipeline"):
            raise ValueError(f"schedule must be 'sync' or 'pipeline', got {schedule!r}")
        if mode not in ("online", "batch"):
            raise ValueError(f"mode must be 'online' or 'batch', got {mode!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.mode, self.seed, self.schedule = mode, seed, schedule
        config, optimizer, shared_optimizer = resolve_options(
            preset, config, config_overrides, mode, schedule, optimizer, shared_optimizer
        )
        if config.order == "bottom-up":
            raise ValueError("the distributed trainer runs order='jacobi' or 'top-down' (bottom-up is not offered)")
        self.staleness = 0 if schedule == "sync" else (self.world - 1 if staleness is None else int(staleness))
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if device is None:
            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.device = torch.device(device)

        # the whole chain is checked and costed; then this rank keeps its own blocks only
        chain = make_blocks(model, blocks)
        self.input_shape = tuple(input_shape)
        first = next((p for b in chain for p in b.parameters()), None)
        self.shapes = check_chain(chain, self.input_shape, device=None if first is None else first.device)
        self.B = len(chain)
        costs = step_costs(chain, [fused_linear and fusable_linear(b) is not None for b in chain])
        self.partition = [
            tuple(p) for p in (partition or partition_blocks([sum(c.values()) for c in costs], self.world))
        ]
        check_partition(self.partition, self.world, self.B)
        self.lo, self.hi = self.partition[self.rank]
        self.own = range(self.lo, self.hi)
        self.owned = [k for k in self.own if k < self.B - 1]  # the boundaries this rank owns: its blocks' outputs
        # placeholders stand for the blocks of other ranks: the engine is only ever called on this rank's range
        self.blocks = nn.ModuleList([b if k in self.own else nn.Identity() for k, b in enumerate(chain)]).to(
            self.device
        )
        nb = self.B - 1
        rho = config.rho if isinstance(config.rho, (list, tuple)) else [config.rho] * nb
        if len(rho) != nb:
            raise ValueError(f"rho has {len(rho)} values but the model has {nb} block boundaries")
        proxes = [None] * nb
        for k, c in (constraints or {}).items():
            if not 0 <= k < nb:
                raise ValueError(
                    f"constraint on boundary {k}, but boundaries are 0..{nb - 1} (boundary k is block k's output)"
                )
            proxes[k] = as_prox(c)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self._classes = self.shapes[-1][-1] if loss is None else None  # the default cross-entropy's labels
        self.dtype = next((p.dtype for p in self.blocks.parameters() if p.is_floating_point()), torch.float32)
        self.engine = Engine(
            self.blocks,
            config=config,
            rho=[float(r) for r in rho],
            constraints=proxes,
            loss_fn=self.loss_fn,
            default_loss=loss is None,
            online=mode == "online",
            fused_linear=fused_linear,
            backend=backend,
        )
        trainable = [t and k in self.own for k, t in enumerate(self.engine.trainable)]
        self.shared_optimizer = bool(shared_optimizer)
        if self.shared_optimizer:  # one optimizer over this rank's trainable blocks
            params = [p for b, t in zip(self.blocks, trainable) if t for p in b.parameters()]
            shared = optimizer(params) if params else None
            self.engine.optimizers = [shared if t else None for t in trainable]
        else:
            self.engine.optimizers = [
                optimizer(list(b.parameters())) if t else None for b, t in zip(self.blocks, trainable)
            ]
        self._scheduled = [self.blocks[k] for k in self.own if isinstance(self.blocks[k], EpochScheduledBlock)]
        self.tables = None
        if mode == "batch":
            if num_samples is None:
                raise ValueError("batch mode keeps variables per training sample: pass num_samples=len(train_dataset)")
            path = None if table_dir is None else os.path.join(table_dir, f"rank{self.rank}")
            # this rank's boundaries only (plus the seen flags): nothing is gathered to one rank
            self.tables = VariableTables(
                num_samples, [self.shapes[k] for k in self.owned], storage=table_storage, device=self.device, path=path
            )
        self.timeout = float(timeout)
        self.comm = Comm(self.rank, self.world, self.device, self.timeout, default_store(), dtype=self.dtype)
        self.comm.join()
        self._task_cost = task_cost_model(costs, self.partition, sweeps=config.sweeps, online=mode == "online")
        self._tasks = {
            Task.AUX_DOWN: self._aux_down,
            Task.UPDATE: self._update,
            Task.SEND_GRAD: self._send_grad,
            Task.JACOBI_SWEEP: self._jacobi_sweep,
        }
        self.step_count = 0
        self.epoch = 0
        self.epoch_step = 0  # batches of the current epoch done
        self.history: list[dict] = []
        self._in_flight: dict[int, BatchState] = {}  # batches in flight: a penalty change rescales their duals too
        self._batch_info: dict[int, dict] = {}  # per batch in flight (by step): start time, network metrics, terms

    @property
    def config(self) -> ADMMConfig:
        return self.engine.config

    @property
    def rho(self) -> list[float]:
        """The penalty per boundary (meaningful on the boundaries this rank owns)."""
        return self.engine.rho

    @property
    def optimizers(self) -> list:
        return self.engine.optimizers

    def owned_blocks(self) -> dict[int, nn.Module]:
        return {k: self.blocks[k] for k in self.own}

    # ------------------------------------------------------------------ one segment of batches
    def run_batches(self, batches: Sequence, first_step: int) -> list[dict]:
        """Train on `batches` ([x, y, index] each, the same list on every rank) with the configured schedule;
        drains the pipeline before returning. Returns this rank's per-batch statistics."""
        cfg, world, r = self.config, self.world, self.rank
        n = len(batches)
        if n == 0:
            return []
        plans = build_schedule(
            n, world, order=cfg.order, sweeps=cfg.sweeps, staleness=self.staleness, task_cost=self._task_cost
        )
        sizes = [int(b[0].shape[0]) for b in batches]
        self._below = self._above = None
        if r > 0:
            shape = self.shapes[self.lo - 1]
            keys = messages(plans[r - 1], r - 1, world, cfg.sweeps, "up")
            self._below = Inbox(self.comm, r - 1, "up", keys, lambda key: (sizes[key[0]], *shape))
        if r < world - 1:
            top_shape = self.shapes[self.hi - 1]
            keys = messages(plans[r + 1], r + 1, world, cfg.sweeps, "down")
            self._above = Inbox(self.comm, r + 1, "down", keys, lambda key: (sizes[key[0]], *top_shape))
        stats: list[dict | None] = [None] * n
        done = last_task(cfg.order)
        with self.comm.publishing_errors():
            for t, task, s in plans[r]:
                self.comm.step = first_step + t
                if task is Task.FORWARD:
                    self._in_flight[t] = self._forward(t, batches[t], first_step + t)
                    continue
                self._tasks[task](t, self._in_flight[t], s)
                if s == cfg.sweeps and task is done:
                    stats[t] = self._finish_batch(self._in_flight.pop(t))
            self.comm.flush_sends()
        return stats

    # ------------------------------------------------------------------ tasks (sweep s counts from 1)
    def _forward(self, t, batch, step) -> BatchState:
        """The forward through this rank's blocks from the input received from below; z and u start."""
        t0 = time.perf_counter()
        x, y = on_device(batch[0], batch[1], self.device, self.dtype)
        num_samples = None if self.tables is None else self.tables.num_samples
        index = check_batch(
            x,
            y,
            None if len(batch) < 3 else batch[2],
            input_shape=self.input_shape,
            n_classes=self._classes,
            num_samples=num_samples,
        )
        for k in self.own:
            self.blocks[k].train()
        state = self.engine.new_batch(x if self.lo == 0 else None, y, index, step=step, epoch=self.epoch)
        # block lo's input: z_{lo-1}, which at the start of a batch is the forward below wherever the forward
        # is used (online: everywhere; batch mode: on the rows seen for the first time)
        h = None if self.rank == 0 else self._below.get((t, Task.FORWARD, 0), "the forward activations")
        if self.tables is None:
            self.engine.init_online(state, self.own, h=h)
        else:
            self.engine.init_batch(state, self.own, *self.tables.gather(index), h=h)
        info = self._batch_info[step] = {"t0": t0}
        if self.hi == self.B:
            info["network"] = step_stats.network_metrics(self, state)
        if h is not None:
            state.z[self.lo - 1] = h
        if self.rank < self.world - 1:
            self.comm.isend(state.z[self.hi - 1].clone(), self.rank + 1, "up")
        return state

    def _set_input(self, state, z_below):
        """A new z_{lo-1} from the rank below: block lo's kept forward is stale."""
        state.z[self.lo - 1] = z_below
        if state.z_src is not state.z:
            state.z_src[self.lo - 1] = z_below
        state.kept[self.lo] = None

    def _gradient_down(self, state):
        """The gradient of block lo's term in z_{lo-1}, for the rank below."""
        self.comm.isend(
            self.engine.consumer_grad(state, self.lo - 1, state.z_src[self.lo - 1], state.kept[self.lo]),
            self.rank - 1,
            "down",
        )

    def _from_above(self, t, task, s):
        grad = self._above.get((t, task, s), "the gradient from above")
        return lambda z_k: grad  # fixed for the k_z steps of this sweep

    def _aux_down(self, t, state, s):
        """Top-down: auxiliary steps from the top down (the top one with the gradient from above), the new
        top z up, then the gradient of block lo's term down."""
        engine, top_remote = self.engine, self.rank < self.world - 1
        engine.begin_sweep(state, s - 1)
        for k in engine.aux_order(self.owned):
            remote = top_remote and k == self.hi - 1
            engine.aux_step(state, k, self._from_above(t, Task.AUX_DOWN, s) if remote else None)
            if remote:
                self.comm.isend(state.z[k].clone(), self.rank + 1, "up")
        if self.rank > 0:
            self._gradient_down(state)

    def _update(self, t, state, s):
        """Top-down: weight and dual steps, once the new z_{lo-1} from below is here."""
        if self.rank > 0:
            self._set_input(state, self._below.get((t, Task.AUX_DOWN, s), "the new auxiliary variables from below"))
        self._weight_and_dual(state, s)

    def _send_grad(self, t, state, s):
        """Jacobi: the sweep-start values (z_{lo-1} from below after the first sweep), and the sweep-start
        gradient of block lo's term down."""
        if self.rank > 0 and s > 1:
            self._set_input(state, self._below.get((t, Task.JACOBI_SWEEP, s - 1), "the auxiliary variables from below"))
        self.engine.begin_sweep(state, s - 1)
        if self.rank > 0:
            self.engine.kept_forward(state, self.lo)  # kept for this sweep's own steps on block lo too
            self._gradient_down(state)

    def _jacobi_sweep(self, t, state, s):
        """Jacobi: auxiliary, weight and dual steps from the sweep-start values (the top boundary last, with
        the gradient from above); the new top z up."""
        engine, top_remote = self.engine, self.rank < self.world - 1
        inside = [k for k in engine.aux_order(self.owned) if not (top_remote and k == self.hi - 1)]
        for k in inside:
            engine.aux_step(state, k)
        if top_remote:
            engine.aux_step(state, self.hi - 1, self._from_above(t, Task.SEND_GRAD, s))
        self._weight_and_dual(state, s)
        if top_remote and s < self.config.sweeps:
            self.comm.isend(state.z[self.hi - 1].clone(), self.rank + 1, "up")

    def _weight_and_dual(self, state, s):
        self._batch_info[state.step]["terms"] = self.engine.weight_step(state, self.own)
        if not self.engine.skips_dual(s - 1):
            self.engine.dual_step(state, self.owned)

    def _finish_batch(self, state) -> dict:
        """This rank's statistics of a finished batch (distributed.stats: what each rank knows)."""
        head, primal, dual = self.engine.statistics(state, self.owned)
        info = self._batch_info.pop(state.step)
        rho = {k: self.rho[k] for k in self.owned}  # the penalties this step used
        if self.tables is not None:
            self.tables.scatter(state.index, [state.z[k] for k in self.owned], [state.u[k] for k in self.owned])
        self.step_count += 1
        for k, factor in self.engine.update_rho(dict(zip(self.owned, primal))).items():
            if self.tables is not None:
                self.tables.scale_duals(self.owned.index(k), factor)  # scaled duals: u = y / rho
            for other in self._in_flight.values():  # and those of the batches still in flight
                for u in {id(t): t for t in (other.u[k], other.u_src[k]) if t is not None}.values():
                    u.mul_(factor)
        stats = {"penalty": {k: float(t) for k, t in zip(self.own, info["terms"]) if k < self.B - 1},
                 "primal": dict(zip(self.owned, primal)), "dual": dict(zip(self.owned, dual)), "rho": rho,
                 "step_s": time.perf_counter() - info["t0"]}
        if self.hi == self.B:
            network = [float(v) for v in info["network"]] if info["network"] is not None else [None]
            stats.update(loss=network[0], acc=network[1] if len(network) == 2 else None, head_loss=head)
        return stats

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 1000) -> dict[str, float]:
        """Loss and accuracy of the composed network, the activations passed up the ranks; same result on all."""
        loader = (
            data
            if isinstance(data, torch.utils.data.DataLoader)
            else torch.utils.data.DataLoader(data, batch_size=batch_size)
        )
        r = self.rank
        for k in self.own:
            self.blocks[k].eval()
        loss_sum, correct, total = 0.0, 0, 0
        try:
            with self.comm.publishing_errors():
                for batch in loader:
                    x, y = batch[0].to(self.device), batch[1].to(self.device)
                    h = x
                    if r > 0:
                        h = self.comm.recv(
                            (x.shape[0], *self.shapes[self.lo - 1]), r - 1, "up", "activations for evaluation"
                        )
                    for k in self.own:
                        h = self.blocks[k](h)
                    if r < self.world - 1:
                        self.comm.isend(h.contiguous(), r + 1, "up")
                    else:
                        loss_sum += float(self.loss_fn(h, y)) * x.shape[0]
                        if y.dim() == 1:
                            correct += int((h.argmax(1) == y).sum())
                        total += x.shape[0]
                self.comm.flush_sends()
        finally:
            for k in self.own:
                self.blocks[k].train()
        v = self.comm.all_reduce(
            torch.tensor([loss_sum, float(correct), float(total)], dtype=torch.float64), "evaluation totals"
        )
        tot = max(float(v[2]), 1.0)
        return {"loss": float(v[0]) / tot, "acc": float(v[1]) / tot}

    # ------------------------------------------------------------------ epochs
    def fit(
        self,
        train,
        epochs: int,
        *,
        batch_size: int = 100,
        test=None,
        val=None,
        checkpoint: str | None = None,
        checkpoint_every: int | None = None,
        progress: bool = True,
        eval_train: bool = True,
        callbacks: Sequence[Callback] = (),
        on_epoch: Callable[[dict], None] | None = None,
    ) -> list[dict]:
        """Train until `epochs` epochs are done (continuing after a resume), like BlockADMM.fit.

        checkpoint: a folder; every rank writes its shard after every epoch and every `checkpoint_every`
        steps (the pipeline drains there). Records and step statistics are identical on every rank; the steps'
        are gathered once per epoch, so `callbacks` (on the ranks given them) see each epoch's steps at its end.
        """
        from ..data import make_loader

        if any(isinstance(cb, EarlyStopping) for cb in callbacks):
            raise ValueError("EarlyStopping needs the whole model in one process: use BlockADMM.fit")
        if self.tables is not None and len(train) != self.tables.num_samples:
            raise ValueError(
                f"the training set has {len(train)} samples but the batch-mode tables were built for "
                f"{self.tables.num_samples}: pass num_samples=len(train)"
            )
        nb, world = self.B - 1, self.world
        for cb in callbacks:
            cb.on_train_begin(self)
        for epoch in range(self.epoch, epochs):
            for block in self._scheduled:
                block.admm_set_epoch(epoch)
            loader = make_loader(train, batch_size, shuffle=True, seed=self.seed, epoch=epoch)
            t0, cpu0, wait0 = time.perf_counter(), time.process_time(), self.comm.wait_s
            batches = list(loader)[self.epoch_step :]  # resumed mid-epoch: the batches done already are skipped
            first_step, rows, pos = self.step_count, [], 0
            while pos < len(batches):
                seg = len(batches) - pos
                if checkpoint and checkpoint_every:
                    seg = min(seg, checkpoint_every - self.step_count % checkpoint_every)
                rows += self.run_batches(batches[pos : pos + seg], self.step_count)
                pos += seg
                self.epoch_step += seg
                if checkpoint and checkpoint_every and pos < len(batches) and self.step_count % checkpoint_every == 0:
                    self.save(checkpoint)
            # the steps' statistics and, per rank, CPU and wait seconds, summed over the ranks in one transfer
            times = torch.zeros(2 * world, dtype=torch.float64)
            times[self.rank], times[world + self.rank] = time.process_time() - cpu0, self.comm.wait_s - wait0
            table = step_stats.pack(rows, nb, world, self.rank)
            tot = self.comm.all_reduce(torch.cat([table.flatten(), times]), "epoch statistics")
            wall = time.perf_counter() - t0
            steps = step_stats.unpack(tot[: table.numel()].view_as(table), nb)
            for cb in callbacks:
                for i, s in enumerate(steps):
                    cb.on_step(self, first_step + i + 1, s)
            record = {
                "epoch": epoch + 1,
                **(epoch_means([(s, int(b[0].shape[0])) for s, b in zip(steps, batches)]) if steps else {}),
                "rho": self._gather_rho(),
                "wall_s": wall,
                "world_size": world,
                "schedule": self.schedule,
                "staleness": self.staleness,
                "rank_cpu_s": [round(float(v), 3) for v in tot[table.numel() : table.numel() + world]],
                "rank_wait_s": [round(float(v), 3) for v in tot[table.numel() + world :]],
            }
            if eval_train:
                record["train_acc"] = self.evaluate(train)["acc"]
            for name, ds in (("val", val), ("test", test)):
                if ds is not None:
                    ev = self.evaluate(ds)
                    record[f"{name}_acc"], record[f"{name}_loss"] = ev["acc"], ev["loss"]
            self.epoch, self.epoch_step = epoch + 1, 0
            self.history.append(record)
            for cb in callbacks:
                cb.on_epoch(self, record)
            if checkpoint:
                self.save(checkpoint)
            if on_epoch:
                on_epoch(record)
            if progress and self.rank == 0:
                shown = ("loss" if "loss" in record else "head_loss", "train_acc", "test_acc")
                print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {record[k]:.4f}" for k in shown if k in record)
                      + f", {wall:.2f} s", flush=True)
        for cb in callbacks:
            cb.on_train_end(self)
        return self.history

    def _gather_rho(self) -> list[float]:
        v = torch.zeros(self.B - 1, dtype=torch.float64)
        for k in self.owned:
            v[k] = self.rho[k]
        return self.comm.all_reduce(v, "penalties").tolist()

    # ------------------------------------------------------------------ checkpoints (blockadmm.distributed.shards)
    def state_dict(self) -> dict:
        return shard_state(self)

    def save(self, folder: str) -> str:
        """Every rank writes its shard under folder/step-<n>/ (atomic, refusing non-finite state), then rank 0
        commits `latest.json`. Collective: call on every rank. Returns the step folder."""
        return save_shards(self, folder)

    def load(self, folder: str) -> None:
        """Resume from the newest committed checkpoint in `folder`, every shard checked before anything changes
        (collective: call on every rank)."""
        load_shards(self, folder)
