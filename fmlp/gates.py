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
is differentiable by :func:`jax.grad` (our oracle) and by :func:`fmlp.grad`. The Python
operators ``+ - * / @ **``, unary ``-``, ``abs()`` and indexing ``x[...]`` on a tracked value
call the gates ``add``, ..., ``power``, ``negate``, ``abs`` and ``index``.

Ties, where a gate has a kink, follow ``jax.vjp`` of the gate's own forward (tested):
``relu`` has derivative 0 at 0 and ``leaky_relu`` its slope; ``abs`` has +1 at 0 (and
``absolute_error`` +1 where output equals target); ``maximum``/``minimum`` of equal values
give each input half the cotangent, and ``clip`` gives half at a bound (the reference samples
hold such ties: there the central differences agree too); ``elu`` has ``alpha`` at 0.

The losses (``softmax_cross_entropy``, ``sigmoid_binary_cross_entropy``, ``squared_error``,
``huber``, ``absolute_error``) return one value per example: the last axis holds the
outputs (classes, labels) of one example and is reduced.
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


def _regression_samples(key: Array, dtype: Any, **params: Any) -> list[Sample]:
    cases = [((), ()), ((3,), (3,)), ((4, 3), (4, 3)), ((1, 2), (1, 2)), ((128, 3), (128, 3)),
             ((4, 3), (3,))]  # fmt: skip
    rng = sample_rng(key)
    return [Sample((_normal(rng, so, dtype), _normal(rng, st, dtype)), params) for so, st in cases]


def _joined(*sample_fns: SampleFn) -> SampleFn:
    """The samples of several sample functions, e.g. one per value of a gate's parameter."""
    return lambda key, dtype: [s for fn in sample_fns for s in fn(key, dtype)]


def _power_samples(key: Array, dtype: Any) -> list[Sample]:
    """Constant integer exponents on any base; tracked exponents on positive bases."""
    rng = sample_rng(key)
    constant = [((), 2), ((3,), 3), ((4, 3), 2), ((1, 3), 0), ((128, 3), -1)]
    tracked = [((), ()), ((3,), (3,)), ((4, 3), (3,)), ((3,), (4, 3)), ((128, 3), (128, 3))]
    return [Sample((_normal(rng, s, dtype), n)) for s, n in constant] + [
        Sample((_normal(rng, sx, dtype, low=0.5), _normal(rng, sy, dtype))) for sx, sy in tracked
    ]


def _tie_samples(key: Array, dtype: Any) -> list[Sample]:
    """Binary samples, and pairs whose entries tie (equal values) in half of the places."""
    rng = sample_rng(key)
    x = np.asarray(_normal(rng, (4, 3), dtype))
    tied = np.where(rng.random((4, 3)) < 0.5, x, np.asarray(_normal(rng, (4, 3), dtype)))
    return [
        *_binary_samples()(key, dtype),
        Sample((jnp.asarray(x), jnp.asarray(tied))),
        Sample((jnp.asarray(x), jnp.asarray(x[1]))),  # row 1 ties with the broadcast row
    ]


def _clip_samples(key: Array, dtype: Any) -> list[Sample]:
    rng = sample_rng(key)
    bounds = {"min": -1.0, "max": 1.0}
    at_bounds = jnp.asarray(np.array([-1.0, 1.0, 0.3, -2.0, 2.0], jnp.dtype(dtype)))
    return [
        *(Sample((2.0 * _normal(rng, s, dtype),), bounds) for s in _UNARY_SHAPES),
        Sample((_normal(rng, (4, 3), dtype),), {"min": 0.0}),
        Sample((_normal(rng, (4, 3), dtype),), {"max": 0.5}),
        Sample((at_bounds,), bounds),  # a bound's value takes half the cotangent
    ]


def _logsumexp_samples(key: Array, dtype: Any) -> list[Sample]:
    extreme = jnp.array([[1e4, -1e4, 0.0, 2.0], [-1e4, -1e4, -1e4, -1e4]], dtype)
    return [
        *_reduction_samples(key, dtype),
        Sample((extreme,), {"axis": -1}),
        Sample((extreme,), {"axis": None}),
    ]


def _reshape_samples(key: Array, dtype: Any) -> list[Sample]:
    cases = [((4, 3), (12,)), ((4, 3), (3, 4)), ((12,), (3, -1)), ((), (1, 1)),
             ((2, 4, 3), (8, 3)), ((128, 3), (-1,))]  # fmt: skip
    rng = sample_rng(key)
    return [Sample((_normal(rng, s, dtype),), {"shape": shape}) for s, shape in cases]


def _concatenate_samples(key: Array, dtype: Any) -> list[Sample]:
    cases = [([(2, 3), (4, 3)], 0), ([(4, 2), (4, 3), (4, 1)], 1), ([(3,), (2,)], 0),
             ([(2, 3, 2), (2, 1, 2)], -2), ([(128, 3), (128, 1)], -1), ([(1, 3)], 0)]  # fmt: skip
    rng = sample_rng(key)
    return [
        Sample(tuple(_normal(rng, s, dtype) for s in shapes), {"axis": axis})
        for shapes, axis in cases
    ]


def _index_samples(key: Array, dtype: Any) -> list[Sample]:
    cases = [
        ((4, 3), (slice(None), slice(None, 2))),  # x[:, :2]
        ((4, 3), 1),  # x[1]
        ((4, 3), (Ellipsis, -1)),  # x[..., -1]
        ((5,), slice(1, 4)),
        ((5,), slice(None, None, 2)),
        ((2, 4, 3), (0, slice(1, 3), None)),
        ((128, 3), (slice(None), 0)),
        ((4, 3), np.array([0, 2, 2])),  # a repeated row: its cotangents add up
    ]
    rng = sample_rng(key)
    return [Sample((_normal(rng, s, dtype),), {"at": at}) for s, at in cases]


def _dropout_samples(key: Array, dtype: Any) -> list[Sample]:
    rng = sample_rng(key)
    keys = [jnp.asarray(rng.integers(0, 2**32, 2, dtype=np.uint32)) for _ in range(4)]
    typed = jax.random.wrap_key_data(keys[3])
    return [
        Sample((_normal(rng, (4, 3), dtype), keys[0]), {"rate": 0.5}),
        Sample((_normal(rng, (128, 3), dtype), keys[1]), {"rate": 0.1}),
        Sample((_normal(rng, (3,), dtype), keys[2]), {"rate": 0.0}),
        Sample((_normal(rng, (1, 3), dtype), typed), {"rate": 0.3}),
        Sample((_normal(rng, (4, 3), dtype), keys[0]), {"rate": jnp.asarray(0.2)}),  # an array
    ]


def _layer_norm_samples(key: Array, dtype: Any) -> list[Sample]:
    rng = sample_rng(key)
    return [
        Sample((2.0 * _normal(rng, s, dtype), _normal(rng, (5,), dtype), _normal(rng, (5,), dtype)))
        for s in [*_ROW_SHAPES, (2, 3, 5)]
    ]


def _binary_loss_samples(key: Array, dtype: Any) -> list[Sample]:
    """(logits, targets): 0/1 integer labels and probabilities, and logits of +-1e4."""
    rng = sample_rng(key)
    out = []
    for shape in [(), (4,), (1, 4), (128, 4)]:
        logits = 2.0 * _normal(rng, shape, dtype)
        labels = jnp.asarray(rng.integers(0, 2, shape).astype(np.int32))
        probs = jnp.asarray(rng.random(shape).astype(jnp.dtype(dtype)))
        out += [Sample((logits, labels)), Sample((logits, probs))]
    extreme = jnp.array([[1e4, -1e4, 0.0, 1e4], [-1e4, 1e4, 2.0, -1e4]], dtype)
    return [*out, Sample((extreme, jnp.array([[1, 0, 1, 0], [1, 0, 0, 0]], jnp.int32)))]


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


def _leaky_relu_forward(x: Array, negative_slope: float = 0.01) -> Array:
    return jnp.where(x > 0, x, negative_slope * x)


def _per_example(elementwise: Array) -> Array:
    """A loss per example: the sum over the last axis (the outputs), a scalar as it is."""
    return jnp.sum(elementwise, axis=-1) if elementwise.ndim else elementwise


def _per_example_ct(g: Array, like: Array) -> Array:
    """The cotangent of :func:`_per_example`'s result, spread back over the outputs."""
    return jnp.expand_dims(g, -1) if like.ndim else g


def _is_int(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.integer)


def _power(x: Array, y: Array) -> Array:
    x, y = _broadcast(x, y)
    if _is_int(y) and not _is_int(x):
        y = y.astype(x.dtype)  # an integer exponent, exact for negative bases as well
    elif _is_int(x) and not _is_int(y):
        x = x.astype(y.dtype)
    return jnp.power(x, y)


def _power_vjp(g: Array, out: Array, x: Array, y: Array) -> tuple[Array | None, Array | None]:
    # d x^y = (y x^(y-1), x^y log x): 0 for y = 0, and log 0 taken as 0 where x^y = 0
    xb, yb = _broadcast(x, y)
    yf = yb.astype(out.dtype)
    xf = xb.astype(out.dtype)
    dx = g * jnp.where(yf == 0, jnp.zeros_like(yf), yf * jnp.power(xf, yf - 1))
    dy = g * out * jnp.log(jnp.where(xf == 0, jnp.ones_like(xf), xf))
    return (None if _is_int(x) else dx), (None if _is_int(y) else dy)


def _extremum_vjp(pick: Any) -> Any:
    def vjp(g: Array, out: Array, x: Array, y: Array) -> tuple[Array, Array]:
        # d max(x, y) = ([x > y], [y > x]); equal values share the cotangent, 1/2 each
        x, y = _broadcast(x, y)
        share = jnp.where(x == y, 0.5, jnp.where(pick(x, y), 1.0, 0.0)).astype(g.dtype)
        return g * share, g * jnp.where(x == y, share, 1.0 - share)

    return vjp


def _clip_vjp(
    g: Array, out: Array, x: Array, min: float | None = None, max: float | None = None
) -> tuple[Array]:
    # d clip = 1 strictly inside [min, max], 0 outside, 1/2 at a bound (as maximum's ties)
    lo = -jnp.inf if min is None else min
    hi = jnp.inf if max is None else max
    inside = jnp.where((x > lo) & (x < hi), 1.0, 0.0)
    return (g * jnp.where((x == lo) | (x == hi), 0.5, inside).astype(g.dtype),)


def _gelu_vjp(g: Array, out: Array, x: Array, approximate: bool = False) -> tuple[Array]:
    if approximate:
        # gelu = x (1 + t) / 2, t = tanh(c (x + a x^3)):
        # d gelu = (1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2
        c, a = math.sqrt(2.0 / math.pi), 0.044715
        t = jnp.tanh(c * (x + a * x * x * x))
        return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * a * x * x)),)
    # gelu = x Φ(x):  d = Φ(x) + x φ(x)
    cdf = 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return (g * (cdf + x * pdf),)


def _silu_vjp(g: Array, out: Array, x: Array) -> tuple[Array]:
    # d x σ(x) = σ(x) (1 + x (1 - σ(x)))
    s = jax.nn.sigmoid(x)
    return (g * s * (1.0 + x * (1.0 - s)),)


def _index_vjp(g: Array, out: Array, x: Array, at: Any) -> tuple[Array]:
    # d x[at] scatters back: zeros of x's shape, with g added at the indexed places
    return (jnp.zeros(x.shape, g.dtype).at[at].add(g),)


def _concatenate_vjp(g: Array, out: Array, *xs: Array, axis: int = 0) -> tuple[Array, ...]:
    # d concatenate = the cotangent cut back into the inputs' pieces along the axis
    ends = np.cumsum([jnp.shape(x)[axis] for x in xs])[:-1]
    return tuple(jnp.split(g, ends, axis=axis))


def _keep(key: Array, rate: float | Array, shape: tuple[int, ...]) -> Array:
    """The dropout mask: True for each kept entry, with probability ``1 - rate``.

    ``rate`` may be traced (a sweep's per-member rate); it is checked when it is concrete.
    """
    if not isinstance(rate, jax.core.Tracer) and not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate!r}.")
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def _dropout(x: Array, key: Array, *, rate: float | Array) -> Array:
    keep = _keep(key, rate, jnp.shape(x))
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def _dropout_vjp(g: Array, out: Array, x: Array, key: Array, *, rate: float | Array) -> tuple:
    # d dropout = mask / (1 - rate), the same mask: drawn again from the same key
    keep = _keep(key, rate, jnp.shape(x))
    return jnp.where(keep, g / jnp.asarray(1.0 - rate, g.dtype), jnp.zeros_like(g)), None


def _normalized(x: Array, eps: float) -> tuple[Array, Array]:
    """``(x̂, 1 / σ)`` over the last axis: ``x̂ = (x - μ) / σ`` with ``σ = sqrt(var + eps)``."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)
    return centred * rstd, rstd


def _layer_norm(x: Array, scale: Array, offset: Array, eps: float = 1e-5) -> Array:
    x_hat, _ = _normalized(x, eps)
    return jnp.add(*_broadcast(jnp.multiply(*_broadcast(x_hat, scale)), offset))


def _layer_norm_vjp(
    g: Array, out: Array, x: Array, scale: Array, offset: Array, eps: float = 1e-5
) -> tuple[Array, Array, Array]:
    # y = x̂ γ + β:  dx = (ĝ - mean ĝ - x̂ mean(ĝ x̂)) / σ with ĝ = g γ;  dγ = g x̂;  dβ = g
    x_hat, rstd = _normalized(x, eps)
    g_hat = jnp.multiply(*_broadcast(g, scale))
    mean = lambda a: jnp.mean(a, axis=-1, keepdims=True)
    return rstd * (g_hat - mean(g_hat) - x_hat * mean(g_hat * x_hat)), g * x_hat, g


def _check_same_shape(name: str, outputs: Array, targets: Array) -> None:
    if jnp.shape(targets) != jnp.shape(outputs):
        raise ValueError(
            f"{name}: targets must have the logits' shape {jnp.shape(outputs)}, got "
            f"{jnp.shape(targets)}."
        )


def _sigmoid_binary_cross_entropy(logits: Array, targets: Array) -> Array:
    _check_same_shape("sigmoid_binary_cross_entropy", logits, targets)
    # softplus(z) - t z = -t log σ(z) - (1 - t) log(1 - σ(z)), finite for any |z|
    return _per_example(jax.nn.softplus(logits) - logits * targets.astype(logits.dtype))


def _sigmoid_binary_cross_entropy_vjp(
    g: Array, out: Array, logits: Array, targets: Array
) -> tuple[Array, Array | None]:
    # l = softplus(z) - t z:  dl/dz = σ(z) - t,  dl/dt = -z
    g = _per_example_ct(g, logits)
    d_logits = g * (jax.nn.sigmoid(logits) - targets.astype(logits.dtype))
    return d_logits, (None if _is_int(targets) else -g * logits)


def _huber(outputs: Array, targets: Array, delta: float = 1.0) -> Array:
    r = jnp.subtract(*_broadcast(outputs, targets))
    quadratic = jnp.abs(r) <= delta
    return _per_example(jnp.where(quadratic, 0.5 * r * r, delta * (jnp.abs(r) - 0.5 * delta)))


def _huber_vjp(g: Array, out: Array, outputs: Array, targets: Array, delta: float = 1.0):
    # h(r) = r^2 / 2 for |r| <= δ, else δ (|r| - δ / 2):  dh/dr = clip(r, -δ, δ)
    o, t = _broadcast(outputs, targets)
    d = _per_example_ct(g, o) * jnp.clip(o - t, -delta, delta)
    return d, -d


def _absolute_error_vjp(g: Array, out: Array, outputs: Array, targets: Array):
    # E = sum_j |o_j - t_j|:  dE/do = sign(o - t), +1 where o = t (as abs at 0);  dE/dt = -dE/do
    o, t = _broadcast(outputs, targets)
    g = _per_example_ct(g, o)
    d = jnp.where(o - t >= 0, g, -g)
    return d, -d


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
    jax.nn.relu,
    lambda g, out, x: (jnp.where(x > 0, g, jnp.zeros_like(g)),),  # d relu = [x > 0]
    _unary_samples(),
    symbol="ReLU",
)
leaky_relu = register(
    "leaky_relu",
    _leaky_relu_forward,
    # d leaky_relu = 1 if x > 0 else slope
    lambda g, out, x, negative_slope=0.01: (jnp.where(x > 0, g, negative_slope * g),),
    _joined(_unary_samples(negative_slope=0.1), _unary_samples(negative_slope=0.3)),
    symbol="LeakyReLU",
)
gelu = register(
    "gelu",
    lambda x, approximate=False: jax.nn.gelu(x, approximate=approximate),
    _gelu_vjp,
    _joined(_unary_samples(), _unary_samples(approximate=True)),
    symbol="GELU",
)
silu = register("silu", jax.nn.silu, _silu_vjp, _unary_samples(), symbol="SiLU", aliases=["swish"])
softplus = register(
    "softplus",
    jax.nn.softplus,
    lambda g, out, x: (g * jax.nn.sigmoid(x),),  # d softplus = σ
    _joined(_unary_samples(), lambda key, dtype: [Sample((jnp.array([-1e4, 0.0, 1e4], dtype),))]),
)
elu = register(
    "elu",
    lambda x, alpha=1.0: jax.nn.elu(x, alpha),
    # d elu = 1 if x > 0 else alpha e^x (= out + alpha)
    lambda g, out, x, alpha=1.0: (jnp.where(x > 0, g, g * (out + alpha)),),
    _joined(_unary_samples(), _unary_samples(alpha=0.5)),
    symbol="ELU",
)
power = register(
    "power",
    _power,
    _power_vjp,
    _power_samples,
    symbol="**",
    aliases=["pow", "float_power", "rsqrt", "cbrt", "reciprocal"],
)
abs = register(  # shadows the builtin on purpose: fmlp.gates.abs, like jnp.abs
    "abs",
    jnp.abs,
    lambda g, out, x: (jnp.where(x >= 0, g, -g),),  # d |x| = sign(x), +1 at x = 0 (as JAX)
    _unary_samples(),
    symbol="|x|",
    aliases=["absolute", "fabs"],
)
sqrt = register(
    "sqrt",
    jnp.sqrt,
    lambda g, out, x: (0.5 * g / out,),  # d sqrt x = 1 / (2 sqrt x)
    _unary_samples(low=0.1),
    symbol="√",
)
maximum = register(
    "maximum",
    lambda x, y: jnp.maximum(*_broadcast(x, y)),
    _extremum_vjp(jnp.greater),
    _tie_samples,
    symbol="max",
    aliases=["max", "amax", "fmax", "greater", "greater_equal", "where"],
)
minimum = register(
    "minimum",
    lambda x, y: jnp.minimum(*_broadcast(x, y)),
    _extremum_vjp(jnp.less),
    _tie_samples,
    symbol="min",
    aliases=["min", "amin", "fmin", "less", "less_equal"],
)
clip = register(
    "clip",
    lambda x, min=None, max=None: jnp.clip(x, min, max),
    _clip_vjp,
    _clip_samples,
    aliases=["clamp"],
)
logsumexp = register(
    "logsumexp",
    lambda x, axis=None: jax.nn.logsumexp(x, axis=axis),
    # d logsumexp = softmax over the reduced axes
    lambda g, out, x, axis=None: (
        _expand_reduced(g, x.shape, axis) * jax.nn.softmax(x, axis=axis),
    ),
    _logsumexp_samples,
    symbol="LSE",
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
reshape = register(
    "reshape",
    lambda x, shape: jnp.reshape(x, shape),
    lambda g, out, x, shape: (jnp.reshape(g, jnp.shape(x)),),  # d reshape = reshape back
    _reshape_samples,
    aliases=["ravel", "flatten", "expand_dims", "squeeze"],
)
concatenate = register(
    "concatenate",
    lambda *xs, axis=0: jnp.concatenate(xs, axis=axis),
    _concatenate_vjp,
    _concatenate_samples,
    symbol="concat",
    aliases=["concat", "stack", "hstack", "vstack", "append"],
)
index = register(
    "index",
    lambda x, at: x[at],
    _index_vjp,
    _index_samples,
    symbol="[ ]",
    aliases=["getitem", "take", "slice", "dynamic_slice", "dynamic_index_in_dim"],
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

dropout = register("dropout", _dropout, _dropout_vjp, _dropout_samples, symbol="Dropout")
layer_norm = register(
    "layer_norm",
    _layer_norm,
    _layer_norm_vjp,
    _layer_norm_samples,
    symbol="LayerNorm",
    aliases=["standardize"],
)
sigmoid_binary_cross_entropy = register(
    "sigmoid_binary_cross_entropy",
    _sigmoid_binary_cross_entropy,
    _sigmoid_binary_cross_entropy_vjp,
    _binary_loss_samples,
    symbol="BCE",
    aliases=["binary_cross_entropy", "log_sigmoid"],
)
huber = register(
    "huber",
    _huber,
    _huber_vjp,
    _joined(_regression_samples, lambda key, dtype: _regression_samples(key, dtype, delta=0.5)),
    symbol="Huber",
    aliases=["huber_loss"],
)
absolute_error = register(
    "absolute_error",
    lambda outputs, targets: _per_example(jnp.abs(jnp.subtract(*_broadcast(outputs, targets)))),
    _absolute_error_vjp,
    _regression_samples,
    symbol="AbsErr",
    aliases=["l1_loss"],
)


# ----------------------------------------------------------------------------- Poisson regression
# The exp head's loss (fmlp.nn.HEADS["poisson"]; scikit-learn's MLPRegressor(loss="poisson")): fused
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
        "__pow__": power,
        "__rpow__": lambda a, b: power(b, a),
        "__neg__": negate,
        "__pos__": identity,
        "__abs__": abs,
        "__getitem__": lambda x, at: index(x, at=at),
        "T": transpose,
    }
)
