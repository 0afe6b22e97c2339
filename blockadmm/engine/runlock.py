"""A lock on a run's files for the life of the run, so that two runs never write one checkpoint or one set of
memmap tables at once (the second would re-create the tables under the first: SIGBUS, lost state).

An exclusive `flock` on a small lock file: the kernel releases it when the holder exits however it exits (an
error, Ctrl-C, kill -9), so a crashed run never leaves a folder locked. The holder writes who it is (process,
host, command, start time) into the file, and a second run is refused with one line naming it. Reentrant within
one process (the command line locks its run folder, then fit locks the checkpoint in it). Where `fcntl` does not
exist (Windows) no lock is taken.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

_HELD: dict[str, list] = {}  # lock file -> [fd, count] of the locks this process holds


class RunFolderBusy(RuntimeError):
    """Another run holds the lock on these files."""


class RunLock:
    """`with RunLock(lock_file, what):` holds the lock on `lock_file` (created, with its folder, if missing);
    `what` names the locked files in the error a second run gets."""

    def __init__(self, lock_file: str, what: str):
        self.path, self.what = os.path.abspath(lock_file), what
        self.held = False

    def acquire(self) -> RunLock:
        if fcntl is None or self.held:
            return self
        if self.path in _HELD:
            _HELD[self.path][1] += 1
            self.held = True
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"cannot create the lock file {self.path} of {self.what}: {e.strerror} "
                    f"(a symbolic link there is refused)",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"{self.what} is in use by another run ({holder}): wait for it to end, or use another folder"
                ) from None
            try:  # a holder releasing the lock removes the file: if ours was removed meanwhile, take the new one
                current = os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv), "started": started}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        _HELD[self.path] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        entry = _HELD[self.path]
        entry[1] -= 1
        if entry[1]:
            return
        del _HELD[self.path]
        try:
            os.unlink(self.path)  # while still holding it: a waiting opener sees the inode change and retries
        except OSError:
            pass
        os.close(entry[0])  # releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def checkpoint_lock(checkpoint: str) -> RunLock:
    """The lock of a checkpoint file (and its table folders): `.NAME.lock` beside it."""
    folder, name = os.path.split(os.path.abspath(checkpoint))
    return RunLock(os.path.join(folder, f".{name}.lock"), f"the checkpoint {checkpoint}")


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"
