"""The multi-layer perceptron as pure functions over a parameter pytree, built only from gates.

Notation. The lecture writes one layer for a column vector ``x`` as ``s = W x`` and
``o = Φ(s)``, with ``W`` of shape ``(out, in)``. fmlp works on mini-batches stored row by row,
``x`` of shape ``(B, in)``, so the same layer reads ``s = x @ W + b`` with ``W`` of shape
``(in, out)``: our ``W`` is the lecture's ``W`` transposed, and row ``i`` of ``s`` is the
lecture's ``s`` for example ``i``. Parameters are a list with one ``{"W", "b"}`` dict per layer.

Because every operation is a gate, the same functions are differentiated by :func:`fmlp.grad`
(the hand-written VJPs) and by :func:`jax.grad` (the oracle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fmlp import gates

Array = jax.Array
Params = list[dict[str, Array]]  # one {"W": (in, out), "b": (out,)} per layer

ACTIVATIONS: dict[str, gates.Gate] = {
    "tanh": gates.tanh,
    "relu": gates.relu,
    "sigmoid": gates.sigmoid,
    "leaky_relu": gates.leaky_relu,
    "identity": gates.identity,
}


class Head(NamedTuple):
    """An output head: what the last layer's pre-activations ``s`` become, and their loss.

    ``activation(s)`` is what :meth:`MLP.apply` and ``predict`` return; ``loss(s, targets)``
    is the per-example loss ``(B,)``, written as one gate on ``s`` so its VJP can be the fused
    one (softmax with cross-entropy: ``p - t``); ``task`` says which data it fits.
    """

    activation: gates.Gate
    loss: gates.Gate
    task: str  # "classification" or "regression"


HEADS: dict[str, Head] = {
    "softmax": Head(gates.softmax, gates.softmax_cross_entropy, "classification"),
    "identity": Head(gates.identity, gates.squared_error, "regression"),
    "exp": Head(gates.exp, gates.exp_poisson_deviance, "regression"),  # Poisson regression: rates
}
"""The head table: ``model.output`` name -> :class:`Head`. A new head is one row here."""

OUTPUTS: dict[str, gates.Gate] = {name: head.activation for name, head in HEADS.items()}
INITIALIZERS: dict[str, Callable[..., Any]] = {
    "glorot_normal": jax.nn.initializers.glorot_normal(),
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
    "he_normal": jax.nn.initializers.he_normal(),
    "he_uniform": jax.nn.initializers.he_uniform(),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
}


def _choice(kind: str, name: str, table: dict[str, Any]) -> Any:
    if name not in table:
        raise ValueError(f"Unknown {kind} {name!r}; expected one of {sorted(table)}.")
    return table[name]


def init(
    key: Array, sizes: Sequence[int], *, scheme: str = "glorot_uniform", dtype: Any = jnp.float32
) -> Params:
    """Initialise an MLP with layer widths ``sizes`` (inputs first, outputs last).

    Args:
      key: PRNG key.
      sizes: ``[n_in, n_hidden_1, ..., n_out]``, at least two entries, each >= 1.
      scheme: weight initialiser: ``glorot``, ``he`` or ``lecun``, ``_normal`` or ``_uniform``.
      dtype: parameter dtype.

    Returns:
      A list with one ``{"W": (sizes[i], sizes[i + 1]), "b": (sizes[i + 1],)}`` per layer;
      biases start at zero.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(int(n) != n or n < 1 for n in sizes):
        raise ValueError(f"sizes must list at least two positive layer widths, got {list(sizes)}.")
    _choice("initialisation scheme", scheme, INITIALIZERS)
    return _init(key, tuple(int(n) for n in sizes), scheme, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # one program, not one per operation
def _init(key: Array, sizes: tuple[int, ...], scheme: str, dtype: Any) -> Params:
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"W": INITIALIZERS[scheme](k, (n_in, n_out), dtype), "b": jnp.zeros((n_out,), dtype)}
        for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
    ]


def dense(layer: dict[str, Array], x: Array) -> Array:
    """One affine layer: ``s = x @ W + b``; ``x`` (..., in) -> ``s`` (..., out)."""
    return gates.add(gates.matmul(x, layer["W"]), layer["b"])


def apply(
    params: Params,
    x: Array,
    *,
    activation: str = "tanh",
    output: str = "identity",
    compute_dtype: Any = None,
) -> Array:
    """Forward pass: ``o = Φ_out(... Φ(x @ W1 + b1) ... @ WL + bL)``.

    Args:
      params: from :func:`init`.
      x: inputs of shape ``(B, in)`` (or ``(in,)`` for one example).
      activation: hidden activation: tanh, relu, sigmoid, leaky_relu or identity.
      output: output activation: ``identity`` (regression, or logits), ``softmax`` or ``exp``.
      compute_dtype: e.g. ``"bfloat16"``: mixed precision. Inputs and params are cast to it
        (through the ``astype`` gate, so gradients reach the params in their own dtype) for
        every layer; the last layer's pre-activations are cast back to the params' dtype
        before the output activation. None computes in the params' dtype.

    Returns:
      Outputs of shape ``(B, out)``, in the params' dtype.
    """
    phi = _choice("activation", activation, ACTIVATIONS)
    phi_out = _choice("output", output, OUTPUTS)
    master = params[-1]["b"].dtype
    if compute_dtype is not None:
        cast = functools.partial(gates.astype, dtype=jnp.dtype(compute_dtype).name)
        params = [{name: cast(p) for name, p in layer.items()} for layer in params]
        x = cast(x)
    for layer in params[:-1]:
        x = phi(dense(layer, x))
    s = dense(params[-1], x)
    if compute_dtype is not None:
        s = gates.astype(s, dtype=jnp.dtype(master).name)
    return phi_out(s)


def _masked_mean(per_example: Array, mask: Array | None) -> Array:
    if mask is None:
        return gates.mean(per_example)
    return gates.divide(gates.sum(gates.multiply(per_example, mask)), gates.sum(mask))


def loss(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str = "tanh",
    output: str = "softmax",
    mask: Array | None = None,
    compute_dtype: Any = None,
) -> Array:
    """Mean loss over a mini-batch, the head's (:data:`HEADS`): cross-entropy for ``softmax``,
    squared error for ``identity``, half the Poisson deviance of the rates for ``exp``.

    For ``softmax`` the fused gate :func:`fmlp.gates.softmax_cross_entropy` takes the logits,
    so its gradient is the stable ``p - t``; for ``identity`` each example contributes
    ``1/2 sum_j (o_j - t_j)^2``, whose gradient is ``o - t`` as on the lecture's slide.

    Args:
      params: from :func:`init`.
      x: inputs ``(B, in)``.
      y: integer labels ``(B,)`` or one-hot/probability rows ``(B, K)`` for ``softmax``;
        targets ``(B, out)`` for ``identity``; counts ``(B, out)`` for ``exp``.
      activation: hidden activation.
      output: a head of :data:`HEADS`.
      mask: optional ``(B,)`` weights, 1 for real examples and 0 for padding.
      compute_dtype: mixed precision as in :func:`apply`; the loss is computed in the params'
        dtype.

    Returns:
      Scalar loss: the (masked) mean over the batch.
    """
    net = MLP(_sizes(params), activation, output, compute_dtype=compute_dtype)
    return net.loss(params, x, y, mask)


def _sizes(params: Params) -> tuple[int, ...]:
    return (int(params[0]["W"].shape[0]), *(int(layer["W"].shape[-1]) for layer in params))


class MLP(NamedTuple):
    """The model as one value: its architecture, head and compute dtype (no arrays are held).

    ``params = net.init(key)``, ``out = net.apply(params, x)``, ``l = net.loss(params, x, y)``.
    Build it with :func:`mlp` (which checks the names) or one of the lecture's nets.
    """

    sizes: tuple[int, ...]  # [n_in, n_hidden_1, ..., n_out]
    activation: str
    output: str  # a head of HEADS
    scheme: str = "glorot_uniform"
    compute_dtype: str | None = None  # e.g. "bfloat16": mixed precision, as in apply

    @property
    def head(self) -> Head:
        """This net's row of :data:`HEADS`."""
        return _choice("output", self.output, HEADS)

    def init(self, key: Array, dtype: Any = jnp.float32) -> Params:
        """Fresh parameters for this architecture."""
        return init(key, self.sizes, scheme=self.scheme, dtype=dtype)

    def logits(self, params: Params, x: Array) -> Array:
        """The last layer's pre-activations ``(B, out)``, in the params' dtype."""
        return apply(
            params, x, activation=self.activation, output="identity",
            compute_dtype=self.compute_dtype,
        )  # fmt: skip

    def apply(self, params: Params, x: Array) -> Array:
        """Outputs ``(B, out)``: probabilities for softmax nets, real values for regression."""
        return self.head.activation(self.logits(params, x))

    def per_example_loss(self, params: Params, x: Array, y: Array) -> Array:
        """The head's loss of each example ``(B,)``."""
        return self.head.loss(self.logits(params, x), y)

    def loss(self, params: Params, x: Array, y: Array, mask: Array | None = None) -> Array:
        """Scalar mean loss over the batch (weighted by ``mask`` ``(B,)`` when given)."""
        return _masked_mean(self.per_example_loss(params, x, y), mask)


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "tanh",
    output: str = "softmax",
    scheme: str = "glorot_uniform",
    compute_dtype: str | None = None,
) -> MLP:
    """An :class:`MLP` of any depth; names are validated here, not at first use."""
    _choice("activation", activation, ACTIVATIONS)
    _choice("output", output, HEADS)
    _choice("initialisation scheme", scheme, INITIALIZERS)
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype).name
    return MLP(tuple(int(n) for n in sizes), activation, output, scheme, compute_dtype)


def regression_net(n_in: int, n_hidden: int, n_out: int) -> MLP:
    """The lecture's regression net: tanh hidden layer, identity output, squared error.

    E.g. car sensor readings ``(B, n_in)`` -> steering angle and throttle ``(B, n_out)``.
    """
    return mlp([n_in, n_hidden, n_out], activation="tanh", output="identity")


def classification_net(n_in: int, n_hidden: int, n_classes: int) -> MLP:
    """The lecture's classification net: tanh hidden layer, softmax output, cross-entropy.

    E.g. pixel values ``(B, n_in)`` -> class probabilities ``(B, n_classes)``.
    """
    return mlp([n_in, n_hidden, n_classes], activation="tanh", output="softmax")
