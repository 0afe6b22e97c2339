"""The Block-ADMM step (DESIGN §1) as primitives over ranges of blocks and boundaries.

A trainer builds one `Engine` over its chain of blocks and calls, per mini-batch: `new_batch`, `init_online`
or `init_batch`, then per sweep `begin_sweep`, `aux_step` (each boundary, in `aux_order`), `weight_step`,
`dual_step` (unless `skips_dual`), and finally `statistics` and `update_rho`. Each primitive takes the blocks
or boundaries to work on, so a rank that owns blocks lo..hi-1 calls the same ones on its range.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .. import ops
from .batch import is_classification
from .checkpoint import NonFiniteError
from .config import ADMMConfig
from .curvature import LipschitzBound, consumer_curvature
from .randomness import SameRandomness, needs_same_randomness, new_draws
from .rules import make_rule
from .state import BatchState
from .terms import Kept, make_term


class RhoSchedule:
    """The adaptive penalty: rho_k grows by rho_factor (up to rho_max) when boundary k's mean primal residual over
    rho_check_every steps did not fall below rho_stall times that of the window before."""

    def __init__(self, n_boundaries: int):
        self.window: list[list[float]] = [[] for _ in range(n_boundaries)]
        self.prev: list[float | None] = [None] * n_boundaries

    def decide(self, config: ADMMConfig, k: int, primal: float, rho: float) -> float | None:
        """The new rho of boundary k after a step with this primal residual, or None to keep it."""
        if config.rho_schedule != "adaptive":
            return None
        window = self.window[k]
        window.append(primal)
        if len(window) < config.rho_check_every:
            return None
        mean = sum(window) / len(window)
        self.window[k] = []
        prev, self.prev[k] = self.prev[k], mean
        if prev is not None and mean > config.rho_stall * prev and rho < config.rho_max:
            return min(rho * config.rho_factor, config.rho_max)
        return None


class Engine:
    """The step's primitives over a chain of blocks, with each block's term and each boundary's rule chosen
    once here. rho is the per-boundary penalty list (shared with the trainer, updated in place)."""

    def __init__(self, blocks: Sequence[nn.Module], *, config: ADMMConfig, rho: list[float], constraints: list,
                 loss_fn: Callable, default_loss: bool, online: bool, fused_linear: bool = True, backend: str = "auto"):
        # blocks with dropout or running statistics: one random state per batch, statistics updated once per step
        self.blocks = [SameRandomness(b) if needs_same_randomness(b) else b for b in blocks]
        self.wrapped = {k: b for k, b in enumerate(self.blocks) if isinstance(b, SameRandomness)}
        self.n_blocks = len(self.blocks)
        self.rho, self.constraints, self.loss_fn = rho, constraints, loss_fn
        self.online, self.backend = online, backend
        self.terms = [make_term(b, k, self.n_blocks, loss_fn=loss_fn, default_loss=default_loss,
                                fused_linear=fused_linear, backend=backend) for k, b in enumerate(self.blocks)]
        self.bounds = [LipschitzBound(b) for b in self.blocks]
        self.loss_curvature = 0.5 if isinstance(loss_fn, nn.CrossEntropyLoss) else None  # softmax CE: <= 1/2
        self.optimizers: list[torch.optim.Optimizer | None] = [None] * self.n_blocks
        self.rho_schedule = RhoSchedule(self.n_blocks - 1)
        self.set_config(config)

    def set_config(self, config: ADMMConfig) -> None:
        """Take new hyperparameters (a resume may change them): the auxiliary rules are rebuilt."""
        self.config = config
        self.jacobi = config.order == "jacobi"
        self.rules = [make_rule(self.blocks[k], config, self.backend) for k in range(self.n_blocks - 1)]

    @property
    def trainable(self) -> list[bool]:
        """Which blocks an optimizer steps (not the blocks with their own rules, nor those without parameters)."""
        return [term.trainable for term in self.terms]

    # ------------------------------------------------------------------ the start of a mini-batch
    def new_batch(self, x, y, index=None, *, step: int = 0, epoch: int = 0) -> BatchState:
        state = BatchState.empty(self.n_blocks, x, y, index, step=step, epoch=epoch)
        state.draws = new_draws(list(self.wrapped))
        return state

    def use(self, state: BatchState) -> None:
        """Bind the wrapped blocks to this batch's random states (every primitive that runs a forward does)."""
        for k, block in self.wrapped.items():
            block.bind(state.draws.get(k))

    def init_online(self, state: BatchState, blocks: range, h: torch.Tensor | None = None) -> None:
        """z from the forward pass from h (block blocks.start's input, default x), u = 0. The forwards are kept
        (with their graphs where a term uses one), the last block's too: no input has moved yet."""
        h = state.x if h is None else h
        self.use(state)
        for k in blocks:
            term = self.terms[k]
            if k == self.n_blocks - 1:
                state.forward_in = h
                if term.keeps_last:
                    state.kept[k] = term.forward(h, keep_graph=True)
                break
            state.kept[k] = term.forward(h, keep_graph=True)
            h = state.kept[k].value
            # z and u are updated in place: contiguous whatever layout the block returns (e.g. channels_last)
            state.z[k] = h.clone(memory_format=torch.contiguous_format)
            state.u[k] = torch.zeros_like(h, memory_format=torch.contiguous_format)
            state.z_start[k] = h

    def init_batch(self, state: BatchState, blocks: range, seen: torch.Tensor, z_rows: Sequence[torch.Tensor],
                   u_rows: Sequence[torch.Tensor], h: torch.Tensor | None = None) -> None:
        """z, u from the tables' rows (z_rows, u_rows: one per boundary in blocks), the forward for rows not seen
        before. Only block 0's forward is kept: the others' inputs are the tables' z, not the forward."""
        h = state.x if h is None else h
        self.use(state)
        boundaries = [k for k in blocks if k < self.n_blocks - 1]
        for j, k in enumerate(boundaries):
            kept = self.terms[k].forward(h, keep_graph=k == 0)
            h = kept.value
            fresh = ~seen.view(-1, *([1] * (h.dim() - 1)))
            state.z[k] = torch.where(fresh, h, z_rows[j]).contiguous()
            state.u[k] = u_rows[j].contiguous()
            state.z_start[k] = state.z[k].clone()
            if k == 0:
                state.kept[0] = kept
        if self.n_blocks - 1 in blocks:
            state.forward_in = h

    # ------------------------------------------------------------------ one sweep
    def skips_dual(self, sweep: int) -> bool:
        """Online, the last sweep's dual step would leave with the mini-batch: it is skipped, and the primal
        residual reported is that of the last auxiliary step."""
        return self.online and sweep == self.config.sweeps - 1

    def aux_order(self, boundaries: Sequence[int]) -> list[int]:
        """Top-down (also under Jacobi, where the order does not matter) or bottom-up."""
        return sorted(boundaries, reverse=self.config.order != "bottom-up")

    def begin_sweep(self, state: BatchState, sweep: int) -> None:
        """Under Jacobi, what neighbours read this sweep is a copy of the sweep-start values."""
        state.sweep = sweep
        if self.jacobi:
            state.z_src = [None if t is None else t.clone() for t in state.z]
            state.u_src = [None if t is None else t.clone() for t in state.u]
        else:
            state.z_src, state.u_src = state.z, state.u

    def kept_forward(self, state: BatchState, k: int) -> Kept:
        """Block k's forward at its current input, run (and kept) if it is not kept already."""
        if state.kept[k] is None:
            self.use(state)
            state.kept[k] = self.terms[k].forward(state.input(k), keep_graph=True)
        return state.kept[k]

    def aux_step(self, state: BatchState, k: int, grad_fn: Callable | None = None) -> None:
        """Boundary k's auxiliary step, in place on z_k. grad_fn(z_k): the consuming term's gradient (default:
        block k+1's, computed here; a rank passes the one it received from the rank that owns block k+1)."""
        a = self.kept_forward(state, k).value
        rule = self.rules[k]
        # the consumer's curvature caps the step where the consumer is here (a rank's top boundary: not capped)
        curvature = self.consumer_curvature(k) if grad_fn is None else 0.0
        res_sq = rule.run(state.z[k], state.u[k], a, grad_fn or self.consumer_grad_fn(state, k), rho=self.rho[k],
                          prox=self.constraints[k], memory=state.memory.setdefault(k, rule.new_memory()),
                          curvature=curvature)
        if self.skips_dual(state.sweep):
            state.primal_sq[k] = res_sq if res_sq is not None else (state.z[k] - a).float().square().sum()
        if not self.jacobi:  # block k+1's input moved
            state.kept[k + 1] = None

    def check_curvature_state(self, states) -> None:
        """ValueError unless `states` (a checkpoint's, one per block) fits the bounds here."""
        if not isinstance(states, list) or len(states) != self.n_blocks:
            raise ValueError(f"expected {self.n_blocks} per-block states")
        for bound, state in zip(self.bounds, states):
            bound.check_state(state)

    def consumer_curvature(self, k: int) -> float:
        """An upper bound on the curvature in z_k of block k+1's term (or the task loss), 0 where unknown or with
        config.curvature_cap off (engine.curvature)."""
        if not self.config.curvature_cap:
            return 0.0
        nxt = k + 1
        rho = self.rho[nxt] if nxt < self.n_blocks - 1 else None
        return consumer_curvature(self.bounds[nxt], rho, self.loss_curvature)

    def consumer_grad(self, state: BatchState, k: int, z_k: torch.Tensor, kept: Kept | None = None) -> torch.Tensor:
        """The gradient in z_k (per sample, summed) of block k+1's term (or the task loss), reading z_{k+1}, u_{k+1}
        from this sweep's z_src, u_src; kept: block k+1's forward at this z_k, if kept."""
        self.use(state)
        nxt = k + 1
        hidden = nxt < self.n_blocks - 1
        z_next, u_next = (state.z_src[nxt], state.u_src[nxt]) if hidden else (None, None)
        rho = self.rho[nxt] if hidden else None
        return self.terms[nxt].input_grad(z_k, z_next, u_next, state.y, rho=rho, kept=kept)

    def consumer_grad_fn(self, state: BatchState, k: int) -> Callable:
        """grad_fn(z_k) for boundary k's rule. Under Jacobi the gradient at the sweep-start z_k, once; otherwise at
        the z_k given, the first call from block k+1's kept forward (later calls see a moved z_k)."""
        kept = state.kept[k + 1]
        if self.jacobi:
            g0 = self.consumer_grad(state, k, state.z_src[k], kept)
            return lambda z_k: g0
        first = [kept]

        def grad_fn(z_k):
            kept_now, first[0] = first[0], None
            return self.consumer_grad(state, k, z_k, kept_now)

        return grad_fn

    def weight_step(self, state: BatchState, blocks: range) -> list[torch.Tensor]:
        """k_w optimizer steps of every block in `blocks` on its own term; returns the terms of the last one.
        The first step uses the kept forwards (which the new weights then make stale)."""
        last = self.n_blocks - 1
        self.use(state)
        optimizers = list({id(o): o for o in (self.optimizers[k] for k in blocks) if o is not None}.values())
        for _ in range(self.config.k_w):
            losses = [self.terms[k].loss_and_grads(state.input(k), state.z[k] if k < last else None,
                                                   state.u[k] if k < last else None, state.y,
                                                   rho=self.rho[k] if k < last else None, kept=state.kept[k])
                      for k in blocks]
            self.check_finite(losses, "loss", state, blocks.start)
            for optimizer in optimizers:
                optimizer.step()
            torch.clear_autocast_cache()  # under torch.autocast: forwards must see the new weights, not cached casts
            for k in blocks:
                state.kept[k] = None
        if last in blocks:
            state.losses.append(losses[-1])
        return losses

    def dual_step(self, state: BatchState, boundaries: Sequence[int]) -> None:
        """u_k += dual_step * (z_k - f_k(z_{k-1})) with the new weights; its primal residual is the one reported.
        Gauss-Seidel keeps these forwards for the next sweep."""
        keep = not self.jacobi and state.sweep < self.config.sweeps - 1
        self.use(state)
        for k in boundaries:
            kept = self.terms[k].forward(state.input(k), keep_graph=keep)
            state.primal_sq[k] = ops.aux_dual_update(state.z[k], state.u[k], kept.value, None, rho=self.rho[k], lr=0.0,
                                                     dual_step=self.config.dual_step, prox=self.constraints[k],
                                                     backend=self.backend)
            state.kept[k] = None if self.jacobi else kept

    @torch.no_grad()
    def network_metrics(self, state: BatchState) -> list[torch.Tensor]:
        """[task loss of F(x)] and, for integer class labels, [..., accuracy], as 0-d tensors (read back later with
        the step's other numbers), from the forward the batch starts with; the last block's kept forward serves
        when there is one. For the range holding the last block, online (its input is then the forward)."""
        last = self.n_blocks - 1
        self.use(state)
        kept = state.kept[last]
        out = kept.value if kept is not None else self.blocks[last](state.forward_in)
        metrics = [self.loss_fn(out, state.y).detach()]
        if is_classification(state.y):
            metrics.append((out.argmax(1) == state.y).float().mean())
        return metrics

    # ------------------------------------------------------------------ the end of a mini-batch
    def statistics(self, state: BatchState, boundaries: Sequence[int]) -> tuple[float | None, list[float], list[float]]:
        """(the last sweep's task loss if this range has the last block, primal residuals |z_k - f_k(z_{k-1})|/|z_k|,
        dual residuals rho_k |z_k - z_k(start)|/|z_k|), read back in one transfer."""
        def norm(t):  # in float32, or float64 for a float64 model
            return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))

        loss = state.losses[-1:]
        values = torch.stack(  # (stack promotes a low-precision loss to float32)
            loss + [state.primal_sq[k] for k in boundaries] + [norm(state.z[k]) for k in boundaries]
            + [norm(state.z[k] - state.z_start[k]) for k in boundaries]).cpu()
        n, off = len(boundaries), len(loss)
        primal_sq = values[off:off + n]
        self.check_finite(primal_sq, "primal residual", state, boundaries[0] if n else 0)
        norms = values[off + n:off + 2 * n].clamp_min(1e-15)
        primal = (primal_sq.sqrt() / norms).tolist()
        dual = [self.rho[k] * d for k, d in zip(boundaries, (values[off + 2 * n:] / norms).tolist())]
        return (float(values[0]) if off else None), primal, dual

    def update_rho(self, primal: dict[int, float]) -> dict[int, float]:
        """The adaptive schedule after a step; returns {boundary: old rho / new rho} for those that grew, the
        factor by which the caller scales the scaled duals it keeps (tables, batches in flight)."""
        factors = {}
        for k, r in primal.items():
            new = self.rho_schedule.decide(self.config, k, r, self.rho[k])
            if new is not None:
                factors[k] = self.rho[k] / new
                self.rho[k] = new
        return factors

    def check_finite(self, values, what: str, state: BatchState, first: int = 0) -> None:
        """Raise NonFiniteError naming the source (the input, a block's weights, or the block whose value it is)."""
        if not len(values):
            return
        if bool(torch.isfinite(values if isinstance(values, torch.Tensor) else torch.stack(values)).all()):
            return
        bad_weights = [k for k, b in enumerate(self.blocks)
                       if any(not bool(torch.isfinite(p).all()) for p in b.parameters())]
        k_block = first + next(i for i, v in enumerate(values) if not bool(torch.isfinite(v)))
        cause = ""
        if state.x is not None and not bool(torch.isfinite(state.x).all()):
            k_block, cause = 0, " The input batch itself holds NaN/inf: check the data."
        elif bad_weights:
            k_block, cause = bad_weights[0], f" Block {bad_weights[0]}'s weights are non-finite."
        raise NonFiniteError(
            f"non-finite {what} in block {k_block} at step {state.step} (epoch {state.epoch}).{cause} "
            f"The weight update of this sweep was not applied and batch-mode tables were not written; "
            f"resume from the last checkpoint with a smaller learning rate, lr_z or rho."
        )
