"""A PyTorch user's own models and data (issue 19): a small CNN and a residual net as lists of modules, regression
with 1-D targets, TensorDataset / DataLoader / int32 labels / float64 inputs, schedulers on a shared optimizer,
metrics that mean what they say, the model contract's errors."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from blockadmm.callbacks import Callback, EarlyStopping
from blockadmm.trainer import BlockADMM


def images(n=240, seed=0):
    """8x8 one-channel images whose class is the quadrant holding a bright square."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 3, 4 * col:4 * col + 3] += 1.0
    return x, y


def cnn_blocks():
    return [nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 4))]


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_small_cnn_as_a_list_of_blocks_trains_in_place_and_exports():
    x, y = images()
    blocks = cnn_blocks()
    model = nn.Sequential(*blocks)  # the user's model: the blocks are its children
    tr = BlockADMM(blocks, input_shape=(1, 8, 8), lr_z=0.3)
    before = tr.evaluate(TensorDataset(x, y))
    hist = tr.fit(TensorDataset(x, y), 6, batch_size=40, progress=False)
    after = tr.evaluate(TensorDataset(x, y))
    assert after["loss"] < 0.6 * before["loss"] and after["acc"] > 0.9, (before, after, hist[-1])
    # trained in place: the model's own state_dict loads into a fresh copy, no library involved
    fresh = nn.Sequential(*cnn_blocks())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), tr.forward(x))


def test_residual_net_as_a_list_of_modules():
    torch.manual_seed(0)
    x = torch.randn(300, 12)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    blocks = [nn.Sequential(nn.Linear(12, 16), nn.ReLU()), Residual(16), Residual(16), nn.Linear(16, 3)]
    tr = BlockADMM(blocks, input_shape=(12,))
    hist = tr.fit(TensorDataset(x, y), 15, batch_size=50, progress=False)
    assert hist[-1]["train_acc"] > 0.85 and hist[-1]["loss"] < 0.6 * hist[0]["loss"], hist


def test_regression_with_1d_targets_reports_the_loss_not_an_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    X, Y = datasets.load_diabetes(return_X_y=True)  # float64 inputs, 1-D float64 targets
    X = torch.tensor(X)
    Y = torch.tensor((Y - Y.mean()) / Y.std())
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(10, 32), nn.ReLU()), nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
              nn.Linear(32, 1)]
    tr = BlockADMM(blocks, input_shape=(10,), loss=nn.MSELoss())
    train, val = TensorDataset(X[:350], Y[:350]), TensorDataset(X[350:], Y[350:])
    hist = tr.fit(train, 15, batch_size=50, val=val, progress=False)
    ev = tr.evaluate(val)
    assert set(ev) == {"loss"} and "acc" not in hist[-1] and "val_acc" not in hist[-1]
    assert ev["loss"] < 0.7, ev  # the targets have unit variance: predicting their mean scores about 1
    with torch.no_grad():
        out = tr.forward(X[350:].float())
    assert ev["loss"] == pytest.approx(float(((out.squeeze(1) - Y[350:].float()) ** 2).mean()), rel=1e-5)
    stats = tr.step(X[:20], Y[:20])
    assert stats.acc is None and stats.loss > 0
    # the same targets under the default loss: the error says which loss regression needs
    default = BlockADMM([nn.Linear(10, 8), nn.Linear(8, 1)], input_shape=(10,))
    with pytest.raises(ValueError, match=r"integer class labels.*loss=nn\.MSELoss\(\)"):
        default.step(X[:20], Y[:20])


def test_step_loss_is_the_networks_loss_before_the_update():
    """StepStats.loss is the composed forward's task loss on the batch; head_loss and penalty are the augmented
    Lagrangian's terms. Under the fast preset the last block's term at its auxiliary input read about 1e-14 while
    the network's loss was large: the two are reported apart."""
    x, y = images(100)
    for preset in (None, "fast"):
        torch.manual_seed(0)
        tr = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), preset=preset)
        for _ in range(3):
            with torch.no_grad():
                want = nn.functional.cross_entropy(tr.forward(x), y)
                want_acc = float((tr.forward(x).argmax(1) == y).float().mean())
            stats = tr.step(x, y)
            assert stats.loss == pytest.approx(float(want), rel=1e-5)
            assert stats.acc == pytest.approx(want_acc)
            assert len(stats.penalty) == len(stats.primal_residual) == len(stats.dual_residual) == 2
            assert stats.head_loss != pytest.approx(stats.loss) and stats.step_s > 0


def test_tensordataset_dataloader_int32_labels_float64_inputs():
    x, y = images(200)
    x64, y32 = x.double(), y.int()
    torch.manual_seed(0)
    online = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8))
    loader = DataLoader(TensorDataset(x64, y32), batch_size=50, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    hist = online.fit(loader, 2, progress=False, val=DataLoader(TensorDataset(x64, y32), batch_size=64))
    assert 0 <= hist[-1]["val_acc"] <= 1 and online.evaluate(loader)["acc"] == hist[-1]["train_acc"]
    # batch mode on a plain TensorDataset: its positions are the sample indices
    batch = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), mode="batch", num_samples=200)
    batch.fit(TensorDataset(x64, y32), 1, batch_size=50, progress=False)
    seen, _, _ = batch.tables.gather(torch.arange(200))
    assert bool(seen.all())
    # an iterable of (x, y) batches works like a loader; a dict-yielding dataset is named
    online.fit([(x64[:50], y32[:50]), (x64[50:100], y32[50:100])], 3, progress=False)
    # fit trains until `epochs` are done in all: asking for fewer than are done says so instead of returning quietly
    with pytest.warns(UserWarning, match=r"fit\(epochs=2\) trains nothing: this trainer has done 3 epochs"):
        assert len(online.fit(loader, 2, progress=False)) == 3

    class Dicts(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": x[i], "label": y[i]}

    with pytest.raises(TypeError, match="expected a Dataset or DataLoader whose items are"):
        online.fit(Dicts(), 4, progress=False)


@pytest.mark.parametrize("shared", [True, False])
def test_scheduler_decays_once_per_epoch_per_optimizer(shared):
    x, y = images(120)
    tr = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), shared_optimizer=shared,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                   scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    assert len(tr.optimizers) == (1 if shared else 3) == len(tr.schedulers)
    assert len({id(o) for o in tr.optimizers}) == len(tr.optimizers)
    hist = tr.fit(TensorDataset(x, y), 3, batch_size=40, progress=False)
    n = len(tr.optimizers)
    assert [h["lr"] for h in hist] == [[0.1] * n, [0.05] * n, [0.025] * n]  # the rate each epoch ran with
    assert all(g["lr"] == 0.0125 for o in tr.optimizers for g in o.param_groups)


def test_scheduler_state_resumes_from_a_checkpoint(tmp_path):
    x, y = images(120)

    def make():
        torch.manual_seed(0)
        return BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                         scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1))

    whole = make()
    whole.fit(TensorDataset(x, y), 3, batch_size=40, progress=False)
    first = make()
    first.fit(TensorDataset(x, y), 1, batch_size=40, progress=False, checkpoint=str(tmp_path / "c.pt"))
    resumed = make()
    resumed.load(str(tmp_path / "c.pt"))
    resumed.fit(TensorDataset(x, y), 3, batch_size=40, progress=False)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in whole.history]
    assert [h["lr"] for h in whole.history] == [[0.1] * 3, [0.1] * 3, [pytest.approx(0.01)] * 3]


def test_callbacks_eval_schedule_and_early_stopping_restore_the_best():
    x, y = images(160)
    train, val = TensorDataset(x[:120], y[:120]), TensorDataset(x[120:], y[120:])

    class Record(Callback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, trainer):
            self.calls.append("begin")

        def on_step(self, trainer, step, stats):
            self.calls.append(("step", step, sorted(stats)))

        def on_epoch(self, trainer, record):
            self.calls.append(("epoch", record["epoch"]))

        def on_train_end(self, trainer):
            self.calls.append("end")

    rec = Record()
    tr = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8))
    hist = tr.fit(train, 5, batch_size=40, val=val, eval_train=False, eval_every=2, callbacks=[rec], progress=False)
    assert [("val_acc" in h, "train_acc" in h) for h in hist] == [(False, False), (True, False), (False, False),
                                                                  (True, False), (True, False)]
    assert rec.calls[0] == "begin" and rec.calls[-1] == "end"
    steps = [c for c in rec.calls if c[0] == "step"]
    assert [c[1] for c in steps] == list(range(1, 16))
    assert steps[0][2] == sorted(["loss", "acc", "head_loss", "penalty", "primal_residual", "dual_residual", "rho",
                                  "step_s"])
    assert [c[1] for c in rec.calls if c[0] == "epoch"] == [1, 2, 3, 4, 5]

    # early stopping on a validation metric: stops, and the blocks get the best epoch's weights back
    torch.manual_seed(0)
    tr = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    saved = {}

    class Snapshot(Callback):
        def on_epoch(self, trainer, record):
            saved[record["epoch"]] = copy.deepcopy([b.state_dict() for b in trainer.blocks])

    stop = EarlyStopping("val_loss", patience=2, min_delta=1.0)  # lr 0: no epoch improves by 1.0
    hist = tr.fit(train, 10, batch_size=40, val=val, callbacks=[Snapshot(), stop], progress=False)
    assert len(hist) == 3 and "early_stop" in hist[-1] and stop.best_epoch == 1
    with pytest.raises(ValueError, match="pass val= to fit"):
        BlockADMM(cnn_blocks(), input_shape=(1, 8, 8)).fit(train, 1, callbacks=[EarlyStopping("val_acc")],
                                                            progress=False)


def test_model_contract_errors_say_how_to_cut():
    with pytest.raises(ValueError, match=r"pass a list of block modules.*blocks=N.*blocks=1"):
        BlockADMM(MyNet(), input_shape=(10,))
    with pytest.raises(ValueError, match="was given no cut"):
        BlockADMM(nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)), input_shape=(10,))
    with pytest.raises(TypeError, match=r"MyNet.*cannot cut.*list of modules"):
        BlockADMM(MyNet(), blocks=2, input_shape=(10,))
    with pytest.raises(TypeError, match=r"number of blocks \(an int\) or a list of cut indices"):
        BlockADMM(nn.Sequential(nn.Linear(10, 3)), blocks=True, input_shape=(10,))
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        BlockADMM(nn.Sequential(nn.Linear(10, 3)), blocks=0, input_shape=(10,))
    tr = BlockADMM(MyNet(), blocks=1, input_shape=(10,))  # one block: plain backprop of the whole module
    assert tr.n_blocks == 1


def test_compiled_model_is_unwrapped_with_a_warning():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    compiled = torch.compile(model)
    with pytest.warns(UserWarning, match="torch.compile'd module"):
        tr = BlockADMM(compiled, blocks=2, input_shape=(10,))
    assert all(not k.startswith("_orig_mod") for b in tr.blocks for k in b.state_dict())
    assert tr.blocks[0][0] is model[0]  # trained in place: the compiled wrapper shares these weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockADMM(model, blocks=2, input_shape=(10,))


def test_compile_true_compiles_each_autograd_block_once_and_matches_eager():
    """compile= runs the conv blocks compiled (aot_eager here: the graph capture, without the C++ build); after the
    first steps (grad modes, a last smaller batch) nothing recompiles, and the weights follow the eager run's."""
    from torch._dynamo.utils import counters

    x, y = images(130)
    torch.manual_seed(0)
    eager = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    torch.manual_seed(0)
    compiled = BlockADMM(cnn_blocks(), input_shape=(1, 8, 8), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                         compile={"backend": "aot_eager"})
    assert [type(t.block).__name__ for t in compiled.engine.terms] == ["CompiledBlock"] * 3
    assert all(not k.startswith(("block.", "compiled.")) for b in compiled.blocks for k in b.state_dict())
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 130, 50)]  # 50, 50, 30 rows
    for xb, yb in batches:
        se, sc = eager.step(xb, yb), compiled.step(xb, yb)
        assert sc.loss == pytest.approx(se.loss, rel=1e-4)
    graphs = counters["stats"]["unique_graphs"]
    for xb, yb in batches * 2:
        eager.step(xb, yb), compiled.step(xb, yb)
    assert counters["stats"]["unique_graphs"] == graphs, "a step after the first pass recompiled"
    torch.testing.assert_close(torch.cat([p.flatten() for p in compiled.blocks.parameters()]),
                               torch.cat([p.flatten() for p in eager.blocks.parameters()]), rtol=1e-4, atol=1e-5)
