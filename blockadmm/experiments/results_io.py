"""Results files: `NAME.json` holds each run's record without its per-epoch series (small, plain, diffable),
`NAME.history.json.gz` beside it the series (lists of per-epoch or per-step dicts, floats to 6 significant digits);
`read_results` joins them.

Kept apart so that the numbers a claim needs stay small and diffable, and the histories cost a fraction of their
plain size in the repository.
"""
from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess

SERIES_DIGITS = 6  # significant digits of the floats in a history file (accuracies k/n with n <= 10^5 stay exact)


def _is_series(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _rounded(value):
    """`value` with every float rounded to SERIES_DIGITS significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{SERIES_DIGITS}g}")
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def load_json(path: str):
    """The JSON at `path`, or at `path`.gz when only the compressed file exists."""
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def history_path(path: str) -> str:
    """Where the series of the results file `path` go: NAME.json -> NAME.history.json.gz."""
    return path.removesuffix(".json") + ".history.json.gz"


def write_results(out: str, experiment: str, records: list[dict], meta: dict) -> str:
    """Write `out`/results.json and its history file (`save_results`); returns the path of results.json."""
    os.makedirs(out, exist_ok=True)
    return save_results(os.path.join(out, "results.json"), {"experiment": experiment, "meta": meta, "records": records})


def save_results(path: str, results: dict) -> str:
    """Write `results` (a dict with a "records" list) to `path`, each record's series to history_path(path)."""
    finals, series = [], []
    for record in results["records"]:
        finals.append({k: v for k, v in record.items() if not _is_series(v)})
        series.append({k: _rounded(v) for k, v in record.items() if _is_series(v)})
    # each file written whole then renamed: a process reading the results while another writes them (the grid's
    # workers) never sees half a file
    history = history_path(path)
    if any(series):
        # mtime 0: the same histories give the same bytes, so an unchanged re-run changes nothing in git
        with open(history + ".tmp", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(json.dumps({"records": series}, separators=(",", ":"), default=float).encode())
        os.replace(history + ".tmp", history)
    elif os.path.exists(history):
        os.remove(history)
    with open(path + ".tmp", "w") as f:
        json.dump({**results, "records": finals}, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    return path


def read_results(path: str) -> dict:
    """A results file with each record's series joined back from its history file (if any)."""
    res = load_json(path)
    history = history_path(path)
    if os.path.exists(history):
        series = load_json(history)["records"]
        if len(series) != len(res["records"]):
            raise ValueError(f"{history} holds {len(series)} records, {path} {len(res['records'])}: "
                             f"re-run the experiment to write both again")
        for record, extra in zip(res["records"], series):
            record.update(extra)
    return res


def provenance() -> dict:
    """What every results file records about where it ran: the commit (`git rev-parse HEAD`, "+dirty" with
    uncommitted changes to tracked files), the CPU model (lscpu's model name), the core count, torch's version."""
    import torch

    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "HEAD") or None
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"commit": commit, "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__}
