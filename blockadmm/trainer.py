"""The Stochastic Block-ADMM trainer (DESIGN §1).

Blocks f_0 … f_{B-1}; boundary k (k < B-1) carries the auxiliary variable z_k (the output of block k,
the input of block k+1) and the scaled dual u_k. One sweep on a mini-batch:

1. auxiliary step, boundary by boundary (top-down: the last boundary first), `k_z` prox-gradient steps
   on  (rho_k/2)|z_k - f_k(z_{k-1}) + u_k|^2 + [block k+1's term in z_k, or the task loss];
2. weight step, every block on its own term only (`k_w` optimizer steps); backprop never leaves a block;
3. dual step  u_k += dual_step * (z_k - f_k(z_{k-1})) — except in the last sweep of online mode, whose
   u would be dropped with the mini-batch.

Under order="jacobi" every block reads its neighbours' values from the start of the sweep (the
previous iterate), which is what lets blocks run on different devices at the same time: block k gets
z_{k-1} from below and the gradient through block k+1 from above, both as they were when the sweep began.

In online mode z starts at the forward values and u at zero for each mini-batch; in batch mode both
live in per-sample tables (blockadmm.tables) and a mini-batch gathers and writes back its rows.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from . import ops
from .blocks import check_chain, fusable_linear, make_blocks
from .prox import as_prox
from .ref.linear_block import derivative_from_output, linear_cross_entropy
from .tables import TableMismatch, VariableTables

ORDERS = ("top-down", "bottom-up", "jacobi")
_ORDER_ALIASES = {"backward": "top-down", "forward": "bottom-up"}
AUX_STEPS = ("grad", "sign", "adam")
# the "adam" auxiliary step: per-element moment estimates, kept only within one step() call
AUX_ADAM_BETAS = (0.9, 0.999)
AUX_ADAM_EPS = 1e-8

# Named recipes (ADMMConfig.preset / BlockADMM(preset=...)). "weight_lr" is the Adam learning rate of
# the per-block optimizers that BlockADMM uses when no optimizer is passed.
_DEEP = {"rho": 1.0, "lr_z": 0.3, "sweeps": 3, "k_z": 1, "k_w": 1, "order": "top-down", "dual_step": 1.0, "aux_step": "sign"}
PRESETS = {
    # the defaults: shallow nets (a few blocks) and ReLU MLPs of any depth tried (2-8 hidden layers); tuned from
    # PyTorch's default init
    "default": {"config": {}, "weight_lr": 1e-3},
    # one sweep per mini-batch with a softer penalty and a faster Adam, online: about a third of the default's
    # work per step at its validation accuracy on shallow MLPs (results/tune-fast.json, chosen on
    # validation among rho x lr_z x Adam rate); one optimizer over all blocks (shared_optimizer)
    "fast": {"config": {"sweeps": 1, "rho": 0.125, "lr_z": 0.3}, "weight_lr": 5e-3, "mode": "online", "shared_optimizer": True},
    # deep narrow saturating nets (8+ sigmoid layers of 256, one layer per block) where backprop stalls
    # from forward-signal collapse: fixed-size sign step on z, top-down, 3 sweeps, Adam 3e-3 per block.
    # Tuned for PyTorch's default init: from Glorot gain 4 (init="xavier") it fails, the defaults do better there
    "deep": {"config": _DEEP, "weight_lr": 3e-3},
    # the same nets in batch mode (per-sample tables): a softer penalty, chosen on validation
    # (results/experiments/tune-deep-batch); online, rho 0.25 fails. "mode": BlockADMM refuses the other one
    "deep-batch": {"config": {**_DEEP, "rho": 0.25}, "weight_lr": 3e-3, "mode": "batch"},
}



class NonFiniteError(FloatingPointError):
    """NaN or inf reached a loss, an auxiliary/dual variable or a weight during training."""


@dataclass
class ADMMConfig:
    """Hyperparameters of Stochastic Block-ADMM. The defaults train the shipped MLPs without tuning.

    rho: penalty per boundary (one number for all, or a list). lr_z: step size of the auxiliary step.
    sweeps: sweeps per mini-batch. k_z / k_w: auxiliary / weight steps per sweep. order: "top-down"
    (default), "bottom-up" (Gauss-Seidel) or "jacobi". aux_step: "grad" (plain prox-gradient, default),
    "sign" (the fixed-size normalized step z -= lr_z*sign(grad), for deep saturating nets) or "adam"
    (Adam-like per-element scaling z -= lr_z*m_hat/(sqrt(v_hat)+eps); its moments live only inside one
    step() call, across its k_z steps and sweeps, and start from zero on every mini-batch, in online and
    batch mode alike, so it adds no per-sample state; its first step equals the sign step). rho_schedule "adaptive" multiplies rho by
    rho_factor (up to rho_max) when a boundary's mean primal residual over rho_check_every steps did not
    fall below rho_stall times that of the window before. The plain gradient step of boundary k uses
    min(lr_z, 1/rho_k), so that a growing rho never makes the penalty term overshoot.
    """

    rho: object = 1.0
    lr_z: float = 0.3
    sweeps: int = 3
    k_z: int = 1
    k_w: int = 1
    order: str = "top-down"
    dual_step: float = 1.0
    aux_step: str = "grad"
    rho_schedule: str = "constant"
    rho_factor: float = 2.0
    rho_max: float = 100.0
    rho_check_every: int = 40
    rho_stall: float = 0.9

    def __post_init__(self):
        self.order = _ORDER_ALIASES.get(self.order, self.order)
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS} (or 'forward'/'backward'), got {self.order!r}")
        if self.aux_step not in AUX_STEPS:
            raise ValueError(f"aux_step must be one of {AUX_STEPS}, got {self.aux_step!r}")
        if self.rho_schedule not in ("constant", "adaptive"):
            raise ValueError(f"rho_schedule must be 'constant' or 'adaptive', got {self.rho_schedule!r}")
        for name in ("sweeps", "k_z", "k_w"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_z <= 0:
            raise ValueError(f"lr_z must be > 0, got {self.lr_z}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ADMMConfig":
        """A named recipe, with any field overridden.

        Every preset was tuned from PyTorch's default init (models.init_weights, init="default").
        "default": the ADMMConfig defaults (plain gradient step on z, lr_z 0.3, top-down, 3 sweeps) — shallow nets
        and ReLU MLPs. "fast": one sweep, rho=0.125, with Adam 5e-3 and one shared optimizer (BlockADMM), online
        only: on MNIST-5k's 3-block MLP it matched the defaults' validation accuracy (10 epochs, 3 seeds, worst of
        the last 5 epochs: 93.8% vs 93.5%) at a third of the GEMMs per step. Shallow nets only: in the depth
        grid (results/experiments/depth, 10 epochs) it trains 2-8 tanh, 2-4 ReLU and 2 sigmoid layers as well as
        the defaults, and fails (at most 32%) from 8 ReLU, 16 tanh and 4 sigmoid layers on. "deep": deep narrow saturating nets (e.g. 8 sigmoid layers of 256, one layer per
        block) where backprop stalls: sign step lr_z=0.3, k_z=1, top-down, 3 sweeps, rho=1, dual step 1;
        use it with Adam lr 3e-3 per block (BlockADMM(preset="deep") does). It is unstable on ReLU nets
        and fragile (bottom-up order, one sweep, k_z=2, rho=0.1 or SGD inside blocks fail); online it
        collapses late at 8 sigmoid layers (stop on validation, 10-20 epochs), and 16 sigmoid layers train
        only in batch mode. "deep-batch": "deep" with rho=0.25, for mode="batch" (per-sample tables), where
        rho=1 trains slowly and leaves seeds stuck (40 epochs, mean validation over 3 seeds, rho 0.25 vs 1:
        92.0% vs 74.1% at 8 sigmoid layers, 89.7% vs 61.5% at 16; results/experiments/tune-deep-batch).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        values = {**PRESETS[name]["config"], **overrides}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown ADMMConfig fields {sorted(unknown)}")
        return cls(**values)


@dataclass
class StepStats:
    loss: float
    # per boundary: |z_k - f_k(z_{k-1})| / |z_k| after the last dual step (batch mode); online, where the last
    # sweep has no dual step, after the last auxiliary step, with the f_k(z_{k-1}) that step used
    primal: List[float]
    dual: List[float]  # per boundary: rho_k |z_k(end) - z_k(start)| / |z_k|
    rho: List[float]


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
    shared_optimizer: call the factory once, on every trainable block's parameters, instead of once per block.
    For per-element rules (Adam, SGD) the updates are the same, in one optimizer call per weight step instead
    of one per block (on small blocks torch.optim's per-call cost is comparable to the update itself); an
    optimizer that couples parameters (a global gradient clip, LBFGS) would couple the blocks. Default: the
    preset's choice, else False.
    loss: task loss on the last block's output, averaged over the batch (default cross-entropy).
    constraints: {boundary: Prox | "nonneg" | callable} applied to the auxiliary variables.
    Remaining keywords are ADMMConfig fields (rho, lr_z, sweeps, order, ...), or pass config=.
    preset: a named recipe (ADMMConfig.preset: "default", "fast", "deep", "deep-batch"); keywords override its fields,
    and without an explicit optimizer the blocks get Adam with the preset's learning rate.

    Block hooks, for blocks that are not trained by gradient descent (DeepFacto's NMF layer):
    `block.admm_local_step(inp, target, dual, *, rho, y, loss_fn) -> loss` replaces the optimizer step
    (the block gets no optimizer; the last block receives target=dual=None and rho=None);
    `block.admm_input_grad(z_in, z_out, u_out, *, rho, y, loss_fn) -> g` replaces backprop through the
    block when the auxiliary step of its input needs the gradient of the block's term in that input;
    `block.admm_aux_update(z, u, a, grad_fn, *, rho, lr, prox)` replaces the auxiliary step of the block's
    output boundary (in place on z; grad_fn(z) gives the consuming term's gradient), e.g. mirror steps;
    `block.admm_set_epoch(epoch)` is called by fit() at the start of every epoch (schedules).
    """

    def __init__(
        self,
        model,
        *,
        input_shape: Sequence[int],
        blocks=None,
        mode: str = "online",
        num_samples: Optional[int] = None,
        optimizer: Callable = default_optimizer,
        loss: Optional[Callable] = None,
        constraints: Optional[Dict[int, object]] = None,
        config: Optional[ADMMConfig] = None,
        preset: Optional[str] = None,
        table_storage: str = "device",
        table_dir: Optional[str] = None,
        backend: str = "auto",
        fused_linear: bool = True,
        shared_optimizer: Optional[bool] = None,
        device=None,
        seed: int = 0,
        **config_overrides,
    ):
        if mode not in ("online", "batch"):
            raise ValueError(f"mode must be 'online' or 'batch', got {mode!r}")
        if preset is not None:
            if config is not None:
                raise ValueError("pass either preset= or config=, not both (override preset fields as keywords)")
            config = ADMMConfig.preset(preset)
            wants = PRESETS[preset].get("mode")
            if wants is not None and wants != mode:
                raise ValueError(f"preset {preset!r} is the recipe for mode={wants!r}, got mode={mode!r}: "
                                 f"pass mode={wants!r} or the preset of the other mode")
            if optimizer is default_optimizer:
                lr = PRESETS[preset]["weight_lr"]
                optimizer = adam(lr)
            if shared_optimizer is None:
                shared_optimizer = PRESETS[preset].get("shared_optimizer", False)
        config = copy.deepcopy(config) if config is not None else ADMMConfig()
        for k, v in config_overrides.items():
            if k not in {f.name for f in fields(ADMMConfig)}:
                raise TypeError(f"unknown argument {k!r}; trainer options are ADMMConfig fields: {[f.name for f in fields(ADMMConfig)]}")
            setattr(config, k, v)
        config.__post_init__()
        self.config = config
        self.device = torch.device(device or "cpu")
        self.blocks = nn.ModuleList(make_blocks(model, blocks)).to(self.device)
        self.input_shape = tuple(input_shape)
        self.shapes = check_chain(self.blocks, self.input_shape, self.device)
        self.n_blocks = len(self.blocks)
        nb = self.n_blocks - 1  # boundaries
        rho = config.rho if isinstance(config.rho, (list, tuple)) else [config.rho] * nb
        if len(rho) != nb:
            raise ValueError(f"rho has {len(rho)} values but the model has {nb} block boundaries")
        self.rho = [float(r) for r in rho]
        self.constraints = [None] * nb
        for k, c in (constraints or {}).items():
            if not 0 <= k < nb:
                raise ValueError(f"constraint on boundary {k}, but boundaries are 0..{nb - 1} (boundary k is block k's output)")
            self.constraints[k] = as_prox(c)
        self.mode, self.backend, self.seed = mode, backend, seed
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self._default_loss = loss is None
        # blocks with their own update rule (`admm_local_step`) get no optimizer
        trainable = [not hasattr(b, "admm_local_step") and any(p.requires_grad for p in b.parameters()) for b in self.blocks]
        self.shared_optimizer = bool(shared_optimizer)
        if self.shared_optimizer:
            params = [p for b, t in zip(self.blocks, trainable) if t for p in b.parameters()]
            shared = optimizer(params) if params else None
            self.optimizers = [shared if t else None for t in trainable]  # block k -> its optimizer
        else:
            self.optimizers = [optimizer(list(b.parameters())) if t else None for b, t in zip(self.blocks, trainable)]
        # each optimizer once: what the weight step steps and a checkpoint holds
        self._optimizer_list = list({id(o): o for o in self.optimizers if o is not None}.values())
        self._fused = [fusable_linear(b) if fused_linear else None for b in self.blocks]
        # the last block as one nn.Linear under the default cross-entropy: its gradients in closed form, without
        # an autograd graph (on small heads the graph costs several times the GEMMs)
        last = self._fused[-1]
        self._head = last[0] if self._default_loss and last is not None and last[1] == "identity" else None
        self.tables = None
        if mode == "batch":
            if num_samples is None:
                raise ValueError("batch mode keeps variables per training sample: pass num_samples=len(train_dataset)")
            self.tables = VariableTables(num_samples, self.shapes[:-1], storage=table_storage, device=self.device, path=table_dir)
        self.step_count = 0
        self.epoch = 0
        self.history: List[dict] = []
        self._rho_window = [[] for _ in range(nb)]
        self._rho_prev = [None] * nb

    # ---------------------------------------------------------------- one mini-batch
    def _check_batch(self, x, y, index):
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input batch has per-sample shape {tuple(x.shape[1:])}, the model was built for {self.input_shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if self._default_loss:
            n_classes = self.shapes[-1][-1]
            if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1:
                raise ValueError(f"cross-entropy needs 1-D integer class labels, got {y.dtype} of shape {tuple(y.shape)}")
            lo, hi = torch.stack(torch.aminmax(y)).tolist() if y.numel() else (0, 0)
            if lo < 0 or hi >= n_classes:
                raise ValueError(f"labels must lie in 0..{n_classes - 1} (the last block has {n_classes} outputs), got {lo}..{hi}")
        if self.mode == "batch":
            if index is None:
                raise ValueError(
                    "batch mode needs the sample index of every row: use a dataset that yields (x, y, index) "
                    "(every blockadmm.data dataset does) and call step(x, y, index), or use mode='online'"
                )
            n = self.tables.num_samples
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
                raise IndexError(f"sample index {int(index.min())}..{int(index.max())} outside the tables' 0..{n - 1}: "
                                 f"num_samples must be the length of the training set")

    def _forward(self, k, inp):
        with torch.no_grad():
            return self.blocks[k](inp)

    def _cached_term(self, k, out, z, u, scale, need_ssq=False):
        """(scale * r * act'(pre), sum r^2 or None) of fused linear block k from its kept output out = f_k(input),
        r = out - z - u: what its ADMM term's gradients need, without the forward GEMM (in place on one buffer:
        on small blocks each pass costs about as much as its arithmetic)."""
        r = torch.sub(out, z).sub_(u)
        ssq = None
        if need_ssq:
            flat = r.reshape(-1) if r.dtype == torch.float32 else r.reshape(-1).float()
            ssq = torch.dot(flat, flat)
        return r.mul_(derivative_from_output(out, self._fused[k][1])).mul_(scale), ssq

    def _next_term_grad(self, k, zk, z_next, u_next, y, out=None):
        """Per-sample gradient in z_k of the term that consumes it: block k+1's ADMM term or the task loss.
        out: block k+1's output at this z_k with its current weights, when the caller kept it (a fused
        linear block then needs one GEMM instead of a forward and a backward)."""
        consumer = self.blocks[k + 1]
        if hasattr(consumer, "admm_input_grad"):  # a block that is not differentiated through (e.g. NMF)
            return consumer.admm_input_grad(zk, z_next, u_next, rho=self.rho[k + 1] if k + 1 < self.n_blocks - 1 else None, y=y, loss_fn=self.loss_fn)
        if self._head is not None and k + 1 == self.n_blocks - 1:
            _, _, _, g = linear_cross_entropy(zk, self._head.weight, self._head.bias, y, need_weight_grad=False)
            return g * zk.shape[0]  # the gradient of the per-sample losses summed
        if out is not None and self._fused[k + 1] is not None and k + 1 < self.n_blocks - 1:
            g, _ = self._cached_term(k + 1, out, z_next, u_next, self.rho[k + 1])
            return g @ self._fused[k + 1][0].weight.detach()
        zk = zk.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.blocks[k + 1](zk)
            if k + 1 == self.n_blocks - 1:
                obj = self.loss_fn(out, y) * zk.shape[0]  # per-sample losses summed
            else:
                obj = 0.5 * self.rho[k + 1] * (z_next - out + u_next).square().sum()
        (g,) = torch.autograd.grad(obj, zk)
        return g

    def _local_loss_and_grads(self, k, inp, target, dual, y, out=None):
        """Block k's own term; leaves gradients in its parameters and returns the loss.
        out: f_k(inp) with the current weights when the caller kept it (a fused linear block then skips
        its forward)."""
        block = self.blocks[k]
        if hasattr(block, "admm_local_step"):  # a block with its own update rule (e.g. NMF multiplicative updates)
            return block.admm_local_step(inp, target, dual, rho=self.rho[k] if k < self.n_blocks - 1 else None, y=y, loss_fn=self.loss_fn).detach()
        # the closed-form paths below set the gradients of the block's only parameters (weight, bias)
        fused = self._fused[k]
        if k == self.n_blocks - 1 and self._head is not None:
            loss, gw, gb, _ = linear_cross_entropy(inp, self._head.weight, self._head.bias, y, need_input_grad=False)
            return _set_grads(self._head, gw, gb, loss)
        if k < self.n_blocks - 1 and fused is not None and out is not None:
            m = inp.shape[0]
            gp, ssq = self._cached_term(k, out, target, dual, self.rho[k] / m, need_ssq=True)
            return _set_grads(fused[0], gp.T @ inp, gp.sum(0), (self.rho[k] / (2 * m)) * ssq)
        if k < self.n_blocks - 1 and fused is not None:
            lin, act = fused
            # the op's residual is out - z + u; ours is out - z - u (DESIGN §1's sign of u), hence -u
            loss, gw, gb, _, _ = ops.linear_block_fwd_bwd(
                inp, lin.weight, lin.bias, target, dual.neg(), rho=self.rho[k], activation=act, need_input_grad=False, backend=self.backend
            )
            return _set_grads(lin, gw, gb, loss.detach())
        block.zero_grad(set_to_none=True)  # this block's gradients only: an optimizer may be shared
        with torch.enable_grad():
            out = self.blocks[k](inp)
            if k == self.n_blocks - 1:
                loss = self.loss_fn(out, y)
            else:
                loss = (0.5 * self.rho[k] / inp.shape[0]) * (target - out + dual).square().sum()
            loss.backward()
        return loss.detach()

    def _consumer_grad_fn(self, k, z_src, u_src, y, jacobi, out=None):
        """grad_fn(z_k): the gradient in z_k of the term that consumes boundary k (block k+1's term or the
        task loss), reading z_{k+1}, u_{k+1} from z_src, u_src; under jacobi it is evaluated once, at the
        sweep-start z_src[k], and that value is returned for every call. out: block k+1's output at the
        z_k of the first call, when kept (later calls see a moved z_k and run the block)."""
        B = self.n_blocks
        z_next = z_src[k + 1] if k + 1 < B - 1 else None
        u_next = u_src[k + 1] if k + 1 < B - 1 else None
        if jacobi:
            g0 = self._next_term_grad(k, z_src[k], z_next, u_next, y, out=out)
            return lambda zk: g0
        first = [out]

        def grad_fn(zk):
            o, first[0] = first[0], None
            return self._next_term_grad(k, zk, z_next, u_next, y, out=o)

        return grad_fn

    def _boundary_aux_step(self, k, zk, uk, a, grad_fn, adam_state) -> Optional[torch.Tensor]:
        """Boundary k's auxiliary step (`k_z` steps), in place on zk, with a = f_k(its input) and grad_fn(zk)
        the consuming term's gradient; returns |z_k - a|^2 after it (the op's result), or None when the
        producer's `admm_aux_update` hook replaced the step.
        Shared by BlockADMM.step and the distributed trainer (which passes a gradient received from the
        rank that owns block k+1)."""
        cfg = self.config
        if hasattr(self.blocks[k], "admm_aux_update"):  # the producer's own aux step (NMF: mirror steps)
            self.blocks[k].admm_aux_update(zk, uk, a, grad_fn, rho=self.rho[k], lr=cfg.lr_z, prox=self.constraints[k])
            return None
        for _ in range(cfg.k_z):
            g = grad_fn(zk)
            if cfg.aux_step == "adam":
                res_sq = self._adam_aux_step(k, zk, uk, a, g, adam_state)
                continue
            # a gradient step never takes rho_k*lr above 1, so a growing rho cannot make it overshoot
            lr = cfg.lr_z if cfg.aux_step == "sign" else min(cfg.lr_z, 1.0 / self.rho[k])
            res_sq = ops.aux_dual_update(
                zk, uk, a, g, rho=self.rho[k], lr=lr, dual_step=0.0,
                prox=self.constraints[k], step=cfg.aux_step, backend=self.backend,
            )
        return res_sq

    def step(self, x: torch.Tensor, y: torch.Tensor, index: Optional[torch.Tensor] = None) -> StepStats:
        """One Block-ADMM iteration (`sweeps` sweeps) on a mini-batch."""
        cfg, B = self.config, self.n_blocks
        x, y = x.to(self.device), y.to(self.device)
        index = None if index is None else torch.as_tensor(index, dtype=torch.long)
        self._check_batch(x, y, index)
        for b in self.blocks:
            b.train()

        # initial z: the forward pass (kept as the cache a_k = f_k(z_{k-1}) while its input is unchanged)
        fwd, h = [], x
        for k in range(B - 1):
            h = self._forward(k, h)
            fwd.append(h)
        if self.mode == "online":
            z = [t.clone() for t in fwd]
            u = [torch.zeros_like(t) for t in fwd]
            a_cache = list(fwd)
            z_start = fwd  # never written in place
        else:
            seen, z, u = self.tables.gather(index)
            for k in range(B - 1):
                fresh = ~seen.view(-1, *([1] * (z[k].dim() - 1)))
                z[k] = torch.where(fresh, fwd[k], z[k]).contiguous()
                u[k] = u[k].contiguous()
            a_cache = [fwd[0]] + [None] * (B - 2)
            z_start = [t.clone() for t in z]
        jacobi = cfg.order == "jacobi"
        losses = []
        adam_state: Dict[int, list] = {}  # aux_step="adam": boundary -> [t, m, v], this call only

        for sweep in range(cfg.sweeps):
            z_src = [t.clone() for t in z] if jacobi else z  # what neighbours read this sweep
            u_src = [t.clone() for t in u] if jacobi else u
            inputs = lambda k: x if k == 0 else z_src[k - 1]  # noqa: E731
            # online, the last sweep's dual update would leave with the mini-batch: it is skipped, and the
            # primal residual reported is that of the last auxiliary step, |z_k - a_k| with the a_k it used
            skip_dual = self.mode == "online" and sweep == cfg.sweeps - 1
            primal_sq = [None] * (B - 1)

            # 1. auxiliary step, boundary by boundary
            boundaries = range(B - 2, -1, -1) if cfg.order != "bottom-up" else range(B - 1)
            for k in boundaries:
                if a_cache[k] is None:
                    a_cache[k] = self._forward(k, inputs(k))
                a = a_cache[k]
                # jacobi: the gradient from above is that of the sweep start; Gauss-Seidel: at the current z_k
                out_next = a_cache[k + 1] if k + 1 < B - 1 else None
                res_sq = self._boundary_aux_step(k, z[k], u[k], a, self._consumer_grad_fn(k, z_src, u_src, y, jacobi, out_next), adam_state)
                if skip_dual:
                    primal_sq[k] = res_sq if res_sq is not None else (z[k] - a).float().square().sum()
                if not jacobi and k + 1 < B - 1:
                    a_cache[k + 1] = None

            # 2. weight step, every block on its own term (a kept forward serves the first of the k_w steps)
            for it in range(cfg.k_w):
                sweep_losses = [
                    self._local_loss_and_grads(k, inputs(k), z[k] if k < B - 1 else None, u[k] if k < B - 1 else None, y,
                                               out=a_cache[k] if it == 0 and k < B - 1 else None)
                    for k in range(B)
                ]
                self._raise_if_nonfinite(sweep_losses, "loss", x)
                for opt in self._optimizer_list:
                    opt.step()
            losses.append(sweep_losses[-1])

            # 3. dual step, with the new weights; its primal residual is the one reported
            for k in range(B - 1 if not skip_dual else 0):
                a = self._forward(k, inputs(k))
                primal_sq[k] = ops.aux_dual_update(
                    z[k], u[k], a, None, rho=self.rho[k], lr=0.0, dual_step=cfg.dual_step,
                    prox=self.constraints[k], backend=self.backend,
                )
                a_cache[k] = None if jacobi else a

        norm = lambda t: torch.linalg.vector_norm(t, dtype=torch.float32)  # noqa: E731
        stats_t = torch.stack(  # one transfer: loss, |z - a|^2, |z|, |z - z_start| per boundary
            [losses[-1]] + primal_sq + [norm(zk) for zk in z] + [norm(zk - z0) for zk, z0 in zip(z, z_start)]
        ).cpu()  # (stack promotes a low-precision loss to float32)
        self._raise_if_nonfinite(stats_t[1:B], "primal residual", x)
        if self.tables is not None:
            self.tables.scatter(index, z, u)
        self.step_count += 1
        nb = B - 1
        norms = stats_t[B : B + nb].clamp_min(1e-15)
        primal = (stats_t[1:B].sqrt() / norms).tolist()
        dual = [r * d for r, d in zip(self.rho, (stats_t[B + nb :] / norms).tolist())]
        stats = StepStats(loss=float(stats_t[0]), primal=primal, dual=dual, rho=list(self.rho))
        self._update_rho(primal)
        return stats

    def _adam_aux_step(self, k, zk, uk, a, g, state):
        """z_k -= lr_z * m_hat / (sqrt(v_hat) + eps), then the prox (aux_step="adam")."""
        d = self.rho[k] * (zk - a + uk)
        if g is not None:
            d = d + g
        b1, b2 = AUX_ADAM_BETAS
        if k not in state:
            state[k] = [0, torch.zeros_like(d), torch.zeros_like(d)]
        st = state[k]
        st[0] += 1
        st[1].mul_(b1).add_(d, alpha=1 - b1)
        st[2].mul_(b2).addcmul_(d, d, value=1 - b2)
        direction = (st[1] / (1 - b1 ** st[0])) / ((st[2] / (1 - b2 ** st[0])).sqrt() + AUX_ADAM_EPS)
        # rho=0: the op's step is then lr * direction, with the prox applied by the op
        return ops.aux_dual_update(zk, uk, a, direction, rho=0.0, lr=self.config.lr_z, dual_step=0.0,
                            prox=self.constraints[k], backend=self.backend)

    def _raise_if_nonfinite(self, values, what, x):
        """values: one 0-d tensor per block (a list) or a 1-D tensor of them."""
        if not len(values) or bool(torch.isfinite(values if isinstance(values, torch.Tensor) else torch.stack(values)).all()):
            return
        # name the source, not where it surfaced: non-finite weights of one block spread to its neighbours
        bad_weights = [k for k, b in enumerate(self.blocks) if any(not bool(torch.isfinite(p).all()) for p in b.parameters())]
        k_block = next(i for i, v in enumerate(values) if not bool(torch.isfinite(v)))
        cause = ""
        if not bool(torch.isfinite(x).all()):
            k_block, cause = 0, " The input batch itself holds NaN/inf: check the data."
        elif bad_weights:
            k_block, cause = bad_weights[0], f" Block {bad_weights[0]}'s weights are non-finite."
        raise NonFiniteError(
            f"non-finite {what} in block {k_block} at step {self.step_count} (epoch {self.epoch}).{cause} "
            f"The weight update of this sweep was not applied and batch-mode tables were not written; "
            f"resume from the last checkpoint with a smaller learning rate, lr_z or rho."
        )

    def _rho_growth(self, k: int, primal: float) -> Optional[float]:
        """The adaptive schedule's decision for boundary k after a step: the new rho, or None to keep it."""
        cfg = self.config
        if cfg.rho_schedule != "adaptive":
            return None
        window = self._rho_window[k]
        window.append(primal)
        if len(window) < cfg.rho_check_every:
            return None
        mean = sum(window) / len(window)
        self._rho_window[k] = []
        prev, self._rho_prev[k] = self._rho_prev[k], mean
        if prev is not None and mean > cfg.rho_stall * prev and self.rho[k] < cfg.rho_max:
            return min(self.rho[k] * cfg.rho_factor, cfg.rho_max)
        return None

    def _update_rho(self, primal: List[float]) -> None:
        for k, r in enumerate(primal):
            new = self._rho_growth(k, r)
            if new is not None:
                if self.tables is not None:
                    self.tables.scale_duals(k, self.rho[k] / new)  # scaled duals: u = y / rho
                self.rho[k] = new

    # ---------------------------------------------------------------- inference
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain composed network F(x): auxiliary variables exist only in training."""
        for b in self.blocks:
            x = b(x)
        return x

    __call__ = forward

    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 1000) -> Dict[str, float]:
        """Mean task loss and accuracy of F on a dataset yielding (x, y[, index]) or on a loader."""
        loader = data if isinstance(data, torch.utils.data.DataLoader) else torch.utils.data.DataLoader(data, batch_size=batch_size)
        was = [b.training for b in self.blocks]
        for b in self.blocks:
            b.eval()
        total, loss_sum, correct = 0, 0.0, 0
        for batch in loader:
            x, y = batch[0].to(self.device), batch[1].to(self.device)
            out = self.forward(x)
            loss_sum += float(self.loss_fn(out, y)) * x.shape[0]
            if y.dim() == 1:
                correct += int((out.argmax(1) == y).sum())
            total += x.shape[0]
        for b, t in zip(self.blocks, was):
            b.train(t)
        return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}

    # ---------------------------------------------------------------- epochs
    def fit(
        self,
        train,
        epochs: int,
        *,
        batch_size: int = 100,
        test=None,
        val=None,
        checkpoint: Optional[str] = None,
        progress: bool = True,
        on_epoch: Optional[Callable[[dict], None]] = None,
    ) -> List[dict]:
        """Train until `epochs` epochs are done (continuing from self.epoch after a resume).

        Data order is a function of (seed, epoch), so a run resumed from a checkpoint repeats exactly
        what the uninterrupted run would have done. With `checkpoint`, the state is saved atomically
        after every epoch; a non-finite value stops training and leaves the last good checkpoint.
        """
        from tqdm.auto import tqdm

        from .data import make_loader

        if self.tables is not None and len(train) != self.tables.num_samples:
            raise ValueError(f"the training set has {len(train)} samples but the batch-mode tables were built for "
                             f"{self.tables.num_samples}: pass num_samples=len(train)")
        for epoch in range(self.epoch, epochs):
            for b in self.blocks:  # blocks with epoch schedules (NMF: update W, then freeze it)
                if hasattr(b, "admm_set_epoch"):
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
                    where = f" The last good checkpoint is {checkpoint} (epoch {self.epoch})." if checkpoint and os.path.exists(checkpoint) else ""
                    raise NonFiniteError(f"{e}{where}") from e
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
            self.epoch = epoch + 1
            self.history.append(record)
            if checkpoint:
                self.save(checkpoint)
            if on_epoch:
                on_epoch(record)
        return self.history

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "mode": self.mode,
            "shapes": self.shapes,
            "blocks": [b.state_dict() for b in self.blocks],
            "shared_optimizer": self.shared_optimizer,
            "optimizers": [o.state_dict() for o in self._optimizer_list],
            "rho": list(self.rho),
            "rho_window": copy.deepcopy(self._rho_window),
            "rho_prev": list(self._rho_prev),
            "step_count": self.step_count,
            "epoch": self.epoch,
            "history": copy.deepcopy(self.history),
            "rng": torch.get_rng_state(),
            "tables": None if self.tables is None else self.tables.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["shapes"] != self.shapes or len(state["blocks"]) != self.n_blocks:
            raise ValueError(f"the checkpoint is for blocks with output shapes {state['shapes']}, this model has {self.shapes}")
        if state["mode"] != self.mode:
            raise ValueError(f"the checkpoint was trained in {state['mode']} mode, this trainer is in {self.mode} mode")
        # checkpoints written before shared_optimizer listed one entry per block, None for blocks without one
        optimizer_states = [sd for sd in state["optimizers"] if sd is not None]
        shared = state.get("shared_optimizer", False)
        if shared != self.shared_optimizer or len(optimizer_states) != len(self._optimizer_list):
            raise ValueError(f"the checkpoint holds {len(optimizer_states)} optimizer(s) (shared_optimizer={shared}), "
                             f"this trainer {len(self._optimizer_list)} (shared_optimizer={self.shared_optimizer}): "
                             f"build the trainer with shared_optimizer={shared}")
        if (state["tables"] is None) != (self.tables is None):
            raise TableMismatch("the checkpoint and this trainer disagree on having batch-mode tables")
        if self.tables is not None:
            self.tables.load_state_dict(state["tables"])
        for b, sd in zip(self.blocks, state["blocks"]):
            b.load_state_dict(sd)
        for o, sd in zip(self._optimizer_list, optimizer_states):
            o.load_state_dict(sd)
        self.config = ADMMConfig(**state["config"])
        self.rho = list(state["rho"])
        self._rho_window = copy.deepcopy(state["rho_window"])
        self._rho_prev = list(state["rho_prev"])
        self.step_count, self.epoch = state["step_count"], state["epoch"]
        self.history = copy.deepcopy(state["history"])
        torch.set_rng_state(state["rng"])

    def save(self, path: str) -> None:
        """Write a checkpoint atomically (temp file, then rename); refuses to write non-finite state."""
        state = self.state_dict()
        bad = [name for name, t in _float_tensors(state) if not bool(torch.isfinite(t).all())]
        if self.tables is not None and self.tables.storage == "memmap" and not self.tables.all_finite():
            bad.append("tables")
        if bad:
            raise NonFiniteError(f"refusing to overwrite {path} with non-finite state ({', '.join(bad[:5])})")
        if self.tables is not None and self.tables.storage == "memmap":
            table_copy = path + ".tables"
            self.tables.copy_files(table_copy)
            state["tables"]["path"] = table_copy
        tmp = f"{path}.tmp.{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: str) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))


def _set_grads(lin: nn.Linear, grad_weight, grad_bias, loss):
    lin.weight.grad = grad_weight
    if lin.bias is not None:
        lin.bias.grad = grad_bias
    return loss


def _float_tensors(obj, prefix="state"):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _float_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _float_tensors(v, f"{prefix}[{i}]")
