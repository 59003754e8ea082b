"""scikit-learn estimators over fmlp: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take scikit-learn's ``MLPClassifier``/``MLPRegressor`` parameter names and follow its
conventions (``fit``/``predict``/``score``/``partial_fit``, ``get_params``/``set_params``,
``clone``, pipelines, grid search; parameters declared in ``_parameter_constraints`` and
checked by scikit-learn's own validation), but the model is fmlp's: one :class:`fmlp.nn.MLP`
per fit, whose head (:data:`fmlp.nn.HEADS`: ``cross_entropy`` for the classifier,
``squared_error`` for the regressor) gives the loss as a gate
(:func:`fmlp.gates.softmax_cross_entropy` or :func:`fmlp.gates.squared_error`); the gradients
come from fmlp's engine (:func:`fmlp.value_and_grad`) and the optimizer is optax.

Training. One epoch is the project's compiled epoch, :func:`fmlp.train.make_epoch`: one jitted
``lax.scan`` over fixed-shape mini-batches from :func:`fmlp.data.batch_indices` (the last
batch padded and masked), in an order drawn from a key the estimator draws on the host from
``random_state``. The compiled epoch is cached per static configuration (the net, solver,
Nesterov, rows, batch size, shuffle, how batches are gathered) and array shapes, so a refit on
data of the same shape does not recompile; the hyperparameters ``alpha``,
``learning_rate_init``, ``momentum``, ``beta_1``, ``beta_2`` and ``epsilon`` are run-time
values, so a grid search over them compiles once. To share programs further, the inputs are
padded with zero columns to a power of two (at least 8; the matching rows of the first ``W``
are zero, get zero gradients and stay zero), and a data set that fits in one batch
(``batch_size >= n_samples``, e.g. ``"auto"`` with up to 200 rows) is padded with weight-0
rows to a power of two (at least 64) and not shuffled, since one batch's order does not
change its gradient. Neither padding changes the result beyond float32 round-off.

The loss of a mini-batch ``B`` with sample weights ``w`` is scikit-learn's::

    L = (sum_{i in B} w_i l_i  +  alpha / 2 * sum_layers ||W||^2) / sum_{i in B} w_i

with ``l_i`` the cross-entropy of example ``i`` (classifier), or ``1/2 sum_j (o_ij - t_ij)^2``
(regressor; scikit-learn reports the mean over outputs instead of the sum, but its gradient
is this one). Biases are not penalised. A batch whose weights sum to 0 is skipped. An epoch's
loss (``loss_curve_``) is the weight-averaged batch loss, so rows of weight 0 change neither
the gradients nor the curve, and the stopping rule is scikit-learn's (``tol``,
``n_iter_no_change``, ``early_stopping`` on a stratified ``validation_fraction``).

Differences from scikit-learn: parameters are float32 (whatever X's dtype); the classifier
always uses a softmax output with one unit per class (also for two classes, where
scikit-learn uses one logistic unit) and does not support multi-label targets; solvers are
``adam`` and ``sgd`` (no ``lbfgs``) with a constant learning rate (no ``learning_rate``,
``power_t``, ``max_fun``); sparse X is rejected; ``partial_fit`` checks the parameters on
every call (scikit-learn only on the first), since every call reads them. The initialisation
is scikit-learn's (uniform weights and biases drawn from ``random_state``).

Example:
  >>> import numpy as np
  >>> from fmlp.sklearn import MLPClassifier
  >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 10)
  >>> y = np.array(["no", "yes", "yes", "no"] * 10)
  >>> clf = MLPClassifier(hidden_layer_sizes=(16,), activation="tanh", learning_rate_init=0.05,
  ...                     max_iter=300, random_state=0).fit(X, y)
  >>> clf.predict([[0.0, 1.0], [1.0, 1.0]]).tolist()
  ['yes', 'no']
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    check_random_state,
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

SOLVERS: tuple[str, ...] = ("adam", "sgd")

_PREDICT_CHUNK = 256  # rows per compiled forward call: one program for every number of rows


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


_HYPER_DEFAULTS = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "momentum": 0.9}


def _optimizer(solver: str, nesterov: bool, **hyper: float) -> optax.GradientTransformation:
    """adam or sgd with their hyperparameters held in the optimizer state, as float32.

    ``optax.inject_hyperparams`` keeps the numbers in ``opt_state`` rather than in the
    program, so one compiled epoch serves every learning rate, momentum, beta and epsilon:
    ``update`` reads them from the state, whatever values the transformation was built with.
    """
    hyper = _HYPER_DEFAULTS | hyper
    if solver == "adam":
        adam = optax.inject_hyperparams(optax.adam, hyperparam_dtype=jnp.float32)
        return adam(**{k: hyper[k] for k in ("learning_rate", "b1", "b2", "eps")})
    sgd = optax.inject_hyperparams(optax.sgd, static_args="nesterov", hyperparam_dtype=jnp.float32)
    return sgd(hyper["learning_rate"], hyper["momentum"], nesterov=nesterov)


def _batch_loss(
    net: nn.MLP, params: nn.Params, x: Array, y: Array, w: Array, alpha: Array
) -> Array:
    """scikit-learn's weighted mini-batch loss plus its L2 penalty, written with gates.

    Args:
      net: the model; its head's per-example loss is ``l`` (:meth:`fmlp.nn.MLP.per_example_loss`).
      params: fmlp MLP parameters.
      x: inputs ``(B, in)``.
      y: integer class ids ``(B,)`` (classifier) or targets ``(B, out)`` (regressor).
      w: per-example weights ``(B,)``: sample weight times the padding mask.
      alpha: L2 strength, float32 ``()``.

    Returns:
      ``sum(w l) / sum(w) + alpha / 2 * sum ||W||^2 / sum(w)``; 0 when ``sum(w) == 0``.
    """
    per_example = net.per_example_loss(params, x, y)
    # w and alpha are constants of the differentiated function: plain jnp is fine for them.
    total = jnp.sum(w)
    inv_total = jnp.where(total > 0, 1.0 / jnp.maximum(total, 1e-30), 0.0)
    data_loss = gates.multiply(gates.sum(gates.multiply(per_example, w)), inv_total)
    penalty = gates.sum(gates.square(params[0]["W"]))
    for layer in params[1:]:
        penalty = gates.add(penalty, gates.sum(gates.square(layer["W"])))
    return gates.add(data_loss, gates.multiply(penalty, 0.5 * alpha * inv_total))


@functools.lru_cache(maxsize=128)
def _compiled_epoch(cfg: _EpochConfig) -> _EpochFn:
    """The project's compiled epoch (:func:`fmlp.train.make_epoch`) for one configuration.

    ``epoch(state, x, y, w, alpha) -> (state, loss)``: one ``lax.scan`` over
    ``ceil(n / batch_size)`` mini-batches of :func:`_batch_loss`, in the order drawn from
    ``state.key``. A batch whose weights sum to 0 leaves the parameters and the optimizer
    state untouched; ``loss`` is the weight-averaged batch loss. The hyperparameter values
    come from ``state.opt_state``. The input state is not donated: the estimator keeps its
    fitted ``params_`` until a fit succeeds, and early stopping keeps the best epoch's params.
    """
    return train.make_epoch(
        functools.partial(_batch_loss, cfg.net),
        _optimizer(cfg.solver, cfg.nesterov),
        n=cfg.n,
        batch_size=cfg.batch_size,
        shuffle=cfg.shuffle,
        skip_empty=True,
        permute=cfg.permute,
        donate=False,
    )


@functools.partial(jax.jit, static_argnames=("net", "logits"))
def _forward_chunks(params: nn.Params, x: Array, *, net: nn.MLP, logits: bool) -> Array:
    # x: (chunks, _PREDICT_CHUNK, in); every row goes through the same fixed-size program,
    # so a row's output does not depend on how many rows were predicted with it.
    forward = net.logits if logits else net.apply
    return jax.lax.map(lambda xb: forward(params, xb), x)


def _forward(net: nn.MLP, params: nn.Params, X: np.ndarray, *, logits: bool = False) -> np.ndarray:
    """``net.apply`` (``net.logits`` if ``logits``) on host rows ``X`` (n, in): float32 (n, out).

    The rows go in fixed-size chunks (a power of two of them) and the columns are padded to
    the net's input width like the training data, so one program serves every number of rows
    and every number of features that pads to the same width.
    """
    (n, n_features), width = X.shape, net.sizes[0]
    chunks = -(-n // _PREDICT_CHUNK)
    chunks = 1 << (chunks - 1).bit_length()  # a power of two: few distinct programs
    padded = np.zeros((chunks * _PREDICT_CHUNK, width), np.float32)
    padded[:n, :n_features] = X
    out = _forward_chunks(
        _pad_inputs(params, width),
        jnp.asarray(padded.reshape(chunks, _PREDICT_CHUNK, width)),
        net=net,
        logits=logits,
    )
    return np.asarray(out).reshape(chunks * _PREDICT_CHUNK, -1)[:n]


def _init_params(rng: np.random.RandomState, sizes: tuple[int, ...], activation: str) -> nn.Params:
    """scikit-learn's initialisation, drawn on the host from ``random_state``.

    Weights and biases of each layer are uniform in ``+-sqrt(6 / (fan_in + fan_out))``
    (``sqrt(2 / ...)`` for the logistic activation), in scikit-learn's order of draws; the
    result is an fmlp parameter list in float32.
    """
    factor = 2.0 if activation == "logistic" else 6.0
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = np.sqrt(factor / (fan_in + fan_out))
        W = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
        b = rng.uniform(-bound, bound, fan_out).astype(np.float32)
        params.append({"W": jnp.asarray(W), "b": jnp.asarray(b)})
    return params


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
    W = jnp.concatenate([W, jnp.zeros((width - W.shape[0], W.shape[1]), W.dtype)])
    return [{"W": W, "b": params[0]["b"]}, *params[1:]]


def _pad_columns(a: np.ndarray, width: int) -> np.ndarray:
    """``a`` (n, d) with zero columns appended up to ``width`` columns."""
    return np.concatenate([a, np.zeros((len(a), width - a.shape[1]), a.dtype)], axis=1)


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``rows`` rows."""
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)])


# ----------------------------------------------------------------------------- the estimators


class _PreparedEpoch(NamedTuple):
    """A fit's compiled epoch and what it runs on (:meth:`_BaseMLP._prepare_epoch`)."""

    run: _EpochFn  # _compiled_epoch(cfg)
    state: train.TrainState  # the initial state; params padded to the net's input width
    data: tuple[Array, ...]  # (x, y, w, alpha) on the device: run's other arguments


class _BaseMLP(BaseEstimator):
    """The fit loop shared by the classifier and the regressor."""

    _loss: str  # the net's head, a name in fmlp.nn.HEADS: "cross_entropy" or "squared_error"

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions(set(SOLVERS))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],  # both parts non-empty
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
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
        learning_rate_init: float = 1e-3,
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
        n_iter_no_change: int = 10,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
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

    # -- pieces the subclasses provide

    def _encode_targets(
        self, y: np.ndarray, *, first: bool, incremental: bool, classes: Any
    ) -> np.ndarray:
        raise NotImplementedError

    def _validation_score(
        self,
        net: nn.MLP,
        params: nn.Params,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None,
    ) -> float:
        raise NotImplementedError

    # -- validation

    def _validate_params(self) -> None:
        """scikit-learn's check of every parameter against :attr:`_parameter_constraints`.

        ``solver='lbfgs'``, scikit-learn's third solver, gets a message saying fmlp lacks it.
        """
        if self.solver == "lbfgs":
            raise InvalidParameterError(
                f"The 'solver' parameter of {type(self).__name__} must be 'adam' or 'sgd': "
                "fmlp has no lbfgs. Got 'lbfgs' instead."
            )
        super()._validate_params()

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
            warnings.warn(
                f"batch_size={self.batch_size} is larger than the {n} training examples; "
                f"using {n}.",
                UserWarning,
                stacklevel=6,  # fit's caller: past here, _prepare_epoch, _fit, _fit_context, fit
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
        is_regressor = nn.HEADS[self._loss].task == "regression"
        y_shape = getattr(y, "shape", ())
        if not is_regressor and len(y_shape) == 2 and y_shape[1] > 1:
            raise ValueError(
                f"{type(self).__name__} takes one label per sample (binary or multiclass), got "
                f"y of shape {y_shape}: multi-label and multi-output targets are not supported."
            )
        X, y = validate_data(
            self,
            X,
            y,
            reset=first,
            dtype=(np.float64, np.float32),
            multi_output=is_regressor,
            y_numeric=is_regressor,
        )
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        targets = self._encode_targets(y, first=first, incremental=incremental, classes=classes)
        n_features = X.shape[1]
        n_outputs = len(self.classes_) if not is_regressor else targets.shape[1]
        sizes = (n_features, *hidden, n_outputs)
        if fitted and not first:
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
            loss=self._loss,
        )

        rng = check_random_state(self.random_state)
        if first:
            self.params_ = _init_params(rng, sizes, self.activation)
            self.n_iter_ = 0
            self.t_ = 0
            self.n_layers_ = len(sizes)
            self.n_outputs_ = n_outputs
            self.out_activation_ = net.output
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
        if not incremental or first:  # a fit (fresh or warm) draws its own batch orders
            self._order_rng = np.random.RandomState(rng.randint(np.iinfo(np.int32).max))

        validation = None
        if self.early_stopping:
            X, targets, sample_weight, *validation = self._split(X, targets, sample_weight, rng)
        weights = np.ones(len(X)) if sample_weight is None else sample_weight
        epoch = self._prepare_epoch(net, X, targets, weights, incremental=incremental)
        params, self._opt_state = self._epoch_loop(
            net, epoch, validation, n_samples=len(X), incremental=incremental
        )
        # The fitted model; _opt_state's first moments stay padded like the programs' params.
        self.params_ = [{"W": params[0]["W"][:n_features], "b": params[0]["b"]}, *params[1:]]
        self._net = net
        return self

    def _optimizer_state(self, params: nn.Params, *, incremental: bool) -> Any:
        """A fresh optimizer state, or (partial_fit) the previous one with today's settings."""
        hyper = {"learning_rate": self.learning_rate_init}
        if self.solver == "adam":
            hyper |= {"b1": self.beta_1, "b2": self.beta_2, "eps": self.epsilon}
        else:
            hyper["momentum"] = self.momentum
        kind = (self.solver, bool(self.nesterovs_momentum))
        if incremental and getattr(self, "_opt_kind", None) == kind:
            # partial_fit keeps the optimizer's moments; the hyperparameters may have changed.
            hyperparams = dict(self._opt_state.hyperparams)  # also optax's own, e.g. eps_root
            hyperparams |= {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}
            return self._opt_state._replace(hyperparams=hyperparams)
        self._opt_kind = kind
        return _optimizer(*kind, **hyper).init(params)

    def _split(self, X, targets, sample_weight, rng):
        classification = nn.HEADS[self._loss].task == "classification"
        stratify = targets if classification else None
        arrays = [X, targets] + ([] if sample_weight is None else [sample_weight])
        parts = train_test_split(
            *arrays, random_state=rng, test_size=self.validation_fraction, stratify=stratify
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
        self,
        net: nn.MLP,
        X: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        *,
        incremental: bool,
    ) -> _PreparedEpoch:
        """The compiled epoch for this fit (cached), its data on the device, the first state.

        ``X`` (n, features) is padded with zero columns to ``net``'s input width and
        ``self.params_`` to match; ``targets`` (n,) or (n, outputs) and ``weights`` (n,) go
        along. The state's key is a placeholder: each epoch gets one drawn on the host.
        """
        n = len(X)
        batch_size = self._batch_size(n)
        width = net.sizes[0]
        X = _pad_columns(np.asarray(X, np.float32), width)
        weights = np.asarray(weights, np.float32)
        shuffle = bool(self.shuffle)
        if batch_size == n:
            # One batch per epoch: its order does not change the gradient, so skip the shuffle,
            # and pad the rows with weight-0 examples to a power of two, so that data sets of
            # similar size share one compiled epoch (the weighted mean is unchanged).
            n = batch_size = _padded_rows(n)
            X, targets, weights = (_pad_rows(a, n) for a in (X, targets, weights))
            shuffle = False
        cfg = _EpochConfig(
            net=net,
            n=n,
            batch_size=batch_size,
            shuffle=shuffle,
            permute=train.use_permuted_copy("auto", net, X, targets, batch_size=batch_size),
            solver=self.solver,
            nesterov=bool(self.nesterovs_momentum),
        )
        params = _pad_inputs(self.params_, width)
        state = train.TrainState(
            params=params,
            opt_state=self._optimizer_state(params, incremental=incremental),
            step=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            key=np.zeros(2, np.uint32),  # replaced by each epoch's own
        )
        x, y, w = (jnp.asarray(a) for a in (X, targets, weights))
        alpha = jnp.asarray(self.alpha, jnp.float32)
        return _PreparedEpoch(_compiled_epoch(cfg), state, (x, y, w, alpha))

    def _epoch_loop(
        self,
        net: nn.MLP,
        epoch: _PreparedEpoch,
        validation: list[np.ndarray | None] | None,
        *,
        n_samples: int,
        incremental: bool,
    ) -> tuple[nn.Params, optax.OptState]:
        """Epochs until ``max_iter`` (one for partial_fit) or scikit-learn's stopping rule.

        Appends to ``loss_curve_`` (and ``validation_scores_``, computed on ``validation``
        = ``[X_val, y_val, sample_weight_val]`` with early stopping, else None) and counts
        ``n_iter_`` and ``t_`` (``n_samples`` training rows per epoch).

        Returns:
          The params to keep, padded like ``epoch.state``'s (with early stopping, those of the
          best validation score), and the last optimizer state.
        """
        state = best = epoch.state
        self.n_iter_ = self.n_iter_ if incremental else 0
        for _ in range(1 if incremental else self.max_iter):
            # A raw PRNG key drawn on the host: no device round trip to split keys per epoch.
            order_key = self._order_rng.randint(0, 2**32, size=2, dtype=np.uint32)
            state, loss = epoch.run(state._replace(key=order_key), *epoch.data)
            loss = float(loss)
            if not np.isfinite(loss):
                raise ValueError(
                    f"The training loss became {loss} at iteration {self.n_iter_ + 1}; "
                    "scale the inputs (e.g. StandardScaler) or lower learning_rate_init."
                )
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
            if self._no_improvement_count > self.n_iter_no_change:
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                if not incremental:
                    break
                self._no_improvement_count = 0
            if not incremental and self.n_iter_ == self.max_iter:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                    "the optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=5,  # fit's caller: past here, _fit, _fit_context, fit
                )
        return (best if self.early_stopping else state).params, state.opt_state

    def _update_no_improvement_count(self, value: float) -> bool:
        """scikit-learn's stopping rule after one epoch; returns whether ``value`` is a new best.

        ``value`` is the epoch's validation score (higher is better) with early stopping, else
        its training loss (lower is better). ``_no_improvement_count`` grows by one when it
        does not beat the best so far (``best_validation_score_`` or ``best_loss_``) by
        ``tol``, else restarts at 0; then the best is updated.
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

    # -- prediction

    def _outputs(self, X: Any, *, logits: bool = False) -> tuple[np.ndarray, np.dtype]:
        """The fitted net's outputs (its logits if ``logits``) on ``X``, and ``X``'s dtype."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return _forward(self._net, self.params_, X, logits=logits), X.dtype

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices ``(in, out)`` per layer, as in scikit-learn (read-only copies)."""
        return [np.asarray(layer["W"]) for layer in self.params_]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors ``(out,)`` per layer, as in scikit-learn (read-only copies)."""
        return [np.asarray(layer["b"]) for layer in self.params_]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False  # X goes to the device as a dense float32 array
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: softmax cross-entropy, trained by fmlp's engine.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` (see the module
    docstring for the differences). Labels of any type are mapped to ``0..K-1``; the net has
    one softmax output per class.

    Attributes:
      classes_: the class labels ``(K,)``, sorted.
      params_: the fmlp parameter pytree (one ``{"W": (in, out), "b": (out,)}`` per layer).
      loss_curve_: training loss per epoch; ``best_loss_`` its minimum (None with
        early stopping).
      validation_scores_, best_validation_score_: validation accuracy per epoch and its best,
        with ``early_stopping=True`` (else None).
      n_iter_: epochs run by the last ``fit`` (counting all ``partial_fit`` calls since).
      t_: training examples seen. n_layers_, n_outputs_ (= K), out_activation_ ("softmax").
      n_features_in_, feature_names_in_: as every scikit-learn estimator.
    """

    _loss = "cross_entropy"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on ``X`` (n_samples, n_features) and labels ``y`` (n_samples,).

        Args:
          X: features; converted to float32 for the net.
          y: one label per sample (binary or multiclass; not multi-label).
          sample_weight: optional non-negative weights ``(n_samples,)``.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight)

    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> MLPClassifier:
        """One epoch over ``(X, y)``, continuing from the current parameters and optimizer.

        Args:
          X: features (n_samples, n_features).
          y: labels (n_samples,), each one of ``classes``.
          classes: every class that will ever appear; required on the first call.
          sample_weight: optional non-negative weights ``(n_samples,)``.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _encode_targets(
        self, y: np.ndarray, *, first: bool, incremental: bool, classes: Any
    ) -> np.ndarray:
        check_classification_targets(y)
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
            self.classes_ = unique_labels(y) if classes is None else classes
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(
                f"y holds labels {unknown.tolist()} that are not among the model's classes "
                f"{self.classes_.tolist()}."
            )
        return np.searchsorted(self.classes_, y).astype(np.int32)

    def _validation_score(self, net, params, X, y, sample_weight) -> float:
        logits = _forward(net, params, X, logits=True)
        codes = np.argmax(logits, axis=1)
        return float(accuracy_score(y, codes, sample_weight=sample_weight))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n_samples, K)``, columns in the order of ``classes_``."""
        proba, dtype = self._outputs(X)
        proba = proba.astype(dtype)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row ``(n_samples,)``, as labels from ``classes_``."""
        logits, _ = self._outputs(X, logits=True)
        return self.classes_[np.argmax(logits, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        tags.target_tags.multi_output = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: identity output, squared error, trained by fmlp's engine.

    Parameters follow :class:`sklearn.neural_network.MLPRegressor` (see the module docstring
    for the differences). ``y`` may be 1-D (predictions are 1-D) or 2-D ``(n_samples,
    n_outputs)`` for several outputs (predictions keep that shape).

    Attributes:
      params_: the fmlp parameter pytree (one ``{"W": (in, out), "b": (out,)}`` per layer).
      loss_curve_: training loss per epoch; ``best_loss_`` its minimum (None with
        early stopping).
      validation_scores_, best_validation_score_: validation R^2 per epoch and its best, with
        ``early_stopping=True`` (else None).
      n_iter_: epochs run by the last ``fit`` (counting all ``partial_fit`` calls since).
      t_: training examples seen. n_layers_, n_outputs_, out_activation_ ("identity").
      n_features_in_, feature_names_in_: as every scikit-learn estimator.
    """

    _loss = "squared_error"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Train on ``X`` (n_samples, n_features) and targets ``y`` (n_samples[, n_outputs]).

        Args:
          X: features; converted to float32 for the net.
          y: real targets, 1-D or 2-D.
          sample_weight: optional non-negative weights ``(n_samples,)``.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight)

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``(X, y)``, continuing from the current parameters and optimizer.

        Returns:
          self.
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def _encode_targets(
        self, y: np.ndarray, *, first: bool, incremental: bool, classes: Any
    ) -> np.ndarray:
        self._y_ndim = y.ndim  # predictions take the shape of the last training targets
        targets = np.asarray(y, np.float32)
        return targets.reshape(len(targets), -1)

    def _validation_score(self, net, params, X, y, sample_weight) -> float:
        pred = _forward(net, params, X)
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
