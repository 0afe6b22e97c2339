"""Starting the ranks: joining a process group, and spawning local ranks under a supervising launcher.

The launcher hosts the rendezvous store itself (a TCP store: no folder to leave behind), checks the
process count before spawning anything, makes every rank die with it (parent-death signal, or a
watchdog thread where there is none), and turns any failure into one line naming the failed rank.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .comm import RankFailure

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def init_distributed(
    backend: str | None = None,
    *,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout: float = 300.0,
    store=None,
) -> tuple[int, int, torch.device]:
    """Join the process group (torchrun's env:// by default, or a given store); returns (rank, world_size, device).

    backend: "nccl" when CUDA is available, else "gloo". Under NCCL each process uses
    cuda:LOCAL_RANK (or rank % device_count).
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        kw = {} if rank is None else {"rank": rank, "world_size": world_size}
        where = {"store": store} if store is not None else {"init_method": init_method or "env://"}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout), **where, **kw)
    rank, world = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def exit_worker() -> None:
    """End a spawned rank whose work is done and written, once every rank got here, without running the
    process-group destructors: at interpreter exit, after its peers have gone, gloo's can abort the
    process ("terminate called without an active exception") and turn a finished run into a failed one."""
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_nproc(nproc, backend: str) -> int:
    """The number of local ranks, checked before anything is spawned: at least 1, at most one per core
    (gloo) or per GPU (NCCL)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"the number of processes must be a whole number >= 1, got {nproc!r}")
    if backend == "nccl":
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ValueError(
                f"{nproc} processes need {nproc} GPUs under NCCL, this machine has {gpus}: use at most {gpus} processes"
            )
    elif nproc > available_cores():
        cores = available_cores()
        raise ValueError(
            f"{nproc} processes on {cores} CPU cores: each rank needs a core of its own; use at most {cores} processes"
        )
    return nproc


def _die_with_launcher(launcher_pid: int) -> None:
    """Make this rank end when its launcher does, however the launcher ends (even SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):  # no prctl (not Linux): watch the parent instead

        def watch():
            while os.getppid() == launcher_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="blockadmm-launcher-watchdog").start()
    if os.getppid() != launcher_pid:  # the launcher died before the signal was armed
        os._exit(1)


def _report(error: BaseException) -> dict:
    return {
        "error": f"{type(error).__name__}: {error}".splitlines()[0][:1000],
        "culprit": error.rank if isinstance(error, RankFailure) else None,
    }


def _worker(rank, fn, nproc, port, launcher_pid, init_method, backend, threads, timeout, args, kwargs):
    _die_with_launcher(launcher_pid)
    torch.set_num_threads(threads)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=timeout))
    try:
        init_distributed(
            backend,
            init_method=init_method,
            store=None if init_method else store,
            rank=rank,
            world_size=nproc,
            timeout=timeout,
        )
        fn(*args, **kwargs)
        exit_worker()
    except BaseException as e:  # noqa: BLE001 - one line to the launcher, no traceback
        try:
            store.set(f"blockadmm/exit/{rank}", json.dumps(_report(e)))
        finally:
            os._exit(1)


def _exit_reports(store, nproc: int) -> list[dict | None]:
    out = []
    for r in range(nproc):
        try:
            out.append(json.loads(store.get(f"blockadmm/exit/{r}")) if store.check([f"blockadmm/exit/{r}"]) else None)
        except Exception:  # noqa: BLE001 - a report that cannot be read is no report
            out.append(None)
    return out


def _only_culprits_left(procs, store, nproc: int) -> bool:
    """Whether every rank still running is named as the failed one in a stopped rank's report."""
    running = {r for r, p in enumerate(procs) if p.exitcode is None}
    named = {rep["culprit"] for rep in _exit_reports(store, nproc) if rep is not None}
    return bool(running) and running <= named


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "hangs (stopped by the launcher)"
    if code < 0:
        try:
            return f"died (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"died (signal {-code})"
    return f"died (exit code {code})"


def failure_line(codes: list[int | None], reports: list[dict | None]) -> tuple[str, int | None]:
    """One line naming the failed rank, from the exit codes (None: still running when stopped) and the
    ranks' reports. A rank's own error comes first, then a rank that ended without a report, then the
    rank that the others named."""
    own = [
        r
        for r, rep in enumerate(reports)
        if rep is not None and rep["culprit"] is None and not rep["error"].startswith("RankFailure")
    ]
    silent = [r for r, (code, rep) in enumerate(zip(codes, reports)) if rep is None and code != 0]
    named = [rep["culprit"] for rep in reports if rep is not None and rep["culprit"] is not None]
    if own:
        culprit, what = own[0], f"failed: {reports[own[0]]['error']}"
    elif silent:
        culprit = max(set(silent), key=lambda r: (named.count(r), codes[r] is not None, -r))
        what = _how_it_ended(codes[culprit])
    elif named:
        culprit = max(set(named), key=named.count)
        what = "failed"
    else:
        return f"the run failed (exit codes {codes}) and no rank could be named", None
    stopped = [r for r, rep in enumerate(reports) if rep is not None and r != culprit and r not in own]
    also = [r for r in own if r != culprit]
    tail = "".join(
        f"; {'ranks' if len(group) > 1 else 'rank'} {', '.join(map(str, group))} {how}"
        for group, how in ((stopped, "stopped because of it"), (also, "failed as well"))
        if group
    )
    return f"rank {culprit} {what}{tail}", culprit


@contextmanager
def _terminate_on_signals():
    """SIGTERM/SIGHUP to the launcher end it through its cleanup (the ranks are stopped) instead of at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def _quiet_torch_logs():
    """c10d's C++ warnings (socket time-outs) would bury the one line a failure gets."""
    old = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_CPP_LOG_LEVEL"]
        else:
            os.environ["TORCH_CPP_LOG_LEVEL"] = old


def launch(
    fn: Callable,
    nproc: int,
    *args,
    backend: str | None = None,
    init_method: str | None = None,
    threads: int | None = None,
    timeout: float = 300.0,
    **kwargs,
) -> None:
    """Run fn(*args, **kwargs) in `nproc` new local processes, each joined to one process group (gloo on
    CPU, NCCL when every process can have its own GPU). The ranks die with the launcher; when one fails,
    the others are stopped and a RankFailure names it in one line.

    threads: torch threads per process (default: CPU cores / nproc, at least 1). timeout: seconds any wait
    between ranks may take (set-up included); init_method: a rendezvous of your own instead of the store
    this launcher hosts."""
    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc else "gloo"
    nproc = check_nproc(nproc, backend)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    threads = threads or max(1, available_cores() // nproc)
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=timeout)
    )
    with _terminate_on_signals():
        with _quiet_torch_logs():
            ctx = mp.start_processes(
                _worker,
                args=(fn, nproc, store.port, os.getpid(), init_method, backend, threads, timeout, args, kwargs),
                nprocs=nproc,
                join=False,
                start_method="spawn",
            )
        procs = ctx.processes
        try:
            first_failure = None
            while any(p.exitcode is None for p in procs):
                if first_failure is None and any(p.exitcode not in (None, 0) for p in procs):
                    first_failure = time.monotonic()
                if first_failure is not None and time.monotonic() - first_failure > min(timeout, 3.0) + 2.0:
                    break  # the others had the time to name the failed rank; the rest are hung or waiting
                if first_failure is not None and _only_culprits_left(procs, store, nproc):
                    break  # every rank still running was named by one that stopped: hung, nothing more to learn
                multiprocessing.connection.wait([p.sentinel for p in procs if p.exitcode is None], timeout=0.2)
            codes = [p.exitcode for p in procs]
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join()
    if any(codes):
        line, culprit = failure_line(codes, _exit_reports(store, nproc))
        raise RankFailure(line, culprit)
