"""Speed and accuracy of the distributed trainer (issue #6), measured in one run on this machine.

    python bench/bench_distributed.py            # speed: 4-block MLP 784-1024-1024-1024-10, MNIST-5k
    python bench/bench_distributed.py accuracy   # pipelined vs sync, MLP 784-256-256-10, 10 epochs
    python bench/bench_distributed.py nccl       # GPU machines: the NCCL path, one rank per GPU, vs single-process

Speed (online mode, batch 100, the trainer defaults otherwise; every rank one torch thread — a rank
stands for a device). Rows, all measured in the same run:
  single-1t    BlockADMM (top-down), one process, 1 thread
  single-2t    BlockADMM (top-down), one process, 2 threads
  dist-1r      DistributedBlockADMM, 1 rank (the same computation as single-1t, through the distributed code)
  sync-2r      2 ranks, schedule="sync" (Jacobi)
  pipe-2r      2 ranks, schedule="pipeline" (top-down within a batch, staleness 1: the default for 2 ranks)
  pipe-2r-s2   the same with staleness 2: one more batch in flight, so the first rank rarely waits
The reported epoch time is the median over the timed epochs (after one warm-up epoch); the speedup is
single-1t / row. Numbers go to bench/results/distributed-<host>.json and are printed.

    python bench/bench_distributed.py tta [--recipe NAME:key=value,...] [--epochs 20]

Time to 92% test accuracy on the same 4-block MLP (issue #25), every row on the same batches from the same initial
weights, run one after the other in one command: backprop (Adam at the rate that reaches 92% validation accuracy in
the fewest epochs of a sweep on a validation split carved from the training data) on 1 and 2 threads and as DDP on 2
ranks (gloo, one thread each, each rank half of every batch); Block-ADMM per recipe (`--recipe`, as `blockadmm
experiment stability` takes it; default: today's `default` and `fast`) in one process on 1 and 2 threads and on 2
ranks, sync and pipelined. Time to 92%: training seconds (evaluation excluded) up to the end of the first epoch whose
test accuracy reaches 92% (an epoch's resolution for every row alike).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _setup(hidden):
    from blockadmm import data
    from blockadmm.models import mlp_blocks

    splits = data.load("mnist5k")
    torch.manual_seed(0)
    model, cuts = mlp_blocks(784, hidden, 10, "relu")
    return splits, model, cuts


def _dist_worker(hidden, schedule, staleness, epochs, out_path, order, recipe=None):
    from blockadmm.distributed import DistributedBlockADMM
    from blockadmm.experiments.stability_recipes import fit_kwargs, trainer_kwargs

    splits, model, cuts = _setup(hidden)
    kw = {} if order is None else {"order": order}
    kw.update(trainer_kwargs(recipe) if recipe is not None else {})
    tr = DistributedBlockADMM(
        model, blocks=cuts, input_shape=splits.input_shape, schedule=schedule, staleness=staleness, **kw
    )
    extra = {k: v for k, v in fit_kwargs(recipe or {}).items() if k in inspect.signature(tr.fit).parameters}
    hist = tr.fit(splits.train, epochs, batch_size=100, test=splits.test, progress=False, eval_train=False, **extra)
    if torch.distributed.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"hist": hist, "partition": tr.partition, "order": tr.config.order, "staleness": tr.staleness}, f)


def run_dist(nproc, hidden, schedule, staleness, epochs, order=None, recipe=None):
    from blockadmm.distributed import launch

    out = tempfile.mktemp(suffix=".json")
    launch(_dist_worker, nproc, hidden, schedule, staleness, epochs, out, order, recipe, backend="gloo", threads=1)
    with open(out) as f:
        res = json.load(f)
    os.remove(out)
    return res


def run_single(hidden, threads, epochs, order="top-down"):
    from blockadmm.trainer import BlockADMM

    torch.set_num_threads(threads)
    splits, model, cuts = _setup(hidden)
    tr = BlockADMM(model, blocks=cuts, input_shape=splits.input_shape, order=order)
    hist = []
    for e in range(epochs):
        c0 = time.process_time()
        h = tr.fit(splits.train, e + 1, batch_size=100, test=splits.test if e == epochs - 1 else None, progress=False)
        hist.append(dict(h[-1], cpu_s=round(time.process_time() - c0, 3)))  # includes the train-accuracy pass
    return {"hist": hist, "order": order}


def _summary(res, timed_from=1):
    walls = [h["wall_s"] for h in res["hist"]][timed_from:] or [h["wall_s"] for h in res["hist"]]
    return {
        "epoch_s": statistics.median(walls),
        "epoch_s_all": [round(h["wall_s"], 3) for h in res["hist"]],
        "test_acc": res["hist"][-1].get("test_acc"),
        **{k: res[k] for k in ("partition", "order", "staleness") if k in res},
    }


SPEED_RUNS = {
    "single-1t": lambda h, e: run_single(h, 1, e),
    "pipe-2r": lambda h, e: run_dist(2, h, "pipeline", 1, e),
    "pipe-2r-s2": lambda h, e: run_dist(2, h, "pipeline", 2, e),
    "dist-1r": lambda h, e: run_dist(1, h, "pipeline", 0, e),
    "sync-2r": lambda h, e: run_dist(2, h, "sync", 0, e),
    "single-2t": lambda h, e: run_single(h, 2, e),
}


def speed(epochs=3, rounds=3):
    """Each configuration `rounds` times, interleaved (the machine is shared: load changes during the run);
    per configuration the best and the median of its timed epochs (all epochs but each run's first)."""
    hidden = [1024, 1024, 1024]
    t0 = time.time()
    walls = {k: [] for k in SPEED_RUNS}
    cpu = {k: [] for k in SPEED_RUNS}  # per timed epoch: CPU seconds of each rank (process time)
    waits = {k: [] for k in SPEED_RUNS}  # per timed epoch: seconds each rank was blocked on the others
    last = {}
    for rnd in range(rounds):
        names = list(SPEED_RUNS) if rnd % 2 == 0 else list(SPEED_RUNS)[::-1]
        for name in names:
            load = os.getloadavg()[0]
            res = SPEED_RUNS[name](hidden, epochs)
            walls[name] += [h["wall_s"] for h in res["hist"]][1:]
            last[name] = dict(_summary(res), load_avg_at_start=round(load, 2))
            cpu[name] += [h.get("rank_cpu_s", [h.get("cpu_s")]) for h in res["hist"]][1:]
            waits[name] += [h.get("rank_wait_s") for h in res["hist"]][1:]
            print(f"round {rnd} {name}: {[round(h['wall_s'], 2) for h in res['hist']]} (load {load:.1f})", flush=True)
    rows = {}
    for name in SPEED_RUNS:
        rows[name] = dict(
            last[name],
            epoch_s=statistics.median(walls[name]),
            epoch_s_best=min(walls[name]),
            timed_epochs=[round(w, 3) for w in walls[name]],
            rank_cpu_s=cpu[name],
            rank_wait_s=waits[name],
        )
        rows[name].pop("epoch_s_all", None)
    b, m = rows["single-1t"]["epoch_s_best"], rows["single-1t"]["epoch_s"]
    for r in rows.values():
        r["speedup_best_vs_single_1t"] = round(b / r["epoch_s_best"], 3)
        r["speedup_median_vs_single_1t"] = round(m / r["epoch_s"], 3)
    d = rows["dist-1r"]
    for name in ("pipe-2r", "pipe-2r-s2", "sync-2r"):
        rows[name]["speedup_best_vs_dist_1r"] = round(d["epoch_s_best"] / rows[name]["epoch_s_best"], 3)
    return {
        "what": "epoch time, 4-block MLP 784-1024-1024-1024-10, MNIST-5k, online, batch 100, trainer defaults; "
        f"{rounds} interleaved rounds of {epochs} epochs per configuration, first epoch of each run untimed",
        "load_avg_before_after": None,
        "bench_s": round(time.time() - t0, 1),
        "rows": rows,
    }


def _acc_summary(res):
    accs = [round(h["test_acc"], 4) for h in res["hist"]]
    return dict(_summary(res), test_acc_per_epoch=accs, test_acc_mean_last3=round(sum(accs[-3:]) / 3, 4))


def _single_every_epoch(hidden, epochs, order):
    from blockadmm.trainer import BlockADMM

    torch.set_num_threads(1)
    splits, model, cuts = _setup(hidden)
    tr = BlockADMM(model, blocks=cuts, input_shape=splits.input_shape, order=order)
    return {"hist": tr.fit(splits.train, epochs, batch_size=100, test=splits.test, progress=False), "order": order}


def accuracy(epochs=10):
    """Test accuracy after every epoch (fit evaluates the test split each epoch)."""
    hidden = [256, 256]
    rows = {
        "sync-jacobi-2r": _acc_summary(run_dist(2, hidden, "sync", 0, epochs)),
        "pipe-2r-staleness1": _acc_summary(run_dist(2, hidden, "pipeline", 1, epochs)),
        "pipe-2r-staleness2": _acc_summary(run_dist(2, hidden, "pipeline", 2, epochs)),
        "pipe-2r-staleness0 (= single top-down)": _acc_summary(run_dist(2, hidden, "pipeline", 0, epochs)),
        "single-jacobi": _acc_summary(_single_every_epoch(hidden, epochs, "jacobi")),
    }
    for r in rows.values():
        r.pop("epoch_s_all", None)
    return {
        "what": f"test accuracy, MLP 784-256-256-10 (3 blocks), MNIST-5k, online, batch 100, {epochs} epochs",
        "rows": rows,
    }


def _nccl_worker(hidden, epochs, out_path):
    from blockadmm.distributed import DistributedBlockADMM

    splits, model, cuts = _setup(hidden)
    tr = DistributedBlockADMM(model, blocks=cuts, input_shape=splits.input_shape, schedule="sync")
    assert torch.distributed.get_backend() == "nccl" and tr.device.type == "cuda"
    hist = tr.fit(splits.train, epochs, batch_size=100, test=splits.test, progress=False, eval_train=False)
    blocks = {k: {n: t.cpu() for n, t in b.state_dict().items()} for k, b in tr.owned_blocks().items()}
    torch.save({"blocks": blocks, "hist": hist}, f"{out_path}.{torch.distributed.get_rank()}")


def nccl(epochs=1):
    """GPU check: the NCCL path (one rank per GPU: init, directional p2p groups when there are 2+ GPUs,
    collectives, CUDA tensors), compared with the single-process Jacobi trainer on cuda:0."""
    from blockadmm.distributed import launch
    from blockadmm.trainer import BlockADMM

    n = torch.cuda.device_count()
    if n == 0:
        raise SystemExit("no CUDA device: the NCCL check needs at least one GPU")
    nproc = min(n, 4)
    hidden = [1024, 1024, 1024]
    out = tempfile.mktemp()
    t0 = time.time()
    launch(_nccl_worker, nproc, hidden, epochs, out, backend="nccl", threads=1)
    wall = time.time() - t0
    got, hist = {}, None
    for r in range(nproc):
        d = torch.load(f"{out}.{r}", weights_only=True)
        got.update(d["blocks"])
        hist = hist or d["hist"]
    splits, model, cuts = _setup(hidden)
    ref = BlockADMM(model, blocks=cuts, input_shape=splits.input_shape, order="jacobi", device="cuda")
    ref_hist = ref.fit(splits.train, epochs, batch_size=100, test=splits.test, progress=False)
    err = max(
        float((got[k][n] - t.cpu()).abs().max()) for k, b in enumerate(ref.blocks) for n, t in b.state_dict().items()
    )
    return {
        "what": f"NCCL, {nproc} rank(s) on {n} GPU(s), sync Jacobi vs single-process Jacobi on cuda:0, "
        f"{epochs} epoch(s)",
        "max_abs_weight_diff": err,
        "dist_epoch_s": hist[-1]["wall_s"],
        "single_epoch_s": ref_hist[-1]["wall_s"],
        "dist_test_acc": hist[-1]["test_acc"],
        "single_test_acc": ref_hist[-1]["test_acc"],
        "launch_s": round(wall, 1),
    }


# ------------------------------------------------------------------ time to accuracy (issue #25)
TTA_HIDDEN = [1024, 1024, 1024]
TTA_TARGET = 0.92
TTA_RATES = (1e-3, 2e-3, 3e-3, 5e-3)  # backprop's Adam rates tried on validation
TTA_SWEEP_EPOCHS = 10


def _backprop_history(hidden, threads, lr, epochs, val=False, budget_s=None):
    """Backprop (the experiments' Backprop, fused Adam as the blocks get) from the shared initial weights; per epoch
    the training seconds and the test accuracy (val: the validation accuracy, training on the rest). budget_s: stop
    after the epoch in which the training time passes it."""
    from blockadmm import data
    from blockadmm.experiments.training import Backprop, accuracy, train_epochs
    from blockadmm.trainer import adam

    torch.set_num_threads(threads)
    splits, model, _ = _setup(hidden)
    if val:
        splits = data.load("mnist5k", val_fraction=0.2)
    learner = Backprop(model, optimizer=adam(lr))
    held_out = splits.val if val else splits.test
    spent = []
    hist = train_epochs(learner.step, splits.train, epochs, batch_size=100, seed=0,
                        evaluate=lambda: {"test_acc": accuracy(model.eval(), held_out)},
                        on_epoch=lambda rec: spent.append(rec["wall_s"]) or _over(spent, budget_s))
    return {"hist": hist}


def _over(walls, budget_s) -> bool:
    return budget_s is not None and sum(walls) > budget_s


def _ddp_worker(hidden, lr, epochs, out_path):
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from blockadmm.experiments.training import accuracy, train_epochs
    from blockadmm.trainer import adam

    splits, model, _ = _setup(hidden)
    ddp = DistributedDataParallel(model)
    opt, loss_fn = adam(lr)(ddp.parameters()), nn.CrossEntropyLoss()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def step(x, y, index):  # each rank its share of the batch; DDP averages the gradients: the whole batch's step
        rows = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        ddp.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x[rows]), y[rows])
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    hist = train_epochs(step, splits.train, epochs, batch_size=100, seed=0,
                        evaluate=lambda: {"test_acc": accuracy(model.eval(), splits.test)})
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"hist": hist}, f)


def run_ddp(hidden, lr, epochs):
    from blockadmm.distributed import launch

    out = tempfile.mktemp(suffix=".json")
    launch(_ddp_worker, 2, hidden, lr, epochs, out, backend="gloo", threads=1)
    with open(out) as f:
        res = json.load(f)
    os.remove(out)
    return res


def run_admm(hidden, recipe, threads, epochs, budget_s=None):
    from blockadmm.experiments.stability_recipes import fit_kwargs, trainer_kwargs
    from blockadmm.trainer import BlockADMM

    torch.set_num_threads(threads)
    splits, model, cuts = _setup(hidden)
    tr = BlockADMM(model, blocks=cuts, input_shape=splits.input_shape, seed=0, **trainer_kwargs(recipe))

    def stop_after_budget(record):
        tr.stop_training = _over([h["wall_s"] for h in tr.history], budget_s)

    hist = tr.fit(splits.train, epochs, batch_size=100, test=splits.test, progress=False, eval_train=False,
                  on_epoch=stop_after_budget, **fit_kwargs(recipe))
    return {"hist": hist}


def tta_row(hist, target=TTA_TARGET, at=20):
    """Epoch time (median), time to `target` (training seconds to the end of the first epoch at or above it), the
    final accuracy, the accuracy at epoch `at`, and the lowest accuracy from reaching the target on."""
    walls, accs = [h["wall_s"] for h in hist], [h["test_acc"] for h in hist]
    hit = next((i for i, a in enumerate(accs) if a >= target), None)
    return {
        "epoch_s": statistics.median(walls),
        "time_to_target_s": None if hit is None else sum(walls[: hit + 1]),
        "epochs_to_target": None if hit is None else hit + 1,
        "final_test_acc": accs[-1],
        f"test_acc_at_{at}": accs[at - 1] if len(accs) >= at else None,
        "min_test_acc_after_target": None if hit is None else min(accs[hit:]),
        "test_acc": [round(a, 4) for a in accs],
        "epoch_wall_s": [round(w, 3) for w in walls],
    }


def choose_backprop_rate(hidden, rates=TTA_RATES, epochs=TTA_SWEEP_EPOCHS):
    """The Adam rate whose validation accuracy reaches the target in the fewest epochs (ties: the higher best)."""
    sweep = {}
    for lr in rates:
        accs = [h["test_acc"] for h in _backprop_history(hidden, 1, lr, epochs, val=True)["hist"]]
        hit = next((i + 1 for i, a in enumerate(accs) if a >= TTA_TARGET), None)
        sweep[f"{lr:g}"] = {"epochs_to_target_val": hit, "best_val_acc": max(accs), "val_acc": accs}
    best = min(sweep, key=lambda k: (sweep[k]["epochs_to_target_val"] or epochs + 1, -sweep[k]["best_val_acc"]))
    return float(best), sweep


def time_to_accuracy(recipes, epochs=20, hidden=None, rates=TTA_RATES, sweep_epochs=TTA_SWEEP_EPOCHS, budget_s=None):
    """Every row of the time-to-92% table, one after the other, each with the load average at its start; a
    one-process row stops after the epoch in which its training time passes `budget_s` (a loaded machine)."""
    hidden = hidden or TTA_HIDDEN
    t0 = time.time()
    lr, sweep = choose_backprop_rate(hidden, rates, sweep_epochs)
    runs = {
        "backprop-1t": lambda: _backprop_history(hidden, 1, lr, epochs, budget_s=budget_s),
        "backprop-2t": lambda: _backprop_history(hidden, 2, lr, epochs, budget_s=budget_s),
        "ddp-2r": lambda: run_ddp(hidden, lr, epochs),
    }
    for name, recipe in recipes.items():
        runs[f"admm-1t {name}"] = lambda r=recipe: run_admm(hidden, r, 1, epochs, budget_s)
        runs[f"admm-2t {name}"] = lambda r=recipe: run_admm(hidden, r, 2, epochs, budget_s)
        runs[f"sync-2r {name}"] = lambda r=recipe: run_dist(2, hidden, "sync", 0, epochs, recipe=r)
        runs[f"pipe-2r {name}"] = lambda r=recipe: run_dist(2, hidden, "pipeline", 1, epochs, recipe=r)
    rows = {}
    for name, run in runs.items():
        load = os.getloadavg()[0]
        hist = run()["hist"]
        rows[name] = dict(tta_row(hist, at=min(20, epochs)), load_avg_at_start=round(load, 2),
                          load_avg_at_end=round(os.getloadavg()[0], 2), stopped_by_budget=len(hist) < epochs)
        r = rows[name]
        print(f"{name}: {r['epoch_s']:.2f} s/epoch, to 92% {r['time_to_target_s']}, final {r['final_test_acc']:.3f}"
              f" (load {load:.1f})", flush=True)
    return {
        "what": f"time to {TTA_TARGET:.0%} test accuracy, MLP 784-{'-'.join(map(str, hidden))}-10, MNIST-5k (4000 "
        f"train / 1000 test), online, batch 100, {epochs} epochs, the same batches and initial weights for every row",
        "target": TTA_TARGET,
        "epochs": epochs,
        "backprop_lr": lr,
        "backprop_rate_sweep": {"epochs": sweep_epochs, "val_fraction": 0.2, "rates": sweep},
        "recipes": recipes,
        "budget_s": budget_s,
        "bench_s": round(time.time() - t0, 1),
        "rows": rows,
    }


def tta_main(argv):
    """`tta [--recipe NAME:key=value,...] [--epochs N] [--quick]`: the time-to-92% rows (time_to_accuracy)."""
    from blockadmm.experiments.stability_recipes import RECIPES, parse_recipe

    p = argparse.ArgumentParser(prog="python bench/bench_distributed.py tta")
    p.add_argument("--recipe", action="append", default=[], help="a Block-ADMM recipe (repeatable); default: the "
                   "presets default and fast as they are")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="a 2x64 MLP, 2 epochs, 2 rates: proves every row runs")
    p.add_argument("--budget-s", type=float, help="stop a one-process row after the epoch that passes this many "
                   "training seconds (default: no limit)")
    p.add_argument("--out", help="the results file (default: bench/results/distributed-tta-<host>.json)")
    a = p.parse_args(argv)
    try:
        recipes = dict(parse_recipe(s) for s in a.recipe) or {k: RECIPES[k] for k in ("default", "fast")}
    except ValueError as e:
        p.error(str(e))
    if a.quick:
        res = time_to_accuracy(recipes, epochs=2, hidden=[64, 64], rates=TTA_RATES[:2], sweep_epochs=1)
    else:
        res = time_to_accuracy(recipes, epochs=a.epochs, budget_s=a.budget_s)
    return dict(res, out=a.out) if a.out else res


def main(argv):
    from blockadmm.experiments.results_io import provenance

    what = argv[1] if len(argv) > 1 else "speed"
    load0 = os.getloadavg()
    res = tta_main(argv[2:]) if what == "tta" else {"accuracy": accuracy, "nccl": nccl}.get(what, speed)()
    res["load_avg_before_after"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
    res["host"], res["cpus"], res["torch"] = socket.gethostname(), os.cpu_count(), torch.__version__
    res.update(provenance())  # the commit and the CPU
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = res.pop("out", None) or os.path.join(HERE, "results", f"distributed-{what}-{socket.gethostname()}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main(sys.argv)
