"""scikit-learn's own NMF tests (sklearn/decomposition/tests/test_nmf.py, from the installed scikit-learn) run
against blockadmm.nmf.NMF, for the solvers and losses it offers: "cd" and "mu", Frobenius and every β.

Each test of that file is called with our estimator in place of scikit-learn's `NMF` (the module's name patched;
the parametrizations over `Estimator` narrowed to ours). Where a test reaches scikit-learn's private helpers
(`_initialize_nmf`, `_beta_divergence`) or the function `non_negative_factorization`, the `PATCH` column names
which are replaced by the same computation on our estimator, so the test checks our starts, losses and solvers;
tests without it compare ours against scikit-learn's (e.g. `non_negative_factorization` against our class).
"""

import types
import warnings

import numpy as np
import pytest

sk = pytest.importorskip("sklearn.decomposition.tests.test_nmf")

import torch  # noqa: E402
from sklearn.decomposition import NMF as SklearnNMF  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils import check_array  # noqa: E402
from sklearn.utils.validation import check_non_negative  # noqa: E402

from blockadmm import nmf_estimator  # noqa: E402
from blockadmm.nmf import NMF  # noqa: E402
from blockadmm.nmf_solver import beta_divergence  # noqa: E402


def _as_matrix(X):
    return nmf_estimator._as_matrix(X, torch.device("cpu"))


def our_initialize_nmf(X, n_components, init=None, eps=1e-6, random_state=None):
    """scikit-learn's `_initialize_nmf`, computed by our estimator's start."""
    X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
    check_non_negative(X, "NMF initialization")
    W, H = NMF(n_components, init=init, random_state=random_state)._start(X, _as_matrix(X), None, None, True)
    return W.numpy(), H.numpy()


def our_beta_divergence(X, W, H, beta, square_root=False):
    beta = nmf_estimator.BETA_LOSSES.get(beta, beta)
    X = X if hasattr(X, "tocsr") else np.atleast_2d(X)
    return beta_divergence(
        _as_matrix(X),
        torch.as_tensor(np.atleast_2d(W)),
        torch.as_tensor(np.atleast_2d(H)),
        float(beta),
        square_root=square_root,
    )


def our_non_negative_factorization(X, W=None, H=None, n_components="auto", *, update_H=True, **params):
    """scikit-learn's `non_negative_factorization`, on our estimator (the same steps as scikit-learn's function)."""
    est = NMF(n_components=n_components, **params)
    est._validate_params()
    X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
    check_non_negative(X, "NMF (input X)")
    W, H, n_iter, _ = est._fit(X, W, H, update_H=update_H)
    return W.numpy(), H.numpy(), n_iter


INTERNALS, NNF = "internals", "non_negative_factorization"
# test -> what else is swapped for ours beyond NMF
APPLICABLE = {
    "test_convergence_warning": (),
    "test_initialize_nn_output": (INTERNALS,),
    "test_parameter_checking": (INTERNALS,),
    "test_initialize_close": (INTERNALS,),
    "test_initialize_variants": (INTERNALS,),
    "test_nmf_fit_nn_output": (),
    "test_nmf_fit_close": (),
    "test_nmf_true_reconstruction": (),  # its MiniBatchNMF half stays scikit-learn's
    "test_nmf_transform": (),
    "test_nmf_transform_custom_init": (),
    "test_nmf_inverse_transform": (),
    "test_n_components_greater_n_features": (),
    "test_nmf_sparse_input": (),
    "test_nmf_sparse_transform": (),
    "test_non_negative_factorization_consistency": (),  # scikit-learn's function against our class, to 1e-7
    "test_non_negative_factorization_checking": (NNF,),
    "test_beta_divergence": (INTERNALS,),
    "test_nmf_multiplicative_update_sparse": (NNF, INTERNALS),
    "test_nmf_negative_beta_loss": (NNF,),
    "test_nmf_regularization": (),
    "test_nmf_decreasing": (NNF, INTERNALS),
    "test_nmf_underflow": (INTERNALS,),
    "test_nmf_dtype_match": (),
    "test_nmf_float32_float64_consistency": (),
    "test_nmf_custom_init_dtype_error": (NNF,),
    "test_nmf_minibatchnmf_equivalence": (),  # our mu against scikit-learn's MiniBatchNMF, every β
    "test_feature_names_out": (),
    "test_nmf_n_components_auto": (),
    "test_nmf_non_negative_factorization_n_components_auto": (NNF,),
    "test_nmf_n_components_auto_no_h_update": (NNF,),
    "test_nmf_w_h_not_used_warning": (NNF,),
    "test_nmf_custom_init_shape_error": (),
    "test_nmf_smoke": (),
}
NOT_APPLICABLE = {
    "test_special_sparse_dot": "tests scikit-learn's private helper `_special_sparse_dot`, which has no counterpart "
    "here (W H at a sparse X's entries is computed inside our solver)",
    "test_minibatch_nmf_transform": "MiniBatchNMF: blockadmm offers NMF only",
    "test_mbnmf_inverse_transform": "MiniBatchNMF: blockadmm offers NMF only",
    "test_minibatch_nmf_negative_beta_loss": "MiniBatchNMF: blockadmm offers NMF only",
    "test_minibatch_nmf_partial_fit": "MiniBatchNMF: blockadmm offers NMF only",
    "test_minibatch_nmf_verbose": "MiniBatchNMF: blockadmm offers NMF only",
}


def _cases():
    """(test name, its keyword arguments) for every parametrization scikit-learn gives, `Estimator` narrowed to
    NMF (its MiniBatchNMF cases dropped) and swapped for ours."""
    for name in APPLICABLE:
        combos = [{}]
        for mark in getattr(getattr(sk, name), "pytestmark", []):
            if mark.name != "parametrize":
                continue
            names = mark.args[0]
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            values = [v.values if hasattr(v, "values") else v for v in mark.args[1]]
            values = [tuple(v) if len(names) > 1 else (v,) for v in values]
            combos = [{**c, **dict(zip(names, v))} for c in combos for v in values]
        for c in combos:
            if c.get("Estimator", SklearnNMF) is not SklearnNMF:
                continue
            if "Estimator" in c:
                c["Estimator"] = NMF
            label = "-".join(f"{v.__name__ if isinstance(v, type) else v}" for k, v in c.items() if k != "Estimator")
            yield pytest.param(name, c, id=f"{name}[{label}]" if label else name)


def test_every_scikit_learn_nmf_test_is_listed():
    tests = {n for n in dir(sk) if n.startswith("test_")}
    assert tests == set(APPLICABLE) | set(NOT_APPLICABLE), tests ^ (set(APPLICABLE) | set(NOT_APPLICABLE))


@pytest.mark.parametrize("name, kwargs", list(_cases()))
def test_scikit_learn_nmf_suite(name, kwargs, monkeypatch):
    monkeypatch.setattr(sk, "NMF", NMF)
    if NNF in APPLICABLE[name]:
        monkeypatch.setattr(sk, "non_negative_factorization", our_non_negative_factorization)
    if INTERNALS in APPLICABLE[name]:
        monkeypatch.setattr(
            sk, "nmf", types.SimpleNamespace(_initialize_nmf=our_initialize_nmf, _beta_divergence=our_beta_divergence)
        )
    with warnings.catch_warnings():
        # what scikit-learn's file filters per test: short runs' ConvergenceWarning, 'mu' with an nndsvd start
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=r"The multiplicative update \('mu'\) solver cannot update zeros")
        getattr(sk, name)(**kwargs)

