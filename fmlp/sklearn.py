"""scikit-learn estimators over fmlp: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take scikit-learn's ``MLPClassifier``/``MLPRegressor`` parameters, all of them, and
follow its conventions (``fit``/``predict``/``score``/``partial_fit``,
``get_params``/``set_params``, ``clone``, pipelines, grid search; parameters declared in
``_parameter_constraints`` and checked by scikit-learn's own validation), but the model is
fmlp's: one :class:`fmlp.nn.MLP` per fit, whose head (:data:`fmlp.nn.HEADS`:
``cross_entropy`` for the classifier, ``binary_cross_entropy`` for its multi-label targets,
``squared_error`` or, for ``loss="poisson"``, ``poisson`` for the regressor) gives the loss as a
gate (:func:`fmlp.gates.softmax_cross_entropy`,
:func:`fmlp.gates.sigmoid_binary_cross_entropy`, :func:`fmlp.gates.squared_error`,
:func:`fmlp.gates.exp_poisson_deviance`); the gradients come from fmlp's engine
(:func:`fmlp.value_and_grad`) and the optimizers are optax's and scipy's.

Solvers. ``adam`` and ``sgd`` train by epochs of the project's compiled epoch,
:func:`fmlp.train.make_epoch`: one jitted ``lax.scan`` over fixed-shape mini-batches from
:func:`fmlp.data.batch_indices` (the last batch padded and masked), in an order drawn from a
key the estimator draws on the host from ``random_state``. sgd is scikit-learn's (velocity
``v <- momentum v - lr g``, Nesterov optional) with its ``learning_rate`` schedules, applied
between epochs: ``constant``, ``invscaling`` (``learning_rate_init / (t + 1) ** power_t``, ``t``
the examples seen) and ``adaptive`` (divided by 5 when the stopping rule fires). ``lbfgs`` is
scipy's L-BFGS-B, as scikit-learn uses it (``max_iter``, ``max_fun``, ``tol`` as ``gtol``), over
one jitted function that unflattens the parameter vector, runs the engine's value and gradient
on the whole training set and flattens the gradient back; like scikit-learn's, it records
no ``loss_curve_``. ``partial_fit`` (sgd, adam)
continues the optimizer of the first call: its moments, hyperparameters and learning rate,
as scikit-learn does.

The compiled programs are cached per static configuration (the net, solver, Nesterov, rows,
batch size, shuffle, dtype, how batches are gathered) and array shapes, so a refit on data of
the same shape does not recompile; the hyperparameters ``alpha``, ``learning_rate_init``,
``momentum``, ``beta_1``, ``beta_2`` and ``epsilon`` are run-time values, so a grid search over
them compiles once. To share programs further, the inputs are padded with zero columns to a
power of two (at least 8; the matching rows of the first ``W`` are zero, get zero gradients
and stay zero), and a data set that fits in one batch (``batch_size >= n_samples``, e.g.
``"auto"`` with up to 200 rows; always for lbfgs) is padded with weight-0 rows to a power of two
(at least 64) and not shuffled, since one batch's order does not change its gradient. Neither
padding changes the result beyond round-off.

Precision. The parameters take the dtype of ``X`` (float32 or float64, as in scikit-learn;
other inputs become float64). JAX computes in float64 only in its x64 mode, so each fit and
prediction runs inside ``jax.enable_x64(dtype == float64)``: the mode is scoped to the call and
the rest of the program keeps JAX's settings. Pass float32 ``X`` for float32 speed (GPUs, TPUs).

Sparse ``X`` (scipy CSR or CSC) is never densified whole: each mini-batch (sgd, adam) is
densified on the host and sent to the device for one compiled step of the same epoch
(:func:`fmlp.train.make_streamed_epoch`), and lbfgs and prediction densify blocks of rows.

The loss of a mini-batch ``B`` with sample weights ``w`` is scikit-learn's::

    L = (sum_{i in B} w_i l_i  +  alpha / 2 * sum_layers ||W||^2) / sum_{i in B} w_i

with ``l_i`` the cross-entropy of example ``i`` (classifier; for multi-label targets the
binary cross-entropy summed over the labels), ``1/2 sum_j (o_ij - t_ij)^2``
(squared error) or half the Poisson deviance ``sum_j t_ij log(t_ij / o_ij) - t_ij + o_ij`` of
the rates ``o = exp(s)`` (poisson). Biases are not penalised (:func:`fmlp.train.decay_mask`,
the trainer's weight decay rule too). A batch whose weights sum to 0 is
skipped. As scikit-learn does, the squared error is reported (``loss_curve_``, ``loss_``, the
stopping rule, lbfgs's objective value) averaged over the outputs instead of summed, while its
gradient stays that of the sum. An epoch's loss is the weight-averaged batch loss, so rows of
weight 0 change neither the gradients nor the curve, and the stopping rule is scikit-learn's
(``tol``, ``n_iter_no_change``, ``early_stopping`` on a ``validation_fraction``, stratified
by class for two classes only, as scikit-learn 1.9 does). A
diverging fit goes on as scikit-learn's does (a non-finite loss or validation score is
recorded) and raises a ``ValueError`` at the end if the parameters it keeps are not finite.

Differences from scikit-learn: the classifier uses a softmax output with one unit per class
also for two classes, where scikit-learn uses one logistic unit (multi-label targets get one
logistic unit per label in both); a multi-label ``y`` must hold only 0s and 1s (scikit-learn
takes any two integers and reads non-zero as 1), and a sparse one is densified (predictions
are dense); the first ``partial_fit`` of multi-label targets needs ``classes`` equal to the
label indices ``np.arange(n_labels)`` (scikit-learn only checks that they include them); adam
is optax's (``epsilon`` added to the bias-corrected ``sqrt(v)``); with ``verbose``, lbfgs
prints its iterations itself (scikit-learn leaves that to scipy, whose L-BFGS-B no longer
prints); ``partial_fit`` checks the parameters on every call (scikit-learn only on the first).
The initialisation is scikit-learn's (uniform weights and biases drawn from ``random_state``).

Example:
  >>> import numpy as np
  >>> from fmlp.sklearn import MLPClassifier
  >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 10)
  >>> y = np.array(["no", "yes", "yes", "no"] * 10)
  >>> clf = MLPClassifier(hidden_layer_sizes=(16,), activation="tanh", learning_rate_init=0.05,
  ...                     max_iter=300, random_state=0).fit(X, y)
  >>> clf.predict([[0.0, 1.0], [1.0, 1.0]]).tolist()
  ['yes', 'no']
  >>> clf.coefs_[0].dtype  # X was float64
  dtype('float64')
"""

from __future__ import annotations

import functools
import itertools
import sys
import warnings
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.sparse as sp
import sklearn.base
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    check_random_state,
    column_or_1d,
    validate_data,
)

from fmlp import gates, nn, train

Array = jax.Array
_EpochFn = Callable[..., tuple[train.TrainState, Array]]  # train.make_epoch's compiled epoch

ACTIVATIONS: dict[str, str] = {
    "identity": "identity",
    "logistic": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
}
"""scikit-learn's activation names -> fmlp's (:data:`fmlp.nn.ACTIVATIONS`)."""

SOLVERS: tuple[str, ...] = ("lbfgs", "sgd", "adam")
STOCHASTIC_SOLVERS: tuple[str, ...] = ("sgd", "adam")
LEARNING_RATES: tuple[str, ...] = ("constant", "invscaling", "adaptive")
LOSSES: dict[str, str] = {"squared_error": "squared_error", "poisson": "poisson"}
"""The regressor's ``loss`` -> its head in :data:`fmlp.nn.HEADS`."""

_PREDICT_CHUNK = 256  # rows per compiled forward call: one program for every number of rows
_DENSE_BLOCK_BYTES = 1 << 26  # sparse rows densified at once by lbfgs and prediction: 64 MiB
_MIN_LEARNING_RATE = 1e-6  # learning_rate="adaptive" stops below this, as scikit-learn does


# ----------------------------------------------------------------------------- compiled pieces


class _EpochConfig(NamedTuple):
    """Everything that fixes the compiled epoch besides array shapes (the cache key)."""

    net: nn.MLP  # activation and head; sizes as the programs see them (inputs padded)
    n: int
    batch_size: int
    shuffle: bool
    permute: bool  # gather the epoch's batches up front (train.use_permuted_copy)
    solver: str
    nesterov: bool
    dtype: str  # the parameters': float32 or float64
    streamed: bool  # sparse X: each batch densified on the host (train.make_streamed_epoch)


_HYPER_DEFAULTS = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "momentum": 0.9}


def _sgd(learning_rate: Any, momentum: Any, nesterov: bool) -> optax.GradientTransformation:
    """scikit-learn's sgd: velocity ``v <- momentum v - learning_rate g``; the step is ``v``,
    or with Nesterov ``momentum v - learning_rate g``. (optax's ``sgd`` scales after the
    momentum, which differs once the learning rate changes between epochs.)"""
    return optax.chain(optax.scale(-learning_rate), optax.trace(decay=momentum, nesterov=nesterov))


def _optax(solver: str, nesterov: bool, dtype: str, **hyper: float) -> optax.GradientTransformation:
    """adam or sgd with their hyperparameters held in the optimizer state, in ``dtype``.

    ``optax.inject_hyperparams`` keeps the numbers in ``opt_state`` rather than in the
    program, so one compiled epoch serves every learning rate, momentum, beta and epsilon:
    ``update`` reads them from the state, whatever values the transformation was built with.
    """
    hyper = _HYPER_DEFAULTS | hyper
    if solver == "adam":
        adam = optax.inject_hyperparams(optax.adam, hyperparam_dtype=jnp.dtype(dtype))
        return adam(**{k: hyper[k] for k in ("learning_rate", "b1", "b2", "eps")})
    sgd = optax.inject_hyperparams(_sgd, static_args="nesterov", hyperparam_dtype=jnp.dtype(dtype))
    return sgd(hyper["learning_rate"], hyper["momentum"], nesterov=nesterov)


def _loss(
    net: nn.MLP,
    params: nn.Params,
    x: Array,
    y: Array,
    w: Array,
    inv_total: Array,
    penalty_scale: Array,
) -> tuple[Array, Array]:
    """scikit-learn's weighted loss of some rows plus its L2 penalty, written with gates.

    Args:
      net: the model; its head's per-example loss is ``l`` (:meth:`fmlp.nn.MLP.per_example_loss`).
      params: fmlp MLP parameters.
      x: inputs ``(B, in)``.
      y: integer class ids ``(B,)`` (classifier), 0/1 per label ``(B, out)`` (multi-label) or
        targets ``(B, out)`` (regressor).
      w: per-example weights ``(B,)``: sample weight times the padding mask.
      inv_total: ``1 / sum(w)`` over the batch (or the whole set, when it comes in chunks).
      penalty_scale: ``alpha / 2 * inv_total`` (0 for the chunks after the first).

    Returns:
      ``(value, reported)``: ``sum(w l) * inv_total + penalty_scale * sum ||W||^2`` over the
      leaves :func:`fmlp.train.decay_mask` marks (the weights ``W``), which is
      differentiated, and the same with the squared error averaged over the outputs, as
      scikit-learn reports it.
    """
    per_example = net.per_example_loss(params, x, y)
    # w and the scales are constants of the differentiated function: plain jnp is fine for them.
    data_loss = gates.multiply(gates.sum(gates.multiply(per_example, w)), inv_total)
    decayed = jax.tree.leaves(train.decay_mask(params))
    squares = [
        gates.sum(gates.square(leaf)) for leaf, on in zip(jax.tree.leaves(params), decayed) if on
    ]
    penalty = gates.multiply(functools.reduce(gates.add, squares), penalty_scale)
    value = gates.add(data_loss, penalty)
    outputs = net.sizes[-1]
    if net.output == "identity" and outputs > 1:
        return value, gates.add(gates.multiply(data_loss, 1.0 / outputs), penalty)
    return value, value


def _batch_loss(
    net: nn.MLP, params: nn.Params, x: Array, y: Array, w: Array, alpha: Array
) -> tuple[Array, Array]:
    """:func:`_loss` of one mini-batch, normalised by its own weights; 0 when they sum to 0."""
    total = jnp.sum(w)
    inv_total = jnp.where(total > 0, 1.0 / jnp.maximum(total, 1e-30), 0.0)
    return _loss(net, params, x, y, w, inv_total, 0.5 * alpha * inv_total)


def _densify_rows(x: Any, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of the sparse matrix ``x``, as a dense array (a streamed epoch's batch)."""
    return x[rows].toarray()


@functools.lru_cache(maxsize=128)
def _compiled_epoch(cfg: _EpochConfig) -> _EpochFn:
    """The project's compiled epoch (:func:`fmlp.train.make_epoch`) for one configuration.

    ``epoch(state, x, y, w, alpha) -> (state, loss)``: one ``lax.scan`` over
    ``ceil(n / batch_size)`` mini-batches of :func:`_batch_loss`, in the order drawn from
    ``state.key``. A batch whose weights sum to 0 leaves the parameters and the optimizer
    state untouched; ``loss`` is the weight-averaged reported batch loss. The hyperparameter
    values come from ``state.opt_state``. The input state is not donated: early stopping
    keeps the best epoch's state while training goes on. With ``cfg.streamed`` the same
    epoch runs as a host loop over batches densified from a sparse ``x``
    (:func:`fmlp.train.make_streamed_epoch`).
    """
    loss = functools.partial(_batch_loss, cfg.net)
    tx = _optax(cfg.solver, cfg.nesterov, cfg.dtype)
    common = {"n": cfg.n, "batch_size": cfg.batch_size, "shuffle": cfg.shuffle}
    if cfg.streamed:
        return train.make_streamed_epoch(
            loss, tx, gather=_densify_rows, skip_empty=True, has_aux=True, **common
        )
    return train.make_epoch(
        loss, tx, skip_empty=True, has_aux=True, permute=cfg.permute, donate=False, **common
    )


def _flatten(params: nn.Params) -> Array:
    """The parameters as one vector: each layer's ``W`` (row-major), then its ``b``."""
    return jnp.concatenate([jnp.ravel(layer[k]) for layer in params for k in ("W", "b")])


def _unflatten(flat: Any, sizes: tuple[int, ...]) -> nn.Params:
    """The inverse of :func:`_flatten` for a net of layer widths ``sizes``."""
    params, start = [], 0
    for fan_in, fan_out in itertools.pairwise(sizes):
        W = flat[start : start + fan_in * fan_out].reshape(fan_in, fan_out)
        start += fan_in * fan_out
        params.append({"W": W, "b": flat[start : start + fan_out]})
        start += fan_out
    return params


@functools.lru_cache(maxsize=128)
def _compiled_objective(net: nn.MLP) -> Callable[..., tuple[Array, Array]]:
    """lbfgs's objective on one chunk of rows, over flat parameters (jitted).

    ``objective(flat, x, y, w, inv_total, penalty_scale) -> (reported loss, flat gradient)``:
    the engine's value and gradient of :func:`_loss`; summed over the chunks of the training
    set they are scikit-learn's full-batch loss and its gradient.
    """
    value_and_grad = train.VALUE_AND_GRAD["engine"](functools.partial(_loss, net), has_aux=True)

    def objective(flat: Array, x: Array, y: Array, w: Array, inv_total: Array, scale: Array):
        (_, reported), grads = value_and_grad(
            _unflatten(flat, net.sizes), x, y, w, inv_total, scale
        )
        return reported, _flatten(grads)

    return jax.jit(objective)


@functools.partial(jax.jit, static_argnames=("net", "logits"))
def _forward_chunks(params: nn.Params, x: Array, *, net: nn.MLP, logits: bool) -> Array:
    # x: (chunks, _PREDICT_CHUNK, in); every row goes through the same fixed-size program,
    # so a row's output does not depend on how many rows were predicted with it.
    forward = net.logits if logits else net.apply
    return jax.lax.map(lambda xb: forward(params, xb), x)


def _block_rows(width: int, dtype: np.dtype) -> int:
    """Rows of a sparse matrix densified at once: a multiple of the prediction chunk."""
    rows = _DENSE_BLOCK_BYTES // (width * np.dtype(dtype).itemsize)
    return max(1, rows // _PREDICT_CHUNK) * _PREDICT_CHUNK


def _forward(net: nn.MLP, params: nn.Params, X: Any, *, logits: bool = False) -> np.ndarray:
    """``net.apply`` (``net.logits`` if ``logits``) on host rows ``X`` (n, in): (n, out).

    The rows go in fixed-size chunks (a power of two of them) and the columns are padded to
    the net's input width like the training data, so one program serves every number of rows
    and every number of features that pads to the same width. The computation and the result
    are in the parameters' dtype (call it in the matching x64 mode). Sparse ``X`` goes in
    blocks of rows, each densified on its own.
    """
    (n, n_features), width = X.shape, net.sizes[0]
    dtype = params[0]["W"].dtype
    if sp.issparse(X):
        block = _block_rows(width, dtype)
        parts = [X[start : start + block].toarray() for start in range(0, n, block)]
        return np.concatenate([_forward(net, params, part, logits=logits) for part in parts])
    chunks = -(-n // _PREDICT_CHUNK)
    chunks = 1 << (chunks - 1).bit_length()  # a power of two: few distinct programs
    padded = np.zeros((chunks * _PREDICT_CHUNK, width), dtype)
    padded[:n, :n_features] = X
    out = _forward_chunks(
        _pad_inputs(params, width),
        jnp.asarray(padded.reshape(chunks, _PREDICT_CHUNK, width)),
        net=net,
        logits=logits,
    )
    return np.asarray(out).reshape(chunks * _PREDICT_CHUNK, -1)[:n]


def _init_params(
    rng: np.random.RandomState, sizes: tuple[int, ...], activation: str, dtype: np.dtype
) -> nn.Params:
    """scikit-learn's initialisation, drawn on the host from ``random_state``.

    Weights and biases of each layer are uniform in ``+-sqrt(6 / (fan_in + fan_out))``
    (``sqrt(2 / ...)`` for the logistic activation), in scikit-learn's order of draws; the
    result is an fmlp parameter list of host arrays in ``dtype``.
    """
    factor = 2.0 if activation == "logistic" else 6.0
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = np.sqrt(factor / (fan_in + fan_out))
        W = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
        b = rng.uniform(-bound, bound, fan_out).astype(dtype)
        params.append({"W": W, "b": b})
    return params


def _to_host(tree: Any) -> Any:
    """``tree`` with its arrays copied to the host (numpy): what the estimator keeps between
    calls, so that it pickles whatever JAX's settings and devices."""
    return jax.tree.map(np.array, tree)


def _padded_width(n_features: int) -> int:
    """The number of input columns the compiled programs see: a power of two, at least 8."""
    return max(8, 1 << (n_features - 1).bit_length())


def _padded_rows(n: int) -> int:
    """The rows of a full-batch epoch: a power of two, at least 64."""
    return max(64, 1 << (n - 1).bit_length())


def _pad_inputs(params: nn.Params, width: int) -> nn.Params:
    """``params`` whose first ``W`` has zero rows appended up to ``width`` inputs."""
    W = params[0]["W"]
    if W.shape[0] == width:
        return params
    W = np.concatenate([W, np.zeros((width - W.shape[0], W.shape[1]), W.dtype)])
    return [{"W": W, "b": params[0]["b"]}, *params[1:]]


def _pad_columns(a: Any, width: int) -> Any:
    """``a`` (n, d), dense or sparse, with zero columns appended up to ``width`` columns."""
    if sp.issparse(a):
        return sp.csr_array((a.data, a.indices, a.indptr), shape=(a.shape[0], width))
    return np.concatenate([a, np.zeros((len(a), width - a.shape[1]), a.dtype)], axis=1)


def _pad_rows(a: Any, rows: int) -> Any:
    """``a``, dense or sparse, with zero rows appended up to ``rows`` rows."""
    if sp.issparse(a):
        zeros = sp.csr_array((rows - a.shape[0], a.shape[1]), dtype=a.dtype)
        return sp.vstack([a, zeros], format="csr")
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


def _label_indicator(proba: np.ndarray) -> np.ndarray:
    """Multi-label decisions from per-label probabilities ``(n, K)``: 1 where above 1/2, else
    0, as integers (scikit-learn's predictions)."""
    return (proba > 0.5).astype(int)


def _all_finite(params: nn.Params) -> bool:
    return all(np.isfinite(a).all() for a in jax.tree.leaves(params))


def _warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the first caller outside this module and scikit-learn's
    wrapper of ``fit`` (the user's call of ``fit``, or scikit-learn's in a grid search)."""
    internal = {__file__, sklearn.base.__file__}
    frame, level = sys._getframe(1), 2  # level 2: _warn's caller
    while frame is not None and frame.f_code.co_filename in internal:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


# ----------------------------------------------------------------------------- the estimators


class _Optimizer:
    """A stochastic solver between epochs: its optax state and scikit-learn's learning rate.

    Built by ``fit`` and the first ``partial_fit`` from the estimator's parameters, and kept by
    later ``partial_fit`` calls, as scikit-learn keeps its ``_optimizer`` (the attribute has its
    name and its ``learning_rate``). ``learning_rate`` is the next epoch's rate:
    ``learning_rate_init``; for sgd with ``learning_rate="invscaling"``,
    ``learning_rate_init / (t + 1) ** power_t`` after each epoch (:meth:`iteration_ends`);
    with ``"adaptive"``, divided by 5 each time the stopping rule fires, until it is below
    1e-6 (:meth:`trigger_stopping`). The optax state (moments and hyperparameters) is kept on
    the host between calls.
    """

    def __init__(self, est: _BaseMLP, params: nn.Params) -> None:
        self.solver = est.solver
        self.nesterov = bool(est.nesterovs_momentum)
        self.schedule = est.learning_rate if est.solver == "sgd" else "constant"
        self.learning_rate_init = float(est.learning_rate_init)
        self.power_t = float(est.power_t)
        self.learning_rate = self.learning_rate_init
        self.dtype = params[0]["W"].dtype
        hyper = {"learning_rate": self.learning_rate}
        if est.solver == "adam":
            hyper |= {"b1": est.beta_1, "b2": est.beta_2, "eps": est.epsilon}
        else:
            hyper["momentum"] = est.momentum
        tx = _optax(self.solver, self.nesterov, self.dtype.name, **hyper)
        self.state = _to_host(tx.init(params))

    def with_learning_rate(self, opt_state: optax.OptState) -> optax.OptState:
        """``opt_state`` set to run the next epoch at :attr:`learning_rate`."""
        hyperparams = dict(opt_state.hyperparams)  # also optax's own, e.g. eps_root
        hyperparams["learning_rate"] = np.asarray(self.learning_rate, self.dtype)
        return opt_state._replace(hyperparams=hyperparams)

    def iteration_ends(self, t: int) -> None:
        """After an epoch; ``t`` examples seen so far (the estimator's ``t_``)."""
        if self.schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (t + 1) ** self.power_t

    def trigger_stopping(self, message: str, verbose: bool) -> bool:
        """The stopping rule fired (``message`` says why): whether to stop, or go on slower."""
        if self.schedule != "adaptive":
            if verbose:
                print(message + " Stopping.")
            return True
        if self.learning_rate <= _MIN_LEARNING_RATE:
            if verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(message + f" Setting learning rate to {self.learning_rate:f}")
        return False


class _PreparedEpoch(NamedTuple):
    """A fit's compiled epoch and what it runs on (:meth:`_BaseMLP._prepare_epoch`)."""

    run: _EpochFn  # _compiled_epoch(cfg)
    state: train.TrainState  # the initial state; params padded to the net's input width
    data: tuple[Any, ...]  # (x, y, w, alpha): run's other arguments (on the host if streamed)


class _BaseMLP(BaseEstimator):
    """The fit loop shared by the classifier and the regressor."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions(set(SOLVERS))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions(set(LEARNING_RATES))],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
    }
    """Each parameter's valid values, checked by scikit-learn's ``_validate_params``."""

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 1e-3,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int | float = 10,
        max_fun: int = 15000,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun

    # -- pieces the subclasses provide

    def _head(self) -> str:
        """The net's head, a name in :data:`fmlp.nn.HEADS`."""
        raise NotImplementedError

    def _encode_targets(
        self, y: np.ndarray, *, first: bool, incremental: bool, classes: Any, dtype: np.dtype
    ) -> np.ndarray:
        raise NotImplementedError

    def _stratify(self, targets: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def _validation_score(
        self,
        net: nn.MLP,
        params: nn.Params,
        X: Any,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
    ) -> float:
        raise NotImplementedError

    # -- validation

    def _check_solver(self) -> bool:
        """Whether ``partial_fit`` exists: only for the stochastic solvers (``available_if``)."""
        if self.solver not in STOCHASTIC_SOLVERS:
            raise AttributeError(
                f"partial_fit is only available for the stochastic solvers "
                f"{list(STOCHASTIC_SOLVERS)}, not for solver={self.solver!r}."
            )
        return True

    def _hidden_sizes(self) -> tuple[int, ...]:
        """``hidden_layer_sizes`` as a tuple of widths, each a positive integer."""
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, Integral) else tuple(sizes)
        for s in sizes:
            if not isinstance(s, Integral) or isinstance(s, bool) or s < 1:
                raise ValueError(
                    f"hidden_layer_sizes must be a positive integer or a sequence of positive "
                    f"integers, got {self.hidden_layer_sizes!r}."
                )
        return tuple(int(s) for s in sizes)

    def _batch_size(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            _warn(
                f"batch_size={self.batch_size} is larger than the {n} training examples; "
                f"using {n}.",
                UserWarning,
            )
        return min(int(self.batch_size), n)

    # -- fitting

    # On _fit, which fit and partial_fit share: the parameters are validated on every call
    # (scikit-learn's partial_fit skips it once fitted) and nested scikit-learn calls
    # (train_test_split, the validation scores) skip their own validation.
    @_fit_context(prefer_skip_nested_validation=True)
    def _fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        incremental: bool = False,
        classes: Any = None,
    ) -> _BaseMLP:
        """fit (or partial_fit, ``incremental``): check the data, set up the model, train."""
        hidden = self._hidden_sizes()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True.")
        fitted = hasattr(self, "params_")
        first = not fitted or (not incremental and not self.warm_start)
        X, y = validate_data(
            self,
            X,
            y,
            reset=first,
            accept_sparse=("csr", "csc"),
            dtype=(np.float64, np.float32),
            multi_output=True,  # the classifier's multi-label y; it checks its targets itself
            y_numeric=sklearn.base.is_regressor(self),
        )
        dtype = X.dtype if first else self.params_[0]["W"].dtype
        X = X.tocsr().astype(dtype) if sp.issparse(X) else X.astype(dtype, copy=False)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=dtype, ensure_non_negative=True
            )
        targets = self._encode_targets(
            y, first=first, incremental=incremental, classes=classes, dtype=dtype
        )
        with jax.enable_x64(dtype == np.float64):  # float64 parameters, for this fit only
            self._train(X, targets, sample_weight, hidden, first=first, incremental=incremental)
        return self

    def _train(
        self,
        X: Any,
        targets: np.ndarray,
        sample_weight: np.ndarray | None,
        hidden: tuple[int, ...],
        *,
        first: bool,
        incremental: bool,
    ) -> None:
        """Set up the model (fresh or continued) and run the solver; keep what it found."""
        n_features = X.shape[1]
        n_outputs = targets.shape[1] if targets.ndim == 2 else len(self.classes_)
        sizes = (n_features, *hidden, n_outputs)
        if not first:
            old = (self.params_[0]["W"].shape[0], *(layer["b"].shape[0] for layer in self.params_))
            if old != sizes:
                raise ValueError(
                    f"{'partial_fit' if incremental else 'warm_start'} needs the same layer "
                    f"widths as the fitted model {list(old)}, got {list(sizes)}; "
                    "refit from scratch instead."
                )
        # The net as the compiled programs see it: zero input columns (and zero rows of the
        # first W) up to a power of two change no output and get zero gradients, so those
        # weights stay zero, and data sets with similar numbers of features share programs.
        net = nn.mlp(
            (_padded_width(n_features), *hidden, n_outputs),
            activation=ACTIVATIONS[self.activation],
            loss=self._head(),
        )
        rng = check_random_state(self.random_state)
        if first:
            self.params_ = _init_params(rng, sizes, self.activation, X.dtype)
            self.n_iter_ = 0
            self.t_ = 0
            self.n_layers_ = len(sizes)
            self.n_outputs_ = n_outputs
            theirs = {ours: name for name, ours in ACTIVATIONS.items()}  # sigmoid: "logistic"
            self.out_activation_ = theirs.get(net.output, net.output)
        weights = np.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
        if self.solver == "lbfgs":
            self._optimizer = None  # a later partial_fit starts a fresh stochastic solver
            params = self._fit_lbfgs(net, X, targets, weights)
        else:
            params = self._fit_stochastic(
                net, X, targets, weights, sample_weight, rng, first=first, incremental=incremental
            )
        if not _all_finite(params):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain large "
                "values and need to be preprocessed (e.g. with StandardScaler), or lower "
                "learning_rate_init."
            )
        # The fitted model; the optimizer's first moments stay padded like the programs' params.
        self.params_ = [{"W": params[0]["W"][:n_features], "b": params[0]["b"]}, *params[1:]]
        self._net = net

    def _fit_stochastic(
        self,
        net: nn.MLP,
        X: Any,
        targets: np.ndarray,
        weights: np.ndarray,
        sample_weight: np.ndarray | None,
        rng: np.random.RandomState,
        *,
        first: bool,
        incremental: bool,
    ) -> nn.Params:
        """sgd or adam: epochs of the compiled epoch under scikit-learn's stopping rule."""
        if first or not hasattr(self, "loss_curve_"):  # fresh curves (also after an lbfgs fit)
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = None if self.early_stopping else np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
        elif not incremental:  # warm start: continue the curves, with a fresh optimizer
            self._no_improvement_count = 0
            if self.early_stopping and self.validation_scores_ is None:
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
            if not self.early_stopping and self.best_loss_ is None:
                self.best_loss_ = np.inf
        width = net.sizes[0]
        if not incremental or getattr(self, "_optimizer", None) is None:
            # A fit (fresh or warm) draws its own batch orders and starts a fresh optimizer.
            self._order_rng = np.random.RandomState(rng.randint(np.iinfo(np.int32).max))
            self._optimizer = _Optimizer(self, _pad_inputs(self.params_, width))
        validation = None
        if self.early_stopping:
            X, targets, sample_weight, *validation = self._split(X, targets, sample_weight, rng)
            weights = np.ones(X.shape[0], X.dtype) if sample_weight is None else sample_weight
        epoch = self._prepare_epoch(net, X, targets, weights)
        params, opt_state = self._epoch_loop(
            net, epoch, validation, n_samples=X.shape[0], incremental=incremental
        )
        self._optimizer.state = _to_host(opt_state)
        return _to_host(params)

    def _split(self, X, targets, sample_weight, rng):
        """The early-stopping split: training and validation rows, stratified as scikit-learn
        stratifies them (on its binarised labels, for a classifier)."""
        arrays = [X, targets] + ([] if sample_weight is None else [sample_weight])
        parts = train_test_split(
            *arrays,
            random_state=rng,
            test_size=self.validation_fraction,
            stratify=self._stratify(targets),
        )
        X_train, X_val, y_train, y_val = parts[:4]
        sw_train, sw_val = (None, None) if sample_weight is None else parts[4:]
        if X_val.shape[0] < 2:
            raise ValueError(
                f"The validation set is too small ({X_val.shape[0]} examples): increase "
                f"validation_fraction (now {self.validation_fraction}) or give more data."
            )
        return X_train, y_train, sw_train, X_val, y_val, sw_val

    def _prepare_epoch(
        self, net: nn.MLP, X: Any, targets: np.ndarray, weights: np.ndarray
    ) -> _PreparedEpoch:
        """The compiled epoch for this fit (cached), its data, the first state.

        ``X`` (n, features) is padded with zero columns to ``net``'s input width and
        ``self.params_`` to match; ``targets`` (n,) or (n, outputs) and ``weights`` (n,) go
        along, to the device (dense ``X``) or kept on the host (sparse ``X``, whose batches
        are densified one by one). The state's key is a placeholder: each epoch gets one
        drawn on the host.
        """
        n = X.shape[0]
        batch_size = self._batch_size(n)
        width = net.sizes[0]
        X = _pad_columns(X, width)
        shuffle = bool(self.shuffle)
        if batch_size == n:
            # One batch per epoch: its order does not change the gradient, so skip the shuffle,
            # and pad the rows with weight-0 examples to a power of two, so that data sets of
            # similar size share one compiled epoch (the weighted mean is unchanged).
            n = batch_size = _padded_rows(n)
            X, targets, weights = (_pad_rows(a, n) for a in (X, targets, weights))
            shuffle = False
        streamed = sp.issparse(X)
        cfg = _EpochConfig(
            net=net,
            n=n,
            batch_size=batch_size,
            shuffle=shuffle,
            permute=not streamed
            and train.use_permuted_copy("auto", net, X, targets, batch_size=batch_size),
            solver=self._optimizer.solver,
            nesterov=self._optimizer.nesterov,
            dtype=X.dtype.name,
            streamed=streamed,
        )
        params = jax.tree.map(jnp.asarray, _pad_inputs(self.params_, width))
        state = train.TrainState(
            params=params,
            opt_state=self._optimizer.state,
            step=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            key=np.zeros(2, np.uint32),  # replaced by each epoch's own
        )
        alpha = jnp.asarray(self.alpha, X.dtype)
        data = (X, targets, weights) if streamed else tuple(map(jnp.asarray, (X, targets, weights)))
        return _PreparedEpoch(_compiled_epoch(cfg), state, (*data, alpha))

    def _epoch_loop(
        self,
        net: nn.MLP,
        epoch: _PreparedEpoch,
        validation: list[Any] | None,
        *,
        n_samples: int,
        incremental: bool,
    ) -> tuple[nn.Params, optax.OptState]:
        """Epochs until ``max_iter`` (one for partial_fit) or scikit-learn's stopping rule.

        Appends to ``loss_curve_`` (and ``validation_scores_``, computed on ``validation``
        = ``[X_val, y_val, sample_weight_val]`` with early stopping, else None), counts
        ``n_iter_`` and ``t_`` (``n_samples`` training rows per epoch) and moves the learning
        rate along its schedule (:class:`_Optimizer`). Non-finite losses and scores are
        recorded and the epochs go on, as in scikit-learn.

        Returns:
          The params to keep, padded like ``epoch.state``'s (with early stopping, those of the
          best validation score), and the last optimizer state.
        """
        state = best = epoch.state
        optimizer = self._optimizer
        self.n_iter_ = self.n_iter_ if incremental else 0
        for _ in range(1 if incremental else self.max_iter):
            # A raw PRNG key drawn on the host: no device round trip to split keys per epoch.
            order_key = self._order_rng.randint(0, 2**32, size=2, dtype=np.uint32)
            opt_state = optimizer.with_learning_rate(state.opt_state)
            state, loss = epoch.run(state._replace(key=order_key, opt_state=opt_state), *epoch.data)
            self.loss_ = loss = float(loss)
            self.n_iter_ += 1
            self.t_ += n_samples
            self.loss_curve_.append(loss)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            if self.early_stopping:
                score = self._validation_score(net, state.params, *validation)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                if self._update_no_improvement_count(score):
                    best = state
            else:
                self._update_no_improvement_count(loss)
            optimizer.iteration_ends(self.t_)
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                message = (
                    f"{what} did not improve more than tol={self.tol:f} for "
                    f"{self.n_iter_no_change} consecutive epochs."
                )
                if optimizer.trigger_stopping(message, self.verbose):
                    break
                self._no_improvement_count = 0
            if not incremental and self.n_iter_ == self.max_iter:
                _warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                    "the optimization hasn't converged yet.",
                    ConvergenceWarning,
                )
        return (best if self.early_stopping else state).params, state.opt_state

    def _update_no_improvement_count(self, value: float) -> bool:
        """scikit-learn's stopping rule after one epoch; returns whether ``value`` is a new best.

        ``value`` is the epoch's validation score (higher is better) with early stopping, else
        its training loss (lower is better). ``_no_improvement_count`` grows by one when it
        does not beat the best so far (``best_validation_score_`` or ``best_loss_``) by
        ``tol``, else restarts at 0; then the best is updated. A NaN restarts the count and is
        never a best, as in scikit-learn.
        """
        if self.early_stopping:
            stalled = value < self.best_validation_score_ + self.tol
            new_best = value > self.best_validation_score_
            if new_best:
                self.best_validation_score_ = value
        else:
            stalled = value > self.best_loss_ - self.tol
            new_best = value < self.best_loss_
            if new_best:
                self.best_loss_ = value
        self._no_improvement_count = self._no_improvement_count + 1 if stalled else 0
        return new_best

    def _fit_lbfgs(
        self, net: nn.MLP, X: Any, targets: np.ndarray, weights: np.ndarray
    ) -> nn.Params:
        """scipy's L-BFGS-B on the whole training set, from the current parameters.

        The objective is :func:`_compiled_objective` on the flat parameter vector: for dense
        ``X``, one call on the set (rows padded with weight 0 to a power of two); for sparse
        ``X``, one call per block of rows, each densified for the call. ``n_iter_`` and
        ``loss_`` are the solver's; a ConvergenceWarning says when it stopped short.
        """
        n, width, dtype = X.shape[0], net.sizes[0], X.dtype
        X = _pad_columns(X, width)
        rows = (
            _padded_rows(n)
            if not sp.issparse(X)
            else min(_padded_rows(n), _block_rows(width, dtype))
        )
        starts = range(0, n, rows)
        ys = [jnp.asarray(_pad_rows(targets[s : s + rows], rows)) for s in starts]
        ws = [jnp.asarray(_pad_rows(weights[s : s + rows], rows)) for s in starts]
        dense = (
            None
            if sp.issparse(X)
            else [jnp.asarray(_pad_rows(X[s : s + rows], rows)) for s in starts]
        )

        def chunks() -> Iterator[tuple[Array, Array, Array]]:
            for i, s in enumerate(starts):
                x = dense[i] if dense is not None else _pad_rows(X[s : s + rows], rows).toarray()
                yield x, ys[i], ws[i]

        total = float(np.sum(weights))
        inv_total = 1.0 / total if total > 0 else 0.0
        scales = [np.asarray(inv_total, dtype), np.asarray(0.5 * self.alpha * inv_total, dtype)]
        no_penalty = np.zeros((), dtype)
        objective = _compiled_objective(net)

        def value_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
            flat = jnp.asarray(flat, dtype)
            value, grad = 0.0, 0.0
            for i, (x, y, w) in enumerate(chunks()):
                v, g = objective(flat, x, y, w, scales[0], scales[1] if i == 0 else no_penalty)
                value, grad = value + v, grad + g
            return float(value), np.asarray(grad, np.float64)

        iterations = itertools.count(1)

        def report(intermediate_result: scipy.optimize.OptimizeResult) -> None:
            print(f"Iteration {next(iterations)}, loss = {intermediate_result.fun:.8f}")

        flat = np.asarray(_flatten(_pad_inputs(self.params_, width)), np.float64)
        result = scipy.optimize.minimize(
            value_and_grad,
            flat,
            method="L-BFGS-B",
            jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
            callback=report if self.verbose else None,
        )
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        if result.status != 0:
            _warn(
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                f"(status={result.status}): {result.message}. Increase max_iter (now "
                f"{self.max_iter}) or max_fun (now {self.max_fun}), or scale the data.",
                ConvergenceWarning,
            )
        return _unflatten(result.x.astype(dtype), net.sizes)

    # -- prediction

    def _outputs(self, X: Any, *, logits: bool = False) -> tuple[np.ndarray, np.dtype]:
        """The fitted net's outputs (its logits if ``logits``) on ``X``, and their dtype for
        the caller: that of ``X`` and the parameters together."""
        check_is_fitted(self)
        X = validate_data(
            self, X, reset=False, accept_sparse=("csr", "csc"), dtype=(np.float64, np.float32)
        )
        dtype = self.params_[0]["W"].dtype
        with jax.enable_x64(dtype == np.float64):
            out = _forward(
                self._net, self.params_, X.tocsr() if sp.issparse(X) else X, logits=logits
            )
        return out, np.result_type(X.dtype, dtype)

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices ``(in, out)`` per layer, as in scikit-learn (copies)."""
        return [layer["W"].copy() for layer in self.params_]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors ``(out,)`` per layer, as in scikit-learn (copies)."""
        return [layer["b"].copy() for layer in self.params_]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR and CSC, densified a mini-batch at a time
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, trained by fmlp's engine: softmax cross-entropy over
    the classes, or for multi-label targets a sigmoid and binary cross-entropy per label.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` (see the module
    docstring for the differences). Labels ``y`` (n_samples,) of any type are mapped to
    ``0..K-1``; the net has one softmax output per class. A 0/1 indicator matrix ``y``
    (n_samples, K) is multi-label: one sigmoid output per label (head
    ``binary_cross_entropy``), ``predict`` returns such a matrix (1 where a label's
    probability exceeds 1/2) and ``score`` is the subset accuracy (rows with every label right).

    Attributes:
      classes_: the class labels ``(K,)``, sorted; ``np.arange(K)`` for multi-label.
      params_: the fmlp parameter pytree (one ``{"W": (in, out), "b": (out,)}`` per layer), as
        host arrays in the dtype of the training ``X``.
      loss_: the last epoch's loss (lbfgs: the final objective value).
      loss_curve_: training loss per epoch; ``best_loss_`` its minimum (None with
        early stopping). Not set by lbfgs.
      validation_scores_, best_validation_score_: validation accuracy (subset accuracy for
        multi-label) per epoch and its best, with ``early_stopping=True`` (else None).
      n_iter_: epochs run by the last ``fit`` (counting all ``partial_fit`` calls since), or
        lbfgs's iterations.
      t_: training examples seen. n_layers_, n_outputs_ (= K), out_activation_ ("softmax", or
        "logistic" for multi-label).
      n_features_in_, feature_names_in_: as every scikit-learn estimator.
    """

    def _head(self) -> str:
        return "binary_cross_entropy" if self._multilabel else "cross_entropy"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on ``X`` (n_samples, n_features), dense or sparse, and labels ``y``.

        Args:
          X: features; the parameters take its dtype (float32, else float64).
          y: one label per sample ``(n_samples,)`` (binary or multiclass), or a 0/1
            indicator matrix ``(n_samples, n_labels)`` (multi-label; sparse is densified).
          sample_weight: optional non-negative weights ``(n_samples,)``.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> MLPClassifier:
        """One epoch over ``(X, y)``, continuing from the current parameters and optimizer.

        Only for the stochastic solvers (sgd, adam).

        Args:
          X: features (n_samples, n_features).
          y: labels (n_samples,), each one of ``classes``, or a 0/1 indicator matrix
            (n_samples, n_labels).
          classes: every class that will ever appear (for multi-label ``y``, the label
            indices ``np.arange(n_labels)``); required on the first call.
          sample_weight: optional non-negative weights ``(n_samples,)``.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _encode_targets(
        self, y: Any, *, first: bool, incremental: bool, classes: Any, dtype: np.dtype
    ) -> np.ndarray:
        """Class indices ``(n,)`` (int32), or for multi-label the indicator ``(n, K)`` in
        ``dtype``; sets ``classes_`` (and whether the model is multi-label) on a first call."""
        y = y.toarray() if sp.issparse(y) else y
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)  # one column is one label per sample
        check_classification_targets(y)
        multilabel = y.ndim == 2
        if multilabel and not np.isin(y, (0, 1)).all():
            raise ValueError(
                f"{type(self).__name__} takes one label per sample, y of shape (n_samples,), "
                f"or a multi-label indicator matrix of 0s and 1s (n_samples, n_labels); got y "
                f"of shape {y.shape} with values other than 0 and 1. Multi-output multiclass "
                "targets are not supported."
            )
        if classes is not None:
            classes = unique_labels(classes)
            if not first and not np.array_equal(self.classes_, classes):
                raise ValueError(
                    f"classes={classes.tolist()} differs from the classes of the fitted model "
                    f"{self.classes_.tolist()}."
                )
        if first:
            if incremental and classes is None:
                raise ValueError(
                    "classes must be passed on the first call to partial_fit: every label "
                    "that will ever appear, e.g. classes=np.unique(y_all)."
                )
            labels = np.arange(y.shape[1]) if multilabel else unique_labels(y)
            if multilabel and classes is not None and not np.array_equal(classes, labels):
                raise ValueError(
                    f"classes={classes.tolist()}: for a multi-label y of {y.shape[1]} labels, "
                    f"classes must be the label indices np.arange({y.shape[1]})."
                )
            self._multilabel = multilabel
            self.classes_ = labels if classes is None else classes
        elif multilabel != self._multilabel:
            given, fitted = "a multi-label indicator matrix", "one label per sample"
            raise ValueError(
                f"y is {given if multilabel else fitted}, but the model was fitted on "
                f"{fitted if multilabel else given}; refit from scratch instead."
            )
        elif not incremental and set(unique_labels(y)) != set(self.classes_):
            raise ValueError(  # scikit-learn's message
                "warm_start can only be used where `y` has the same classes as in the previous "
                f"call to fit. Previously got {self.classes_}, `y` has {unique_labels(y)}"
            )
        if multilabel:
            if y.shape[1] != len(self.classes_):
                raise ValueError(
                    f"y has {y.shape[1]} labels (columns), but the model was fitted on "
                    f"{len(self.classes_)}."
                )
            return np.asarray(y, dtype)
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(
                f"y holds labels {unknown.tolist()} that are not among the model's classes "
                f"{self.classes_.tolist()}."
            )
        return np.searchsorted(self.classes_, y).astype(np.int32)

    def _stratify(self, targets: np.ndarray) -> np.ndarray | None:
        # scikit-learn stratifies on its binarised labels only when they are one column: two
        # classes (not multi-label, and, as its code stands in 1.9, not more than two classes).
        if self._multilabel or len(self.classes_) != 2:
            return None
        return targets[:, None] == 1

    def _validation_score(self, net, params, X, y, sample_weight) -> float:
        if self._multilabel:
            predicted = _label_indicator(_forward(net, params, X))
        else:
            predicted = np.argmax(_forward(net, params, X, logits=True), axis=1)
        return float(accuracy_score(y, predicted, sample_weight=sample_weight))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, K)``, columns in the order of ``classes_``; for
        multi-label, each label's own probability (the rows need not sum to 1)."""
        proba, dtype = self._outputs(X)
        proba = proba.astype(dtype)
        if self._multilabel:
            return proba
        return proba / proba.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row ``(n_samples,)``, as labels from ``classes_``;
        for multi-label, the 0/1 indicator ``(n_samples, K)`` of :func:`_label_indicator`."""
        check_is_fitted(self)
        if self._multilabel:
            return _label_indicator(self.predict_proba(X))
        logits, _ = self._outputs(X, logits=True)
        return self.classes_[np.argmax(logits, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, trained by fmlp's engine: identity output and squared
    error, or (``loss="poisson"``) rates ``exp(s)`` and half the Poisson deviance.

    Parameters follow :class:`sklearn.neural_network.MLPRegressor` (see the module docstring
    for the differences). ``y`` may be 1-D (predictions are 1-D) or 2-D ``(n_samples,
    n_outputs)`` for several outputs (predictions keep that shape).

    Attributes:
      params_: the fmlp parameter pytree (one ``{"W": (in, out), "b": (out,)}`` per layer), as
        host arrays in the dtype of the training ``X``.
      loss_: the last epoch's loss (lbfgs: the final objective value).
      loss_curve_: training loss per epoch; ``best_loss_`` its minimum (None with
        early stopping). Not set by lbfgs.
      validation_scores_, best_validation_score_: validation R^2 per epoch and its best, with
        ``early_stopping=True`` (else None); NaN where the predictions were not finite.
      n_iter_: epochs run by the last ``fit`` (counting all ``partial_fit`` calls since), or
        lbfgs's iterations.
      t_: training examples seen. n_layers_, n_outputs_, out_activation_ ("identity" or "exp").
      n_features_in_, feature_names_in_: as every scikit-learn estimator.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions(set(LOSSES))],
    }

    def __init__(
        self,
        loss: str = "squared_error",
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 1e-3,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int | float = 10,
        max_fun: int = 15000,
    ) -> None:
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
        )
        self.loss = loss

    def _head(self) -> str:
        return LOSSES[self.loss]

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Train on ``X`` (n_samples, n_features), dense or sparse, and targets ``y``
        (n_samples[, n_outputs]).

        Args:
          X: features; the parameters take its dtype (float32, else float64).
          y: real targets, 1-D or 2-D (non-negative for ``loss="poisson"``).
          sample_weight: optional non-negative weights ``(n_samples,)``.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``(X, y)``, continuing from the current parameters and optimizer.

        Only for the stochastic solvers (sgd, adam).

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def _encode_targets(
        self, y: np.ndarray, *, first: bool, incremental: bool, classes: Any, dtype: np.dtype
    ) -> np.ndarray:
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError(
                f"loss='poisson' needs non-negative targets (counts or rates), got a minimum "
                f"of {np.min(y)}."
            )
        self._y_ndim = y.ndim  # predictions take the shape of the last training targets
        targets = np.asarray(y, dtype)
        return targets.reshape(len(targets), -1)

    def _stratify(self, targets: np.ndarray) -> None:
        return None

    def _validation_score(self, net, params, X, y, sample_weight) -> float:
        pred = _forward(net, params, X)
        if not np.isfinite(pred).all():
            return np.nan  # a diverging fit, as scikit-learn scores it
        return float(r2_score(y, pred, sample_weight=sample_weight))

    def predict(self, X: Any) -> np.ndarray:
        """Predictions ``(n_samples,)`` for 1-D training targets, else ``(n_samples, outputs)``."""
        out, dtype = self._outputs(X)
        out = out.astype(dtype)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
