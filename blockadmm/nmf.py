"""DeepFacto's NMF layer (DESIGN §1, last paragraph) and its Block-ADMM block.

`NMFLayer` factorizes non-negative features V ≈ H W (V n×d, codes H ≥ 0 n×k, basis W ≥ 0 k×d). Its
forward solves for H by a fixed number of Lee–Seung multiplicative updates (`blockadmm.ops.nmf_mu_update`,
so the fast kernel is used where one is registered) from a warm start, with no autograd: backprop does
not cross the layer, Block-ADMM does. Conv features (n, d, h, w) are factorized per position and give
codes (n, k, h, w).

The k components are split into groups: `per_class` components for each of `n_classes` classes, then
`n_shared` shared ones (group id -1). The class evidence of a sample (or a position) is the energy
(sum) of its group's codes.

`NMFBlock` adds the Block-ADMM hooks the trainer looks for:

- `admm_local_step`: the basis is updated by multiplicative updates of W toward the block's target
  (V = the block's input, H = its output target z + u) instead of by an optimizer; the block updates
  W for its first `update_epochs` epochs, then W is frozen (None: never frozen);
- `admm_input_grad`: the gradient the auxiliary step of the feature boundary receives from this block
  is the *difference target* -rho (z + u - H(V)) W: it moves the features by the change that the code
  target asks for, mapped through the basis (targeting the plain reconstruction (z + u) W instead
  collapses features and basis onto one direction);
- `admm_aux_update`: the auxiliary step of the code boundary is a few exponentiated-gradient (mirror)
  steps, z ← z ⊙ exp(-lr·∇), then each code vector (a sample's, or a sample's at one position for conv codes)
  is rescaled to keep its total energy, so the steps move energy between components only;
- `admm_set_epoch`: the trainer tells the block the epoch, which drives the freezing schedule.

`admm_input_grad` takes the codes the trainer kept from the forward at the same features (`out`), so a step
solves once where it asks for the codes of the same features twice (the forward, then the feature boundary's gradient).
`solver="gram"` runs the same multiplicative updates of H with V Wᵀ and W Wᵀ computed once per solve instead
of once per update (equal to the op's result up to rounding); the default goes through `ops.nmf_mu_update`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import nmf_solver, ops

__all__ = ["NMFBlock", "NMFLayer", "disentangling_score", "group_energy"]  # and NMF, imported on first use


def __getattr__(name):
    # the estimator needs scikit-learn (an extra): imported on first use, so `import blockadmm.nmf` never needs it
    if name == "NMF":
        from .nmf_estimator import NMF

        return NMF
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _to_rows(V: torch.Tensor):
    """(n, d) -> (n, d); (n, d, h, w) -> (n*h*w, d). Returns the rows and how to undo it."""
    if V.dim() == 2:
        return V, None
    if V.dim() == 4:
        n, d, h, w = V.shape
        return V.permute(0, 2, 3, 1).reshape(n * h * w, d), (n, h, w)
    raise ValueError(f"NMFLayer takes features of shape (n, d) or conv features (n, d, h, w), got {tuple(V.shape)}")


def _from_rows(H: torch.Tensor, spatial):
    if spatial is None:
        return H
    n, h, w = spatial
    return H.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()


class NMFLayer(nn.Module):
    """Non-negative factorization layer: features (n, d[, h, w]) -> codes (n, k[, h, w]) with V ≈ H W.

    Naming: V (n×d) the features, H (n×k) the codes the forward returns, W (k×d) the basis, `layer.W`. scikit-learn
    writes the same product X ≈ W H with W the codes and H the basis (`components_`): this layer's W is
    scikit-learn's `components_` (and `blockadmm.nmf.NMF`'s), its H scikit-learn's W.

    The basis starts random (uniform on [0.1, 1.1), seed 0) and the forward never changes it. To learn one:
    `fit_basis(V)` fits it to features by NMF (scikit-learn's coordinate descent, on blockadmm's ops);
    `init_basis_from(features, labels)` gives each class group components drawn from that class's features;
    inside Block-ADMM, NMFBlock updates it by multiplicative updates toward the codes' targets (update_epochs).

    in_features: d (channels, for conv features). n_classes, per_class, n_shared: the component groups
    (k = n_classes*per_class + n_shared); n_components gives k directly when there are no class groups.
    n_iter: multiplicative updates per forward. l1: sparsity penalty on the codes. name: how errors
    refer to the layer.
    """

    def __init__(
        self,
        in_features: int,
        *,
        n_classes: int = 0,
        per_class: int = 1,
        n_shared: int = 0,
        n_components: int | None = None,
        n_iter: int = 10,
        eps: float = 1e-8,
        l1: float = 0.0,
        backend: str = "auto",
        solver: str = "op",
        name: str = "NMFLayer",
    ):
        super().__init__()
        if n_classes and n_components is not None:
            raise ValueError("pass either class groups (n_classes, per_class, n_shared) or n_components, not both")
        if n_classes:
            if per_class < 1 or n_shared < 0:
                raise ValueError(f"need per_class >= 1 and n_shared >= 0, got {per_class}, {n_shared}")
            k = n_classes * per_class + n_shared
            group = torch.cat([torch.arange(n_classes).repeat_interleave(per_class), torch.full((n_shared,), -1)])
        else:
            if n_components is None or n_components < 1:
                raise ValueError(f"need n_components >= 1 (or class groups), got {n_components}")
            k = int(n_components)
            group = torch.full((k,), -1)
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.in_features, self.n_components, self.n_classes = int(in_features), k, int(n_classes)
        if solver not in ("op", "gram"):
            raise ValueError(f"solver must be 'op' or 'gram', got {solver!r}")
        self.n_iter, self.eps, self.l1, self.backend, self.name = int(n_iter), float(eps), float(l1), backend, name
        self.solver = solver
        g = torch.Generator().manual_seed(0)
        # a parameter (state_dict, .to(), parameters()) that autograd and optimizers leave alone
        self.W = nn.Parameter(torch.rand(k, self.in_features, generator=g) + 0.1, requires_grad=False)
        self.register_buffer("group", group.long())
        self.register_buffer("basis_fitted", torch.zeros((), dtype=torch.bool))  # set by fit_basis / init_basis_from

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, n_components={self.n_components}, n_classes={self.n_classes}, "
                f"n_iter={self.n_iter}")

    # what the trainer applies to the boundaries around the layer unless told otherwise: non-negative features in,
    # non-negative codes out
    admm_input_constraint = "nonneg"
    admm_output_constraint = "nonneg"

    def admm_check_input(self, previous: nn.Module, shape: tuple) -> None:
        """Refuse per-position codes of conv features whose positions are smaller than an object (BlockADMM calls this
        with the block before and its output shape): a position's channels see a few pixels, the class groups do not
        separate there (a small CNN on digits: 13% where its flattened features give 82%). Positions that are whole
        object-sized windows (deepfacto.WindowFeatures, marked `object_sized_positions`) are the weak-supervision
        recipe, and pass."""
        if len(shape) == 3 and not any(getattr(m, "object_sized_positions", False) for m in previous.modules()):
            raise ValueError(
                f"{self.name} gets conv features of per-sample shape {tuple(shape)} and would code each of the "
                f"{shape[1]}x{shape[2]} positions on its own, but a position of a conv feature map sees a few pixels, "
                f"too little for class groups to separate (they do not train): end the feature block in nn.Flatten() "
                f"for one code vector per sample, or wrap the conv net in blockadmm.deepfacto.WindowFeatures(cnn, "
                f"window, stride) so that each position is an object-sized window (the weakly supervised recipe)")

    def admm_block(self) -> NMFBlock:
        """The layer as Block-ADMM trains it (BlockADMM calls this on each block): an NMFBlock sharing this layer's
        basis, groups and settings, so training updates this layer too. A basis set from data (fit_basis,
        init_basis_from) stays frozen, as in the DeepFacto recipe; a random one is learned for 3 epochs, then frozen
        (NMFBlock's default)."""
        block = NMFBlock(self.in_features, update_epochs=0 if bool(self.basis_fitted) else 3,
                         n_components=self.n_components, n_iter=self.n_iter, eps=self.eps, l1=self.l1,
                         backend=self.backend, solver=self.solver, name=self.name)
        block.n_classes, block.W = self.n_classes, self.W
        block.group, block.basis_fitted = self.group, self.basis_fitted
        return block

    # ------------------------------------------------------------------ the solve
    def _check_input(self, V: torch.Tensor) -> None:
        if V.dim() not in (2, 4):
            raise ValueError(f"{self.name}: features must be (n, d) or conv features (n, d, h, w), "
                             f"got shape {tuple(V.shape)}")
        if V.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected {self.in_features} features (dim 1), got shape {tuple(V.shape)}")
        if V.numel() == 0:
            return
        # two reductions instead of an element-wise isfinite: the sum of a non-negative array is finite iff every
        # entry is (NaN and inf propagate; finite float32 features do not overflow it)
        m = V.amin()
        if not bool(torch.isfinite(V.sum(dtype=torch.float64))):
            raise ValueError(f"{self.name}: input holds NaN/inf; the block before the NMF layer produced it")
        if float(m) < 0:
            flat = int(V.argmin())
            sample = flat // (V.numel() // V.shape[0])
            raise ValueError(
                f"{self.name}: NMF needs non-negative features, but its input has a negative value ({float(m):.4g}, "
                f"sample {sample} of the batch). The features come from the block before the NMF layer: end it in a "
                f"non-negative activation (ReLU), and in Block-ADMM constrain that boundary with Prox.nonneg()."
            )

    def warm_start(self, V2: torch.Tensor) -> torch.Tensor:
        """Codes to start the updates from: V Wᵀ, scaled per row to best fit V (zero rows give zeros)."""
        W = self.W.detach()
        H = V2 @ W.T
        R = H @ W
        num = (R * V2).sum(1, keepdim=True)
        den = R.square().sum(1, keepdim=True)
        scale = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(den))
        H = H * scale
        # multiplicative updates cannot leave an exact zero: lift them a little (rows that are all zero stay zero)
        floor = 1e-4 * H.mean(1, keepdim=True)
        return torch.maximum(H, floor).contiguous()

    @torch.no_grad()
    def encode_rows(self, V2: torch.Tensor, H: torch.Tensor | None = None, n_iter: int | None = None) -> torch.Tensor:
        """Codes for rows V2 (m×d) by `n_iter` multiplicative updates from H (default: the warm start)."""
        V2 = V2.detach().float().contiguous()
        H = self.warm_start(V2) if H is None else H.detach().float().clone().contiguous()
        W = self.W.data if self.W.dtype == torch.float32 else self.W.data.float()
        n_iter = self.n_iter if n_iter is None else n_iter
        if self.solver == "gram":
            # the same multiplicative updates, H <- H * (V Wᵀ) / (H (W Wᵀ) + l1 + eps), with V Wᵀ and W Wᵀ computed
            # once per solve instead of once per update (each update is then an m×k×k product)
            num, G = V2 @ W.T, W @ W.T
            for _ in range(n_iter):
                H.mul_(num / (H @ G + (self.l1 + self.eps)))
            return H
        for _ in range(n_iter):
            ops.nmf_mu_update(V2, H, W, which="H", eps=self.eps, l1=self.l1, backend=self.backend)
        return H

    @torch.no_grad()
    def forward(self, V: torch.Tensor) -> torch.Tensor:
        self._check_input(V)
        V2, spatial = _to_rows(V)
        return _from_rows(self.encode_rows(V2), spatial).to(V.dtype)

    @torch.no_grad()
    def reconstruct(self, H: torch.Tensor) -> torch.Tensor:
        """H W, in the shape of the features (per position for conv codes)."""
        H2, spatial = _to_rows(H)
        R = H2 @ self.W.detach()
        if spatial is None:
            return R
        n, h, w = spatial
        return R.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def loss(self, V: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """0.5 ‖V − H W‖² summed over the batch (and positions)."""
        return 0.5 * (V - self.reconstruct(H)).square().sum()

    @torch.no_grad()
    def fit_basis(self, V: torch.Tensor, *, init: str = "nndsvda", solver: str = "cd", max_iter: int = 200,
                  tol: float = 1e-4, random_state: int | None = None) -> NMFLayer:
        """Learn the basis W from features V (n, d[, h, w]; conv features per position) by NMF, as
        `blockadmm.nmf.NMF(n_components=k, init=..., solver=..., ...)` fits it (the exact SVD where the estimator
        uses scikit-learn's randomized one), without needing scikit-learn. Returns the layer."""
        self._check_input(V)
        V2, _ = _to_rows(V)
        X = nmf_solver.Matrix(V2.detach().float().contiguous())
        if solver not in ("cd", "mu"):
            raise ValueError(f"{self.name}: solver must be 'cd' or 'mu', got {solver!r}")
        if init not in ("random", "nndsvd", "nndsvda", "nndsvdar"):
            raise ValueError(f"{self.name}: init must be 'random', 'nndsvd', 'nndsvda' or 'nndsvdar', got {init!r}")
        if init != "random" and self.n_components > min(X.shape):
            raise ValueError(f"{self.name}: init={init!r} needs n_components <= min(n_samples, n_features) "
                             f"= {min(X.shape)}, got {self.n_components}: use init='random'")
        W, H = nmf_solver.initialize(X, self.n_components, init, lambda: np.random.RandomState(random_state))
        fit = nmf_solver.fit_cd if solver == "cd" else nmf_solver.fit_mu
        _, H, _ = fit(X, W, H, tol=tol, max_iter=max_iter, backend=self.backend)
        self.W.data.copy_(H.to(self.W.dtype).clamp_min(1e-6))
        self.basis_fitted.fill_(True)
        return self

    def group_energy(self, H: torch.Tensor) -> torch.Tensor:
        """Per-class code energy: (n, k[, h, w]) -> (n, n_classes[, h, w])."""
        return group_energy(H, self.group, self.n_classes)

    @torch.no_grad()
    def init_basis_from(self, features: torch.Tensor, labels: torch.Tensor, *, jitter: float = 0.05, seed: int = 0,
                        contrast: float = 0.0) -> None:
        """Class-specific init: each class's components are (jittered) feature vectors of samples of that class.

        features: (N, d) or (N, d, h, w) (then per sample the positions are pooled by their sum);
        labels: (N,) class ids or (N, C) multi-hot (a sample counts for every class it holds).
        Shared components get the feature vectors of random samples of any class. contrast > 0 subtracts that
        fraction of the mean (normalized) feature vector first (clamped at 0), so that groups start apart.
        """
        self.basis_fitted.fill_(True)
        F = features.detach().float()
        if F.dim() == 4:
            F = F.sum((2, 3))
        F = F / F.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if contrast:  # what sets a class apart: the excess over the mean feature vector
            F = (F - contrast * F.mean(0, keepdim=True)).clamp_min(0)
        g = torch.Generator().manual_seed(seed)
        L = labels if labels.dim() == 2 else nn.functional.one_hot(labels.long(), max(self.n_classes, 1)).float()
        Wn = self.W.data
        scale = 1.0
        for j in range(self.n_components):
            c = int(self.group[j])
            pool = torch.arange(len(F)) if c < 0 else torch.nonzero(L[:, c] > 0).flatten()
            if len(pool) == 0:
                continue
            pick = pool[torch.randint(len(pool), (min(8, len(pool)),), generator=g)]
            v = F[pick].mean(0)
            v = v * (1 + jitter * torch.rand(v.shape, generator=g))
            Wn[j] = (v / v.norm().clamp_min(1e-12) * scale).clamp_min(1e-6).to(Wn.dtype)


class NMFBlock(NMFLayer):
    """NMFLayer with the Block-ADMM hooks (see the module docstring).

    update_epochs: W is updated by multiplicative updates during epochs 0..update_epochs-1, then frozen
    (None: always updated; 0: never). w_iter: multiplicative updates of W per weight step.
    eg_steps, eg_lr: exponentiated-gradient steps (and their step size) of the code boundary's
    auxiliary step; eg_clip bounds each step's exponent.
    """

    def __init__(self, in_features: int, *, update_epochs: int | None = 3, w_iter: int = 1, eg_steps: int = 3,
                 eg_lr: float = 1.0, eg_clip: float = 2.0, **kw):
        super().__init__(in_features, **kw)
        self.update_epochs, self.w_iter = update_epochs, int(w_iter)
        self.eg_steps, self.eg_lr, self.eg_clip = int(eg_steps), float(eg_lr), float(eg_clip)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))  # saved with checkpoints
        self.register_buffer("w_updates", torch.zeros((), dtype=torch.long))

    def admm_block(self) -> NMFBlock:
        return self

    @property
    def frozen(self) -> bool:
        return self.update_epochs is not None and int(self.epoch) >= self.update_epochs

    # ------------------------------------------------------------------ trainer hooks
    def admm_set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(int(epoch))
        if self.frozen and not bool(self.basis_fitted) and int(self.w_updates) == 0:
            raise ValueError(
                f"{self.name}: its basis W is still the random start and update_epochs={self.update_epochs} keeps it "
                f"frozen, so the codes would carry no class information: give it a basis before training "
                f"(build_deepfacto(..., basis_from=(inputs, labels)), deepfacto.init_basis(blocks, train) or "
                f"fit_basis(features)), or let training learn it (update_epochs > 0, or None: never frozen)")

    @torch.no_grad()
    def admm_local_step(self, inp, target, dual, *, rho, y, loss_fn):
        """Multiplicative updates of W toward V ≈ (z + u) W; returns the fit loss (mean over samples)."""
        if target is None:
            raise ValueError(f"{self.name}: an NMF block cannot be the last block; put a head after it")
        V2, _ = _to_rows(inp.detach().float())
        Ht, _ = _to_rows((target + dual).detach().float().clamp_min(0.0))
        Ht = Ht.contiguous()
        if not self.frozen:
            for _ in range(self.w_iter):
                ops.nmf_mu_update(V2, Ht, self.W.data, which="W", eps=self.eps, backend=self.backend)
            self.w_updates += 1
        return 0.5 * (V2 - Ht @ self.W).square().sum() / max(inp.shape[0], 1)

    @torch.no_grad()
    def admm_input_grad(self, z_in, z_out, u_out, *, rho, y, loss_fn, out=None):
        """The difference target: -rho (z + u - H(z_in)) W, in the shape of z_in; H(z_in) is `out` when the trainer
        kept the forward at z_in (the forward refuses negative features, so then z_in = max(z_in, 0)), else solved."""
        if rho is None:
            raise ValueError(f"{self.name}: an NMF block cannot be the last block; put a head after it")
        H0 = self.forward(z_in.clamp_min(0.0)) if out is None else out
        return self.reconstruct(-rho * (z_out + u_out - H0))

    @torch.no_grad()
    def admm_aux_update(self, z, u, a, grad_fn, *, rho, lr, prox=None):
        """Mirror steps on the code boundary, in place on z: each code vector keeps its total energy (per sample;
        per sample and position for conv codes), so a step only moves energy between components. (Keeping only
        each sample's total lets a step that grows the codes at a few positions shrink them everywhere else, and
        the difference target then drives the features to zero.)"""
        dims = tuple(range(1, z.dim()))
        energy = z.sum(1, keepdim=True)
        for _ in range(self.eg_steps):
            g = grad_fn(z)
            grad = rho * (z - a + u) + (0 if g is None else g)
            # scale-free step: the gradient relative to each sample's mean absolute gradient
            norm = grad.abs().mean(dims, keepdim=True).clamp_min(1e-12)
            step = (-self.eg_lr * grad / norm).clamp(-self.eg_clip, self.eg_clip)
            zn = z.clamp_min(0) * step.exp()
            zn = zn + 1e-6 * energy / zn.shape[1]  # keeps every component reachable
            zn = zn * (energy / zn.sum(1, keepdim=True).clamp_min(1e-30))
            z.copy_(zn)


def group_energy(H: torch.Tensor, group: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Sum the codes of each class group: (n, k[, h, w]) -> (n, n_classes[, h, w]); shared components dropped."""
    onehot = (group.view(-1, 1) == torch.arange(n_classes, device=group.device).view(1, -1)).to(H.dtype)  # k×C
    if H.dim() == 2:
        return H @ onehot
    return torch.einsum("nkhw,kc->nchw", H, onehot)


def disentangling_score(H: torch.Tensor, labels: torch.Tensor, group: torch.Tensor, n_classes: int) -> float:
    """Mean share of a sample's code energy in its true class's group (multi-hot labels: in its classes' groups)."""
    E = group_energy(H, group, n_classes)
    if E.dim() == 4:
        E = E.sum((2, 3))
    total = H.sum(tuple(range(1, H.dim()))).clamp_min(1e-30)
    L = labels.float() if labels.dim() == 2 else nn.functional.one_hot(labels.long(), n_classes).float()
    return float(((E * L).sum(1) / total).mean())
