"""What every contestant trains: sizes, data, initial weights, batches and optimizer, in NumPy.

A :class:`Problem` is drawn once per benchmark case and handed to every contestant, so all of
them start from the same weights and see the same mini-batches in the same order; the checks
(:func:`accuracy`, :func:`params_difference`) read their results back in NumPy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmlp import data, nn, train

DTYPES = ("float32", "bfloat16")

NumpyParams = list[tuple[np.ndarray, np.ndarray]]  # one (W (in, out), b (out,)) per layer


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark size: layer widths (inputs first), batch size and compute dtype."""

    sizes: tuple[int, ...]
    batch: int
    dtype: str = "float32"


def parse_case(spec: str) -> Case:
    """``"784-256-256-10:128[:bfloat16]"`` -> :class:`Case` (batch 128 when left out)."""
    parts = spec.split(":")
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in DTYPES):
        raise ValueError(f"expected MODEL[:BATCH[:DTYPE]] with DTYPE in {DTYPES}, got {spec!r}")
    model, batch, dtype = parts + ["128", "float32"][len(parts) - 1 :]
    return Case(tuple(int(w) for w in model.split("-")), int(batch), dtype)


@dataclasses.dataclass(frozen=True)
class Optim:
    """SGD with momentum: as optax (the JAX contestants) and as per-step rates (the others)."""

    tx: optax.GradientTransformation
    lrs: np.ndarray  # (total steps,) float32: the learning rate of each step
    momentum: float
    nesterov: bool


def constant_sgd(lr: float, momentum: float, *, steps: int, nesterov: bool = False) -> Optim:
    """``optax.sgd(lr, momentum)`` at a constant rate, for ``steps`` steps."""
    tx = optax.sgd(lr, momentum=momentum, nesterov=nesterov)
    return Optim(tx, np.full(steps, lr, np.float32), momentum, nesterov)


def scheduled_sgd(
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    momentum: float,
    *,
    nesterov: bool,
    steps: int,
) -> Optim:
    """An optax SGD ``tx`` and its ``schedule``, tabulated for ``steps`` steps."""
    with train.optax_dtypes():
        rates = jax.jit(schedule)(jnp.arange(steps, dtype=jnp.int32))
    return Optim(tx, np.asarray(rates, np.float32), momentum, nesterov)


@dataclasses.dataclass(frozen=True)
class Problem:
    """What every contestant trains on: data, initial weights, batches, optimizer, dtype.

    ``x`` (n, features) float32 standardized, ``y`` (n,) int32; the same for ``x_test`` and
    ``y_test``. ``orders[e]`` is epoch ``e``'s ``(idx, mask)``, both (steps, batch): example
    indices and 1.0/0.0 weights (0.0 marks the padding of the last batch), exactly what
    fmlp's epoch draws from its state's ``key``. ``unroll`` is for the compiled epoch loops
    (fmlp's and jax-scan's): mini-batch steps per iteration (``train.unroll``); the other
    peers loop in Python.
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sizes: tuple[int, ...]
    batch_size: int
    params: NumpyParams
    key: np.ndarray  # (2,) uint32: the data-order key of fmlp's initial TrainState
    orders: tuple[tuple[np.ndarray, np.ndarray], ...]
    optim: Optim
    dtype: str = "float32"  # compute dtype; params stay float32
    unroll: int = 1

    @property
    def n(self) -> int:
        """Training examples."""
        return len(self.x)

    @property
    def steps_per_epoch(self) -> int:
        """Mini-batches per epoch, the last one padded."""
        return math.ceil(self.n / self.batch_size)


def jax_params(params: NumpyParams) -> nn.Params:
    """NumPy ``(W, b)`` pairs -> fmlp's ``[{"W", "b"}, ...]`` of device arrays."""
    return [{"W": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in params]


def numpy_params(params: nn.Params) -> NumpyParams:
    """fmlp's ``[{"W", "b"}, ...]`` -> NumPy ``(W, b)`` pairs."""
    return [(np.asarray(p["W"]), np.asarray(p["b"])) for p in params]


def initial(seed: int, sizes: Sequence[int]) -> tuple[NumpyParams, np.ndarray]:
    """``(params, key)`` of :func:`fmlp.train.init_state` for ``seed``: he_uniform, zero biases."""
    net = nn.mlp(sizes, activation="relu", output="softmax", scheme="he_uniform")
    state = train.init_state(net, optax.identity(), seed=seed)
    return numpy_params(state.params), np.asarray(state.key)


def make_problem(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    sizes: Sequence[int],
    batch_size: int,
    epochs: int,
    optim: Optim,
    params: NumpyParams,
    key: np.ndarray,
    dtype: str = "float32",
    unroll: int = 1,
) -> Problem:
    """A :class:`Problem` with the batches of ``epochs`` epochs drawn as fmlp's epoch does."""
    if not batch_size <= len(x):
        raise ValueError(f"batch size {batch_size} exceeds the {len(x)} training examples")
    if len(optim.lrs) < epochs * math.ceil(len(x) / batch_size):
        raise ValueError("optim.lrs holds fewer steps than the epochs need")
    orders, k = [], jnp.asarray(key)
    for _ in range(epochs):
        k, order_key = jax.random.split(k)
        idx, mask = data.batch_indices(order_key, len(x), batch_size)
        orders.append((np.array(idx), np.array(mask)))  # copies: writable, as torch wants
    return Problem(
        x, y, x_test, y_test, tuple(sizes), batch_size, params, np.asarray(key), tuple(orders),
        optim, dtype, unroll,
    )  # fmt: skip


def accuracy(params: NumpyParams, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` (n, features) whose argmax logit is the label ``y`` (n,); in NumPy."""
    for w, b in params[:-1]:
        x = np.maximum(x @ w + b, 0.0)
    w, b = params[-1]
    return float(np.mean(np.argmax(x @ w + b, axis=1) == y))


def params_difference(params: NumpyParams, ref: NumpyParams) -> float:
    """``max |p - ref| / max |ref|`` over every W and b (0.0: identical)."""
    diff = max(float(np.max(np.abs(a - b))) for p, r in zip(params, ref) for a, b in zip(p, r))
    return diff / max(float(np.max(np.abs(b))) for r in ref for b in r)


def flops_per_example(sizes: Sequence[int]) -> int:
    """Matmul FLOPs per training example: forward, weight gradients, input gradients.

    ``2 * in * out`` each per layer, except that no one computes the input gradient of the
    first layer (the data): ``6 * sum(in * out) - 2 * sizes[0] * sizes[1]``.
    """
    return 6 * sum(i * o for i, o in itertools.pairwise(sizes)) - 2 * sizes[0] * sizes[1]
