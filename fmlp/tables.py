"""Tables as a data source: CSV/TSV, Parquet and ``.npz`` files, or arrays and frames, to arrays.

:func:`fmlp.data.load` is the entry point; this module holds what it needs for
``data.name: table`` (files) and ``data.name: arrays`` (what ``fmlp.fit(cfg, train=...)``
passes): reading a file into a pandas frame (:func:`read_frame`), learning the encoding from
the training split (:func:`fit_preprocessing`) and applying it (:func:`encode`). The encoding
is a frozen :class:`Preprocessing` value that the run directory saves, so that a later
prediction applies exactly what training saw.

pandas and pyarrow (the ``tables`` extra) are imported only when a table is read. Every bad
input raises :class:`DataError` naming the file, the column and the first bad row: a line of
the file for CSV/TSV (the header is line 1; this assumes no blank lines and no quoted value
spanning lines) and a 0-based row index for Parquet, ``.npz`` and arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmlp.errors import DataError

SUFFIXES: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".npz": "npz"}
"""File name endings :func:`read_frame` reads, and the format each names."""

LOAD_FACTOR: dict[str, float] = {"csv": 3.0, "tsv": 3.0, "parquet": 6.0, "npz": 2.0}
"""Memory needed to load a file, as a multiple of its size on disk (a generous estimate:
the parsed frame, then the float32 arrays; Parquet is compressed)."""

_INSTALL = 'install the tables extra: pip install "fmlp[tables]" (pandas and pyarrow)'


def require_pandas() -> Any:
    """The pandas module, imported here on first use; DataError naming the extra if missing."""
    try:
        import pandas as pd
    except ImportError as err:
        raise DataError(f"Reading tables needs pandas and pyarrow; {_INSTALL}.") from err
    return pd


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What turns a table's rows into the model's inputs and labels, learned from training.

    Attributes:
      features: the input columns, in the order the model sees them (before one-hot).
      categorical: ``(column, categories)`` pairs: each such column becomes one 0/1 input per
        category, in the categories' (sorted) order, in place of the column.
      label: the label (target) column, or several (multi-label 0/1 columns or regression
        targets, one model output each).
      class_names: the class of each id ``0..K-1`` (classification), or ``None``.
      columns: every column of the training table (a test table must have the same ones).
    """

    features: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()
    label: str | tuple[str, ...] = "y"
    class_names: tuple[str, ...] | None = None
    columns: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        """The label columns, one per model output (one for classification)."""
        return (self.label,) if isinstance(self.label, str) else tuple(self.label)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's input names: ``column`` or ``column=category`` for one-hot inputs."""
        cats = dict(self.categorical)
        return tuple(
            name
            for f in self.features
            for name in ([f"{f}={c}" for c in cats[f]] if f in cats else [f])
        )

    def to_json(self) -> str:
        """This value as JSON text; :meth:`from_json` reads it back to an equal value."""
        d = dataclasses.asdict(self)
        d["categorical"] = {column: list(cats) for column, cats in self.categorical}
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """The value :meth:`to_json` wrote; raises ``ValueError``/``KeyError`` if damaged."""
        d = json.loads(text)
        names, label = d["class_names"], d["label"]
        return cls(
            features=tuple(d["features"]),
            categorical=tuple((str(k), tuple(v)) for k, v in d["categorical"].items()),
            label=str(label) if isinstance(label, str) else tuple(map(str, label)),
            class_names=None if names is None else tuple(names),
            columns=tuple(d["columns"]),
        )


# ----------------------------------------------------------------------------- reading


def file_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path`` from its ending (:data:`SUFFIXES`); DataError if unknown."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{path}: unknown table format {suffix or '(no ending)'!r}; expected a file "
            f"ending in one of {', '.join(SUFFIXES)}."
        )
    return SUFFIXES[suffix]


def read_frame(path: str | os.PathLike[str], *, label: str, features: Sequence[str] | None) -> Any:
    """Read a table file into a pandas DataFrame (the caller checks its size first).

    ``.npz`` files hold a features array (``x``, or the one name in ``features``) of shape
    ``(examples, features)`` and a label array named ``label``; the frame's feature columns
    are ``x0, x1, ...``.

    Raises:
      DataError: the file is missing, unreadable, empty or has only a header.
    """
    pd = require_pandas()
    kind = file_format(path)
    try:
        if kind in ("csv", "tsv"):
            sep = "," if kind == "csv" else "\t"
            frame = pd.read_csv(path, sep=sep, engine="pyarrow", dtype_backend="pyarrow")
        elif kind == "parquet":
            frame = pd.read_parquet(path, engine="pyarrow", dtype_backend="pyarrow")
        else:
            frame = _read_npz(path, label=label, features=features)
    except FileNotFoundError:
        raise DataError(f"table file {path} does not exist.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; expected a header line and rows.") from None
    except DataError:
        raise
    except (OSError, ValueError, ImportError) as err:  # ArrowInvalid and ParserError included
        raise DataError(f"cannot read {path} as {kind}: {err}".rstrip(".") + ".") from None
    if len(frame.columns) == 0:
        raise DataError(f"{path} is empty; expected a header line and rows.")
    if len(frame) == 0:
        raise DataError(f"{path} has a header ({', '.join(map(str, frame.columns))}) but no rows.")
    return frame


def _read_npz(path: str | os.PathLike[str], *, label: str, features: Sequence[str] | None) -> Any:
    pd = require_pandas()
    if features is not None and len(features) != 1:
        raise DataError(
            f"{path}: for an .npz file, data.features names the one features array (or null "
            f"for x); got {list(features)}."
        )
    x_name = "x" if features is None else features[0]
    with np.load(path, allow_pickle=False) as arrays:
        for name in (x_name, label):
            if name not in arrays.files:
                raise DataError(
                    f"{path}: no array named {name!r}; it holds {', '.join(arrays.files)}."
                )
        x, y = arrays[x_name], arrays[label]
    if x.ndim != 2 or y.ndim not in (1, 2) or len(x) != len(y):
        raise DataError(
            f"{path}: expected {x_name} of shape (examples, features) and {label} of shape "
            f"(examples,) or (examples, 1), got {x.shape} and {y.shape}."
        )
    if y.ndim == 2 and y.shape[1] != 1:
        raise DataError(f"{path}: label array {label!r} must have one column, got {y.shape}.")
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    frame[label] = y.reshape(len(y))
    return frame


def frame_from_arrays(
    x: Any, y: Any, *, label: str | Sequence[str] | None
) -> tuple[Any, list[str]]:
    """``(x, y)`` (numpy arrays or pandas objects) as one frame with its label columns, and
    those columns' names.

    A DataFrame ``x`` keeps its column names; an array's columns are named ``x0, x1, ...``.
    ``y`` ``(examples,)`` is one label column, named ``label``, or ``y``'s name (a Series), or
    ``"y"``; ``y`` ``(examples, k)`` (multi-label 0/1 columns or regression targets) is ``k``
    columns, named ``label`` (a list of ``k``), or a frame's column names, or ``y0, y1, ...``.
    """
    pd = require_pandas()
    if isinstance(x, pd.DataFrame):
        frame = x.reset_index(drop=True).copy()
        frame.columns = [str(c) for c in frame.columns]
    else:
        x = np.asarray(x)
        if x.ndim != 2:
            raise DataError(f"arrays: x must have shape (examples, features), got {x.shape}.")
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    given = [label] if isinstance(label, str) else None if label is None else list(label)
    if isinstance(y, pd.DataFrame):
        names = [str(c) for c in y.columns]
        values = y.to_numpy()
    else:
        names = [str(y.name)] if isinstance(y, pd.Series) and y.name is not None else None
        values = y.to_numpy() if isinstance(y, pd.Series) else np.asarray(y)
    no_columns = values.ndim == 2 and values.shape[1] == 0
    if values.ndim not in (1, 2) or len(values) != len(frame) or no_columns:
        raise DataError(
            f"arrays: x has {len(frame)} rows but y has shape {values.shape}; expected "
            f"({len(frame)},) or ({len(frame)}, outputs)."
        )
    if values.ndim == 1:
        values = values[:, None]
    k = values.shape[1]
    names = given or names or (["y"] if k == 1 else [f"y{j}" for j in range(k)])
    if len(names) != k:
        raise DataError(
            f"arrays: data.label names {len(names)} column(s) ({', '.join(names)}) but y has "
            f"{k}; name one per column of y."
        )
    both = [n for n in names if n in frame.columns]
    if both:
        raise DataError(f"arrays: the label {both[0]!r} is also a column of x; rename one.")
    if len(frame) == 0:
        raise DataError("arrays: x has no rows.")
    for j, n in enumerate(names):
        frame[n] = values[:, j]
    return frame, names


def check_targets(y: np.ndarray, pre: Preprocessing, task: str, *, name: str, row: Any) -> None:
    """Multi-label targets must be 0/1 (or probabilities): DataError naming the first value
    outside [0, 1] by column and row."""
    if task != "multilabel":
        return
    bad = (y < 0) | (y > 1)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        j = int(np.argmax(bad[i]))
        raise DataError(
            f"{name}: label column {pre.labels[j]!r}, {row(i)}: {y[i, j]:g} is not a 0/1 "
            "label (nor a probability in [0, 1]); multi-label targets (model.loss: "
            "binary_cross_entropy) are one 0/1 column per label."
        )


# ----------------------------------------------------------------------------- encoding


def row_namer(kind: str) -> Any:
    """How errors name row ``i`` (0-based) of a ``kind`` table: a file line or an index."""
    if kind in ("csv", "tsv"):
        return lambda i: f"line {i + 2}"
    return lambda i: f"row {i}"


def fit_preprocessing(
    frame: Any,
    *,
    name: str,
    label: str | Sequence[str],
    features: Sequence[str] | None,
    categorical: Sequence[str],
    task: str,
    row: Any,
) -> Preprocessing:
    """Learn the encoding from the training table: its columns, categories and classes.

    Args:
      frame: the training table.
      name: the file (or ``arrays``) for error messages; ``row(i)`` names row ``i``.
      label, features, categorical, task: as in the config's ``data`` section (``label``: a
        column, or a list of them); the task follows from the model's head.

    Raises:
      DataError: a missing label, feature or categorical column; a single class; several
        label columns for a classification head.
    """
    columns = [str(c) for c in frame.columns]
    labels = [label] if isinstance(label, str) else list(label)
    if not labels or len(set(labels)) != len(labels):
        raise DataError(f"{name}: data.label must name distinct columns, got {labels}.")
    if task == "classification" and len(labels) > 1:
        raise DataError(
            f"{name}: data.label names {len(labels)} columns ({', '.join(labels)}), but a "
            "softmax head (classification) takes one label column. For several 0/1 labels "
            "per row use model.loss: binary_cross_entropy; for several targets a regression "
            "loss (model.output: identity)."
        )
    _require(frame, name, labels, "label column (data.label)")
    if features is None:
        features = [c for c in columns if c not in labels]
    else:
        features = list(features)
        _require(frame, name, features, "feature column (data.features)")
        both = [c for c in labels if c in features]
        if both:
            raise DataError(f"{name}: column {both[0]!r} is both a label and a feature.")
    if not features:
        raise DataError(f"{name}: no feature columns besides the label {', '.join(labels)}.")
    outside = [c for c in categorical if c not in features]
    if outside:
        raise DataError(
            f"{name}: categorical column {outside[0]!r} (data.categorical) is not a feature; "
            f"the features are {', '.join(features)}."
        )
    cats = tuple((c, tuple(_categories(frame[c], name, c, row)[1])) for c in categorical)
    class_names = None
    if task == "classification":
        class_names = _class_names(frame[labels[0]], name, labels[0], row)
        if len(class_names) < 2:
            raise DataError(
                f"{name}: the label column {labels[0]!r} holds a single class "
                f"({class_names[0]!r}); classification needs at least two."
            )
    kept = labels[0] if len(labels) == 1 else tuple(labels)
    return Preprocessing(tuple(features), cats, kept, class_names, tuple(columns))


def encode(
    frame: Any, pre: Preprocessing, *, name: str, row: Any, training: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A table as ``(x, y)``: float32 ``(examples, len(pre.input_names))`` inputs and int32
    class ids ``(examples,)`` or float32 targets ``(examples, len(pre.labels))``.

    ``training=False`` (a test table) first checks that its columns are the training ones.

    Raises:
      DataError: naming ``name``, the column and the first bad row: a missing column, a value
        that is not a number, NaN or infinite, an empty label, or a category or class that
        the training table did not have.
    """
    if not training:
        columns = [str(c) for c in frame.columns]
        missing = [c for c in pre.columns if c not in columns]
        extra = [c for c in columns if c not in pre.columns]
        if missing or extra:
            parts = [f"lacks {', '.join(missing)}"] * bool(missing) + [
                f"has {', '.join(extra)} besides"
            ] * bool(extra)
            raise DataError(
                f"{name}: its columns differ from the training table's: it {' and '.join(parts)} "
                f"(training columns: {', '.join(pre.columns)})."
            )
    cats = dict(pre.categorical)
    x = np.empty((len(frame), len(pre.input_names)), np.float32)
    at = 0
    for column in pre.features:
        if column in cats:
            distinct = _categories(frame[column], name, column, row)
            known = cats[column]
            codes = _codes(*distinct, known, f"{name}: column {column!r}", "category", "known", row)
            x[:, at : at + len(known)] = np.eye(len(known), dtype=np.float32)[codes]
            at += len(known)
        else:
            x[:, at] = _numeric(frame[column], name, column, row)
            at += 1
    if pre.class_names is None:
        hint = "use a classification head (model.output: softmax) for classes"
        y = np.empty((len(frame), len(pre.labels)), np.float32)
        for j, column in enumerate(pre.labels):
            y[:, j] = _numeric(frame[column], name, column, row, hint)
    else:
        distinct = _label_strings(frame[pre.label], name, pre.label, row)
        where = f"{name}: label column {pre.label!r}"
        y = _codes(*distinct, pre.class_names, where, "class", "classes", row).astype(np.int32)
    return x, y


def _codes(
    codes: np.ndarray,
    names: np.ndarray,
    known: Sequence[str],
    where: str,
    kind: str,
    listing: str,
    row: Any,
) -> np.ndarray:
    """Each row's index among ``known`` (int64 ``(n,)``), from its index ``codes`` into the
    column's distinct ``names`` (as :func:`_distinct` gives them); DataError at ``where``
    naming the first value (a ``kind``) that training did not have."""
    lookup = np.asarray(require_pandas().Index(list(known)).get_indexer(names), np.int64)
    out = lookup[codes]
    if (out < 0).any():
        i = int(np.argmax(out < 0))
        raise DataError(
            f"{where}, {row(i)}: {kind} {names[codes[i]]!r} was not in the training data "
            f"({listing}: {', '.join(known)})."
        )
    return out


def _require(frame: Any, name: str, columns: Sequence[str], what: str) -> None:
    have = [str(c) for c in frame.columns]
    for column in columns:
        if column not in have:
            raise DataError(f"{name}: no {what} {column!r}; its columns are {', '.join(have)}.")


def _numeric(
    series: Any, name: str, column: str, row: Any, hint: str = "list the column in data.categorical"
) -> np.ndarray:
    """A numeric column as float64, or DataError at its first non-number, NaN or inf."""
    pd = require_pandas()
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(values) & series.notna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{name}: column {column!r}, {row(i)}: {_show(series.iloc[i])} is not a number; "
                f"fix the value, or {hint}."
            )
    bad = ~(np.abs(values) <= np.finfo(np.float32).max)  # NaN, inf, or inf once float32
    if bad.any():
        i = int(np.argmax(bad))
        if np.isnan(values[i]):
            what = "is missing (empty or NaN)"
        elif np.isinf(values[i]):
            what = f"is {values[i]}"
        else:
            what = f"{values[i]:g} is beyond float32's range (about ±3.4e38)"
        raise DataError(
            f"{name}: column {column!r}, {row(i)}: the value {what}; "
            f"{int(bad.sum())} value(s) in this column are not finite. Clean or drop those rows."
        )
    return values


def _categories(series: Any, name: str, column: str, row: Any) -> tuple[np.ndarray, np.ndarray]:
    """A categorical column as :func:`_distinct`'s ``(codes, names)``; DataError at the first
    missing value."""
    return _distinct(series, f"{name}: column {column!r}", "the value", row)


def _class_names(series: Any, name: str, column: str, row: Any) -> tuple[str, ...]:
    """The sorted classes of a label column, as names: numbers in numeric order, else text."""
    pd = require_pandas()
    _, names = _label_strings(series, name, column, row)  # refuses missing, fractional labels
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return tuple(_name(v) for v in np.unique(series.to_numpy()))
    return tuple(str(n) for n in names)


def _label_strings(series: Any, name: str, column: str, row: Any) -> tuple[np.ndarray, np.ndarray]:
    """A label column as :func:`_distinct`'s ``(codes, names)``; DataError at the first
    missing label or fractional number."""
    where = f"{name}: label column {column!r}"

    def whole(codes: np.ndarray, uniques: Any) -> None:
        for j, v in enumerate(uniques):
            if isinstance(v, float | np.floating) and v != round(v):
                raise DataError(
                    f"{where}, {row(int(np.argmax(codes == j)))}: {v} is not a class (a whole "
                    "number or a name); for numeric targets use a regression head "
                    "(model.output: identity)."
                )

    return _distinct(series, where, "the label", row, check=whole)


def _distinct(
    series: Any,
    where: str,
    what: str,
    row: Any,
    check: Callable[[np.ndarray, Any], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, names)``: each row's index ``(n,)`` into the column's distinct values, named
    as text and sorted ``(m,)``, computed per distinct value, not per row; DataError at
    ``where`` for the first missing value (``what`` says what it is). ``check(codes,
    uniques)`` may refuse the distinct values before they are named."""
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}, {row(int(np.argmax(missing)))}: {what} is missing.")
    codes, uniques = require_pandas().factorize(series.to_numpy())
    if check is not None:
        check(codes, uniques)
    # Values that read the same (1 and 1.0, 1 and "1") become one name.
    names, merged = np.unique(
        np.asarray([_name(v) for v in uniques], dtype=str), return_inverse=True
    )
    return merged[codes], names.astype(object)


def _name(value: Any) -> str:
    """A label or category as text: whole floats (``1.0``) as integers (``1``)."""
    if isinstance(value, float) and value == round(value):
        return str(int(value))
    if isinstance(value, np.generic):
        return _name(value.item())
    return str(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
