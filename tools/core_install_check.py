"""The core library with no extras installed, as a user runs it: fit on a TensorDataset, the ops, the NMF estimator;
no extra (scikit-learn, matplotlib, ...) imported. Run by tools/core_install_check.sh in a fresh venv."""
import sys

import torch
from torch.utils.data import TensorDataset

import blockadmm
from blockadmm import BlockADMM, ops
from blockadmm.models import mlp_blocks
from blockadmm.nmf import NMF

print("blockadmm from", blockadmm.__file__)
torch.manual_seed(0)
n = 512
x = torch.randn(n, 20)
y = (x[:, :3].sum(1) > 0).long()
train = TensorDataset(x, y, torch.arange(n))
model, cuts = mlp_blocks(20, [32, 32], 2)
tr = BlockADMM(model, blocks=cuts, input_shape=(20,), mode="batch", num_samples=n)
hist = tr.fit(train, epochs=3, progress=False)
print("history:", [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in hist][-1])
acc = (tr(x).argmax(1) == y).float().mean().item()
print("train acc after 3 epochs", round(acc, 3))
assert acc > 0.8, acc
z, u, a, g = (torch.randn(67, 33) for _ in range(4))
zc, uc = z.clone(), u.clone()
ops.aux_dual_update(z, u, a, g, rho=1.0, lr=0.1, backend="torch")
ops.aux_dual_update(zc, uc, a, g, rho=1.0, lr=0.1, backend="cpu")
assert torch.allclose(z, zc, atol=1e-6) and torch.allclose(u, uc, atol=1e-6)
print("aux_dual_update: the C++ cpu kernel equals the torch reference")
V = torch.rand(200, 50)
est = NMF(n_components=8, max_iter=100, random_state=0)
W = est.fit_transform(V)
print("NMF err", float(est.reconstruction_err_), "n_iter", est.n_iter_, W.shape)
bad = [m for m in ("sklearn", "matplotlib", "mlxtend", "mnist1d", "tensorboard", "triton") if m in sys.modules]
print("extras imported:", bad)
assert not bad
print("CORE OK")
