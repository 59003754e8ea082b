"""The pieces of training, all jittable and file-free: state, optimizer, the one compiled epoch.

The train state is a pytree (params, opt_state, step, epoch, key). One epoch is a single XLA
program (:func:`make_epoch`): it draws the epoch's order from the state's key, gathers the
epoch's mini-batches from the device-resident data, and runs forward, backward (the engine's
hand-written VJPs, or ``jax.grad`` as the oracle) and the optax update for each, with the
state's buffers donated. ``fmlp train`` (:mod:`fmlp.run`), the scikit-learn estimators and the
benchmark's fmlp contestants all train through it.

On several devices (or hosts) the same program runs on a :class:`fmlp.parallel.Layout`: each
mini-batch is split over the ``data`` axis and XLA reduces the gradients.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmlp import config, data, engine, nn, testing
from fmlp.errors import ConfigError, GradientMismatch, TrainingDiverged
from fmlp.parallel import Layout

Array = jax.Array
PyTree = Any
__all__ = ["GradientMismatch", "TrainingDiverged"]  # re-exported from fmlp.errors


class TrainState(NamedTuple):
    """Everything that determines the rest of a run; checkpointed whole."""

    params: nn.Params
    opt_state: optax.OptState
    step: Array  # int32 (): optimizer steps taken
    epoch: Array  # int32 (): epochs completed
    key: Array  # uint32 (2,): raw PRNG key for the next epoch's data order


# ----------------------------------------------------------------------------- optimizer


@contextlib.contextmanager
def optax_dtypes() -> Iterator[None]:
    """Standard dtype promotion for optax calls.

    optax mixes Python floats with int32 step counts, which strict promotion (fmlp's tests,
    and users who turn it on) refuses; every optax update and schedule runs inside this.
    """
    with jax.numpy_dtype_promotion("standard"):
        yield


def apply_optimizer(
    tx: optax.GradientTransformation, grads: PyTree, opt_state: optax.OptState, params: PyTree
) -> tuple[PyTree, optax.OptState]:
    """One optax step: ``(new params, new opt_state)`` from the gradients."""
    with optax_dtypes():
        updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


class Optimizer(NamedTuple):
    """A config's optimizer: the transformation each mini-batch step applies, and what the
    run reads from (and feeds into) its state between epochs."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule  # optimizer step -> its rate (before a plateau's scale)
    learning_rate: Callable[[TrainState], Array]  # state -> the rate of its last step, ()
    # (state, validation loss ()) -> state: once per epoch (schedule: plateau), else None
    plateau: Callable[[TrainState, Array], TrainState] | None


def decay_mask(params: PyTree) -> PyTree:
    """Which leaves of ``params`` weight decay applies to: True for the weight matrices ``W``,
    False for every other leaf (biases, and the scales and offsets of normalisation layers).

    The trainer's rule and the scikit-learn estimators' L2 penalty (scikit-learn's: no bias
    penalty) both read it.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "W", params
    )


HYPERPARAMETERS: tuple[str, ...] = (
    "learning_rate", "weight_decay", "momentum", "clip_norm", "b1", "b2", "eps",
)  # fmt: skip
"""The ``optimizer`` keys whose values live in the optimizer state (``optax.inject_hyperparams``):
they change no shape or program, so a sweep's members may differ in them and train in one
vectorized program."""


def make_optimizer(
    cfg: config.OptimizerConfig, *, steps_per_epoch: int, epochs: int, accumulate: int = 1
) -> Optimizer:
    """The optax optimizer a config asks for, with its learning-rate schedule (per epoch).

    The numeric :data:`HYPERPARAMETERS` are injected (``opt_state.hyperparams``); the
    schedule's shape (cosine, warm-up, plateau ...) is fixed by the config.

    ``accumulate`` > 1 wraps it in ``optax.MultiSteps``: each optimizer step takes the mean
    gradient of that many mini-batches, and the schedule counts optimizer steps. With
    ``schedule: plateau`` the updates are scaled by optax's ``reduce_on_plateau`` state, kept
    in the optimizer state (so a new scale needs no new program) and fed the validation loss
    by :attr:`Optimizer.plateau` once per epoch after the warm-up.
    """
    updates_per_epoch = steps_per_epoch / accumulate
    total = max(1, updates_per_epoch * epochs)
    warmup = updates_per_epoch * cfg.warmup_epochs

    shapes: dict[str, Callable[[], optax.Schedule]] = {
        "constant": lambda: optax.constant_schedule(1.0),
        "cosine": lambda: optax.cosine_decay_schedule(1.0, total),
        "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total),
        "exponential": lambda: optax.exponential_decay(1.0, updates_per_epoch, cfg.decay_rate),
        "plateau": lambda: (
            optax.linear_schedule(0.0, 1.0, warmup) if warmup else optax.constant_schedule(1.0)
        ),
    }
    shape = shapes[cfg.schedule]()  # the schedule for a peak rate of 1

    def schedule_of(lr: Any) -> optax.Schedule:
        """The schedule peaking at ``lr`` (a traced hyper-parameter inside the optimizer)."""
        return lambda count: lr * shape(count)

    mask = None if cfg.decay_biases else decay_mask

    def factory(
        learning_rate: Any,
        weight_decay: Any,
        momentum: Any,
        clip_norm: Any,
        b1: Any,
        b2: Any,
        eps: Any,
    ) -> optax.GradientTransformation:
        schedule, adam = schedule_of(learning_rate), {"b1": b1, "b2": b2, "eps": eps}
        if cfg.name == "adamw":
            tx = optax.adamw(schedule, weight_decay=weight_decay, mask=mask, **adam)
        else:
            if cfg.name == "sgd":  # momentum 0 keeps a zero trace: the same steps as none
                base = optax.sgd(schedule, momentum=momentum, nesterov=cfg.nesterov)
            else:
                base = optax.adam(schedule, **adam)
            tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=mask), base)
        if clip_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
        return tx

    tx = optax.inject_hyperparams(factory)(**{k: getattr(cfg, k) for k in HYPERPARAMETERS})
    schedule = schedule_of(cfg.learning_rate)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate).gradient_transformation()

    plateau = None
    if cfg.schedule == "plateau":
        p = cfg.plateau
        plateau = optax.contrib.reduce_on_plateau(
            factor=p.factor, patience=p.patience, cooldown=p.cooldown, min_scale=p.min_scale
        )

    def rate(state: TrainState) -> Array:  # the schedule counts optimizer steps
        with optax_dtypes():
            value = schedule(state.step // accumulate - 1)
        return value if plateau is None else value * state.opt_state[1].scale

    if plateau is None:
        return Optimizer(tx, schedule, rate, None)

    def feed(state: TrainState, value: Array) -> TrainState:
        inner, watch = state.opt_state
        with optax_dtypes():
            _, fed = plateau.update((), watch, value=value)
        warm = state.epoch > cfg.warmup_epochs
        fed = jax.tree.map(lambda new, old: jnp.where(warm, new, old), fed, watch)
        return state._replace(opt_state=(inner, fed))

    return Optimizer(_scaled_by_plateau(tx, plateau), schedule, rate, feed)


def _scaled_by_plateau(
    tx: optax.GradientTransformation, plateau: optax.GradientTransformationExtraArgs
) -> optax.GradientTransformation:
    """``tx`` with its updates multiplied by the scale held in ``plateau``'s state.

    The state is ``(tx's, plateau's)``; a step only reads the scale, which
    :attr:`Optimizer.plateau` updates between epochs.
    """

    def init(params: PyTree) -> tuple[optax.OptState, optax.OptState]:
        return tx.init(params), plateau.init(params)

    def update(updates: PyTree, state: tuple, params: PyTree = None) -> tuple[PyTree, tuple]:
        updates, inner = tx.update(updates, state[0], params)
        scale = state[1].scale
        return jax.tree.map(lambda u: scale.astype(u.dtype) * u, updates), (inner, state[1])

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- the model


def compute_dtype(precision: str) -> str | None:
    """The compute dtype for a config's ``precision`` (None: the params' own float32)."""
    return None if precision == "float32" else precision


def build_model(
    cfg: config.Config,
    *,
    num_features: int,
    num_outputs: int,
    class_weight: tuple[float, ...] | None = None,
) -> nn.MLP:
    """The config's net: ``num_features`` inputs, ``model.hidden`` widths, ``num_outputs``.

    ``class_weight`` (:func:`class_weights`) weighs the training loss; evaluation and
    prediction, which never read it, build the net without.
    """
    m = cfg.model
    return nn.mlp(
        [num_features, *m.hidden, num_outputs], activation=m.activation, loss=m.loss,
        scheme=m.init, compute_dtype=compute_dtype(cfg.precision), dropout=m.dropout,
        layer_norm=m.layer_norm, residual=m.residual, label_smoothing=m.label_smoothing,
        class_weight=class_weight,
    )  # fmt: skip


def class_weights(
    spec: str | list[float] | None, y: Any, num_classes: int | None
) -> tuple[float, ...] | None:
    """The per-class loss weights ``data.class_weight`` asks for, from the training labels.

    ``balanced`` weighs class ``k`` by ``n / (K n_k)`` (scikit-learn's rule: each class then
    carries the same total weight; a class absent from ``y`` gets 1); a list is taken as it is.

    Raises:
      ConfigError: a list whose length is not the number of classes.
    """
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(y), minlength=num_classes)
        weights = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0)
        return tuple(float(w) for w in weights)
    if len(spec) != num_classes:
        raise ConfigError(
            f"data.class_weight: expected one weight per class ({num_classes} classes), got "
            f"{len(spec)}: {spec}"
        )
    return tuple(spec)


def init_state(net: nn.MLP, tx: optax.GradientTransformation, *, seed: int) -> TrainState:
    """A run's initial state: params and data-order key from ``seed``, fresh optimizer, step 0."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    params = net.init(init_key)
    step, epoch = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)  # distinct: both donated
    return TrainState(params, tx.init(params), step, epoch, data_key)


# ----------------------------------------------------------------------------- the epoch

VALUE_AND_GRAD = {"engine": engine.value_and_grad, "jax": jax.value_and_grad}
"""Gradient backends: fmlp's engine (hand-written VJPs) or ``jax.value_and_grad`` (the oracle)."""


BATCHING = ("auto", "gathered", "permuted")
"""How an epoch forms its mini-batches (``train.batches``): gathered from the whole set inside
the loop, or from a permuted copy of the set made once per epoch; ``auto`` picks."""

STEP_FLOPS_OVERHEAD_BOUND = 2e6
"""Below this many matmul FLOPs per step, a CPU step is bound by per-operation overhead."""


def permuted_copy_fits(x: Any, y: Any) -> bool:
    """Whether a device can hold a second, permuted copy of the training arrays, with half
    of its free memory (:func:`fmlp.data.available_memory`) to spare."""
    need = sum(a.size * a.dtype.itemsize for a in (x, y))
    return 2 * need <= data.available_memory()


def use_permuted_copy(batching: str, net: nn.MLP, x: Any, y: Any, *, batch_size: int) -> bool:
    """Whether the epoch should gather its batches once from a permuted copy of the data.

    ``permuted`` and ``gathered`` say so; ``auto`` takes the permuted copy where a step is
    overhead-bound: on an accelerator (one kernel fewer per step), and on a CPU for steps of
    under :data:`STEP_FLOPS_OVERHEAD_BOUND` matmul FLOPs, where the 2-core CPU measured it
    faster (784-16-16-10 at batch 16); elsewhere the CPU gathers each batch from the set,
    which it measured faster for every larger step (benchmarks/RESULTS.md). Never when the
    copy would not fit.
    """
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}.")
    if batching == "gathered" or not permuted_copy_fits(x, y):
        return False
    if batching == "permuted" or jax.default_backend() != "cpu":
        return True
    step_flops = 2 * batch_size * sum(i * o for i, o in itertools.pairwise(net.sizes))
    return 3 * step_flops < STEP_FLOPS_OVERHEAD_BOUND  # forward, and two matmuls backward


def check_model_fits(net: nn.MLP, *, batch_size: int) -> None:
    """Raise :class:`~fmlp.errors.ConfigError` naming ``model.hidden`` when training ``net``
    needs more memory than the device has free, estimated before anything is allocated.

    The estimate: params, gradients and two optimizer moments in float32, plus a batch's
    activations forward and backward.
    """
    params = sum(i * o + o for i, o in itertools.pairwise(net.sizes))
    need = 4 * (4 * params + 2 * batch_size * sum(net.sizes))
    free = data.available_memory()
    if need > free:
        raise ConfigError(
            f"model.hidden={list(net.sizes[1:-1])}: training this {'-'.join(map(str, net.sizes))} "
            f"net ({params:,} parameters) at train.batch_size={batch_size} needs about "
            f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free; use narrower "
            "hidden layers or a smaller batch"
        )


def make_step(
    loss: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    gradients: str = "engine",
    skip_empty: bool = False,
    has_aux: bool = False,
) -> Callable[..., tuple[nn.Params, optax.OptState, Array]]:
    """One mini-batch step, the body of every epoch: ``step(params, opt_state, xb, yb, wb, *extra)
    -> (params, opt_state, weighted loss)``.

    Computes ``loss(params, xb, yb, wb, *extra)`` and its gradient, then the optax update; the
    weighted loss is the batch's loss times ``sum(wb)``, so an epoch's mean is the sum of these
    over the sum of the weights. Arguments as for :func:`make_epoch`.
    """
    grad_fn = VALUE_AND_GRAD[gradients](loss, has_aux=has_aux)

    def step(params: nn.Params, opt_state: optax.OptState, xb, yb, wb, *extra, **keyword):
        value, grads = grad_fn(params, xb, yb, wb, *extra, **keyword)
        if has_aux:
            value = value[1]  # the reported loss
        new = apply_optimizer(tx, grads, opt_state, params)
        if skip_empty:
            keep = jnp.sum(wb) > 0
            new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, (params, opt_state))
        return (*new, value * jnp.sum(wb))

    return step


def epoch_order(
    key: Array, w: Any, *, n: int, batch_size: int, shuffle: bool
) -> tuple[Array, Array, Array]:
    """An epoch's batches from the state's key: ``(next key, idx, weights)``.

    ``idx`` and ``weights`` are ``(ceil(n / batch_size), batch_size)``
    (:func:`fmlp.data.batch_indices`): example indices, and the padding mask times the
    per-example weights ``w`` (n,) when given (in ``w``'s dtype).
    """
    key, order_key = jax.random.split(key)
    idx, mask = data.batch_indices(order_key, n, batch_size, shuffle=shuffle)
    return key, idx, mask if w is None else w[idx] * mask.astype(w.dtype)


def _steps_with_progress(
    step: Callable, carry: tuple, batches: tuple, steps: int, progress: Callable,
    every: int, unroll: int,
) -> tuple:  # fmt: skip
    """``lax.scan(step, carry, batches)`` as chunks of ``every`` steps with ``progress(done,
    total)`` on the host after each chunk and after the last step: a callback per chunk, not
    a ``cond`` per step, so the steps between reports compile as in the plain loop."""
    every = max(1, min(every, steps))
    chunks = steps // every

    def at(carry: tuple, i: Array) -> tuple[tuple, None]:
        return step(carry, jax.tree.map(lambda a: a[i], batches))

    def chunk(carry: tuple, start: Array) -> tuple[tuple, None]:
        carry, _ = jax.lax.scan(at, carry, start + jnp.arange(every), unroll=unroll)
        jax.debug.callback(progress, start + every, carry[-1])
        return carry, None

    carry, _ = jax.lax.scan(chunk, carry, jnp.arange(chunks) * every)
    if steps % every:
        carry, _ = jax.lax.scan(at, carry, jnp.arange(chunks * every, steps), unroll=unroll)
        jax.debug.callback(progress, jnp.int32(steps), carry[-1])
    return carry


def make_epoch(
    loss: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    n: int,
    batch_size: int,
    gradients: str = "engine",
    shuffle: bool = True,
    skip_empty: bool = False,
    has_aux: bool = False,
    permute: bool = True,
    unroll: int = 1,
    donate: bool = True,
    layout: Layout | None = None,
    progress: Callable[[Any, Any], None] | None = None,
    progress_every: int = 1,
    keyed: bool = False,
) -> Callable[..., tuple[TrainState, Array]]:
    """The one compiled epoch: ``epoch(state, x, y, w=None, *extra) -> (state, mean loss)``.

    Each of the ``ceil(n / batch_size)`` mini-batch steps (:func:`make_step`) computes
    ``loss(params, x_b, y_b, w_b, *extra)`` (a scalar written with gates) and its gradient,
    then the optax update. ``x`` (n, ...) and ``y`` (n, ...) are the whole training set on
    the device; ``w_b`` (batch_size,) are the batch's weights: 1 for real examples and 0 for
    the padding of the last batch, times the per-example weights ``w`` (n,) when given.
    ``extra`` are further arrays the loss takes (e.g. a penalty strength). The returned loss
    is the weight-averaged batch loss.

    Args:
      loss: the mini-batch loss.
      tx: the optax transformation.
      n: training examples; batch_size: examples per mini-batch.
      gradients: ``engine`` or ``jax`` (:data:`VALUE_AND_GRAD`); the rest of the program is
        the same.
      shuffle: draw the order from ``state.key`` (else ``0..n-1``); the key advances either way.
      skip_empty: a batch whose weights sum to 0 leaves params and optimizer state untouched.
      has_aux: ``loss`` returns ``(value, reported)``: ``value`` is differentiated and the
        epoch's loss averages ``reported`` (e.g. a loss reported per output while its gradient
        is that of the sum over outputs).
      permute: gather the epoch's batches once into a permuted copy of the data and scan over
        contiguous batches (see :func:`use_permuted_copy`); else gather each batch inside the
        loop. The same batches either way, so the same params up to float rounding (XLA may
        order a small matmul's sums differently for the two).
      unroll: mini-batch steps per iteration of the compiled loop (``lax.scan``'s ``unroll``).
      donate: donate the input state's buffers to the output.
      layout: with a device layout, each batch is split over its ``data`` axis and the new
        state keeps the layout's shardings.
      progress: ``progress(steps_done, loss_sum)`` is called on the host (``jax.debug.callback``,
        asynchronous: no sync with the device) after every ``progress_every``-th step and the
        last; ``loss_sum`` is the sum of the example losses so far (divide by the examples
        seen for the running mean). The params are the same with or without it.
      keyed: the loss takes ``key=``, a fresh PRNG key each step (dropout), from
        :func:`step_keys`: they follow from ``state.key`` as the order does, so a resumed run
        draws the same masks as an uninterrupted one.
    """
    step_fn = make_step(loss, tx, gradients=gradients, skip_empty=skip_empty, has_aux=has_aux)

    def shard(*arrays: Array, stacked: bool = False) -> tuple[Array, ...]:
        return arrays if layout is None else layout.shard_batch(*arrays, stacked=stacked)

    def epoch(state: TrainState, x: Array, y: Array, w: Array | None = None, *extra: Array):
        key, idx, weights = epoch_order(state.key, w, n=n, batch_size=batch_size, shuffle=shuffle)
        steps = idx.shape[0]

        def step(carry: tuple, batch: tuple) -> tuple[tuple, None]:
            params, opt_state, total = carry
            if permute:
                xb, yb, wb, *step_key = batch
            else:
                rows, wb, *step_key = batch
                xb, yb, wb = shard(x[rows], y[rows], wb)
            keyword = {"key": step_key[0]} if keyed else {}
            params, opt_state, weighted = step_fn(params, opt_state, xb, yb, wb, *extra, **keyword)
            return (params, opt_state, total + weighted), None

        batches = shard(x[idx], y[idx], weights, stacked=True) if permute else (idx, weights)
        if keyed:
            batches = (*batches, step_keys(state.key, steps))
        zero = jnp.zeros((), jnp.result_type(*jax.tree.leaves(state.params)))
        carry = (state.params, state.opt_state, zero)
        if progress is None:
            carry, _ = jax.lax.scan(step, carry, batches, unroll=unroll)
        else:
            carry = _steps_with_progress(
                step, carry, batches, steps, progress, progress_every, unroll
            )
        params, opt_state, total = carry
        new_state = TrainState(params, opt_state, state.step + steps, state.epoch + 1, key)
        return new_state, total / jnp.maximum(jnp.sum(weights), 1e-30)

    donation = {"donate_argnums": 0} if donate else {}
    if layout is None:
        return jax.jit(epoch, **donation)
    return jax.jit(epoch, out_shardings=(layout.state, layout.replicated), **donation)


def make_streamed_epoch(
    loss: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    n: int,
    batch_size: int,
    gather: Callable[[Any, Any], Any],
    gradients: str = "engine",
    shuffle: bool = True,
    skip_empty: bool = False,
    has_aux: bool = False,
) -> Callable[..., tuple[TrainState, Array]]:
    """:func:`make_epoch` for inputs that stay on the host, e.g. a scipy sparse matrix.

    ``epoch(state, x, y, w=None, *extra) -> (state, mean loss)`` with the same order
    (:func:`epoch_order`), steps (:func:`make_step`) and result as :func:`make_epoch`'s, but
    each mini-batch of inputs is formed on the host by ``gather(x, rows) -> x_b``
    (``(batch_size, ...)``, e.g. the rows densified) and sent to the device for one compiled
    step: a host loop over the batches, whose loss is read back once per epoch. ``y`` and
    ``w`` are host arrays too.
    """
    step = jax.jit(make_step(loss, tx, gradients=gradients, skip_empty=skip_empty, has_aux=has_aux))
    order = jax.jit(functools.partial(epoch_order, n=n, batch_size=batch_size, shuffle=shuffle))

    def epoch(state: TrainState, x: Any, y: Any, w: Any = None, *extra: Array):
        key, idx, weights = order(state.key, w)
        idx, weights = np.asarray(idx), np.asarray(weights)
        params, opt_state, total = state.params, state.opt_state, 0.0
        for rows, wb in zip(idx, weights):
            params, opt_state, weighted = step(
                params, opt_state, gather(x, rows), y[rows], wb, *extra
            )
            total = total + weighted
        new_state = TrainState(params, opt_state, state.step + len(idx), state.epoch + 1, key)
        return new_state, total / max(float(np.sum(weights)), 1e-30)

    return epoch


def step_keys(key: Array, steps: int) -> Array:
    """The dropout keys ``(steps, 2)`` of the epoch that the state's ``key`` orders."""
    _, order_key = jax.random.split(key)
    return jax.random.split(jax.random.fold_in(order_key, 1), steps)


# ----------------------------------------------------------------------------- evaluation


def make_evaluate(
    net: nn.MLP, *, n: int, batch_size: int, layout: Layout | None = None
) -> Callable[[nn.Params, Array, Array], dict[str, Array]]:
    """A jitted ``evaluate(params, x, y)`` over ``n`` examples, in fixed-shape batches.

    Returns ``loss`` (mean per-example loss of ``net``'s head, without dropout, label
    smoothing or class weights) and the metrics of its task (:func:`metric_names`):

    - classification: ``accuracy`` and the ``confusion`` matrix (true x predicted, counts);
    - multilabel (sigmoid outputs, a label predicted where its probability exceeds 1/2):
      ``accuracy`` over every label of every example, ``f1`` (the mean of the labels'),
      ``label_accuracy`` and ``label_f1`` ``(K,)`` (F1 is 0 for a label never present nor
      predicted);
    - regression: ``mse`` and ``mae``, means over examples and outputs of the head's outputs
      (e.g. the rates ``exp(s)`` of the poisson head).

    With a ``layout``, the batch (rounded up to a multiple of the ``data`` axis; the padding
    is masked) is split over ``data``.
    """
    batch_size = min(batch_size, n)
    if layout is not None:
        batch_size = layout.round_batch(batch_size)
    task, num_outputs = net.task, net.sizes[-1]

    def body(acc: dict[str, Array], batch: tuple[Array, Array], params, x, y) -> tuple:
        idx, mask = batch
        inputs, target, mask = (x[idx], y[idx], mask)
        if layout is not None:
            inputs, target, mask = layout.shard_batch(inputs, target, mask)
        out = net.logits(params, inputs)
        acc = acc | {"loss": acc["loss"] + jnp.sum(net.head.loss(out, target) * mask)}
        if task == "classification":
            pred = jnp.argmax(out, axis=-1).astype(target.dtype)
            acc["correct"] = acc["correct"] + jnp.sum(jnp.where(pred == target, mask, 0.0))
            acc["confusion"] = acc["confusion"].at[target, pred].add(mask)
        elif task == "multilabel":
            pred, truth, m = out > 0, target > 0.5, mask[:, None]
            for name, hit in [("correct", pred == truth), ("tp", pred & truth),
                              ("fp", pred & ~truth), ("fn", ~pred & truth)]:  # fmt: skip
                acc[name] = acc[name] + jnp.sum(jnp.where(hit, m, 0.0), axis=0)
        else:
            error = net.head.activation(out) - target  # e.g. the rates exp(out) - counts
            acc["sse"] = acc["sse"] + jnp.sum(jnp.square(error) * mask[:, None])
            acc["sae"] = acc["sae"] + jnp.sum(jnp.abs(error) * mask[:, None])
        return acc, None

    def evaluate(params: nn.Params, x: Array, y: Array) -> dict[str, Array]:
        idx, mask = data.batch_indices(jax.random.PRNGKey(0), n, batch_size, shuffle=False)
        zero = jnp.zeros((), jnp.float32)
        init = {"loss": zero}
        if task == "classification":
            confusion = jnp.zeros((num_outputs, num_outputs), jnp.float32)
            init |= {"correct": zero, "confusion": confusion}
        elif task == "multilabel":
            init |= {k: jnp.zeros(num_outputs, jnp.float32) for k in ("correct", "tp", "fp", "fn")}
        else:
            init |= {"sse": zero, "sae": zero}
        acc, _ = jax.lax.scan(lambda a, b: body(a, b, params, x, y), init, (idx, mask))
        result = {"loss": acc["loss"] / n}
        if task == "classification":
            result |= {"accuracy": acc["correct"] / n, "confusion": acc["confusion"]}
        elif task == "multilabel":
            counted = 2.0 * acc["tp"] + acc["fp"] + acc["fn"]
            f1 = jnp.where(counted > 0, 2.0 * acc["tp"] / jnp.maximum(counted, 1.0), 0.0)
            result |= {
                "accuracy": jnp.mean(acc["correct"]) / n, "f1": jnp.mean(f1),
                "label_accuracy": acc["correct"] / n, "label_f1": f1,
            }  # fmt: skip
        else:
            result |= {"mse": acc["sse"] / (n * num_outputs), "mae": acc["sae"] / (n * num_outputs)}
        return result

    return jax.jit(evaluate)


METRICS = {
    "classification": ("accuracy",),
    "multilabel": ("accuracy", "f1"),
    "regression": ("mse", "mae"),
}
"""The scalar metrics evaluation reports for each task, the validation metric first."""


def metric_names(net: nn.MLP) -> tuple[str, ...]:
    """The scalar metrics of ``net``'s head (:data:`METRICS`), its validation metric first."""
    return METRICS[net.task]


def metric_name(net: nn.MLP) -> str:
    """The validation metric of ``net``'s head: ``accuracy`` (higher is better) or ``mse``."""
    return metric_names(net)[0]


# ----------------------------------------------------------------------------- parity


def _first_batch(
    x: Array, y: Array, key: Array, *, n: int, batch_size: int, layout: Layout | None, keyed: bool
) -> tuple[tuple[Array, Array, Array], dict[str, Array]]:
    """The first mini-batch ``(x_b, y_b, w_b)`` of the epoch that ``key`` (a state's) orders,
    and the loss's keyword arguments for it: ``{"key": its dropout key}`` when ``keyed``."""
    _, idx, mask = epoch_order(key, None, n=n, batch_size=batch_size, shuffle=True)
    batch = (x[idx[0]], y[idx[0]], mask[0])
    keyword = {"key": step_keys(key, idx.shape[0])[0]} if keyed else {}
    return (batch if layout is None else layout.shard_batch(*batch)), keyword


def make_gradients(
    loss: Callable[..., Array],
    *,
    n: int,
    batch_size: int,
    layout: Layout | None = None,
    keyed: bool = False,
) -> Callable[[nn.Params, Array, Array, Array], nn.Params]:
    """A jitted ``gradients(params, x, y, key)``: the engine's gradient of ``loss`` on the
    first batch (and, ``keyed``, with the first dropout key) of the epoch ``key`` (the
    state's) orders, shaped like ``params``."""

    def gradients(params: nn.Params, x: Array, y: Array, key: Array) -> nn.Params:
        batch, keyword = _first_batch(
            x, y, key, n=n, batch_size=batch_size, layout=layout, keyed=keyed
        )
        return engine.grad(loss)(params, *batch, **keyword)

    return jax.jit(gradients)


def make_gradient_check(
    loss: Callable[..., Array],
    *,
    n: int,
    batch_size: int,
    layout: Layout | None = None,
    keyed: bool = False,
) -> Callable[[nn.Params, Array, Array, Array], dict[str, Array]]:
    """A jitted ``check(params, x, y, key)``: engine vs ``jax.grad`` on the epoch's first batch.

    ``key`` is the state's key, so the batch (and, ``keyed``, the dropout key, as in
    :func:`make_epoch`) is the first one the next epoch will train on. Returns the relative
    error ``max|engine - jax| / max(|engine|, |jax|)`` per parameter, keyed by its path (e.g.
    ``"[0]['W']"``).
    """

    def check(params: nn.Params, x: Array, y: Array, key: Array) -> dict[str, Array]:
        batch, keyword = _first_batch(
            x, y, key, n=n, batch_size=batch_size, layout=layout, keyed=keyed
        )
        ours = engine.grad(loss)(params, *batch, **keyword)
        ref = jax.grad(loss)(params, *batch, **keyword)
        return {
            jax.tree_util.keystr(path): testing.relative_error(a, b)
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref))
        }

    return jax.jit(check)


def check_parity(errors: dict[str, float] | None, tolerance: float, epoch: int) -> None:
    """Raise :class:`GradientMismatch` if a parameter's relative error exceeds ``tolerance``."""
    if errors is None or max(errors.values()) <= tolerance:
        return
    worst = max(errors, key=errors.get)
    raise GradientMismatch(
        f"at epoch {epoch} the engine's gradient of params{worst} differs from jax.grad's by "
        f"{errors[worst]:.3g} (relative), above train.gradient_tolerance={tolerance:g}. A gate's "
        "hand-written VJP is probably wrong for these inputs: run `fmlp gradcheck` to find it."
    )
