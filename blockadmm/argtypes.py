"""Argument types and the error boundary shared by every `blockadmm` command.

One list syntax everywhere: comma-separated (`--seeds 0,1,2`, `--hidden 256,256`). Values are checked when the
command line is parsed, so a bad value ends in argparse's one-line usage error; `run_command` turns any error
raised later into one line on stderr and a non-zero exit (set BLOCKADMM_TRACEBACK=1 to see the traceback).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from typing import Callable, List

__all__ = ["ArgumentParser", "positive_int", "nonneg_int", "positive_float", "nonneg_float", "int_list", "seed",
           "seed_list", "float_list", "str_list", "device", "output_dir", "run_command"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its usage error on one line, `prog: error: message (see prog --help)`; its
    subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, text: str, what: str, ok: Callable[[float], bool]):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, "an integer >= 1", lambda v: v >= 1)


def nonneg_int(text: str) -> int:
    return _number(int, text, "an integer >= 0", lambda v: v >= 0)


SEED_MAX = 2**32 - 1  # what numpy and scikit-learn take as a seed (torch takes more)


def seed(text: str) -> int:
    return _number(int, text, f"a seed: an integer in 0..{SEED_MAX}", lambda v: 0 <= v <= SEED_MAX)


def positive_float(text: str) -> float:
    return _number(float, text, "a finite number > 0", lambda v: v > 0)


def nonneg_float(text: str) -> float:
    return _number(float, text, "a finite number >= 0", lambda v: v >= 0)


def _list(item: Callable, text: str) -> list:
    parts = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in parts):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list such as 1,2,3, got {text!r}")
    return [item(t) for t in parts]


def int_list(text: str) -> List[int]:
    return _list(positive_int, text)


def seed_list(text: str) -> List[int]:
    return _list(seed, text)


def float_list(text: str) -> List[float]:
    return _list(positive_float, text)


def str_list(text: str) -> List[str]:
    return _list(str, text)


def device(text: str) -> str:
    """A torch device that exists here: `cuda` without a GPU is refused at parse time."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def output_dir(text: str) -> str:
    """A folder the command can write into: refused when it is a file or cannot be created or written."""
    path = os.path.abspath(os.path.expanduser(text))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a folder for the run's outputs")
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text!r} ({probe} is not a writable folder)")
    return text


def run_command(prog: str, fn: Callable[[], int]) -> int:
    """Run a command's body; any error becomes one line `prog: error: ...` and exit status 1 (Ctrl-C: 130)."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last checkpoint written (if any) is kept", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:  # the error boundary of a command line: never a traceback unless asked for
        if os.environ.get("BLOCKADMM_TRACEBACK"):
            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


LOGS = ("tensorboard", "csv")


def modes(text: str) -> list[str]:
    """--mode: online, batch or both."""
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    if not chosen or any(m not in ("online", "batch") for m in chosen):
        raise argparse.ArgumentTypeError(f"--mode takes online, batch or online,batch; got {text!r}")
    return chosen


def log_kinds(text: str) -> list[str]:
    """--log: tensorboard, csv or both."""
    kinds = str_list(text)
    if any(k not in LOGS for k in kinds):
        raise argparse.ArgumentTypeError(f"--log takes {', '.join(LOGS)} or both (tensorboard,csv); got {text!r}")
    return kinds
