"""Mutation check: inject known bugs one at a time into a copy of the repository and run the tests that must
catch them (issue 21). Not collected by pytest, not in CI.

    python -m tests.mutations                 # every mutation
    python -m tests.mutations -k nmf -k dual  # those whose name contains any of the words
    python -m tests.mutations --list

Each entry is (name, file, exact old snippet, replacement, test files, description). The snippet must occur
exactly once in the file; when the code it targets has moved, the entry reports "snippet not found" (or
"snippet ambiguous") instead of a result, and is edited to the new code. An entry whose file this checkout does
not have (the distributed entries target the package `blockadmm/distributed/` of branch `dist`) is reported as
"SKIPPED ... file not found" and leaves the exit status alone. The working tree is never touched:
the repository is copied to a temporary folder, the copy is mutated, and pytest runs there (-x, stopping at the
first failure). A mutation is "caught" when pytest fails, "survived" when it passes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutation(NamedTuple):
    name: str
    file: str
    old: str
    new: str
    tests: Sequence[str]
    description: str


ORACLE = "tests/test_step_oracle.py"
CORE = "blockadmm/engine/core.py"
RULES = "blockadmm/engine/rules.py"
DIST = "blockadmm/distributed/trainer.py"  # the distributed package of branch `dist`
MUTATIONS = [
    # ---------------------------------------------------------------- the references
    Mutation(
        "ref-dual-sign",
        "blockadmm/ref/aux_dual.py",
        "un = uj + dual_step * diff",
        "un = uj - dual_step * diff",
        ["tests/test_ref.py"],
        "the reference dual update with its sign flipped",
    ),
    Mutation(
        "ref-prox-dropped",
        "blockadmm/ref/aux_dual.py",
        "zn = prox.apply(zn, lr)",
        "zn = zn",
        ["tests/test_ref.py"],
        "the reference aux/dual update ignores the prox",
    ),
    Mutation(
        "prox-nonneg-identity",
        "blockadmm/prox.py",
        "return z.clamp_min(0.0)",
        "return z",
        ["tests/test_ref.py"],
        "Prox.nonneg returns z unchanged",
    ),
    Mutation(
        "prox-l1-threshold",
        "blockadmm/prox.py",
        "t = lr * self.lam",
        "t = self.lam",
        ["tests/test_ref.py"],
        "Prox.l1 thresholds by lam instead of lr*lam",
    ),
    Mutation(
        "ref-nmf-W-l2-dropped",
        "blockadmm/ref/nmf.py",
        "(Hf.T @ Hf) @ Wf + l1 + l2 * Wf + eps",
        "(Hf.T @ Hf) @ Wf + l1 + eps",
        ["tests/test_ref.py"],
        "the reference NMF update of W without its l2 term",
    ),
    Mutation(
        "ref-hals-projected-gradient",
        "blockadmm/ref/nmf_hals.py",
        "pg = torch.where(h == 0, grad.clamp(max=0), grad)",
        "pg = grad",
        ["tests/test_kernels_nmf_hals.py"],
        "the HALS reference counts the raw gradient, not the projected one, at zero codes",
    ),
    Mutation(
        "triton-hals-perm-ignored",
        "kernels/nmf_hals.py",
        "HAS_PERM=perm is not None",
        "HAS_PERM=False",
        ["tests/test_kernels_nmf_hals.py"],
        "the Triton HALS pass visits the components in the order 0..k-1 whatever perm says",
    ),
    # ---------------------------------------------------------------- the engine's step (blockadmm/engine/)
    Mutation(
        "trainer-dual-sign",
        CORE,
        "dual_step=self.config.dual_step, prox=self.constraints[k],",
        "dual_step=-self.config.dual_step, prox=self.constraints[k],",
        [ORACLE],
        "the engine's dual step with its sign flipped",
    ),
    Mutation(
        "trainer-dual-zero",
        CORE,
        "dual_step=self.config.dual_step, prox=self.constraints[k],",
        "dual_step=0.0, prox=self.constraints[k],",
        [ORACLE],
        "the dual step forced to 0",
    ),
    Mutation(
        "order-swapped",
        CORE,
        'return sorted(boundaries, reverse=self.config.order != "bottom-up")',
        'return sorted(boundaries, reverse=self.config.order == "bottom-up")',
        [ORACLE],
        "top-down and bottom-up swapped",
    ),
    Mutation(
        "aux-prox-none",
        CORE,
        "prox=self.constraints[k], memory=state.memory",
        "prox=None, memory=state.memory",
        [ORACLE],
        "the auxiliary step gets prox=None",
    ),
    Mutation(
        "aux-u-sign",
        RULES,
        "ops.aux_dual_update(z, u, a, grad_fn(z), rho=rho,",
        "ops.aux_dual_update(z, u.neg(), a, grad_fn(z), rho=rho,",
        [ORACLE],
        "u's sign flipped in the auxiliary step (grad and sign rules)",
    ),
    Mutation(
        "batch-ignores-stored-z",
        CORE,
        "state.z[k] = torch.where(fresh, h, z_rows[j]).contiguous()",
        "state.z[k] = h.clone()",
        [ORACLE],
        "batch mode starts every row from the forward pass, ignoring the stored z",
    ),
    Mutation(
        "lr-cap-removed",
        RULES,
        "return min(self.lr_z, 1.0 / rho)",
        "return self.lr_z",
        [ORACLE],
        "the min(lr_z, 1/rho) cap of the gradient step removed",
    ),
    Mutation(
        "primal-no-sqrt",
        CORE,
        "primal = (primal_sq.sqrt() / norms).tolist()",
        "primal = (primal_sq / norms).tolist()",
        [ORACLE],
        "the reported primal residual without the square root",
    ),
    Mutation(
        "dual-residual-no-rho",
        CORE,
        "dual = [self.rho[k] * d for k, d in",
        "dual = [d for k, d in",
        [ORACLE],
        "the reported dual residual without rho",
    ),
    Mutation(
        "jacobi-reads-live-z",
        CORE,
        "state.z_src = [None if t is None else t.clone() for t in state.z]",
        "state.z_src = state.z",
        [ORACLE],
        "Jacobi reads the neighbours' current values instead of the sweep start",
    ),
    Mutation(
        "online-last-dual-kept",
        CORE,
        "return self.online and sweep == self.config.sweeps - 1",
        "return False",
        [ORACLE],
        "online mode runs the last sweep's dual step (the reported primal is then another one)",
    ),
    Mutation(
        "adam-no-bias-correction",
        RULES,
        "direction = (memory.m / (1 - beta1 ** memory.t))",
        "direction = (memory.m / 1.0)",
        [ORACLE],
        "the Adam auxiliary step without the first moment's bias correction",
    ),
    Mutation(
        "tables-not-written",
        "blockadmm/trainer.py",
        "            self.tables.scatter(index, state.z, state.u)\n",
        "            pass\n",
        [ORACLE],
        "batch mode does not write its rows back",
    ),
    Mutation(
        "checkpoint-not-atomic",
        "blockadmm/engine/checkpoint.py",
        '        with open(tmp, "wb") as f:\n',
        '        tmp = path  # written in place, os.replace(path, path) a no-op\n        with open(tmp, "wb") as f:\n',
        ["tests/test_checkpoint.py", "tests/test_checkpoint_kill.py"],
        "save_checkpoint writes the checkpoint file in place instead of a temporary renamed over it",
    ),
    # ---------------------------------------------------------------- NMF / DeepFacto
    Mutation(
        "nmf-target-clamp-removed",
        "blockadmm/nmf.py",
        "Ht, _ = _to_rows((target + dual).detach().float().clamp_min(0.0))",
        "Ht, _ = _to_rows((target + dual).detach().float())",
        ["tests/test_nmf.py"],
        "the NMF block's W update takes z + u without clamping it at 0",
    ),
    Mutation(
        "nmf-mirror-sign",
        "blockadmm/nmf.py",
        "step = (-self.eg_lr * grad / norm)",
        "step = (self.eg_lr * grad / norm)",
        ["tests/test_nmf.py"],
        "the NMF code boundary's mirror step goes uphill",
    ),
    Mutation(
        "nmf-input-grad-sign",
        "blockadmm/nmf.py",
        "return self.reconstruct(-rho * (z_out + u_out - H0))",
        "return self.reconstruct(rho * (z_out + u_out - H0))",
        ["tests/test_nmf.py"],
        "the NMF block's input gradient with its sign flipped",
    ),
    Mutation(
        "nmf-input-grad-no-rho",
        "blockadmm/nmf.py",
        "return self.reconstruct(-rho * (z_out + u_out - H0))",
        "return self.reconstruct(-(z_out + u_out - H0))",
        ["tests/test_nmf.py"],
        "the NMF block's input gradient without rho",
    ),
    # ---------------------------------------------------------------- distributed (the package of branch `dist`)
    Mutation(
        "dist-no-step-when-stale",
        DIST,
        "        self._batch_info[state.step][\"terms\"] = self.engine.weight_step(state, self.own)\n",
        "        optimizers = self.engine.optimizers\n"
        "        if self.staleness > 0:\n"
        "            self.engine.optimizers = [None] * len(optimizers)\n"
        "        self._batch_info[state.step][\"terms\"] = self.engine.weight_step(state, self.own)\n"
        "        self.engine.optimizers = optimizers\n",
        ["tests/test_distributed_oracle.py"],
        "the distributed trainer takes no optimizer step when staleness > 0",
    ),
    Mutation(
        "dist-dual-zero",
        DIST,
        "            self.engine.dual_step(state, self.owned)\n",
        "            duals = [state.u[k].clone() for k in self.owned]\n"
        "            self.engine.dual_step(state, self.owned)\n"
        "            for k, u in zip(self.owned, duals):\n"
        "                state.u[k].copy_(u)\n",
        ["tests/test_distributed_oracle.py"],
        "the distributed dual step forced to 0 (u restored after it; the residual is still computed)",
    ),
    Mutation(
        "dist-tables-ignored",
        DIST,
        "self.engine.init_batch(state, self.own, *self.tables.gather(index), h=h)",
        "self.engine.init_batch(state, self.own, *[torch.zeros_like(v) if i == 0 else v "
        "for i, v in enumerate(self.tables.gather(index))], h=h)",
        ["tests/test_distributed_oracle.py"],
        "distributed batch mode ignores the stored z (every row taken as never seen)",
    ),
]


def _copy_repo(dst: str) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".benchmarks", "runs", "results")
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    if os.path.isdir(os.path.join(ROOT, "results")):  # tests read a few committed result files
        shutil.copytree(
            os.path.join(ROOT, "results"),
            os.path.join(dst, "results"),
            ignore=shutil.ignore_patterns("checkpoint*.pt", "tables*"),
        )


def _pytest(repo: str, tests: Sequence[str], timeout: float) -> tuple:
    env = dict(os.environ, PYTHONPATH=repo, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out", time.monotonic() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else p.stderr.strip()[-200:]
    failed = next((ln.split(" ", 1)[1] for ln in lines if ln.startswith("FAILED ")), "")
    return p.returncode, (failed or summary)[:160], time.monotonic() - t0


def _apply(repo: str, m: Mutation) -> str:
    """Mutate the copy; returns "" or why the mutation could not be applied."""
    path = os.path.join(repo, m.file)
    with open(path) as f:
        text = f.read()
    n = text.count(m.old)
    if n != 1:
        return f"snippet {'not found' if n == 0 else f'ambiguous ({n} matches)'} in {m.file}"
    with open(path, "w") as f:
        f.write(text.replace(m.old, m.new))
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[], help="run the mutations whose name contains this word")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the named test files")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.k or any(w in m.name for w in args.k)]
    if args.list:
        for m in chosen:
            print(f"{m.name:28} {m.file:28} {m.description}")
        return 0
    tmp = tempfile.mkdtemp(prefix="blockadmm-mutations-")
    clean, repo = os.path.join(tmp, "clean"), os.path.join(tmp, "repo")
    try:
        _copy_repo(clean)
        results = {"caught": [], "survived": [], "skipped": [], "not applied": []}
        runnable = []
        for m in chosen:  # an entry whose file this checkout lacks (e.g. the distributed package) is skipped
            if os.path.exists(os.path.join(clean, m.file)):
                runnable.append(m)
            else:
                results["skipped"].append(m.name)
                print(f"SKIPPED  {m.name}: file not found: {m.file}", flush=True)
        if runnable and not args.no_baseline:  # every named test file must pass on the unmutated copy
            files = sorted({t for m in runnable for t in m.tests})
            rc, why, secs = _pytest(clean, files, args.timeout)
            print(f"baseline ({' '.join(files)}): {'pass' if rc == 0 else 'FAIL: ' + why} [{secs:.0f} s]", flush=True)
            if rc != 0:
                return 2
        for m in runnable:
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(clean, repo, symlinks=True)
            why = _apply(repo, m)
            if why:
                results["not applied"].append(m.name)
                print(f"NOT APPLIED {m.name}: {why}", flush=True)
                continue
            rc, out, secs = _pytest(repo, m.tests, args.timeout)
            verdict = "caught" if rc not in (0, None) else "survived"
            results[verdict].append(m.name)
            print(f"{verdict.upper():8} {m.name:28} [{secs:4.0f} s] {m.description}  <- {out}", flush=True)
        print(
            f"\ntotal: {len(results['caught'])} caught, {len(results['survived'])} survived, "
            f"{len(results['not applied'])} not applied, {len(results['skipped'])} skipped (file not found), "
            f"of {len(chosen)}"
        )
        for k in ("survived", "not applied", "skipped"):
            if results[k]:
                print(f"{k}: {', '.join(results[k])}")
        return 0 if not results["survived"] and not results["not applied"] else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
