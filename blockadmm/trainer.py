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

from . import loop
from .blocks import check_chain, compile_blocks, make_blocks
from .callbacks import Callback
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
from .engine.divergence import BestWeights, DivergenceError, DivergenceGuard, DivergenceWarning
from .engine.presets import adam, default_optimizer
from .engine.state_values import check_state_values
from .engine.watch import ConstraintWatch
from .prox import as_prox
from .tables import TableMismatch, VariableTables

__all__ = [
    "AUX_STEPS",
    "ORDERS",
    "PRESETS",
    "ADMMConfig",
    "BlockADMM",
    "DivergenceError",
    "DivergenceWarning",
    "NonFiniteError",
    "StepStats",
    "adam",
    "default_optimizer",
]


@dataclass
class StepStats:
    """What one step measured on its mini-batch; lists hold one value per boundary k (block k's output).

    loss: the network's task loss on the batch, the composed forward F(x) before this step's updates (what a
    backprop loop reports); acc: F(x)'s accuracy on the batch, for integer class labels only (else None).
    The augmented Lagrangian's terms in the last sweep's weight step: head_loss, the last block's task loss at its
    auxiliary input z_{B-2}; penalty[k], (rho_k/2m)|z_k - f_k(z_{k-1}) + u_k|^2 (a block with its own local step:
    its own objective). primal_residual[k]: |z_k - f_k(z_{k-1})| / |z_k| after the last dual step (online, where
    the last sweep has no dual step: after the last auxiliary step); dual_residual[k]: rho_k |z_k - z_k(start)| /
    |z_k|; rho[k]: the penalty used; step_s: the step's wall time in seconds.
    """

    loss: float
    acc: float | None
    head_loss: float
    penalty: list[float]
    primal_residual: list[float]
    dual_residual: list[float]
    rho: list[float]
    step_s: float


class BlockADMM:
    """Train `model` cut into blocks with Stochastic Block-ADMM.

    model: a list of block modules (each one's output feeds the next; a residual stage with its skip connection
    inside is one block), or an nn.Sequential with `blocks` = number of blocks (balanced by parameter count) or cut
    indices; any module with blocks=1 trains as one block (plain backprop). The blocks are trained in place: the
    model's own state_dict holds the trained weights and works without this library. A torch.compile'd module is
    unwrapped (trained through the module inside it).
    compile: True (or a dict of torch.compile options) runs the blocks that go through autograd compiled
    (blockadmm.blocks.CompiledBlock: a few graphs per block, compiled in the first steps, then reused; the fused
    linear op, closed-form heads and blocks with their own rules stay as they are); inference stays eager.
    input_shape: per-sample input shape, for the chain check and the tables.
    mode: "online" (variables per mini-batch) or "batch" (per-sample tables; needs num_samples and
    a dataset that yields sample indices).
    optimizer: factory params -> torch.optim.Optimizer, one per block (default Adam, lr 1e-3). `tr.optimizers`
    lists the optimizers, each once (one when shared_optimizer); `tr.engine.optimizers[k]` is block k's (None for a
    block with its own local step or without parameters).
    scheduler: factory optimizer -> torch.optim.lr_scheduler, applied once per optimizer in `tr.optimizers` and
    stepped once per epoch by fit (ReduceLROnPlateau with val_loss, else the training loss); saved in checkpoints.
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
        scheduler: Callable | None = None,
        compile: bool | dict = False,
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
        given = make_blocks(model, blocks)
        # what save_weights writes: the model as given (a list of blocks: as nn.Sequential(*blocks))
        self.model = (given[0] if len(given) == 1 else model if isinstance(model, nn.Sequential)
                      else nn.Sequential(*given))
        # a layer that Block-ADMM trains by its own rules becomes its block (an NMFLayer: an NMFBlock sharing its basis)
        self.blocks = nn.ModuleList([b.admm_block() if hasattr(b, "admm_block") else b for b in given]).to(self.device)
        self.dtype = next((p.dtype for p in self.blocks.parameters() if p.is_floating_point()), torch.float32)
        self.input_shape = tuple(input_shape)
        self.shapes = check_chain(self.blocks, self.input_shape, self.device, dtype=self.dtype)
        for j in range(1, len(self.blocks)):  # what a block refuses to be trained on (NMF: per-pixel codes)
            if hasattr(self.blocks[j], "admm_check_input"):
                self.blocks[j].admm_check_input(self.blocks[j - 1], self.shapes[j - 1])
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
        for j, b in enumerate(self.blocks):  # what a block needs around it (NMF: non-negative in and out), unless given
            for k, name in ((j - 1, "admm_input_constraint"), (j, "admm_output_constraint")):
                if 0 <= k < nb and self.constraints[k] is None and getattr(b, name, None) is not None:
                    self.constraints[k] = as_prox(getattr(b, name))
        self.mode, self.backend, self.seed = mode, backend, seed
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self._default_loss = loss is None
        stepped = compile_blocks(self.blocks, {} if compile is True else dict(compile),
                                 fused_linear=fused_linear) if compile else self.blocks
        self.engine = Engine(stepped, config=config, rho=[float(r) for r in rho], constraints=self.constraints,
                             loss_fn=self.loss_fn, default_loss=loss is None, online=mode == "online",
                             fused_linear=fused_linear, backend=backend)
        trainable = self.engine.trainable
        self.shared_optimizer = bool(shared_optimizer)
        if self.shared_optimizer:
            params = [p for b, t in zip(self.blocks, trainable) if t for p in b.parameters()]
            shared = optimizer(params) if params else None
            self.engine.optimizers = [shared if t else None for t in trainable]  # block k -> its optimizer
        else:
            self.engine.optimizers = [optimizer(list(b.parameters())) if t else None
                                      for b, t in zip(self.blocks, trainable)]
        # each optimizer once: what the schedulers step and a checkpoint holds
        self.optimizers = list({id(o): o for o in self.engine.optimizers if o is not None}.values())
        self.schedulers = [scheduler(o) for o in self.optimizers] if scheduler is not None else []
        self.epoch_scheduled = [b for b in self.blocks if isinstance(b, EpochScheduledBlock)]
        self.stop_training = False  # a callback sets it to end fit() after the current epoch
        self.metric_names: set[str] = set()  # the evaluated history keys of the running fit (train_*, val_*, test_*)
        self.tables = None
        if mode == "batch":
            if num_samples is None:
                raise ValueError("batch mode keeps variables per training sample: pass num_samples=len(train_dataset)")
            self.tables = VariableTables(num_samples, self.shapes[:-1], storage=table_storage, device=self.device,
                                         path=table_dir, dtype=self.dtype)
        self.step_count = 0
        self.epoch = 0
        self.history: list[dict] = []
        self.resumes: list[dict] = []  # hyperparameters changed on resume (load(override=...)), with when
        n_out = self.n_outputs
        self.divergence = DivergenceGuard(chance=math.log(n_out) if self._default_loss and n_out > 1 else None)
        self.constraint_watch = ConstraintWatch(self.constraints, self.divergence.chance)
        self.best_weights = BestWeights()  # in memory only: after a resume, the weights resumed from come first

    @property
    def n_outputs(self) -> int:
        """Outputs per sample of the last block (1 for a scalar output, e.g. after nn.Flatten(0))."""
        return self.shapes[-1][-1] if self.shapes[-1] else 1

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
    def prepare_batch(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None):
        """(x, y, index) on the trainer's device in the blocks' dtype, checked (engine.batch); 1-D float targets of
        a model with one output become a column, so that a regression loss compares (n, 1) with (n, 1) rather than
        broadcasting to (n, n)."""
        x, y = on_device(x, y, self.device, self.dtype)
        if y.is_floating_point() and y.dim() == 1 and self.shapes[-1] == (1,):
            y = y.unsqueeze(1)
        return x, y, self._check_batch(x, y, index)

    def _check_batch(self, x, y, index):
        """The batch checks (engine.batch), with this trainer's shapes; the index as int64."""
        return check_batch(x, y, index, input_shape=self.input_shape,
                           n_classes=self.n_outputs if self._default_loss else None,
                           num_samples=None if self.tables is None else self.tables.num_samples)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepStats:
        """One Block-ADMM iteration (`sweeps` sweeps) on a mini-batch (x, y[, index]); x is cast to the blocks'
        dtype and integer labels to int64 (engine.batch)."""
        t0 = time.perf_counter()
        x, y, index = self.prepare_batch(x, y, index)
        for b in self.blocks:
            b.train()
        engine, blocks, boundaries = self.engine, range(self.n_blocks), range(self.n_blocks - 1)
        state = engine.new_batch(x, y, index, step=self.step_count, epoch=self.epoch)
        if self.tables is None:
            engine.init_online(state, blocks)
        else:
            engine.init_batch(state, blocks, *self.tables.gather(index))
        network = engine.network_metrics(state)  # F(x) before the update, from the forward the step starts with
        for sweep in range(self.config.sweeps):
            engine.begin_sweep(state, sweep)
            for k in engine.aux_order(boundaries):
                engine.aux_step(state, k)
            terms = engine.weight_step(state, blocks)
            if not engine.skips_dual(sweep):
                engine.dual_step(state, boundaries)
        _, primal, dual = engine.statistics(state, boundaries)
        if self.tables is not None:
            self.tables.scatter(index, state.z, state.u)
        self.step_count += 1
        values = torch.stack(network + terms).float().cpu().tolist()
        stats = StepStats(loss=values[0], acc=values[1] if len(network) == 2 else None, head_loss=values[-1],
                          penalty=values[len(network):-1], primal_residual=primal, dual_residual=dual,
                          rho=list(self.rho), step_s=0.0)
        for k, factor in engine.update_rho(dict(enumerate(primal))).items():
            if self.tables is not None:
                self.tables.scale_duals(k, factor)  # scaled duals: u = y / rho
        self.constraint_watch.update(state, stats.loss, self.step_count)
        stats.step_s = time.perf_counter() - t0
        return stats


    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain composed network F(x) (auxiliary variables exist only in training), as inference runs it: in
        eval mode (dropout off, batch norm on its running statistics) and without autograd; the blocks' modes are
        put back afterwards. x is cast to the model's dtype and moved to the trainer's device."""
        x = torch.as_tensor(x).to(self.device, self.dtype)
        was = [b.training for b in self.blocks]
        try:
            for b in self.blocks:
                b.eval()
                x = b(x)
        finally:
            for b, t in zip(self.blocks, was):
                b.train(t)
        return x

    __call__ = predict = forward

    def evaluate(self, data, batch_size: int = 1000) -> dict[str, float]:
        """{"loss": mean task loss of F} on `data` (a Dataset, a DataLoader or an iterable of (x, y[, index])
        batches), plus {"acc": accuracy} when the targets are integer class labels."""
        return loop.evaluate(self, data, batch_size=batch_size)

    # ---------------------------------------------------------------- epochs
    def fit(self, train, epochs: int, *, batch_size: int = 100, val=None, test=None, checkpoint: str | None = None,
            progress: bool = True, eval_train: bool = True, eval_every: int = 1, callbacks: Sequence[Callback] = (),
            on_epoch: Callable[[dict], None] | None = None, on_divergence: str = "rollback") -> list[dict]:
        """Train until `epochs` epochs are done (continuing from self.epoch after a resume); returns the history.

        train, val, test: a Dataset (batched here, in an order that is a function of (seed, epoch), so a resumed
        run repeats what the uninterrupted one would have done; positions serve as sample indices for batch mode),
        a DataLoader or any iterable of (x, y) / (x, y, index) batches. Inputs are cast to the model's dtype.
        History, one record per epoch: loss (and acc, for class labels) = the means over the epoch's batches of
        StepStats.loss / .acc (the network's, before each update), head_loss, penalty, primal_residual,
        dual_residual, step_s (means), rho, lr (each optimizer's, this epoch's), wall_s; then, every `eval_every`
        epochs and after the last, train_loss / train_acc over the whole training set (eval_train), val_* and
        test_*. callbacks: blockadmm.callbacks (loggers, EarlyStopping); a callback ends training by setting
        `stop_training`. checkpoint: saved atomically after every epoch; a non-finite value stops training and
        leaves the last good checkpoint. on_epoch(record): called after every epoch.
        on_divergence: what a collapse without NaN does (self.divergence, engine.divergence.DivergenceGuard: the
        training loss or a boundary's residual rising far above its best within a few steps; its thresholds and
        rollback_factor are its fields). "warn": a DivergenceWarning (and the log); "stop": a DivergenceError;
        "restore": the weights of the step with the lowest training loss are put back and training stops;
        "rollback" (default): those weights and their optimizer state are put back and training goes on with every
        learning rate times divergence.rollback_factor. Each event goes to the epoch's record ("divergence",
        "divergence_events"). A loss stuck at chance level is warned about (stopped by "stop" / "restore").
        """
        return loop.fit(self, train, epochs, batch_size=batch_size, val=val, test=test, checkpoint=checkpoint,
                        progress=progress, eval_train=eval_train, eval_every=eval_every, callbacks=callbacks,
                        on_epoch=on_epoch, on_divergence=on_divergence)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything a resume needs, as tensors and plain containers (memmap tables travel as files: save)."""
        return {
            "config": asdict(self.config),
            "mode": self.mode,
            "shapes": self.shapes,
            "blocks": [b.state_dict() for b in self.blocks],
            "shared_optimizer": self.shared_optimizer,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [sch.state_dict() for sch in self.schedulers],
            "rho": list(self.rho),
            "rho_window": copy.deepcopy(self.engine.rho_schedule.window),
            "rho_prev": list(self.engine.rho_schedule.prev),
            "step_count": self.step_count,
            "epoch": self.epoch,
            "history": copy.deepcopy(self.history),
            "resumes": copy.deepcopy(self.resumes),
            "divergence": self.divergence.state_dict(),
            "curvature": [b.state_dict() for b in self.engine.bounds],
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
        for sch, sd in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(sd)
        for o, sd in zip(self.optimizers, state["optimizers"]):
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
        for bound, sd in zip(self.engine.bounds, state.get("curvature") or [{}] * self.n_blocks):
            bound.load_state_dict(sd)
        if changed:
            self.resumes.append({"epoch": self.epoch, "step": self.step_count, "changed": changed})
            logging.getLogger(__name__).info("resumed at epoch %d with %s", self.epoch,
                                             ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        torch.set_rng_state(state["rng"])
        return changed

    def _check_fits(self, state: dict) -> None:
        """Raise CheckpointError / TableMismatch unless every part of `state` fits this trainer."""
        check_state_values(state, self.n_blocks - 1)
        if state["shapes"] != self.shapes or len(state["blocks"]) != self.n_blocks:
            raise CheckpointError(f"the checkpoint is for blocks with output shapes {state['shapes']}, "
                                  f"this model has {self.shapes}")
        if state["mode"] != self.mode:
            raise CheckpointError(f"the checkpoint was trained in {state['mode']} mode, "
                                  f"this trainer is in {self.mode} mode")
        shared, optimizer_states = state["shared_optimizer"], state["optimizers"]
        if shared != self.shared_optimizer or len(optimizer_states) != len(self.optimizers):
            raise CheckpointError(f"the checkpoint holds {len(optimizer_states)} optimizer(s) "
                                  f"(shared_optimizer={shared}), this trainer {len(self.optimizers)} "
                                  f"(shared_optimizer={self.shared_optimizer}): "
                                  f"build the trainer with shared_optimizer={shared}")
        for k, (b, sd) in enumerate(zip(self.blocks, state["blocks"])):
            check_module_state(b, sd, f"block {k}'s state")
        for o, sd in zip(self.optimizers, optimizer_states):
            check_optimizer_state(o, sd, "an optimizer's state")
        if len(state["schedulers"]) != len(self.schedulers):
            raise CheckpointError(f"the checkpoint holds {len(state['schedulers'])} learning-rate scheduler(s), this "
                                  f"trainer {len(self.schedulers)}: build the trainer with the run's scheduler=")
        if (state["tables"] is None) != (self.tables is None):
            raise TableMismatch("the checkpoint and this trainer disagree on having batch-mode tables")
        if self.tables is not None:
            self.tables.check_state(state["tables"], state.get(TABLE_FILES))
        try:  # absent from checkpoints of earlier versions
            self.engine.check_curvature_state(state.get("curvature") or [{}] * self.n_blocks)
        except ValueError as e:
            raise CheckpointError(f"the checkpoint's curvature-cap state does not fit this model: {e}") from None

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

    def save_weights(self, path: str) -> None:
        """Write the trained model's plain state_dict with torch.save (atomically): the state_dict of the model
        passed to the trainer (a list of blocks: of nn.Sequential(*blocks)), loadable by anyone with
        torch.load(path, weights_only=True) and model.load_state_dict, without this library. save() is the
        checkpoint to resume training from."""
        tmp = f"{path}.tmp"
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, tmp)
        os.replace(tmp, path)

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
