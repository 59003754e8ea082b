"""fmlp.sklearn against scikit-learn's own MLP, and what scikit-learn's suite only touches.

scikit-learn's estimators are the oracle: with the same ``random_state`` both draw the same
initial weights, and with ``shuffle=False`` both train on the same batches, so sgd (every
learning-rate schedule, multi-label's sigmoid head), the reported losses and lbfgs must agree
to float64 round-off. The
rest: dtypes and the scoped x64 mode, pickling, sparse input one batch (or block) at a time,
divergence, and the stopping rule's corners.
"""

import functools
import pickle
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import neural_network
from sklearn.datasets import load_iris, make_multilabel_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

import fmlp.sklearn
from fmlp.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="module")
def multilabel():
    X, Y = make_multilabel_classification(n_samples=90, n_features=6, n_classes=3, random_state=0)
    return StandardScaler().fit_transform(X), Y


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(n_samples=120, n_features=5, n_targets=3, random_state=0)
    return X, y / y.std()


def _assert_same_fit(theirs, ours, *, rtol=1e-10, atol=1e-12):
    assert ours.n_iter_ == theirs.n_iter_
    for a, b in zip(theirs.coefs_ + theirs.intercepts_, ours.coefs_ + ours.intercepts_):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- scikit-learn's


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
def test_sgd_and_its_learning_rate_schedules_are_scikit_learns(iris, schedule):
    X, y = iris
    params = {
        "hidden_layer_sizes": (8,), "solver": "sgd", "learning_rate": schedule,
        "learning_rate_init": 0.1, "power_t": 0.3, "batch_size": 50, "shuffle": False,
        "random_state": 0, "max_iter": 60, "tol": 1e-2, "n_iter_no_change": 2,
    }  # fmt: skip
    theirs = neural_network.MLPClassifier(**params).fit(X, y)
    ours = MLPClassifier(**params).fit(X, y)
    _assert_same_fit(theirs, ours)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate)
    if schedule == "adaptive":  # divided by 5 until below 1e-6, then stopped before max_iter
        assert ours._optimizer.learning_rate < 1e-6 and ours.n_iter_ < 60
    if schedule == "invscaling":
        assert ours._optimizer.learning_rate == 0.1 / (ours.t_ + 1) ** 0.3


def test_partial_fit_continues_the_learning_rate_schedule(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="invscaling")
    for _ in range(3):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    assert clf.t_ == 3 * len(X)
    assert clf._optimizer.learning_rate == clf.learning_rate_init / (clf.t_ + 1) ** 0.5
    clf.fit(X, y)  # a fit starts a fresh optimizer, at learning_rate_init
    assert clf.n_iter_ == len(clf.loss_curve_)


def test_multi_output_squared_error_is_averaged_over_outputs_as_in_scikit_learn(regression):
    X, y = regression
    params = {
        "hidden_layer_sizes": (8,), "solver": "sgd", "learning_rate_init": 0.01,
        "batch_size": 120, "shuffle": False, "random_state": 0, "max_iter": 300, "tol": 1e-3,
    }  # fmt: skip
    theirs = neural_network.MLPRegressor(**params).fit(X, y)
    ours = MLPRegressor(**params).fit(X, y)
    assert ours.n_iter_ < 300  # stopped by tol on the averaged loss, where scikit-learn stops
    _assert_same_fit(theirs, ours)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert ours.loss_ == ours.loss_curve_[-1]


def test_poisson_loss_is_scikit_learns():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(100, 3))
    y = rng.poisson(np.exp(X @ [1.0, -1.0, 0.5]))
    params = {
        "loss": "poisson", "hidden_layer_sizes": (4,), "solver": "sgd", "batch_size": 25,
        "learning_rate_init": 0.01, "shuffle": False, "random_state": 0, "max_iter": 30,
    }  # fmt: skip
    theirs = neural_network.MLPRegressor(**params).fit(X, y)
    ours = MLPRegressor(**params).fit(X, y)
    _assert_same_fit(theirs, ours)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    assert ours.out_activation_ == "exp" and np.all(ours.predict(X) > 0)  # rates
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-12)
    with pytest.raises(ValueError, match="loss='poisson' needs non-negative targets"):
        MLPRegressor(loss="poisson").fit(X, -y)


def test_multilabel_sgd_is_scikit_learns(multilabel):
    X, Y = multilabel
    params = {
        "hidden_layer_sizes": (8,), "activation": "logistic", "solver": "sgd",
        "learning_rate_init": 0.1, "batch_size": 30, "shuffle": False, "random_state": 0,
        "max_iter": 40,
    }  # fmt: skip
    theirs = neural_network.MLPClassifier(**params).fit(X, Y)
    ours = MLPClassifier(**params).fit(X, Y)
    _assert_same_fit(theirs, ours)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    assert ours.out_activation_ == theirs.out_activation_ == "logistic"


@pytest.mark.parametrize("problem", ["classification", "multi-label", "multi-output regression"])
def test_lbfgs_is_scikit_learns(iris, multilabel, regression, problem):
    if problem == "classification":
        (X, y), cls, ours_cls = iris, neural_network.MLPClassifier, MLPClassifier
    elif problem == "multi-label":
        (X, y), cls, ours_cls = multilabel, neural_network.MLPClassifier, MLPClassifier
    else:
        (X, y), cls, ours_cls = regression, neural_network.MLPRegressor, MLPRegressor
    params = {"hidden_layer_sizes": (8,), "solver": "lbfgs", "random_state": 0, "max_iter": 40}
    theirs = cls(**params).fit(X, y)
    ours = ours_cls(**params).fit(X, y)
    _assert_same_fit(theirs, ours, rtol=1e-6, atol=1e-8)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    assert not hasattr(ours, "loss_curve_")  # as scikit-learn's lbfgs


def test_lbfgs_limits_warnings_and_verbose_output(iris, capsys):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_fun=5, verbose=True)
    with pytest.warns(ConvergenceWarning, match=r"lbfgs failed to converge .*max_fun") as record:
        clf.fit(X, y)
    assert record[0].filename == __file__  # the warning points at the caller of fit
    assert clf.n_iter_ <= 5
    assert "Iteration 1, loss = " in capsys.readouterr().out
    assert not hasattr(clf, "partial_fit")
    with pytest.raises(AttributeError, match="has no attribute 'partial_fit'") as error:
        clf.partial_fit(X, y)
    assert "only available for the stochastic solvers" in str(error.value.__cause__)
    clf.set_params(max_fun=15000, tol=1e-2, verbose=False, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert clf.fit(X, y).score(X, y) >= 0.9  # continues from the first fit's weights


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("x64", [False, True], ids=["x64 off", "x64 on"])
def test_parameters_take_the_dtype_of_X_and_x64_stays_scoped(iris, x64):
    X, y = iris
    with jax.enable_x64(x64):
        for dtype in (np.float32, np.float64):
            reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=5).fit(X.astype(dtype), y)
            assert jax.config.jax_enable_x64 == x64  # the fit's x64 mode did not leak
            assert {a.dtype for a in reg.coefs_ + reg.intercepts_} == {np.dtype(dtype)}
            assert reg.predict(X.astype(dtype)).dtype == dtype
            assert jax.config.jax_enable_x64 == x64
            assert reg.predict(X.astype(np.float64)).dtype == np.float64
        assert jnp.zeros(()).dtype == (jnp.float64 if x64 else jnp.float32)


def test_a_fitted_float64_model_pickles_and_trains_on_without_x64(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    blob = pickle.dumps(clf)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "float64 ... truncated to float32" from JAX
        loaded = pickle.loads(blob)
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        loaded.partial_fit(X, y)
        assert loaded.coefs_[0].dtype == np.float64 and loaded.n_iter_ == 6


# ----------------------------------------------------------------------------- sparse input


def test_sparse_input_trains_one_densified_batch_at_a_time(monkeypatch, iris):
    X, y = iris
    X = np.where(np.abs(X) < 0.5, 0.0, X)
    densified = []

    def spy(x, rows):
        densified.append(len(rows))
        return x[rows].toarray()

    monkeypatch.setattr(fmlp.sklearn, "_densify_rows", spy)
    fresh_cache = functools.lru_cache(fmlp.sklearn._compiled_epoch.__wrapped__)
    monkeypatch.setattr(fmlp.sklearn, "_compiled_epoch", fresh_cache)
    params = {"hidden_layer_sizes": (8,), "batch_size": 32, "max_iter": 4, "random_state": 0}
    dense = MLPClassifier(**params).fit(X, y)
    for container in (sp.csr_matrix, sp.csr_array, sp.csc_array):
        densified.clear()
        sparse = MLPClassifier(**params).fit(container(X), y)
        assert densified == [32] * 4 * 5  # 4 epochs of 5 batches, the last one padded
        np.testing.assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-12)
        _assert_same_fit(dense, sparse)
        np.testing.assert_array_equal(sparse.predict_proba(container(X)), dense.predict_proba(X))


def test_lbfgs_and_prediction_densify_sparse_input_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    X = sp.random_array((600, 20), density=0.2, format="csr", rng=rng)
    y = (X @ rng.normal(size=20) > 0).astype(int)
    params = {"hidden_layer_sizes": (6,), "solver": "lbfgs", "max_iter": 15, "random_state": 0}
    dense = MLPClassifier(**params).fit(X.toarray(), y)
    monkeypatch.setattr(fmlp.sklearn, "_DENSE_BLOCK_BYTES", 1)  # blocks of 256 rows: 3 of them
    sparse = MLPClassifier(**params).fit(X, y)
    _assert_same_fit(dense, sparse, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        sparse.predict_proba(X), sparse.predict_proba(X.toarray()), rtol=1e-12
    )


# ----------------------------------------------------------------------------- stopping


def test_a_diverging_fit_goes_on_and_is_refused_at_the_end(iris):
    X, y = iris
    params = {"hidden_layer_sizes": (8,), "activation": "identity", "solver": "sgd"}
    reg = MLPRegressor(**params, learning_rate_init=10.0, max_iter=20, random_state=0)
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        reg.fit(X * 100, y)
    assert len(reg.loss_curve_) == 20 and not np.isfinite(reg.loss_curve_[-1])
    reg.set_params(early_stopping=True).fit(X * 100, y)  # keeps the best, finite, epoch
    assert np.isnan(reg.validation_scores_[-1]) and np.all(np.isfinite(reg.coefs_[0]))


def test_n_iter_no_change_inf_runs_every_epoch(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(4,), tol=1e9, n_iter_no_change=np.inf, max_iter=15)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(15\)"):
        clf.fit(X, y)
    assert clf.n_iter_ == 15 and clf._no_improvement_count == 14


def test_warm_start_refuses_other_classes_as_scikit_learn_does(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match=r"warm_start can only .* got \[0 1 2\], `y` has \[0 1\]"):
        clf.fit(X[y < 2], y[y < 2])
    clf.fit(X[::-1], y[::-1])  # the same classes in another order
