"""The Block-ADMM step core that both trainers drive (DESIGN §1, §3).

Built once per trainer (or per rank) over the whole chain of blocks:

    engine = Engine(blocks, config=ADMMConfig(...), rho=[...], constraints=[...], loss_fn=..., default_loss=...,
                    online=True, fused_linear=True, backend="auto")
    engine.optimizers = [...]            # block k -> its optimizer or None (engine.trainable says which need one)

Each block gets a term (terms.make_term: AutogradTerm, FusedLinearTerm, LinearHeadTerm, HookTerm for an
`ADMMBlock`) with forward(inp, keep_graph) -> Kept, loss_and_grads(...), input_grad(...); each boundary a rule
(rules.make_rule: GradRule, SignRule, AdamRule, BlockRule for an `AuxStepBlock`) with run(z, u, a, grad_fn, ...).

One mini-batch, as BlockADMM.step runs it; every primitive takes the blocks (a range) or boundaries it works on,
so a rank owning blocks lo..hi-1 passes range(lo, hi) and its boundaries [k for k in range(lo, hi) if k < B-1]:

    state = engine.new_batch(x, y, index, step=n, epoch=e)        # BatchState; x None on ranks without block 0
    engine.init_online(state, blocks, h=None)                       # h: block lo's input (received), default x
    engine.init_batch(state, blocks, seen, z_rows, u_rows, h=None)  # batch mode, rows from the tables
    for sweep in range(config.sweeps):
        engine.begin_sweep(state, sweep)                            # Jacobi: z_src/u_src snapshots
        for k in engine.aux_order(boundaries):
            engine.aux_step(state, k, grad_fn=None)                 # grad_fn: a gradient received from above
        engine.weight_step(state, blocks)
        if not engine.skips_dual(sweep):
            engine.dual_step(state, boundaries)
    loss, primal, dual = engine.statistics(state, boundaries)      # loss None without the last block
    factors = engine.update_rho({k: p for k, p in zip(boundaries, primal)})  # {k: old/new rho} to rescale duals

A rank sets state.z[lo-1] (and state.z_src[lo-1] under Jacobi, after begin_sweep) to the input it received,
and state.kept[lo] = None whenever that input changes; engine.consumer_grad(state, lo-1, z_below, state.kept[lo])
is the gradient it sends down (block lo's term in its input, from the kept forward while the input has not
moved), engine.consumer_grad_fn(state, k) the one a local boundary uses. The engine may be built over the whole
chain on every rank: terms of blocks a rank does not own are never called. engine.set_config(config) takes new
hyperparameters. Presets: PRESETS / get_preset (presets.py); a batch's placement and checks, the same for
every trainer: batch.on_device, batch.check_batch; checkpoints: checkpoint.py.
"""
from .config import AUX_STEPS, ORDERS, ADMMConfig
from .core import Engine, RhoSchedule
from .presets import PRESETS, Preset, get_preset
from .protocol import ADMMBlock, AuxStepBlock, EpochScheduledBlock
from .rules import AdamRule, BlockRule, GradRule, SignRule, make_rule
from .state import BatchState
from .terms import AutogradTerm, FusedLinearTerm, HookTerm, Kept, LinearHeadTerm, make_term

__all__ = [
    "AUX_STEPS",
    "ORDERS",
    "PRESETS",
    "ADMMBlock",
    "ADMMConfig",
    "AdamRule",
    "AutogradTerm",
    "AuxStepBlock",
    "BatchState",
    "BlockRule",
    "Engine",
    "EpochScheduledBlock",
    "FusedLinearTerm",
    "GradRule",
    "HookTerm",
    "Kept",
    "LinearHeadTerm",
    "Preset",
    "RhoSchedule",
    "SignRule",
    "get_preset",
    "make_rule",
    "make_term",
]
