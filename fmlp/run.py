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
  ``val_mse`` and ``val_mae``, then ``learning_rate``, ``seconds``, ``gradient_check``), and
  ``metrics.csv``: the same rows (``gradient_check``: the largest relative error);
- ``summary.json``: the final test metrics (``test_loss`` and ``test_`` each metric of
  :func:`fmlp.train.make_evaluate` but the confusion matrix), the best and stopping epochs,
  speed, device and provenance (versions, the config's hash); ``eval_<split>.json``;
- ``checkpoints/`` (orbax, :mod:`fmlp.checkpoint`), ``plots/`` and, with ``run.tensorboard``,
  ``tensorboard/`` (event files).

:func:`fit` reads top to bottom as the run does: :func:`set_up`, :func:`compile_programs`,
:func:`train_loop` (one small hook per per-epoch behaviour), :func:`finish`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import hashlib
import importlib.metadata
import io
import itertools
import json
import logging
import math
import os
import platform
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

from fmlp import checkpoint, config, data, nn, parallel, tables, train, viz
from fmlp.errors import (
    DistributedError,
    Interrupted,
    ModuleLoadError,
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
    METRICS_CSV, TENSORBOARD = "metrics.csv", "tensorboard"

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

    def create(
        self,
        staging: Path,
        cfg: config.Config,
        net: nn.MLP,
        ds: data.Dataset,
        columns: Sequence[str],
    ) -> None:
        """Write what a run starts with into ``staging``, rename it to ``path``, lock it.

        ``columns``: the header of ``metrics.csv``.
        """
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
        staged.write_history([], columns)
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

    def require_same_data(self, cfg: config.Config, dataset: data.Dataset, *, flag: str) -> None:
        """Refuse to go on when the data read now is not encoded as the run saved it.

        A table or training file edited since the run began would give other categories,
        classes or normalizer statistics: resuming or evaluating on them would be silently
        wrong.

        Raises:
          DataError: the saved ``preprocessing.json`` or ``normalizer.npz`` differ from what
            ``dataset`` was encoded with, naming the file to restore.
        """
        saved_pre = self.preprocessing(cfg)
        if saved_pre is not None and saved_pre != dataset.preprocessing:
            raise data.DataError(
                f"{flag} {self}: data.train={cfg.data.train or cfg.data.name} is not the data "
                f"this run was trained on: its columns, categories or classes differ from "
                f"{self.path / self.PREPROCESSING}. Point data.train at the original file."
            )
        saved = self.normalizer(cfg)
        if saved is not None and not (
            np.array_equal(saved[0], dataset.mean) and np.array_equal(saved[1], dataset.std)
        ):
            raise data.DataError(
                f"{flag} {self}: the training split read now has other feature statistics "
                f"than {self.path / self.NORMALIZER} holds, so data.train (or data.subset, "
                "data.validation_fraction, train.seed) changed since the run was trained. "
                "Restore the original data and keys."
            )

    def class_names(self, cfg: config.Config, net: nn.MLP) -> tuple[str, ...] | None:
        """The name of each class id: a table's or scikit-learn set's saved classes,
        Fashion-MNIST's, else the ids as text; None for a regression or multi-label run."""
        if net.head.task != "classification":
            return None
        pre = self.preprocessing(cfg)
        if pre is not None and pre.class_names is not None:
            return pre.class_names
        if cfg.data.name == "fashion_mnist":
            return data.CLASS_NAMES
        return tuple(str(i) for i in range(net.sizes[-1]))

    def output_names(self, cfg: config.Config, net: nn.MLP) -> tuple[str, ...] | None:
        """What each output predicts: the classes (:meth:`class_names`) of a classification
        run; a table's label columns when it has several; else None."""
        if net.head.task == "classification":
            return self.class_names(cfg, net)
        pre = self.preprocessing(cfg)
        return pre.labels if pre is not None and len(pre.labels) > 1 else None

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

    def write_history(self, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
        """Replace ``metrics.jsonl`` and ``metrics.csv`` (header ``columns``) with ``rows``."""
        self._write(self.METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())
        self._write(self.METRICS_CSV, _csv_lines(rows, columns, header=True))

    def append_metrics(self, row: dict[str, Any], columns: Sequence[str]) -> None:
        """Add one epoch's line to ``metrics.jsonl`` and ``metrics.csv``, whole, and flush
        both to disk."""
        for name, line in (
            (self.METRICS, (json.dumps(row) + "\n").encode()),
            (self.METRICS_CSV, _csv_lines([row], columns)),
        ):
            with (self.path / name).open("ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json``."""
        self._write(self.SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json`` as written, or None if it is missing or damaged."""
        try:
            return json.loads((self.path / self.SUMMARY).read_text())
        except (OSError, ValueError):
            return None

    def tensorboard(self, *, purge_step: int) -> Any:
        """A tensorboardX ``SummaryWriter`` on ``tensorboard/``; events of steps from
        ``purge_step`` on in earlier files (an interrupted run's) are hidden by TensorBoard."""
        from tensorboardX import SummaryWriter  # here: only runs that write events need it

        return SummaryWriter(logdir=str(self.path / self.TENSORBOARD), purge_step=purge_step)

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
        replace_file(self.path / name, payload)


def replace_file(path: Path, payload: bytes) -> None:
    """Replace file ``path`` whole: write beside it, flush to disk, rename; on failure the
    old file (or none) stays and the partial one is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _csv_lines(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, header: bool = False
) -> bytes:
    """``rows`` as CSV lines of ``columns`` (after the header line with ``header``): a missing
    or null value is an empty field, a mapping (``gradient_check``) its largest value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        values = [row.get(column) for column in columns]
        writer.writerow(
            ["" if v is None else max(v.values()) if isinstance(v, dict) else v for v in values]
        )
    return buffer.getvalue().encode()


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
class Best:
    """The best value so far of the metric a run watches, and the epochs since it improved.

    An epoch improves on the best when it beats it by more than ``min_delta``
    (``train.early_stopping.min_delta``); the first epoch always does.
    """

    mode: str  # "max" or "min"
    min_delta: float
    epoch: int | None = None
    value: float | None = None
    stale: int = 0  # epochs since the best one

    def update(self, epoch: int, value: float) -> bool:
        """Take ``epoch``'s value; return whether it is the new best."""
        sign = 1.0 if self.mode == "max" else -1.0
        if self.value is None or sign * (value - self.value) > self.min_delta:
            self.epoch, self.value, self.stale = epoch, value, 0
            return True
        self.stale += 1
        return False


@dataclasses.dataclass
class Run:
    """What the steps of :func:`fit` share: the config, directory, data, model and state."""

    cfg: config.Config
    dir: RunDir
    dataset: data.Dataset
    net: nn.MLP
    optimizer: train.Optimizer
    layout: parallel.Layout
    state: train.TrainState
    arrays: tuple[Array, Array, Array, Array]  # x, y, x_val, y_val on the devices
    ckpt: checkpoint.Checkpointer
    history: list[dict[str, Any]]
    main: bool  # this process writes the files
    has_val: bool
    best: Best  # of the watched metric (:attr:`watched`), over the history
    stopped: int | None = None  # the epoch early stopping ended the run at

    @property
    def metric(self) -> str:
        return train.metric_name(self.net)

    @property
    def watched(self) -> str:
        """The metrics row's key that picks the best epoch and stops early."""
        return _watched(self.net, self.has_val)

    @property
    def columns(self) -> list[str]:
        """The columns of ``metrics.csv``."""
        return _columns(self.cfg, self.net)


def _watched(net: nn.MLP, has_val: bool) -> str:
    """``val_accuracy`` for classification, ``val_loss`` for regression; ``train_loss``
    without a validation split."""
    if not has_val:
        return "train_loss"
    return "val_accuracy" if train.metric_name(net) == "accuracy" else "val_loss"


def _columns(cfg: config.Config, net: nn.MLP) -> list[str]:
    """The columns of ``metrics.csv``: those of :func:`metrics_row`, in its order."""
    metrics = [f"val_{k}" for k in train.metric_names(net)]
    names = ["epoch", "train_loss", "val_loss", *metrics, "learning_rate", "seconds"]
    return names + ["gradient_check"] * (cfg.train.check_gradients_every is not None)


def _replay(history: Sequence[dict[str, Any]], watched: str, cfg: config.Config) -> Best:
    """The :class:`Best` of a logged history, as the run tracked it."""
    best = Best("max" if watched == "val_accuracy" else "min", cfg.train.early_stopping.min_delta)
    for row in history:
        best.update(row["epoch"], row[watched])
    return best


class Programs(NamedTuple):
    """The run's compiled programs."""

    epoch: Any
    progress_epoch: Callable[[float], Any] | None  # progress_epoch(last epoch's seconds): below
    evaluate_val: Any
    learning_rate: Any  # state -> the rate of the last step taken
    check_gradients: Any | None  # None: train.check_gradients_every is off
    gradients: Any | None  # for TensorBoard's histograms; None: none asked for
    plateau: Any | None  # (state, validation loss) -> state; None: no plateau schedule
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
        bitwise identical (on CPU) to the uninterrupted run. A run that early stopping ended
        is not trained on: a warning says so and its results are returned.
      train: ``(x, y)`` to train on instead of the config's data: numpy arrays or pandas
        objects (a frame's column names become the feature names; ``data.categorical`` and
        ``data.features`` name its columns). The run's config gets ``data.name: arrays``;
        the task follows from ``model.output``. Validated as a table file is. A resumed
        ``arrays`` run needs the same arrays again.
      test: ``(x, y)`` of the test split; ``None`` holds out a stratified part of ``train``.

    Returns:
      ``(state, history)``: the final :class:`~fmlp.train.TrainState` (with
      ``train.restore_best``, the best epoch's, whose params the test split was evaluated
      on) and a dict with ``epochs`` (one metrics dict per epoch), ``summary`` (as in
      ``summary.json``) and ``run_dir``.

    Raises:
      fmlp.errors.InputError: bad config, data or run directory; nothing saved is touched.
      fmlp.errors.TrainingDiverged: the loss became non-finite; checkpoints up to the last
        good epoch stay.
      fmlp.errors.GradientMismatch: the parity monitor found the engine's gradients wrong.
      fmlp.errors.DistributedError: another process of a multi-process run died or cannot
        be reached; checkpoints up to the last complete epoch stay.
    """
    with Signals() as signals:
        run = set_up(
            source, overrides, out=out, resume=resume, signals=signals, arrays=(train, test)
        )
        try:
            if run.stopped is not None and (summary := run.dir.read_summary()) is not None:
                # resumed after early stopping ended it (and finished): nothing to train
                history = {"epochs": run.history, "summary": summary, "run_dir": str(run.dir)}
                return tested_state(run), history
            bar, board = _ProgressBar(run), TensorBoard(run)
            try:
                programs = compile_programs(run, progress=bar.steps_done if bar.in_epoch else None)
                signals.check(run)
                hooks = [
                    stop_if_diverged, log_metrics, check_parity, stop_early, save_checkpoint,
                    board.hook, bar.hook,
                ]  # fmt: skip
                bar.begin()
                trained = train_loop(run, programs, [*hooks, signals.check])
                state, history = finish(run, programs.compile_seconds, trained)
                board.hparams(run, history["summary"])
                return state, history
            finally:
                bar.close()
                board.close()
        finally:
            run.ckpt.close()
            run.dir.unlock()


def set_up(
    source: Source,
    overrides: Sequence[str],
    *,
    out: PathLike | None,
    resume: PathLike | None,
    signals: Signals,
    arrays: tuple[Any, Any] = (None, None),
    shared: dict[str, Any] | None = None,
) -> Run:
    """Config, processes, run directory, data, model, optimizer, layout and (resumed) state.

    Nothing of an existing run is written before its resume is validated and its checkpoint
    restored; a new run's directory appears complete, once the data and model are built.
    ``shared``: a cache that runs set up one after another (a sweep's members) share their
    datasets and device arrays through, keyed by the data they read.
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
        d = config.to_dict(cfg)
        data_key = json.dumps([d["data"], d["parallel"], cfg.train.seed, cfg.model.loss])
        if shared is not None and data_key in shared:
            dataset = shared[data_key][0]
        else:
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
        optimizer = train.make_optimizer(
            cfg.optimizer, steps_per_epoch=math.ceil(n / tc.batch_size), epochs=tc.epochs,
            accumulate=tc.accumulate,
        )  # fmt: skip
        state = train.init_state(net, optimizer.tx, seed=tc.seed)
        layout = parallel.layout(cfg.parallel, state, optimizer.tx, batch_size=tc.batch_size)
        has_val = len(dataset.x_val) > 0
        watched, columns = _watched(net, has_val), _columns(cfg, net)
        if resume is not None:
            run_dir.require_same_data(cfg, dataset, flag="--resume")
            ckpt, state, history = _resume(run_dir, cfg, net, state, main, watched, columns)
        else:
            if main:
                _storage(lambda: run_dir.create(staging, cfg, net, dataset, columns), run_dir.path)
            parallel.barrier("fmlp: run directory created")  # before the others open it
            ckpt, history = run_dir.checkpointer(**_checkpoint_options(cfg, watched)), []
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        run_dir.unlock()
        raise
    if shared is not None and data_key in shared:
        arrays = shared[data_key][1]
    else:
        val = (dataset.x_val, dataset.y_val) if has_val else (dataset.x_train, dataset.y_train)
        arrays = layout.put_replicated((dataset.x_train, dataset.y_train, *val))
        if shared is not None:
            shared[data_key] = (dataset, arrays)
    best = _replay(history, watched, cfg)
    run = Run(
        cfg, run_dir, dataset, net, optimizer, layout, layout.put_state(state), arrays,
        ckpt, history, main, has_val, best, _stopped(cfg, history, best),
    )  # fmt: skip
    if run.stopped is not None:
        _warn(
            f"--resume {run_dir}: early stopping ended this run at epoch {run.stopped} "
            f"({watched} had not improved for {tc.early_stopping.patience} epochs since epoch "
            f"{best.epoch}); it is not trained on, and nothing of it is written. To train "
            "longer, start a new run with a larger train.early_stopping.patience."
        )
    return run


def _checkpoint_options(cfg: config.Config, watched: str) -> dict[str, Any]:
    best_mode = "max" if watched == "val_accuracy" else "min"
    return {"keep": cfg.train.keep_checkpoints, "best_mode": best_mode}


def _stopped(cfg: config.Config, history: Sequence[dict[str, Any]], best: Best) -> int | None:
    """The epoch early stopping ended a run at (its history's last), or None."""
    patience = cfg.train.early_stopping.patience
    if patience is None or not history or best.stale < patience:
        return None
    return history[-1]["epoch"]


def _resume(
    run_dir: RunDir,
    cfg: config.Config,
    net: nn.MLP,
    state: train.TrainState,
    main: bool,
    watched: str,
    columns: Sequence[str],
) -> tuple[checkpoint.Checkpointer, train.TrainState, list[dict[str, Any]]]:
    """Check the run, restore its newest intact checkpoint, then (only then) rewrite its
    config (the new ``train.epochs``) and cut its metrics back to the restored epoch; unless
    early stopping had ended it there, which leaves it as it is."""
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
    ckpt = run_dir.checkpointer(**_checkpoint_options(cfg, watched))
    restored = ckpt.restore_newest_intact(state, warn=_warn, move_aside=main)
    if restored is not None:
        state = restored[0]
    history = [row for row in logged if row["epoch"] <= int(state.epoch)]
    if main and _stopped(cfg, history, _replay(history, watched, cfg)) is None:
        _storage(lambda: run_dir.write_config(cfg), run_dir.path)
        _storage(lambda: run_dir.write_history(history, columns), run_dir.path)
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


class Signals:
    """SIGINT and SIGTERM during :func:`fit` end the run between steps, never inside one.

    The handler only records the signal (an exception raised inside XLA's compile or a
    garbage-collection callback would be lost); :meth:`check`, called between the steps and
    after every epoch, raises :class:`Interrupted`. A second signal ends the process at once.
    """

    NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}

    def __enter__(self) -> Signals:
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


def compile_programs(run: Run, *, progress: Callable[[Any, Any], None] | None = None) -> Programs:
    """Compile the epoch, the validation pass, the learning rate and what the config adds:
    the parity check, the gradients for histograms, the plateau's update.

    ``progress``: the in-epoch progress callback (:func:`fmlp.train.make_epoch`); the epoch
    that calls it is compiled on first use (:attr:`Programs.progress_epoch`), only once an
    epoch has run longer than :data:`PROGRESS_AFTER` seconds, to report every
    :data:`PROGRESS_INTERVAL` seconds at that epoch's pace (:func:`progress_every`).
    """
    tc, (x, y, xv, yv), state, layout = run.cfg.train, run.arrays, run.state, run.layout
    n = len(x)
    start = time.perf_counter()

    def compiled_epoch(progress: Callable[[Any, Any], None] | None, every: int = 1) -> Any:
        return train.make_epoch(
            run.net.loss, run.optimizer.tx, n=n, batch_size=tc.batch_size,
            gradients=tc.gradients, unroll=tc.unroll, layout=layout, keyed=run.net.stochastic,
            permute=train.use_permuted_copy(tc.batches, run.net, x, y, batch_size=tc.batch_size),
            progress=progress, progress_every=every,
        ).lower(state, x, y).compile()  # fmt: skip

    epoch = compiled_epoch(None)
    progress_epoch = None
    if progress is not None:
        steps, compiled = math.ceil(n / tc.batch_size), []

        def progress_epoch(seconds: float) -> Any:
            """Compiled on the first call, at the pace of that epoch (``seconds``); then reused."""
            if not compiled:
                compiled.append(compiled_epoch(progress, progress_every(steps, seconds)))
            return compiled[0]

    evaluate = (
        train.make_evaluate(run.net, n=len(xv), batch_size=tc.eval_batch_size, layout=layout)
        .lower(state.params, xv, yv)
        .compile()
    )
    learning_rate = (  # a global array on every process, like the others
        jax.jit(run.optimizer.learning_rate, out_shardings=layout.replicated).lower(state).compile()
    )
    check = gradients = plateau = None
    batch = {"n": n, "batch_size": tc.batch_size, "layout": layout}
    on_batch = (state.params, x, y, state.key)
    if tc.check_gradients_every is not None:
        check = (
            train.make_gradient_check(run.net.loss, **batch, keyed=run.net.stochastic)
            .lower(*on_batch)
            .compile()
        )
    if run.cfg.run.tensorboard and run.cfg.run.histogram_every is not None:
        gradients = (
            train.make_gradients(run.net.loss, **batch, keyed=run.net.stochastic)
            .lower(*on_batch)
            .compile()
        )
    if run.optimizer.plateau is not None:
        loss = jax.ShapeDtypeStruct((), jnp.float32, sharding=layout.replicated)
        plateau = (
            jax.jit(run.optimizer.plateau, out_shardings=layout.state).lower(state, loss).compile()
        )
    seconds = time.perf_counter() - start
    return Programs(
        epoch, progress_epoch, evaluate, learning_rate, check, gradients, plateau, seconds
    )


PROGRESS_INTERVAL = 0.25
"""Seconds between the compiled epoch's reports of its steps to the progress bar: each one
stops the loop for a host callback (0.3-0.7 ms on the idle 2-core CPU), so a report every
quarter second costs a fixed ~0.2% of any epoch, however many steps it has."""

PROGRESS_AFTER = 1.0
"""Seconds an epoch must have taken before the next ones report their steps."""


def progress_every(steps: int, seconds: float) -> int:
    """Steps between two reports for an epoch of ``steps`` steps that took ``seconds``."""
    return max(1, min(steps, round(steps * PROGRESS_INTERVAL / max(seconds, 1e-9))))


def train_loop(run: Run, programs: Programs, hooks: Sequence[Hook]) -> list[float]:
    """Train the remaining epochs, calling every hook after each; return each one's seconds.

    One host round trip per epoch: the loss, the validation metrics, the learning rate, the
    parity check and the histograms' arrays come back in one fetch; the plateau's update
    (fed the validation loss) runs on the device before it. Ends early once a hook sets
    ``run.stopped`` (early stopping).
    """
    (x, y, xv, yv), tc, rc, seconds = run.arrays, run.cfg.train, run.cfg.run, []
    first = epoch = int(run.state.epoch) + 1
    try:
        for epoch in range(first, tc.epochs + 1):
            if run.stopped is not None:
                break
            long = bool(seconds) and seconds[-1] > PROGRESS_AFTER
            reports = programs.progress_epoch is not None and long
            program = programs.progress_epoch(seconds[-1]) if reports else programs.epoch
            start = time.perf_counter()
            run.state, train_loss = program(run.state, x, y)
            device = {"train_loss": train_loss, **programs.evaluate_val(run.state.params, xv, yv)}
            if programs.check_gradients is not None and epoch % tc.check_gradients_every == 0:
                device["gradient_check"] = programs.check_gradients(
                    run.state.params, x, y, run.state.key
                )
            if programs.gradients is not None and epoch % rc.histogram_every == 0:
                device["weights"] = run.state.params
                device["gradients"] = programs.gradients(run.state.params, x, y, run.state.key)
            device["lr"] = programs.learning_rate(run.state)
            if programs.plateau is not None:
                run.state = programs.plateau(run.state, device["loss"])
            host = run.layout.fetch(device)
            elapsed = time.perf_counter() - start
            seconds.append(elapsed)
            result = EpochResult(epoch, host, metrics_row(run, epoch, host, elapsed), elapsed)
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
    run: Run,
    compile_seconds: float,
    seconds: Sequence[float],
    test: dict[str, Any] | None = None,
) -> tuple[train.TrainState, dict[str, Any]]:
    """Evaluate the test split (on the best epoch's params with ``train.restore_best``), write
    ``summary.json`` and the plots; fit's return value.

    ``seconds``: the wall time of each epoch this call trained. ``test``: the test split's
    metrics of :func:`tested_state`'s params, as :func:`evaluate_split` gives them, when the
    caller has them (a sweep evaluates its members together).
    """
    state = tested_state(run)
    if test is None:
        test = evaluate_split(run.cfg, run.dataset, state.params, "test", layout=run.layout)
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
        "best_epoch": run.best.epoch,
        "stopped_epoch": run.stopped,
        "tested_epoch": int(state.epoch),
        "examples_per_second": len(run.arrays[0]) * len(seconds) / total if total else None,
        "compile_seconds": compile_seconds,
        "train_seconds": total,
        "device": str(jax.devices()[0].device_kind),
        "device_count": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "devices": run.layout.size,
        "processes": jax.process_count(),
        "precision": run.cfg.precision,
        "fmlp_version": _version(),
        "versions": _versions(),
        "config_sha256": hashlib.sha256(config.dumps(run.cfg).encode()).hexdigest(),
        "run_dir": str(run.dir),
    }
    if run.main:
        run.dir.write_summary(summary)
        labels = run.dir.class_names(run.cfg, run.net)
        _plots(run.dir, run.history, run.metric, test.get("confusion"), "test", labels)
    return state, {"epochs": run.history, "summary": summary, "run_dir": str(run.dir)}


def tested_state(run: Run) -> train.TrainState:
    """The state whose params the test split is evaluated on: the best epoch's (restored
    from ``checkpoints/best``) with ``train.restore_best``, else the last one's."""
    if run.cfg.train.restore_best and run.best.epoch not in (None, int(run.state.epoch)):
        return run.layout.put_state(run.ckpt.restore(run.state, best=True)[0])
    return run.state


# ----------------------------------------------------------------------------- epoch hooks


def metrics_row(run: Run, epoch: int, host: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl`` from the values fetched from the devices."""
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
    """Append the epoch's row to the history, ``metrics.jsonl`` and ``metrics.csv``."""
    run.history.append(result.row)
    if run.main:
        with _saving(
            run, f"the metrics of epoch {result.number} to {run.dir.path / RunDir.METRICS}"
        ):
            run.dir.append_metrics(result.row, run.columns)


def check_parity(run: Run, result: EpochResult) -> None:
    """Stop the run if the parity monitor's check this epoch found a wrong gradient."""
    tc = run.cfg.train
    train.check_parity(result.row.get("gradient_check"), tc.gradient_tolerance, result.number)


def stop_early(run: Run, result: EpochResult) -> None:
    """Track the best epoch of the watched metric; with ``train.early_stopping``, end the run
    once it has not improved for ``patience`` epochs."""
    run.best.update(result.number, result.row[run.watched])
    patience = run.cfg.train.early_stopping.patience
    if patience is not None and run.best.stale >= patience:
        run.stopped = result.number


def save_checkpoint(run: Run, result: EpochResult) -> None:
    """Checkpoint into ``best`` each epoch that is the new best, and into ``latest`` every
    ``train.checkpoint_every`` epochs and after the last one (early stopping's included)."""
    tc, epoch = run.cfg.train, result.number
    best = run.best.epoch == epoch
    latest = epoch % tc.checkpoint_every == 0 or epoch == tc.epochs or run.stopped == epoch
    if best or latest:
        with _saving(run, f"the checkpoint of epoch {epoch}"):
            metric = result.row[run.watched]
            run.ckpt.save(epoch, run.state, {"epoch": epoch}, metric, latest=latest, best=best)


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
    """A tqdm bar over epochs (process 0 only; its :meth:`hook` advances it) and, in epochs
    after one longer than :data:`PROGRESS_AFTER` seconds, a bar over the epoch's mini-batch
    steps with the running loss and examples/s, which the compiled epoch advances
    (:meth:`steps_done`, its host callback) while it runs."""

    def __init__(self, run: Run) -> None:
        from tqdm.auto import tqdm  # here: only runs that show progress pay for the import

        show = {"always": True, "never": False, "auto": sys.stderr.isatty()}[run.cfg.run.progress]
        self.tqdm, self.shown = tqdm, show and run.main  # one bar per run, not one per host
        # One process only: the callback would differ between the processes' programs.
        self.in_epoch = self.shown and jax.process_count() == 1
        self.bar = tqdm(
            total=run.cfg.train.epochs, initial=int(run.state.epoch), unit="epoch", desc="train",
            disable=not self.shown,
        )  # fmt: skip
        self.n, self.batch_size = len(run.arrays[0]), run.cfg.train.batch_size
        self.steps = math.ceil(self.n / self.batch_size)
        self.lock = threading.Lock()  # the callback runs on a thread of the runtime
        self.inner: Any = None
        self.begin()

    def begin(self) -> None:
        """Mark the start of an epoch (the first: right before the loop starts)."""
        self.started = self.drawn = time.perf_counter()

    def steps_done(self, done: np.ndarray, loss_sum: np.ndarray) -> None:
        """The compiled epoch's callback: ``done`` steps so far, their examples' loss sum."""
        with self.lock:
            now = time.perf_counter()
            if self.inner is None:
                self.inner = self.tqdm(
                    total=self.steps, unit="step", leave=False, desc=f"epoch {self.bar.n + 1}"
                )
            if now - self.drawn < self.inner.mininterval and int(done) < self.steps:
                return  # tqdm would not draw it: skip the formatting too
            self.drawn = now
            seen = min(int(done) * self.batch_size, self.n)
            self.inner.set_postfix_str(
                f"loss {float(loss_sum) / seen:.4f}, {seen / (now - self.started):,.0f} examples/s",
                refresh=False,  # drawn by update, at most every tqdm's mininterval
            )
            self.inner.update(int(done) - self.inner.n)  # a repeated call moves nothing
            if int(done) == self.steps:
                self.inner.refresh()  # the epoch's last figures, however soon they come

    def hook(self, run: Run, result: EpochResult) -> None:
        with self.lock:
            if self.inner is not None:
                self.inner.close()
                self.inner = None
            self.bar.update(1)
            loss, metric = result.host["train_loss"], result.host[run.metric]
            self.bar.set_postfix_str(f"loss {loss:.4f} val_{run.metric} {metric:.4f}")
            self.begin()  # the next epoch starts now

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        self.bar.close()


class TensorBoard:
    """With ``run.tensorboard`` (process 0 only): TensorBoard events under ``tensorboard/``,
    written by tensorboardX: each epoch's metrics as scalars, every ``run.histogram_every``
    epochs a histogram of each layer's weights and gradients, and at the end the config as
    hparams with the final test metrics."""

    def __init__(self, run: Run) -> None:
        self.writer = None
        if run.cfg.run.tensorboard and run.main:
            self.writer = run.dir.tensorboard(purge_step=int(run.state.epoch) + 1)

    def hook(self, run: Run, result: EpochResult) -> None:
        if self.writer is None:
            return
        for key, value in result.row.items():
            if key != "epoch" and isinstance(value, float):
                self.writer.add_scalar(key, value, result.number)
        for kind in ("weights", "gradients"):
            for path, leaf in jax.tree_util.tree_leaves_with_path(result.host.get(kind, {})):
                layer, name = path[0].idx, path[-1].key
                self.writer.add_histogram(f"{kind}/layer{layer}/{name}", leaf, result.number)
        self.writer.flush()

    def hparams(self, run: Run, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        flat = _flatten(config.to_dict(run.cfg))
        metrics = {k: v for k, v in summary.items() if k.startswith("test_") and v is not None}
        self.writer.add_hparams(flat, metrics, name="hparams", global_step=int(run.state.epoch))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config dict as dotted keys; a list or null as its YAML text."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list) or value is None:
            flat[prefix + key] = "null" if value is None else json.dumps(value)
        else:
            flat[prefix + key] = value
    return flat


def _kept(run: Run, kind: str, advice: str = "") -> str:
    last = run.ckpt.latest_epoch()
    if last is None:
        return "No checkpoint had been written yet."
    return f"The last {kind} checkpoint (epoch {last}) is kept in {run.dir}" + (
        f"; {advice}." if advice else "."
    )


def _plots(
    run_dir: RunDir,
    history: list[dict],
    metric: str,
    confusion: Any,
    split: str,
    labels: Sequence[str] | None,
) -> None:
    viz.training_curves(history, run_dir.plots(), metric=metric)
    if confusion is not None:
        path = run_dir.plots() / f"confusion_{split}.png"
        viz.confusion_matrix(np.asarray(confusion), path, labels=labels)


def _version() -> str:
    from fmlp import __version__

    return __version__


def _versions() -> dict[str, str | None]:
    """The versions of Python and of the packages a run's numbers depend on (None: absent)."""

    def installed(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    packages = {"jax": "jax", "jaxlib": "jaxlib", "optax": "optax", "orbax": "orbax-checkpoint"}
    return (
        {"python": platform.python_version()}
        | {name: installed(package) for name, package in packages.items()}
        | {"fmlp": _version()}
    )


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
    return host_metrics(parallel.fetch(evaluate(params, x, y)))


def host_metrics(fetched: dict[str, Any]) -> dict[str, Any]:
    """Fetched metrics as :func:`evaluate_split` gives them: scalars as floats, the rest
    (a confusion matrix, per-label figures) as numpy arrays."""
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v)) for k, v in fetched.items()}


def _restore(run_dir: RunDir, cfg: config.Config, *, best: bool) -> nn.Params:
    """The params of the best, or the newest intact, checkpoint; reads only (a damaged newer
    checkpoint is skipped with a warning, not moved)."""
    net = run_dir.model(cfg)
    tx = train.make_optimizer(
        cfg.optimizer, steps_per_epoch=1, epochs=cfg.train.epochs, accumulate=cfg.train.accumulate
    ).tx
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
    dataset = load_dataset(cfg)
    run.require_same_data(cfg, dataset, flag="fmlp eval")
    result = evaluate_split(cfg, dataset, params, split)
    net = run.model(cfg)
    names = run.output_names(cfg, net)
    key = "class_names" if net.task == "classification" else "label_names"
    return (
        {"split": split, "checkpoint": "best" if best else "latest"}
        | {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        | ({} if names is None else {key: list(names)})
    )


def save_evaluation(run_dir: PathLike, report: dict[str, Any]) -> None:
    """Write an :func:`evaluate_checkpoint` report: ``eval_<split>.json`` and the plots."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    split = report["split"]
    confusion, labels = report.get("confusion"), report.get("class_names")
    history = run.read_history(upto=cfg.train.epochs)
    metric = train.metric_name(run.model(cfg))
    _storage(lambda: _plots(run, history, metric, confusion, split, labels), run.path)
    _storage(lambda: run.write_eval(split, report), run.path)


# ----------------------------------------------------------------------------- predicting

PREDICT_BATCH = 65_536
"""Rows :func:`predict_file` reads, encodes and runs through the net at a time."""

PREDICT_OUTPUTS: tuple[str, ...] = (".csv", ".parquet", ".npz")
"""The ``--out`` endings :func:`predict_file` writes."""


def predict_file(
    run_dir: PathLike | Sequence[PathLike],
    input: PathLike,
    *,
    out: PathLike | None = None,
    proba: bool = False,
    best: bool = False,
    batch_size: int | None = None,
) -> int:
    """Predict every row of a table file with a run's latest (or best) checkpoint, or with
    several runs (an ensemble: the mean of their probabilities or outputs).

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
    runs = [RunDir(d) for d in ([run_dir] if isinstance(run_dir, str | os.PathLike) else run_dir)]
    if out is not None:
        for member in runs:
            member.require_outside(out)
    configs = [member.read_config() for member in runs]
    nets = [member.model(member_cfg) for member, member_cfg in zip(runs, configs)]
    run, cfg, net = runs[0], configs[0], nets[0]
    pre = run.preprocessing(cfg)
    names = run.output_names(cfg, net)
    for member, member_cfg, member_net in zip(runs[1:], configs[1:], nets[1:]):
        encoding = (member.preprocessing(member_cfg), member.output_names(member_cfg, member_net))
        if encoding != (pre, names):
            raise data.DataError(
                f"{member} and {run} encode their inputs or name their outputs differently; "
                "an ensemble averages runs trained on the same data."
            )
    if proba and net.task == "regression":
        raise data.DataError(f"--proba: {run} is a regression run; it has no class probabilities.")
    chunks = _input_chunks(input, cfg, pre, net, batch_size)
    first = next(chunks)  # reads, checks and encodes the first batch before the checkpoint
    models = []
    for member, member_cfg, member_net in zip(runs, configs, nets):
        mean, std = member.normalizer(member_cfg) or (np.float32(0.0), np.float32(1.0))
        forward = jax.jit(member_net.apply)
        models.append((forward, _restore(member, member_cfg, best=best), mean, std))
    shape = batch_size if len(first) == batch_size else len(first)
    writer = _PredictionWriter(out, kind)
    rows = 0
    try:
        for x in itertools.chain([first], chunks):
            outputs = np.zeros((len(x), net.sizes[-1]), np.float32)
            for forward, params, mean, std in models:
                z = np.asarray((x - mean) / std, np.float32)
                for start in range(0, len(z), shape):  # a longer chunk than the first: split
                    part = z[start : start + shape]
                    padded = np.zeros((shape, z.shape[1]), np.float32)
                    padded[: len(part)] = part
                    out_part = np.asarray(forward(params, padded), np.float32)[: len(part)]
                    outputs[start : start + len(part)] += out_part / len(models)
            writer.write(_prediction_columns(outputs, names, proba, net.task))
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


def _prediction_columns(
    outputs: np.ndarray, names: tuple[str, ...] | None, proba: bool, task: str
) -> dict[str, np.ndarray]:
    """Classes by name; 0/1 per label (multilabel, where its probability exceeds 1/2), with
    ``proba`` the probabilities too; regression values. ``names``: the classes, or one name
    per output (a table's label columns), or None (the outputs' numbers)."""
    if task == "classification":
        names = names or tuple(str(i) for i in range(outputs.shape[1]))
        columns = {"prediction": np.asarray(names)[np.argmax(outputs, axis=1)]}
        if proba:
            columns |= {f"proba_{c}": outputs[:, i] for i, c in enumerate(names)}
        return columns
    if names is not None:
        suffixes = [f"_{n}" for n in names]
    else:
        suffixes = [""] if outputs.shape[1] == 1 else [f"_{i}" for i in range(outputs.shape[1])]
    values = (outputs > 0.5).astype(np.int32) if task == "multilabel" else outputs
    columns = {f"prediction{s}": values[:, i] for i, s in enumerate(suffixes)}
    if proba:
        columns |= {f"proba{s}": outputs[:, i] for i, s in enumerate(suffixes)}
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
        for label in run_pre.labels:
            frame[label] = dummy  # the labels, if present, play no part
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
    extra = [c for c in columns if c not in pre.features and c not in pre.labels]
    if missing or extra:
        parts = [f"lacks {', '.join(missing)}"] * bool(missing) + [
            f"has {', '.join(extra)} besides"
        ] * bool(extra)
        raise data.DataError(
            f"{path}: its columns differ from the run's: it {' and '.join(parts)} (the run's "
            f"features: {', '.join(pre.features)}; the label "
            + (
                repr(pre.label)
                if isinstance(pre.label, str)
                else f"columns {', '.join(pre.labels)}"
            )
            + " may also be present)."
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


EXPORT_FORMATS: tuple[str, ...] = ("jax", "onnx")
"""``fmlp export --format``: a ``jax.export`` artifact, or an ONNX model (the ``onnx`` extra)."""


def export_run(
    run_dir: PathLike, out: PathLike, *, best: bool = False, format: str = "jax"
) -> dict[str, Any]:
    """Serialize a run's model so that it runs without fmlp: jax alone, or an ONNX runtime.

    The model takes the run's raw features ``(B, F)`` float32 for any batch size ``B``:
    the feature columns in training order (``preprocessing.json``'s ``features``), a
    categorical column given as the index of its category in that file's list. The one-hot
    encoding and the saved normalisation are folded in; it returns class probabilities
    ``(B, K)`` (softmax head) or outputs ``(B, out)``. ``format="jax"``: a ``jax.export``
    artifact, run by ``jax.export.deserialize(bytes).call(x)``; ``"onnx"``: an ONNX model
    (converted by jax2onnx): input ``x``, output ``y``, the batch dimension ``B`` dynamic.
    Nothing in the run directory is written; ``out`` appears whole or not at all.

    Returns:
      What the model takes: ``{"inputs": [names], "outputs": [names], "file": out}``.

    Raises:
      InputError: ``out`` inside the run, an unknown ``format``, or ``onnx`` without the
        ``onnx`` extra installed.
    """
    if format not in EXPORT_FORMATS:
        raise data.DataError(f"--format {format}: expected one of {', '.join(EXPORT_FORMATS)}.")
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

    if format == "onnx":
        artifact = _onnx(model, len(features))
    else:
        batch = jax.export.symbolic_shape("batch")[0]
        spec = jax.ShapeDtypeStruct((batch, len(features)), jnp.float32)
        artifact = bytes(jax.export.export(jax.jit(model))(spec).serialize())
    _storage(lambda: replace_file(out, artifact), out.parent)
    names = run.output_names(cfg, net)
    outputs = list(names) if names else [f"output_{j}" for j in range(net.sizes[-1])]
    return {"inputs": features, "outputs": outputs, "file": str(out)}


def _onnx(model: Callable[[Array], Array], num_features: int) -> bytes:
    """``model`` on ``(B, num_features)`` float32 as a serialized ONNX model (jax2onnx)."""
    try:
        import jax2onnx
    except ImportError:
        raise ModuleLoadError(
            "--format onnx needs jax2onnx and onnxruntime: pip install 'fmlp[onnx]' (README's "
            "setup, scripts/setup.sh, installs them)."
        ) from None
    # onnx_ir logs a warning per symbolic dimension it keeps untyped (the batch B); the
    # model is complete (tests run it in onnxruntime), so the user need not see them.
    log = logging.getLogger("onnx_ir")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        proto = jax2onnx.to_onnx(
            model, [("B", num_features)], model_name="fmlp", input_names=["x"], output_names=["y"]
        )
        return proto.SerializeToString()
    finally:
        log.setLevel(level)
