"""Run configuration: a typed schema, YAML loading, dotted ``key=value`` overrides, validation.

A config has seven sections (``model``, ``data``, ``optimizer``, ``train``, ``parallel``,
``distributed``, ``run``) and one top-level key (``precision``); each section is a frozen
dataclass whose fields carry their constraints as metadata (``choices``, ``min``, ``max``). One
generic validator walks those fields whenever a section is built, so every :class:`Config` that
exists is valid; an invalid one raises :class:`ConfigError` naming the dotted key, what was
expected, what was received and, for a misspelt key or choice, the close match.

Example:
    >>> raw = apply_overrides({"train": {"epochs": 5}}, ["model.hidden=[64, 64]"])
    >>> cfg = from_dict(raw)
    >>> cfg.model.hidden, cfg.train.epochs, cfg.optimizer.learning_rate
    ([64, 64], 5, 0.05)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

from fmlp import data, nn
from fmlp.errors import ConfigError

__all__ = ["ConfigError"]  # re-exported from fmlp.errors

# Upper bounds: far beyond any real run, low enough that no value can ask for an allocation
# or a loop that cannot end (the memory a model needs is estimated when it is built).
MAX_WIDTH = 2**20
MAX_EXAMPLES = 2**31 - 1
MAX_EPOCHS = 10**6
MAX_DEVICES = 2**16
MAX_SECONDS = 7 * 24 * 3600
MAX_EXPANDED_NODES = 10_000  # YAML nodes after aliases are expanded
MAX_DEPTH = 32  # YAML nesting

# (regex, what it means) for string fields.
_ADDRESS = (
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
    r":(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})",
    "host:port with a port in 1..65535, e.g. 10.0.0.1:1234",
)
_NAME = (r"(?!\.\.?$)[^/\\\x00]+", "a file name, with no '/' or '\\' (and not '.' or '..')")
_PATH = (r"[^\x00]+", "a non-empty path")
_COLUMN = (r"[^\x00]+", "a non-empty column name")


def _field(
    default: Any,
    *,
    choices: Sequence[str] | Mapping[str, Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    pattern: tuple[str, str] | None = None,
    limit: int | None = None,
) -> Any:
    """A dataclass field whose constraints live in its metadata, read by :func:`_check`.

    ``choices`` may be the table the names come from (e.g. ``nn.ACTIVATIONS``): it is read
    at every check, so a name added to the table later is accepted.
    """
    metadata = {
        "choices": choices if isinstance(choices, Mapping) or choices is None else tuple(choices),
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
        "pattern": pattern,
        "limit": limit,  # a cap against runaway values, checked after the range
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _Section:
    """Mixin: after construction, check and normalise every field from its type and metadata."""

    _prefix: ClassVar[str]

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = _check(self._prefix + f.name, getattr(self, f.name), hints[f.name], f.metadata)
            object.__setattr__(self, f.name, value)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """The MLP: hidden widths (empty = no hidden layer), activation, output head, initializer."""

    _prefix: ClassVar[str] = "model."

    # _field copies list defaults
    hidden: list[int] = _field([100], min=1, limit=MAX_WIDTH)  # noqa: RUF009
    # one for every hidden layer, or a list of one per hidden layer
    activation: str | list[str] = _field("tanh", choices=nn.ACTIVATIONS)  # noqa: RUF009
    # the output activation: softmax, sigmoid or identity; null: the one of model.loss
    output: str | None = _field(None, choices=nn.OUTPUTS)
    # the head's loss (nn.HEADS); null: the default of model.output (softmax: cross_entropy,
    # sigmoid: binary_cross_entropy, identity: squared_error), or cross_entropy
    loss: str | None = _field(None, choices=nn.HEADS)
    init: str = _field("glorot_uniform", choices=nn.INITIALIZERS)
    # dropout rate after each hidden activation in training, or a list of one per layer
    dropout: float | list[float] = _field(0.0, min=0.0, max=1.0, max_exclusive=True)  # noqa: RUF009
    layer_norm: bool = _field(False)  # normalise each hidden layer's pre-activations
    residual: bool = _field(False)  # skip connections between hidden layers of equal width
    # classification heads: mix the targets with uniform ones by this much
    label_smoothing: float = _field(0.0, min=0.0, max=1.0, max_exclusive=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:  # the checks that need several keys are the net's own
            net = nn.mlp(
                [1, *self.hidden, 1], activation=self.activation, output=self.output,
                loss=self.loss, dropout=self.dropout, residual=self.residual,
                label_smoothing=self.label_smoothing,
            )  # fmt: skip
        except ValueError as err:  # the message starts with the option's name
            raise ConfigError(f"{self._prefix}{err}") from None
        object.__setattr__(self, "loss", net.loss_name)
        object.__setattr__(self, "output", net.output)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The data set, where to find it, the validation split and preprocessing."""

    _prefix: ClassVar[str] = "data."

    name: str = _field("fashion_mnist", choices=data.DATASET_TASKS)
    path: str | None = _field(None)
    validation_fraction: float = _field(0.1, min=0.0, max=1.0, max_exclusive=True)
    normalize: str = _field("standardize", choices=data.NORMALIZATIONS)
    subset: int | None = _field(None, min=1, limit=MAX_EXAMPLES)
    synthetic_examples: int = _field(2000, min=10, limit=10**7)
    # data.name: table — the files (.csv, .tsv, .parquet, .npz; relative to the working
    # directory); test null: a stratified held-out split of train
    train: str | None = _field(None, pattern=_PATH)
    test: str | None = _field(None, pattern=_PATH)
    # the label column (.npz: the label array), or a list: multi-label 0/1 columns
    # (model.loss: binary_cross_entropy) or regression targets; the task follows from the head
    label: str | list[str] | None = _field(None, pattern=_COLUMN)  # noqa: RUF009
    # the feature columns in order; null: every other column (.npz: the features array, x)
    features: list[str] | None = _field(None, pattern=_COLUMN)  # noqa: RUF009
    # feature columns one-hot encoded, with the categories of the training file
    categorical: list[str] = _field([], pattern=_COLUMN)  # noqa: RUF009
    # cross_entropy: weigh each class's loss; balanced: n / (classes * n_class), or a list
    class_weight: str | list[float] | None = _field(  # noqa: RUF009
        None, choices=("balanced",), min=0.0, min_exclusive=True
    )


@dataclasses.dataclass(frozen=True)
class PlateauConfig(_Section):
    """``optimizer.schedule: plateau``: the rate is scaled by ``factor`` whenever the
    validation loss has not improved for ``patience`` epochs (optax's ``reduce_on_plateau``)."""

    _prefix: ClassVar[str] = "optimizer.plateau."

    factor: float = _field(0.5, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
    patience: int = _field(2, min=1, limit=MAX_EPOCHS)
    # epochs after a reduction before the next patience count starts
    cooldown: int = _field(0, min=0, limit=MAX_EPOCHS)
    # the scale never drops below this fraction of the rate
    min_scale: float = _field(0.0, min=0.0, max=1.0)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """The optax optimizer, its weight decay, learning-rate schedule (per epoch; a plateau's
    in ``plateau``) and gradient clipping."""

    _prefix: ClassVar[str] = "optimizer."

    name: str = _field("sgd", choices=("sgd", "adam", "adamw"))
    learning_rate: float = _field(0.05, min=0.0, min_exclusive=True)
    momentum: float = _field(0.9, min=0.0, max=1.0, max_exclusive=True)
    nesterov: bool = _field(False)
    # adam and adamw: the moments' decay rates and the denominator's epsilon
    b1: float = _field(0.9, min=0.0, max=1.0, max_exclusive=True)
    b2: float = _field(0.999, min=0.0, max=1.0, max_exclusive=True)
    eps: float = _field(1e-8, min=0.0, min_exclusive=True)
    weight_decay: float = _field(0.0, min=0.0)
    # false: weight decay skips every parameter but the weight matrices W (biases, norm scales)
    decay_biases: bool = _field(False)
    schedule: str = _field(
        "constant", choices=("constant", "cosine", "warmup_cosine", "exponential", "plateau")
    )
    # warmup_cosine and plateau: epochs of linear warm-up from 0
    warmup_epochs: int = _field(0, min=0, limit=MAX_EPOCHS)
    decay_rate: float = _field(0.9, min=0.0, max=1.0, min_exclusive=True)
    plateau: PlateauConfig = dataclasses.field(default_factory=PlateauConfig)
    clip_norm: float | None = _field(None, min=0.0, min_exclusive=True)


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """``train.early_stopping``: stop once the validation metric (accuracy; the loss for
    regression) has not improved by more than ``min_delta`` for ``patience`` epochs."""

    _prefix: ClassVar[str] = "train.early_stopping."

    patience: int | None = _field(None, min=1, limit=MAX_EPOCHS)  # null: no early stopping
    min_delta: float = _field(0.0, min=0.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """The training loop: epochs, mini-batch size and accumulation, seed, gradient backend,
    checkpoints, parity checks, early stopping and which epoch's params are tested."""

    _prefix: ClassVar[str] = "train."

    epochs: int = _field(20, min=1, limit=MAX_EPOCHS)
    batch_size: int = _field(128, min=1, limit=MAX_EXAMPLES)  # the lecture's mini-batch of 128
    # mini-batches whose mean gradient makes one optimizer step (optax.MultiSteps)
    accumulate: int = _field(1, min=1, limit=MAX_EXAMPLES)
    seed: int = _field(0, min=0, max=2**32, max_exclusive=True)  # a uint32, as JAX's keys take
    gradients: str = _field("engine", choices=("engine", "jax"))
    # mini-batch steps per iteration of the epoch's loop
    unroll: int = _field(1, min=1, limit=1024)
    # gathered | permuted: how an epoch forms its batches (train.use_permuted_copy); auto picks
    batches: str = _field("auto", choices=("auto", "gathered", "permuted"))
    checkpoint_every: int = _field(1, min=1, limit=MAX_EPOCHS)
    keep_checkpoints: int = _field(2, min=1, limit=1000)
    eval_batch_size: int = _field(1024, min=1, limit=MAX_EXAMPLES)
    # epochs between parity checks
    check_gradients_every: int | None = _field(None, min=1, limit=MAX_EPOCHS)
    gradient_tolerance: float = _field(1e-4, min=0.0, min_exclusive=True)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    # true: the test split is evaluated on the best validation epoch's params, not the last's
    restore_best: bool = _field(False)


@dataclasses.dataclass(frozen=True)
class ParallelConfig(_Section):
    """How the devices are laid out: a ``data`` axis (batch shards) and a ``model`` axis.

    ``data`` null takes every visible device (of every process) not used by ``model``.
    """

    _prefix: ClassVar[str] = "parallel."

    data: int | None = _field(None, min=1, limit=MAX_DEVICES)
    # > 1 shards wide layers' columns over this many devices
    model: int = _field(1, min=1, limit=MAX_DEVICES)


@dataclasses.dataclass(frozen=True)
class DistributedConfig(_Section):
    """Joining several processes (hosts) with ``jax.distributed.initialize``.

    All null and ``from_environment`` false: a single process. Otherwise every process runs
    the same command with its own ``process_id``; null keys are read from the cluster's
    environment (SLURM, Open MPI, TPU VMs, ``JAX_COORDINATOR_ADDRESS``...) when
    ``from_environment`` is true.
    """

    _prefix: ClassVar[str] = "distributed."

    coordinator_address: str | None = _field(None, pattern=_ADDRESS)  # host:port of process 0
    num_processes: int | None = _field(None, min=1, limit=MAX_DEVICES)
    process_id: int | None = _field(None, min=0, limit=MAX_DEVICES)
    from_environment: bool = _field(False)
    # seconds to wait for every process; of silence that mark a process dead
    initialization_timeout: int = _field(300, min=1, limit=MAX_SECONDS)
    heartbeat_timeout: int = _field(100, min=1, limit=MAX_SECONDS)

    @property
    def enabled(self) -> bool:
        """Whether this config asks for a multi-process run."""
        given = (self.coordinator_address, self.num_processes, self.process_id)
        return self.from_environment or any(v is not None for v in given)


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """Where and how a run reports: its name, output directory, progress display, TensorBoard."""

    _prefix: ClassVar[str] = "run."

    name: str | None = _field(None, pattern=_NAME)
    out_dir: str = _field("runs", pattern=_PATH)
    progress: str = _field("auto", choices=("auto", "always", "never"))
    # TensorBoard events under tensorboard/: scalars per epoch, the config as hparams
    tensorboard: bool = _field(False)
    # epochs between histograms of each layer's weights and gradients; null: none
    histogram_every: int | None = _field(1, min=1, limit=MAX_EPOCHS)


@dataclasses.dataclass(frozen=True)
class Config(_Section):
    """A whole run. ``Config()`` is valid; every instance passed field and cross-field checks."""

    _prefix: ClassVar[str] = ""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # float32, or bfloat16 compute with float32 master params, loss and softmax
    precision: str = _field("float32", choices=("float32", "bfloat16"))
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        m, name = self.model, self.data.name
        head_task, data_task = nn.HEADS[m.loss].task, data.DATASET_TASKS[name]
        if name == "table":
            for key in ("train", "label"):
                if getattr(self.data, key) is None:
                    raise ConfigError(
                        f"data.{key}: data.name=table needs it (the "
                        + ("training file" if key == "train" else "label column")
                        + "), got null"
                    )
        labels = self.data.label
        if isinstance(labels, list):
            if not labels or len(set(labels)) != len(labels):
                raise ConfigError(f"data.label: expected distinct column names, got {labels}")
            if len(labels) > 1 and head_task == "classification":
                raise ConfigError(
                    f"data.label: {len(labels)} label columns need one output each: "
                    "model.loss=binary_cross_entropy (0/1 labels) or a regression loss; "
                    f"model.loss={m.loss!r} (softmax) takes one label column"
                )
        if data_task is not None and head_task != data_task:  # None: the head sets the task
            fitting = [o for o, h in nn.HEADS.items() if h.task == data_task]
            raise ConfigError(
                f"model.loss={m.loss!r} (model.output={m.output!r}) is a {head_task} head but "
                f"data.name={name!r} is a {data_task} set; expected model.loss="
                f"{' or '.join(fitting)} for this data"
            )
        if self.data.class_weight is not None and m.loss != "cross_entropy":
            raise ConfigError(
                f"data.class_weight: weighs the classes of a cross_entropy head, but "
                f"model.loss={m.loss!r}; set data.class_weight: null"
            )
        dist = self.distributed
        if None not in (dist.num_processes, dist.process_id) and (
            dist.process_id >= dist.num_processes
        ):
            raise ConfigError(
                f"distributed.process_id must be < distributed.num_processes, got "
                f"distributed.process_id={dist.process_id} and "
                f"distributed.num_processes={dist.num_processes}; ids run 0..num_processes-1"
            )
        opt = self.optimizer
        watching = [
            key
            for key, on in (
                ("train.early_stopping.patience", self.train.early_stopping.patience is not None),
                ("optimizer.schedule=plateau", opt.schedule == "plateau"),
            )
            if on
        ]
        if watching and self.data.validation_fraction == 0:
            raise ConfigError(
                f"data.validation_fraction: {' and '.join(watching)} "
                f"need{'s' * (len(watching) == 1)} a validation split, but "
                "data.validation_fraction=0 holds none out; set it > 0"
            )
        if opt.schedule == "warmup_cosine" and opt.warmup_epochs >= self.train.epochs:
            raise ConfigError(
                f"optimizer.warmup_epochs must be < train.epochs when "
                f"optimizer.schedule='warmup_cosine', got optimizer.warmup_epochs="
                f"{opt.warmup_epochs} and train.epochs={self.train.epochs}"
            )


# --- the generic validator ------------------------------------------------------------------

_hints = functools.cache(typing.get_type_hints)
_TYPE_NAMES = {bool: "boolean (true/false)", int: "integer", float: "number", str: "string"}


_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxlist, _EXCERPT.maxdict = 3, 6, 6
_EXCERPT.maxstring = _EXCERPT.maxother = 60


def _excerpt(value: Any) -> str:
    """A bounded repr: a huge (or alias-expanded) value never floods an error message."""
    return _EXCERPT.repr(value)


def _show(value: Any) -> str:
    """A received value as the error message shows it: ``null`` or its repr and type."""
    return "null" if value is None else f"{_excerpt(value)} ({type(value).__name__})"


def _optional_inner(tp: Any) -> Any | None:
    """The ``X`` of ``X | None`` (``X`` may be a union itself), or ``None`` if ``tp`` is not
    optional."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is types.UnionType and type(None) in args:
        return functools.reduce(operator.or_, (a for a in args if a is not type(None)))
    return None


def _one_or_list(tp: Any) -> tuple[Any, Any] | None:
    """``(X, list[Y])`` of a union ``X | list[Y]`` (one value, or a list of them), else None."""
    if typing.get_origin(tp) is not types.UnionType:
        return None
    (one,) = (a for a in typing.get_args(tp) if typing.get_origin(a) is not list)
    (many,) = (a for a in typing.get_args(tp) if typing.get_origin(a) is list)
    return one, many


def _describe(tp: Any) -> str:
    """A type in words: ``an integer``, ``a list of integers``, ``a string or null``."""
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_describe(inner)} or null"
    if _one_or_list(tp) is not None:
        return " or ".join(map(_describe, _one_or_list(tp)))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_TYPE_NAMES[item].split(' ')[0]}s"
    if dataclasses.is_dataclass(tp):
        return f"{'an' if tp.__name__[0] in 'AEIOU' else 'a'} {tp.__name__} or a mapping"
    name = _TYPE_NAMES[tp]
    return ("an " if name[0] in "aeiou" else "a ") + name


def _bounds(meta: Mapping[str, Any]) -> str:
    """The range in ``meta`` in words: ``> 0``, ``>= 1``, ``in [0, 1)``."""
    lo, hi = meta.get("min"), meta.get("max")
    fmt = lambda x: f"{x:g}"
    if lo is not None and hi is not None:
        left = "(" if meta.get("min_exclusive") else "["
        right = ")" if meta.get("max_exclusive") else "]"
        return f"in {left}{fmt(lo)}, {fmt(hi)}{right}"
    if lo is not None:
        return f"{'>' if meta.get('min_exclusive') else '>='} {fmt(lo)}"
    return f"{'<' if meta.get('max_exclusive') else '<='} {fmt(hi)}"


def _in_bounds(value: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    above = lo is None or (value > lo if meta.get("min_exclusive") else value >= lo)
    below = hi is None or (value < hi if meta.get("max_exclusive") else value <= hi)
    return above and below


def _has_type(value: Any, tp: Any) -> bool:
    """Whether ``value`` is a ``tp``; bool counts as no number, an int counts as a float."""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, tp)


def _check(path: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Check ``value`` at dotted ``path`` against type ``tp`` and constraints ``meta``.

    Returns the normalised value (floats for float fields, lists for list fields, built
    sections for mappings); raises :class:`ConfigError` naming ``path`` otherwise.
    """
    declared = tp
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None:
            return None
        tp = inner
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if _one_or_list(tp) is not None:
        one, many = _one_or_list(tp)
        if isinstance(value, list | tuple):
            return _check(path, value, many, meta)
        if not _has_type(value, one):
            names = meta.get("choices") if one is str else None
            expected = _describe(declared) if names is None else f"one of {', '.join(names)}"
            raise ConfigError(f"{path}: expected {expected} (or a list), got {_show(value)}")
        tp = one
    if typing.get_origin(tp) is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected {_describe(declared)}, got {_show(value)}")
        (item,) = typing.get_args(tp)
        return [_check(f"{path}[{i}]", v, item, meta) for i, v in enumerate(value)]
    choices = meta.get("choices") if tp is str else None  # names; bounds are for numbers
    if not _has_type(value, tp):
        expected = f"one of {', '.join(choices)}" if choices is not None else _describe(declared)
        hint = ""
        if tp is str and isinstance(value, bool):
            hint = " (YAML reads yes/no/on/off as true/false; quote a word meant as text)"
        raise ConfigError(f"{path}: expected {expected}, got {_show(value)}{hint}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"{path}: expected one of {', '.join(choices)}; got {_excerpt(value)}{hint}"
        )
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern[0], value):
        raise ConfigError(f"{path}: expected {pattern[1]}, got {_excerpt(value)}")
    if tp in (int, float) and not _in_bounds(value, meta):
        raise ConfigError(
            f"{path}: expected {_describe(tp)} {_bounds(meta)}, got {_excerpt(value)}"
        )
    limit = meta.get("limit")
    if limit is not None and tp in (int, float) and value > limit:
        raise ConfigError(
            f"{path}: expected at most {limit:,}, got {_excerpt(value)}; no run needs more, "
            "and the value would ask for more memory or time than any machine has"
        )
    return value


def _unknown(cls: type[_Section], key: Any) -> ConfigError:
    """The error for ``key`` not being a field of ``cls``, with the closest field name."""
    names = [f.name for f in dataclasses.fields(cls)]
    what = "key" if cls._prefix else "section"
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {cls._prefix}{close[0]}?)" if close else ""
    where = f" in {cls._prefix[:-1]}" if cls._prefix else ""
    return ConfigError(
        f"unknown {what} {cls._prefix + str(key)!r}{hint}; known {what}s{where}: {', '.join(names)}"
    )


def _build(cls: type[_Section], raw: Any, path: str) -> Any:
    """Section ``cls`` from ``raw``: an instance as is, or built from a mapping of known keys."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or 'config'}: expected {_describe(cls)}, got {_show(raw)}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise _unknown(cls, key)
    return cls(**raw)


# --- YAML -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a float, rejects duplicate keys and leading
    zeros, and bounds the work a document can ask for (alias expansion and nesting)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_scalar(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_excerpt(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_leading_zero(self, node: yaml.ScalarNode) -> Any:
        digits = node.value.replace("_", "")
        octal = set(digits.lstrip("+-")) <= set("01234567")
        reads = f"the octal number {int(digits, 8)}" if octal else "a string"
        raise yaml.constructor.ConstructorError(
            None, None,
            f"{node.value} has a leading zero, so YAML 1.1 reads it as {reads}; write it "
            "without the leading zero, or quote it if it is text",
            node.start_mark,
        )  # fmt: skip


# YAML 1.1 (PyYAML) reads 1e-3 and 1.0e3 as strings; learning rates are written that way.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
# ... and 010 as the octal 8: refused instead (checked before YAML's own int resolver).
_LEADING_ZERO = "tag:fmlp,leading-zero"
_Loader.yaml_implicit_resolvers = {
    first: [(_LEADING_ZERO, re.compile(r"^[-+]?0[0-9_]+$"))] * (first in "-+0") + list(rules)
    for first, rules in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor(_LEADING_ZERO, _Loader.construct_leading_zero)


def _check_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand beyond :data:`MAX_EXPANDED_NODES` nodes or that
    nests deeper than :data:`MAX_DEPTH`, counting without building anything."""
    expanded: dict[int, int] = {}  # node id -> nodes it stands for once aliases are expanded
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1}); "
                "a config is a mapping of sections of keys"
            )
        children = [] if isinstance(node, yaml.ScalarNode) else list(_children(node))
        if children_done:
            expanded[id(node)] = 1 + sum(expanded[id(c)] for c in children)
            if expanded[id(node)] > MAX_EXPANDED_NODES:
                raise ConfigError(
                    f"the document expands to more than {MAX_EXPANDED_NODES} values once its "
                    f"YAML aliases (*name) are expanded (line {node.start_mark.line + 1}); "
                    "write the values out instead"
                )
        elif id(node) not in expanded:
            stack.append((node, depth, True))
            stack += [(c, depth + 1, False) for c in children if id(c) not in expanded]


def _children(node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return (n for pair in node.value for n in pair)


def _parse_yaml(text: str) -> Any:
    """Parse YAML text safely (no arbitrary objects) and with bounded work."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_size(root)
        return loader.construct_document(root)
    except RecursionError:
        raise ConfigError(
            f"nested deeper than {MAX_DEPTH} levels; a config is a mapping of sections of keys"
        ) from None
    finally:
        loader.dispose()


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as ``line L, column C: problem``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


# --- public API -----------------------------------------------------------------------------


def from_dict(d: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested mapping; missing keys take defaults.

    Args:
        d: ``{section: {key: value}}``, e.g. parsed YAML.

    Returns:
        The validated config.

    Raises:
        ConfigError: an unknown key or section, a wrong type, a value out of range or not among
            the choices, or an inconsistent combination (e.g. a regression head on a
            classification set).
    """
    return _build(Config, d, "")


def to_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as nested plain Python types (dicts, lists, str, int, float, bool, None)."""
    return dataclasses.asdict(cfg)


def apply_overrides(d: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of the raw config ``d`` with ``section.key=value`` overrides applied.

    Each value is parsed as YAML: ``train.epochs=3``, ``model.hidden=[256,256]``,
    ``data.path=null``, ``optimizer.nesterov=true``, ``optimizer.learning_rate=1e-3``. The
    input is not modified. The keys are checked against the schema here; the values are
    checked when the result is passed to :func:`from_dict`.

    Raises:
        ConfigError: a malformed override, an unknown key (with the close match), or a value
            that is not valid YAML.
    """
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides: expected a sequence of 'section.key=value' strings, got {_show(overrides)}"
        )
    result = dict(d)
    for item in overrides:
        key, sep, text = item.partition("=") if isinstance(item, str) else ("", "", "")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"malformed override {item!r}: expected the form section.key=value, "
                f"e.g. train.epochs=3"
            )
        try:
            value = _parse_yaml(text)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {_excerpt(item)}: the value is not valid YAML ({_yaml_problem(err)})"
            ) from None
        except ConfigError as err:
            raise ConfigError(f"override {_excerpt(item)}: {err}") from None
        node, cls = result, Config
        for part in parts[:-1]:
            if part not in {f.name for f in dataclasses.fields(cls)}:
                raise _unknown(cls, part)
            sub = _hints(cls)[part]
            if not dataclasses.is_dataclass(sub):
                raise ConfigError(
                    f"malformed override {item!r}: {cls._prefix}{part} is a value, not a "
                    f"section; expected the form section.key=value"
                )
            child = node.get(part, {})
            if not isinstance(child, Mapping):
                raise ConfigError(
                    f"{cls._prefix}{part}: expected a mapping to apply override {item!r}, "
                    f"got {_show(child)}"
                )
            node[part] = child = dict(child)
            node, cls = child, sub
        if parts[-1] not in {f.name for f in dataclasses.fields(cls)}:
            raise _unknown(cls, parts[-1])
        node[parts[-1]] = value
    return result


def load(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config file, apply ``section.key=value`` overrides and validate.

    Args:
        path: a YAML file whose top level maps section names to mappings of keys.
        overrides: e.g. ``["train.epochs=3", "model.hidden=[256,256]"]``.

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML (the message gives
            the line), its top level is not a mapping, or the config is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from None
    try:
        raw = _parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(err)}") from None
    except ConfigError as err:  # too large or too deep: say which file
        raise ConfigError(f"{path}: {err}") from None
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    if raw is None:
        raise ConfigError(
            f"{path}: the file is empty; expected a mapping of sections ({sections}), e.g. "
            "copy configs/digits.yaml"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: expected a mapping of sections ({sections}) at the top level, "
            f"got {_show(raw)}"
        )
    return from_dict(apply_overrides(raw, overrides))


def dumps(cfg: Config) -> str:
    """``cfg`` as YAML text; :func:`load` reads it back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML to ``path``; :func:`load` reads it back to an equal config."""
    Path(path).write_text(dumps(cfg), encoding="utf-8")


def resolve(
    source: Config | Mapping[str, Any] | str | os.PathLike[str], overrides: Sequence[str] = ()
) -> Config:
    """A validated :class:`Config` from a config, a raw mapping or a YAML path, plus overrides.

    Raises:
        ConfigError: ``source`` is none of those, or the result is invalid.
    """
    if isinstance(source, Config):
        return from_dict(apply_overrides(to_dict(source), overrides)) if overrides else source
    if isinstance(source, Mapping):
        return from_dict(apply_overrides(source, overrides))
    if isinstance(source, str | os.PathLike):
        return load(source, overrides)
    raise ConfigError(
        f"config: expected a Config, a mapping or a path to a YAML file, got {_show(source)}"
    )
