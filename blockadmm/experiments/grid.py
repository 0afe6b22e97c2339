"""`blockadmm experiment grid`: the whole grid of the fair-baseline claims in one command, timed.

The fair nets, the init-gain map, label noise, the time budget and small batches (robustness), and DeepFacto against
the unrolled-NMF layer, each as its own experiment command in a worker process (--jobs of them at once), longest
first; every cell is written as it finishes, so a rerun resumes. OUT/grid/full.json (--quick: quick.json) records the
wall time, the load average (sampled every 30 s) and each unit's time, rewritten after every unit.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

from ..argtypes import positive_int
from . import fair, robustness
from .results_io import load_json

LOAD_EVERY_S = 30.0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes at once (one per free core)")
    p.add_argument("--quick", action="store_true", help="every experiment's --quick run (under 2 minutes in all)")
    p.add_argument("--out", default="runs/experiments/grid")
    p.add_argument("--no-progress", action="store_true")


def units(out: str, quick: bool) -> list[dict]:
    """The grid's experiment commands, longest first; `after` names the units whose results one needs."""
    fair_dir, flags = os.path.join(out, "fair"), ["--no-progress"]
    if quick:
        return [
            {"name": "fair", "argv": ["fair", "--quick", "--out", fair_dir, *flags]},
            {"name": "robustness", "argv": ["robustness", "--quick", "--out", os.path.join(out, "robustness"), *flags]},
            {
                "name": "deepfacto_unrolled",
                "argv": ["deepfacto_unrolled", "--quick", "--out", os.path.join(out, "deepfacto_unrolled"), *flags],
            },
        ]
    nets = sorted(fair.DEFAULT_NETS, key=lambda n: -n[0])
    net_units = [
        {"name": f"fair {d}x{a}", "argv": ["fair", "--nets", f"{d}x{a}", "--out", fair_dir, *flags]} for d, a in nets
    ]
    map_units = [
        {
            "name": f"map gain {g:g}",
            "argv": [
                "robustness",
                "--parts",
                "map",
                "--gains",
                f"{g:g}",
                "--out",
                os.path.join(out, "robustness"),
                *flags,
            ],
        }
        for g in robustness.GAINS
    ]
    budget_net, batch_net = ("{}x{}".format(*net) for net in (robustness.BUDGET_NET, robustness.SMALL_BATCH_NET))
    return (
        net_units[:4]  # 32 and 16 layers
        + map_units
        + net_units[4:]
        + [
            {
                "name": "deepfacto_unrolled",
                "argv": ["deepfacto_unrolled", "--out", os.path.join(out, "deepfacto_unrolled"), *flags],
            },
            {
                "name": "noise, budget, batch",
                "after": [f"fair {budget_net}", f"fair {batch_net}"],
                "argv": [
                    "robustness",
                    "--parts",
                    ",".join(robustness.PARTS[1:]),
                    "--fair",
                    fair_dir,
                    "--out",
                    os.path.join(out, "settings"),
                    *flags,
                ],
            },
        ]
    )


class LoadSampler(threading.Thread):
    """The 1-minute load average every LOAD_EVERY_S seconds, until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = [os.getloadavg()[0]]
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(LOAD_EVERY_S):
            self.samples.append(os.getloadavg()[0])


def run_units(todo: list[dict], jobs: int, report) -> None:
    """Run `todo` with up to `jobs` worker processes, a unit only once its `after` units are done; `report(unit)`
    after each one ends (unit gets rc, start_s, wall_s). A failed unit is retried once (it resumes)."""
    t0, running, done, pending = time.monotonic(), {}, set(), list(todo)
    while pending or running:
        for unit in [u for u in pending if set(u.get("after", ())) <= done][: jobs - len(running)]:
            pending.remove(unit)
            unit["start_s"] = time.monotonic() - t0
            cmd = [sys.executable, "-m", "blockadmm.experiments", *unit["argv"]]
            running[subprocess.Popen(cmd, stdout=unit["log"], stderr=subprocess.STDOUT)] = unit
        if not running:  # pending units wait on one that failed
            for unit in pending:
                unit["rc"] = "not run: " + ", ".join(sorted(set(unit["after"]) - done)) + " failed"
                report(unit)
            return
        time.sleep(1.0)
        for proc in [p for p in running if p.poll() is not None]:
            unit = running.pop(proc)
            unit["rc"], unit["wall_s"] = proc.returncode, time.monotonic() - t0 - unit["start_s"]
            unit["tries"] = unit.get("tries", 0) + 1
            if proc.returncode != 0 and unit["tries"] < 2:
                pending.insert(0, unit)
                continue
            if proc.returncode == 0:
                done.add(unit["name"])
            report(unit)


def runs_done(out: str) -> dict:
    """Per results file under `out`, the runs it already holds (a rerun of the grid skips them)."""
    paths = glob.glob(os.path.join(out, "*", "*.json"))
    return {
        os.path.relpath(p, out): len(load_json(p).get("records", []))
        for p in sorted(paths)
        if not p.endswith("summary.json") and not p.startswith(os.path.join(out, "grid"))
    }


def main(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    todo = units(args.out, args.quick)
    timing = os.path.join(args.out, "grid", "quick.json" if args.quick else "full.json")
    logs = os.path.join(args.out, "grid", "logs")
    os.makedirs(logs, exist_ok=True)
    for unit in todo:
        unit["log"] = open(os.path.join(logs, unit["name"].replace(" ", "_").replace(",", "") + ".log"), "a")
    before = runs_done(args.out)  # a resumed grid says how many runs it did not time
    load, start, t0 = LoadSampler(), datetime.datetime.now(datetime.timezone.utc), time.monotonic()
    load.start()
    finished: list[dict] = []

    def write(complete: bool) -> None:
        samples = load.samples
        info = {
            "command": "blockadmm experiment grid" + (" --quick" if args.quick else "") + f" --jobs {args.jobs}",
            "complete": complete,
            "start_utc": start.isoformat(timespec="seconds"),
            "wall_s": time.monotonic() - t0,
            "jobs": args.jobs,
            "cpu_count": os.cpu_count(),
            "loadavg_1min": {"mean": sum(samples) / len(samples), "max": max(samples), "samples": samples},
            "units": [{k: u.get(k) for k in ("name", "argv", "rc", "tries", "start_s", "wall_s")} for u in finished],
            "not_finished": [u["name"] for u in todo if u not in finished],
            "runs_done_before": before,
        }
        with open(timing + ".tmp", "w") as f:
            json.dump(info, f, indent=1)
        os.replace(timing + ".tmp", timing)

    def report(unit: dict) -> None:
        finished.append(unit)
        write(False)
        if not args.no_progress:
            print(f"{time.monotonic() - t0:7.0f}s  {unit['name']}: rc {unit['rc']}", flush=True)

    def stop(signum, frame):  # a stopped grid keeps what finished and says what did not
        write(False)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    run_units(todo, args.jobs, report)
    load.halt.set()
    complete = all(u.get("rc") == 0 for u in todo)
    write(complete)
    print(
        f"grid {'complete' if complete else 'INCOMPLETE'} in {time.monotonic() - t0:.0f} s, load average "
        f"{sum(load.samples) / len(load.samples):.2f} (max {max(load.samples):.2f}); {timing}"
    )
    return 0 if complete else 1
