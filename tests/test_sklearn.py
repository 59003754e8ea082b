"""fmlp.sklearn: scikit-learn's estimator checks, learning, sample weights, and the engine.

Every fit is small. Datasets of up to 200 rows are trained full-batch on a row count padded to
a power of two, so most fits here share a handful of compiled epochs; the estimator checks
use ``hidden_layer_sizes=(16,)`` and ``max_iter=100`` (scikit-learn's own MLP checks use 100
epochs of a 100-unit net).
"""

import doctest
import functools
import math
import warnings

import jax
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.special
from sklearn.base import clone
from sklearn.datasets import load_digits, load_iris, make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
from sklearn.metrics import hamming_loss
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import fmlp
import fmlp.sklearn
from fmlp import nn
from fmlp.sklearn import MLPClassifier, MLPRegressor

SMALL = {"hidden_layer_sizes": (16,), "max_iter": 100, "learning_rate_init": 1e-2}
FAST = {  # converges on iris-sized problems (one full-batch Adam step per epoch) in < 100 epochs
    "hidden_layer_sizes": (16,),
    "learning_rate_init": 0.05,
    "max_iter": 500,
    "tol": 1e-3,
    "random_state": 0,
}


# scikit-learn's own test_common runs these checks ignoring ConvergenceWarning: several checks
# fit with few epochs on purpose, and the warning is the documented behaviour there.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([MLPClassifier(**SMALL), MLPRegressor(**SMALL)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_tags():
    clf_tags, reg_tags = MLPClassifier().__sklearn_tags__(), MLPRegressor().__sklearn_tags__()
    assert clf_tags.estimator_type == "classifier" and reg_tags.estimator_type == "regressor"
    assert clf_tags.classifier_tags.multi_label
    assert not clf_tags.target_tags.multi_output
    assert reg_tags.target_tags.multi_output and reg_tags.target_tags.single_output
    assert clf_tags.input_tags.sparse and reg_tags.input_tags.sparse


def test_module_doctest():
    result = doctest.testmod(fmlp.sklearn, verbose=False, report=False)
    assert result.attempted > 0
    assert result.failed == 0


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


@pytest.fixture(scope="module")
def digits_model(digits):
    X_train, _, y_train, _ = digits
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0)
    return clf.fit(X_train, y_train)


def test_digits_accuracy(digits, digits_model):
    _, X_test, _, y_test = digits
    clf = digits_model
    assert clf.score(X_test, y_test) >= 0.9
    assert clf.n_iter_ < clf.max_iter  # stopped by the tol rule, without a ConvergenceWarning
    assert clf.n_iter_ == len(clf.loss_curve_)
    assert clf.loss_curve_[-1] < 0.1 * clf.loss_curve_[0]
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.t_ == clf.n_iter_ * len(digits[0])
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert clf.classes_.tolist() == list(range(10))
    assert (clf.n_features_in_, clf.n_outputs_, clf.n_layers_) == (64, 10, 3)
    assert clf.out_activation_ == "softmax"
    assert [layer["W"].shape for layer in clf.params_] == [(64, 64), (64, 10)]
    assert all(layer["W"].dtype == np.float64 for layer in clf.params_)  # X is float64
    assert [c.shape for c in clf.coefs_] == [(64, 64), (64, 10)]
    assert [b.shape for b in clf.intercepts_] == [(64,), (10,)]


def test_predict_proba_rows_sum_to_one(digits, digits_model):
    _, X_test, _, _ = digits
    proba = digits_model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(
        digits_model.classes_[proba.argmax(axis=1)], digits_model.predict(X_test)
    )
    np.testing.assert_allclose(
        np.exp(digits_model.predict_log_proba(X_test[:5])), proba[:5], rtol=1e-6
    )


def test_prediction_does_not_depend_on_the_other_rows(digits, digits_model):
    _, X_test, _, _ = digits
    full = digits_model.predict_proba(X_test)
    np.testing.assert_array_equal(digits_model.predict_proba(X_test[:1]), full[:1])
    np.testing.assert_array_equal(digits_model.predict_proba(X_test[7:300]), full[7:300])
    np.testing.assert_array_equal(digits_model.predict_proba(X_test[::-1]), full[::-1])


def _regression_data(n=400, outputs=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, 3))
    y = np.stack(
        [np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2], np.cos(X[:, 1]) - 0.3 * X[:, 0]][:outputs],
        axis=1,
    )
    return X, y


def test_regression_r2():
    X, y = _regression_data(n=260)
    X_train, X_test, y_train, y_test = train_test_split(X, y[:, 0], test_size=60, random_state=0)
    reg = MLPRegressor(**{**FAST, "hidden_layer_sizes": (32,), "tol": 1e-4}).fit(X_train, y_train)
    assert reg.score(X_test, y_test) >= 0.9
    assert reg.predict(X_test).shape == (len(X_test),)
    assert reg.out_activation_ == "identity" and reg.n_outputs_ == 1


def test_multi_output_regression():
    X, y = _regression_data(n=200, outputs=2)
    reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=1e-2, max_iter=300)
    reg.set_params(random_state=0, tol=1e-3).fit(X, y)
    assert reg.predict(X).shape == (200, 2)
    assert reg.n_outputs_ == 2
    assert reg.score(X, y) >= 0.8
    column = MLPRegressor(**SMALL, random_state=0, tol=1.0).fit(X, y[:, :1])
    assert column.predict(X).shape == (200, 1)  # a 2-D target of one column stays 2-D


def test_string_labels_round_trip():
    X, y_int = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    names = np.array(["setosa", "versicolor", "virginica"])
    clf = MLPClassifier(**FAST).fit(X, names[y_int])
    assert clf.classes_.tolist() == names.tolist()
    pred = clf.predict(X)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert clf.score(X, names[y_int]) >= 0.9

    binary = y_int[y_int < 2]
    labels = np.array(["no", "yes"])[binary]
    clf = MLPClassifier(**FAST).fit(X[y_int < 2], labels)
    assert clf.predict_proba(X[:3]).shape == (3, 2)  # softmax over K = 2 units
    assert clf.n_outputs_ == 2 and clf.out_activation_ == "softmax"
    assert clf.score(X[y_int < 2], labels) == 1.0


def test_bad_classification_targets_are_named():
    X = np.random.default_rng(0).normal(size=(20, 3))
    Y = np.eye(2, dtype=int)[np.arange(20) % 2]
    for bad in (Y * [1, 2], 2 * Y):  # multiclass-multioutput; 0s and 2s
        with pytest.raises(ValueError, match=r"indicator matrix of 0s and 1s .* got y of shape"):
            MLPClassifier(**SMALL).fit(X, bad)
    with pytest.raises(ValueError, match="Unknown label type: continuous-multioutput"):
        MLPClassifier(**SMALL).fit(X, Y * 0.5)
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier(**SMALL).fit(X, np.linspace(0, 1, 20))
    with pytest.warns(DataConversionWarning):  # one column is one label per sample
        clf = MLPClassifier(**SMALL, random_state=0, tol=1.0).fit(X, Y[:, :1])
    assert clf.predict(X).shape == (20,) and clf.out_activation_ == "softmax"


# ----------------------------------------------------------------------------- multi-label


@pytest.fixture(scope="module")
def multilabel():
    X, Y = make_multilabel_classification(
        n_samples=400, n_features=20, n_classes=3, n_labels=1, random_state=0
    )
    X = StandardScaler().fit_transform(X)
    return train_test_split(X, Y, random_state=0)


MULTILABEL = {
    "hidden_layer_sizes": (16,),
    "alpha": 1.0,
    "learning_rate_init": 0.01,
    "max_iter": 300,
    "tol": 1e-3,
    "random_state": 0,
}


@pytest.fixture(scope="module")
def multilabel_model(multilabel):
    X_train, _, Y_train, _ = multilabel
    return MLPClassifier(**MULTILABEL).fit(X_train, Y_train)


def test_multilabel_fit_learns(multilabel, multilabel_model):
    X_train, X_test, Y_train, Y_test = multilabel
    clf = multilabel_model
    # Subset accuracy (a row counts when all 3 labels are right). On this test set, predicting
    # each label's majority gets 0.27, one logistic regression per label 0.71.
    assert clf.score(X_train, Y_train) >= 0.9
    assert clf.score(X_test, Y_test) >= 0.65
    assert clf.n_iter_ < clf.max_iter
    assert clf.classes_.tolist() == [0, 1, 2]
    assert (clf.n_outputs_, clf.out_activation_) == (3, "logistic")
    pred = clf.predict(X_test)
    assert pred.shape == Y_test.shape and pred.dtype == Y_test.dtype
    assert set(np.unique(pred)) <= {0, 1}


def test_multilabel_predict_proba_gives_each_labels_probability(multilabel, multilabel_model):
    _, X_test, _, Y_test = multilabel
    clf = multilabel_model
    proba = clf.predict_proba(X_test)
    assert proba.shape == Y_test.shape and proba.dtype == np.float64
    assert np.all((proba >= 0) & (proba <= 1))
    assert not np.allclose(proba.sum(axis=1), 1.0)  # a sigmoid per label, not a softmax
    np.testing.assert_array_equal(clf.predict(X_test), proba > 0.5)
    np.testing.assert_allclose(clf.predict_log_proba(X_test), np.log(proba), rtol=1e-12)


def test_multilabel_probabilities_are_the_nets(multilabel, multilabel_model):
    _, X_test, _, _ = multilabel
    clf = multilabel_model
    params = jax.tree.map(jax.numpy.asarray, clf.params_)
    x = jax.numpy.asarray(X_test)
    net = nn.mlp([20, 16, 3], activation="relu", loss="binary_cross_entropy")
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba, net.apply(params, x), rtol=1e-10, atol=1e-14)
    (W1, b1), (W2, b2) = ((layer["W"], layer["b"][None, :]) for layer in params)
    oracle = jax.nn.sigmoid(jax.nn.relu(x @ W1 + b1) @ W2 + b2)  # plain JAX
    np.testing.assert_allclose(proba, oracle, rtol=1e-10, atol=1e-14)


def test_multilabel_loss_is_the_summed_binary_cross_entropy(multilabel):
    X, _, Y, _ = multilabel
    alpha = 0.1
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", alpha=alpha, max_iter=30)
    with pytest.warns(ConvergenceWarning):
        clf.set_params(random_state=0).fit(X, Y)
    p = clf.predict_proba(X)
    log_likelihood = scipy.special.xlogy(Y, p) + scipy.special.xlogy(1 - Y, 1 - p)
    penalty = alpha / 2 * sum(np.sum(W**2) for W in clf.coefs_) / len(X)
    # scikit-learn's: the mean over the rows of the sum over the labels, plus the L2 penalty.
    assert clf.loss_ == pytest.approx(-log_likelihood.mean(axis=0).sum() + penalty, rel=1e-9)


def test_multilabel_targets_in_any_form_fit_the_same(multilabel):
    X, _, Y, _ = multilabel
    X = X.astype(np.float32)
    clf = MLPClassifier(**{**MULTILABEL, "max_iter": 20, "tol": 1e9})
    pred = clf.fit(X, Y).predict(X)
    assert clf.params_[0]["W"].dtype == clf.predict_proba(X).dtype == np.float32
    for form in (Y.astype(bool), Y.astype(np.float64), Y.tolist(), sp.csr_array(Y)):
        np.testing.assert_array_equal(clone(clf).fit(X, form).predict(X), pred)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_multilabel_partial_fit_and_warm_start(multilabel):
    X, _, Y, _ = multilabel
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, Y)
    with pytest.raises(ValueError, match=r"classes must be the label indices np.arange\(3\)"):
        clf.partial_fit(X, Y, classes=[0, 1])
    clf.partial_fit(X, Y, classes=[0, 1, 2]).partial_fit(X, Y)
    assert (clf.n_iter_, clf.t_, clf.classes_.tolist()) == (2, 2 * len(X), [0, 1, 2])
    with pytest.raises(ValueError, match=r"y has 2 labels \(columns\), but the model .* on 3"):
        clf.partial_fit(X, Y[:, :2])
    with pytest.raises(ValueError, match="y is one label per sample, but the model was fitted"):
        clf.partial_fit(X, Y[:, 0])  # labels among classes_, but not what the net predicts

    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, warm_start=True, random_state=0)
    curve = list(clf.fit(X, Y).loss_curve_)
    assert clf.fit(X, Y).loss_curve_[:3] == curve and len(clf.loss_curve_) == 6
    with pytest.raises(ValueError, match=r"warm_start can only .* `y` has \[0 1\]"):
        clf.fit(X, Y[:, :2])
    with pytest.raises(ValueError, match="y is one label per sample, but the model was fitted"):
        clf.fit(X, Y[:, 0])
    with pytest.raises(ValueError, match="y is a multi-label indicator matrix, but the model"):
        clone(clf).fit(X, Y[:, 0]).fit(X, Y)
    clf.set_params(warm_start=False).fit(X, Y)  # a fresh fit may change the kind of target
    assert clf.out_activation_ == "logistic"


@pytest.mark.parametrize("classes", [2, 3])
def test_early_stopping_stratifies_as_scikit_learn_does(monkeypatch, classes):
    import sklearn.neural_network._multilayer_perceptron as theirs_module
    from sklearn.neural_network import MLPClassifier as Theirs

    X, y = load_iris(return_X_y=True)
    X, y = X[y < classes], y[y < classes]
    calls = {}

    def recording(name: str, split):
        def wrapped(*arrays, **kwargs):
            calls[name] = kwargs["stratify"]
            return split(*arrays, **kwargs)

        return wrapped

    monkeypatch.setattr(fmlp.sklearn, "train_test_split", recording("ours", train_test_split))
    monkeypatch.setattr(theirs_module, "train_test_split", recording("theirs", train_test_split))
    options = {"hidden_layer_sizes": (4,), "max_iter": 3, "early_stopping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(**options).fit(X, y)
        Theirs(**options).fit(X, y)
    if classes == 2:  # one binarised column: stratified on it
        np.testing.assert_array_equal(np.asarray(calls["ours"], int), calls["theirs"])
    else:  # scikit-learn 1.9 stratifies only a one-column target
        assert calls["ours"] is None and calls["theirs"] is None


def test_multilabel_early_stopping_scores_subset_accuracy(monkeypatch, multilabel):
    X, _, Y, _ = multilabel
    splits = []

    def recording_split(*arrays, **kwargs):
        splits.append((kwargs["stratify"], parts := train_test_split(*arrays, **kwargs)))
        return parts

    monkeypatch.setattr(fmlp.sklearn, "train_test_split", recording_split)
    clf = MLPClassifier(**MULTILABEL, early_stopping=True).fit(X, Y)
    ((stratify, (_, X_val, _, Y_val)),) = splits
    assert stratify is None  # as scikit-learn: a multi-label split is not stratified
    best = clf.best_validation_score_
    assert best == max(clf.validation_scores_) == clf.score(X_val, Y_val) > 0.5
    assert best != 1 - hamming_loss(Y_val, clf.predict(X_val))  # all labels of a row, not each


def test_feature_names_are_kept():
    pd = pytest.importorskip("pandas")
    X, y = load_iris(return_X_y=True, as_frame=True)
    clf = MLPClassifier(**FAST).fit(X, y)
    np.testing.assert_array_equal(clf.feature_names_in_, X.columns)
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(X.rename(columns=str.upper))
    assert isinstance(X, pd.DataFrame)


# ----------------------------------------------------------------------------- partial_fit


def test_partial_fit_improves_the_loss():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.05, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    for _ in range(30):
        clf.partial_fit(X, y, classes=[0, 1, 2])
    assert clf.n_iter_ == 30 and clf.t_ == 30 * len(X)
    assert clf.loss_curve_[-1] < 0.5 * clf.loss_curve_[0]
    assert np.all(np.diff(clf.loss_curve_) < 0)  # full-batch Adam on an easy problem
    assert clf.score(X, y) >= 0.9
    before = clf.loss_curve_[-1]
    clf.partial_fit(X[y == 2], y[y == 2])  # classes may be left out after the first call
    assert len(clf.loss_curve_) == 31 and clf.loss_curve_[-1] != before
    with pytest.raises(ValueError, match="differs from the classes"):
        clf.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"labels \[7\] that are not among"):
        clf.partial_fit(X[:2], [0, 7])
    with pytest.raises(ValueError, match="early_stopping"):
        clone(clf).set_params(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])

    X_reg, y_reg = _regression_data(n=100)
    reg = MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=1e-2, random_state=0)
    for _ in range(20):
        reg.partial_fit(X_reg, y_reg[:, 0])
    assert reg.loss_curve_[-1] < 0.5 * reg.loss_curve_[0]


def test_fit_after_partial_fit_starts_over():
    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier(**SMALL, random_state=0, tol=1.0)
    clf.partial_fit(X, y, classes=np.unique(y))
    clf.fit(X, y)
    assert clf.n_iter_ == len(clf.loss_curve_)


# ----------------------------------------------------------------------------- sample weights


def _weighted_problem(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 4))
    y_clf = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    y_reg = X @ np.array([1.0, -2.0, 0.5, 0.0]) + np.sin(X[:, 3])
    return X, y_clf, y_reg


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_zero_weight_equals_removing_rows(cls):
    X, y_clf, y_reg = _weighted_problem()
    y = y_clf if cls is MLPClassifier else y_reg
    weight = np.ones(len(X))
    weight[::6] = 0.0
    keep = weight > 0
    params = {**SMALL, "random_state": 0, "max_iter": 40}
    with pytest.warns(ConvergenceWarning):
        weighted = cls(**params).fit(X, y, sample_weight=weight)
    with pytest.warns(ConvergenceWarning):
        removed = cls(**params).fit(X[keep], y[keep])
    np.testing.assert_allclose(weighted.loss_curve_, removed.loss_curve_, rtol=1e-5)
    method = "predict_proba" if cls is MLPClassifier else "predict"
    np.testing.assert_allclose(
        getattr(weighted, method)(X), getattr(removed, method)(X), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_integer_weights_equal_repeated_rows(cls):
    X, y_clf, y_reg = _weighted_problem(seed=1)
    y = y_clf if cls is MLPClassifier else y_reg
    weight = np.random.default_rng(1).integers(0, 4, size=len(X))
    params = {**SMALL, "random_state": 0, "max_iter": 40}
    with pytest.warns(ConvergenceWarning):
        weighted = cls(**params).fit(X, y, sample_weight=weight)
    with pytest.warns(ConvergenceWarning):
        repeated = cls(**params).fit(X.repeat(weight, axis=0), y.repeat(weight))
    method = "predict_proba" if cls is MLPClassifier else "predict"
    np.testing.assert_allclose(
        getattr(weighted, method)(X), getattr(repeated, method)(X), rtol=1e-4, atol=1e-6
    )


def test_sample_weight_validation():
    X, y, _ = _weighted_problem()
    with pytest.raises(ValueError, match="Negative values in data passed to `sample_weight`"):
        MLPClassifier(**SMALL).fit(X, y, sample_weight=-np.ones(len(X)))
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\), expected \(60,\)"):
        MLPClassifier(**SMALL).fit(X, y, sample_weight=np.ones(3))


# ----------------------------------------------------------------------------- stopping


def test_early_stopping_uses_a_validation_split():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = MLPClassifier(**FAST, early_stopping=True, validation_fraction=0.2)
    clf.fit(X, y)
    assert len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.n_iter_ < clf.max_iter
    assert clf.best_validation_score_ == max(clf.validation_scores_) >= 0.9
    assert clf.best_loss_ is None
    assert clf.t_ == clf.n_iter_ * (150 - math.ceil(0.2 * 150))  # validation rows never train
    assert clf.score(X, y) >= 0.9

    X, y = _regression_data(n=100)
    reg = MLPRegressor(**FAST, early_stopping=True).fit(X, y[:, 0])
    assert reg.best_validation_score_ == max(reg.validation_scores_) > 0.5
    with pytest.raises(ValueError, match="validation set is too small"):
        MLPRegressor(**SMALL, early_stopping=True).fit(X[:10], y[:10, 0])


def test_convergence_warning_and_tol_stopping():
    X, y = load_iris(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached") as record:
        clf = MLPClassifier(**{**SMALL, "max_iter": 3}).fit(X, y)
    assert clf.n_iter_ == 3
    assert record[0].filename == __file__  # the warning points at the caller of fit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf = MLPClassifier(**SMALL, tol=10.0, n_iter_no_change=2).fit(X, y)
    # The first epoch always improves on best_loss_ = inf; the next 3 do not by tol = 10, and
    # scikit-learn stops once more than n_iter_no_change = 2 epochs in a row did not improve.
    assert clf.n_iter_ == 4


def test_verbose_prints_the_loss(capsys):
    X, y = load_iris(return_X_y=True)
    MLPClassifier(**SMALL, tol=10.0, n_iter_no_change=1, verbose=True).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Training loss did not improve" in out


def test_warm_start_continues():
    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier(**SMALL, warm_start=True, random_state=0, tol=1.0, n_iter_no_change=1)
    first = [layer["W"] for layer in clf.fit(X, y).params_]
    curve = list(clf.loss_curve_)
    clf.fit(X, y)
    assert clf.loss_curve_[: len(curve)] == curve and len(clf.loss_curve_) > len(curve)
    assert not np.array_equal(first[0], clf.params_[0]["W"])
    with pytest.raises(ValueError, match="same layer widths"):
        clf.set_params(hidden_layer_sizes=(8,)).fit(X, y)


# ----------------------------------------------------------------------------- API


def test_get_set_params_round_trip_and_clone():
    clf = MLPClassifier(hidden_layer_sizes=(8, 4), activation="tanh", alpha=0.1, solver="sgd")
    params = clf.get_params()
    assert params["hidden_layer_sizes"] == (8, 4) and params["momentum"] == 0.9
    assert params["nesterovs_momentum"] and params["batch_size"] == "auto"
    assert MLPClassifier().set_params(**params).get_params() == params
    assert clone(clf).get_params() == params

    X, y = load_iris(return_X_y=True)
    fitted = MLPClassifier(**FAST).fit(X, y)
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "params_")
    with pytest.raises(NotFittedError):
        copy.predict(X)


def test_refits_on_the_same_shapes_reuse_the_compiled_epoch():
    X, y = load_iris(return_X_y=True)
    MLPClassifier(**FAST).fit(X, y)
    before = fmlp.sklearn._compiled_epoch.cache_info()
    # Other hyperparameters and another number of rows below the same power of two.
    other = {"alpha": 0.5, "learning_rate_init": 0.01, "beta_1": 0.8, "epsilon": 1e-6}
    clf = MLPClassifier(**{**FAST, **other}).fit(X[:140], y[:140])
    after = fmlp.sklearn._compiled_epoch.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 1
    assert clf.n_iter_ > 1


def test_pipeline_and_grid_search():
    X, y = load_iris(return_X_y=True)
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier(**FAST))])
    assert pipe.fit(X, y).score(X, y) >= 0.9
    search = GridSearchCV(pipe, {"mlp__alpha": [1e-4, 1.0]}, cv=2).fit(X, y)
    assert set(search.best_params_) == {"mlp__alpha"}
    assert search.best_score_ >= 0.8
    assert search.predict(X).shape == (len(X),)
    assert search.cv_results_["mean_test_score"].shape == (2,)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"activation": "softplus"}, r"'activation' .* a str among \{.*\}\. Got 'softplus'"),
        ({"solver": "newton"}, r"'solver' .* a str among \{.*'lbfgs'.*\}\. Got 'newton'"),
        ({"learning_rate": "cosine"}, r"'learning_rate' .* among \{.*'invscaling'.*\}"),
        ({"power_t": -0.5}, r"'power_t' .* a float in the range \[0.0, inf\)\. Got -0.5"),
        ({"max_fun": 0}, r"'max_fun' .* an int in the range \[1, inf\)\. Got 0"),
        ({"hidden_layer_sizes": (16, 0)}, "hidden_layer_sizes must be a positive integer"),
        ({"alpha": -1.0}, r"'alpha' .* a float in the range \[0.0, inf\)\. Got -1.0"),
        (
            {"batch_size": 0},
            r"'batch_size' .* \{'auto'\} or an int in the range \[1, inf\)\. Got 0",
        ),
        ({"max_iter": 2.5}, r"'max_iter' .* an int in the range \[1, inf\)\. Got 2.5"),
        ({"learning_rate_init": 0.0}, r"'learning_rate_init' .* a float in the range \(0.0, inf\)"),
        ({"validation_fraction": 1.0}, r"'validation_fraction' .* in the range \[0.0, 1.0\)"),
        ({"momentum": 1.5}, r"'momentum' .* a float in the range \[0.0, 1.0\]\. Got 1.5"),
        ({"n_iter_no_change": 0}, r"'n_iter_no_change' .* an int in the range \[1, inf\) or a"),
    ],
)
def test_invalid_parameters_are_named(params, match):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=match):
        MLPClassifier(**params).fit(X, y)


def test_batch_size_larger_than_data_is_clipped_with_a_warning():
    X, y = load_iris(return_X_y=True)
    with pytest.warns(UserWarning, match="batch_size=500 is larger than the 150") as record:
        MLPClassifier(**SMALL, batch_size=500, tol=10.0).fit(X, y)
    assert record[0].filename == __file__  # the warning points at the caller of fit


def test_partial_fit_checks_the_parameters_on_every_call():
    X, y = load_iris(return_X_y=True)
    clf = MLPClassifier(**SMALL).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"The 'alpha' parameter of MLPClassifier"):
        clf.set_params(alpha=-1.0).partial_fit(X, y)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_every_activation_learns(activation):
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = MLPClassifier(hidden_layer_sizes=(16,), activation=activation, learning_rate_init=0.05)
    clf.set_params(random_state=0, max_iter=300, tol=1e-3).fit(X, y)
    assert clf.score(X, y) >= 0.85


def test_sgd_solver_learns():
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = MLPClassifier(**{**FAST, "solver": "sgd", "learning_rate_init": 0.1}).fit(X, y)
    assert clf.score(X, y) >= 0.9


# ----------------------------------------------------------------------------- the engine


def test_gradients_come_from_the_engine(monkeypatch):
    """An sgd step equals ``params - lr * fmlp.grad(loss)``, and jax's AD is never called
    (neither by sgd nor by lbfgs)."""
    calls = []
    engine_value_and_grad = fmlp.engine.value_and_grad

    def spy(fun, *args, **kwargs):
        calls.append(fun)
        return engine_value_and_grad(fun, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("fmlp.sklearn must not differentiate with jax's autodiff")

    # train.make_epoch differentiates with its table of gradient backends.
    monkeypatch.setitem(fmlp.train.VALUE_AND_GRAD, "engine", spy)
    monkeypatch.setitem(fmlp.train.VALUE_AND_GRAD, "jax", forbidden)
    for name in ("grad", "value_and_grad", "vjp"):
        monkeypatch.setattr(jax, name, forbidden)
    # An empty cache of compiled epochs, so that this fit builds (and differentiates) its own.
    fresh_cache = functools.lru_cache(fmlp.sklearn._compiled_epoch.__wrapped__)
    monkeypatch.setattr(fmlp.sklearn, "_compiled_epoch", fresh_cache)

    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)[:45].astype(np.float32)  # float32 parameters
    y = y[:45]
    lr, alpha = 0.5, 0.3
    clf = MLPClassifier(
        hidden_layer_sizes=(5,),
        activation="logistic",
        solver="sgd",
        momentum=0.0,
        nesterovs_momentum=False,
        learning_rate_init=lr,
        alpha=alpha,
        random_state=0,
    )
    clf.partial_fit(X, y, classes=[0, 1, 2])
    before = jax.tree.map(np.asarray, clf.params_)
    clf.partial_fit(X, y)  # one full-batch step
    after = jax.tree.map(np.asarray, clf.params_)
    assert calls, "the epoch was not differentiated by fmlp.engine.value_and_grad"
    # lbfgs's objective differentiates with the same table.
    fresh_objectives = functools.lru_cache(fmlp.sklearn._compiled_objective.__wrapped__)
    monkeypatch.setattr(fmlp.sklearn, "_compiled_objective", fresh_objectives)
    calls.clear()
    clf.set_params(solver="lbfgs", max_iter=3).fit(X, y)
    assert calls, "lbfgs's objective was not differentiated by fmlp.engine.value_and_grad"
    monkeypatch.undo()

    # The loss the estimator documents: mean cross-entropy + alpha / 2 * sum ||W||^2 / n.
    def loss(params):
        data = nn.loss(params, X, y, activation="sigmoid", output="softmax")
        penalty = fmlp.gates.sum(fmlp.gates.square(params[0]["W"]))
        penalty = fmlp.gates.add(penalty, fmlp.gates.sum(fmlp.gates.square(params[1]["W"])))
        return fmlp.gates.add(data, fmlp.gates.multiply(penalty, np.float32(alpha / 2 / len(X))))

    grads = jax.jit(fmlp.grad(loss))(jax.tree.map(jax.numpy.asarray, before))
    for b, a, g in zip(before, after, grads):
        for k in ("W", "b"):
            np.testing.assert_allclose(a[k], b[k] - lr * np.asarray(g[k]), rtol=1e-5, atol=1e-6)


def test_runs_under_jax_default_settings():
    """The suite is x64 and strict; a user's JAX has 32-bit defaults and standard promotion."""
    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    with (
        jax.enable_x64(False),
        jax.numpy_dtype_promotion("standard"),
        jax.numpy_rank_promotion("allow"),
    ):
        clf = MLPClassifier(**FAST).fit(X, y)
        assert clf.score(X, y) >= 0.9
        assert clf.predict_proba(X).dtype == np.float64


def test_the_l2_penalty_follows_the_trainers_weight_decay_rule(monkeypatch):
    """scikit-learn's rule (no bias penalty) is fmlp.train.decay_mask's: one function."""
    net = nn.mlp([3, 4, 2], output="softmax")
    params = [
        {"W": layer["W"], "b": jax.numpy.ones_like(layer["b"])}
        for layer in net.init(jax.random.key(0))
    ]
    x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((5, 3)), np.float32)
    y = jax.numpy.asarray([0, 1, 1, 0, 1], np.int32)
    w = jax.numpy.ones(5, np.float32)
    alpha = np.float32(2.0)
    data = float(fmlp.sklearn._batch_loss(net, params, x, y, w, np.float32(0.0))[0])

    def squares(names):
        return sum(float(np.sum(np.square(layer[k]))) for layer in params for k in names)

    got = float(fmlp.sklearn._batch_loss(net, params, x, y, w, alpha)[0])
    assert got == pytest.approx(data + alpha / 2 * squares("W") / 5, rel=1e-6)
    monkeypatch.setattr(fmlp.train, "decay_mask", lambda p: jax.tree.map(lambda _: True, p))
    every = float(fmlp.sklearn._batch_loss(net, params, x, y, w, alpha)[0])
    assert every == pytest.approx(data + alpha / 2 * squares("Wb") / 5, rel=1e-6)
