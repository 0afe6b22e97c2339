"""The torch NMF solvers behind `blockadmm.nmf.NMF`: scikit-learn's starts, its coordinate descent and its
multiplicative updates, step for step, on dense or sparse (CSR) X, in X's dtype.

Naming follows scikit-learn: X (n×d) ≈ W H, W (n×k) the codes, H (k×d) the basis. No scikit-learn import: the core
(`NMFLayer.fit_basis`) runs these without it; the estimator (blockadmm/nmf_estimator.py) validates and wraps them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from . import ops

__all__ = ["Matrix", "beta_divergence", "fit_cd", "fit_mu", "initialize", "nndsvd_from_svd"]

# scikit-learn's EPSILON: the floor of WH where a β-divergence divides by it
EPSILON = float(np.finfo(np.float32).eps)
_ROW_CHUNK = 4096  # rows of a dense W H formed at once where a sparse X needs it


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for dense factors; on the CPU through numpy's BLAS, the one scikit-learn runs (torch's CPU wheels
    bring MKL, whose float64 GEMMs run at about half of OpenBLAS's speed on AMD CPUs: bench/bench_nmf.py)."""
    if a.device.type == "cpu" and a.layout == b.layout == torch.strided:
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b


def _scipy_csr(X: torch.Tensor):
    """The CPU CSR tensor X as a scipy CSR matrix on the same memory, or None without scipy (not a core
    dependency). scipy's sparse products are scikit-learn's; torch's (MKL on its CPU wheels) run Xᵀ B in float64 at
    under half their speed on AMD CPUs (bench/bench_nmf.py)."""
    try:
        import scipy.sparse as sp
    except ImportError:
        return None
    return sp.csr_matrix((X.values().numpy(), X.col_indices().numpy(), X.crow_indices().numpy()), shape=X.shape)


class Matrix:
    """X as the solvers read it: a dense tensor, or a sparse CSR tensor with its transpose kept (built once), so
    X @ B and Xᵀ @ B are both row-major sparse-dense products and X is never densified (on the CPU: scipy's
    products, where scipy is installed)."""

    def __init__(self, X: torch.Tensor, _transpose: Matrix | None = None):
        self.X, self.shape, self.dtype = X, tuple(X.shape), X.dtype
        self.is_sparse = X.layout == torch.sparse_csr
        self._T = _transpose
        if _transpose is not None:  # the transpose of a scipy CSR matrix is a CSC view of the same memory
            self._scipy = None if _transpose._scipy is None else _transpose._scipy.T
        else:
            self._scipy = _scipy_csr(X) if self.is_sparse and X.device.type == "cpu" else None

    @property
    def T(self) -> Matrix:
        if self._T is None:
            if self.is_sparse:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # torch: "sparse CSR support is in beta"
                    Xt = self.X.t().to_sparse_csr()
            else:
                Xt = self.X.t()
            self._T = Matrix(Xt, _transpose=self)
        return self._T

    @property
    def values(self) -> torch.Tensor:
        """The stored entries (sparse) or all entries (dense), flat."""
        return self.X.values() if self.is_sparse else self.X.reshape(-1)

    def mm(self, B: torch.Tensor) -> torch.Tensor:
        if self._scipy is not None:
            return torch.from_numpy(np.asarray(self._scipy @ B.numpy()))
        return self.X @ B if self.is_sparse else mm(self.X, B)

    def rows_cols(self):
        """Row and column index of every stored entry (sparse only)."""
        crow, col = self.X.crow_indices(), self.X.col_indices()
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=col.device), crow.diff())
        return rows, col

    def with_values(self, v: torch.Tensor) -> torch.Tensor:
        """A sparse tensor of X's pattern holding `v` (one value per stored entry)."""
        return torch.sparse_csr_tensor(self.X.crow_indices(), self.X.col_indices(), v, self.shape)

    def mean(self) -> float:
        return float(self.values.sum(dtype=torch.float64)) / (self.shape[0] * self.shape[1])


# ---------------------------------------------------------------------------------------------------- starts
def _normal(rng: np.random.RandomState, size, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal(size=size).astype(_np_dtype(dtype), copy=False))


def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def initialize(X: Matrix, k: int, init: str, rng_factory, svd=None):
    """scikit-learn's `_initialize_nmf`: "random" (|N(0,1)|·sqrt(mean(X)/k), H drawn before W) or NNDSVD
    ("nndsvd", "nndsvda": zeros filled with mean(X), "nndsvdar": with small random values). `rng_factory()` gives
    the RandomState scikit-learn would draw from; `svd(X, k)` gives (U, S, Vt) (default: the exact SVD of the
    dense X; the estimator passes scikit-learn's randomized one)."""
    dtype = X.dtype
    if init == "random":
        avg = math.sqrt(X.mean() / k)
        rng = rng_factory()
        H = _normal(rng, (k, X.shape[1]), dtype).mul_(avg).abs_()
        W = _normal(rng, (X.shape[0], k), dtype).mul_(avg).abs_()
        return W.contiguous(), H.contiguous()
    if svd is None:
        U, S, Vt = torch.linalg.svd(X.X.to_dense() if X.is_sparse else X.X, full_matrices=False)
        U, S, Vt = U[:, :k], S[:k], Vt[:k]
    else:
        U, S, Vt = svd(X, k)
    return nndsvd_from_svd(U, S, Vt, X.mean(), init, rng_factory)


def nndsvd_from_svd(U, S, Vt, mean: float, variant: str, rng_factory):
    """Non-negative double SVD (Boutsidis & Gallopoulos 2008) from the leading singular triplets, as scikit-learn
    computes it: each pair split into its positive and negative parts and the larger kept, entries below 1e-6
    zeroed, then filled per `variant`."""
    k = S.shape[0]
    W = torch.zeros(U.shape[0], k, dtype=U.dtype)
    H = torch.zeros(k, Vt.shape[1], dtype=U.dtype)
    W[:, 0] = S[0].sqrt() * U[:, 0].abs()
    H[0] = S[0].sqrt() * Vt[0].abs()
    for j in range(1, k):
        x, y = U[:, j], Vt[j]
        xp, yp, xn, yn = x.clamp_min(0), y.clamp_min(0), (-x).clamp_min(0), (-y).clamp_min(0)
        xpn, ypn, xnn, ynn = (float(torch.linalg.vector_norm(v)) for v in (xp, yp, xn, yn))
        if xpn * ypn > xnn * ynn:
            u, v, sigma = xp / xpn, yp / ypn, xpn * ypn
        else:
            u, v, sigma = xn / xnn, yn / ynn, xnn * ynn
        lbd = math.sqrt(float(S[j]) * sigma)
        W[:, j], H[j] = lbd * u, lbd * v
    W[W < 1e-6] = 0
    H[H < 1e-6] = 0
    if variant == "nndsvda":
        W[W == 0] = mean
        H[H == 0] = mean
    elif variant == "nndsvdar":
        rng = rng_factory()
        for M in (W, H):
            zeros = M == 0
            M[zeros] = _normal(rng, int(zeros.sum()), torch.float64).mul_(mean / 100).abs_().to(M.dtype)
    return W.contiguous(), H.contiguous()


# ---------------------------------------------------------------------------------------------------- losses
def beta_divergence(X: Matrix, W: torch.Tensor, H: torch.Tensor, beta: float, square_root: bool = False) -> float:
    """scikit-learn's `_beta_divergence` (β = 2: half the squared Frobenius norm; 1: generalized KL; 0: Itakura-
    Saito), accumulated in float64; square_root: sqrt(2·value), for β = 2 the Frobenius norm ‖X − W H‖."""
    if beta == 2:
        if X.is_sparse:
            Xv = X.values.double()
            norm_wh = float(((W.T @ W) * (H @ H.T)).sum(dtype=torch.float64))
            cross = float((X.mm(H.T) * W).sum(dtype=torch.float64))
            res = (float(Xv @ Xv) + norm_wh - 2.0 * cross) / 2.0
        else:
            res = float(torch.linalg.vector_norm(X.X - mm(W, H), dtype=torch.float64)) ** 2 / 2.0
        return math.sqrt(max(2.0 * res, 0.0)) if square_root else res
    Xv, WHv = X.values, _wh_at_entries(X, W, H)
    keep = Xv > EPSILON  # scikit-learn's rule: entries of X at or below EPSILON do not count
    Xv, WHv = Xv[keep].double(), WHv[keep].double().clamp_min(EPSILON)
    if beta == 1:
        sum_wh = float(W.sum(0).double() @ H.sum(1).double())
        res = float(Xv @ torch.log(Xv / WHv)) + sum_wh - float(Xv.sum())
    elif beta == 0:
        div = Xv / WHv
        res = float(div.sum() - X.shape[0] * X.shape[1] - torch.log(div).sum())
    else:
        sum_wh_beta = sum(float((chunk.double() ** beta).sum()) for chunk in _wh_row_chunks(W, H))
        res = float((Xv**beta).sum() - beta * (Xv @ WHv ** (beta - 1)) + sum_wh_beta * (beta - 1))
        res /= beta * (beta - 1)
    return math.sqrt(2 * max(res, 0.0)) if square_root else res


def _wh_at_entries(X: Matrix, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(W H) at X's stored entries (sparse) or everywhere (dense), flat."""
    if not X.is_sparse:
        return mm(W, H).reshape(-1)
    rows, cols = X.rows_cols()
    out = torch.empty(rows.numel(), dtype=W.dtype, device=W.device)
    Ht = H.T
    step = max(1, (1 << 22) // max(W.shape[1], 1))
    for s in range(0, rows.numel(), step):
        out[s : s + step] = (W[rows[s : s + step]] * Ht[cols[s : s + step]]).sum(1)
    return out


def _wh_row_chunks(W: torch.Tensor, H: torch.Tensor):
    for s in range(0, W.shape[0], _ROW_CHUNK):
        yield mm(W[s : s + _ROW_CHUNK], H)


# ---------------------------------------------------------------------------------------------------- cd
def _cd_half(X: Matrix, W: torch.Tensor, Ht: torch.Tensor, l1: float, l2: float, perm, backend: str) -> float:
    """One coordinate-descent pass over W for X ≈ W Htᵀ (scikit-learn's `_update_coordinate_descent`)."""
    G = mm(Ht.T, Ht)
    if l2:
        G.diagonal().add_(l2)
    A = X.mm(Ht)
    if l1:
        A -= l1
    return float(ops.nmf_hals_update(W, A, G, perm=perm, backend=backend))


def fit_cd(
    X: Matrix,
    W,
    H,
    *,
    tol,
    max_iter,
    l1_W=0.0,
    l1_H=0.0,
    l2_W=0.0,
    l2_H=0.0,
    update_H=True,
    shuffle=False,
    rng=None,
    backend="auto",
    verbose=0,
):
    """scikit-learn's `_fit_coordinate_descent`: per iteration a pass over W, then over H (as Hᵀ on the
    transposed problem); stop when the summed projected-gradient violation falls to `tol` times the first
    iteration's. `rng`: the RandomState the shuffled component orders come from. Returns (W, H, n_iter)."""
    W, Ht = W.contiguous(), H.T.contiguous()
    k = W.shape[1]

    def order():
        return torch.from_numpy(rng.permutation(k).astype(np.int64)).to(W.device) if shuffle else None

    violation_init, n_iter = None, 0
    for n_iter in range(1, max_iter + 1):
        violation = _cd_half(X, W, Ht, l1_W, l2_W, order(), backend)
        if update_H:
            violation += _cd_half(X.T, Ht, W, l1_H, l2_H, order(), backend)
        if n_iter == 1:
            violation_init = violation
        if verbose:
            print(f"NMF cd iteration {n_iter}: violation {violation:.6g} (first: {violation_init:.6g})")
        if violation_init == 0 or violation / violation_init <= tol:
            break
    return W, Ht.T.contiguous(), n_iter


# ---------------------------------------------------------------------------------------------------- mu
def _mu_factor(X: Matrix, W: torch.Tensor, H: torch.Tensor, beta: float, l1: float, l2: float, gamma: float):
    """The multiplicative factor of scikit-learn's `_multiplicative_update_w` (the codes W of X ≈ W H)."""
    if beta == 2:
        numerator = X.mm(H.T)
        denominator = mm(W, mm(H, H.T))
    else:
        WHx = _wh_at_entries(X, W, H)
        if beta < 2:
            WHx = WHx.clamp_min(EPSILON)
        Xv = X.values
        if beta == 1:
            WHx = Xv / WHx
        elif beta == 0:
            WHx = Xv * WHx.pow(-2)
        else:
            WHx = Xv * WHx.pow(beta - 2)
        weighted = X.with_values(WHx) if X.is_sparse else WHx.reshape(X.shape)
        numerator = weighted @ H.T if X.is_sparse else mm(weighted, H.T)
        if beta == 1:
            denominator = H.sum(1).unsqueeze(0).expand_as(W).clone()
        else:
            parts = []
            for chunk in _wh_row_chunks(W, H):
                if beta < 1:
                    chunk = chunk.clamp_min(EPSILON)
                parts.append(mm(chunk.pow(beta - 1), H.T))
            denominator = torch.cat(parts)
    if l1 > 0:
        denominator += l1
    if l2 > 0:
        denominator += l2 * W
    denominator[denominator == 0] = EPSILON
    factor = numerator.div_(denominator)
    return factor.pow_(gamma) if gamma != 1 else factor


def fit_mu(
    X: Matrix,
    W,
    H,
    *,
    beta=2.0,
    tol,
    max_iter,
    l1_W=0.0,
    l1_H=0.0,
    l2_W=0.0,
    l2_H=0.0,
    update_H=True,
    backend="auto",
    verbose=0,
):
    """scikit-learn's `_fit_multiplicative_update` (Lee-Seung; β-divergences after Févotte & Idier 2011): per
    iteration the codes W, then the basis H; every 10 iterations stop once the error fell by less than `tol`
    relative to the error at the start. Dense float32 Frobenius runs on the fused op `nmf_mu_update`."""
    W, H = W.contiguous(), H.contiguous()
    gamma = 1.0 / (2.0 - beta) if beta < 1 else 1.0 / (beta - 1.0) if beta > 2 else 1.0
    fused = beta == 2 and not X.is_sparse and X.dtype == torch.float32
    tiny = float(np.finfo(np.float64).eps)
    error_at_init = previous = beta_divergence(X, W, H, beta, square_root=True)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if fused and update_H and (l1_W, l2_W) == (l1_H, l2_H):
            ops.nmf_mu_update(X.X, W, H, which="both", l1=l1_W, l2=l2_W, backend=backend)
        else:
            if fused:
                ops.nmf_mu_update(X.X, W, H, which="H", l1=l1_W, l2=l2_W, backend=backend)
            else:
                W.mul_(_mu_factor(X, W, H, beta, l1_W, l2_W, gamma))
            if beta < 1:
                W[W < tiny] = 0.0
            if update_H:
                if fused:
                    ops.nmf_mu_update(X.X, W, H, which="W", l1=l1_H, l2=l2_H, backend=backend)
                else:  # the basis' update is the codes' update on the transposed problem Xᵀ ≈ Hᵀ Wᵀ
                    H.mul_(_mu_factor(X.T, H.T, W.T, beta, l1_H, l2_H, gamma).T)
                if beta <= 1:
                    H[H < tiny] = 0.0
        if tol > 0 and n_iter % 10 == 0:
            error = beta_divergence(X, W, H, beta, square_root=True)
            if verbose:
                print(f"NMF mu iteration {n_iter}: error {error:.6g} (at the start: {error_at_init:.6g})")
            if (previous - error) / error_at_init < tol:
                break
            previous = error
    return W, H, n_iter
