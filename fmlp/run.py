"""The run: a run directory and the steps that fill it (:func:`fit`), and what reads it back.

A run directory is the contract users' scripts rely on; :class:`RunDir` is its one owner, and
nothing else reads or writes its files:

- ``config.yaml``: the resolved config (itself a valid config);
- ``model.json``: layer sizes and number of classes; ``normalizer.npz``: the feature means
  and standard deviations of the training split; ``preprocessing.json`` (tables and
  scikit-learn's sets): the feature names in order, the categories of one-hot columns, the
  label and the class names (:class:`fmlp.tables.Preprocessing`);
- ``metrics.jsonl``: one JSON object per epoch (``epoch``, ``train_loss``, ``val_loss``,
  the head's validation metrics: ``val_accuracy`` (and ``val_f1`` for a sigmoid head) or
  ``val_mse`` and ``val_mae``, then ``learning_rate``, ``seconds``, ``gradient_check``);
- ``summary.json``: the final test metrics (``test_loss`` and ``test_`` each metric of
  :func:`fmlp.train.make_evaluate` but the confusion matrix), speed and device;
  ``eval_<split>.json``;
- ``checkpoints/`` (orbax, :mod:`fmlp.checkpoint`) and ``plots/``.

:func:`fit` reads top to bottom as the run does: :func:`set_up`, :func:`compile_programs`,
:func:`train_loop` (one small hook per per-epoch behaviour), :func:`finish`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import itertools
import json
import math
import os
import reprlib
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmlp import checkpoint, config, data, nn, parallel, tables, train, viz
from fmlp.errors import (
    DistributedError,
    Interrupted,
    NoCheckpointError,
    RunDirectoryError,
    RunDirectoryWarning,
    StorageError,
    TrainingDiverged,
)

Array = jax.Array
Source = config.Config | dict[str, Any] | str | os.PathLike[str]
PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------- the directory


class RunDir:
    """The run directory at ``path``: every file's name, and the only code that reads or
    writes them.

    Write-ahead discipline: a new run directory is built under a hidden name beside its
    place and renamed into it complete; every file is replaced whole (written beside,
    flushed to disk, renamed); ``metrics.jsonl`` grows by whole lines, and a torn last line
    (what a crash mid-write leaves) is skipped on read with a warning. While a run trains,
    it holds an exclusive lock on ``.lock`` (which names its pid and host).
    """

    CONFIG, MODEL, NORMALIZER = "config.yaml", "model.json", "normalizer.npz"
    METRICS, SUMMARY, PLOTS, LOCK = "metrics.jsonl", "summary.json", "plots", ".lock"
    CHECKPOINTS, PREPROCESSING = "checkpoints", "preprocessing.json"

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._lock: int | None = None  # the lock file's descriptor while we hold it

    def __str__(self) -> str:
        return str(self.path)

    def holds_run(self) -> bool:
        """Whether a run was started here (its ``config.yaml`` exists)."""
        return (self.path / self.CONFIG).exists()

    # -- a new run

    def require_new(self) -> None:
        """Raise :class:`RunDirectoryError` unless a new run may be created here: the path
        is free or an empty directory, and no file stands where a folder must be."""
        if self.holds_run():
            raise RunDirectoryError(
                f"{self.path} already holds a run; continue it with --resume {self.path} "
                "or choose another --out."
            )
        for parent in [self.path, *self.path.parents]:
            if parent.exists() and not parent.is_dir():
                what = "is a file" if parent == self.path else f"is below the file {parent}"
                raise RunDirectoryError(f"--out {self.path} {what}; choose a directory path.")
        if self.path.is_dir() and any(self.path.iterdir()):
            names = ", ".join(sorted(p.name for p in self.path.iterdir())[:5])
            raise RunDirectoryError(
                f"--out {self.path} is not empty ({names}) but holds no run (no config.yaml); "
                "fmlp writes a run only into a new or empty directory: choose another --out"
                + (", or restore its config.yaml to --resume it" if self._has_checkpoints() else "")
                + "."
            )

    def stage(self) -> Path:
        """Make the hidden folder a new run is built in (beside ``path``) and return it.

        Made before the data is read, so a path that cannot be written is reported first.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        (staging / self.PLOTS).mkdir(parents=True)
        return staging

    def create(self, staging: Path, cfg: config.Config, net: nn.MLP, ds: data.Dataset) -> None:
        """Write what a run starts with into ``staging``, rename it to ``path``, lock it."""
        staged = RunDir(staging)
        staged.write_config(cfg)
        info = {"sizes": list(net.sizes), "num_classes": ds.num_classes}
        staged._write(self.MODEL, (json.dumps(info) + "\n").encode())
        if ds.mean is not None:
            buffer = io.BytesIO()
            np.savez(buffer, mean=ds.mean, std=ds.std)
            staged._write(self.NORMALIZER, buffer.getvalue())
        if ds.preprocessing is not None:
            staged._write(self.PREPROCESSING, ds.preprocessing.to_json().encode())
        staged._write(self.METRICS, b"")
        try:
            staging.rename(self.path)  # replaces an empty directory, never a full one
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise RunDirectoryError(
                f"{self.path} was filled by another process while this run started; "
                "choose another --out."
            ) from None
        _fsync_dir(self.path.parent)
        self.lock()

    # -- the lock

    def lock(self) -> None:
        """Take the run's exclusive lock, or raise RunDirectoryError naming its holder."""
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryError(
                f"{self.path} is in use by fmlp ({holder}); wait for that run to end, or "
                "choose another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock = fd

    def unlock(self) -> None:
        """Release the lock (the file stays; it is harmless without the lock held)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    # -- the config and the model

    def read_config(self, *, flag: str = "") -> config.Config:
        """The run's saved config; ``flag`` (e.g. ``--resume``) prefixes the error."""
        if not self.holds_run():
            what = (
                "it holds checkpoints but lost its config.yaml: restore that file to use it"
                if self._has_checkpoints()
                else "so it is not an fmlp run directory"
            )
            raise RunDirectoryError(
                f"{flag + ' ' if flag else ''}{self.path}: no config.yaml there, {what}."
            )
        return config.load(self.path / self.CONFIG)

    def resumed_config(self, cfg: config.Config) -> config.Config:
        """The saved config, with what a resume may change taken from ``cfg``.

        Only ``train.epochs``, ``train.unroll``, the device layout (``parallel``,
        ``distributed``) and ``run`` may differ; anything else raises ConfigError naming it.
        """
        saved = self.read_config(flag="--resume")
        ignore = {"epochs", "unroll"}
        diffs = [
            f"{section}.{k}"
            for section in ("model", "data", "optimizer", "train")
            for k, v in config.to_dict(getattr(cfg, section)).items()
            if v != config.to_dict(getattr(saved, section))[k] and k not in ignore
        ] + (["precision"] if cfg.precision != saved.precision else [])
        if diffs:
            raise config.ConfigError(
                f"--resume {self.path}: the config differs from the run's saved config in "
                f"{', '.join(diffs)}; resume with the same config (only train.epochs, "
                "train.unroll and the parallel and distributed sections may change)."
            )
        return dataclasses.replace(
            saved,
            train=dataclasses.replace(
                saved.train, epochs=cfg.train.epochs, unroll=cfg.train.unroll
            ),
            parallel=cfg.parallel,
            distributed=cfg.distributed,
        )

    def write_config(self, cfg: config.Config) -> None:
        """Replace ``config.yaml``."""
        self._write(self.CONFIG, config.dumps(cfg).encode())

    def model(self, cfg: config.Config) -> nn.MLP:
        """The run's net: the saved sizes, the config's activation, head and precision."""
        path = self.path / self.MODEL
        try:
            sizes = json.loads(path.read_text())["sizes"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RunDirectoryError(
                f"{path} is missing or damaged ({type(err).__name__}: {err}); it holds the "
                "run's layer sizes, without which its checkpoints cannot be read."
            ) from None
        return train.build_model(cfg, num_features=sizes[0], num_outputs=sizes[-1])

    def normalizer(self, cfg: config.Config) -> tuple[np.ndarray, np.ndarray] | None:
        """The saved ``(mean, std)`` of the training features; None for a run that did not
        normalise (``data.normalize: none``).

        Raises:
          RunDirectoryError: the run normalised its inputs but ``normalizer.npz`` is missing
            or damaged: predictions without it would be silently wrong.
        """
        if cfg.data.normalize == "none":
            return None
        path = self.path / self.NORMALIZER
        try:
            with np.load(path) as stats:
                return stats["mean"], stats["std"]
        except (OSError, ValueError, KeyError) as err:
            raise RunDirectoryError(
                f"{path} is missing or damaged ({type(err).__name__}); the run standardised "
                "its inputs (data.normalize: standardize) with the statistics it holds, so "
                "predictions without it would be wrong. Restore the file from a copy of the "
                "run, or train again."
            ) from None

    def preprocessing(self, cfg: config.Config) -> tables.Preprocessing | None:
        """The saved encoding of the run's tables (feature names, categories, classes);
        None for a run without one (the built-in image and synthetic sets, older runs).

        Raises:
          RunDirectoryError: a table run's ``preprocessing.json`` is missing or damaged.
        """
        path = self.path / self.PREPROCESSING
        if not path.exists() and cfg.data.name not in data.TABLE_SOURCES:
            return None
        try:
            return tables.Preprocessing.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise RunDirectoryError(
                f"{path} is missing or damaged ({type(err).__name__}); it holds the feature "
                "names, categories and classes the run was trained with, without which new "
                "rows cannot be encoded as training saw them. Restore it from a copy of the "
                "run, or train again."
            ) from None

    # -- metrics and reports

    def read_history(self, upto: int) -> list[dict[str, Any]]:
        """The metrics of epochs ``1..upto``, as logged; a torn last line is skipped."""
        path = self.path / self.METRICS
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                    raise ValueError("not an object with an integer epoch")
            except ValueError as err:
                if number < len(lines):
                    raise RunDirectoryError(
                        f"{path}, line {number}: {err}; the metrics log is damaged before its "
                        "end. Repair or remove that line to resume."
                    ) from None
                warnings.warn(
                    f"{path}: skipped its last line ({_excerpt(line)}), cut short by an "
                    "interrupted write",
                    RunDirectoryWarning,
                    stacklevel=2,
                )
                continue
            rows.append(row)
        return [row for row in rows if row["epoch"] <= upto]

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``rows``."""
        self._write(self.METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one epoch's line to ``metrics.jsonl``, whole, and flush it to disk."""
        with (self.path / self.METRICS).open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json``."""
        self._write(self.SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def write_eval(self, split: str, report: dict[str, Any]) -> None:
        """Write ``eval_<split>.json``."""
        self._write(f"eval_{split}.json", (json.dumps(report, indent=2) + "\n").encode())

    def plots(self) -> Path:
        """The ``plots/`` folder (created if missing)."""
        path = self.path / self.PLOTS
        path.mkdir(exist_ok=True)
        return path

    def require_outside(self, out: PathLike) -> None:
        """Raise DataError if ``out`` (a file a command writes) lies inside the run directory:
        what reads a run never writes into it."""
        if Path(out).resolve().is_relative_to(self.path.resolve()):
            raise data.DataError(
                f"--out {out}: is inside the run directory {self}; write it outside."
            )

    # -- checkpoints

    def checkpointer(self, *, keep: int = 2, best_mode: str = "min") -> checkpoint.Checkpointer:
        """The orbax checkpoints under ``checkpoints/``."""
        return checkpoint.Checkpointer(self.path, keep=keep, best_mode=best_mode)

    def _has_checkpoints(self, kind: str = "") -> bool:
        """Whether ``checkpoints/`` (or its ``kind``, latest or best) holds a checkpoint."""
        root = self.path / self.CHECKPOINTS / kind
        return root.is_dir() and any(root.rglob("_CHECKPOINT_METADATA"))

    def _write(self, name: str, payload: bytes) -> None:
        """Replace file ``name`` whole: write beside it, flush to disk, rename."""
        tmp = self.path / f".{name}.tmp"
        with tmp.open("wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path / name)
        _fsync_dir(self.path)


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = 80


def _excerpt(text: str) -> str:
    return _EXCERPT.repr(text)


def _new_run_dir(cfg: config.Config, source: Any, out: PathLike | None) -> RunDir:
    if out is not None:
        return RunDir(out)
    stem = Path(source).stem if isinstance(source, str | os.PathLike) else cfg.data.name
    name = cfg.run.name or stem
    # Every process must name the same directory: process 0's.
    started = float(parallel.from_main_process(np.int32(time.time())))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return RunDir(Path(cfg.run.out_dir) / f"{name}-{stamp}")


def load_dataset(
    cfg: config.Config, *, train: data.Table | None = None, test: data.Table | None = None
) -> data.Dataset:
    """The config's dataset, split and normalised as the run saw it (deterministic).

    ``train``/``test``: the ``(x, y)`` arrays of a ``data.name: arrays`` run (see :func:`fit`);
    a table run reads its files from ``data.train``/``data.test``.
    """
    d = cfg.data
    arrays = d.name == "arrays"
    return data.load(
        d.name,
        path=d.path,
        validation_fraction=d.validation_fraction,
        normalize=d.normalize,
        subset=d.subset,
        seed=cfg.train.seed,
        synthetic_examples=d.synthetic_examples,
        train=train if arrays else d.train,
        test=test if arrays else d.test,
        label=d.label,
        features=d.features,
        categorical=d.categorical,
        task=nn.HEADS[cfg.model.loss].task,
    )


def _arrays_overrides(train: Any, test: Any) -> list[str]:
    """The overrides that make a config train on arrays passed to :func:`fit`: ``data.name:
    arrays`` (applied before the config is validated: the task follows from the head)."""
    if train is None:
        if test is not None:
            raise data.DataError("fmlp.fit: test= was given without train=; pass both.")
        return []
    for which, value in (("train", train), ("test", test)):
        if value is not None and not (isinstance(value, tuple) and len(value) == 2):
            raise data.DataError(
                f"fmlp.fit: {which}= expects a pair (x, y) of arrays or frames, got "
                f"{type(value).__name__}."
            )
    return ["data.name=arrays", "data.train=null", "data.test=null"]


# ----------------------------------------------------------------------------- fit's steps


@dataclasses.dataclass
class Run:
    """What the steps of :func:`fit` share: the config, directory, data, model and state."""

    cfg: config.Config
    dir: RunDir
    dataset: data.Dataset
    net: nn.MLP
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    layout: parallel.Layout
    state: train.TrainState
    arrays: tuple[Array, Array, Array, Array]  # x, y, x_val, y_val on the devices
    ckpt: checkpoint.Checkpointer
    history: list[dict[str, Any]]
    main: bool  # this process writes the files
    has_val: bool

    @property
    def metric(self) -> str:
        return train.metric_name(self.net)


class Programs(NamedTuple):
    """The run's compiled programs."""

    epoch: Any
    evaluate_val: Any
    learning_rate: Any  # step count -> the rate of the last step taken
    check_gradients: Any | None  # None: train.check_gradients_every is off
    compile_seconds: float


class EpochResult(NamedTuple):
    """One finished epoch, as the per-epoch hooks see it."""

    number: int
    host: dict[str, Any]  # everything fetched from the devices, as numpy
    row: dict[str, Any]  # the epoch's line of metrics.jsonl
    seconds: float


Hook = Callable[[Run, EpochResult], None]


def fit(
    source: Source,
    *,
    overrides: Sequence[str] = (),
    out: PathLike | None = None,
    resume: PathLike | None = None,
    train: tuple[Any, Any] | None = None,
    test: tuple[Any, Any] | None = None,
) -> tuple[train.TrainState, dict[str, Any]]:
    """Train the model a config describes and write a run directory.

    Args:
      source: a :class:`fmlp.config.Config`, a dict, or a YAML path.
      overrides: dotted ``section.key=value`` overrides.
      out: the run directory (default ``run.out_dir/<name>-<timestamp>``); must not hold a run.
      resume: a run directory to continue from its latest complete checkpoint; the result is
        bitwise identical (on CPU) to the uninterrupted run.
      train: ``(x, y)`` to train on instead of the config's data: numpy arrays or pandas
        objects (a frame's column names become the feature names; ``data.categorical`` and
        ``data.features`` name its columns). The run's config gets ``data.name: arrays``;
        the task follows from ``model.output``. Validated as a table file is. A resumed
        ``arrays`` run needs the same arrays again.
      test: ``(x, y)`` of the test split; ``None`` holds out a stratified part of ``train``.

    Returns:
      ``(state, history)``: the final :class:`~fmlp.train.TrainState` and a dict with
      ``epochs`` (one metrics dict per epoch), ``summary`` (as in ``summary.json``) and
      ``run_dir``.

    Raises:
      fmlp.errors.InputError: bad config, data or run directory; nothing saved is touched.
      fmlp.errors.TrainingDiverged: the loss became non-finite; checkpoints up to the last
        good epoch stay.
      fmlp.errors.GradientMismatch: the parity monitor found the engine's gradients wrong.
      fmlp.errors.DistributedError: another process of a multi-process run died or cannot
        be reached; checkpoints up to the last complete epoch stay.
    """
    with _Signals() as signals:
        run = set_up(
            source, overrides, out=out, resume=resume, signals=signals, arrays=(train, test)
        )
        try:
            programs = compile_programs(run)
            signals.check(run)
            bar = _ProgressBar(run)
            hooks = [stop_if_diverged, log_metrics, check_parity, save_checkpoint, bar.hook]
            try:
                trained = train_loop(run, programs, [*hooks, signals.check])
            finally:
                bar.close()
            return finish(run, programs, trained)
        finally:
            run.ckpt.close()
            run.dir.unlock()


def set_up(
    source: Source,
    overrides: Sequence[str],
    *,
    out: PathLike | None,
    resume: PathLike | None,
    signals: _Signals,
    arrays: tuple[Any, Any] = (None, None),
) -> Run:
    """Config, processes, run directory, data, model, optimizer, layout and (resumed) state.

    Nothing of an existing run is written before its resume is validated and its checkpoint
    restored; a new run's directory appears complete, once the data and model are built.
    """
    if out is not None and resume is not None:
        raise RunDirectoryError(
            f"--out {out} and --resume {resume} cannot go together: a resumed run continues "
            "in its own directory. Drop --out, or start a new run without --resume."
        )
    cfg = config.resolve(source, [*overrides, *_arrays_overrides(*arrays)])
    parallel.initialize(cfg.distributed)
    main = parallel.is_main_process()
    run_dir = RunDir(resume) if resume is not None else _new_run_dir(cfg, source, out)
    staging = None
    if resume is not None:
        cfg = run_dir.resumed_config(cfg)  # validated before the lock: a non-run gets no .lock
        if main:
            run_dir.lock()
    elif main:
        run_dir.require_new()
        staging = _storage(run_dir.stage, run_dir.path)
    try:
        given = {} if arrays[0] is None else {"train": arrays[0], "test": arrays[1]}
        dataset = load_dataset(cfg, **given)
        signals.check()
        tc, n = cfg.train, len(dataset.x_train)
        if tc.batch_size > n:
            raise config.ConfigError(
                f"train.batch_size={tc.batch_size} is more than the {n} training examples of "
                f"data.name={cfg.data.name}; choose train.batch_size <= {n}"
            )
        class_weight = train.class_weights(
            cfg.data.class_weight, dataset.y_train, dataset.num_classes
        )
        net = train.build_model(
            cfg, num_features=dataset.num_features, num_outputs=dataset.num_outputs,
            class_weight=class_weight,
        )  # fmt: skip
        train.check_model_fits(net, batch_size=tc.batch_size)
        steps_per_epoch = math.ceil(len(dataset.x_train) / tc.batch_size)
        tx, schedule = train.make_optimizer(
            cfg.optimizer, steps_per_epoch=steps_per_epoch, epochs=tc.epochs
        )
        state = train.init_state(net, tx, seed=tc.seed)
        layout = parallel.layout(cfg.parallel, state, tx, batch_size=tc.batch_size)
        if resume is not None:
            ckpt, state, history = _resume(run_dir, cfg, net, state, main)
        else:
            if main:
                _storage(lambda: run_dir.create(staging, cfg, net, dataset), run_dir.path)
            parallel.barrier("fmlp: run directory created")  # before the others open it
            ckpt, history = run_dir.checkpointer(**_checkpoint_options(cfg, net)), []
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        run_dir.unlock()
        raise
    has_val = len(dataset.x_val) > 0
    val = (dataset.x_val, dataset.y_val) if has_val else (dataset.x_train, dataset.y_train)
    arrays = layout.put_replicated((dataset.x_train, dataset.y_train, *val))
    return Run(
        cfg, run_dir, dataset, net, tx, schedule, layout, layout.put_state(state), arrays,
        ckpt, history, main, has_val,
    )  # fmt: skip


def _checkpoint_options(cfg: config.Config, net: nn.MLP) -> dict[str, Any]:
    best_mode = "max" if train.metric_name(net) == "accuracy" else "min"
    return {"keep": cfg.train.keep_checkpoints, "best_mode": best_mode}


def _resume(
    run_dir: RunDir, cfg: config.Config, net: nn.MLP, state: train.TrainState, main: bool
) -> tuple[checkpoint.Checkpointer, train.TrainState, list[dict[str, Any]]]:
    """Check the run, restore its newest intact checkpoint, then (only then) rewrite its
    config (the new ``train.epochs``) and cut its metrics back to the restored epoch."""
    saved = run_dir.model(cfg).sizes
    if saved != net.sizes:
        raise RunDirectoryError(
            f"--resume {run_dir}: its model.json holds layer sizes {list(saved)}, but its "
            f"config and data give {list(net.sizes)}; the run directory is inconsistent."
        )
    logged = run_dir.read_history(cfg.train.epochs + 10**9)
    every = cfg.train.checkpoint_every
    if not run_dir._has_checkpoints("latest") and any(row["epoch"] >= every for row in logged):
        best = sorted((run_dir.path / RunDir.CHECKPOINTS / "best").glob("[0-9]*"))
        hint = (
            f"; checkpoints/best still holds epoch {best[-1].name}: evaluate it with "
            f"`fmlp eval {run_dir} --best`, or copy {best[-1]} into checkpoints/latest/ to "
            "resume from it"
            if best
            else ""
        )
        raise RunDirectoryError(
            f"--resume {run_dir}: metrics.jsonl logs {len(logged)} epochs but checkpoints/"
            f"latest holds no checkpoint, so there is nothing to resume from{hint}. Start "
            "afresh with another --out."
        )
    ckpt = run_dir.checkpointer(**_checkpoint_options(cfg, net))
    restored = ckpt.restore_newest_intact(state, warn=_warn, move_aside=main)
    if restored is not None:
        state = restored[0]
    history = [row for row in logged if row["epoch"] <= int(state.epoch)]
    if main:
        _storage(lambda: run_dir.write_config(cfg), run_dir.path)
        _storage(lambda: run_dir.write_history(history), run_dir.path)
    parallel.barrier("fmlp: run directory resumed")
    return ckpt, state, history


def _warn(message: str) -> None:
    warnings.warn(message, RunDirectoryWarning, stacklevel=3)


def _storage(write: Callable[[], Any], path: Path) -> Any:
    """Run ``write``; a failure of the storage (full, read-only) becomes StorageError."""
    try:
        return write()
    except OSError as err:
        if isinstance(err, StorageError):
            raise
        raise StorageError(
            f"could not write in {path}: {err.strerror or err}"
            + (f" ({err.filename})" if err.filename else "")
        ) from err


class _Signals:
    """SIGINT and SIGTERM during :func:`fit` end the run between steps, never inside one.

    The handler only records the signal (an exception raised inside XLA's compile or a
    garbage-collection callback would be lost); :meth:`check`, called between the steps and
    after every epoch, raises :class:`Interrupted`. A second signal ends the process at once.
    """

    NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}

    def __enter__(self) -> _Signals:
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.NAMES:
                self.previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            os.write(2, f"fmlp: {self.NAMES[signum]} again: stopping now\n".encode())
            os._exit(128 + signum)
        self.received = signum

    def check(self, run: Run | None = None, result: EpochResult | None = None) -> None:
        """Raise :class:`Interrupted` if a signal came (usable as an epoch hook)."""
        if self.received is None:
            return
        kept = (
            _kept(run, "complete", f"continue with --resume {run.dir}")
            if run is not None
            else "Nothing was saved."
        )
        raise Interrupted(f"stopped by {self.NAMES[self.received]}. {kept}", self.received)


def compile_programs(run: Run) -> Programs:
    """Compile the epoch, the validation pass and (if asked for) the parity check."""
    tc, (x, y, xv, yv), state = run.cfg.train, run.arrays, run.state
    n = len(x)
    start = time.perf_counter()
    epoch = train.make_epoch(
        run.net.loss, run.tx, n=n, batch_size=tc.batch_size, gradients=tc.gradients,
        unroll=tc.unroll, layout=run.layout, keyed=run.net.stochastic,
        permute=train.use_permuted_copy(tc.batches, run.net, x, y, batch_size=tc.batch_size),
    ).lower(state, x, y).compile()  # fmt: skip
    evaluate = (
        train.make_evaluate(run.net, n=len(xv), batch_size=tc.eval_batch_size, layout=run.layout)
        .lower(state.params, xv, yv)
        .compile()
    )
    with train.optax_dtypes():  # a global array on every process, like the others
        learning_rate = (
            jax.jit(lambda step: run.schedule(step - 1), out_shardings=run.layout.replicated)
            .lower(state.step)
            .compile()
        )
    check = None
    if tc.check_gradients_every is not None:
        check = (
            train.make_gradient_check(
                run.net.loss,
                n=n,
                batch_size=tc.batch_size,
                layout=run.layout,
                keyed=run.net.stochastic,
            )
            .lower(state.params, x, y, state.key)
            .compile()
        )
    return Programs(epoch, evaluate, learning_rate, check, time.perf_counter() - start)


def train_loop(run: Run, programs: Programs, hooks: Sequence[Hook]) -> list[float]:
    """Train the remaining epochs, calling every hook after each; return each one's seconds.

    One host round trip per epoch: the loss, the validation metrics, the learning rate and
    the parity check come back in one fetch.
    """
    (x, y, xv, yv), tc, seconds = run.arrays, run.cfg.train, []
    first = epoch = int(run.state.epoch) + 1
    try:
        for epoch in range(first, tc.epochs + 1):
            start = time.perf_counter()
            run.state, train_loss = programs.epoch(run.state, x, y)
            device = {"train_loss": train_loss, **programs.evaluate_val(run.state.params, xv, yv)}
            if programs.check_gradients is not None and epoch % tc.check_gradients_every == 0:
                device["gradient_check"] = programs.check_gradients(
                    run.state.params, x, y, run.state.key
                )
            device["lr"] = programs.learning_rate(run.state.step)
            host = run.layout.fetch(device)
            elapsed = time.perf_counter() - start
            seconds.append(elapsed)
            result = EpochResult(epoch, host, _metrics_row(run, epoch, host, elapsed), elapsed)
            for hook in hooks:
                hook(run, result)
    except (jax.errors.JaxRuntimeError, ValueError) as err:  # XLA's collectives raise either
        if jax.process_count() == 1:
            raise
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()} failed in epoch {epoch}, "
            f"most likely because another process died or the network failed: {err}. "
            + _kept(run, "complete", f"restart every process with --resume {run.dir}")
        ) from err
    return seconds


def finish(
    run: Run, programs: Programs, seconds: Sequence[float]
) -> tuple[train.TrainState, dict[str, Any]]:
    """Evaluate the test split, write ``summary.json`` and the plots; fit's return value.

    ``seconds``: the wall time of each epoch this call trained.
    """
    test = evaluate_split(run.cfg, run.dataset, run.state.params, "test", layout=run.layout)
    total = sum(seconds)
    metrics = {  # the head's metrics, the validation metric first; lists for per-label ones
        f"test_{k}": v.tolist() if isinstance(v, np.ndarray) else v
        for k, v in test.items()
        if k not in ("loss", "confusion")
    }
    summary = {
        "test_loss": test["loss"],
        **metrics,
        "epochs": int(run.state.epoch),
        "examples_per_second": len(run.arrays[0]) * len(seconds) / total if total else None,
        "compile_seconds": programs.compile_seconds,
        "train_seconds": total,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "devices": run.layout.size,
        "processes": jax.process_count(),
        "precision": run.cfg.precision,
        "fmlp_version": _version(),
        "run_dir": str(run.dir),
    }
    if run.main:
        run.dir.write_summary(summary)
        _plots(run.dir, run.history, run.metric, test.get("confusion"), "test")
    return run.state, {"epochs": run.history, "summary": summary, "run_dir": str(run.dir)}


# ----------------------------------------------------------------------------- epoch hooks


def _metrics_row(run: Run, epoch: int, host: dict[str, Any], seconds: float) -> dict[str, Any]:
    row = {
        "epoch": epoch,
        "train_loss": float(host["train_loss"]),
        "val_loss": float(host["loss"]) if run.has_val else None,
        **{
            f"val_{k}": float(host[k]) if run.has_val else None for k in train.metric_names(run.net)
        },
        "learning_rate": float(host["lr"]),
        "seconds": seconds,
    }
    if "gradient_check" in host:
        row["gradient_check"] = {k: float(v) for k, v in host["gradient_check"].items()}
    return row


def stop_if_diverged(run: Run, result: EpochResult) -> None:
    """Raise :class:`TrainingDiverged` when the training or validation loss is not finite."""
    host = result.host
    if all(math.isfinite(host[k]) for k in ("train_loss", "loss")):
        return
    raise TrainingDiverged(
        f"training loss became {host['train_loss']} (validation loss {host['loss']}) at "
        f"epoch {result.number}: the learning rate (optimizer.learning_rate="
        f"{run.cfg.optimizer.learning_rate}) is probably too high, or the data holds extreme "
        "values. " + _kept(run, "good")
    )


def log_metrics(run: Run, result: EpochResult) -> None:
    """Append the epoch's row to the history and to ``metrics.jsonl``."""
    run.history.append(result.row)
    if run.main:
        with _saving(
            run, f"the metrics of epoch {result.number} to {run.dir.path / RunDir.METRICS}"
        ):
            run.dir.append_metrics(result.row)


def check_parity(run: Run, result: EpochResult) -> None:
    """Stop the run if the parity monitor's check this epoch found a wrong gradient."""
    tc = run.cfg.train
    train.check_parity(result.row.get("gradient_check"), tc.gradient_tolerance, result.number)


def save_checkpoint(run: Run, result: EpochResult) -> None:
    """Checkpoint every ``train.checkpoint_every`` epochs and after the last one."""
    tc = run.cfg.train
    if result.number % tc.checkpoint_every == 0 or result.number == tc.epochs:
        epoch = result.number
        with _saving(run, f"the checkpoint of epoch {epoch}"):
            run.ckpt.save(epoch, run.state, {"epoch": epoch}, result.host[run.metric])


@contextlib.contextmanager
def _saving(run: Run, what: str) -> Iterator[None]:
    """Turn a storage fault while saving ``what`` into one StorageError that says what is kept."""
    try:
        yield
    except OSError as err:
        reason = str(err) if isinstance(err, StorageError) else (err.strerror or str(err))
        raise StorageError(
            f"could not save {what}: {reason}. "
            + _kept(run, "complete", f"free some space, then continue with --resume {run.dir}")
        ) from err


class _ProgressBar:
    """A tqdm bar over epochs (process 0 only); its :meth:`hook` advances it."""

    def __init__(self, run: Run) -> None:
        from tqdm.auto import tqdm  # here: only runs that show progress pay for the import

        show = {"always": True, "never": False, "auto": sys.stderr.isatty()}[run.cfg.run.progress]
        self.bar = tqdm(
            total=run.cfg.train.epochs, initial=int(run.state.epoch), unit="epoch", desc="train",
            disable=not (show and run.main),  # one bar per run, not one per host
        )  # fmt: skip

    def hook(self, run: Run, result: EpochResult) -> None:
        self.bar.update(1)
        loss, metric = result.host["train_loss"], result.host[run.metric]
        self.bar.set_postfix_str(f"loss {loss:.4f} val_{run.metric} {metric:.4f}")

    def close(self) -> None:
        self.bar.close()


def _kept(run: Run, kind: str, advice: str = "") -> str:
    last = run.ckpt.latest_epoch()
    if last is None:
        return "No checkpoint had been written yet."
    return f"The last {kind} checkpoint (epoch {last}) is kept in {run.dir}" + (
        f"; {advice}." if advice else "."
    )


def _plots(run_dir: RunDir, history: list[dict], metric: str, confusion: Any, split: str) -> None:
    viz.training_curves(history, run_dir.plots(), metric=metric)
    if confusion is not None:
        viz.confusion_matrix(np.asarray(confusion), run_dir.plots() / f"confusion_{split}.png")


def _version() -> str:
    from fmlp import __version__

    return __version__


# ----------------------------------------------------------------------------- reading runs


def evaluate_split(
    cfg: config.Config,
    dataset: data.Dataset,
    params: nn.Params,
    split: str,
    *,
    layout: parallel.Layout | None = None,
) -> dict[str, Any]:
    """Loss and accuracy/confusion (classification) or MSE (regression) on one split.

    ``params`` on a ``layout`` (as :func:`fit` leaves them) are evaluated there.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test; got {split!r}.")
    x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
    if len(x) == 0:
        raise data.DataError(f"the {split} split is empty; set data.validation_fraction > 0.")
    num_features = int(params[0]["W"].shape[0])
    data.validate(
        x, y, task=dataset.task, num_classes=dataset.num_classes, num_features=num_features,
        name=split,
    )  # fmt: skip
    net = train.build_model(cfg, num_features=num_features, num_outputs=dataset.num_outputs)
    evaluate = train.make_evaluate(
        net, n=len(x), batch_size=cfg.train.eval_batch_size, layout=layout
    )
    x, y = (jnp.asarray(x), jnp.asarray(y)) if layout is None else layout.put_replicated((x, y))
    result = parallel.fetch(evaluate(params, x, y))
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v)) for k, v in result.items()}


def _restore(run_dir: RunDir, cfg: config.Config, *, best: bool) -> nn.Params:
    """The params of the best, or the newest intact, checkpoint; reads only (a damaged newer
    checkpoint is skipped with a warning, not moved)."""
    net = run_dir.model(cfg)
    tx, _ = train.make_optimizer(cfg.optimizer, steps_per_epoch=1, epochs=cfg.train.epochs)
    # Shapes only, no arrays: restore into what init_state would build.
    target = jax.eval_shape(lambda: train.init_state(net, tx, seed=cfg.train.seed))
    ckpt = run_dir.checkpointer()
    try:
        if best:
            state, _ = ckpt.restore(target, best=True)
        else:
            restored = ckpt.restore_newest_intact(target, warn=_warn, move_aside=False)
            if restored is None:
                raise NoCheckpointError(f"{run_dir}: checkpoints/latest holds no checkpoint.")
            state = restored[0]
    finally:
        ckpt.close()
    return state.params


def restore_params(run_dir: PathLike, *, best: bool = False) -> nn.Params:
    """The params of a run's latest (or best) checkpoint."""
    run = RunDir(run_dir)
    return _restore(run, run.read_config(), best=best)


def load(run_dir: PathLike, *, best: bool = False) -> tuple[nn.Params, Callable[[Any], Array]]:
    """Params of a finished (or interrupted) run and a ``predict`` function.

    ``predict(x)`` takes raw features ``(B, num_features)`` (it applies the run's saved
    normalisation) and returns class probabilities ``(B, K)`` for a softmax net, label
    probabilities ``(B, K)`` for a sigmoid net, outputs ``(B, out)`` for a regression net;
    never with dropout.
    """
    run = RunDir(run_dir)
    cfg = run.read_config()
    params = _restore(run, cfg, best=best)
    mean, std = run.normalizer(cfg) or (0.0, 1.0)
    net = run.model(cfg)
    forward = jax.jit(net.apply)

    def predict(x: Any) -> Array:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != net.sizes[0]:
            raise data.DataError(
                f"predict expects inputs of shape (batch, {net.sizes[0]}), got {x.shape}."
            )
        return forward(params, jnp.asarray((x - mean) / std, jnp.float32))

    return params, predict


def evaluate_run(run_dir: PathLike, *, split: str = "test", best: bool = False) -> dict[str, Any]:
    """Evaluate a run's latest (or best) checkpoint on ``split``; write plots and JSON.

    Writes ``eval_<split>.json`` and, under ``plots/``, the training curves and (for
    classification) ``confusion_<split>.png``. Returns the metrics, the confusion matrix as
    nested lists.
    """
    report = evaluate_checkpoint(run_dir, split=split, best=best)
    save_evaluation(run_dir, report)
    return report


def evaluate_checkpoint(
    run_dir: PathLike, *, split: str = "test", best: bool = False
) -> dict[str, Any]:
    """The metrics of a run's latest (or best) checkpoint on ``split``; writes nothing."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    params = _restore(run, cfg, best=best)
    result = evaluate_split(cfg, load_dataset(cfg), params, split)
    return {"split": split, "checkpoint": "best" if best else "latest"} | {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()
    }


def save_evaluation(run_dir: PathLike, report: dict[str, Any]) -> None:
    """Write an :func:`evaluate_checkpoint` report: ``eval_<split>.json`` and the plots."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    split = report["split"]
    confusion = report.get("confusion")
    history = run.read_history(upto=cfg.train.epochs)
    _storage(
        lambda: _plots(run, history, train.metric_name(run.model(cfg)), confusion, split),
        run.path,
    )
    _storage(lambda: run.write_eval(split, report), run.path)


# ----------------------------------------------------------------------------- predicting

PREDICT_BATCH = 65_536
"""Rows :func:`predict_file` reads, encodes and runs through the net at a time."""

PREDICT_OUTPUTS: tuple[str, ...] = (".csv", ".parquet", ".npz")
"""The ``--out`` endings :func:`predict_file` writes."""


def predict_file(
    run_dir: PathLike,
    input: PathLike,
    *,
    out: PathLike | None = None,
    proba: bool = False,
    best: bool = False,
    batch_size: int | None = None,
) -> int:
    """Predict every row of a table file with a run's latest (or best) checkpoint.

    ``input`` is a ``.csv``/``.tsv``/``.parquet``/``.npz`` file with the run's feature columns
    (its label column may be present; it is ignored). The run's saved preprocessing and
    normalizer are applied, as training did. Writes one row per input row: ``prediction``
    (the class name, the 0/1 label of a sigmoid head, or the value; ``prediction_<i>`` for
    several outputs) and, with ``proba``, ``proba_<class>`` per class (``proba``/``proba_<i>``
    per sigmoid output), as CSV to ``out`` (stdout when None) or as
    Parquet/``.npz`` by ``out``'s ending. The input is read and written in batches of
    ``batch_size`` rows (:data:`PREDICT_BATCH`). Nothing in the run directory is written.
    Returns the number of rows.

    Raises:
      DataError: an unknown ``--out`` ending; input columns other than the run's; a value
        or category training did not see (naming the file, the column and the first bad row).
    """
    batch_size = PREDICT_BATCH if batch_size is None else batch_size
    kind = "csv" if out is None else _out_format(out)
    run = RunDir(run_dir)
    if out is not None:
        run.require_outside(out)
    cfg = run.read_config()
    pre = run.preprocessing(cfg)
    net = run.model(cfg)
    classes = net.task == "classification"
    if proba and net.task == "regression":
        raise data.DataError(f"--proba: {run} is a regression run; it has no class probabilities.")
    names = _class_names(pre, net) if classes else None
    mean, std = run.normalizer(cfg) or (np.float32(0.0), np.float32(1.0))
    chunks = _input_chunks(input, cfg, pre, net, batch_size)
    first = next(chunks)  # reads, checks and encodes the first batch before the checkpoint
    params = _restore(run, cfg, best=best)
    forward = jax.jit(net.apply)
    shape = batch_size if len(first) == batch_size else len(first)
    writer = _PredictionWriter(out, kind)
    rows = 0
    try:
        for x in itertools.chain([first], chunks):
            x = np.asarray((x - mean) / std, np.float32)
            outputs = []
            for start in range(0, len(x), shape):  # a longer chunk than the first: split
                part = x[start : start + shape]
                padded = np.zeros((shape, x.shape[1]), np.float32)
                padded[: len(part)] = part
                outputs.append(np.asarray(forward(params, padded), np.float32)[: len(part)])
            writer.write(_prediction_columns(np.concatenate(outputs), names, proba, net.task))
            rows += len(x)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return rows


def _out_format(out: PathLike) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in PREDICT_OUTPUTS:
        raise data.DataError(
            f"--out {out}: unknown output format {suffix or '(no ending)'!r}; expected a file "
            f"ending in one of {', '.join(PREDICT_OUTPUTS)}."
        )
    return suffix[1:]


def _class_names(pre: tables.Preprocessing | None, net: nn.MLP) -> tuple[str, ...]:
    if pre is not None and pre.class_names is not None:
        return pre.class_names
    return tuple(str(i) for i in range(net.sizes[-1]))


def _prediction_columns(
    outputs: np.ndarray, names: tuple[str, ...] | None, proba: bool, task: str
) -> dict[str, np.ndarray]:
    """Classes by name; 0/1 per label (multilabel, where its probability exceeds 1/2), with
    ``proba`` the probabilities too; regression values."""
    if names is None:
        suffixes = [""] if outputs.shape[1] == 1 else [f"_{i}" for i in range(outputs.shape[1])]
        values = (outputs > 0.5).astype(np.int32) if task == "multilabel" else outputs
        columns = {f"prediction{s}": values[:, i] for i, s in enumerate(suffixes)}
        if proba:
            columns |= {f"proba{s}": outputs[:, i] for i, s in enumerate(suffixes)}
        return columns
    columns = {"prediction": np.asarray(names)[np.argmax(outputs, axis=1)]}
    if proba:
        columns |= {f"proba_{c}": outputs[:, i] for i, c in enumerate(names)}
    return columns


def _input_chunks(
    path: PathLike,
    cfg: config.Config,
    pre: tables.Preprocessing | None,
    net: nn.MLP,
    batch_size: int,
) -> Iterator[np.ndarray]:
    """The encoded raw features ``(rows, num_features)`` of ``path``, batch by batch."""
    kind = tables.file_format(path)
    namer = tables.row_namer(kind)
    num_features = net.sizes[0]
    start, empty = 0, True
    for frame in _read_chunks(path, kind, cfg, batch_size):
        columns = [str(c) for c in frame.columns]
        frame.columns = columns
        if pre is None:  # a built-in set: every column (bar an npz's label) is a feature
            if len(columns) != num_features:
                raise data.DataError(
                    f"{path}: has {len(columns)} feature column(s); the run expects "
                    f"{num_features} raw numeric features."
                )
            run_pre = tables.Preprocessing(tuple(columns), label="\0label")
        else:
            run_pre = pre
            if kind == "npz" and not pre.categorical and len(columns) == len(pre.features):
                frame.columns = columns = list(pre.features)  # an array's columns: by position
            _check_columns(path, columns, pre)
        if len(frame) == 0:  # a header-only CSV, an empty Parquet batch
            continue
        frame = frame[list(run_pre.features)].copy()
        dummy = run_pre.class_names[0] if run_pre.class_names is not None else 0.0
        frame[run_pre.label] = dummy  # the label, if present, plays no part
        x, _ = tables.encode(
            frame, run_pre, name=str(path), row=lambda i, offset=start: namer(offset + i)
        )
        if x.shape[1] != num_features:
            raise data.DataError(
                f"{path}: encodes to {x.shape[1]} inputs; the run's net takes {num_features}."
            )
        start += len(x)
        empty = False
        yield x
    if empty:
        raise data.DataError(f"{path} has no rows; expected a header line and rows.")


def _check_columns(path: PathLike, columns: Sequence[str], pre: tables.Preprocessing) -> None:
    missing = [c for c in pre.features if c not in columns]
    extra = [c for c in columns if c not in pre.features and c != pre.label]
    if missing or extra:
        parts = [f"lacks {', '.join(missing)}"] * bool(missing) + [
            f"has {', '.join(extra)} besides"
        ] * bool(extra)
        raise data.DataError(
            f"{path}: its columns differ from the run's: it {' and '.join(parts)} (the run's "
            f"features: {', '.join(pre.features)}; the label {pre.label!r} may also be present)."
        )


def _read_chunks(path: PathLike, kind: str, cfg: config.Config, batch_size: int) -> Iterator[Any]:
    """``path`` as pandas frames of at most ``batch_size`` rows (an ``.npz`` file whole)."""
    pd = tables.require_pandas()
    try:
        if kind == "npz":
            yield _read_npz_features(path, cfg)
            return
        if kind == "parquet":
            import pyarrow.parquet as pq

            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=batch_size):
                yield batch.to_pandas()
            return
        sep = "," if kind == "csv" else "\t"
        with pd.read_csv(path, sep=sep, chunksize=batch_size) as reader:
            yield from reader
    except FileNotFoundError:
        raise data.DataError(f"input file {path} does not exist.") from None
    except pd.errors.EmptyDataError:
        raise data.DataError(f"{path} is empty; expected a header line and rows.") from None
    except data.DataError:
        raise
    except (OSError, ValueError, ImportError) as err:  # ParserError included
        raise data.DataError(f"cannot read {path} as {kind}: {err}".rstrip(".") + ".") from None


def _read_npz_features(path: PathLike, cfg: config.Config) -> Any:
    pd = tables.require_pandas()
    features = cfg.data.features
    names = ["x"] + (list(features) if features and len(features) == 1 else [])
    try:
        arrays = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise data.DataError(f"cannot read {path} as npz: {err}") from None
    with arrays:
        found = [n for n in names if n in arrays.files]
        if not found:
            raise data.DataError(
                f"{path}: no features array named {' or '.join(map(repr, names))}; it holds "
                f"{', '.join(arrays.files)}."
            )
        x = arrays[found[-1]]
    if x.ndim != 2:
        raise data.DataError(
            f"{path}: expected {found[-1]} of shape (rows, features), got {x.shape}."
        )
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])


class _PredictionWriter:
    """Writes prediction columns batch by batch: CSV (a file or stdout), Parquet or ``.npz``.

    A file is written beside ``out`` and renamed into place when complete.
    """

    def __init__(self, out: PathLike | None, kind: str) -> None:
        self.out, self.kind = (None if out is None else Path(out)), kind
        self.tmp = None if self.out is None else self.out.with_name(f".{self.out.name}.partial")
        self.first, self.parquet = True, None
        self.parts: dict[str, tuple[Any, np.dtype]] = {}
        self.rows = 0
        self.file = sys.stdout if self.tmp is None or kind != "csv" else self.tmp.open("w")

    def write(self, columns: dict[str, np.ndarray]) -> None:
        pd = tables.require_pandas()
        if self.kind == "csv":
            pd.DataFrame(columns).to_csv(self.file, header=self.first, index=False)
        elif self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table)
        else:  # npz: each column to a raw temporary file, zipped at the end
            for name, values in columns.items():
                if name not in self.parts:
                    self.parts[name] = (tempfile.TemporaryFile(), values.dtype)  # noqa: SIM115
                f, dtype = self.parts[name]
                f.write(np.ascontiguousarray(values, dtype).tobytes())
            self.rows += len(next(iter(columns.values())))
        self.first = False

    def close(self) -> None:
        if self.kind == "csv":
            self.file.flush()
            if self.tmp is not None:
                self.file.close()
        elif self.kind == "parquet":
            self.parquet.close()
        else:
            with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, (f, dtype) in self.parts.items():
                    header = {"descr": np.lib.format.dtype_to_descr(dtype),
                              "fortran_order": False, "shape": (self.rows,)}  # fmt: skip
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as entry:
                        np.lib.format.write_array_header_1_0(entry, header)
                        f.seek(0)
                        shutil.copyfileobj(f, entry)
                    f.close()
        if self.tmp is not None:
            self.tmp.replace(self.out)

    def abort(self) -> None:
        if self.kind == "csv" and self.tmp is not None:
            self.file.close()
        elif self.parquet is not None:
            self.parquet.close()
        for f, _ in self.parts.values():
            f.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def export_run(run_dir: PathLike, out: PathLike, *, best: bool = False) -> dict[str, Any]:
    """Serialize a run's model as a ``jax.export`` artifact that needs jax alone to call.

    The artifact takes the run's raw features ``(B, F)`` float32 for any batch size ``B``:
    the feature columns in training order (``preprocessing.json``'s ``features``), a
    categorical column given as the index of its category in that file's list. The one-hot
    encoding and the saved normalisation are folded in; it returns class probabilities
    ``(B, K)`` (softmax head) or outputs ``(B, out)``. ``jax.export.deserialize(bytes).call(x)``
    runs it. Nothing in the run directory is written; ``out`` appears whole or not at all.

    Returns:
      What the artifact takes: ``{"inputs": [names], "outputs": [names], "file": out}``.
    """
    run = RunDir(run_dir)
    cfg = run.read_config()
    out = Path(out)
    run.require_outside(out)
    net = run.model(cfg)
    pre = run.preprocessing(cfg)
    params = _restore(run, cfg, best=best)
    mean, std = run.normalizer(cfg) or (np.zeros(net.sizes[0], np.float32), 1.0)
    mean = np.broadcast_to(np.asarray(mean, np.float32), (net.sizes[0],))
    std = np.broadcast_to(np.asarray(std, np.float32), (net.sizes[0],))
    categories = dict(pre.categorical) if pre is not None else {}
    features = list(pre.features) if pre is not None else [f"x{i}" for i in range(net.sizes[0])]

    def model(raw: Array) -> Array:  # raw (B, F) -> the net's outputs (B, out)
        columns = []
        for i, name in enumerate(features):
            column = raw[:, i]
            if name in categories:
                codes = column.astype(jnp.int32)
                columns.append(jax.nn.one_hot(codes, len(categories[name]), dtype=jnp.float32))
            else:
                columns.append(column[:, None])
        x = jnp.concatenate(columns, axis=1)
        return net.apply(params, (x - mean[None, :]) / std[None, :])

    batch = jax.export.symbolic_shape("batch")[0]
    spec = jax.ShapeDtypeStruct((batch, len(features)), jnp.float32)
    artifact = jax.export.export(jax.jit(model))(spec).serialize()
    tmp = out.with_name(f".{out.name}.partial")
    _storage(lambda: tmp.write_bytes(artifact), out.parent)
    tmp.replace(out)
    classes = pre.class_names if pre is not None else None
    outputs = (
        [str(c) for c in classes] if classes else [f"output_{j}" for j in range(net.sizes[-1])]
    )
    return {"inputs": features, "outputs": outputs, "file": str(out)}
