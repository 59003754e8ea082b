"""The contestants: one function per framework, from a :class:`Problem` to its :class:`Trainer`.

Each peer is imported inside its own function (:func:`_require`), so a peer that is not
installed is a skipped row and ``fmlp`` itself never imports one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmlp import nn, train
from fmlp.bench.problem import NumpyParams, Problem, jax_params, numpy_params

BENCH_HINT = 'pip install -e ".[bench]"'


class Skip(Exception):
    """A contestant that cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A contestant built for one problem; its state is whatever it needs between epochs.

    ``init()`` returns a fresh state at the problem's initial weights (untimed);
    ``epoch(state, e)`` trains epoch ``e`` on ``problem.orders[e]`` and returns only after the
    work is done; ``export(state)`` gives the params as NumPy, W (in, out).
    """

    init: Callable[[], Any]
    epoch: Callable[[Any, int], Any]
    export: Callable[[Any], NumpyParams]
    notes: str = ""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise Skip(f"{module.split('.')[0]} not installed: {BENCH_HINT}") from err


def _per_step(
    problem: Problem, step: Callable[..., Any], sync: Callable[[Any], Any]
) -> Callable[[Any, int], Any]:
    """The usual tutorial loop: gather each mini-batch on the host, call ``step`` on it.

    ``step(state, x (B, features), y (B,), mask (B,), lr) -> state``; ``sync(state)`` waits
    for queued work and returns the state.
    """

    def epoch(state: Any, e: int) -> Any:
        idx, mask = problem.orders[e]
        lrs = problem.optim.lrs[e * problem.steps_per_epoch :]
        for i, rows in enumerate(idx):
            state = step(state, problem.x[rows], problem.y[rows], mask[i], float(lrs[i]))
        return sync(state)

    return epoch


def _masked_xent(logits: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(CE * mask) / sum(mask)``: logits (B, K) float32, y (B,) int, mask (B,) float32."""
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(per_example * mask) / jnp.sum(mask)


def _compute(dtype: str, tree: Any) -> Any:
    """Mixed precision: every array of ``tree`` cast to ``dtype`` (no-op for float32)."""
    return tree if dtype == "float32" else jax.tree.map(lambda a: a.astype(dtype), tree)


def _raw_loss(dtype: str) -> Callable[..., jax.Array]:
    """The raw-JAX contestants' loss ``(params, x, y, mask) -> scalar``, in plain ``jnp``."""

    def loss(params: nn.Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        params, x = _compute(dtype, (params, x))
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["W"] + layer["b"][None, :])
        logits = x @ params[-1]["W"] + params[-1]["b"][None, :]
        return _masked_xent(logits.astype(jnp.float32), y, mask)

    return loss


def fmlp_trainer(problem: Problem, *, gradients: str = "engine", batches: str = "auto") -> Trainer:
    """fmlp's training path, :func:`fmlp.train.make_epoch`: one jitted epoch on the device.

    ``batches`` is ``train.batches``: how the epoch forms its mini-batches.
    """
    net = nn.mlp(
        problem.sizes, activation="relu", output="softmax", scheme="he_uniform",
        compute_dtype=train.compute_dtype(problem.dtype),
    )  # fmt: skip
    tx = problem.optim.tx
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    permute = train.use_permuted_copy(batches, net, x, y, batch_size=problem.batch_size)
    train_epoch = train.make_epoch(
        net.loss, tx, n=problem.n, batch_size=problem.batch_size, gradients=gradients,
        permute=permute, unroll=problem.unroll,
    )  # fmt: skip

    def init() -> train.TrainState:
        params = jax_params(problem.params)
        step, epoch = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
        return train.TrainState(params, tx.init(params), step, epoch, jnp.asarray(problem.key))

    def epoch(state: train.TrainState, e: int) -> train.TrainState:
        del e  # fmlp draws epoch e's order from state.key: the same as problem.orders[e]
        return jax.block_until_ready(train_epoch(state, x, y)[0])

    notes = f"train.batches={batches}: " + ("permuted copy" if permute else "gathered in the loop")
    return Trainer(init, epoch, lambda state: numpy_params(state.params), notes)


def jax_scan_trainer(problem: Problem) -> Trainer:
    """Raw JAX + optax, the best hand-written loop: one jitted epoch over contiguous batches.

    Like the loop PERF-NOTES measures, the epoch draws its own order (``jax.random.permutation``
    of the epoch's key, split from the state's key as fmlp's epoch does, so the batches are
    the same), permutes the data once, ``x[perm]`` (steps, B, features), and ``lax.scan``s a
    ``jax.grad`` step over the contiguous batches, ``problem.unroll`` steps per iteration. The
    last batch is padded with example 0 and masked, as fmlp's is.
    """
    tx, loss = problem.optim.tx, _raw_loss(problem.dtype)
    n, batch = problem.n, problem.batch_size
    steps = problem.steps_per_epoch

    def step(carry: tuple, batch: tuple) -> tuple[tuple, None]:
        params, opt_state = carry
        grads = jax.grad(loss)(params, *batch)
        with train.optax_dtypes():
            updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    @functools.partial(jax.jit, donate_argnums=0)
    def run_epoch(state: tuple, x: Any, y: Any) -> tuple:
        params, opt_state, key = state
        key, order_key = jax.random.split(key)
        order = jax.random.permutation(order_key, n).astype(jnp.int32)
        perm = jnp.zeros(steps * batch, jnp.int32).at[:n].set(order)
        idx = perm.reshape(steps, batch)
        mask = (jnp.arange(steps * batch) < n).astype(jnp.float32).reshape(steps, batch)
        carry, _ = jax.lax.scan(
            step, (params, opt_state), (x[idx], y[idx], mask), unroll=problem.unroll
        )
        return (*carry, key)

    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)

    def init() -> tuple:
        params = jax_params(problem.params)
        return params, tx.init(params), jnp.asarray(problem.key)

    def epoch(state: tuple, e: int) -> tuple:
        del e  # the order comes from the state's key, the same as problem.orders[e]
        return jax.block_until_ready(run_epoch(state, x, y))

    return Trainer(init, epoch, lambda state: numpy_params(state[0]))


def jax_step_trainer(problem: Problem) -> Trainer:
    """Raw JAX + optax: a ``jax.jit`` step per mini-batch, params as plain dicts."""
    tx, loss = problem.optim.tx, _raw_loss(problem.dtype)

    @jax.jit
    def step(params: nn.Params, opt_state: Any, x: Any, y: Any, mask: Any) -> tuple:
        grads = jax.grad(loss)(params, x, y, mask)
        with train.optax_dtypes():
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def init() -> tuple:
        params = jax_params(problem.params)
        return params, tx.init(params)

    return Trainer(
        init,
        _per_step(problem, lambda s, x, y, m, lr: step(*s, x, y, m), jax.block_until_ready),
        lambda state: numpy_params(state[0]),
    )


def nnx_trainer(problem: Problem) -> Trainer:
    """Flax NNX: ``nnx.Linear`` layers, an ``nnx.jit`` step, ``nnx.Optimizer``."""
    nnx = _require("flax.nnx")
    compute = None if problem.dtype == "float32" else problem.dtype

    def given(value: np.ndarray) -> Callable[..., jax.Array]:
        return lambda key, shape, dtype: jnp.asarray(value, dtype)  # an initializer

    def linear(w: np.ndarray, b: np.ndarray, rngs: Any) -> Any:
        return nnx.Linear(
            *w.shape,
            dtype=compute,
            param_dtype=jnp.float32,
            kernel_init=given(w),
            bias_init=given(b),
            rngs=rngs,
        )

    class MLP(nnx.Module):
        def __init__(self, params: NumpyParams) -> None:
            rngs = nnx.Rngs(0)  # unused: the initializers return the shared weights
            self.layers = nnx.List([linear(w, b, rngs) for w, b in params])

        def __call__(self, x: jax.Array) -> jax.Array:
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x).astype(jnp.float32)

    @nnx.jit
    def step(model: MLP, optimizer: Any, x: Any, y: Any, mask: Any) -> None:
        grads = nnx.grad(lambda m: _masked_xent(m(x), y, mask))(model)
        with train.optax_dtypes():
            optimizer.update(model, grads)

    def init() -> tuple:
        model = MLP(problem.params)
        return model, nnx.Optimizer(model, problem.optim.tx, wrt=nnx.Param)

    def run(state: tuple, x: Any, y: Any, mask: Any, lr: float) -> tuple:
        step(*state, x, y, mask)
        return state

    def sync(state: tuple) -> tuple:
        jax.block_until_ready(nnx.state(state[0]))
        return state

    def export(state: tuple) -> NumpyParams:
        return [
            (np.asarray(layer.kernel.get_value()), np.asarray(layer.bias.get_value()))
            for layer in state[0].layers
        ]

    return Trainer(init, _per_step(problem, run, sync), export)


def equinox_trainer(problem: Problem) -> Trainer:
    """Equinox: ``eqx.nn.Linear`` layers (weight (out, in)), an ``eqx.filter_jit`` step."""
    eqx = _require("equinox")
    tx, dtype = problem.optim.tx, problem.dtype

    class MLP(eqx.Module):
        layers: list

        def __call__(self, x: jax.Array) -> jax.Array:
            layers, x = _compute(dtype, (self.layers, x))
            for layer in layers[:-1]:
                x = jax.nn.relu(jax.vmap(layer)(x))
            return jax.vmap(layers[-1])(x).astype(jnp.float32)

    @eqx.filter_jit
    def step(model: MLP, opt_state: Any, x: Any, y: Any, mask: Any) -> tuple:
        grads = eqx.filter_grad(lambda m: _masked_xent(m(x), y, mask))(model)
        with train.optax_dtypes():
            updates, opt_state = tx.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state

    def init() -> tuple:
        key = jax.random.PRNGKey(0)
        layers = [
            eqx.tree_at(  # the shapes of a Linear (no random init run), then the shared weights
                lambda layer: (layer.weight, layer.bias),
                eqx.filter_eval_shape(eqx.nn.Linear, *w.shape, key=key, dtype=jnp.float32),
                (jnp.asarray(w.T), jnp.asarray(b)),
            )
            for w, b in problem.params
        ]
        model = MLP(layers)
        return model, tx.init(eqx.filter(model, eqx.is_array))

    def export(state: tuple) -> NumpyParams:
        return [(np.asarray(layer.weight).T, np.asarray(layer.bias)) for layer in state[0].layers]

    return Trainer(
        init,
        _per_step(problem, lambda s, x, y, m, lr: step(*s, x, y, m), jax.block_until_ready),
        export,
    )


def torch_trainer(problem: Problem, *, compiled: bool = False) -> Trainer:
    """PyTorch eager (or ``torch.compile`` of the model and loss): ``torch.optim.SGD``."""
    torch = _require("torch")
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = problem.sizes
    linears = [torch.nn.Linear(i, o) for i, o in itertools.pairwise(sizes)]
    layers = [m for linear in linears[:-1] for m in (linear, torch.nn.ReLU())]
    model = torch.nn.Sequential(*layers, linears[-1]).to(device)
    bf16 = problem.dtype == "bfloat16"

    def loss(x: Any, y: Any, mask: Any) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        per_example = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
        return (per_example * mask).sum() / mask.sum()

    loss_fn = torch.compile(loss) if compiled else loss

    def init() -> Any:
        with torch.no_grad():  # in place: a compiled model stays compiled
            for linear, (w, b) in zip(linears, problem.params):
                linear.weight.copy_(torch.tensor(w.T))
                linear.bias.copy_(torch.tensor(b))
        return torch.optim.SGD(
            model.parameters(),
            lr=float(problem.optim.lrs[0]),
            momentum=problem.optim.momentum,
            nesterov=problem.optim.nesterov,
        )

    def step(opt: Any, x: np.ndarray, y: np.ndarray, mask: np.ndarray, lr: float) -> Any:
        x, y, mask = (torch.from_numpy(a).to(device) for a in (x, y.astype(np.int64), mask))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss_fn(x, y, mask).backward()
        opt.step()
        return opt

    def sync(opt: Any) -> Any:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return opt

    def export(opt: Any) -> NumpyParams:
        return [
            (linear.weight.detach().cpu().numpy().T.copy(), linear.bias.detach().cpu().numpy())
            for linear in linears
        ]

    notes = f"device {device.type}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        notes += f", float32 matmul precision {torch.get_float32_matmul_precision()}"
    return Trainer(init, _per_step(problem, step, sync), export, notes)


def sklearn_trainer(problem: Problem) -> Trainer:
    """scikit-learn ``MLPClassifier(solver="sgd")``, one ``partial_fit`` per epoch (CPU).

    Equal weights: a first ``partial_fit`` on one batch allocates ``coefs_``/``intercepts_``,
    which are then overwritten with the shared initial weights (sklearn's W is (in, out) like
    fmlp's), and the optimizer is dropped so the next call starts with zero velocity. Equal
    batches: ``shuffle=False`` and each epoch's examples passed in fmlp's order, so sklearn's
    consecutive batches are fmlp's, the last one short (its mean is the masked mean).
    """
    neural_network = _require("sklearn.neural_network")
    if problem.dtype != "float32":
        raise Skip("scikit-learn computes in float32/float64 only")
    rates = problem.optim.lrs
    notes = "CPU (NumPy/BLAS)"
    if np.any(rates != rates[0]):
        notes += "; constant learning rate: MLPClassifier has no per-step schedule"

    def init() -> Any:
        clf = neural_network.MLPClassifier(
            hidden_layer_sizes=problem.sizes[1:-1],
            activation="relu",
            solver="sgd",
            alpha=0.0,
            batch_size=problem.batch_size,
            learning_rate="constant",
            learning_rate_init=float(rates[0]),
            momentum=problem.optim.momentum,
            nesterovs_momentum=problem.optim.nesterov,
            max_iter=1,
            shuffle=False,
        )
        first = slice(0, problem.batch_size)
        clf.partial_fit(problem.x[first], problem.y[first], classes=np.arange(problem.sizes[-1]))
        clf.coefs_ = [w.copy() for w, _ in problem.params]
        clf.intercepts_ = [b.copy() for _, b in problem.params]
        del clf._optimizer  # private: the next partial_fit makes a fresh SGD (zero velocity)
        return clf

    def epoch(clf: Any, e: int) -> Any:
        idx, mask = problem.orders[e]
        order = idx.reshape(-1)[mask.reshape(-1) > 0]
        return clf.partial_fit(problem.x[order], problem.y[order])

    return Trainer(init, epoch, lambda clf: list(zip(clf.coefs_, clf.intercepts_)), notes)


CONTESTANTS: dict[str, Callable[[Problem], Trainer]] = {
    "fmlp": fmlp_trainer,
    "fmlp-jax": lambda problem: fmlp_trainer(problem, gradients="jax"),
    "fmlp-gathered": lambda problem: fmlp_trainer(problem, batches="gathered"),
    "fmlp-permuted": lambda problem: fmlp_trainer(problem, batches="permuted"),
    "jax-scan": jax_scan_trainer,
    "jax-step": jax_step_trainer,
    "nnx": nnx_trainer,
    "equinox": equinox_trainer,
    "torch": torch_trainer,
    "torch-compile": lambda problem: torch_trainer(problem, compiled=True),
    "sklearn": sklearn_trainer,
}
"""Every contestant, by name: a function from a :class:`Problem` to its :class:`Trainer`."""


def train_epochs(problem: Problem, name: str, epochs: int) -> NumpyParams:
    """Train contestant ``name`` for ``epochs`` epochs from the initial weights; its params."""
    trainer = CONTESTANTS[name](problem)
    state = trainer.init()
    for e in range(epochs):
        state = trainer.epoch(state, e)
    return trainer.export(state)
