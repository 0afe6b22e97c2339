"""The core library with no extras installed, as a user runs it: fit on a TensorDataset, the ops, the NMF layer's
solver (the scikit-learn estimator says which extra it needs); no extra (scikit-learn, matplotlib, ...) imported.
Run by tools/core_install_check.sh in a fresh venv."""
import sys

import torch
from torch.utils.data import TensorDataset

import blockadmm
from blockadmm import BlockADMM, ops
from blockadmm.models import mlp_blocks
from blockadmm.nmf import NMFLayer

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
layer = NMFLayer(50, n_components=8).fit_basis(V, max_iter=100)
print("NMFLayer basis fitted by coordinate descent, reconstruction error",
      float((V - layer(V) @ layer.W).norm() / V.norm()))
try:
    from blockadmm.nmf import NMF  # noqa: F401  (the scikit-learn estimator: an extra)
except ImportError as err:
    print("blockadmm.nmf.NMF without scikit-learn:", err)
    assert 'pip install "blockadmm[sklearn]"' in str(err)
else:
    raise AssertionError("blockadmm.nmf.NMF imported without scikit-learn")
bad = [m for m in ("sklearn", "matplotlib", "mlxtend", "mnist1d", "tensorboard", "triton") if m in sys.modules]
print("extras imported:", bad)
assert not bad
print("CORE OK")
