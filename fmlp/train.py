"""Training: optax mini-batch SGD (and friends), one jitted ``lax.scan`` per epoch.

The train state is a pytree (params, opt_state, step, epoch, key). One epoch is a single XLA
program: it draws the epoch's order from the state's key, slices each fixed-shape mini-batch
out of the device-resident data, and runs forward, backward (the engine's hand-written VJPs,
or ``jax.grad`` as the oracle) and the optax update, with the state's buffers donated. The
host reads the epoch's metrics once, writes them, and checkpoints.

On several devices (or hosts) the same program runs on a :mod:`fmlp.parallel` mesh: each
mini-batch is split over the ``data`` axis and XLA reduces the gradients.

:func:`fit` is the Python API; ``fmlp train`` is a thin layer over it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from fmlp import checkpoint, config, data, engine, gates, nn, parallel, testing, viz

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    """Everything that determines the rest of a run; checkpointed whole."""

    params: nn.Params
    opt_state: optax.OptState
    step: Array  # int32 (): optimizer steps taken
    epoch: Array  # int32 (): epochs completed
    key: Array  # uint32 (2,): raw PRNG key for the next epoch's data order


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class GradientMismatch(RuntimeError):
    """The engine's gradients drifted from jax.grad's beyond train.gradient_tolerance."""


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (it already holds a run, or has none)."""


# ----------------------------------------------------------------------------- pieces


def make_optimizer(
    cfg: config.OptimizerConfig, *, steps_per_epoch: int, epochs: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation and learning-rate schedule (per step) a config asks for."""
    lr, total = cfg.learning_rate, max(1, steps_per_epoch * epochs)
    schedules: dict[str, Callable[[], optax.Schedule]] = {
        "constant": lambda: optax.constant_schedule(lr),
        "cosine": lambda: optax.cosine_decay_schedule(lr, total),
        "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, lr, steps_per_epoch * cfg.warmup_epochs, total
        ),
        "exponential": lambda: optax.exponential_decay(lr, steps_per_epoch, cfg.decay_rate),
    }
    schedule = schedules[cfg.schedule]()
    if cfg.name == "adamw":
        tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    else:
        if cfg.name == "sgd":
            base = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
        else:
            base = optax.adam(schedule)
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), base)
    if cfg.clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedule


def compute_dtype(precision: str) -> str | None:
    """The compute dtype for a config's ``precision`` (None: the params' own float32)."""
    return None if precision == "float32" else precision


def loss_fn(cfg: config.ModelConfig, precision: str = "float32") -> Callable[..., Array]:
    """``loss(params, x, y, mask) -> scalar`` for the config's model, written with gates.

    ``precision="bfloat16"`` computes the layers in bfloat16 from float32 params; the loss
    and its softmax stay in float32.
    """
    dtype = compute_dtype(precision)

    def loss(params: nn.Params, x: Array, y: Array, mask: Array) -> Array:
        return nn.loss(
            params, x, y, activation=cfg.activation, output=cfg.output, mask=mask,
            compute_dtype=dtype,
        )  # fmt: skip

    return loss


def _batch(mesh: Mesh | None, *arrays: Array) -> tuple[Array, ...]:
    """Split a mini-batch's arrays over the mesh's ``data`` axis (no-op without a mesh)."""
    if mesh is None:
        return arrays
    return tuple(jax.lax.with_sharding_constraint(a, parallel.batch_sharding(mesh)) for a in arrays)


def make_train_epoch(
    loss: Callable[..., Array],
    tx: optax.GradientTransformation,
    *,
    n: int,
    batch_size: int,
    gradients: str = "engine",
    unroll: int = 1,
    mesh: Mesh | None = None,
    shardings: TrainState | None = None,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, Array]]:
    """A jitted ``epoch(state, x, y) -> (state, mean train loss)`` over ``n`` examples.

    ``gradients`` picks the backend: ``engine`` (fmlp's hand-written VJPs) or ``jax``
    (``jax.value_and_grad``, the oracle); everything else is the same program. ``unroll``
    mini-batch steps run per iteration of the compiled loop (``lax.scan``'s ``unroll``):
    fewer loop iterations for small models, at the price of a longer compile. With a
    ``mesh``, each mini-batch is split over its ``data`` axis and the new state keeps
    ``shardings`` (from :func:`fmlp.parallel.state_shardings`).
    """
    value_and_grad = {"engine": engine.value_and_grad, "jax": jax.value_and_grad}[gradients]
    grad_fn = value_and_grad(loss)

    def step(carry: tuple, batch: tuple[Array, Array]) -> tuple[tuple, Array]:
        params, opt_state, x, y = carry
        idx, mask = batch
        value, grads = grad_fn(params, *_batch(mesh, x[idx], y[idx], mask))
        with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int counts
            updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, x, y), value * jnp.sum(mask)

    def epoch(state: TrainState, x: Array, y: Array) -> tuple[TrainState, Array]:
        key, order_key = jax.random.split(state.key)
        idx, mask = data.batch_indices(order_key, n, batch_size)
        (params, opt_state, _, _), losses = jax.lax.scan(
            step, (state.params, state.opt_state, x, y), (idx, mask), unroll=unroll
        )
        new_state = TrainState(params, opt_state, state.step + idx.shape[0], state.epoch + 1, key)
        return new_state, jnp.sum(losses) / n

    if shardings is None:
        return jax.jit(epoch, donate_argnums=0)
    return jax.jit(epoch, donate_argnums=0, out_shardings=(shardings, parallel.replicated(mesh)))


def make_gradient_check(
    loss: Callable[..., Array], *, n: int, batch_size: int, mesh: Mesh | None = None
) -> Callable[[nn.Params, Array, Array, Array], dict[str, Array]]:
    """A jitted ``check(params, x, y, key)``: engine vs ``jax.grad`` on the epoch's first batch.

    ``key`` is the state's key, so the batch is the first one the next epoch will train on.
    Returns the relative error ``max|engine - jax| / max(|engine|, |jax|)`` per parameter,
    keyed by its path (e.g. ``"[0]['W']"``).
    """

    def check(params: nn.Params, x: Array, y: Array, key: Array) -> dict[str, Array]:
        _, order_key = jax.random.split(key)
        idx, mask = data.batch_indices(order_key, n, batch_size)
        batch = _batch(mesh, x[idx[0]], y[idx[0]], mask[0])
        ours = engine.grad(loss)(params, *batch)
        ref = jax.grad(loss)(params, *batch)
        return {
            jax.tree_util.keystr(path): testing.relative_error(a, b)
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref))
        }

    return jax.jit(check)


def make_evaluate(
    cfg: config.ModelConfig,
    *,
    n: int,
    batch_size: int,
    num_classes: int | None,
    precision: str = "float32",
    mesh: Mesh | None = None,
) -> Callable[[nn.Params, Array, Array], dict[str, Array]]:
    """A jitted ``evaluate(params, x, y)`` over ``n`` examples, in fixed-shape batches.

    Returns ``loss`` (mean per-example loss) and, for classification, ``accuracy`` and the
    ``confusion`` matrix (true class x predicted class, counts); for regression ``mse``
    (mean over examples and outputs of ``(o - t)^2``). With a ``mesh``, the batch (rounded up
    to a multiple of the ``data`` axis; the padding is masked) is split over ``data``.
    """
    batch_size = min(batch_size, n)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.shape[parallel.DATA]) * mesh.shape[parallel.DATA]
    dtype = compute_dtype(precision)

    def body(acc: dict[str, Array], batch: tuple[Array, Array], params, x, y) -> tuple:
        idx, mask = batch
        inputs, target, mask = _batch(mesh, x[idx], y[idx], mask)
        out = nn.apply(
            params, inputs, activation=cfg.activation, output="identity", compute_dtype=dtype
        )
        if num_classes is not None:
            per_example = gates.softmax_cross_entropy(out, target)
            pred = jnp.argmax(out, axis=-1).astype(target.dtype)
            acc = {
                "loss": acc["loss"] + jnp.sum(per_example * mask),
                "correct": acc["correct"] + jnp.sum(jnp.where(pred == target, mask, 0.0)),
                "confusion": acc["confusion"].at[target, pred].add(mask),
            }
        else:
            per_example = gates.squared_error(out, target)
            acc = {
                "loss": acc["loss"] + jnp.sum(per_example * mask),
                "sse": acc["sse"] + jnp.sum(jnp.square(out - target) * mask[:, None]),
            }
        return acc, None

    def evaluate(params: nn.Params, x: Array, y: Array) -> dict[str, Array]:
        idx, mask = data.batch_indices(jax.random.PRNGKey(0), n, batch_size, shuffle=False)
        zero = jnp.zeros((), jnp.float32)
        if num_classes is not None:
            confusion = jnp.zeros((num_classes, num_classes), jnp.float32)
            init = {"loss": zero, "correct": zero, "confusion": confusion}
        else:
            init = {"loss": zero, "sse": zero}
        acc, _ = jax.lax.scan(lambda a, b: body(a, b, params, x, y), init, (idx, mask))
        result = {"loss": acc["loss"] / n}
        if num_classes is not None:
            result |= {"accuracy": acc["correct"] / n, "confusion": acc["confusion"]}
        else:
            result["mse"] = acc["sse"] / (n * y.shape[1])
        return result

    return jax.jit(evaluate)


def init_state(
    cfg: config.Config, sizes: Sequence[int], tx: optax.GradientTransformation
) -> TrainState:
    """The run's initial state: params from the seed, fresh optimizer state, step 0."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    params = nn.init(init_key, sizes, scheme=cfg.model.init)
    step, epoch = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)  # distinct: both donated
    return TrainState(params, tx.init(params), step, epoch, data_key)


def load_dataset(cfg: config.Config) -> data.Dataset:
    """The config's dataset, split and normalised as the run saw it (deterministic)."""
    d = cfg.data
    return data.load(
        d.name,
        path=d.path,
        validation_fraction=d.validation_fraction,
        normalize=d.normalize,
        subset=d.subset,
        seed=cfg.train.seed,
        synthetic_examples=d.synthetic_examples,
    )


def model_sizes(cfg: config.Config, dataset: data.Dataset) -> list[int]:
    """Layer widths: the data's features, the configured hidden widths, the data's outputs."""
    return [dataset.num_features, *cfg.model.hidden, dataset.num_outputs]


# ----------------------------------------------------------------------------- the run


def _run_dir(cfg: config.Config, source: Any, out: str | os.PathLike[str] | None) -> Path:
    if out is not None:
        return Path(out)
    stem = Path(source).stem if isinstance(source, str | os.PathLike) else cfg.data.name
    name = cfg.run.name or stem
    # Every process must name the same directory: process 0's.
    started = float(parallel.from_main_process(np.int32(time.time())))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return Path(cfg.run.out_dir) / f"{name}-{stamp}"


def _resumed_config(run_dir: Path, cfg: config.Config) -> config.Config:
    """The saved config of ``run_dir``; the asked-for one may differ only in train.epochs,
    train.unroll, the device layout (parallel, distributed) and run."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise RunDirectoryError(
            f"--resume {run_dir}: no config.yaml there, so it is not an fmlp run directory."
        )
    saved = config.load(saved_path)
    ignore = {"epochs", "unroll"}
    diffs = [
        f"{section}.{k}"
        for section in ("model", "data", "optimizer", "train")
        for k, v in config.to_dict(getattr(cfg, section)).items()
        if v != config.to_dict(getattr(saved, section))[k] and k not in ignore
    ] + (["precision"] if cfg.precision != saved.precision else [])
    if diffs:
        raise config.ConfigError(
            f"--resume {run_dir}: the config differs from the run's saved config in "
            f"{', '.join(diffs)}; resume with the same config (only train.epochs, "
            "train.unroll and the parallel and distributed sections may change)."
        )
    return dataclasses.replace(
        saved,
        train=dataclasses.replace(saved.train, epochs=cfg.train.epochs, unroll=cfg.train.unroll),
        parallel=cfg.parallel,
        distributed=cfg.distributed,
    )


def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [m for m in lines if m["epoch"] <= upto]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _progress(cfg: config.RunConfig, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm  # here: only runs that show progress pay for the import

    show = {"always": True, "never": False, "auto": sys.stderr.isatty()}[cfg.progress]
    show = show and parallel.is_main_process()  # one bar per run, not one per host
    return tqdm(total=total, initial=initial, disable=not show, unit="epoch", desc="train")


def _floats(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in tree.items()}


def fit(
    source: config.Config | dict[str, Any] | str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Train the model a config describes and write a run directory.

    Args:
      source: a :class:`fmlp.config.Config`, a dict, or a YAML path.
      overrides: dotted ``section.key=value`` overrides.
      out: the run directory (default ``run.out_dir/<name>-<timestamp>``); must not hold a run.
      resume: a run directory to continue from its latest complete checkpoint; the result is
        bitwise identical (on CPU) to the uninterrupted run.

    Returns:
      ``(state, history)``: the final :class:`TrainState` and a dict with ``epochs`` (one
      metrics dict per epoch), ``summary`` (as in ``summary.json``) and ``run_dir``.

    Raises:
      fmlp.config.ConfigError, fmlp.data.DataError, RunDirectoryError: bad input; nothing
        saved is touched.
      TrainingDiverged: the loss became non-finite; checkpoints up to the last good epoch stay.
      fmlp.parallel.DistributedError: another process of a multi-process run died or cannot
        be reached; checkpoints up to the last complete epoch stay.
    """
    cfg = config.resolve(source, overrides)
    parallel.initialize(cfg.distributed)
    if resume is not None:
        run_dir = Path(resume)
        cfg = _resumed_config(run_dir, cfg)
    else:
        run_dir = _run_dir(cfg, source, out)
        if (run_dir / "config.yaml").exists():
            raise RunDirectoryError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --out."
            )
    dataset = load_dataset(cfg)
    tc = cfg.train
    n = len(dataset.x_train)
    steps_per_epoch = math.ceil(n / tc.batch_size)
    tx, schedule = make_optimizer(cfg.optimizer, steps_per_epoch=steps_per_epoch, epochs=tc.epochs)
    sizes = model_sizes(cfg, dataset)
    mesh = parallel.make_mesh(cfg.parallel.data, cfg.parallel.model)
    parallel.check_batch_size(tc.batch_size, mesh)
    state = init_state(cfg, sizes, tx)
    shardings = parallel.state_shardings(mesh, state, tx)
    main = parallel.is_main_process()
    parallel.barrier("fmlp: run directory checked")  # before process 0 writes into it

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plots").mkdir(exist_ok=True)
        config.save(cfg, run_dir / "config.yaml")
        model_info = {"sizes": sizes, "num_classes": dataset.num_classes}
        (run_dir / "model.json").write_text(json.dumps(model_info) + "\n")
        if dataset.mean is not None:
            np.savez(run_dir / "normalizer.npz", mean=dataset.mean, std=dataset.std)
    classification = dataset.num_classes is not None
    ckpt = checkpoint.Checkpointer(
        run_dir, keep=tc.keep_checkpoints, best_mode="min" if not classification else "max"
    )
    metrics_path = run_dir / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    if resume is not None and ckpt.latest_epoch() is not None:
        state, _ = ckpt.restore(state)
        history = _read_history(metrics_path, int(state.epoch))
    if main:
        _write_jsonl(metrics_path, history)

    state = parallel.put(state, shardings)
    everywhere = parallel.replicated(mesh)
    x, y = parallel.put((dataset.x_train, dataset.y_train), everywhere)
    has_val = len(dataset.x_val) > 0
    split = (dataset.x_val, dataset.y_val) if has_val else (dataset.x_train, dataset.y_train)
    xv, yv = parallel.put(split, everywhere)
    loss = loss_fn(cfg.model, cfg.precision)
    t0 = time.perf_counter()
    train_epoch = make_train_epoch(
        loss, tx, n=n, batch_size=tc.batch_size, gradients=tc.gradients, unroll=tc.unroll,
        mesh=mesh, shardings=shardings,
    )  # fmt: skip
    train_epoch = train_epoch.lower(state, x, y).compile()
    evaluate_val = make_evaluate(
        cfg.model, n=len(xv), batch_size=tc.eval_batch_size, num_classes=dataset.num_classes,
        precision=cfg.precision, mesh=mesh,
    )  # fmt: skip
    evaluate_val = evaluate_val.lower(state.params, xv, yv).compile()
    check_every = tc.check_gradients_every
    if check_every is not None:
        check_gradients = make_gradient_check(loss, n=n, batch_size=tc.batch_size, mesh=mesh)
        check_gradients = check_gradients.lower(state.params, x, y, state.key).compile()
    compile_seconds = time.perf_counter() - t0

    metric_name = "accuracy" if classification else "mse"
    train_seconds, epochs_run = 0.0, 0
    bar = _progress(cfg.run, tc.epochs, int(state.epoch))
    try:
        for epoch in range(int(state.epoch) + 1, tc.epochs + 1):
            start = time.perf_counter()
            state, train_loss = train_epoch(state, x, y)
            val = evaluate_val(state.params, xv, yv)
            if check_every is not None and epoch % check_every == 0:
                val["gradient_check"] = check_gradients(state.params, x, y, state.key)
            with jax.numpy_dtype_promotion("standard"):  # as in tx.update: int count, floats
                learning_rate = schedule(state.step - 1)  # the rate of the epoch's last step
            host = parallel.fetch({"train_loss": train_loss, "lr": learning_rate, **val})
            seconds = time.perf_counter() - start
            train_seconds += seconds
            epochs_run += 1
            if not all(math.isfinite(host[k]) for k in ("train_loss", "loss")):
                last = ckpt.latest_epoch()
                raise TrainingDiverged(
                    f"training loss became {host['train_loss']} (validation loss "
                    f"{host['loss']}) at epoch {epoch}: the learning rate "
                    f"(optimizer.learning_rate={cfg.optimizer.learning_rate}) is probably too "
                    "high, or the data holds extreme values. "
                    + (
                        f"The last good checkpoint (epoch {last}) is kept in {run_dir}."
                        if last is not None
                        else "No checkpoint had been written yet."
                    )
                )
            row = {
                "epoch": epoch,
                "train_loss": host["train_loss"],
                "val_loss": host["loss"] if has_val else None,
                f"val_{metric_name}": host[metric_name] if has_val else None,
                "learning_rate": host["lr"],
                "seconds": seconds,
            }
            history.append(_floats(row) | {"epoch": epoch})
            if "gradient_check" in host:
                history[-1]["gradient_check"] = _floats(host["gradient_check"])
            if main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(history[-1]) + "\n")
            _check_parity(history[-1].get("gradient_check"), tc.gradient_tolerance, epoch)
            if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs:
                ckpt.save(epoch, state, {"epoch": epoch}, host[metric_name])
            bar.update(1)
            bar.set_postfix_str(
                f"loss {host['train_loss']:.4f} val_{metric_name} {host[metric_name]:.4f}"
            )
    except (jax.errors.JaxRuntimeError, ValueError) as err:  # XLA's collectives raise either
        if jax.process_count() == 1:
            raise
        last = ckpt.latest_epoch()
        raise parallel.DistributedError(
            f"process {jax.process_index()} of {jax.process_count()} failed in epoch {epoch}, "
            f"most likely because another process died or the network failed: {err}. "
            + (
                f"The last complete checkpoint (epoch {last}) is kept in {run_dir}; restart "
                f"every process with --resume {run_dir}."
                if last is not None
                else "No checkpoint had been written yet."
            )
        ) from err
    finally:
        bar.close()
        ckpt.close()

    test = evaluate_split(cfg, dataset, state.params, "test", mesh=mesh)
    summary = {
        "test_loss": test["loss"],
        f"test_{metric_name}": test[metric_name],
        "epochs": int(state.epoch),
        "examples_per_second": n * epochs_run / train_seconds if train_seconds else None,
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "devices": mesh.size,
        "processes": jax.process_count(),
        "precision": cfg.precision,
        "fmlp_version": _version(),
        "run_dir": str(run_dir),
    }
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        viz.training_curves(history, run_dir / "plots", metric=metric_name)
        if classification:
            viz.confusion_matrix(
                np.asarray(test["confusion"]), run_dir / "plots" / "confusion_test.png"
            )
    return state, {"epochs": history, "summary": summary, "run_dir": str(run_dir)}


def _check_parity(errors: dict[str, float] | None, tolerance: float, epoch: int) -> None:
    if errors is None or max(errors.values()) <= tolerance:
        return
    worst = max(errors, key=errors.get)
    raise GradientMismatch(
        f"at epoch {epoch} the engine's gradient of params{worst} differs from jax.grad's by "
        f"{errors[worst]:.3g} (relative), above train.gradient_tolerance={tolerance:g}. A gate's "
        "hand-written VJP is probably wrong for these inputs: run `fmlp gradcheck` to find it."
    )


def _version() -> str:
    from fmlp import __version__

    return __version__


def evaluate_split(
    cfg: config.Config,
    dataset: data.Dataset,
    params: nn.Params,
    split: str,
    *,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Loss and accuracy/confusion (classification) or MSE (regression) on one split.

    ``params`` on a ``mesh`` (as :func:`fit` leaves them) are evaluated there.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test; got {split!r}.")
    x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
    if len(x) == 0:
        raise data.DataError(f"the {split} split is empty; set data.validation_fraction > 0.")
    data.validate(
        x, y, task=dataset.task, num_classes=dataset.num_classes,
        num_features=int(params[0]["W"].shape[0]), name=split,
    )  # fmt: skip
    evaluate = make_evaluate(
        cfg.model, n=len(x), batch_size=cfg.train.eval_batch_size,
        num_classes=dataset.num_classes, precision=cfg.precision, mesh=mesh,
    )  # fmt: skip
    if mesh is not None:
        x, y = parallel.put((x, y), parallel.replicated(mesh))
    result = parallel.fetch(evaluate(params, jnp.asarray(x), jnp.asarray(y)))
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v)) for k, v in result.items()}


def _run_config(run_dir: Path) -> config.Config:
    if not (run_dir / "config.yaml").exists():
        raise RunDirectoryError(f"{run_dir} is not an fmlp run directory (no config.yaml).")
    return config.load(run_dir / "config.yaml")


def restore_params(run_dir: str | os.PathLike[str], *, best: bool = False) -> nn.Params:
    """The params of a run's latest (or best) checkpoint."""
    run_dir = Path(run_dir)
    return _restore_params(run_dir, _run_config(run_dir), best=best)


def _restore_params(run_dir: Path, cfg: config.Config, *, best: bool) -> nn.Params:
    sizes = json.loads((run_dir / "model.json").read_text())["sizes"]
    tx, _ = make_optimizer(cfg.optimizer, steps_per_epoch=1, epochs=cfg.train.epochs)
    target = jax.eval_shape(lambda: init_state(cfg, sizes, tx))  # shapes only, no arrays
    state, _ = checkpoint.Checkpointer(run_dir).restore(target, best=best)
    return state.params


def load(
    run_dir: str | os.PathLike[str], *, best: bool = False
) -> tuple[nn.Params, Callable[[Any], Array]]:
    """Params of a finished (or interrupted) run and a ``predict`` function.

    ``predict(x)`` takes raw features ``(B, num_features)`` (it applies the run's saved
    normalisation) and returns class probabilities ``(B, K)`` for a softmax net, outputs
    ``(B, out)`` for a regression net.
    """
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    params = _restore_params(run_dir, cfg, best=best)
    stats = run_dir / "normalizer.npz"
    mean, std = (np.load(stats)[k] for k in ("mean", "std")) if stats.exists() else (0.0, 1.0)
    n_features = int(params[0]["W"].shape[0])
    dtype = compute_dtype(cfg.precision)
    forward = jax.jit(
        lambda p, x: nn.apply(
            p, x, activation=cfg.model.activation, output=cfg.model.output, compute_dtype=dtype
        )
    )

    def predict(x: Any) -> Array:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != n_features:
            raise data.DataError(
                f"predict expects inputs of shape (batch, {n_features}), got {x.shape}."
            )
        return forward(params, jnp.asarray((x - mean) / std, jnp.float32))

    return params, predict


def evaluate_run(
    run_dir: str | os.PathLike[str], *, split: str = "test", best: bool = False
) -> dict[str, Any]:
    """Evaluate a run's latest (or best) checkpoint on ``split``; write plots and JSON.

    Writes ``eval_<split>.json`` and, under ``plots/``, the training curves and (for
    classification) ``confusion_<split>.png``. Returns the metrics, the confusion matrix as
    nested lists.
    """
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    params = _restore_params(run_dir, cfg, best=best)
    dataset = load_dataset(cfg)
    result = evaluate_split(cfg, dataset, params, split)
    (run_dir / "plots").mkdir(exist_ok=True)
    metric = "accuracy" if dataset.num_classes is not None else "mse"
    history = _read_history(run_dir / "metrics.jsonl", upto=cfg.train.epochs)
    viz.training_curves(history, run_dir / "plots", metric=metric)
    if "confusion" in result:
        viz.confusion_matrix(result["confusion"], run_dir / "plots" / f"confusion_{split}.png")
    report = {"split": split, "checkpoint": "best" if best else "latest"} | {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()
    }
    (run_dir / f"eval_{split}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
