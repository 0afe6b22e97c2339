"""The Stochastic Block-ADMM trainer (DESIGN §1) on one process, driving the engine (blockadmm.engine).

Blocks f_0 … f_{B-1}; boundary k (k < B-1) carries the auxiliary variable z_k (the output of block k, the
input of block k+1) and the scaled dual u_k. One sweep on a mini-batch: the auxiliary step, boundary by
boundary (top-down by default); the weight step, every block on its own term; the dual step (skipped in the
last sweep of online mode, whose u would leave with the mini-batch). In online mode z starts at the forward
values and u at zero for each mini-batch; in batch mode both live in per-sample tables (blockadmm.tables).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .blocks import check_chain, make_blocks
from .engine import AUX_STEPS, ORDERS, PRESETS, ADMMConfig, Engine, EpochScheduledBlock, get_preset
from .engine.batch import check_batch, on_device
from .engine.checkpoint import (
    TABLE_FILES,
    CheckpointError,
    NonFiniteError,
    check_module_state,
    check_optimizer_state,
    load_checkpoint,
    save_checkpoint,
)
from .engine.divergence import DivergenceError, DivergenceGuard
from .prox import as_prox
from .tables import TableMismatch, VariableTables

__all__ = [
    "AUX_STEPS",
    "ORDERS",
    "PRESETS",
    "ADMMConfig",
    "BlockADMM",
    "NonFiniteError",
    "StepStats",
    "adam",
    "default_optimizer",
]


@dataclass
class StepStats:
    loss: float
    # per boundary: |z_k - f_k(z_{k-1})| / |z_k| after the last dual step (batch mode); online, where the last
    # sweep has no dual step, after the last auxiliary step, with the f_k(z_{k-1}) that step used
    primal: list[float]
    dual: list[float]  # per boundary: rho_k |z_k(end) - z_k(start)| / |z_k|
    rho: list[float]


def adam(lr: float = 1e-3) -> Callable:
    """A factory of per-block Adam optimizers; fused (one pass over all of a block's tensors) on CPU and
    CUDA, which on this package's small blocks halves the step time of the per-tensor loop."""

    def make(params):
        params = list(params)
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, fused=fused or None)

    return make


default_optimizer = adam(1e-3)


class BlockADMM:
    """Train `model` cut into blocks with Stochastic Block-ADMM.

    model: an nn.Sequential (with `blocks` = number of blocks or cut indices) or a list of block modules.
    input_shape: per-sample input shape, for the chain check and the tables.
    mode: "online" (variables per mini-batch) or "batch" (per-sample tables; needs num_samples and
    a dataset that yields sample indices).
    optimizer: factory params -> torch.optim.Optimizer, one per block (default Adam, lr 1e-3).
    shared_optimizer: call the factory once, on every trainable block's parameters, instead of once per block
    (the same updates for per-element rules such as Adam or SGD, in one call; an optimizer that couples
    parameters would couple the blocks). Default: the preset's choice, else False.
    loss: task loss on the last block's output, averaged over the batch (default cross-entropy).
    constraints: {boundary: Prox | "nonneg" | callable} applied to the auxiliary variables.
    Remaining keywords are ADMMConfig fields (rho, lr_z, sweeps, order, ...), or pass config=.
    preset: a named recipe (blockadmm.engine.PRESETS); keywords override its fields, and without an explicit
    optimizer the blocks get Adam with the preset's learning rate.

    Blocks that are not trained by gradient descent implement blockadmm.engine.ADMMBlock (their own local
    step and input gradient), and may implement AuxStepBlock (their output boundary's auxiliary step) and
    EpochScheduledBlock (fit() tells them the epoch).
    """

    def __init__(
        self,
        model,
        *,
        input_shape: Sequence[int],
        blocks=None,
        mode: str = "online",
        num_samples: int | None = None,
        optimizer: Callable = default_optimizer,
        loss: Callable | None = None,
        constraints: dict[int, object] | None = None,
        config: ADMMConfig | None = None,
        preset: str | None = None,
        table_storage: str = "device",
        table_dir: str | None = None,
        backend: str = "auto",
        fused_linear: bool = True,
        shared_optimizer: bool | None = None,
        device=None,
        seed: int = 0,
        **config_overrides,
    ):
        if mode not in ("online", "batch"):
            raise ValueError(f"mode must be 'online' or 'batch', got {mode!r}")
        if preset is not None:
            if config is not None:
                raise ValueError("pass either preset= or config=, not both (override preset fields as keywords)")
            recipe = get_preset(preset)
            config = ADMMConfig.preset(preset)
            if recipe.mode is not None and recipe.mode != mode:
                raise ValueError(f"preset {preset!r} is the recipe for mode={recipe.mode!r}, got mode={mode!r}: "
                                 f"pass mode={recipe.mode!r} or the preset of the other mode")
            if optimizer is default_optimizer:
                optimizer = adam(recipe.weight_lr)
            if shared_optimizer is None:
                shared_optimizer = recipe.shared_optimizer
        config = copy.deepcopy(config) if config is not None else ADMMConfig()
        names = [f.name for f in fields(ADMMConfig)]
        for k, v in config_overrides.items():
            if k not in names:
                raise TypeError(f"unknown argument {k!r}; trainer options are ADMMConfig fields: {names}")
            setattr(config, k, v)
        config.__post_init__()
        self.device = torch.device(device or "cpu")
        self.blocks = nn.ModuleList(make_blocks(model, blocks)).to(self.device)
        self.input_shape = tuple(input_shape)
        self.shapes = check_chain(self.blocks, self.input_shape, self.device)
        self.n_blocks = len(self.blocks)
        nb = self.n_blocks - 1  # boundaries
        rho = config.rho if isinstance(config.rho, (list, tuple)) else [config.rho] * nb
        if len(rho) != nb:
            raise ValueError(f"rho has {len(rho)} values but the model has {nb} block boundaries")
        self.constraints = [None] * nb
        for k, c in (constraints or {}).items():
            if not 0 <= k < nb:
                raise ValueError(f"constraint on boundary {k}, but boundaries are 0..{nb - 1} "
                                 f"(boundary k is block k's output)")
            self.constraints[k] = as_prox(c)
        self.mode, self.backend, self.seed = mode, backend, seed
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self._default_loss = loss is None
        self.engine = Engine(self.blocks, config=config, rho=[float(r) for r in rho], constraints=self.constraints,
                             loss_fn=self.loss_fn, default_loss=loss is None, online=mode == "online",
                             fused_linear=fused_linear, backend=backend)
        trainable = self.engine.trainable
        self.shared_optimizer = bool(shared_optimizer)
        if self.shared_optimizer:
            params = [p for b, t in zip(self.blocks, trainable) if t for p in b.parameters()]
            shared = optimizer(params) if params else None
            self.optimizers = [shared if t else None for t in trainable]  # block k -> its optimizer
        else:
            self.optimizers = [optimizer(list(b.parameters())) if t else None for b, t in zip(self.blocks, trainable)]
        self.engine.optimizers = self.optimizers
        # each optimizer once: what a checkpoint holds
        self._optimizer_list = list({id(o): o for o in self.optimizers if o is not None}.values())
        self._scheduled = [b for b in self.blocks if isinstance(b, EpochScheduledBlock)]
        self.tables = None
        if mode == "batch":
            if num_samples is None:
                raise ValueError("batch mode keeps variables per training sample: pass num_samples=len(train_dataset)")
            self.tables = VariableTables(num_samples, self.shapes[:-1], storage=table_storage, device=self.device,
                                         path=table_dir)
        self.step_count = 0
        self.epoch = 0
        self.history: list[dict] = []
        self.resumes: list[dict] = []  # hyperparameters changed on resume (load(override=...)), with when
        n_out = self.shapes[-1][-1]
        self.divergence = DivergenceGuard(chance=math.log(n_out) if self._default_loss and n_out > 1 else None)

    @property
    def config(self) -> ADMMConfig:
        return self.engine.config

    @config.setter
    def config(self, config: ADMMConfig) -> None:
        self.engine.set_config(config)

    @property
    def rho(self) -> list[float]:
        """The current penalty per boundary (the adaptive schedule may have grown it)."""
        return self.engine.rho

    @rho.setter
    def rho(self, values) -> None:
        self.engine.rho[:] = [float(r) for r in values]

    # ---------------------------------------------------------------- one mini-batch
    def _check_batch(self, x, y, index):
        """The batch checks (engine.batch), with this trainer's shapes; the index as int64."""
        return check_batch(x, y, index, input_shape=self.input_shape,
                           n_classes=self.shapes[-1][-1] if self._default_loss else None,
                           num_samples=None if self.tables is None else self.tables.num_samples)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepStats:
        """One Block-ADMM iteration (`sweeps` sweeps) on a mini-batch."""
        x, y = self._on_device(x, y)
        index = self._check_batch(x, y, index)
        for b in self.blocks:
            b.train()
        engine, blocks, boundaries = self.engine, range(self.n_blocks), range(self.n_blocks - 1)
        state = engine.new_batch(x, y, index, step=self.step_count, epoch=self.epoch)
        if self.tables is None:
            engine.init_online(state, blocks)
        else:
            engine.init_batch(state, blocks, *self.tables.gather(index))
        for sweep in range(self.config.sweeps):
            engine.begin_sweep(state, sweep)
            for k in engine.aux_order(boundaries):
                engine.aux_step(state, k)
            engine.weight_step(state, blocks)
            if not engine.skips_dual(sweep):
                engine.dual_step(state, boundaries)
        loss, primal, dual = engine.statistics(state, boundaries)
        if self.tables is not None:
            self.tables.scatter(index, state.z, state.u)
        self.step_count += 1
        stats = StepStats(loss=loss, primal=primal, dual=dual, rho=list(self.rho))
        for k, factor in engine.update_rho(dict(enumerate(primal))).items():
            if self.tables is not None:
                self.tables.scale_duals(k, factor)  # scaled duals: u = y / rho
        return stats

    # ---------------------------------------------------------------- inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain composed network F(x): auxiliary variables exist only in training."""
        for b in self.blocks:
            x = b(x)
        return x

    __call__ = forward

    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 1000) -> dict[str, float]:
        """Mean task loss and accuracy of F on a dataset yielding (x, y[, index]) or on a loader."""
        if isinstance(data, torch.utils.data.DataLoader):
            loader = data
        else:
            loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
        was = [b.training for b in self.blocks]
        for b in self.blocks:
            b.eval()
        total, loss_sum, correct = 0, 0.0, 0
        for batch in loader:
            x, y = self._on_device(batch[0], batch[1])
            out = self.forward(x)
            loss_sum += float(self.loss_fn(out, y)) * x.shape[0]
            if y.dim() == 1:
                correct += int((out.argmax(1) == y).sum())
            total += x.shape[0]
        for b, t in zip(self.blocks, was):
            b.train(t)
        if not math.isfinite(loss_sum):
            raise NonFiniteError("evaluation gave a non-finite loss: the data hold NaN/inf, or the weights do; "
                                 "check the data (an accuracy from it would mean nothing)")
        return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}

    def _on_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = next((p.dtype for p in self.blocks.parameters() if p.is_floating_point()), torch.float32)
        return on_device(x, y, self.device, dtype)

    # ---------------------------------------------------------------- epochs
    def fit(
        self,
        train,
        epochs: int,
        *,
        batch_size: int = 100,
        test=None,
        val=None,
        checkpoint: str | None = None,
        progress: bool = True,
        on_epoch: Callable[[dict], None] | None = None,
        stop_on_divergence: bool = False,
    ) -> list[dict]:
        """Train until `epochs` epochs are done (continuing from self.epoch after a resume).

        Data order is a function of (seed, epoch), so a run resumed from a checkpoint repeats exactly
        what the uninterrupted run would have done. With `checkpoint`, the state is saved atomically
        after every epoch; a non-finite value stops training and leaves the last good checkpoint.
        Divergence without NaN (self.divergence: the loss at chance level or growing) is a warning in the log
        and the epoch's record ("divergence"), or, with stop_on_divergence, a DivergenceError.
        """
        from tqdm.auto import tqdm

        from .data import make_loader

        if len(train) == 0:
            raise ValueError("the training set is empty")
        if self.tables is not None and len(train) != self.tables.num_samples:
            raise ValueError(f"the training set has {len(train)} samples but the batch-mode tables were built for "
                             f"{self.tables.num_samples}: pass num_samples=len(train)")
        def last_good() -> str:
            exists = checkpoint and os.path.exists(checkpoint)
            return f" The last good checkpoint is {checkpoint} (epoch {self.epoch})." if exists else ""

        for epoch in range(self.epoch, epochs):
            diverging = None
            for b in self._scheduled:  # blocks with epoch schedules (NMF: update W, then freeze it)
                b.admm_set_epoch(epoch)
            loader = make_loader(train, batch_size, shuffle=True, seed=self.seed, epoch=epoch)
            t0 = time.perf_counter()
            sums, n = None, 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for batch in bar:
                x, y = batch[0], batch[1]
                index = batch[2] if len(batch) > 2 else None
                try:
                    s = self.step(x, y, index)
                except NonFiniteError as e:
                    raise NonFiniteError(f"{e}{last_good()}") from e
                reason = self.divergence.update(s.loss)
                if reason and diverging is None:
                    diverging = f"training diverges at step {self.step_count} (epoch {epoch + 1}): {reason}"
                    if stop_on_divergence:
                        raise DivergenceError(f"{diverging}; stopped (stop_on_divergence). Resume from the last "
                                              f"checkpoint with a smaller learning rate, lr_z or rho.{last_good()}")
                    logging.getLogger(__name__).warning("%s", diverging)
                vec = [s.loss] + s.primal + s.dual
                sums = vec if sums is None else [a + b for a, b in zip(sums, vec)]
                n += 1
                bar.set_postfix(loss=f"{s.loss:.3f}")
            wall = time.perf_counter() - t0
            nb = self.n_blocks - 1
            record = {
                "epoch": epoch + 1,
                "loss": sums[0] / n,
                "primal_residual": [v / n for v in sums[1 : 1 + nb]],
                "dual_residual": [v / n for v in sums[1 + nb :]],
                "rho": list(self.rho),
                "wall_s": wall,
                "train_acc": self.evaluate(train)["acc"],
            }
            for name, ds in (("val", val), ("test", test)):
                if ds is not None:
                    ev = self.evaluate(ds)
                    record[f"{name}_acc"], record[f"{name}_loss"] = ev["acc"], ev["loss"]
            if diverging:
                record["divergence"] = diverging
            self.epoch = epoch + 1
            self.history.append(record)
            if checkpoint:
                self.save(checkpoint)
            if on_epoch:
                on_epoch(record)
        return self.history

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resume needs, as tensors and plain containers (memmap tables travel as files: save)."""
        return {
            "config": asdict(self.config),
            "mode": self.mode,
            "shapes": self.shapes,
            "blocks": [b.state_dict() for b in self.blocks],
            "shared_optimizer": self.shared_optimizer,
            "optimizers": [o.state_dict() for o in self._optimizer_list],
            "rho": list(self.rho),
            "rho_window": copy.deepcopy(self.engine.rho_schedule.window),
            "rho_prev": list(self.engine.rho_schedule.prev),
            "step_count": self.step_count,
            "epoch": self.epoch,
            "history": copy.deepcopy(self.history),
            "resumes": copy.deepcopy(self.resumes),
            "divergence": self.divergence.state_dict(),
            "rng": torch.get_rng_state(),
            "tables": None if self.tables is None else self.tables.state_dict(),
        }

    def load_state_dict(self, state: dict, override: dict | None = None) -> dict[str, tuple]:
        """Restore `state`, checked whole first: on a mismatch (CheckpointError, TableMismatch) nothing changed.
        override: values that replace the checkpoint's (ADMMConfig fields, and "lr": every optimizer's learning
        rate); returns {name: (checkpoint's value, value now used)} for those that differ, kept in self.resumes."""
        override = dict(override or {})
        self._check_fits(state)
        config, rho, lr = self._with_override(state, override)
        # everything checked: now change the trainer
        if self.tables is not None:
            self.tables.load_state_dict(state["tables"], state.get(TABLE_FILES))
            for k, (old, new) in enumerate(zip(state["rho"], rho)):
                if old != new:
                    self.tables.scale_duals(k, old / new)  # scaled duals: u = y / rho
        for b, sd in zip(self.blocks, state["blocks"]):
            b.load_state_dict(sd)
        lrs = sorted({g["lr"] for sd in state["optimizers"] for g in sd["param_groups"]})
        for o, sd in zip(self._optimizer_list, state["optimizers"]):
            o.load_state_dict(sd)
            for g in o.param_groups:
                g["lr"] = g["lr"] if lr is None else lr
        old = {**state["config"], "rho": list(state["rho"]), "lr": lrs[0] if len(lrs) == 1 else lrs}
        new = {**asdict(config), "rho": rho, "lr": old["lr"] if lr is None else lr}
        changed = {k: (old[k], new[k]) for k in override if old[k] != new[k]}
        self.config, self.rho = config, rho
        self.engine.rho_schedule.window = copy.deepcopy(state["rho_window"])
        self.engine.rho_schedule.prev = list(state["rho_prev"])
        self.step_count, self.epoch = state["step_count"], state["epoch"]
        self.history = copy.deepcopy(state["history"])
        self.resumes = copy.deepcopy(state["resumes"])
        self.divergence.load_state_dict(state["divergence"])
        if changed:
            self.resumes.append({"epoch": self.epoch, "step": self.step_count, "changed": changed})
            logging.getLogger(__name__).info("resumed at epoch %d with %s", self.epoch,
                                             ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        torch.set_rng_state(state["rng"])
        return changed

    def _check_fits(self, state: dict) -> None:
        """Raise CheckpointError / TableMismatch unless every part of `state` fits this trainer."""
        if state["shapes"] != self.shapes or len(state["blocks"]) != self.n_blocks:
            raise CheckpointError(f"the checkpoint is for blocks with output shapes {state['shapes']}, "
                                  f"this model has {self.shapes}")
        if state["mode"] != self.mode:
            raise CheckpointError(f"the checkpoint was trained in {state['mode']} mode, "
                                  f"this trainer is in {self.mode} mode")
        shared, optimizer_states = state["shared_optimizer"], state["optimizers"]
        if shared != self.shared_optimizer or len(optimizer_states) != len(self._optimizer_list):
            raise CheckpointError(f"the checkpoint holds {len(optimizer_states)} optimizer(s) "
                                  f"(shared_optimizer={shared}), this trainer {len(self._optimizer_list)} "
                                  f"(shared_optimizer={self.shared_optimizer}): "
                                  f"build the trainer with shared_optimizer={shared}")
        for k, (b, sd) in enumerate(zip(self.blocks, state["blocks"])):
            check_module_state(b, sd, f"block {k}'s state")
        for o, sd in zip(self._optimizer_list, optimizer_states):
            check_optimizer_state(o, sd, "an optimizer's state")
        if (state["tables"] is None) != (self.tables is None):
            raise TableMismatch("the checkpoint and this trainer disagree on having batch-mode tables")
        if self.tables is not None:
            self.tables.check_state(state["tables"], state.get(TABLE_FILES))
        rng = state["rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise CheckpointError("the checkpoint's random number generator state is not a CPU generator state")
        if set(state["config"]) - {f.name for f in fields(ADMMConfig)} or len(state["rho"]) != self.n_blocks - 1:
            raise CheckpointError(f"the checkpoint's config {sorted(state['config'])} or rho {state['rho']} do not "
                                  f"fit this trainer")

    def _with_override(self, state: dict, override: dict) -> tuple[ADMMConfig, list[float], float | None]:
        """(config, rho per boundary, learning rate or None): the checkpoint's, with `override` applied and checked."""
        unknown = set(override) - {f.name for f in fields(ADMMConfig)} - {"lr"}
        if unknown:
            raise TypeError(f"unknown override {sorted(unknown)}: pass ADMMConfig fields or 'lr'")
        config = ADMMConfig(**{**state["config"], **{k: v for k, v in override.items() if k != "lr"}})
        rho = [float(r) for r in state["rho"]]
        if "rho" in override:
            given = config.rho if isinstance(config.rho, (list, tuple)) else [config.rho] * len(rho)
            if len(given) != len(rho):
                raise ValueError(f"override rho has {len(given)} values but the model has {len(rho)} block boundaries")
            rho = [float(r) for r in given]
        lr = override.get("lr")
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"override lr must be a finite number > 0, got {lr!r}")
        return config, rho, lr

    def save(self, path: str) -> None:
        """Write the checkpoint `path` atomically (blockadmm.engine.checkpoint); refuses non-finite state."""
        memmap = self.tables is not None and self.tables.storage == "memmap"
        save_checkpoint(path, self.state_dict(), tables=self.tables.files() if memmap else None)

    def load(self, path: str, override: dict | None = None) -> dict[str, tuple]:
        """Resume from the checkpoint `path` (verified, never unpickling code), with `override` as in
        load_state_dict; returns which hyperparameters changed. A mismatch names the file and changes nothing."""
        state = load_checkpoint(path, map_location=self.device)
        try:
            return self.load_state_dict(state, override)
        except (CheckpointError, TableMismatch) as e:
            raise type(e)(f"{path}: {e}") from None
        except KeyError as e:
            raise CheckpointError(f"{path} lacks the part {e} of a trainer's state") from None
