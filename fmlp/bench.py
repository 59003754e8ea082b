"""Side-by-side training benchmark: fmlp against raw JAX, Flax NNX, Equinox, PyTorch, scikit-learn.

Every contestant trains the same MLP (ReLU hidden layers, softmax cross-entropy) in one
process on the same machine, from the same initial weights (``fmlp.nn.init``, he_uniform), on
the same standardized Fashion-MNIST, in the same mini-batches: the order fmlp's jitted epoch
draws from its state's key, the last batch padded and masked out of the mean loss
(``sum(loss * mask) / sum(mask)``), with the same SGD with momentum. The final params of every
contestant are compared with fmlp's (column dparams): equal within float rounding means the
contestants did the same arithmetic, so the timings compare like with like. (In bfloat16 the
frameworks round in different places, so dparams grows to bfloat16's rounding, ~5e-3.)

Usage (``fmlp bench`` and ``python scripts/bench.py`` are the same command; paths are relative
to the working directory, the repository root in these examples):
  fmlp bench                                          # every size, 2 epochs x 5 rounds
  fmlp bench --sizes 784-256-256-10:128 --sweep 64,512 --only fmlp,jax-step,torch
  fmlp bench --subset 2048 --epochs 2 --rounds 1 --out /tmp/bench.json  # quick look
  fmlp bench --time-to-accuracy 0.895                 # configs/fashion_mnist.yaml vs peers

Peers come from ``pip install -e ".[bench]"``; one that is not installed (or fails, e.g.
torch.compile without a compiler) is a skipped row with the reason. fmlp (``fmlp``, and
``fmlp-jax`` with ``jax.grad`` in place of the engine) runs its default path,
``fmlp.train.make_train_epoch``: one jitted ``lax.scan`` per epoch over device-resident data.
The peers run the usual tutorial loop: a Python loop over the epoch's batches, each gathered
on the host and passed to one compiled (or eager) step: ``jax-step`` (raw JAX + optax),
``nnx`` (Flax NNX), ``equinox``, ``torch`` and ``torch-compile`` (CUDA when available).
``sklearn`` (``MLPClassifier``, CPU) runs one ``partial_fit`` per epoch on the epoch's
examples in fmlp's order with ``shuffle=False``, so its batches are fmlp's too.

Throughput columns (one row per contestant and size; ``--rounds`` rounds, round-robin over the
contestants, each round training ``--epochs`` epochs from the initial weights):
  ex/s             training examples per second of the steady epochs (all but a contestant's
                   very first, which compiles/warms up), median [min-max] over rounds
  compile s        the first epoch's seconds minus the median steady epoch's seconds
  s/epoch          median steady epoch seconds
  test acc         test accuracy after the round's epochs (the same for every round)
  fmlp speed-up    fmlp ex/s / contestant ex/s (> 1: fmlp is faster)
  % matmul peak    achieved FLOP/s (matmul FLOPs per example, forward and backward, see
                   flops_per_example) as a share of the jitted matmul rate of the same dtype
                   measured in this run
  dparams vs fmlp  max |p - p_fmlp| / max |p_fmlp| over the W and b after the last round

Time to accuracy (``--time-to-accuracy T``): fmlp runs ``--config`` (default
configs/fashion_mnist.yaml) as is, built from the pieces ``fmlp.train.fit`` builds; the
peers use the same architecture, initial weights, split, batches and optimizer (SGD with the
config's momentum/Nesterov and per-step learning-rate schedule). The clock starts before
each contestant's setup (data loading and imports excluded, compilation included) and
stops when the test accuracy, evaluated after every epoch with the clock paused, first
reaches T; each round starts from scratch, compiling again.

Defaults differ by backend: on GPU a 784-8192-8192-8192-10 case at batch 8192 in bfloat16
(mixed precision: float32 params, layers in bfloat16, loss in float32) is added, and the
JSON goes to benchmarks/bench_gpu.json instead of benchmarks/bench_cpu.json (``_tta``
appended in time-to-accuracy mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmlp import config, data, nn, train

BENCH_HINT = 'pip install -e ".[bench]"'
CPU_CASES = ("784-16-16-10:16", "784-256-256-10:128", "784-1024-1024-10:512")
GPU_CASES = ("784-8192-8192-8192-10:8192:bfloat16",)
SWEEP_WIDTHS = (64, 128, 512, 2048)
SWEEP_BATCH = 128
DTYPES = ("float32", "bfloat16")

NumpyParams = list[tuple[np.ndarray, np.ndarray]]  # one (W (in, out), b (out,)) per layer


class Skip(Exception):
    """A contestant that cannot run here; the message says why."""


# ----------------------------------------------------------------------------- the problem


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
    with jax.numpy_dtype_promotion("standard"):  # optax schedules mix Python floats and ints
        rates = jax.jit(schedule)(jnp.arange(steps, dtype=jnp.int32))
    return Optim(tx, np.asarray(rates, np.float32), momentum, nesterov)


@dataclasses.dataclass(frozen=True)
class Problem:
    """What every contestant trains on: data, initial weights, batches, optimizer, dtype.

    ``x`` (n, features) float32 standardized, ``y`` (n,) int32; the same for ``x_test`` and
    ``y_test``. ``orders[e]`` is epoch ``e``'s ``(idx, mask)``, both (steps, batch): example
    indices and 1.0/0.0 weights (0.0 marks the padding of the last batch), exactly what
    fmlp's epoch draws from its state's ``key``. ``unroll`` is fmlp's alone: mini-batch steps
    per iteration of its compiled loop (``train.unroll``); the peers loop in Python.
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


def initial(seed: int, sizes: Sequence[int]) -> tuple[NumpyParams, np.ndarray]:
    """``(params, key)`` as :func:`fmlp.train.init_state` draws them: he_uniform, zero biases."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    params = nn.init(init_key, sizes, scheme="he_uniform", dtype=jnp.float32)
    return [(np.asarray(p["W"]), np.asarray(p["b"])) for p in params], np.asarray(data_key)


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


# ----------------------------------------------------------------------------- contestants


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


def _jax_params(params: NumpyParams) -> nn.Params:
    return [{"W": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in params]


def _numpy_params(params: nn.Params) -> NumpyParams:
    return [(np.asarray(p["W"]), np.asarray(p["b"])) for p in params]


def fmlp_trainer(problem: Problem, *, gradients: str = "engine") -> Trainer:
    """fmlp's training path: one jitted ``lax.scan`` epoch over device-resident data."""
    model = config.ModelConfig(
        hidden=list(problem.sizes[1:-1]), activation="relu", output="softmax", init="he_uniform"
    )
    precision = {} if problem.dtype == "float32" else {"precision": problem.dtype}
    tx = problem.optim.tx
    train_epoch = train.make_train_epoch(
        train.loss_fn(model, **precision),
        tx,
        n=problem.n,
        batch_size=problem.batch_size,
        gradients=gradients,
        unroll=problem.unroll,
    )
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)

    def init() -> train.TrainState:
        params = _jax_params(problem.params)
        step, epoch = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
        return train.TrainState(params, tx.init(params), step, epoch, jnp.asarray(problem.key))

    def epoch(state: train.TrainState, e: int) -> train.TrainState:
        del e  # fmlp draws epoch e's order from state.key: the same as problem.orders[e]
        return jax.block_until_ready(train_epoch(state, x, y)[0])

    return Trainer(init, epoch, lambda state: _numpy_params(state.params))


def jax_step_trainer(problem: Problem) -> Trainer:
    """Raw JAX + optax: a ``jax.jit`` step per mini-batch, params as plain dicts."""
    tx, dtype = problem.optim.tx, problem.dtype

    def loss(params: nn.Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        params, x = _compute(dtype, (params, x))
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["W"] + layer["b"][None, :])
        logits = x @ params[-1]["W"] + params[-1]["b"][None, :]
        return _masked_xent(logits.astype(jnp.float32), y, mask)

    @jax.jit
    def step(params: nn.Params, opt_state: Any, x: Any, y: Any, mask: Any) -> tuple:
        grads = jax.grad(loss)(params, x, y, mask)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def init() -> tuple:
        params = _jax_params(problem.params)
        return params, tx.init(params)

    return Trainer(
        init,
        _per_step(problem, lambda s, x, y, m, lr: step(*s, x, y, m), jax.block_until_ready),
        lambda state: _numpy_params(state[0]),
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
        with jax.numpy_dtype_promotion("standard"):
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
        with jax.numpy_dtype_promotion("standard"):
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


# ----------------------------------------------------------------------------- measuring


def _reason(err: Exception) -> str:
    """Why a contestant is skipped: a :class:`Skip`'s message, else the error's first line."""
    if isinstance(err, Skip):
        return str(err)
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:200]


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "per_round": list(values),
    }


def _row(name: str, problem: Problem, **fields: Any) -> dict[str, Any]:
    return {
        "contestant": name,
        "model": "-".join(map(str, problem.sizes)),
        "batch": problem.batch_size,
        "dtype": problem.dtype,
        "train_examples": problem.n,
    } | fields


def _skipped(name: str, problem: Problem, reason: str) -> dict[str, Any]:
    return _row(name, problem, status="skipped", notes=reason)


def flops_per_example(sizes: Sequence[int]) -> int:
    """Matmul FLOPs per training example: forward, weight gradients, input gradients.

    ``2 * in * out`` each per layer, except that no one computes the input gradient of the
    first layer (the data): ``6 * sum(in * out) - 2 * sizes[0] * sizes[1]``.
    """
    return 6 * sum(i * o for i, o in itertools.pairwise(sizes)) - 2 * sizes[0] * sizes[1]


def throughput(
    problem: Problem, names: Sequence[str], *, epochs: int, rounds: int, peak_flops: float
) -> list[dict[str, Any]]:
    """Train every contestant ``rounds`` times, round-robin, ``epochs`` epochs each; one row each.

    ``peak_flops`` is the measured matmul rate (FLOP/s) the achieved rate is compared with.
    ``epochs * rounds`` must be at least 2: a contestant's first epoch only warms up.
    """
    if epochs * rounds < 2:
        raise ValueError("epochs * rounds must be at least 2: the first epoch is warm-up")
    rows: dict[str, dict[str, Any]] = {}
    trainers: dict[str, Trainer] = {}
    for name in names:
        try:
            trainers[name] = CONTESTANTS[name](problem)
        except Exception as err:
            rows[name] = _skipped(name, problem, _reason(err))
    seconds: dict[str, list[list[float]]] = {name: [] for name in trainers}
    final: dict[str, NumpyParams] = {}
    for _ in range(rounds):
        for name, trainer in list(trainers.items()):
            try:
                state, secs = trainer.init(), []
                for e in range(epochs):
                    start = time.perf_counter()
                    state = trainer.epoch(state, e)
                    secs.append(time.perf_counter() - start)
            except Exception as err:  # e.g. torch.compile without a working compiler
                rows[name] = _skipped(name, problem, _reason(err))
                del trainers[name]
                continue
            seconds[name].append(secs)
            final[name] = trainer.export(state)

    for name, trainer in trainers.items():
        steady = [secs[1:] if r == 0 else secs for r, secs in enumerate(seconds[name])]
        rates = [problem.n * len(s) / sum(s) for s in steady if s]
        epoch_seconds = statistics.median([s for secs in steady for s in secs])
        rate = statistics.median(rates)
        achieved = rate * flops_per_example(problem.sizes)
        ref = final.get("fmlp")
        rows[name] = _row(
            name,
            problem,
            status="ok",
            examples_per_second=_spread(rates),
            compile_seconds=seconds[name][0][0] - epoch_seconds,
            epoch_seconds=seconds[name],
            seconds_per_epoch=epoch_seconds,
            epochs=epochs,
            test_accuracy=accuracy(final[name], problem.x_test, problem.y_test),
            achieved_gflops=achieved / 1e9,
            fraction_of_matmul_peak=achieved / peak_flops,
            params_difference_vs_fmlp=None if ref is None else params_difference(final[name], ref),
            notes=trainer.notes,
        )
    fmlp_rate = rows.get("fmlp", {}).get("examples_per_second", {}).get("median")
    for row in rows.values():
        if row["status"] == "ok":
            peer = row["examples_per_second"]["median"]
            row["fmlp_speedup"] = None if fmlp_rate is None else fmlp_rate / peer
    return [rows[name] for name in names]


def _race(problem: Problem, name: str, target: float, epochs: int) -> dict[str, Any]:
    """Seconds (clock paused for test evaluation) until test accuracy >= ``target``."""
    start, paused = time.perf_counter(), 0.0
    trainer = CONTESTANTS[name](problem)
    state = trainer.init()
    result = {"seconds": None, "epoch": None, "accuracy": None, "notes": trainer.notes}
    for e in range(epochs):
        state = trainer.epoch(state, e)
        stop = time.perf_counter()
        result["accuracy"] = accuracy(trainer.export(state), problem.x_test, problem.y_test)
        if result["accuracy"] >= target:
            return result | {"seconds": stop - start - paused, "epoch": e + 1}
        paused += time.perf_counter() - stop
    return result


def time_to_accuracy(
    problem: Problem, names: Sequence[str], *, target: float, epochs: int, rounds: int
) -> list[dict[str, Any]]:
    """For each contestant, seconds and epochs to ``target`` test accuracy; rounds round-robin."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name in names:
            if name in rows:
                continue
            try:
                runs[name].append(_race(problem, name, target, epochs))
            except Exception as err:
                rows[name] = _skipped(name, problem, _reason(err))
    for name, results in runs.items():
        if name in rows:
            continue
        reached = [r["seconds"] for r in results if r["seconds"] is not None]
        notes = [results[0]["notes"], "" if reached else f"not reached in {epochs} epochs"]
        rows[name] = _row(
            name,
            problem,
            status="ok",
            target=target,
            seconds_to_target=_spread(reached) if len(reached) == len(results) else None,
            epoch=results[0]["epoch"],
            test_accuracy=results[0]["accuracy"],
            notes="; ".join(note for note in notes if note),
        )
    return [rows[name] for name in names]


def matmul_rate(dtype: str, n: int, reps: int = 10) -> dict[str, Any]:
    """The device's rate for a jitted ``jnp.dot`` of two (n, n) ``dtype`` matrices.

    The fastest of ``reps`` calls: the rate the device reaches, which the training rates are
    compared with (a median would let other load on the machine lower the bar).
    """
    a = jnp.ones((n, n), dtype)  # the values do not change a dense matmul's speed
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        times.append(time.perf_counter() - start)
    return {"n": n, "dtype": dtype, "gflops": 2 * n**3 / min(times) / 1e9}


# ----------------------------------------------------------------------------- reporting


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(command: str) -> dict[str, Any]:
    """Date, machine, device, library versions and the command line."""
    packages = ("fmlp", "jax", "jaxlib", "optax", "flax", "equinox", "torch", "scikit-learn")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("numpy", *packages)},
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


THROUGHPUT_COLUMNS = (
    "contestant", "model", "batch", "dtype", "ex/s median [min-max]", "compile s", "s/epoch",
    "test acc", "fmlp speed-up", "% matmul peak", "dparams vs fmlp", "notes",
)  # fmt: skip
TTA_COLUMNS = (
    "contestant", "model", "batch", "target", "s to target median [min-max]", "epoch",
    "test acc", "notes",
)  # fmt: skip


def _table(columns: Sequence[str], lines: list[list[str]]) -> str:
    head = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(head + ["| " + " | ".join(cells) + " |" for cells in lines])


def throughput_table(rows: list[dict[str, Any]]) -> str:
    """The throughput rows as a markdown table (columns: :data:`THROUGHPUT_COLUMNS`)."""
    lines = []
    for r in rows:
        cells = [r["contestant"], r["model"], str(r["batch"]), r["dtype"]]
        if r["status"] != "ok":
            lines.append([*cells, *["-"] * 7, f"skipped: {r['notes']}"])
            continue
        e = r["examples_per_second"]
        lines.append(
            [
                *cells,
                f"{_si(e['median'])} [{_si(e['min'])}-{_si(e['max'])}]",
                f"{r['compile_seconds']:.2f}",
                f"{r['seconds_per_epoch']:.3g}",
                f"{r['test_accuracy']:.4f}",
                _fmt(r["fmlp_speedup"], ".2f"),
                f"{100 * r['fraction_of_matmul_peak']:.1f}",
                _fmt(r["params_difference_vs_fmlp"], ".1e"),
                r["notes"],
            ]
        )
    return _table(THROUGHPUT_COLUMNS, lines)


def tta_table(rows: list[dict[str, Any]]) -> str:
    """The time-to-accuracy rows as a markdown table (columns: :data:`TTA_COLUMNS`)."""
    lines = []
    for r in rows:
        cells = [r["contestant"], r["model"], str(r["batch"])]
        if r["status"] != "ok":
            lines.append([*cells, *["-"] * 4, f"skipped: {r['notes']}"])
            continue
        s = r["seconds_to_target"]
        spread = "-" if s is None else f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"
        lines.append(
            [
                *cells,
                f"{r['target']:.4f}",
                spread,
                _fmt(r["epoch"], "d"),
                f"{r['test_accuracy']:.4f}",
                r["notes"],
            ]
        )
    return _table(TTA_COLUMNS, lines)


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fmlp bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        help="MODEL[:BATCH[:DTYPE]],... e.g. 784-256-256-10:128 (default: "
        f"{','.join(CPU_CASES)}, on GPU also {','.join(GPU_CASES)})",
    )
    p.add_argument(
        "--sweep",
        help=f"widths W of 784-W-W-10 at batch {SWEEP_BATCH} (default "
        f"{','.join(map(str, SWEEP_WIDTHS))} unless --sizes is given; '' for none)",
    )
    p.add_argument(
        "--dtype", choices=DTYPES, help="compute dtype of every case (default: each case's)"
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs per round (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--subset", type=int, help="train on this many examples (quick runs)")
    p.add_argument("--only", help=f"comma-separated contestants among {','.join(CONTESTANTS)}")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument(
        "--unroll",
        type=int,
        default=1,
        help="fmlp's steps per iteration of its compiled epoch loop (default 1; "
        "--time-to-accuracy takes the config's train.unroll)",
    )
    p.add_argument("--data-path", help="directory of the Fashion-MNIST IDX files")
    p.add_argument("--matmul-size", type=int, help="n of the n x n matmul (default 2048, GPU 8192)")
    p.add_argument("--out", help="JSON path (default benchmarks/bench_<backend>[_tta].json)")
    p.add_argument(
        "--time-to-accuracy",
        type=float,
        metavar="T",
        help="instead: seconds to test accuracy T, trained as --config says",
    )
    p.add_argument(
        "--config",
        default="configs/fashion_mnist.yaml",
        help="fmlp config for --time-to-accuracy (default configs/fashion_mnist.yaml)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for --time-to-accuracy, e.g. train.epochs=5 (repeatable)",
    )
    return p


def _cases(args: argparse.Namespace, gpu: bool) -> list[Case]:
    specs = args.sizes.split(",") if args.sizes else [*CPU_CASES, *(GPU_CASES if gpu else ())]
    sweep = args.sweep if args.sweep is not None else ("" if args.sizes else None)
    widths = SWEEP_WIDTHS if sweep is None else [int(w) for w in sweep.split(",") if w]
    cases = [parse_case(s) for s in specs] + [Case((784, w, w, 10), SWEEP_BATCH) for w in widths]
    return [dataclasses.replace(c, dtype=args.dtype) if args.dtype else c for c in cases]


def _run_throughput(args: argparse.Namespace, names: list[str], gpu: bool) -> dict[str, Any]:
    ds = data.load(
        "fashion_mnist", path=args.data_path, validation_fraction=0.0, subset=args.subset
    )
    rates: dict[str, dict[str, Any]] = {}
    rows = []
    for case in _cases(args, gpu):
        if case.dtype not in rates:
            rates[case.dtype] = matmul_rate(case.dtype, args.matmul_size or (8192 if gpu else 2048))
        steps = args.epochs * math.ceil(len(ds.x_train) / case.batch)
        params, key = initial(args.seed, case.sizes)
        problem = make_problem(
            ds.x_train, ds.y_train, ds.x_test, ds.y_test,
            sizes=case.sizes, batch_size=case.batch, epochs=args.epochs,
            optim=constant_sgd(args.lr, args.momentum, steps=steps),
            params=params, key=key, dtype=case.dtype, unroll=args.unroll,
        )  # fmt: skip
        peak = rates[case.dtype]["gflops"] * 1e9
        rows += throughput(problem, names, epochs=args.epochs, rounds=args.rounds, peak_flops=peak)
        print(throughput_table(rows[-len(names) :]) + "\n", flush=True)
    settings = {k: vars(args)[k] for k in ("epochs", "rounds", "lr", "momentum", "seed", "unroll")}
    return {"settings": settings, "matmul": rates, "results": rows}


def _run_tta(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    overrides = list(args.override)
    overrides += [f"data.subset={args.subset}"] if args.subset else []
    overrides += [f"data.path={args.data_path}"] if args.data_path else []
    cfg = config.resolve(args.config, overrides)
    m, o = cfg.model, cfg.optimizer
    plain = ("relu", "softmax", "sgd", 0.0, None)
    if (m.activation, m.output, o.name, o.weight_decay, o.clip_norm) != plain:
        raise config.ConfigError(
            f"--time-to-accuracy needs model.activation=relu, model.output=softmax and plain SGD "
            f"(optimizer.name=sgd, no weight_decay or clip_norm); {args.config} has "
            f"{m.activation}, {m.output}, {o.name}, weight_decay={o.weight_decay}, "
            f"clip_norm={o.clip_norm}"
        )
    ds = train.load_dataset(cfg)
    sizes = train.model_sizes(cfg, ds)
    epochs, batch = cfg.train.epochs, cfg.train.batch_size
    steps_per_epoch = math.ceil(len(ds.x_train) / batch)
    tx, schedule = train.make_optimizer(o, steps_per_epoch=steps_per_epoch, epochs=epochs)
    state = train.init_state(cfg, sizes, tx)
    optim = scheduled_sgd(
        tx, schedule, o.momentum, nesterov=o.nesterov, steps=steps_per_epoch * epochs
    )
    problem = make_problem(
        ds.x_train, ds.y_train, ds.x_test, ds.y_test,
        sizes=sizes, batch_size=batch, epochs=epochs, optim=optim,
        params=_numpy_params(state.params), key=np.asarray(state.key),
        dtype=cfg.precision, unroll=cfg.train.unroll,
    )  # fmt: skip
    rows = time_to_accuracy(
        problem, names, target=args.time_to_accuracy, epochs=epochs, rounds=args.rounds
    )
    print(tta_table(rows) + "\n", flush=True)
    settings = {
        "config": args.config,
        "overrides": overrides,
        "rounds": args.rounds,
        "epochs": epochs,
        "clock": "setup + compile + training epochs; test evaluation paused",
    }
    return {"settings": settings, "results": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark the command line asks for; print tables, write and return the JSON."""
    # torch shares the GPU: XLA must not take 75% of it up front (read when JAX starts a GPU)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONTESTANTS)
    unknown = sorted(set(names) - set(CONTESTANTS))
    if unknown:
        parser.error(f"--only: unknown contestants {unknown}; choose from {list(CONTESTANTS)}")
    if args.time_to_accuracy is None and args.epochs * args.rounds < 2:
        parser.error("--epochs x --rounds must be at least 2: the first epoch is warm-up")
    if args.unroll < 1:
        parser.error(f"--unroll must be at least 1, got {args.unroll}")
    backend = jax.default_backend()
    command = shlex.join(["fmlp", "bench", *argv])
    meta = metadata(command)
    print(f"# fmlp training benchmark, {meta['date']}\n")
    print(f"{meta['cpu']} ({meta['cpu_count']} cores), {backend}: {meta['device']}")
    print(", ".join(f"{p} {v}" for p, v in meta["versions"].items() if v) + "\n")
    if args.time_to_accuracy is not None:
        report = _run_tta(args, names)
    else:
        report = _run_throughput(args, names, backend == "gpu")
        for rate in report["matmul"].values():
            print(f"matmul {rate['n']}x{rate['n']} {rate['dtype']}: {rate['gflops']:.1f} GFLOP/s")
    report = {"meta": meta} | report
    tta = "_tta" if args.time_to_accuracy is not None else ""
    out = Path(args.out or f"benchmarks/bench_{backend}{tta}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report
