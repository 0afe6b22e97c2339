"""The package's shape: no import circles, arrows pointing down, a core that needs no extras.

Imports are read from the source (every `import` / `from ... import`, at any depth, lazy ones too: a circle
through a function-level import is still a circle).
"""
import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "blockadmm"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules():
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known) -> set:
    """The blockadmm modules that `name` imports (a `from pkg import sub` counts as importing pkg.sub)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("blockadmm"):
                out.add(t)
    return out


def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def parents(name):
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_circles():
    edges = graph()
    # a package's __init__ importing its own submodules is how packages expose them, not a circle
    edges = {m: {t for t in ts if t not in parents(m) and m not in parents(t)} for m, ts in edges.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_arrows_point_down():
    edges = graph()
    for mod, targets in edges.items():
        lab = mod.startswith("blockadmm.experiments") or mod == "blockadmm.cli"
        if not lab:
            assert not any(t.startswith("blockadmm.experiments") for t in targets), f"{mod} imports the experiments"
        assert "blockadmm.cli" not in targets or mod == "blockadmm.__main__", f"{mod} imports the command line"
        if mod.startswith("blockadmm.ref"):  # nothing of the package but its types (the Prox of the aux step)
            assert all(t.startswith("blockadmm.ref") or t == "blockadmm.prox" for t in targets), f"{mod}: {targets}"


def test_library_modules_stay_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_core_runs_without_the_extras():
    """`import blockadmm`, the ops, `fit` on a TensorDataset and NMFLayer.fit_basis with scikit-learn, mlxtend,
    mnist1d, matplotlib and tensorboard made unimportable (as after `pip install .` with no extras)."""
    script = textwrap.dedent("""
        import importlib.abc
        import importlib.machinery
        import sys
        BLOCKED = ("sklearn", "mlxtend", "mnist1d", "matplotlib", "tensorboard")

        class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):  # found (torch probes), but importing fails
                if name.split(".")[0] in BLOCKED:
                    return importlib.machinery.ModuleSpec(name, self)

            def create_module(self, spec):
                raise ImportError(f"{spec.name} is blocked in this test")

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, Block())
        import torch
        from torch import nn
        from torch.utils.data import TensorDataset
        import blockadmm
        from blockadmm import ops
        from blockadmm.nmf import NMFLayer

        torch.manual_seed(0)
        X, Y = torch.randn(64, 5), torch.randint(0, 3, (64,))
        trainer = blockadmm.BlockADMM([nn.Sequential(nn.Linear(5, 8), nn.ReLU()), nn.Linear(8, 3)], input_shape=(5,),
                                      mode="batch", num_samples=64)
        trainer.fit(TensorDataset(X, Y), 1, batch_size=16, progress=False)
        z, u, a = torch.randn(4, 3), torch.zeros(4, 3), torch.randn(4, 3)
        ops.aux_dual_update(z, u, a, None, rho=1.0, lr=0.1)
        NMFLayer(4, n_components=2).fit_basis(torch.rand(10, 4), max_iter=5)  # the solvers need no extra
        try:  # the scikit-learn estimator names the extra to install, in one line
            from blockadmm.nmf import NMF  # noqa: F401
        except ImportError as err:
            assert 'pip install "blockadmm[sklearn]"' in str(err) and "\\n" not in str(err), str(err)
        else:
            raise AssertionError("blockadmm.nmf.NMF imported without scikit-learn")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "BLOCKADMM_BACKEND"}
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout[-2000:] + p.stderr[-3000:]
