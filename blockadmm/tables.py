"""Per-sample auxiliary and dual variables for batch mode.

For each boundary b the tables hold z_b and u_b for every training sample, `(N, *feature_shape)`,
plus one `seen` flag per sample (a row never visited starts from the forward pass and u = 0).
Storage: "device" (the training device), "pinned" (page-locked host memory, copied per mini-batch)
or "memmap" (files in a folder, for tables larger than memory).
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from .engine.runlock import RunLock

STORAGES = ("device", "pinned", "memmap")


class TableMismatch(ValueError):
    """Tables on disk or in a checkpoint that do not fit the model being trained."""


def _check_table_folder(path: str) -> None:
    """Memmap tables (re)create their files: refuse a folder holding anything but such tables (a checkpoint's
    table snapshot, the run folder, your data), so that nothing a user keeps is wiped, and a symbolic link."""
    if os.path.islink(path):
        raise ValueError(f"table_dir {path} is a symbolic link: memmap tables are never written through a link "
                         f"(it could point at any folder); pass a plain folder")
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, "tables.json")):
        raise ValueError(
            f"table_dir {path} holds files and is not a table folder of this package (no tables.json): "
            f"it may be a checkpoint's table snapshot or your data; pass a new or empty folder"
        )


def _create(path: str):
    """A new, empty file `path` opened for writing, never through a link: whatever had the name (a file, or a
    symbolic or hard link to one outside the folder) is removed first, its target untouched."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644), "w+b")


class VariableTables:
    def __init__(
        self,
        num_samples: int,
        shapes: Sequence[tuple[int, ...]],
        *,
        storage: str = "device",
        device=None,
        path: str | None = None,
        dtype=torch.float32,
    ):
        if storage not in STORAGES:
            raise ValueError(f"unknown table storage {storage!r}; choose one of {STORAGES}")
        if storage == "memmap" and path is None:
            raise ValueError("memmap tables need a folder: pass table_dir=...")
        if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
            raise ValueError(f"num_samples must be a whole number >= 1 (len(train_dataset)), got {num_samples!r}")
        self.num_samples = int(num_samples)
        self.shapes = [tuple(s) for s in shapes]
        self.storage, self.path, self.dtype = storage, path, dtype
        self.device = torch.device(device or "cpu")
        self.z: list[torch.Tensor] = []
        self.u: list[torch.Tensor] = []
        self._maps = []  # the numpy memmaps behind memmap tables, flushed for checkpoints
        if storage == "memmap":
            _check_table_folder(path)
            os.makedirs(path, exist_ok=True)
            self._lock = RunLock(os.path.join(os.path.dirname(os.path.abspath(path)),
                                              f".{os.path.basename(os.path.abspath(path))}.lock"),
                                 f"the table folder {path}").acquire()
            weakref.finalize(self, self._lock.release)
            with _create(os.path.join(path, "tables.json")) as f:
                f.write(json.dumps(self.meta()).encode())
            self.seen = self._memmap("seen", (self.num_samples,), np.bool_)
            for b, s in enumerate(self.shapes):
                self.z.append(self._memmap(f"z{b}", (self.num_samples, *s), np.float32))
                self.u.append(self._memmap(f"u{b}", (self.num_samples, *s), np.float32))
        else:
            where = self.device if storage == "device" else torch.device("cpu")
            pin = storage == "pinned" and torch.cuda.is_available()
            self.seen = torch.zeros(self.num_samples, dtype=torch.bool, device=where)
            for s in self.shapes:
                self.z.append(torch.zeros((self.num_samples, *s), dtype=dtype, device=where, pin_memory=pin))
                self.u.append(torch.zeros((self.num_samples, *s), dtype=dtype, device=where, pin_memory=pin))

    def meta(self) -> dict:
        return {"num_samples": self.num_samples, "shapes": [list(s) for s in self.shapes], "dtype": str(self.dtype)}

    def _memmap(self, name, shape, np_dtype) -> torch.Tensor:
        with _create(os.path.join(self.path, f"{name}.npy")) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np_dtype)), "fortran_order": False,
                      "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(f, header)
            arr = np.memmap(f, dtype=np_dtype, mode="r+", offset=f.tell(), shape=tuple(shape))
        self._maps.append(arr)
        return torch.from_numpy(arr)

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        return index.to(self.seen.device)

    def gather(self, index: torch.Tensor):
        """(seen mask, [z_b rows], [u_b rows]) for the mini-batch, on the training device."""
        rows = self._rows(index)
        seen = self.seen[rows].to(self.device, non_blocking=True)
        # (memmap tables hold float32: rows come back in the model's dtype)
        zs = [t[rows].to(self.device, self.dtype, non_blocking=True) for t in self.z]
        us = [t[rows].to(self.device, self.dtype, non_blocking=True) for t in self.u]
        return seen, zs, us

    def scatter(self, index: torch.Tensor, zs: Sequence[torch.Tensor], us: Sequence[torch.Tensor]) -> None:
        rows = self._rows(index)
        for table, rows_val in zip(self.z + self.u, list(zs) + list(us)):
            table[rows] = rows_val.to(table.device, table.dtype)
        self.seen[rows] = True

    def scale_duals(self, b: int, factor: float) -> None:
        """u_b *= factor: scaled duals follow a change of rho (u = y / rho)."""
        self.u[b].mul_(factor)

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.z + self.u)

    def file_names(self) -> list[str]:
        """The table files of memmap storage, in the order of [seen] + z + u."""
        return ["seen.npy"] + [f"{v}{b}.npy" for v in "zu" for b in range(len(self.shapes))]

    def files(self) -> dict[str, str]:
        """{file name: path} of the memmap table files, flushed (what a checkpoint snapshots)."""
        for m in self._maps:
            m.flush()
        return {name: os.path.join(self.path, name) for name in self.file_names()}

    def state_dict(self) -> dict:
        """The tables' contents (device/pinned storage); memmap contents travel as files (see files())."""
        state = {"meta": self.meta(), "storage": self.storage}
        if self.storage == "memmap":
            self.files()  # flushes
        else:
            state.update(
                seen=self.seen.cpu().clone(), z=[t.cpu().clone() for t in self.z], u=[t.cpu().clone() for t in self.u]
            )
        return state

    def check_meta(self, meta: dict, where: str) -> None:
        if meta != self.meta():
            raise TableMismatch(
                f"the tables in {where} do not match the model: they hold {meta}, the model needs {self.meta()}. "
                f"Resume with the same model, blocks and dataset, or start without resuming."
            )

    def check_state(self, state: dict, files: dict[str, str] | None = None) -> None:
        """Raise TableMismatch unless load_state_dict(state, files) would fill every table whole; changes nothing.
        The contents come from the tensors in `state` or from the `.npy` files `files` ({name: path})."""
        self.check_meta(state.get("meta"), "the checkpoint")
        targets = [self.seen] + self.z + self.u
        if "z" in state:
            sources = [state["seen"]] + list(state["z"]) + list(state["u"])
            if len(sources) != len(targets):
                raise TableMismatch(f"the checkpoint holds {len(sources)} tables, the model needs {len(targets)}")
            for name, src, dst in zip(self.file_names(), sources, targets):
                if not isinstance(src, torch.Tensor) or src.shape != dst.shape or src.dtype != dst.dtype:
                    got = (tuple(src.shape), src.dtype) if isinstance(src, torch.Tensor) else type(src).__name__
                    raise TableMismatch(
                        f"table {name} in the checkpoint is {got}, the model needs {(tuple(dst.shape), dst.dtype)}"
                    )
            return
        if files is None or set(files) != set(self.file_names()):
            raise TableMismatch(
                f"the checkpoint has table files {sorted(files or [])}, the model needs {self.file_names()}"
            )
        for name, dst in zip(self.file_names(), targets):
            arr = np.load(files[name], mmap_mode="r", allow_pickle=False)
            want = np.bool_ if dst.dtype == torch.bool else np.float32
            if tuple(arr.shape) != tuple(dst.shape) or arr.dtype != want:
                raise TableMismatch(
                    f"table file {files[name]} has shape {arr.shape} and dtype {arr.dtype}, the model "
                    f"needs {tuple(dst.shape)} and {np.dtype(want)}"
                )

    def load_state_dict(self, state: dict, files: dict[str, str] | None = None) -> None:
        """Fill the tables from a state_dict (device/pinned) or from table files ({name: path}, memmap
        checkpoints; a legacy state names their folder as state["path"]), after check_state."""
        if files is None and "path" in state:
            files = self._legacy_files(state["path"])
        self.check_state(state, files)
        targets = [self.seen] + self.z + self.u
        if "z" in state:
            for dst, src in zip(targets, [state["seen"]] + list(state["z"]) + list(state["u"])):
                dst.copy_(src)
            return
        for name, dst in zip(self.file_names(), targets):
            arr = np.load(files[name], mmap_mode="r", allow_pickle=False)
            step = max(1, (1 << 24) // max(1, arr[:1].nbytes))
            for i in range(0, arr.shape[0], step):  # in chunks: tables may be larger than memory
                dst[i : i + step].copy_(torch.from_numpy(np.array(arr[i : i + step])))

    def _legacy_files(self, src_dir: str) -> dict[str, str]:
        meta_file = os.path.join(src_dir, "tables.json")
        if not os.path.exists(meta_file):
            raise TableMismatch(f"the checkpoint's table folder {src_dir} is missing or has no tables.json")
        with open(meta_file) as f:
            self.check_meta(json.load(f), meta_file)
        return {name: os.path.join(src_dir, name) for name in self.file_names()}

    def copy_files(self, dst_dir: str) -> None:
        """Snapshot memmap table files into `dst_dir` (the distributed trainer's shards)."""
        self.files()  # flushes
        tmp = dst_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.path, tmp)
        shutil.rmtree(dst_dir, ignore_errors=True)
        os.replace(tmp, dst_dir)
