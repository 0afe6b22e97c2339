"""blockadmm.callbacks: the loggers write what they are given, early stopping stops and restores."""
import csv
import types

import pytest
import torch
from torch import nn

from blockadmm.callbacks import CSVLogger, EarlyStopping, TensorBoardLogger, scalars


def fake_trainer():
    return types.SimpleNamespace(blocks=nn.ModuleList([nn.Linear(2, 2)]), stop_training=False)


def test_scalars_flatten_boundaries_and_skip_the_rest():
    got = scalars({"loss": 0.5, "primal": [0.1, 0.2], "epoch": 3, "note": "x", "flag": True, "mixed": [1, "a"]})
    assert got == {"loss": 0.5, "primal/0": 0.1, "primal/1": 0.2, "epoch": 3.0}


def test_csv_logger_rows(tmp_path):
    log, tr = CSVLogger(str(tmp_path / "log"), every=2), fake_trainer()
    for step in range(1, 6):
        log.on_step(tr, step, {"loss": float(step), "primal": [step / 10]})
    log.on_epoch(tr, {"epoch": 1, "loss": 3.0, "val_acc": 0.5})
    log.on_train_end(tr)
    steps = list(csv.DictReader(open(tmp_path / "log" / "steps.csv")))
    assert [r["step"] for r in steps] == ["2", "4"] and float(steps[1]["primal/0"]) == pytest.approx(0.4)
    epochs = list(csv.DictReader(open(tmp_path / "log" / "epochs.csv")))
    assert epochs == [{"epoch": "1.0", "loss": "3.0", "val_acc": "0.5"}]


def test_tensorboard_event_file_reads_back(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    log, tr = TensorBoardLogger(str(tmp_path)), fake_trainer()
    for step in range(3):
        log.on_step(tr, step, {"train_loss": 1.0 / (step + 1), "rho": [1.0, 2.0]})
    log.on_epoch(tr, {"epoch": 1, "val_acc": 0.75})
    log.on_train_end(tr)
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/train_loss", "train/rho/0", "train/rho/1", "epoch/val_acc"} <= tags
    assert [e.value for e in acc.Scalars("train/train_loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert acc.Scalars("epoch/val_acc")[0].step == 1


def test_early_stopping_stops_after_patience_and_restores_the_best():
    es, tr = EarlyStopping("val_acc", patience=2), fake_trainer()
    assert es.mode == "max"
    history = [0.5, 0.7, 0.6, 0.65]
    best_weight = None
    for epoch, acc in enumerate(history, 1):
        with torch.no_grad():
            tr.blocks[0].weight.fill_(epoch)
        if epoch == 2:
            best_weight = tr.blocks[0].weight.clone()
        record = {"epoch": epoch, "val_acc": acc}
        es.on_epoch(tr, record)
        assert tr.stop_training == (epoch == 4)
    assert "did not improve for 2 epochs" in record["early_stop"] and es.best_epoch == 2
    es.on_train_end(tr)
    assert torch.equal(tr.blocks[0].weight, best_weight)


def test_early_stopping_names_a_missing_metric_and_waits_for_evaluated_epochs():
    tr = fake_trainer()
    tr.metric_names = {"train_loss", "train_acc"}
    with pytest.raises(ValueError, match="pass val= to fit"):
        EarlyStopping("val_loss").on_train_begin(tr)
    tr.metric_names.add("val_loss")
    es = EarlyStopping("val_loss", patience=1)
    es.on_train_begin(tr)
    es.on_epoch(tr, {"epoch": 1, "val_loss": 1.0})
    es.on_epoch(tr, {"epoch": 2, "loss": 0.5})  # not evaluated this epoch (fit's eval_every): no patience used
    assert not tr.stop_training and es.best_epoch == 1
    es.on_epoch(tr, {"epoch": 3, "val_loss": 1.5})
    assert tr.stop_training
    with pytest.raises(ValueError, match="patience must be >= 1"):
        EarlyStopping(patience=0)
