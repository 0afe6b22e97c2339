"""The bench suites run (CI): `python -m bench --no-timing` on tiny sizes, timing disabled.

Speed is never asserted here (DESIGN §4); this proves every suite, the results file, the markdown
table, the plots and the README renderer work, so the published numbers can be regenerated.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_without_timing(tmp_path):
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n\ntext\n")
    env = dict(os.environ)
    env.pop("BLOCKADMM_BACKEND", None)
    p = subprocess.run(
        [sys.executable, "-m", "bench", "--no-timing", "--threads", "1", "--out", str(out), "--name", "ci"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "ci.json").read_text())
    assert res["timing"] is False and res["command"].startswith("python -m bench")
    assert res["machine"]["cpu"] and res["machine"]["cores"] >= 1 and "torch" in res["versions"]
    assert len(res["load_avg"]["start"]) == 3
    ops_impls = {(r["op"], r["impl"]) for r in res["ops"]}
    for op in ("aux_dual_update", "nmf_mu_update", "nmf_hals_update", "linear_block_fwd_bwd"):
        assert (op, "eager") in ops_impls
    nmf = {r["impl"]: r for r in res["nmf"]}
    # the eager reference always; the C++ module's row wherever it loads (it does here), scikit-learn's where installed
    assert "blockadmm eager" in nmf
    from blockadmm import ops

    if ops.status()["cpu"] is None:
        assert "blockadmm cpu" in nmf
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pass
    else:
        assert "sklearn mu" in nmf
    # same initial factors and iterations: our update and scikit-learn's reach the same error
    if "sklearn mu" in nmf and "blockadmm cpu" in nmf:
        assert abs(nmf["blockadmm cpu"]["err_vs_sklearn"]) < 1e-4
    assert {"backprop", "admm-online", "admm-batch"} <= set(res["end_to_end"])
    assert set(res["end_to_end_cnn"]) == {"backprop", "admm-online", "admm-online-fast", "admm-online-2blocks",
                                          "admm-online-fast-2blocks"}
    assert res["end_to_end_cnn"]["admm-online-2blocks"]["blocks"] == 2
    assert "small CNN" in " ".join(t["what"] for t in res["targets"])
    md = (out / "ci.md").read_text()
    assert md.startswith("###") and "**Small CNN** (digits" in md and "| admm-online-fast | 3 | 1 |" in md
    assert res["plots"] and all((out / p).exists() for p in res["plots"])
    # the README block is rendered from the results folder by tools/readme.py, between markers it adds when absent
    p = subprocess.run([sys.executable, os.path.join("tools", "readme.py"), "--bench-results", str(out),
                        "--results", str(tmp_path / "none"), "--readme", str(readme)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    text = readme.read_text()
    assert "<!-- bench:start -->" in text and "<!-- bench:end -->" in text and "No GPU was lent" in text
