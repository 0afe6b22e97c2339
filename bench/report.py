"""From the suites' records to the results file, its markdown table and the PNG plots (tools/readme.py puts the
table in the README).

    summarize(records, meta) -> results     (the dict written to bench/results/<machine>.json)
    render(results) -> markdown             (bench/results/<machine>.md)
    plots(results, folder) -> [png paths]
"""

from __future__ import annotations

import os
from typing import List, Optional

TARGETS = {
    "aux_copy_fraction": 0.85,
    "aux_vs_compile": 1.0,
    "aux_vs_eager": 5.0,
    "nmf_mm_fraction": 0.8,
    "nmf_vs_sklearn": 1.15,
    "online_epoch_vs_backprop": 1.5,
    "cnn_fast_epoch_vs_backprop": 1.6,
    "cnn_epoch_vs_backprop": 4.0,
}
EQUAL_ERR_RTOL = 1e-3  # "equal reconstruction error": relative difference at most this
# "at the accuracy of the default run": a faster recipe's final test accuracy at most this many points below it
SAME_ACC_POINTS = 0.5
OP_ORDER = ["aux_dual_update", "nmf_mu_update", "nmf_hals_update", "linear_block_fwd_bwd"]
SIZE_ORDER = ["tiny", "small", "medium", "large"]
IMPL_ORDER = ["eager", "compile", "cpu", "sklearn", "eager cuda", "compile cuda", "triton", "cuda"]


def _best(recs, name, key):
    vals = [r[key] for r in recs if r["suite"] == "limits" and r["name"] == name and r.get(key)]
    return max(vals) if vals else None


def summarize(records: List[dict], meta: dict) -> dict:
    limits = {
        "copy_GBps": _best(records, "copy", "GBps"),
        "copy_8M_GBps": _best(records, "copy 8M", "GBps"),
        "mm_GFLOPs": _best(records, "mm", "GFLOPs"),
        "mm_bf16_GFLOPs": _best(records, "mm bf16", "GFLOPs"),
        "copy_cuda_GBps": _best(records, "copy cuda", "GBps"),
        "mm_cuda_GFLOPs": _best(records, "mm cuda", "GFLOPs"),
        "runs": [r for r in records if r["suite"] == "limits"],
    }
    copy_bw, mm = limits["copy_GBps"], limits["mm_GFLOPs"]
    dev_limits = {"cpu": (copy_bw, mm), "cuda": (limits["copy_cuda_GBps"], limits["mm_cuda_GFLOPs"])}

    # ---- ops
    ops_rows, skipped = [], []
    timed_ops = {(r["op"], r["size"], r["impl"]): r for r in records if r["suite"] == "ops" and "skipped" not in r}
    for r in records:
        if r["suite"] in ("ops", "nmf") and "skipped" in r:
            skipped.append({"name": r["name"], "reason": r["skipped"]})
    for (op, size, impl), r in timed_ops.items():
        row = {k: r[k] for k in ("op", "size", "impl", "device", "shape", "bound") if k in r}
        s = r.get("s")
        row["ms"] = None if s is None else s * 1e3
        if s:
            bw, fl = dev_limits.get(r.get("device", "cpu"), (None, None))
            if r.get("bytes"):
                row["GBps"] = r["bytes"] / s / 1e9
                row["limit_fraction"] = row["GBps"] / bw if bw else None
            else:
                row["GFLOPs"] = r["flops"] / s / 1e9
                row["limit_fraction"] = row["GFLOPs"] / fl if fl else None
            sk = timed_ops.get((op, size, "sklearn"))
            if sk and sk.get("s") and impl != "sklearn":
                row["vs_sklearn"] = sk["s"] / s
            for base in ("eager", "compile"):
                if r.get("device") == "cuda":
                    b = timed_ops.get((op, size, base + " cuda"))
                else:
                    b = timed_ops.get((op, size, base))
                if b is not None and impl == b["impl"]:
                    continue
                if b and b.get("s"):
                    row[f"vs_{base}"] = b["s"] / s
        ops_rows.append(row)
    ops_rows.sort(key=lambda r: (OP_ORDER.index(r["op"]), SIZE_ORDER.index(r["size"]), IMPL_ORDER.index(r["impl"])))

    # ---- nmf
    nmf_rows = []
    nmf = [r for r in records if r["suite"] == "nmf" and "skipped" not in r]
    for r in nmf:
        row = {k: r[k] for k in ("dataset", "impl", "shape", "iters", "rel_err", "threads") if k in r}
        spi = r.get("s_per_iter")
        row["ms_per_iter"] = None if spi is None else spi * 1e3
        if spi:
            row["GFLOPs"] = r["flops_per_iter"] / spi / 1e9
            row["mm_fraction"] = row["GFLOPs"] / mm if mm else None
        sk = next((x for x in nmf if x["dataset"] == r["dataset"] and x["impl"] == "sklearn mu"), None)
        if sk:
            row["err_vs_sklearn"] = (r["rel_err"] - sk["rel_err"]) / sk["rel_err"]
            if sk.get("s_per_iter") and spi and r["impl"] != "sklearn mu":
                row["vs_sklearn"] = sk["s_per_iter"] / spi
        nmf_rows.append(row)

    # the two n x d x k GEMMs of an iteration alone through torch.mm (bench_nmf.test_nmf_big_gemms):
    # what the shapes allow it
    nmf_big_gemms = {
        r["dataset"]: r["flops_per_iter"] / r["s_per_iter"] / 1e9 / mm
        for r in records
        if r["suite"] == "nmf_big_gemms" and r.get("s_per_iter") and mm
    }

    # ---- end to end: the MLP, and the small CNN (bench_end_to_end.test_end_to_end_cnn)
    e2e, cnn = _by_method(records, "end_to_end", meta), _by_method(records, "end_to_end_cnn", meta)

    kernel_rows = [{k: r.get(k) for k in ("name", "s", "median_s", "GBps")} for r in records if r["suite"] == "ops_cpu"]
    for r in kernel_rows:
        if r.get("GBps") and copy_bw:
            r["limit_fraction"] = r["GBps"] / copy_bw
    results = dict(
        meta,
        limits=limits,
        ops=ops_rows,
        nmf=nmf_rows,
        nmf_big_gemms=nmf_big_gemms,
        nmf_subnormal=_subnormal_gemms(records),
        end_to_end=e2e,
        end_to_end_cnn=cnn,
        skipped=skipped,
        kernel_checks=kernel_rows,
    )
    results["targets"] = targets(results)
    return results


def _by_method(records: List[dict], suite: str, meta: dict) -> dict:
    """{method: record} of an end-to-end suite, with each epoch time's ratio to backprop's (timed runs only)."""
    rows = {r["method"]: {k: v for k, v in r.items() if k not in ("suite", "name")} for r in records
            if r["suite"] == suite}
    bp = rows.get("backprop")
    for m, r in rows.items():
        if bp and bp.get("epoch_s") and m != "backprop" and meta.get("timing", True):
            r["epoch_vs_backprop"] = r["epoch_s"] / bp["epoch_s"]
    return rows


def _subnormal_gemms(records) -> dict:
    """{dataset: {n_subnormal, ratio}}: time of an iteration's GEMMs on scikit-learn's factors with their subnormal
    entries over the same with them flushed (bench_nmf.test_nmf_subnormal_gemms)."""
    rows = {(r["dataset"], r["operands"]): r for r in records if r["suite"] == "nmf_subnormal" and r.get("s_per_iter")}
    return {ds: {"n_subnormal": kept["n_subnormal"], "ratio": kept["s_per_iter"] / rows[(ds, "subnormal flushed")]
                 ["s_per_iter"]}
            for (ds, op), kept in rows.items() if op == "subnormal kept" and (ds, "subnormal flushed") in rows}


def _find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def targets(res: dict) -> List[dict]:
    """The issue's acceptance numbers, measured: value, target, reached (None: not measured)."""
    out = []

    def add(what, value, target, better="higher", note=""):
        reached = None if value is None else (value >= target if better == "higher" else value <= target)
        out.append({"what": what, "value": value, "target": target, "better": better, "reached": reached, "note": note})

    aux = _find(res["ops"], op="aux_dual_update", size="large", impl="cpu")
    add(
        "aux/dual cpu, 8M float32: bandwidth / copy bandwidth",
        aux and aux.get("limit_fraction"),
        TARGETS["aux_copy_fraction"],
    )
    add(
        "aux/dual cpu, 8M: speedup over torch.compile(reference)",
        aux and aux.get("vs_compile"),
        TARGETS["aux_vs_compile"],
    )
    add("aux/dual cpu, 8M: speedup over eager reference", aux and aux.get("vs_eager"), TARGETS["aux_vs_eager"])
    nmf = _find(res["nmf"], dataset="mnist5k", impl="blockadmm cpu")
    big = res.get("nmf_big_gemms", {}).get("mnist5k")
    add(
        "NMF MU cpu, MNIST-5k k=64: GFLOP/s / torch.mm GFLOP/s",
        nmf and nmf.get("mm_fraction"),
        TARGETS["nmf_mm_fraction"],
        note="" if big is None else f"its two 5000×784×64 GEMMs alone through torch.mm, nothing else: {big:.2f}",
    )

    def vs_sklearn(what, row, note=""):
        """A speedup over scikit-learn's float32 mu, reached only at equal error."""
        if row and row.get("err_vs_sklearn") is not None:
            err = f"error {row['rel_err']:.5f}, {100 * row['err_vs_sklearn']:+.3f}% vs scikit-learn"
            note = f"{note}; {err}" if note else err
        add(what, row and row.get("vs_sklearn"), TARGETS["nmf_vs_sklearn"], note=note)
        if row and out[-1]["reached"] and abs(row.get("err_vs_sklearn") or 0.0) > EQUAL_ERR_RTOL:
            out[-1]["reached"] = False
            out[-1]["note"] += f" — not equal error (tolerance {EQUAL_ERR_RTOL:.0e} relative)"

    vs_sklearn("NMF MU cpu, MNIST-5k k=64: speedup over scikit-learn mu (equal error)", nmf)
    bf = _find(res["nmf"], dataset="mnist5k", impl="blockadmm cpu bf16-gemm")
    if bf:
        vs_sklearn("NMF bf16-GEMM variant, MNIST-5k: speedup over scikit-learn mu", bf, "optional")
    for dataset, label in (("digits", "digits k=16"), ("mnist5k", "MNIST-5k k=64")):
        est = _find(res["nmf"], dataset=dataset, impl="blockadmm NMF")
        if est:
            vs_sklearn(f"NMF estimator blockadmm.nmf.NMF, {label}: speedup over scikit-learn mu", est)
    on = res["end_to_end"].get("admm-online")
    bp = res["end_to_end"].get("backprop")
    note = ""
    if on and bp:
        note = f"final test acc {100 * on['final_test_acc']:.1f}% (backprop {100 * bp['final_test_acc']:.1f}%)"
    add(
        "Block-ADMM online epoch / backprop epoch",
        on and on.get("epoch_vs_backprop"),
        TARGETS["online_epoch_vs_backprop"],
        better="lower",
        note=note,
    )
    fast = res["end_to_end"].get("admm-online-fast")
    if fast and on:
        gap = fast["final_test_acc"] - on["final_test_acc"]
        add(
            "Block-ADMM online epoch, preset fast / backprop epoch",
            fast.get("epoch_vs_backprop"),
            TARGETS["online_epoch_vs_backprop"],
            better="lower",
            note=f"final test acc {100 * fast['final_test_acc']:.1f}% (defaults {100 * on['final_test_acc']:.1f}%)",
        )
        if out[-1]["reached"] and gap < -SAME_ACC_POINTS / 100:
            out[-1]["reached"] = False
            out[-1]["note"] += f" — not the defaults' accuracy (tolerance {SAME_ACC_POINTS} points)"
    cnn = res.get("end_to_end_cnn", {})
    for method, recipe, target in (("admm-online-fast", "preset fast", "cnn_fast_epoch_vs_backprop"),
                                   ("admm-online", "defaults", "cnn_epoch_vs_backprop")):
        for name, cut in ((method, "3 blocks"), (method + "-2blocks", "2 blocks")):
            r, bp = cnn.get(name), cnn.get("backprop")
            if r is None and cut == "2 blocks":
                continue  # runs recorded before the 2-block rows
            note = "" if not (r and bp) else (f"final test acc {100 * r['final_test_acc']:.1f}% "
                                              f"(backprop {100 * bp['final_test_acc']:.1f}%)")
            add(f"small CNN ({cut}), Block-ADMM online epoch, {recipe} / backprop epoch",
                r and r.get("epoch_vs_backprop"), TARGETS[target], better="lower", note=note)
    if not res.get("timing", True):
        for t in out:
            t["reached"] = None
    return out


# ------------------------------------------------------------------ markdown


def _f(x, fmt="{:.2f}", none="—"):
    return none if x is None else fmt.format(x)


def _x(x):
    return _f(x, "{:.2f}×")


def render(res: dict, *, heading: bool = True, plots_prefix: Optional[str] = None) -> str:
    m, lim = res["machine"], res["limits"]
    L = []
    if heading:
        L.append(f"### {m['cpu']} — {m['cores']} cores{', ' + m['gpu'] if m.get('gpu') else ''}")
        L.append("")
    v = res.get("versions", {})
    L.append(
        f"Command: `{res['command']}` — {res.get('started', '?')}, {res.get('duration_s', 0):.0f} s; "
        f"torch {v.get('torch')}, {m.get('torch_threads')} threads, scikit-learn {v.get('sklearn')}, "
        f"torchnmf {v.get('torchnmf') or 'not installed'}, git {v.get('git')}."
    )
    L.append(
        f"Machine: {m['cpu']}, {m['cores']} cores{' (' + ', '.join(m['isa']) + ')' if m.get('isa') else ''}, "
        f"{m.get('memory_gb')} GB, GPU: {m.get('gpu') or 'none'}; {m.get('platform')}."
    )
    la = res.get("load_avg", {})
    L.append(
        f"Load average (1/5/15 min) at start {la.get('start')}, at end {la.get('end')} "
        f"(the machine has {m['cores']} cores; a load above that means other work shared it)."
    )
    if m.get("torch_threads") and m.get("cores") and m["torch_threads"] < m["cores"]:
        L.append(
            f"Run with {m['torch_threads']} thread(s) on {m['cores']} cores (`--threads`): with other work on the "
            "machine, multi-threaded BLAS and OpenMP regions stall whenever one of their threads is descheduled, "
            "so single-thread numbers are the stable ones; limits and rows use the same thread count."
        )
    if not res.get("timing", True):
        L.append("")
        L.append(
            "**Timing disabled** (`--no-timing`): every path ran once on tiny sizes; no speed below is meaningful."
        )
    L.append("")
    L.append(
        f"Machine limits, measured in this run (best of start and end): copy **{_f(lim['copy_GBps'], '{:.1f}')} GB/s** "
        f"(read + write, 192 MB moved, as the 8M aux/dual update moves; a 64 MB copy: "
        f"{_f(lim.get('copy_8M_GBps'), '{:.1f}')} GB/s), float32 `torch.mm` **{_f(lim['mm_GFLOPs'], '{:.0f}')} "
        f"GFLOP/s**, "
        f"bf16 `torch.mm` {_f(lim.get('mm_bf16_GFLOPs'), '{:.0f}')} GFLOP/s."
    )
    if lim.get("copy_cuda_GBps") or lim.get("mm_cuda_GFLOPs"):
        L.append(
            f"GPU limits: copy {_f(lim.get('copy_cuda_GBps'), '{:.0f}')} GB/s, float32 `torch.mm` "
            f"{_f(lim.get('mm_cuda_GFLOPs'), '{:.0f}')} GFLOP/s; GPU rows (device cuda) are reported against these."
        )
    L.append("")
    L.append("**Targets (issues #8, #18)**")
    L.append("")
    L.append("| what | measured | target | reached |")
    L.append("|---|---|---|---|")
    for t in res["targets"]:
        mark = "—" if t["reached"] is None else ("yes" if t["reached"] else "**no**")
        cmp_ = "≥" if t["better"] == "higher" else "≤"
        L.append(
            f"| {t['what']} | {_f(t['value'])}{' (' + t['note'] + ')' if t['note'] else ''} | {cmp_} {t['target']} | "
            f"{mark} |"
        )
    L.append("")
    L.append(
        "**Ops** (min of the rounds; fraction of the limit: GB/s ÷ copy GB/s for the memory-bound aux/dual update, "
        "GFLOP/s ÷ `torch.mm` GFLOP/s for the GEMM-bound NMF update and linear block and for the dot products of "
        "the HALS pass)"
    )
    L.append("")
    L.append(
        "A fraction above 1 means the row beat the reference: cache-resident sizes, or (aux/dual) more "
        "concurrent memory streams than one copy keeps in flight."
    )
    L.append("")
    L.append("| op | size | shape | impl | device | ms | GB/s or GFLOP/s | of limit | × eager | × compile |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in res["ops"]:
        rate = _f(r.get("GBps"), "{:.1f} GB/s") if "GBps" in r else _f(r.get("GFLOPs"), "{:.1f} GFLOP/s")
        L.append(
            f"| {r['op']} | {r['size']} | {'×'.join(map(str, r.get('shape', [])))} | {r['impl']} | "
            f"{r.get('device', '')} | {_f(r['ms'], '{:.3f}')} | "
            f"{rate} | {_f(r.get('limit_fraction'))} | {_x(r.get('vs_eager'))} | {_x(r.get('vs_compile'))} |"
        )
    hals = [r for r in res["ops"] if r.get("vs_sklearn")]
    if hals:
        L.append("")
        L.append(
            "HALS pass (`nmf_hals_update`, float32) against scikit-learn's own pass `_update_cdnmf_fast` on the same "
            "inputs: " + "; ".join(f"{r['impl']} {r['size']} {_x(r['vs_sklearn'])}" for r in hals) + "."
        )
    if res.get("kernel_checks"):
        L.append("")
        L.append(
            "From `bench/bench_ops_cpu.py` (the kernel issue's CPU checks, same run; 8M elements; indexed = batch "
            "mode through an index into tables twice the batch's size):"
        )
        L.append("")
        L.append("| benchmark | ms (min) | GB/s | of copy |")
        L.append("|---|---|---|---|")
        for r in [r for r in res["kernel_checks"] if r.get("GBps")]:
            L.append(
                f"| {r['name']} | {_f(r['s'] and r['s'] * 1e3, '{:.3f}')} | {_f(r.get('GBps'), '{:.1f}')} | "
                f"{_f(r.get('limit_fraction'))} |"
            )
    skipped_impls = sorted(
        {s["reason"] for s in res.get("skipped", []) if "triton" in s["name"] or "cuda" in s["name"]}
    )
    if skipped_impls:
        L.append("")
        L.append("Not run here: " + "; ".join(skipped_impls) + ".")
    if res["nmf"]:
        r0 = res["nmf"][0]
        threads = {r.get("threads") for r in res["nmf"] if r["impl"].startswith("sklearn")}
        blas = (f"scikit-learn's BLAS limited to torch's {threads.pop()} thread(s)" if len(threads) == 1 and None
                not in threads else "scikit-learn's BLAS threads not recorded (not limited) in this run")
        L.append("")
        L.append(
            f"**NMF** ({r0['iters']} iterations from the same initial factors, the same arrays, float32 unless the "
            f"name says float64, no early stop; {blas}; "
            "× sklearn: scikit-learn's float32 time over the row's; "
            "`blockadmm NMF` is the estimator `blockadmm.nmf.NMF(init='custom', tol=0).fit_transform`, input checks "
            "and final error included as in scikit-learn's; "
            "FLOPs per iteration counted as 4ndk + 4k²(n+d) for every implementation; error = ‖V − HW‖_F / ‖V‖_F; "
            "`blockadmm cpu` flushes factor entries below sqrt(FLT_MIN) ≈ 1.1e-19 to zero (scikit-learn keeps them, "
            "and in float32 some become subnormal)"
            + "".join(f"; {ds}: an iteration's GEMMs on scikit-learn's final factors ({s['n_subnormal']} subnormal "
                      f"entries) took {s['ratio']:.2f}× their time with those entries flushed, on this CPU"
                      for ds, s in res.get("nmf_subnormal", {}).items())
            + "; time per iteration is the whole run's time divided by the iterations)"
        )
        L.append("")
        L.append("| data | impl | ms / iter | GFLOP/s | of torch.mm | error | error vs sklearn | × sklearn |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in res["nmf"]:
            L.append(
                f"| {r['dataset']} {'×'.join(map(str, r['shape'][:2]))} k={r['shape'][2]} | {r['impl']} | "
                f"{_f(r['ms_per_iter'], '{:.2f}')} | "
                f"{_f(r.get('GFLOPs'), '{:.1f}')} | {_f(r.get('mm_fraction'))} | {r['rel_err']:.5f} | "
                f"{_f(r.get('err_vs_sklearn'), '{:+.2e}')} | {_x(r.get('vs_sklearn'))} |"
            )
    nmf_skips = [
        s for s in res.get("skipped", []) if s["name"].split(" ")[0] in ("mnist5k", "random8192x512", "digits")
    ]
    for s in {s["reason"]: s for s in nmf_skips}.values():
        L.append("")
        L.append(f"Not run: {s['name'].split(' ', 1)[1]} — {s['reason']}.")
    e2e = res["end_to_end"]
    if e2e:
        any_ = next(iter(e2e.values()))
        tgts = list(any_["tta"])
        L.append("")
        L.append(
            f"**End to end** ({any_['dataset']}, MLP {any_['hidden']}, {len(any_['hidden']) + 1} blocks for "
            f"Block-ADMM, "
            f"batch {any_['batch_size']}, {any_['epochs']} epochs, library defaults unless the name says a preset "
            "(`-fast`: the fast preset; backprop-fast: backprop at its best on validation, init × optimizer × rate "
            "from the fair grid); epoch = median "
            "training-loop time over the epochs; time-to-accuracy = training seconds until the test accuracy "
            f"(taken every {any_.get('eval_every', '?')} mini-batches, outside the timing) first reaches the target)"
        )
        L.append("")
        L.append(
            "| method | sweeps | Adam lr | epoch s | × backprop | final test acc | best test acc | "
            + " | ".join(f"time to {100 * float(t):.0f}%" for t in tgts)
            + " |"
        )
        L.append("|---|---|---|---|---|---|---|" + "---|" * len(tgts))
        for name, r in e2e.items():
            tta = " | ".join(_f(r["tta"][t], "{:.2f} s", "not reached") for t in tgts)
            L.append(
                f"| {name} | {r.get('sweeps', '')} | {_f(r.get('adam_lr'), '{:g}')} | {_f(r['epoch_s'], '{:.3f}')} | "
                f"{_x(r.get('epoch_vs_backprop'))} | "
                f"{100 * r['final_test_acc']:.1f}% | {100 * r['best_test_acc']:.1f}% | {tta} |"
            )
    L += _render_cnn(res)
    if plots_prefix is not None and res.get("plots"):
        L.append("")
        L.append(" ".join(f"![{os.path.basename(p)}]({plots_prefix}{os.path.basename(p)})" for p in res["plots"]))
    return "\n".join(L)


def _render_cnn(res: dict) -> List[str]:
    """The small CNN's table (bench_end_to_end.test_end_to_end_cnn), or a line saying the run has none."""
    cnn = res.get("end_to_end_cnn")
    if not cnn:
        return ["", "**Small CNN**: not in this run (`bench/bench_end_to_end.py::test_end_to_end_cnn`, part of the "
                    "end-to-end suite, records it)."]
    any_ = next(iter(cnn.values()))
    c1, c2 = any_["widths"]
    L = ["", f"**Small CNN** ({any_['dataset']}, Conv{c1}-ReLU-Pool | Conv{c2}-ReLU-Flatten | Linear, one block "
             "for backprop; Block-ADMM cut into 3 blocks (one layer a block) or 2 (`-2blocks`: both convolutions in "
             f"block 0, the Linear alone); batch {any_['batch_size']}, {any_['epochs']} epochs, "
             f"{any_.get('threads', '?')} torch thread(s), the methods trained side by side from the same weights on "
             "the same batches; epoch = median training-loop time over the epochs). The second convolution, most of "
             "the net's work: backprop runs it 3 times a step (forward, input and weight gradients). Cut into 3 "
             "blocks, Block-ADMM runs it 4 times a sweep (forward and weight gradient at the moved input, forward "
             "after the weight step, input gradient there): 12 (4×) with the defaults' three sweeps. Cut into 2, "
             "block 0's input is the data, which never moves: one forward (kept for the next sweep's weight step) and "
             "one backward a sweep, about backprop's work per sweep.",
         "", "| method | blocks | sweeps | Adam lr | epoch s | × backprop | final test acc | best test acc |",
         "|---|---|---|---|---|---|---|---|"]
    for name, r in cnn.items():
        L.append(f"| {name} | {r.get('blocks', '')} | {r.get('sweeps', '')} | {_f(r.get('adam_lr'), '{:g}')} | "
                 f"{_f(r['epoch_s'], '{:.3f}')} | "
                 f"{_x(r.get('epoch_vs_backprop'))} | {100 * r['final_test_acc']:.1f}% | "
                 f"{100 * r['best_test_acc']:.1f}% |")
    return L


# ------------------------------------------------------------------ plots


def plots(res: dict, folder: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = res["machine"]["name"]
    paths = []

    rows = [r for r in res["ops"] if r.get("limit_fraction") is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(10, 4))
        labels = [f"{r['op'].split('_')[0]} {r['size']}\n{r['impl']}" for r in rows]
        colors = {
            "eager": "#999999",
            "compile": "#5b8ff9",
            "cpu": "#e8684a",
            "eager cuda": "#666666",
            "compile cuda": "#2a5bd7",
            "triton": "#5ad8a6",
            "cuda": "#f6bd16",
        }
        ax.bar(range(len(rows)), [r["limit_fraction"] for r in rows], color=[colors.get(r["impl"], "k") for r in rows])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        from matplotlib.patches import Patch

        ax.legend(
            handles=[Patch(color=c, label=i) for i, c in colors.items() if any(r["impl"] == i for r in rows)],
            fontsize=7,
            loc="upper left",
        )
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_ylabel("fraction of machine limit\n(copy GB/s or torch.mm GFLOP/s)")
        ax.set_title(f"ops on {res['machine']['cpu']} ({res['machine']['cores']} cores)", fontsize=9)
        fig.tight_layout()
        p = os.path.join(folder, f"{name}-ops.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    rows = [r for r in res["nmf"] if r.get("GFLOPs")]
    if rows:
        sets = list(dict.fromkeys(r["dataset"] for r in rows))
        fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
        for ax, ds in zip(axes[0], sets):
            rr = [r for r in rows if r["dataset"] == ds]
            ax.barh([r["impl"] for r in rr], [r["GFLOPs"] for r in rr], color="#5b8ff9")
            if res["limits"].get("mm_GFLOPs"):
                ax.axvline(res["limits"]["mm_GFLOPs"], color="k", ls="--", lw=0.8, label="torch.mm ceiling")
                ax.legend(fontsize=7, loc="lower right")
            for i, r in enumerate(rr):
                ax.text(r["GFLOPs"], i, f" err {r['rel_err']:.4f}", va="center", fontsize=7)
            ax.set_xlabel("GFLOP/s (4ndk + 4k²(n+d) per iteration)")
            ax.set_title(f"NMF MU, {ds}", fontsize=9)
        fig.tight_layout()
        p = os.path.join(folder, f"{name}-nmf.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    if res["end_to_end"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m, r in res["end_to_end"].items():
            xs = [t for t, _ in r["curve"]]
            acc = [100 * a for _, a in r["curve"]]
            ax.plot(xs, acc, marker="o", ms=2, lw=1, label=f"{m} ({r['epoch_s']:.2f} s/epoch)")
        for tgt in next(iter(res["end_to_end"].values()))["tta"]:
            ax.axhline(100 * float(tgt), color="k", lw=0.5, ls=":")
        ax.set_xlabel("training wall time, s")
        ax.set_ylabel("test accuracy, %")
        ax.set_title(
            f"time to accuracy (test accuracy every {next(iter(res['end_to_end'].values())).get('eval_every', '?')} "
            f"mini-batches)",
            fontsize=9,
        )
        ax.set_ylim(bottom=max(0, min(100 * a for r in res["end_to_end"].values() for _, a in r["curve"][1:]) - 5))
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(folder, f"{name}-end_to_end.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
