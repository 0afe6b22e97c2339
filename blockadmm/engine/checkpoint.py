"""Checkpoint files: one atomic commit point, a verified manifest, and loading that never runs code.

A checkpoint is one file `path`: a magic line, a JSON header (format version, the payload's size and sha256,
the manifest of table files with their sizes and sha256, the header's own sha256) and the payload, the state
written by `torch.save` and read back with `torch.load(weights_only=True)`. Table files (memmap tables, larger
than memory) are copied into a new folder `<path>.tables-<token>` next to it, named in the header relative to
the checkpoint's folder, so a moved run resumes and a copied one reads its own copy. Every file is written under
a new name and fsync'ed; then one `os.replace` of the header file switches from the previous checkpoint to the
new one, so a kill at any instant leaves one or the other, whole. Leftovers of interrupted saves are removed by
the next save.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterator, Mapping

import numpy as np
import torch

MAGIC = b"BLOCKADMM-CHECKPOINT\n"
FORMAT_VERSION = 1
_LENGTH_BYTES = 8
_DIGEST_BYTES = 32
_MAX_HEADER = 1 << 24
_CHUNK = 1 << 22
TABLE_FILES = "table_files"  # the key under which load_checkpoint returns the verified table files


class CheckpointError(ValueError):
    """A file that is not a whole, unmodified checkpoint of this package, or one that does not fit the trainer."""


class NonFiniteError(FloatingPointError):
    """NaN or inf reached a loss, an auxiliary/dual variable or a weight during training."""


# ---------------------------------------------------------------- writing
def save_checkpoint(path: str, state: dict, *, tables: Mapping[str, str] | None = None) -> None:
    """Write `state` (tensors and plain containers) and the table files `tables` ({file name: source path},
    `.npy` files) as the checkpoint `path`, atomically. Refuses non-finite state (NonFiniteError), leaving
    the previous checkpoint as it was; on any failure no new file is left behind."""
    path = os.path.abspath(path)
    tables = dict(tables or {})
    if TABLE_FILES in state:
        raise ValueError(f"the state passed to save_checkpoint must not hold the key {TABLE_FILES!r}")
    bad = [name for name, t in _float_tensors(state) if not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(f"refusing to overwrite {path} with non-finite state ({', '.join(bad[:5])})")
    for name in tables:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"table file name {name!r} must be a plain file name")
    folder, base = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    _remove_leftovers(path, *_committed_tables_dir(path))
    token = uuid.uuid4().hex[:12]
    tmp = f"{path}.tmp-{token}"
    tables_dir = f"{path}.tables-{token}" if tables else None
    try:
        manifest = {}
        if tables_dir:
            os.mkdir(tables_dir)
            for name, src in tables.items():
                size, digest = _copy_table(src, os.path.join(tables_dir, name), path)
                manifest[name] = {"path": f"{base}.tables-{token}/{name}", "size": size, "sha256": digest}
            _fsync_dir(tables_dir)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getbuffer()
        header = json.dumps(
            {
                "format": "blockadmm.checkpoint",
                "version": FORMAT_VERSION,
                "payload": {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
                "files": manifest,
            },
            sort_keys=True,
        ).encode()
        with open(tmp, "wb") as f:
            for part in (
                MAGIC,
                len(header).to_bytes(_LENGTH_BYTES, "little"),
                header,
                hashlib.sha256(header).digest(),
                payload,
            ):
                _write_all(f, part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the commit point
    except BaseException as e:
        _remove(tmp)
        if tables_dir:
            shutil.rmtree(tables_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"could not write the checkpoint {path} ({e}); the previous one is unchanged") from e
        raise
    _fsync_dir(folder)
    _remove_leftovers(path, True, tables_dir)


def _write_all(f, data) -> None:
    """Every byte a checkpoint writes goes through here (tests make it fail part-way)."""
    f.write(data)


def _copy_table(src: str, dst: str, ckpt: str) -> tuple[int, str]:
    """Copy the .npy file `src` to `dst` chunk by chunk; refuse NaN/inf; (size, sha256) of the copy."""
    arr = np.load(src, mmap_mode="r", allow_pickle=False)
    if not arr.flags.c_contiguous:
        raise ValueError(f"table file {src} is not in C order")
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as f:
        head = f.read(arr.offset)
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)
    step = max(1, _CHUNK // max(1, rows.strides[0]))
    with open(dst, "wb") as out:
        _write_all(out, head)
        digest.update(head)
        size += len(head)
        for i in range(0, rows.shape[0], step):
            chunk = np.ascontiguousarray(rows[i : i + step])
            if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
                raise NonFiniteError(f"refusing to overwrite {ckpt} with non-finite table {os.path.basename(dst)}")
            data = chunk.tobytes()
            _write_all(out, data)
            digest.update(data)
            size += len(data)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _committed_tables_dir(path: str) -> tuple[bool, str | None]:
    """(known, folder): the table folder of the checkpoint now at `path` (None without tables), and whether
    that is known (False when a file there cannot be read: then no table folder may be removed)."""
    if not os.path.exists(path):
        return True, None
    try:
        header = _read_header(path)[0]
    except CheckpointError:
        return False, None
    names = {entry["path"].split("/")[0] for entry in header["files"].values()}
    return len(names) <= 1, os.path.join(os.path.dirname(path), names.pop()) if names else None


def _remove_leftovers(path: str, tables_too: bool, keep: str | None) -> None:
    """Remove the temp files of earlier saves of `path` and, with tables_too, their table folders but `keep`."""
    folder, base = os.path.split(path)
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if name.startswith(f"{base}.tmp-"):
            _remove(full)
        elif tables_too and name.startswith(f"{base}.tables-") and full != keep:
            shutil.rmtree(full, ignore_errors=True)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _float_tensors(obj, prefix="state") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _float_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _float_tensors(v, f"{prefix}[{i}]")


# ---------------------------------------------------------------- reading
def load_checkpoint(path: str, *, map_location=None) -> dict:
    """The state saved at `path`, after checking the header, the payload's and every table file's size and
    sha256, and unpickling only tensors and plain containers. With table files, state["table_files"] maps
    each name to the verified file's absolute path. Anything else is a CheckpointError naming the file."""
    path = os.path.abspath(path)
    header, offset = _read_header(path)
    with open(path, "rb") as f:
        f.seek(offset)
        payload = f.read(header["payload"]["size"] + 1)
    if len(payload) != header["payload"]["size"]:
        raise CheckpointError(
            f"{path} is truncated or has bytes appended: its payload has {len(payload)} bytes, "
            f"the header says {header['payload']['size']}"
        )
    if hashlib.sha256(payload).hexdigest() != header["payload"]["sha256"]:
        raise CheckpointError(f"{path} is corrupted: its payload does not match the checksum in its header")
    files = {name: _verified_file(path, entry) for name, entry in header["files"].items()}
    _check_archive(path, payload)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers; refusing to load "
            f"them (that could run code): {first}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint's state dict")
    if files:
        state[TABLE_FILES] = files
    return state


def _read_header(path: str) -> tuple[dict, int]:
    """(header, payload offset) of the checkpoint at `path`, the header's own checksum verified."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(len(MAGIC))
            length = int.from_bytes(f.read(_LENGTH_BYTES), "little")
            offset = len(MAGIC) + _LENGTH_BYTES + length + _DIGEST_BYTES
            raw = f.read(length) if magic == MAGIC and length <= _MAX_HEADER and offset <= size else b""
            digest = f.read(_DIGEST_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path}: {e.strerror or e}") from None
    if size == 0:
        raise CheckpointError(f"{path} is empty, not a blockadmm checkpoint")
    if magic != MAGIC:
        if MAGIC.startswith(magic):
            raise CheckpointError(f"{path} is truncated ({size} bytes): not a whole blockadmm checkpoint")
        kind = "a torch.save or pickle file" if magic[:2] == b"PK" or magic[:1] == b"\x80" else "some other file"
        raise CheckpointError(
            f"{path} is {kind}, not a blockadmm checkpoint; refusing to load it (this package "
            f"reads only files its own save wrote, and never unpickles code)"
        )
    if length > _MAX_HEADER or offset > size:
        raise CheckpointError(f"{path} is truncated or corrupted: its header runs past the end of the file")
    if hashlib.sha256(raw).digest() != digest:
        raise CheckpointError(f"{path} is corrupted: its header does not match its checksum")
    try:
        header = json.loads(raw)
        version = (header["format"], header["version"])
        if version != ("blockadmm.checkpoint", FORMAT_VERSION):
            raise CheckpointError(
                f"{path} is a checkpoint of format {version}; this blockadmm reads "
                f"('blockadmm.checkpoint', {FORMAT_VERSION})"
            )
        entries = [header["payload"]] + list(header["files"].values())
        if not all(isinstance(e["size"], int) and isinstance(e["sha256"], str) for e in entries) or not all(
            isinstance(e["path"], str) for e in entries[1:]
        ):
            raise TypeError("a manifest entry has the wrong types")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path} has a malformed header ({type(e).__name__}: {e})") from None
    return header, offset


def _verified_file(path: str, entry: Mapping) -> str:
    """The absolute path of the table file `entry` of checkpoint `path`, checked to lie in the checkpoint's
    folder (real paths compared, no symbolic link on the way: a link can point anywhere), to be a regular file
    and to have the recorded size and sha256."""
    folder = os.path.dirname(path)
    rel = str(entry["path"])
    full = os.path.normpath(os.path.join(folder, rel))
    if os.path.isabs(rel) or os.path.commonpath([folder, full]) != folder:
        raise CheckpointError(f"{path} names the table file {rel!r} outside its folder; refusing it")
    part = folder
    for name in os.path.relpath(full, folder).split(os.sep):
        part = os.path.join(part, name)
        if os.path.islink(part):
            raise CheckpointError(f"{path}: its table file {full} is reached through the symbolic link {part}; "
                                  f"refusing it (table files must be plain files in the checkpoint's folder)")
    real_folder = os.path.realpath(folder)
    if os.path.commonpath([real_folder, os.path.realpath(full)]) != real_folder:
        raise CheckpointError(f"{path} names the table file {rel!r}, which resolves outside its folder; refusing it")
    try:
        info = os.lstat(full)
    except OSError:
        raise CheckpointError(
            f"{path}: its table file {full} is missing (was the run folder copied without it?)"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: its table file {full} is not a regular file; refusing it")
    if info.st_size != entry["size"]:
        raise CheckpointError(
            f"{path}: its table file {full} has {info.st_size} bytes, the manifest says {entry['size']} "
            f"(truncated or replaced)"
        )
    if _sha256_file(full) != entry["sha256"]:
        raise CheckpointError(f"{path}: its table file {full} is corrupted (its sha256 differs from the manifest)")
    return full


def _check_archive(path: str, payload) -> None:
    """Refuse a payload whose zip entries would inflate: torch.save stores every entry uncompressed, so each
    entry's declared size must equal the bytes it takes in the file, and all of them fit in the payload. Checked
    on the zip directory alone, before torch.load reads an entry (which then checks each tensor entry's size
    against the storage size the pickle declares): loading never takes more memory than the file's size."""
    try:
        entries = zipfile.ZipFile(io.BytesIO(payload)).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} holds no torch.save archive ({e}); refusing it") from None
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise CheckpointError(
                f"{path}: its archive entry {info.filename} is compressed ({info.compress_size} bytes declared to "
                f"inflate to {info.file_size}); torch.save writes stored entries only, refusing to inflate it"
            )
    if sum(info.file_size for info in entries) > len(payload):
        raise CheckpointError(f"{path}: its archive entries declare more bytes than the file holds; refusing it")


# ---------------------------------------------------------------- checking a state against live objects
def check_module_state(module: torch.nn.Module, state: Mapping, what: str) -> None:
    """Raise CheckpointError unless `state` has exactly the module's keys with the same shapes."""
    own = module.state_dict()
    if set(own) != set(state):
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(
            f"{what} does not fit: the model has {missing[:5]} that the checkpoint lacks, the "
            f"checkpoint {extra[:5]} that the model lacks"
        )
    for key, value in own.items():
        theirs = state[key]
        if isinstance(value, torch.Tensor) and (not isinstance(theirs, torch.Tensor) or theirs.shape != value.shape):
            shape = tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__
            raise CheckpointError(f"{what} does not fit: {key} is {shape} in the checkpoint, {tuple(value.shape)} here")


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping, what: str) -> None:
    """Raise CheckpointError unless `state` is an optimizer state for the same parameter groups and shapes."""
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if not isinstance(groups, list) or not isinstance(state.get("state"), Mapping):
        raise CheckpointError(f"{what} is not an optimizer state")
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError(
            f"{what} has parameter groups of {[len(g['params']) for g in groups]} tensors, "
            f"this optimizer {[len(g['params']) for g in optimizer.param_groups]}"
        )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in groups for i in g["params"]]
    for i, p in zip(ids, params):
        for key, value in dict(state["state"].get(i, {})).items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                raise CheckpointError(
                    f"{what}: {key} of a parameter is {tuple(value.shape)}, the parameter {tuple(p.shape)}"
                )
