"""The gate table: every differentiable operation fmlp knows, with its hand-written VJP.

A gate is the lecture's PlusGate/StarGate made concrete: a pure ``forward`` in ``jax.numpy``,
a ``vjp`` that maps the cotangent arriving from the right to one cotangent per input,
``samples`` that the checkers in :mod:`fmlp.testing` use to verify the VJP against
``jax.vjp`` and finite differences, and the ``symbol`` :func:`fmlp.viz.graph` draws. Adding a
gate means adding one :func:`register` call here (or in user code); nothing else changes.
:class:`Gate`, :data:`REGISTRY`, :func:`register` and :func:`unregister` live in
:mod:`fmlp.engine` and are re-exported here.

VJP convention: ``vjp(g, out, *inputs, **params)`` receives the cotangent ``g`` (shape of
``out``), the forward output and the forward inputs, and returns a tuple with one entry per
input. An elementwise gate may return a cotangent in the broadcast output shape: the engine
sums it back to the input's shape in one place (:func:`fmlp.engine.unbroadcast`). ``None``
means "no cotangent" (integer labels, shapes).

Calling a gate on plain arrays or JAX tracers only runs ``forward``, so the same model code
is differentiable by :func:`jax.grad` (our oracle) and by :func:`fmlp.grad`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmlp import engine
from fmlp.engine import REGISTRY as REGISTRY
from fmlp.engine import Gate as Gate
from fmlp.engine import Sample as Sample
from fmlp.engine import SampleFn as SampleFn
from fmlp.engine import register as register
from fmlp.engine import unregister as unregister

Array = jax.Array


def __getattr__(name: str) -> Gate:
    """``fmlp.gates.<name>`` for a registered gate not defined in this file, e.g. a user's."""
    if name in REGISTRY:
        return REGISTRY[name]
    raise AttributeError(f"module {__name__!r} has no attribute or gate {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *REGISTRY})


# ----------------------------------------------------------------------------- samples
# Shared shape sets, so every gate of a family is checked on the same cases: scalar, vector,
# matrix, batch 1 and batch 128, and (for binary gates) both broadcasting forms of a bias add.

_UNARY_SHAPES = [(), (3,), (4, 3), (1, 3), (128, 3)]
_BINARY_SHAPES = [
    ((), ()),
    ((3,), (3,)),
    ((4, 3), (4, 3)),
    ((4, 3), (3,)),
    ((4, 3), (1, 3)),
    ((3,), (4, 3)),
    ((1, 3), (1, 3)),
    ((128, 3), (3,)),
]
_ROW_SHAPES = [(5,), (1, 5), (4, 5), (128, 5)]


def sample_rng(key: Array) -> np.random.Generator:
    """A numpy generator seeded from a JAX key, for sample inputs.

    Drawing samples on the host keeps the checkers from compiling a random-number program
    for every shape they try.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _normal(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, low: float | None = None
) -> Array:
    x = rng.standard_normal(shape)
    # Keep samples away from kinks (relu at 0) and outside domains (log below 0).
    x = np.abs(x) + low if low is not None else np.where(np.abs(x) < 0.05, 0.5, x)
    return jnp.asarray(x.astype(jnp.dtype(dtype)))


def _unary_samples(low: float | None = None, **params: Any) -> SampleFn:
    def samples(key: Array, dtype: Any) -> list[Sample]:
        rng = sample_rng(key)
        return [Sample((_normal(rng, s, dtype, low),), params) for s in _UNARY_SHAPES]

    return samples


def _binary_samples(low: float | None = None) -> SampleFn:
    def samples(key: Array, dtype: Any) -> list[Sample]:
        rng = sample_rng(key)
        return [
            Sample((_normal(rng, sx, dtype), _normal(rng, sy, dtype, low)))
            for sx, sy in _BINARY_SHAPES
        ]

    return samples


def _reduction_samples(key: Array, dtype: Any) -> list[Sample]:
    cases = [((), None), ((3,), None), ((4, 3), None), ((4, 3), 0), ((4, 3), -1),
             ((2, 4, 3), (0, 2)), ((128, 3), 0), ((1, 3), 1)]  # fmt: skip
    rng = sample_rng(key)
    return [Sample((_normal(rng, s, dtype),), {"axis": a}) for s, a in cases]


def _row_samples(key: Array, dtype: Any) -> list[Sample]:
    rng = sample_rng(key)
    rows = [Sample((3.0 * _normal(rng, s, dtype),)) for s in _ROW_SHAPES]
    extreme = jnp.array([[1e4, -1e4, 0.0, 2.0], [0.0, 0.0, 0.0, 1e4]], dtype)
    return [*rows, Sample((extreme,)), Sample((_normal(rng, (4, 5), dtype),), {"axis": 0})]


def _matmul_samples(key: Array, dtype: Any) -> list[Sample]:
    cases = [((4, 3), (3, 2)), ((3,), (3, 2)), ((1, 3), (3, 2)), ((128, 3), (3, 5)),
             ((2, 4, 3), (3, 2)), ((4, 3), (3,)), ((3,), (3,))]  # fmt: skip
    rng = sample_rng(key)
    return [Sample((_normal(rng, sx, dtype), _normal(rng, sw, dtype))) for sx, sw in cases]


def _loss_samples(key: Array, dtype: Any) -> list[Sample]:
    """(outputs, targets) pairs: integer labels, one-hot rows and soft probability rows."""
    rng = sample_rng(key)
    out = []
    for batch in [(), (1,), (128,)]:
        logits = 2.0 * _normal(rng, (*batch, 4), dtype)
        labels = rng.integers(0, 4, batch).astype(np.int32)
        scores = np.exp(rng.standard_normal((*batch, 4)))
        probs = jnp.asarray((scores / scores.sum(-1, keepdims=True)).astype(jnp.dtype(dtype)))
        one_hot = jnp.asarray(np.eye(4, dtype=jnp.dtype(dtype))[labels])
        out += [
            Sample((logits, jnp.asarray(labels))),
            Sample((logits, one_hot)),
            Sample((logits, probs)),
        ]
    return out


def _transpose_samples(key: Array, dtype: Any) -> list[Sample]:
    rng = sample_rng(key)
    return [Sample((_normal(rng, s, dtype),)) for s in [(), (3,), (4, 3), (1, 3), (2, 4, 3)]]


def _astype_samples(key: Array, dtype: Any) -> list[Sample]:
    # Casts up to float64 only: the float64 finite-difference check cannot see through a
    # rounding cast; down-casts (bfloat16) are checked against jax.vjp in the test suite.
    rng = sample_rng(key)
    return [Sample((_normal(rng, s, dtype),), {"dtype": "float64"}) for s in [(), (3,), (4, 3)]]


def _regression_samples(key: Array, dtype: Any) -> list[Sample]:
    cases = [((), ()), ((3,), (3,)), ((4, 3), (4, 3)), ((1, 2), (1, 2)), ((128, 3), (128, 3)),
             ((4, 3), (3,))]  # fmt: skip
    rng = sample_rng(key)
    return [Sample((_normal(rng, so, dtype), _normal(rng, st, dtype))) for so, st in cases]


# ----------------------------------------------------------------------------- helpers


def _broadcast(*xs: Any) -> list[Array]:
    """Explicit broadcasting, so that elementwise gates allow it under strict rank promotion."""
    return jnp.broadcast_arrays(*xs)


def _expand_reduced(g: Array, shape: tuple[int, ...], axis: int | Sequence[int] | None) -> Array:
    """Broadcast the cotangent of a reduction back over the reduced axes."""
    if axis is None:
        return jnp.broadcast_to(g, shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return jnp.broadcast_to(jnp.expand_dims(g, [a % len(shape) for a in axes]), shape)


def _reduced_count(shape: tuple[int, ...], axis: int | Sequence[int] | None) -> int:
    if axis is None:
        return math.prod(shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return math.prod(shape[a] for a in axes)


def _targets(labels: Array, logits: Array) -> Array:
    """Integer class ids (...,) become one-hot rows (..., K); probability rows pass through."""
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError(
            f"softmax_cross_entropy: probability targets must have the logits' shape "
            f"{logits.shape}, got {labels.shape}; pass integer class ids of shape "
            f"{logits.shape[:-1]} or rows of shape {logits.shape}."
        )
    return labels


def _check_labels(logits: Array, labels: Array) -> None:
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"softmax_cross_entropy: integer labels must have shape {logits.shape[:-1]} "
            f"(one class id per row of logits {logits.shape}), got {labels.shape}."
        )


def _matmul_forward(x: Array, w: Array) -> Array:
    if x.ndim < 1 or w.ndim not in (1, 2) or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"matmul: expected x of shape (..., n) and W of shape (n, m) or (n,), "
            f"got x {x.shape} and W {w.shape}."
        )
    return jnp.matmul(x, w)


def _matmul_vjp(g: Array, out: Array, x: Array, w: Array) -> tuple[Array, Array]:
    # out = x W:  dx = g W^T,  dW = x^T g  (leading batch dims of x folded into rows)
    n = x.shape[-1]
    if w.ndim == 1:
        dx = jnp.multiply(*_broadcast(g[..., None], w))
        return dx, jnp.reshape(x, (-1, n)).T @ jnp.reshape(g, (-1,))
    m = w.shape[1]
    return g @ w.T, jnp.reshape(x, (-1, n)).T @ jnp.reshape(g, (-1, m))


def _softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    _check_labels(logits, labels)
    return -jnp.sum(_targets(labels, logits) * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _softmax_cross_entropy_vjp(
    g: Array, out: Array, logits: Array, labels: Array
) -> tuple[Array, Array | None]:
    # l = -sum_k t_k log p_k:  dl/dz = p * sum(t) - t  (= p - t for one-hot t),  dl/dt = -log p
    t = _targets(labels, logits)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    g = jnp.expand_dims(g, -1)
    d_logits = g * (jnp.exp(log_p) * jnp.sum(t, axis=-1, keepdims=True) - t)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return d_logits, None
    return d_logits, -g * log_p


def _squared_error(outputs: Array, targets: Array) -> Array:
    o, t = _broadcast(outputs, targets)
    return 0.5 * jnp.sum(jnp.square(o - t), axis=-1) if o.ndim else 0.5 * jnp.square(o - t)


def _squared_error_vjp(g: Array, out: Array, outputs: Array, targets: Array):
    # E = 1/2 sum_j (o_j - t_j)^2:  dE/do = o - t,  dE/dt = -(o - t)
    o, t = _broadcast(outputs, targets)
    d = (jnp.expand_dims(g, -1) if o.ndim else g) * (o - t)
    return d, -d


def _mean_squared_error_vjp(g: Array, out: Array, outputs: Array, targets: Array):
    # E = mean((o - t)^2):  dE/do = 2 (o - t) / N,  dE/dt = -dE/do
    o, t = _broadcast(outputs, targets)
    d = g * 2.0 * (o - t) / max(o.size, 1)
    return d, -d


def _multiply_vjp(g: Array, out: Array, x: Array, y: Array) -> tuple[Array, Array]:
    # d(x y) = (y, x): the lecture's StarGate
    x, y = _broadcast(x, y)
    return g * y, g * x


def _divide_vjp(g: Array, out: Array, x: Array, y: Array) -> tuple[Array, Array]:
    # d(x / y) = (1 / y, -x / y^2)
    _, y = _broadcast(x, y)
    return g / y, -g * out / y


def _relu_forward(x: Array) -> Array:
    return jnp.maximum(x, jnp.zeros_like(x))


def _leaky_relu_forward(x: Array, negative_slope: float = 0.01) -> Array:
    return jnp.where(x > 0, x, negative_slope * x)


# ----------------------------------------------------------------------------- the gates
# One register() call per gate: forward, VJP (with its math), sample inputs, and the
# symbol fmlp.viz draws (default: the name).

add = register(
    "add",
    lambda x, y: jnp.add(*_broadcast(x, y)),
    lambda g, out, x, y: (g, g),  # d(x + y) = (1, 1)
    _binary_samples(),
    symbol="+",
)
subtract = register(
    "subtract",
    lambda x, y: jnp.subtract(*_broadcast(x, y)),
    lambda g, out, x, y: (g, -g),  # d(x - y) = (1, -1)
    _binary_samples(),
    symbol="-",
)
multiply = register(
    "multiply",
    lambda x, y: jnp.multiply(*_broadcast(x, y)),
    _multiply_vjp,
    _binary_samples(),
    symbol="*",
)
divide = register(
    "divide",
    lambda x, y: jnp.divide(*_broadcast(x, y)),
    _divide_vjp,
    _binary_samples(low=0.5),
    symbol="/",
)
negate = register(
    "negate",
    jnp.negative,
    lambda g, out, x: (-g,),  # d(-x) = -1
    _unary_samples(),
    symbol="neg",
)
identity = register(
    "identity",
    lambda x: x,
    lambda g, out, x: (g,),  # d x = 1
    _unary_samples(),
)
square = register(
    "square",
    jnp.square,
    lambda g, out, x: (2.0 * g * x,),  # d x^2 = 2 x
    _unary_samples(),
    symbol="x²",
)
exp = register(
    "exp",
    jnp.exp,
    lambda g, out, x: (g * out,),  # d exp x = exp x
    _unary_samples(),
)
log = register(
    "log",
    jnp.log,
    lambda g, out, x: (g / x,),  # d log x = 1 / x
    _unary_samples(low=0.1),
)
tanh = register(
    "tanh",
    jnp.tanh,
    lambda g, out, x: (g * (1.0 - out * out),),  # d tanh = 1 - tanh^2
    _unary_samples(),
)
sigmoid = register(
    "sigmoid",
    jax.nn.sigmoid,
    lambda g, out, x: (g * out * (1.0 - out),),  # d sigma = sigma (1 - sigma)
    _unary_samples(),
    symbol="σ",
)
relu = register(
    "relu",
    _relu_forward,
    lambda g, out, x: (jnp.where(x > 0, g, jnp.zeros_like(g)),),  # d relu = [x > 0]
    _unary_samples(),
    symbol="ReLU",
)
leaky_relu = register(
    "leaky_relu",
    _leaky_relu_forward,
    # d leaky_relu = 1 if x > 0 else slope
    lambda g, out, x, negative_slope=0.01: (jnp.where(x > 0, g, negative_slope * g),),
    _unary_samples(negative_slope=0.1),
    symbol="LeakyReLU",
)
astype = register(
    "astype",
    lambda x, dtype: x.astype(dtype),
    lambda g, out, x, dtype: (g.astype(x.dtype),),  # d cast = 1, in the input's precision
    _astype_samples,
)
matmul = register("matmul", _matmul_forward, _matmul_vjp, _matmul_samples, symbol="@")
transpose = register(
    "transpose",
    jnp.transpose,  # reverses all axes, like .T on an array
    lambda g, out, x: (jnp.transpose(g),),  # reversing the axes is its own inverse
    _transpose_samples,
    symbol="T",
)
sum = register(  # shadows the builtin on purpose: fmlp.gates.sum, like jnp.sum
    "sum",
    lambda x, axis=None: jnp.sum(x, axis=axis),
    lambda g, out, x, axis=None: (_expand_reduced(g, x.shape, axis),),  # d sum = 1 per element
    _reduction_samples,
    symbol="Σ",
)
mean = register(
    "mean",
    lambda x, axis=None: jnp.mean(x, axis=axis),
    # d mean = 1 / N per element
    lambda g, out, x, axis=None: (
        _expand_reduced(g, x.shape, axis) / _reduced_count(x.shape, axis),
    ),
    _reduction_samples,
)
softmax = register(
    "softmax",
    lambda z, axis=-1: jax.nn.softmax(z, axis=axis),
    # d softmax: p * (g - <g, p>)
    lambda g, p, z, axis=-1: (p * (g - jnp.sum(g * p, axis=axis, keepdims=True)),),
    _row_samples,
)
log_softmax = register(
    "log_softmax",
    lambda z, axis=-1: jax.nn.log_softmax(z, axis=axis),
    # d log_softmax: g - softmax * sum(g)
    lambda g, out, z, axis=-1: (g - jnp.exp(out) * jnp.sum(g, axis=axis, keepdims=True),),
    _row_samples,
)
softmax_cross_entropy = register(
    "softmax_cross_entropy",
    _softmax_cross_entropy,
    _softmax_cross_entropy_vjp,
    _loss_samples,
    symbol="CrEnt",
)
squared_error = register(
    "squared_error", _squared_error, _squared_error_vjp, _regression_samples, symbol="SqErr"
)
mean_squared_error = register(
    "mean_squared_error",
    lambda outputs, targets: jnp.mean(jnp.square(jnp.subtract(*_broadcast(outputs, targets)))),
    _mean_squared_error_vjp,
    _regression_samples,
    symbol="MSE",
)

# ----------------------------------------------------------------------------- Poisson regression
# The exp head's loss (fmlp.nn.HEADS["exp"]; scikit-learn's MLPRegressor(loss="poisson")): fused
# with its activation like softmax_cross_entropy, so its gradient is the canonical exp(s) - t.


def _exp_poisson_deviance(log_rates: Array, targets: Array) -> Array:
    s, t = _broadcast(log_rates, targets)
    d = jnp.exp(s) - t * s + jax.scipy.special.xlogy(t, t) - t
    return jnp.sum(d, axis=-1) if d.ndim else d


def _exp_poisson_deviance_vjp(g: Array, out: Array, log_rates: Array, targets: Array):
    # D = sum_j exp(s_j) - t_j s_j + t_j log t_j - t_j:  dD/ds = exp(s) - t,  dD/dt = log t - s
    s, t = _broadcast(log_rates, targets)
    g = jnp.expand_dims(g, -1) if s.ndim else g
    return g * (jnp.exp(s) - t), g * (jnp.log(t) - s)


def _poisson_samples(key: Array, dtype: Any) -> list[Sample]:
    """(log-rates, counts) pairs; counts kept above 0, where ``t log t`` is differentiable."""
    rng = sample_rng(key)
    cases = [((), ()), ((3,), (3,)), ((4, 3), (4, 3)), ((1, 2), (1, 2)), ((128, 3), (128, 3)),
             ((4, 3), (3,))]  # fmt: skip
    return [Sample((_normal(rng, ss, dtype), _normal(rng, st, dtype, low=0.5))) for ss, st in cases]


exp_poisson_deviance = register(
    # Half the Poisson deviance of the rates mu = exp(s) against counts t, summed over the last
    # axis: sum_j t_j log(t_j / mu_j) - t_j + mu_j (0 log 0 = 0).
    "exp_poisson_deviance",
    _exp_poisson_deviance,
    _exp_poisson_deviance_vjp,
    _poisson_samples,
)

engine.define_operators(
    {
        "__add__": add,
        "__radd__": lambda a, b: add(b, a),
        "__sub__": subtract,
        "__rsub__": lambda a, b: subtract(b, a),
        "__mul__": multiply,
        "__rmul__": lambda a, b: multiply(b, a),
        "__truediv__": divide,
        "__rtruediv__": lambda a, b: divide(b, a),
        "__matmul__": matmul,
        "__rmatmul__": lambda a, b: matmul(b, a),
        "__neg__": negate,
        "__pos__": identity,
        "T": transpose,
    }
)
