"""blockadmm.nmf.NMF against scikit-learn's NMF(solver="mu"): same iterates from the same start, same API."""
import warnings

import numpy as np
import pytest

from blockadmm.nmf import NMF

sklearn_decomposition = pytest.importorskip("sklearn.decomposition")


def sklearn_nmf(**kw):
    return sklearn_decomposition.NMF(solver="mu", beta_loss="frobenius", **kw)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


def fit_both(X, **kw):
    ours, theirs = NMF(**kw), sklearn_nmf(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's "did not converge" for short runs
        return ours, ours.fit_transform(X), theirs, theirs.fit_transform(X)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kw", [dict(init="random", random_state=3, max_iter=60, tol=0.0),
                                dict(init="random", random_state=0, max_iter=300, tol=1e-3),
                                dict(init="random", random_state=1, max_iter=40, tol=0.0, alpha_W=1e-3, l1_ratio=0.5)])
def test_same_iterates_as_scikit_learn(digits, kw):
    X = digits[:, 1:]  # 63 features: no tile multiple
    ours, W, theirs, W_sk = fit_both(X, n_components=7, **kw)
    assert ours.n_iter_ == theirs.n_iter_
    assert rel(ours.components_, theirs.components_) < 1e-3 and rel(W, W_sk) < 1e-3
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-4)
    assert ours.components_.shape == (7, 63) and W.shape == (len(X), 7)
    assert (W >= 0).all() and (ours.components_ >= 0).all()


def test_custom_start_transform_and_inverse(digits):
    rng = np.random.default_rng(0)
    X = digits[:301]
    W0, H0 = rng.random((301, 5)).astype(np.float32), rng.random((5, 64)).astype(np.float32)
    ours = NMF(5, init="custom", max_iter=30, tol=0.0)
    theirs = sklearn_nmf(n_components=5, init="custom", max_iter=30, tol=0.0)
    W = ours.fit_transform(X, W=W0, H=H0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W_sk = theirs.fit_transform(X, W=W0.copy(), H=H0.copy())
        codes_sk = theirs.transform(digits[301:400])
    assert rel(W, W_sk) < 1e-4 and rel(ours.components_, theirs.components_) < 1e-4
    assert rel(ours.transform(digits[301:400]), codes_sk) < 1e-3
    recon = ours.inverse_transform(W)
    assert np.linalg.norm(X - recon) == pytest.approx(ours.reconstruction_err_, rel=1e-4)


def test_nndsvda_start_reaches_scikit_learn_error(digits):
    ours, _, theirs, _ = fit_both(digits, n_components=10, init="nndsvda", max_iter=100, tol=0.0)
    # scikit-learn's NNDSVD uses a randomized SVD, ours the exact one: the errors agree, not the iterates
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=0.01)


@pytest.mark.parametrize("bad, match", [
    (dict(n_components=0), "n_components must be a positive int"),
    (dict(n_components=3, init="svd"), "init must be one of"),
    (dict(n_components=3, tol=float("nan")), "tol must be a finite number"),
    (dict(n_components=3, alpha_W=-1.0), "alpha_W must be a finite number >= 0"),
])
def test_bad_settings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        NMF(**bad)


def test_bad_inputs_are_named(digits):
    with pytest.raises(ValueError, match="non-negative X"):
        NMF(3).fit(digits - 1.0)
    with pytest.raises(ValueError, match="2-D"):
        NMF(3).fit(digits[0])
    with pytest.raises(ValueError, match="NaN or inf"):
        NMF(3).fit(np.full((4, 4), np.nan))
    with pytest.raises(RuntimeError, match="not fitted"):
        NMF(3).transform(digits)
    with pytest.raises(ValueError, match="init='custom' needs W"):
        NMF(3, init="custom").fit(digits)
    fitted = NMF(3, max_iter=5).fit(digits)
    with pytest.raises(ValueError, match="63 features, the basis was fitted on 64"):
        fitted.transform(digits[:, 1:])
