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
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fmlp import gates

Array = jax.Array
Params = list[dict[str, Array]]  # one {"W": (in, out), "b": (out,)} per layer (+ layer norm)

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": gates.tanh,
    "relu": gates.relu,
    "sigmoid": gates.sigmoid,
    "leaky_relu": gates.leaky_relu,
    "identity": gates.identity,
    "gelu": gates.gelu,
    "gelu_tanh": functools.partial(gates.gelu, approximate=True),
    "silu": gates.silu,
    "softplus": gates.softplus,
    "elu": gates.elu,
}
"""Hidden activations by name: a gate, or a gate with its parameter fixed (``gelu_tanh``)."""


class Head(NamedTuple):
    """An output head: what the last layer's pre-activations ``s`` become, and their loss.

    ``activation(s)`` is what :meth:`MLP.apply` and ``predict`` return; ``loss(s, targets)``
    is the per-example loss ``(B,)``, written as one gate on ``s`` so its VJP can be the fused
    one (softmax with cross-entropy: ``p - t``); ``task`` says which data it fits.
    """

    activation: gates.Gate
    loss: gates.Gate
    task: str  # "classification", "multilabel" or "regression"


HEADS: dict[str, Head] = {
    "cross_entropy": Head(gates.softmax, gates.softmax_cross_entropy, "classification"),
    "binary_cross_entropy": Head(gates.sigmoid, gates.sigmoid_binary_cross_entropy, "multilabel"),
    "squared_error": Head(gates.identity, gates.squared_error, "regression"),
    "huber": Head(gates.identity, gates.huber, "regression"),
    "absolute_error": Head(gates.identity, gates.absolute_error, "regression"),
    "poisson": Head(gates.exp, gates.exp_poisson_deviance, "regression"),  # rates exp(s)
}
"""The head table: ``model.loss`` name -> :class:`Head`. A new head is one row here.

``binary_cross_entropy`` is a sigmoid per output: one 0/1 target (binary) or several
(multi-label) per example, ``(B, K)``; the first head with a given output activation is that
activation's default (``model.output: softmax`` -> ``cross_entropy``)."""

OUTPUTS: dict[str, gates.Gate] = {h.activation.name: h.activation for h in HEADS.values()}
"""Output activations by name (``model.output``): softmax, sigmoid and identity."""

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


def head_name(output: str | None = None, loss: str | None = None) -> str:
    """The head (a key of :data:`HEADS`) named by an output activation and/or a loss.

    ``loss`` picks the head; ``output`` alone picks its default head (``softmax`` ->
    ``cross_entropy``, ``sigmoid`` -> ``binary_cross_entropy``, ``identity`` ->
    ``squared_error``); neither gives ``cross_entropy``. Both must agree.

    Raises:
      ValueError: an unknown name, or an output that is not the loss's head's (the message
        starts with ``output:``).
    """
    if loss is None:
        if output is None:
            return "cross_entropy"
        _choice("output", output, OUTPUTS)
        return next(name for name, h in HEADS.items() if h.activation.name == output)
    head = _choice("loss", loss, HEADS)
    if output is not None and output != head.activation.name:
        _choice("output", output, OUTPUTS)
        raise ValueError(
            f"output: {output!r} does not fit loss {loss!r}, whose head's output is "
            f"{head.activation.name!r}; give output={head.activation.name} or leave it out."
        )
    return loss


def init(
    key: Array,
    sizes: Sequence[int],
    *,
    scheme: str = "glorot_uniform",
    dtype: Any = jnp.float32,
    layer_norm: bool = False,
) -> Params:
    """Initialise an MLP with layer widths ``sizes`` (inputs first, outputs last).

    Args:
      key: PRNG key.
      sizes: ``[n_in, n_hidden_1, ..., n_out]``, at least two entries, each >= 1.
      scheme: weight initialiser: ``glorot``, ``he`` or ``lecun``, ``_normal`` or ``_uniform``.
      dtype: parameter dtype.
      layer_norm: give each hidden layer a layer norm's ``"scale"`` (ones) and ``"offset"``
        (zeros), both ``(sizes[i + 1],)``; the weights drawn are the same either way.

    Returns:
      A list with one ``{"W": (sizes[i], sizes[i + 1]), "b": (sizes[i + 1],)}`` per layer;
      biases start at zero.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2 or any(int(n) != n or n < 1 for n in sizes):
        raise ValueError(f"sizes must list at least two positive layer widths, got {list(sizes)}.")
    _choice("initialisation scheme", scheme, INITIALIZERS)
    params = _init(key, tuple(int(n) for n in sizes), scheme, jnp.dtype(dtype))
    if layer_norm:
        for layer in params[:-1]:
            width = layer["b"].shape
            layer |= {"scale": jnp.ones(width, dtype), "offset": jnp.zeros(width, dtype)}
    return params


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
    activation: str | Sequence[str] = "tanh",
    output: str = "identity",
    compute_dtype: Any = None,
    **options: Any,
) -> Array:
    """Forward pass: ``o = Φ_out(... Φ(x @ W1 + b1) ... @ WL + bL)``.

    Args:
      params: from :func:`init`.
      x: inputs of shape ``(B, in)`` (or ``(in,)`` for one example).
      activation: hidden activation (:data:`ACTIVATIONS`), or one per hidden layer.
      output: output activation: ``identity`` (regression, or logits), ``softmax``,
        ``sigmoid`` or ``exp``.
      compute_dtype: e.g. ``"bfloat16"``: mixed precision. Inputs and params are cast to it
        (through the ``astype`` gate, so gradients reach the params in their own dtype) for
        every layer; the last layer's pre-activations are cast back to the params' dtype
        before the output activation. None computes in the params' dtype.
      **options: ``layer_norm``, ``residual`` (as for :func:`mlp`) and ``key`` (dropout's
        key, as for :meth:`MLP.logits`, with ``dropout``).

    Returns:
      Outputs of shape ``(B, out)``, in the params' dtype.
    """
    phi_out = _choice("output", output, OUTPUTS)
    key = options.pop("key", None)
    net = mlp(_sizes(params), activation=activation, compute_dtype=compute_dtype, **options)
    return phi_out(net.logits(params, x, key=key))


def _masked_mean(per_example: Array, mask: Array | None) -> Array:
    if mask is None:
        return gates.mean(per_example)
    return gates.divide(gates.sum(gates.multiply(per_example, mask)), gates.sum(mask))


def loss(
    params: Params,
    x: Array,
    y: Array,
    *,
    activation: str | Sequence[str] = "tanh",
    output: str | None = None,
    mask: Array | None = None,
    compute_dtype: Any = None,
    **options: Any,
) -> Array:
    """Mean loss over a mini-batch, the head's (:data:`HEADS`): cross-entropy for ``softmax``
    (the default), squared error for ``identity``, half the Poisson deviance of the rates for
    ``exp``, or the head ``loss=`` names.

    For ``softmax`` the fused gate :func:`fmlp.gates.softmax_cross_entropy` takes the logits,
    so its gradient is the stable ``p - t``; for ``identity`` each example contributes
    ``1/2 sum_j (o_j - t_j)^2``, whose gradient is ``o - t`` as on the lecture's slide.

    Args:
      params: from :func:`init`.
      x: inputs ``(B, in)``.
      y: integer labels ``(B,)`` or one-hot/probability rows ``(B, K)`` for ``softmax``;
        targets ``(B, out)`` for ``identity``; 0/1 targets ``(B, K)`` for ``sigmoid``; counts
        ``(B, out)`` for ``exp``.
      activation: hidden activation, or one per hidden layer.
      output: the output activation (None: the one of ``loss=``, or softmax).
      mask: optional ``(B,)`` weights, 1 for real examples and 0 for padding.
      compute_dtype: mixed precision as in :func:`apply`; the loss is computed in the params'
        dtype.
      **options: the other keywords of :func:`mlp` (``loss``, ``dropout``, ``layer_norm``,
        ``residual``, ``label_smoothing``, ``class_weight``) and ``key`` (dropout's key).

    Returns:
      Scalar loss: the (masked) mean over the batch.
    """
    key = options.pop("key", None)
    net = mlp(
        _sizes(params), activation=activation, output=output, compute_dtype=compute_dtype,
        **options,
    )  # fmt: skip
    return net.loss(params, x, y, mask, key=key)


def _sizes(params: Params) -> tuple[int, ...]:
    return (int(params[0]["W"].shape[0]), *(int(layer["W"].shape[-1]) for layer in params))


class MLP(NamedTuple):
    """The model as one value: its architecture, head and compute dtype (no arrays are held).

    ``params = net.init(key)``, ``out = net.apply(params, x)``, ``l = net.loss(params, x, y)``;
    with dropout, ``net.loss(params, x, y, key=key)`` trains (each call a fresh ``key``) and
    every call without a key (``apply``, evaluation, prediction) runs the net without it.
    Each hidden layer computes ``s = h W + b``, then ``s`` layer-normed (``layer_norm``),
    ``a = Φ(s)``, ``a`` dropped out (training only), and ``h + a`` where ``residual`` and the
    layer keeps the width of the hidden layer before it (else ``a``). Build it with
    :func:`mlp` (which checks the options) or one of the lecture's nets.
    """

    sizes: tuple[int, ...]  # [n_in, n_hidden_1, ..., n_out]
    activation: str | tuple[str, ...]  # one for every hidden layer, or one each
    loss_name: str = "cross_entropy"  # the head: a key of HEADS
    scheme: str = "glorot_uniform"
    compute_dtype: str | None = None  # e.g. "bfloat16": mixed precision, as in apply
    # rate for every hidden layer, or one each; a traced one (a sweep member's) is on (_on)
    dropout: float | Array | tuple[float | Array, ...] = 0.0
    layer_norm: bool = False
    residual: bool = False
    label_smoothing: float | Array = 0.0  # classification heads: targets mixed with uniform
    class_weight: tuple[float, ...] | Array | None = None  # cross_entropy: per-class weights

    @property
    def head(self) -> Head:
        """This net's row of :data:`HEADS`."""
        return _choice("loss", self.loss_name, HEADS)

    @property
    def output(self) -> str:
        """The output activation's name: ``softmax``, ``sigmoid`` or ``identity``."""
        return self.head.activation.name

    @property
    def task(self) -> str:
        """The data this net's head fits: classification, multilabel or regression."""
        return self.head.task

    @property
    def activations(self) -> tuple[str, ...]:
        """The activation of each hidden layer."""
        return _per_layer(self.activation, len(self.sizes) - 2)

    @property
    def dropout_rates(self) -> tuple[float, ...]:
        """The dropout rate of each hidden layer."""
        return _per_layer(self.dropout, len(self.sizes) - 2)

    @property
    def stochastic(self) -> bool:
        """Whether training needs a key (some dropout rate is on)."""
        return any(_on(rate) for rate in self.dropout_rates)

    def init(self, key: Array, dtype: Any = jnp.float32) -> Params:
        """Fresh parameters for this architecture."""
        return init(key, self.sizes, scheme=self.scheme, dtype=dtype, layer_norm=self.layer_norm)

    def logits(self, params: Params, x: Array, *, key: Array | None = None) -> Array:
        """The last layer's pre-activations ``(B, out)``, in the params' dtype.

        ``key``: a PRNG key for dropout (training); None runs without dropout.
        """
        expected = {"W", "b", "scale", "offset"} if self.layer_norm else {"W", "b"}
        if len(params) > 1 and set(params[0]) != expected:
            raise ValueError(
                f"params: the hidden layers hold {sorted(params[0])}, but this net "
                f"(layer_norm={self.layer_norm}) expects {sorted(expected)}."
            )
        master = params[-1]["b"].dtype
        if self.compute_dtype is not None:
            cast = functools.partial(gates.astype, dtype=jnp.dtype(self.compute_dtype).name)
            params = [{name: cast(p) for name, p in layer.items()} for layer in params]
            x = cast(x)
        h = x
        hidden = zip(params[:-1], self.activations, self.dropout_rates)
        for i, (layer, phi, rate) in enumerate(hidden):
            s = dense(layer, h)
            if self.layer_norm:
                s = gates.layer_norm(s, layer["scale"], layer["offset"])
            a = ACTIVATIONS[phi](s)
            if key is not None and _on(rate):
                a = gates.dropout(a, jax.random.fold_in(key, i), rate=rate)
            skip = self.residual and i > 0 and self.sizes[i] == self.sizes[i + 1]
            h = gates.add(h, a) if skip else a
        s = dense(params[-1], h)
        if self.compute_dtype is not None:
            s = gates.astype(s, dtype=jnp.dtype(master).name)
        return s

    def apply(self, params: Params, x: Array) -> Array:
        """Outputs ``(B, out)``: probabilities for softmax and sigmoid nets, real values for
        regression; never with dropout."""
        return self.head.activation(self.logits(params, x))

    def per_example_loss(
        self, params: Params, x: Array, y: Array, *, key: Array | None = None
    ) -> Array:
        """The head's loss of each example ``(B,)``, label-smoothed and class-weighted as
        the net says; ``key`` turns dropout on."""
        s = self.logits(params, x, key=key)
        targets = self._smoothed(y, s.shape[-1], s.dtype)
        per_example = self.head.loss(s, targets)
        if self.class_weight is None:
            return per_example
        weights = jnp.asarray(self.class_weight, s.dtype)
        if jnp.issubdtype(y.dtype, jnp.integer):
            return gates.multiply(per_example, weights[y])
        return gates.multiply(per_example, jnp.matmul(y.astype(s.dtype), weights))

    def _smoothed(self, y: Array, classes: int, dtype: Any) -> Array:
        """Targets mixed with the uniform ones: ``(1 - ε) t + ε / K`` (``ε / 2`` per
        sigmoid output); ``y`` itself when ``label_smoothing`` is off (:func:`_on`)."""
        eps = self.label_smoothing
        if not _on(eps):
            return y
        if self.head.task == "multilabel":
            t, mix = y.astype(dtype), 0.5 * eps
        else:
            integer = jnp.issubdtype(y.dtype, jnp.integer)
            t, mix = (jax.nn.one_hot(y, classes, dtype=dtype) if integer else y), eps / classes
        return t * jnp.asarray(1.0 - eps, dtype) + jnp.asarray(mix, dtype)

    def loss(
        self,
        params: Params,
        x: Array,
        y: Array,
        mask: Array | None = None,
        *,
        key: Array | None = None,
    ) -> Array:
        """Scalar mean loss over the batch (weighted by ``mask`` ``(B,)`` when given);
        ``key`` turns dropout on (training)."""
        return _masked_mean(self.per_example_loss(params, x, y, key=key), mask)


def _on(value: float | Array) -> bool:
    """Whether a dropout rate or label smoothing is on: anything but a concrete 0.

    A traced value (a sweep's per-member rate, :mod:`fmlp.sweep`) is on whatever it holds, so
    the program depends only on which values are traced, never on a traced value.
    """
    return isinstance(value, jax.core.Tracer) or float(value) != 0


def _per_layer(value: Any, layers: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * layers


def mlp(
    sizes: Sequence[int],
    *,
    activation: str | Sequence[str] = "tanh",
    output: str | None = None,
    loss: str | None = None,
    scheme: str = "glorot_uniform",
    compute_dtype: str | None = None,
    dropout: float | Sequence[float] = 0.0,
    layer_norm: bool = False,
    residual: bool = False,
    label_smoothing: float = 0.0,
    class_weight: Sequence[float] | None = None,
) -> MLP:
    """An :class:`MLP` of any depth; every option is checked here, not at first use.

    Args:
      sizes: ``[n_in, n_hidden_1, ..., n_out]``.
      activation: a name of :data:`ACTIVATIONS`, or one per hidden layer.
      output: the output activation (:data:`OUTPUTS`); ``loss``: the head (:data:`HEADS`).
        Either names the head (:func:`head_name`); neither: ``cross_entropy`` (softmax).
      scheme: weight initialiser (:data:`INITIALIZERS`).
      compute_dtype: e.g. ``"bfloat16"``: mixed precision, as in :func:`apply`.
      dropout: rate in [0, 1) for every hidden layer, or one per hidden layer; applied in
        training only (when the loss gets a ``key``).
      layer_norm: a layer norm (with learned scale and offset) on each hidden layer's
        pre-activations.
      residual: add each hidden layer's input to its output where both have the same width
        (from the second hidden layer on); needs at least one such layer.
      label_smoothing: in [0, 1): classification targets become ``(1 - ε) t + ε / K``
        (``cross_entropy``) or ``(1 - ε) t + ε / 2`` (``binary_cross_entropy``).
      class_weight: ``cross_entropy`` only: a positive weight per class (``sizes[-1]`` of
        them) multiplying each example's loss.

    Raises:
      ValueError: an unknown name, or an option that does not fit the net; for the latter the
        message starts with the option's name (``dropout: ...``).
    """
    sizes = tuple(int(n) for n in sizes)
    hidden = len(sizes) - 2
    activation = _layer_option("activation", activation, hidden)
    for name in (activation,) if isinstance(activation, str) else activation:
        _choice("activation", name, ACTIVATIONS)
    head = head_name(output, loss)
    _choice("initialisation scheme", scheme, INITIALIZERS)
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype).name
    dropout = _layer_option("dropout", dropout, hidden)
    if not all(0.0 <= rate < 1.0 for rate in _per_layer(dropout, hidden)):
        raise ValueError(f"dropout: expected rates in [0, 1), got {dropout}.")
    if residual and not any(a == b for a, b in itertools.pairwise(sizes[1:-1])):
        raise ValueError(
            f"residual: no hidden layer has the width of the hidden layer before it (hidden "
            f"widths {list(sizes[1:-1])}), so there is nothing to skip; give two equal widths "
            "in a row, or residual=False."
        )
    task = HEADS[head].task
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}.")
    if label_smoothing and task == "regression":
        raise ValueError(
            f"label_smoothing: smooths class targets, but loss {head!r} is a regression head."
        )
    if class_weight is not None:
        class_weight = tuple(float(w) for w in class_weight)
        if head != "cross_entropy":
            raise ValueError(
                f"class_weight: weighs the classes of a cross_entropy head, not of {head!r}."
            )
        if len(class_weight) != sizes[-1] or not all(w > 0 for w in class_weight):
            raise ValueError(
                f"class_weight: expected {sizes[-1]} positive weights (one per class), got "
                f"{list(class_weight)}."
            )
    return MLP(
        sizes, activation, head, scheme, compute_dtype, dropout, bool(layer_norm),
        bool(residual), float(label_smoothing), class_weight,
    )  # fmt: skip


def _layer_option(name: str, value: Any, hidden: int) -> Any:
    """A per-layer option as MLP holds it: one value, or a tuple of one per hidden layer."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        return value
    if len(value) != hidden:
        raise ValueError(
            f"{name}: a list needs one entry per hidden layer ({hidden}), got {len(value)}: "
            f"{list(value)}."
        )
    return tuple(value)


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
