"""The divergence guard (issue 25, issue 29 item 6): a collapse without NaN is caught within a few steps, and
fit(on_divergence=...) warns through `warnings`, stops, restores the best weights, or rolls back to them and goes on
at a reduced rate. A run is forced to collapse by a callback that multiplies the weights by a large factor."""

import json
import math
import re

import pytest
import torch

from blockadmm import data
from blockadmm.callbacks import Callback
from blockadmm.engine.divergence import DivergenceGuard
from blockadmm.models import mlp_blocks
from blockadmm.trainer import BlockADMM, DivergenceError, DivergenceWarning, adam

SHOCK_STEP, LR = 200, 3e-3  # the shock in epoch 5 (45 steps an epoch), on the loss's plateau


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


class Shock(Callback):
    """At step `at`, every weight times `factor`: the loss collapses at once (no NaN)."""

    def __init__(self, at=SHOCK_STEP, factor=30.0):
        self.at, self.factor, self.before = at, factor, None

    def on_step(self, trainer, step, stats):
        if step == self.at:
            self.before = [{k: v.clone() for k, v in b.state_dict().items()} for b in trainer.blocks]
            with torch.no_grad():
                for p in trainer.blocks.parameters():
                    p.mul_(self.factor)


def _trainer(seed=0):
    torch.manual_seed(seed)
    model, cuts = mlp_blocks(64, [32, 32], 10)
    return BlockADMM(model, blocks=cuts, input_shape=(64,), optimizer=adam(LR), preset="fast")


def _loss(trainer, ds):
    return trainer.evaluate(ds)["loss"]


def test_guard_trips_within_a_few_steps_and_not_on_noise():
    guard = DivergenceGuard(chance=math.log(10))
    g = torch.Generator().manual_seed(0)
    noisy = (0.05 + 0.1 * torch.rand(400, generator=g)).tolist()  # a trained net's batch losses: 0.05 .. 0.15
    assert all(guard.update(v, [0.01, 0.02]) is None for v in noisy)
    trips = [guard.update(3.0, [0.01, 0.02]) for _ in range(8)]
    first = next(i for i, t in enumerate(trips) if t is not None)
    assert first < guard.patience + 2 and trips[first].collapse and "rose above" in trips[first].reason
    residual = DivergenceGuard(chance=math.log(10))
    for _ in range(200):
        residual.update(0.1, [0.01, 0.002])
    trips = [residual.update(0.1, [0.01, 0.5]) for _ in range(8)]
    assert any(t is not None and "boundary 1's primal residual" in t.reason for t in trips)
    stall = DivergenceGuard(chance=math.log(10), stall_patience=30)
    trips = [stall.update(2.31) for _ in range(40)]
    assert trips[25] is None and trips[35] is not None and not trips[35].collapse
    restored = DivergenceGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict() and restored.run == guard.run > 0


def test_rollback_puts_back_the_best_weights_and_goes_on_at_the_reduced_rate(digits):
    tr, shock = _trainer(), Shock()
    with pytest.warns(DivergenceWarning, match="put back.*goes on at 0.5 times the rate"):
        tr.fit(digits.train, 7, batch_size=32, progress=False, callbacks=[shock], on_divergence="rollback")
    events = [e for h in tr.history for e in h.get("divergence_events", [])]
    assert len(tr.history) == 7 and tr.divergence.rollbacks == 1 and len(events) == 1, events
    step = int(re.search(r"weights of step (\d+)", events[0]).group(1))
    assert SHOCK_STEP - 20 <= step <= SHOCK_STEP  # the last kept best step before the shock
    assert [g["lr"] for o in tr.optimizers for g in o.param_groups] == [LR * 0.5]
    plain = _trainer()
    plain.fit(digits.train, 7, batch_size=32, progress=False)
    assert tr.evaluate(digits.test)["acc"] > plain.evaluate(digits.test)["acc"] - 0.05  # it went on training


def test_restore_stops_with_the_best_weights_and_warn_leaves_them(digits):
    tr, shock = _trainer(), Shock()
    with pytest.warns(DivergenceWarning, match="put back.*stopped"):
        tr.fit(digits.train, 8, batch_size=32, progress=False, callbacks=[shock], on_divergence="restore")
    assert len(tr.history) == 5 and "divergence" in tr.history[-1]  # stopped in the epoch of the shock
    before = _trainer()
    for b, sd in zip(before.blocks, shock.before):
        b.load_state_dict(sd)
    assert _loss(tr, digits.test) < 1.2 * _loss(before, digits.test)  # the pre-shock weights, not the collapsed
    warned, shock = _trainer(), Shock()
    with pytest.warns(DivergenceWarning, match="training diverges at step"):
        warned.fit(digits.train, 5, batch_size=32, progress=False, callbacks=[shock], on_divergence="warn")
    assert len(warned.history) == 5 and "divergence" in warned.history[-1]
    assert _loss(warned, digits.test) > 3 * _loss(tr, digits.test)  # warn hands back what is there


def test_stop_raises_and_the_guard_travels_with_checkpoints(digits, tmp_path):
    ckpt = str(tmp_path / "c.pt")
    tr = _trainer()
    tr.fit(digits.train, 1, batch_size=32, progress=False, checkpoint=ckpt)
    resumed = _trainer()
    resumed.load(ckpt)
    assert resumed.divergence.state_dict() == tr.divergence.state_dict() and tr.divergence.best < math.inf
    with pytest.raises(DivergenceError, match=r"diverges at step \d+ \(epoch 2\).*last good checkpoint is .*c\.pt"):
        tr.fit(digits.train, 3, batch_size=32, progress=False, checkpoint=ckpt, callbacks=[Shock(at=70)],
               on_divergence="stop")
    with pytest.raises(ValueError, match="on_divergence must be one of"):
        tr.fit(digits.train, 3, on_divergence="ignore")


def test_cli_on_divergence_stop_gives_one_line(tmp_path, capsys):
    from blockadmm.cli import main

    args = ["train", "--data", "digits", "--hidden", "16", "--epochs", "2", "--batch-size", "16", "--lr", "1",
            "--quiet", "--out", str(tmp_path / "run")]
    assert main(args + ["--on-divergence", "warn"]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["runs"]["admm-online"]
    assert any("training diverges" in h.get("divergence", "") for h in history)
    assert main(args + ["--overwrite", "--on-divergence", "stop"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"^blockadmm train: error: admm-online: training diverges at step \d+", err), err
