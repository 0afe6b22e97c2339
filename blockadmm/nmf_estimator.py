"""`NMF`: a scikit-learn-shaped estimator on the fast multiplicative-update op.

Naming follows scikit-learn: X ≈ W H with W (n_samples × k) the codes that `transform` returns and H
(k × n_features) the basis, `components_`. (`NMFLayer` and `ops.nmf_mu_update` write the same product as V ≈ H W,
H the codes.) The solver is scikit-learn's `solver="mu"` with the Frobenius loss: each iteration updates the codes,
then the basis, and every 10 iterations the run stops once the error fell by less than `tol` relative to the error
at the start — so from the same start it follows scikit-learn's iterates to float32 rounding.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from . import ops

__all__ = ["NMF"]

INITS = ("random", "nndsvd", "nndsvda", "custom")


class NMF:
    """Non-negative matrix factorization X ≈ W H, fitted by multiplicative updates on `backend`.

    init: "random" (scikit-learn's: |N(0, 1)| · sqrt(mean(X) / k), from numpy's RandomState(random_state), so
    the same seed gives scikit-learn's start), "nndsvd" / "nndsvda" (non-negative double SVD; "a" fills the zeros
    with mean(X); from the exact SVD, where scikit-learn uses a randomized one: a different start, so the iterates
    and the final error differ from scikit-learn's), or "custom" (pass W and H to `fit`). alpha_W / alpha_H /
    l1_ratio: scikit-learn's regularization (scaled by n_features for W and n_samples for H). Computes in float32.
    """

    def __init__(self, n_components: int, *, init: str = "nndsvda", max_iter: int = 200, tol: float = 1e-4,
                 random_state: Optional[int] = None, alpha_W: float = 0.0, alpha_H: float | str = "same",
                 l1_ratio: float = 0.0, backend: str = "auto", device=None):
        if not isinstance(n_components, int) or isinstance(n_components, bool) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        alpha_h = alpha_W if alpha_H == "same" else alpha_H
        for name, value in (("alpha_W", alpha_W), ("alpha_H", alpha_h)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= l1_ratio <= 1.0:
            raise ValueError(f"l1_ratio must lie in [0, 1], got {l1_ratio!r}")
        self.n_components, self.init, self.max_iter, self.tol = n_components, init, max_iter, tol
        self.random_state, self.alpha_W, self.alpha_H, self.l1_ratio = random_state, alpha_W, alpha_h, l1_ratio
        self.backend, self.device = backend, torch.device(device or "cpu")

    # ------------------------------------------------------------------ input
    def _as_matrix(self, X, name="X") -> torch.Tensor:
        t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D (n_samples, n_features) array, got shape {tuple(t.shape)}")
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"{name} must hold numbers, got dtype {t.dtype}")
        t = t.to(self.device, torch.float32).contiguous()
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or inf")
        if t.numel() and float(t.min()) < 0:
            raise ValueError(f"NMF needs a non-negative {name}; its minimum is {float(t.min()):.4g}")
        return t

    def _regularization(self, n_samples: int, n_features: int):
        """(l1, l2) of the codes' update and of the basis' update, scaled as scikit-learn scales them."""
        w = n_features * self.alpha_W
        h = n_samples * self.alpha_H
        return (w * self.l1_ratio, w * (1 - self.l1_ratio)), (h * self.l1_ratio, h * (1 - self.l1_ratio))

    # ------------------------------------------------------------------ initialization
    def _initial(self, X: torch.Tensor, W, H):
        n, d = X.shape
        k = self.n_components
        if self.init == "custom":
            if W is None or H is None:
                raise ValueError("init='custom' needs W (n_samples, n_components) and H (n_components, n_features)")
            W, H = self._as_matrix(W, "W").clone(), self._as_matrix(H, "H").clone()
            if W.shape != (n, k) or H.shape != (k, d):
                raise ValueError(f"init='custom' needs W of shape {(n, k)} and H of shape {(k, d)}, "
                                 f"got {tuple(W.shape)} and {tuple(H.shape)}")
            return W, H
        if self.init == "random":
            avg = math.sqrt(float(X.mean()) / k)
            rng = np.random.RandomState(self.random_state)
            H = np.abs(avg * rng.standard_normal(size=(k, d)))  # scikit-learn draws H first, then W
            W = np.abs(avg * rng.standard_normal(size=(n, k)))
            return (torch.as_tensor(W, dtype=torch.float32, device=self.device),
                    torch.as_tensor(H, dtype=torch.float32, device=self.device))
        return _nndsvd(X, k, fill_zeros=self.init == "nndsvda")

    # ------------------------------------------------------------------ solver
    def _solve(self, X: torch.Tensor, W: torch.Tensor, H: torch.Tensor, update_H: bool):
        (l1_w, l2_w), (l1_h, l2_h) = self._regularization(*X.shape)
        error_at_init = previous = _frobenius(X, W, H) if self.tol > 0 else None
        # one call per iteration where both updates take the same penalties (the op's "both" is "H" then "W")
        both = update_H and (l1_w, l2_w) == (l1_h, l2_h)
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            # the op's "H" are our codes W, its "W" our basis H
            ops.nmf_mu_update(X, W, H, which="both" if both else "H", l1=l1_w, l2=l2_w, backend=self.backend)
            if update_H and not both:
                ops.nmf_mu_update(X, W, H, which="W", l1=l1_h, l2=l2_h, backend=self.backend)
            if self.tol > 0 and n_iter % 10 == 0:
                error = _frobenius(X, W, H)
                if error_at_init > 0 and (previous - error) / error_at_init < self.tol:
                    break
                previous = error
        return W, H, n_iter

    # ------------------------------------------------------------------ scikit-learn API
    def fit_transform(self, X, y=None, W=None, H=None) -> np.ndarray:
        """Learn the basis `components_` from X and return the codes W of X."""
        X = self._as_matrix(X)
        W0, H0 = self._initial(X, W, H)
        W, H, self.n_iter_ = self._solve(X, W0, H0, update_H=True)
        self.components_ = H.cpu().numpy()
        self.n_components_, self.n_features_in_ = self.n_components, X.shape[1]
        self.reconstruction_err_ = _frobenius(X, W, H)
        return W.cpu().numpy()

    def fit(self, X, y=None, **params) -> "NMF":
        self.fit_transform(X, **params)
        return self

    def transform(self, X) -> np.ndarray:
        """The codes of X under the learned basis (the basis stays fixed)."""
        H = self._fitted_basis()
        X = self._as_matrix(X)
        if X.shape[1] != H.shape[1]:
            raise ValueError(f"X has {X.shape[1]} features, the basis was fitted on {H.shape[1]}")
        W = torch.full((X.shape[0], self.n_components), math.sqrt(float(X.mean()) / self.n_components),
                       device=self.device)  # scikit-learn's start for transform with solver="mu"
        W, _, _ = self._solve(X, W, H, update_H=False)
        return W.cpu().numpy()

    def inverse_transform(self, W) -> np.ndarray:
        """X ≈ W H from codes W."""
        H = self._fitted_basis()
        W = torch.as_tensor(np.asarray(W), dtype=torch.float32, device=self.device)
        if W.dim() != 2 or W.shape[1] != self.n_components:
            raise ValueError(f"W must have shape (n_samples, {self.n_components}), got {tuple(W.shape)}")
        return (W @ H).cpu().numpy()

    def _fitted_basis(self) -> torch.Tensor:
        if not hasattr(self, "components_"):
            raise RuntimeError("this NMF is not fitted yet: call fit or fit_transform first")
        return torch.as_tensor(self.components_, device=self.device)


def _frobenius(X: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """‖X − W H‖_F, in float64 (scikit-learn's reconstruction_err_)."""
    return float(torch.linalg.vector_norm((X - W @ H).double()))


def _nndsvd(X: torch.Tensor, k: int, *, fill_zeros: bool):
    """Non-negative double SVD (Boutsidis & Gallopoulos 2008): the leading singular pairs, each split into its
    positive and negative parts and the larger one kept; "nndsvda" replaces zeros by mean(X)."""
    U, S, Vt = torch.linalg.svd(X.double(), full_matrices=False)
    n, d = X.shape
    W = torch.zeros(n, k, dtype=torch.float64, device=X.device)
    H = torch.zeros(k, d, dtype=torch.float64, device=X.device)
    W[:, 0] = S[0].sqrt() * U[:, 0].abs()
    H[0] = S[0].sqrt() * Vt[0].abs()
    for j in range(1, min(k, S.numel())):
        x, y = U[:, j], Vt[j]
        xp, xn, yp, yn = x.clamp_min(0), (-x).clamp_min(0), y.clamp_min(0), (-y).clamp_min(0)
        xpn, ypn, xnn, ynn = (torch.linalg.vector_norm(v) for v in (xp, yp, xn, yn))
        if max(xpn * ypn, xnn * ynn) == 0:
            continue
        if xpn * ypn >= xnn * ynn:
            u, v, sigma = xp / xpn, yp / ypn, xpn * ypn
        else:
            u, v, sigma = xn / xnn, yn / ynn, xnn * ynn
        lbd = (S[j] * sigma).sqrt()
        W[:, j], H[j] = lbd * u, lbd * v
    W[W < 1e-6] = 0
    H[H < 1e-6] = 0
    if fill_zeros:
        avg = X.double().mean()
        W[W == 0] = avg
        H[H == 0] = avg
    return W.float(), H.float()
