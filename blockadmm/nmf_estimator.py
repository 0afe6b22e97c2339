"""`NMF`: scikit-learn's `NMF` estimator on blockadmm's fused ops.

A scikit-learn estimator by scikit-learn's rules (parameters stored as given and validated in `fit`, tags,
`set_output`, feature names), with scikit-learn's parameters, starts and stopping rules, so that from the same
start it takes scikit-learn's steps: `solver="cd"` (the default) is coordinate descent on the Frobenius loss, its
passes running on `ops.nmf_hals_update`; `solver="mu"` the multiplicative updates for the β-divergences, dense
float32 Frobenius on `ops.nmf_mu_update`. X may be dense or sparse (scipy.sparse, torch sparse): sparse X is
never densified. float64 X is fitted in float64, float32 in float32. Only this module needs scikit-learn;
`import blockadmm` does not.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import torch

try:
    import scipy.sparse as sp
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_array, check_random_state
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.extmath import randomized_svd
    from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data
except ImportError as err:  # one line, naming the fix
    raise ImportError(
        f"blockadmm.nmf.NMF is a scikit-learn estimator and needs scikit-learn >= 1.6 ({err}): "
        f'pip install "blockadmm[sklearn]"'
    ) from None

from . import nmf_solver
from .nmf_solver import Matrix

__all__ = ["NMF"]

BETA_LOSSES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization X ≈ W H (W: the codes `transform` returns; H: `components_`).

    The parameters are scikit-learn's `sklearn.decomposition.NMF` ones, with its defaults and meanings
    (n_components, init, solver, beta_loss, tol, max_iter, random_state, alpha_W, alpha_H, l1_ratio, verbose,
    shuffle); two more: `backend` (the ops' backend: "auto", "torch", "cpu", "triton", "cuda") and `device`
    (where the factors live, e.g. "cuda"; None: the CPU). Results come back as numpy arrays in X's dtype.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None, StrOptions({"auto"})],
        "init": [StrOptions({"random", "nndsvd", "nndsvda", "nndsvdar", "custom"}), None],
        "solver": [StrOptions({"cd", "mu"})],
        "beta_loss": [StrOptions(set(BETA_LOSSES)), Real],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "alpha_W": [Interval(Real, 0, None, closed="left")],
        "alpha_H": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "verbose": ["verbose"],
        "shuffle": ["boolean"],
        "backend": [StrOptions({"auto", "torch", "cpu", "triton", "cuda"})],
        "device": [str, torch.device, None],
    }

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        solver="cd",
        beta_loss="frobenius",
        tol=1e-4,
        max_iter=200,
        random_state=None,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        verbose=0,
        shuffle=False,
        backend="auto",
        device=None,
    ):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.shuffle = shuffle
        self.backend = backend
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ------------------------------------------------------------------ scikit-learn API
    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, W=None, H=None):
        """Learn the basis `components_` from X and return the codes W of X. W, H: the start when init="custom"."""
        X = validate_data(self, _from_torch(X), accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
        check_non_negative(X, "NMF (input X)")
        W, H, n_iter, Xm = self._fit(X, W, H, update_H=True)
        self.reconstruction_err_ = nmf_solver.beta_divergence(Xm, W, H, self._beta, square_root=True)
        self.n_components_ = H.shape[0]
        self.components_ = H.cpu().numpy()
        self.n_iter_ = n_iter
        return W.cpu().numpy()

    def fit(self, X, y=None, **params):
        """Learn the basis `components_` from X; params go to fit_transform (W, H with init="custom")."""
        self.fit_transform(X, **params)
        return self

    def transform(self, X):
        """The codes W of X under the fitted basis (which stays fixed)."""
        check_is_fitted(self)
        X = validate_data(
            self,
            _from_torch(X),
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            reset=False,
            ensure_non_negative=True,
        )
        W, *_ = self._fit(X, None, self.components_.astype(X.dtype, copy=False), update_H=False)
        return W.cpu().numpy()

    def inverse_transform(self, X):
        """X ≈ W H from codes W (n_samples, n_components)."""
        check_is_fitted(self)
        return _from_torch(X) @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    # ------------------------------------------------------------------ fitting
    def _fit(self, X, W, H, *, update_H: bool):
        """Check the settings, start (or check the start), run the solver. Returns (W, H, n_iter, X as Matrix)."""
        self._beta = float(BETA_LOSSES.get(self.beta_loss, self.beta_loss))
        if self.solver == "cd" and self._beta != 2:
            raise ValueError(
                f"Invalid beta_loss parameter: solver {self.solver!r} does not handle beta_loss = "
                f"{self.beta_loss!r}; coordinate descent fits the Frobenius loss: use solver='mu' for "
                f"the other β-divergences"
            )
        if self.solver == "mu" and self.init == "nndsvd":
            warnings.warn(
                "The multiplicative update ('mu') solver cannot update zeros present in the "
                "initialization, and so leads to poorer results when used jointly with init='nndsvd'. "
                "You may try init='nndsvda' or init='nndsvdar' instead.",
                UserWarning,
                stacklevel=3,
            )
        if self._beta <= 0 and X.min() == 0:
            raise ValueError(
                "When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add small "
                "values to X, or use a positive beta_loss."
            )
        device = torch.device(self.device) if self.device is not None else torch.device("cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"NMF(device={self.device!r}) but torch sees no CUDA device: use device=None (the CPU)")
        Xm = _as_matrix(X, device)
        W, H = self._start(X, Xm, W, H, update_H)
        W, H = W.to(device), H.to(device)
        self._n_components = H.shape[0]  # the resolved count, named as scikit-learn names it
        n_samples, n_features = X.shape
        alpha_H = self.alpha_W if self.alpha_H == "same" else self.alpha_H
        reg = dict(
            l1_W=n_features * self.alpha_W * self.l1_ratio,
            l2_W=n_features * self.alpha_W * (1 - self.l1_ratio),
            l1_H=n_samples * alpha_H * self.l1_ratio,
            l2_H=n_samples * alpha_H * (1 - self.l1_ratio),
        )
        common = dict(
            tol=self.tol, max_iter=self.max_iter, update_H=update_H, backend=self.backend, verbose=self.verbose, **reg
        )
        if self.solver == "cd":
            W, H, n_iter = nmf_solver.fit_cd(
                Xm, W, H, shuffle=self.shuffle, rng=check_random_state(self.random_state), **common
            )
        else:
            W, H, n_iter = nmf_solver.fit_mu(Xm, W, H, beta=self._beta, **common)
        if n_iter == self.max_iter and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to improve convergence.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return W, H, n_iter, Xm

    def _start(self, X, Xm: Matrix, W, H, update_H: bool):
        """scikit-learn's `_check_w_h`: the custom start checked, the transform start, or an init computed."""
        n_samples, n_features = X.shape
        k = X.shape[1] if self.n_components is None else self.n_components
        dtype = _TORCH_DTYPES[X.dtype]
        if self.init == "custom" and update_H:
            H = _check_start(H, (k, n_features), "NMF (input H)")
            W = _check_start(W, (n_samples, k), "NMF (input W)")
            if H.dtype != X.dtype or W.dtype != X.dtype:
                raise TypeError(
                    f"H and W should have the same dtype as X. Got H.dtype = {H.dtype} and "
                    f"W.dtype = {W.dtype}; X is {X.dtype}: pass W and H as X.dtype arrays"
                )
            return torch.tensor(W), torch.tensor(H)
        if not update_H:  # transform: the basis H is fixed, the codes start at scikit-learn's start
            if W is not None:
                warnings.warn("When update_H=False, the provided initial W is not used.", RuntimeWarning, stacklevel=4)
            H = _check_start(H, ("auto", n_features), "NMF (input H)")
            if H.dtype != X.dtype:
                raise TypeError(f"H should have the same dtype as X. Got H.dtype = {H.dtype}; X is {X.dtype}")
            H, k = torch.tensor(H), H.shape[0]
            if self.solver == "mu":
                return torch.full((n_samples, k), float(np.sqrt(Xm.mean() / k)), dtype=dtype), H
            return torch.zeros((n_samples, k), dtype=dtype), H
        if W is not None or H is not None:
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set  init='custom' to use them as initialization.",
                RuntimeWarning,
                stacklevel=4,
            )
        if k == "auto":
            k = n_features
        init = self.init
        if init not in (None, "random") and k > min(n_samples, n_features):
            raise ValueError(
                f"init = '{init}' can only be used when n_components <= min(n_samples, n_features) "
                f"(here n_components={k}, X is {n_samples}×{n_features}): lower n_components or "
                f"use init='random'"
            )
        if init is None:
            init = "nndsvda" if k <= min(n_samples, n_features) else "random"

        def svd(_, rank):
            U, S, Vt = randomized_svd(X, rank, random_state=self.random_state)
            return (torch.as_tensor(np.asarray(a), dtype=dtype) for a in (U, S, Vt))

        return nmf_solver.initialize(Xm, k, init, lambda: check_random_state(self.random_state), svd=svd)


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _from_torch(X):
    """torch tensors (dense or sparse) as numpy / scipy.sparse CSR, without densifying; anything else as is."""
    if not isinstance(X, torch.Tensor):
        return X
    X = X.detach().cpu()
    if X.layout == torch.strided:
        return X.numpy()
    if X.dim() != 2:
        raise ValueError(
            f"Reshape your data: NMF takes a 2-D (n_samples, n_features) matrix, got a sparse tensor "
            f"of shape {tuple(X.shape)}"
        )
    X = X.to_sparse_csr()
    return sp.csr_matrix((X.values().numpy(), X.col_indices().numpy(), X.crow_indices().numpy()), shape=X.shape)


def _as_matrix(X, device: torch.device) -> Matrix:
    """The validated X (numpy or scipy CSR/CSC) as a torch Matrix on `device`, sharing memory where it can."""
    with warnings.catch_warnings():
        # torch warns on read-only arrays (X is never written) and on its "beta" sparse CSR
        warnings.simplefilter("ignore", UserWarning)
        if sp.issparse(X):
            X = X.tocsr()
            X.sum_duplicates()
            t = torch.sparse_csr_tensor(
                torch.from_numpy(X.indptr), torch.from_numpy(X.indices), torch.from_numpy(X.data), X.shape
            )
        else:
            t = torch.from_numpy(np.ascontiguousarray(X))
    return Matrix(t.to(device))


def _check_start(A, shape, whom):
    """scikit-learn's `_check_init`: a 2-D non-negative array of `shape` ("auto" skips a dimension), not all 0."""
    A = check_array(_from_torch(A))
    for axis, name in ((0, "first"), (1, "second")):
        if shape[axis] != "auto" and A.shape[axis] != shape[axis]:
            raise ValueError(
                f"Array with wrong {name} dimension passed to {whom}. Expected {shape[axis]}, but got {A.shape[axis]}."
            )
    check_non_negative(A, whom)
    if np.max(A) == 0:
        raise ValueError(f"Array passed to {whom} is full of zeros.")
    return A
