"""Sharded checkpoints of the distributed trainer: one checkpoint file per rank (blockadmm.engine.checkpoint:
atomic, checksummed, refusing non-finite state, never unpickling code) under folder/step-<n>/, committed by
rank 0's `latest.json`, whose step folder must be a plain step-<n> name inside the checkpoint folder. A
resume checks every rank's shard before any rank changes anything."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, fields

import torch

from ..engine import ADMMConfig
from ..engine.checkpoint import (
    TABLE_FILES,
    CheckpointError,
    check_module_state,
    check_optimizer_state,
    load_checkpoint,
    save_checkpoint,
)
from ..engine.state_values import check_state_values

STEP_DIR = re.compile(r"step-\d{9}")
FORMAT = "blockadmm-distributed-2"


class CheckpointMismatch(CheckpointError):
    """A distributed checkpoint that this run cannot resume (world size, partition, missing or other shard)."""


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:03d}-of-{world:03d}.pt"


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def _distinct(optimizers) -> list:
    return list({id(o): o for o in optimizers if o is not None}.values())


def shard_state(trainer) -> dict:
    """What one rank's resume needs: its blocks, optimizers, penalties, tables and the run's counters."""
    engine = trainer.engine
    return {
        "format": FORMAT,
        "rank": trainer.rank,
        "world_size": trainer.world,
        "partition": [list(p) for p in trainer.partition],
        "config": asdict(trainer.config),
        "mode": trainer.mode,
        "schedule": trainer.schedule,
        "staleness": trainer.staleness,
        "shapes": [list(s) for s in trainer.shapes],
        "blocks": {k: trainer.blocks[k].state_dict() for k in trainer.own},
        "shared_optimizer": trainer.shared_optimizer,
        "optimizers": [o.state_dict() for o in _distinct(engine.optimizers)],
        "rho": list(engine.rho),
        "rho_window": copy.deepcopy(engine.rho_schedule.window),
        "rho_prev": list(engine.rho_schedule.prev),
        "curvature": [b.state_dict() for b in engine.bounds],
        "step_count": trainer.step_count,
        "epoch": trainer.epoch,
        "epoch_step": trainer.epoch_step,
        "history": copy.deepcopy(trainer.history),
        "rng": torch.get_rng_state(),
        "tables": None if trainer.tables is None else trainer.tables.state_dict(),
    }


def save_shards(trainer, folder: str) -> str:
    """Collective: every rank writes its shard under folder/step-<n>/, then rank 0 points latest.json at it.
    A rank that cannot (non-finite state, disk) raises its error, the others a RankFailure; latest.json
    then still names the previous checkpoint."""
    step_dir = os.path.join(folder, step_dir_name(trainer.step_count))
    failed = None
    try:
        os.makedirs(step_dir, exist_ok=True)
        memmap = trainer.tables is not None and trainer.tables.storage == "memmap"
        save_checkpoint(
            os.path.join(step_dir, shard_name(trainer.rank, trainer.world)),
            shard_state(trainer),
            tables=trainer.tables.files() if memmap else None,
        )
    except Exception as e:  # noqa: BLE001 - every rank hears of it in agree()
        failed = e
    trainer.comm.agree(failed, f"to write its checkpoint shard under {step_dir} (latest.json not updated)")
    if trainer.rank == 0:
        commit(
            folder,
            {
                "step": trainer.step_count,
                "epoch": trainer.epoch,
                "epoch_step": trainer.epoch_step,
                "world_size": trainer.world,
                "partition": [list(p) for p in trainer.partition],
                "dir": os.path.basename(step_dir),
            },
        )
    trainer.comm.all_reduce(torch.zeros(1), "the checkpoint commit")
    return step_dir


def commit(folder: str, meta: dict, keep: int = 2) -> None:
    """Point latest.json at meta["dir"] (one atomic rename); keep the `keep` newest step folders."""
    tmp = os.path.join(folder, f"latest.json.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, os.path.join(folder, "latest.json"))
    steps = sorted(d for d in os.listdir(folder) if STEP_DIR.fullmatch(d))
    for name in steps[:-keep]:
        if name != meta["dir"]:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def read_checkpoint_meta(folder: str, world_size: int, partition: Sequence[tuple[int, int]] | None = None) -> dict:
    """The committed checkpoint of `folder` (latest.json), checked against this run's world size and
    partition; its step folder must be a plain step-<n> name inside `folder`."""
    latest = os.path.join(folder, "latest.json")
    if not os.path.exists(latest):
        raise FileNotFoundError(f"no distributed checkpoint in {folder} (latest.json is missing)")
    try:
        with open(latest) as f:
            meta = json.load(f)
        step, world, parts, step_dir = meta["step"], meta["world_size"], meta["partition"], meta["dir"]
        ok = (
            isinstance(step, int)
            and isinstance(world, int)
            and isinstance(step_dir, str)
            and isinstance(parts, list)
            and all(isinstance(p, list) and len(p) == 2 for p in parts)
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointMismatch(f"{latest} is not a blockadmm checkpoint index ({type(e).__name__}: {e})") from e
    if not ok:
        raise CheckpointMismatch(f"{latest} is not a blockadmm checkpoint index (fields of the wrong type)")
    if not STEP_DIR.fullmatch(step_dir):
        raise CheckpointMismatch(
            f"{latest} names the shard folder {step_dir!r}, which is not a step-<n> folder inside "
            f"{folder}: the index was altered; restore it or start without resuming"
        )
    if world != world_size:
        raise CheckpointMismatch(
            f"the checkpoint in {folder} was written by {world} ranks, this run has {world_size}: "
            f"resume with {world} processes (e.g. --nproc {world})"
        )
    if partition is not None and [list(p) for p in partition] != parts:
        raise CheckpointMismatch(
            f"the checkpoint in {folder} splits the blocks as {parts}, "
            f"this run as {[list(p) for p in partition]}: pass partition= to match"
        )
    return meta


def load_shard(folder: str, rank: int, world: int, partition: Sequence[tuple[int, int]], map_location=None) -> dict:
    """This rank's shard of the committed checkpoint in `folder`, verified and loaded without running code."""
    meta = read_checkpoint_meta(folder, world, partition)
    path = os.path.join(folder, meta["dir"], shard_name(rank, world))
    if not os.path.exists(path):
        raise CheckpointMismatch(
            f"checkpoint shard {path} of rank {rank} is missing: the checkpoint "
            f"at step {meta['step']} is incomplete; restore the file or start without resuming"
        )
    state = load_checkpoint(path, map_location=map_location)
    if state.get("format") != FORMAT:
        raise CheckpointMismatch(
            f"{path} is a blockadmm checkpoint but not a shard of the distributed trainer "
            f"(format {state.get('format')!r}, expected {FORMAT!r})"
        )
    return state


def _check_shard(trainer, state: dict, where: str) -> ADMMConfig:
    """Raise unless `state` fits this rank's trainer whole; changes nothing. Returns the checkpoint's config."""
    try:
        check_state_values(state, len(trainer.engine.rho))
        if state["world_size"] != trainer.world or [tuple(p) for p in state["partition"]] != trainer.partition:
            raise CheckpointMismatch(
                f"it is from a run with {state['world_size']} ranks, partition "
                f"{state['partition']}; this run has {trainer.world}, partition {trainer.partition}"
            )
        if [tuple(s) for s in state["shapes"]] != [tuple(s) for s in trainer.shapes] or state["mode"] != trainer.mode:
            raise CheckpointMismatch(f"it is for another model or mode ({state['mode']}, shapes {state['shapes']})")
        if set(state["blocks"]) != set(trainer.own):
            raise CheckpointMismatch(f"it holds blocks {sorted(state['blocks'])}, this rank owns {list(trainer.own)}")
        for k in trainer.own:
            check_module_state(trainer.blocks[k], state["blocks"][k], f"block {k}'s state")
        optimizers = _distinct(trainer.engine.optimizers)
        if state["shared_optimizer"] != trainer.shared_optimizer or len(state["optimizers"]) != len(optimizers):
            raise CheckpointMismatch(
                f"it holds {len(state['optimizers'])} optimizer(s) (shared_optimizer="
                f"{state['shared_optimizer']}), this rank {len(optimizers)}"
            )
        for optimizer, sd in zip(optimizers, state["optimizers"]):
            check_optimizer_state(optimizer, sd, "an optimizer's state")
        if (state["tables"] is None) != (trainer.tables is None):
            raise CheckpointMismatch("it and this trainer disagree on having batch-mode tables")
        if trainer.tables is not None:
            trainer.tables.check_state(state["tables"], state.get(TABLE_FILES))
        rng = state["rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise CheckpointMismatch("its random number generator state is not a CPU generator state")
        try:  # absent from shards of earlier versions
            trainer.engine.check_curvature_state(state.get("curvature") or [{}] * len(trainer.engine.bounds))
        except ValueError as e:
            raise CheckpointMismatch(f"its curvature-cap state does not fit this model: {e}") from None
        if set(state["config"]) - {f.name for f in fields(ADMMConfig)}:
            raise CheckpointMismatch(f"its config has unknown fields {sorted(state['config'])}")
        return ADMMConfig(**state["config"])
    except KeyError as e:
        raise CheckpointMismatch(f"{where} lacks the part {e} of a shard") from None
    except (CheckpointError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None


def load_shards(trainer, folder: str) -> None:
    """Collective: every rank loads and checks its shard; only when all fit does any rank change."""
    failed = state = config = None
    try:
        state = load_shard(folder, trainer.rank, trainer.world, trainer.partition, map_location=trainer.device)
        config = _check_shard(trainer, state, f"the shard of rank {trainer.rank} in {folder}")
    except Exception as e:  # noqa: BLE001 - every rank hears of it in agree()
        failed = e
    trainer.comm.agree(failed, f"to load its checkpoint shard from {folder} (nothing was changed)")
    engine = trainer.engine
    if trainer.tables is not None:
        trainer.tables.load_state_dict(state["tables"], state.get(TABLE_FILES))
    for k in trainer.own:
        trainer.blocks[k].load_state_dict(state["blocks"][k])
    for optimizer, sd in zip(_distinct(engine.optimizers), state["optimizers"]):
        optimizer.load_state_dict(sd)
    engine.set_config(config)
    engine.rho[:] = [float(r) for r in state["rho"]]
    engine.rho_schedule.window = copy.deepcopy(state["rho_window"])
    engine.rho_schedule.prev = list(state["rho_prev"])
    for bound, sd in zip(engine.bounds, state.get("curvature") or [{}] * len(engine.bounds)):
        bound.load_state_dict(sd)
    trainer.step_count, trainer.epoch, trainer.epoch_step = state["step_count"], state["epoch"], state["epoch_step"]
    trainer.comm.step = trainer.step_count
    trainer.history = copy.deepcopy(state["history"])
    torch.set_rng_state(state["rng"].cpu())
