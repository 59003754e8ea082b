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
OUTPUTS: dict[str, gates.Gate] = {"identity": gates.identity, "softmax": gates.softmax}
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
      output: output activation: ``identity`` (regression, or logits) or ``softmax``.
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
    """Mean loss over a mini-batch: cross-entropy for ``softmax``, squared error for ``identity``.

    For ``softmax`` the fused gate :func:`fmlp.gates.softmax_cross_entropy` takes the logits,
    so its gradient is the stable ``p - t``; for ``identity`` each example contributes
    ``1/2 sum_j (o_j - t_j)^2``, whose gradient is ``o - t`` as on the lecture's slide.

    Args:
      params: from :func:`init`.
      x: inputs ``(B, in)``.
      y: integer labels ``(B,)`` or one-hot/probability rows ``(B, K)`` for ``softmax``;
        targets ``(B, out)`` for ``identity``.
      activation: hidden activation.
      output: ``softmax`` or ``identity``.
      mask: optional ``(B,)`` weights, 1 for real examples and 0 for padding.
      compute_dtype: mixed precision as in :func:`apply`; the loss is computed in the params'
        dtype.

    Returns:
      Scalar loss: the (masked) mean over the batch.
    """
    _choice("output", output, OUTPUTS)
    outputs = apply(
        params, x, activation=activation, output="identity", compute_dtype=compute_dtype
    )
    if output == "softmax":
        per_example = gates.softmax_cross_entropy(outputs, y)
    else:
        per_example = gates.squared_error(outputs, y)
    return _masked_mean(per_example, mask)


class MLP(NamedTuple):
    """A ready-made net as a pair of pure functions plus its loss (no arrays are held).

    ``params = net.init(key)``, ``out = net.apply(params, x)``, ``l = net.loss(params, x, y)``.
    """

    sizes: tuple[int, ...]
    activation: str
    output: str
    scheme: str

    def init(self, key: Array, dtype: Any = jnp.float32) -> Params:
        """Fresh parameters for this architecture."""
        return init(key, self.sizes, scheme=self.scheme, dtype=dtype)

    def apply(self, params: Params, x: Array) -> Array:
        """Outputs ``(B, out)``: probabilities for softmax nets, real values for regression."""
        return apply(params, x, activation=self.activation, output=self.output)

    def loss(self, params: Params, x: Array, y: Array, mask: Array | None = None) -> Array:
        """Scalar mean loss over the batch."""
        return loss(params, x, y, activation=self.activation, output=self.output, mask=mask)


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "tanh",
    output: str = "softmax",
    scheme: str = "glorot_uniform",
) -> MLP:
    """An :class:`MLP` of any depth; names are validated here, not at first use."""
    _choice("activation", activation, ACTIVATIONS)
    _choice("output", output, OUTPUTS)
    _choice("initialisation scheme", scheme, INITIALIZERS)
    return MLP(tuple(sizes), activation, output, scheme)


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
