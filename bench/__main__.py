"""`python -m bench` (from the repository root): run every bench suite, write the results and the table.

    python -m bench                  full sizes (the published numbers); several minutes
    python -m bench --quick          smaller sizes and fewer iterations, under 2 minutes
    python -m bench --no-timing      tiny sizes, pytest-benchmark disabled: proves every path runs (CI)

A run writes bench/results/<machine>.json (machine, versions, command, load average at start and
end, the machine's limits, every row, the targets), <machine>.md (the table) and <machine>-*.png.
Suites: bench_limits (run first and again last), bench_ops, bench_nmf, bench_end_to_end; each is a
pytest-benchmark file that also runs on its own (`pytest bench/bench_nmf.py`). README.md's bench block is
rendered from the results folder by `python tools/readme.py`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUITES = {"ops": "bench_ops.py", "nmf": "bench_nmf.py", "end_to_end": "bench_end_to_end.py"}
KERNEL_SUITE = "bench_ops_cpu.py"  # written for the kernels issue; pytest-benchmark JSON only, harvested below


def _harvest(path):
    """Records from a pytest-benchmark JSON for suites that do not write records (bench_ops_cpu.py)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    out = []
    for b in data.get("benchmarks", []):
        if KERNEL_SUITE not in b.get("fullname", ""):
            continue
        st = b["stats"]
        out.append(
            {
                "suite": "ops_cpu",
                "name": b["name"],
                "s": st["min"],
                "median_s": st["median"],
                "rounds": st["rounds"],
                "GBps": b.get("extra_info", {}).get("GB/s"),
            }
        )
    return out


def _pytest(files, env, extra, log):
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--rootdir",
        ROOT,
        *[os.path.join(HERE, f) for f in files],
        *extra,
    ]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def run(args) -> int:
    sys.path.insert(0, ROOT)
    from bench import _common, report

    mode = "tiny" if args.no_timing else ("quick" if args.quick else "full")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-")
    records, log = os.path.join(work, "records.jsonl"), os.path.join(work, "pytest.log")
    env = dict(
        os.environ,
        BENCH_MODE=mode,
        BENCH_RECORDS=records,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if args.threads:  # torch (intra-op), MKL and OpenBLAS (scikit-learn's numpy) alike
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    extra = ["--benchmark-disable"] if args.no_timing else ["--benchmark-json", os.path.join(work, "benchmark.json")]
    suites = [SUITES[s] for s in (args.suites.split(",") if args.suites else SUITES)]

    load_start, t0 = _common.load_avg(), time.time()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"bench: mode {mode}, load average {load_start}, suites {', '.join(suites)}; pytest log {log}", file=sys.stderr
    )
    if mode == "full" and "bench_ops.py" in suites and os.path.exists(os.path.join(HERE, KERNEL_SUITE)):
        suites.append(KERNEL_SUITE)  # the kernel issue's CPU checks: its indexed (batch-mode) rows join the report
    rc = _pytest(["bench_limits.py", *suites], dict(env, BENCH_PHASE="start"), extra, log)
    if not args.no_timing:  # the limits again, so a disturbed first measurement cannot flatter the ops
        rc = (
            _pytest(
                ["bench_limits.py"],
                dict(env, BENCH_PHASE="end"),
                ["--benchmark-json", os.path.join(work, "limits-end.json")],
                log,
            )
            or rc
        )
    load_end = _common.load_avg()

    recs = []
    if os.path.exists(records):
        with open(records) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    if not args.no_timing:
        recs += _harvest(os.path.join(work, "benchmark.json"))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = _common.machine_info()
    name = args.name or machine["name"] + (f"-{args.threads}t" if args.threads else "") + (
        "-notiming" if args.no_timing else ""
    )
    meta = {
        "machine": dict(machine, name=name),
        "versions": _common.versions(),
        "command": "python -m bench" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "mode": mode,
        "timing": not args.no_timing,
        "started": started,
        "duration_s": time.time() - t0,
        "load_avg": {"start": load_start, "end": load_end},
        "pytest_exit": rc,
    }
    res = report.summarize(recs, meta)
    res["plots"] = [os.path.relpath(p, args.out) for p in report.plots(res, args.out)]
    res["records"] = recs
    base = os.path.join(args.out, name)
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(base + ".md", "w") as f:
        f.write(report.render(res, plots_prefix="") + "\n")
    print(report.render(res))
    print(
        f"\nbench: wrote {base}.json, {base}.md and {len(res['plots'])} plots in {time.time() - t0:.0f} s",
        file=sys.stderr,
    )
    if rc != 0:
        with open(log) as f:
            tail = f.read()[-6000:]
        print(f"bench: pytest exited {rc}; the end of its log:\n{tail}", file=sys.stderr)
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer iterations (< 2 minutes)")
    p.add_argument("--no-timing", action="store_true", help="tiny sizes, pytest-benchmark disabled (CI smoke run)")
    p.add_argument("--suites", default="", help=f"comma-separated subset of {','.join(SUITES)} (limits always run)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder (default bench/results)")
    p.add_argument("--name", default="", help="results file stem (default: the machine's name)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for torch, MKL and OpenBLAS (default: their defaults, one per core)",
    )
    args = p.parse_args(argv)
    args.out = os.path.abspath(args.out)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
