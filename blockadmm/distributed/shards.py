"""Sharded checkpoints of the distributed trainer: one shard per rank under folder/step-<n>/, committed by
rank 0's `latest.json`. Files read here are untrusted: shards load with weights_only=True and the step
folder that latest.json names must be a plain name inside the checkpoint folder."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Sequence

import torch

from ..tables import VariableTables

STEP_DIR = re.compile(r"step-\d{9}")


class CheckpointMismatch(ValueError):
    """A distributed checkpoint that this run cannot resume (world size, partition, missing or bad shard)."""


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:03d}-of-{world:03d}.pt"


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


def _table_dir_name(rank: int) -> str:
    return f"tables-rank{rank:03d}"


def write_shard(step_dir: str, rank: int, world: int, state: dict, tables: VariableTables | None) -> None:
    """This rank's shard (and its memmap table files) under `step_dir`, each written then renamed."""
    os.makedirs(step_dir, exist_ok=True)
    if tables is not None and tables.storage == "memmap":
        tables.copy_files(os.path.join(step_dir, _table_dir_name(rank)))
        state["tables"]["path"] = _table_dir_name(rank)  # relative to the step folder: a moved run resumes
    path = os.path.join(step_dir, shard_name(rank, world))
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


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
        ok = (isinstance(step, int) and isinstance(world, int) and isinstance(step_dir, str)
              and isinstance(parts, list) and all(isinstance(p, list) and len(p) == 2 for p in parts))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointMismatch(f"{latest} is not a blockadmm checkpoint index ({type(e).__name__}: {e})") from e
    if not ok:
        raise CheckpointMismatch(f"{latest} is not a blockadmm checkpoint index (fields of the wrong type)")
    if not STEP_DIR.fullmatch(step_dir):
        raise CheckpointMismatch(f"{latest} names the shard folder {step_dir!r}, which is not a step-<n> folder inside "
                                 f"{folder}: the index was altered; restore it or start without resuming")
    if world != world_size:
        raise CheckpointMismatch(
            f"the checkpoint in {folder} was written by {world} ranks, this run has {world_size}: "
            f"resume with {world} processes (e.g. --nproc {world})")
    if partition is not None and [list(p) for p in partition] != parts:
        raise CheckpointMismatch(f"the checkpoint in {folder} splits the blocks as {parts}, "
                                 f"this run as {[list(p) for p in partition]}: pass partition= to match")
    return meta


def load_shard(folder: str, rank: int, world: int, partition: Sequence[tuple[int, int]], map_location=None) -> dict:
    """This rank's shard of the committed checkpoint in `folder`, loaded without running code from the file
    (weights_only=True); a memmap table path in it is resolved inside the step folder."""
    meta = read_checkpoint_meta(folder, world, partition)
    step_dir = os.path.join(folder, meta["dir"])
    path = os.path.join(step_dir, shard_name(rank, world))
    if not os.path.exists(path):
        raise CheckpointMismatch(f"checkpoint shard {path} of rank {rank} is missing: the checkpoint "
                                 f"at step {meta['step']} is incomplete; restore the file or start without resuming")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointMismatch(f"{path} is not a blockadmm checkpoint shard or is damaged "
                                 f"({type(e).__name__}: {first}); nothing was loaded") from e
    if not isinstance(state, dict) or state.get("format") != "blockadmm-distributed-1":
        raise CheckpointMismatch(f"{path} is not a blockadmm checkpoint shard (no blockadmm-distributed-1 format tag)")
    tables = state.get("tables")
    if isinstance(tables, dict) and "path" in tables:
        if tables["path"] != _table_dir_name(rank):
            raise CheckpointMismatch(f"{path} names the table folder {tables['path']!r}, not its own "
                                     f"{_table_dir_name(rank)!r} inside {step_dir}; the shard was altered")
        tables["path"] = os.path.join(step_dir, tables["path"])
    return state
