"""Datasets as arrays: IDX files, Fashion-MNIST, scikit-learn's bundled sets, the lecture's
synthetic sets, tables (:mod:`fmlp.tables`), batching.

Everything here returns NumPy arrays on the host, except :func:`batch_indices`, which runs
under ``jax.jit`` so that one epoch's mini-batch order is computed on the device. Features
are 2-D ``(examples, features)`` float32; classification labels are ``(examples,)`` int32,
multi-label targets ``(examples, labels)`` float32 in [0, 1] and regression targets
``(examples, outputs)`` float32.

:func:`load` is the entry point the training loop uses: it reads a named dataset, splits it
into train/validation/test deterministically, standardises the features with statistics
fitted on the training split only and checks the result with :func:`validate`. Every
bad-data condition raises :class:`DataError`, whose message names the file or array and what
to do about it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmlp import tables
from fmlp.errors import DataError
from fmlp.tables import Preprocessing

DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files."""

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST class names, indexed by label."""

DATASET_TASKS: dict[str, str | None] = {
    "fashion_mnist": "classification",
    "digits": "classification",
    "lecture_regression": "regression",
    "lecture_classification": "classification",
    "lecture_multilabel": "multilabel",
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
    "table": None,
    "arrays": None,
}
"""The data sets :func:`load` knows, and the task each poses; ``None``: the task follows
from the model's head (``table``: files named by ``train``/``test``; ``arrays``: arrays or
frames passed to ``fmlp.fit``)."""

SKLEARN_SETS: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer", "diabetes")
"""The sets bundled with scikit-learn (offline: no download)."""

TABLE_SOURCES: tuple[str, ...] = ("table", "arrays")
"""The sources whose task follows from the model's head."""

DATASETS: tuple[str, ...] = tuple(DATASET_TASKS)
"""The names :func:`load` accepts."""

TASKS: tuple[str, ...] = ("classification", "multilabel", "regression")
NORMALIZATIONS: tuple[str, ...] = ("standardize", "none")

TEST_FRACTION = 0.2
"""Share of a dataset without an official test split that :func:`load` holds out for testing."""

_SPLIT_SEED = 0  # the held-out test split does not move with ``seed``: every run tests alike
_MIN_STD = 1e-6  # features whose training std is below this are constant: divide by 1 instead

# IDX type code -> big-endian dtype of the stored values.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_TRAILING_READ = 1 << 20  # bytes read past an IDX payload to say how much is left over
_INSTALL_HINT = (
    "install it with `apt-get install -y dataset-fashion-mnist` "
    "or set data.path to a directory holding the IDX files"
)


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per
    dimension; the values follow in big-endian C order.

    Args:
      path: the file; it is decompressed when its name ends in ``.gz`` or it starts with the
        gzip magic bytes.

    Returns:
      An array of shape ``dims`` in the stored type, native byte order.

    Raises:
      DataError: the file is missing, not valid gzip, has a bad header, or holds more or
        fewer bytes than its header announces.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            compressed = path.suffix == ".gz" or f.read(2) == _GZIP_MAGIC
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist.") from None
    except OSError as err:
        raise DataError(f"Cannot read IDX file {path}: {err}.") from err
    # Streamed: the header says how many bytes must follow, so a file (or a gzip member that
    # inflates) that holds more is refused after reading one byte too many, not all of it.
    try:
        with gzip.open(path) if compressed else path.open("rb") as f:
            return _read_idx_stream(f, path)
    except (OSError, EOFError, zlib.error) as err:
        if not compressed:
            raise DataError(f"Cannot read IDX file {path}: {err}.") from err
        raise DataError(
            f"IDX file {path} is not a valid gzip file ({err}); download it again."
        ) from err


def _read_idx_stream(f: Any, path: Path) -> np.ndarray:
    start = f.read(4)
    if len(start) < 4:
        raise DataError(
            f"IDX file {path} is too short for a header: expected at least 4 bytes, "
            f"got {len(start)}."
        )
    zero0, zero1, type_code, ndim = start
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"IDX file {path} has a bad magic number: expected the first two bytes to be 0, "
            f"got {start.hex()}; is it an IDX file?"
        )
    if type_code not in _IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(
            f"IDX file {path} has unknown type code 0x{type_code:02X}; expected one of {codes}."
        )
    if ndim < 1:
        raise DataError(f"IDX file {path} declares 0 dimensions; expected at least 1.")
    header = 4 + 4 * ndim
    shape = f.read(4 * ndim)
    if len(shape) < 4 * ndim:
        raise DataError(
            f"IDX file {path} is truncated inside its header: expected at least {header} bytes "
            f"for {ndim} dimensions, got {4 + len(shape)}."
        )
    dims = tuple(int(d) for d in np.frombuffer(shape, dtype=">u4"))
    if dims[0] == 0:
        raise DataError(f"IDX file {path} holds 0 examples (its header's shape is {dims}).")
    dtype = _IDX_DTYPES[type_code]
    size = math.prod(dims) * dtype.itemsize
    if size > available_memory():
        raise DataError(
            f"IDX file {path} announces shape {dims} of {dtype.name}: {size / 2**30:.1f} GiB, "
            f"more than the {available_memory() / 2**30:.1f} GiB of memory available."
        )
    payload = f.read(size)
    if len(payload) < size:
        raise DataError(
            f"IDX file {path} truncated: its header announces shape {dims} of {dtype.name}, "
            f"so expected {header + size} bytes, got {header + len(payload)}."
        )
    rest = len(f.read(_TRAILING_READ))  # bounded: a huge tail is not read to its end
    if rest:
        more = " or more" if rest == _TRAILING_READ else ""
        raise DataError(
            f"IDX file {path} has trailing bytes: its header announces shape {dims} of "
            f"{dtype.name}, so expected {header + size} bytes, got {header + size + rest}{more}."
        )
    values = np.frombuffer(payload, dtype=dtype)
    return values.reshape(dims).astype(dtype.newbyteorder("="))


def available_memory() -> int:
    """Bytes of memory the first local device can still allocate (the host's, on a CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- Fashion-MNIST


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    where = f"in {directory}" if directory.is_dir() else f"because {directory} does not exist"
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found {where}; {_INSTALL_HINT}.")


def _read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_idx(directory, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{split}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path} should hold uint8 images of shape (examples, rows, cols), "
            f"got {images.dtype} of shape {images.shape}."
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path} should hold uint8 labels of shape (examples,), "
            f"got {labels.dtype} of shape {labels.shape}."
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; the two files must come from the same release."
        )
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    y = labels.astype(np.int32)
    validate(x, y, task="classification", num_classes=len(CLASS_NAMES), name=str(labels_path))
    return x, y


def fashion_mnist(
    path: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST from a directory of IDX files (``train-images-idx3-ubyte[.gz]`` etc.).

    Args:
      path: the directory; defaults to :data:`DEFAULT_FASHION_MNIST_PATH`.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: images flattened to float32 in [0, 1] of shape
      ``(60000, 784)`` and ``(10000, 784)``, int32 labels in [0, 10) of shape ``(60000,)``
      and ``(10000,)``. Label ``k`` names ``CLASS_NAMES[k]``.

    Raises:
      DataError: a file is missing or corrupt, or images and labels do not match.
    """
    directory = Path(DEFAULT_FASHION_MNIST_PATH if path is None else path)
    x_train, y_train = _read_split(directory, "train")
    x_test, y_test = _read_split(directory, "t10k")
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(
            f"Fashion-MNIST in {directory}: training images have {x_train.shape[1]} pixels but "
            f"test images have {x_test.shape[1]}; the files must come from the same release."
        )
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------- digits


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits bundled with scikit-learn (no download).

    Returns:
      ``(x, y)``: float32 pixels scaled to [0, 1] of shape ``(1797, 64)`` and int32 labels in
      [0, 10) of shape ``(1797,)``.

    Raises:
      DataError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DataError(
            'The digits dataset needs scikit-learn; install it with `pip install "fmlp[digits]"`.'
        ) from err
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    return x, np.asarray(bunch.target, dtype=np.int32)


def sklearn_set(name: str) -> tuple[np.ndarray, np.ndarray, Preprocessing]:
    """One of scikit-learn's small bundled tables (no download): iris, wine, breast_cancer
    (classification) or diabetes (regression).

    Returns:
      ``(x, y, preprocessing)``: float32 features ``(examples, features)``; int32 class ids
      ``(examples,)`` or, for diabetes, float32 targets ``(examples, 1)`` (disease progression
      after a year, in hundreds, so that a net's initial outputs are on its scale); and the
      feature and class names. Shapes: iris (150, 4) with 3 classes, wine (178, 13) with 3,
      breast_cancer (569, 30) with 2, diabetes (442, 10).

    Raises:
      DataError: scikit-learn is not installed.
    """
    try:
        from sklearn import datasets
    except ImportError as err:
        raise DataError(
            f'The {name} dataset needs scikit-learn; install it with `pip install "fmlp[digits]"`.'
        ) from err
    bunch = getattr(datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float32)
    features = tuple(str(f) for f in bunch.feature_names)
    if name == "diabetes":
        y = (np.asarray(bunch.target, dtype=np.float32) / np.float32(100.0))[:, None]
        pre = Preprocessing(features, label="target", columns=(*features, "target"))
    else:
        y = np.asarray(bunch.target, dtype=np.int32)
        names = tuple(str(c) for c in bunch.target_names)
        pre = Preprocessing(
            features, label="target", class_names=names, columns=(*features, "target")
        )
    return x, y, pre


# ----------------------------------------------------------------------------- synthetic sets


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise DataError(f"{name} must be a positive integer, got {value}.")


def lecture_regression(
    n: int = 2000, *, seed: int = 0, inputs: int = 8, outputs: int = 2, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """The lecture's regression example: car sensor readings -> steering angle and throttle.

    Each target is a smooth nonlinear function of the readings, ``tanh(x A) B + 0.5 sin(x C)``
    with fixed random projections ``A`` (16 hidden units), ``B``, ``C``, plus Gaussian noise of
    standard deviation ``noise``. A linear fit leaves about a fifth of the target variance
    unexplained; a small tanh MLP gets most of it.

    Args:
      n: number of examples.
      seed: seeds a ``numpy.random.Generator``; the same seed gives the same arrays.
      inputs: number of sensor readings (features), drawn from a standard normal.
      outputs: number of targets.
      noise: standard deviation of the additive target noise.

    Returns:
      ``(x, y)``: float32 of shapes ``(n, inputs)`` and ``(n, outputs)``.
    """
    _check_positive(n=n, inputs=inputs, outputs=outputs)
    if not noise >= 0:
        raise DataError(f"noise must be a standard deviation >= 0, got {noise}.")
    rng = np.random.default_rng(seed)
    hidden = 16
    a = 2.0 * rng.normal(size=(inputs, hidden)) / math.sqrt(inputs)
    b = rng.normal(size=(hidden, outputs)) / math.sqrt(hidden)
    c = 2.0 * rng.normal(size=(inputs, outputs)) / math.sqrt(inputs)
    x = rng.normal(size=(n, inputs))
    y = np.tanh(x @ a) @ b + 0.5 * np.sin(x @ c) + noise * rng.normal(size=(n, outputs))
    return x.astype(np.float32), y.astype(np.float32)


def lecture_classification(
    n: int = 2000, *, seed: int = 0, inputs: int = 2, classes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The lecture's classification example: noisy interleaved spirals, one arm per class.

    The first two features are the spiral (radius in [0, 1], angle noise 0.2 rad); any
    further features are uninformative Gaussian noise of standard deviation 0.5. No linear
    classifier separates the arms; a small MLP does, up to the overlap near the centre.

    Args:
      n: number of examples; labels cycle ``0, 1, ..., classes - 1``.
      seed: seeds a ``numpy.random.Generator``; the same seed gives the same arrays.
      inputs: number of features, at least 2.
      classes: number of spiral arms, at least 2.

    Returns:
      ``(x, y)``: float32 features of shape ``(n, inputs)`` and int32 labels in
      ``[0, classes)`` of shape ``(n,)``.
    """
    _check_positive(n=n)
    if inputs < 2:
        raise DataError(f"inputs must be at least 2 (the spiral's plane), got {inputs}.")
    if classes < 2:
        raise DataError(f"classes must be at least 2, got {classes}.")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    radius = rng.uniform(0.0, 1.0, size=n)
    angle = 2 * np.pi * y / classes + 4.0 * radius + 0.2 * rng.normal(size=n)
    plane = radius[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    extra = 0.5 * rng.normal(size=(n, inputs - 2))
    x = np.concatenate([plane, extra], axis=1)
    return x.astype(np.float32), y.astype(np.int32)


def lecture_multilabel(
    n: int = 2000, *, seed: int = 0, inputs: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label example: each example may carry any of three labels at once.

    The features are standard normal; label 0 says ``x0 + x1 > 0`` (linear), label 1
    ``x0 x2 > 0`` (an XOR of signs) and label 2 ``x3^2 + x4^2 > 1.4`` (a ring, about half of
    the examples); further features are noise. A linear classifier gets label 0 only; a small
    MLP gets all three.

    Args:
      n: number of examples.
      seed: seeds a ``numpy.random.Generator``; the same seed gives the same arrays.
      inputs: number of features, at least 5.

    Returns:
      ``(x, y)``: float32 features ``(n, inputs)`` and float32 0/1 targets ``(n, 3)``.
    """
    _check_positive(n=n)
    if inputs < 5:
        raise DataError(f"inputs must be at least 5 (the labels read x0..x4), got {inputs}.")
    x = np.random.default_rng(seed).normal(size=(n, inputs))
    y = np.stack(
        [x[:, 0] + x[:, 1] > 0, x[:, 0] * x[:, 2] > 0, x[:, 3] ** 2 + x[:, 4] ** 2 > 1.4], axis=1
    )
    return x.astype(np.float32), y.astype(np.float32)


# ----------------------------------------------------------------------------- validation


def validate(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    num_classes: int | None = None,
    num_features: int | None = None,
    name: str = "data",
) -> None:
    """Check features and targets before they reach a model.

    Args:
      x: features of shape ``(examples, features)``; every value must be finite.
      y: int labels of shape ``(examples,)`` for classification, in ``[0, num_classes)``;
        float targets in [0, 1] of shape ``(examples, labels)`` for multilabel (0/1 or
        probabilities); finite float targets of shape ``(examples, outputs)`` for regression.
      task: one of :data:`TASKS`.
      num_classes: the number of classes the model predicts (classification only).
      num_features: the number of features the model expects; ``None`` skips the check.
      name: what the arrays are called in error messages (a file, a split).

    Raises:
      DataError: naming ``name``, the first offending row and what to fix.
    """
    if task not in TASKS:
        raise DataError(f"{name}: unknown task {task!r}; expected one of {list(TASKS)}.")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise DataError(
            f"{name}: features must be a numeric array of shape (examples, features), "
            f"got {x.dtype} of shape {x.shape}."
        )
    if num_features is not None and x.shape[1] != num_features:
        raise DataError(
            f"{name}: the model expects {num_features} features, the data has {x.shape[1]}; "
            "check model/data config."
        )
    if y.ndim < 1 or len(y) != len(x):
        raise DataError(
            f"{name}: features have {len(x)} examples but targets have shape {y.shape}; "
            "they must have one row per example."
        )
    bad_x = ~np.isfinite(x)
    if bad_x.any():
        row = int(np.argmax(bad_x.any(axis=1)))
        raise DataError(
            f"{name}: {int(bad_x.sum())} feature values are NaN or Inf, the first in row {row}; "
            "clean or drop those examples."
        )
    if task == "classification":
        _validate_labels(y, num_classes, name)
    else:
        _validate_targets(y, name, task)


def _validate_targets(y: np.ndarray, name: str, task: str) -> None:
    if y.ndim != 2 or not np.issubdtype(y.dtype, np.floating):
        raise DataError(
            f"{name}: {task} targets must be floats of shape (examples, outputs), "
            f"got {y.dtype} of shape {y.shape}."
        )
    bad_y = ~np.isfinite(y)
    if task == "multilabel":
        bad_y |= (y < 0) | (y > 1)
    if bad_y.any():
        row = int(np.argmax(bad_y.any(axis=1)))
        what = "outside [0, 1] (0/1 labels or probabilities)" if task == "multilabel" else ""
        raise DataError(
            f"{name}: {int(bad_y.sum())} {task} targets are NaN or Inf{' or ' * bool(what)}"
            f"{what}, the first in row {row}; clean or drop those examples."
        )


def _validate_labels(y: np.ndarray, num_classes: int | None, name: str) -> None:
    if y.ndim != 1:
        raise DataError(
            f"{name}: class labels must have shape (examples,), got shape {y.shape}; "
            "pass integer labels, not one-hot rows."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating):
            whole = np.isfinite(y) & (y == np.round(y))
            if not whole.all():
                row = int(np.argmin(whole))
                raise DataError(
                    f"{name}: class labels must be integers, got {y[row]} in row {row}."
                )
        raise DataError(
            f"{name}: class labels must have an integer dtype, got {y.dtype}; "
            "convert them with y.astype(np.int32)."
        )
    outside = y < 0 if num_classes is None else (y < 0) | (y >= num_classes)
    if outside.any():
        row = int(np.argmax(outside))
        expected = "[0, inf)" if num_classes is None else f"[0, {num_classes})"
        raise DataError(
            f"{name}: label {y[row]} in row {row} is outside {expected}; "
            "check the labels or the model's number of classes."
        )


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset split three ways, ready for training.

    ``x_*`` are float32 ``(examples, num_features)``; ``y_*`` are int32 ``(examples,)`` labels
    for classification or float32 ``(examples, num_outputs)`` targets for multilabel (0/1)
    and regression.
    ``mean`` and ``std`` (float32, ``(num_features,)``) are the normaliser fitted on
    ``x_train`` and already applied to every split; both are ``None`` when not normalised.
    ``preprocessing`` (tables and scikit-learn's sets) names the features and classes and
    holds a table's categories; ``None`` for the other sets.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    num_classes: int | None
    mean: np.ndarray | None
    std: np.ndarray | None
    preprocessing: Preprocessing | None = None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each class id, where the source has names (tables, scikit-learn sets)."""
        return None if self.preprocessing is None else self.preprocessing.class_names

    @property
    def num_features(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: the classes, or the regression targets."""
        if self.num_classes is not None:
            return self.num_classes
        return int(self.y_train.shape[1])


def _test_split(y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(pool, test)`` holding out ``TEST_FRACTION``, stratified by class."""
    rng = np.random.default_rng(_SPLIT_SEED)
    if task == "classification":
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    else:
        groups = [np.arange(len(y))]
    test = []
    for group in groups:
        shuffled = rng.permutation(group)
        test.append(shuffled[: round(TEST_FRACTION * len(group))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _read(
    name: str, path: str | os.PathLike[str] | None, synthetic_examples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, int | None, Preprocessing | None]:
    """``(x_pool, y_pool, x_test, y_test, task, num_classes, preprocessing)`` of a named set."""
    pre = None
    if name == "fashion_mnist":
        return (*fashion_mnist(path), "classification", len(CLASS_NAMES), None)
    if name == "digits":
        x, y = digits()
        task, num_classes = "classification", 10
    elif name in SKLEARN_SETS:
        x, y, pre = sklearn_set(name)
        task = DATASET_TASKS[name]
        num_classes = None if pre.class_names is None else len(pre.class_names)
    elif name == "lecture_regression":
        x, y = lecture_regression(synthetic_examples)
        task, num_classes = "regression", None
    elif name == "lecture_multilabel":
        x, y = lecture_multilabel(synthetic_examples)
        task, num_classes = "multilabel", None
    else:
        num_classes = 3
        x, y = lecture_classification(synthetic_examples, classes=num_classes)
        task = "classification"
    pool, test = _test_split(y, task)
    return x[pool], y[pool], x[test], y[test], task, num_classes, pre


Table = str | os.PathLike[str] | tuple[Any, Any]
"""A table: a file path (``data.name: table``) or ``(x, y)`` arrays or frames (``arrays``)."""


def _table_frame(source: Table, which: str, *, label: Any, features: Any) -> tuple:
    """``(frame, name for errors, row namer, label columns)`` of a table file or of
    ``(x, y)`` arrays."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise DataError(f"{which}: expected a pair (x, y), got a tuple of {len(source)}.")
        frame, labels = tables.frame_from_arrays(*source, label=label)
        return frame, f"arrays ({which})", tables.row_namer("arrays"), labels
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"{which}: expected a file path or a pair (x, y) of arrays, got "
            f"{type(source).__name__}."
        )
    kind = tables.file_format(source)
    try:
        size = os.path.getsize(source)
    except FileNotFoundError:
        raise DataError(f"{which} file {source} (data.{which}) does not exist.") from None
    except OSError as err:
        raise DataError(f"cannot read {which} file {source}: {err}.") from None
    need, free = size * tables.LOAD_FACTOR[kind], available_memory()
    if need > free:
        raise DataError(
            f"{source} is {size / 2**30:.2f} GiB; loading it as {kind} needs about "
            f"{need / 2**30:.2f} GiB, more than the {free / 2**30:.2f} GiB of memory available. "
            "Use a smaller file or a machine with more memory."
        )
    if kind == "npz" and not isinstance(label, str | None):
        raise DataError(
            f"{source}: for an .npz file, data.label names the one label array; got "
            f"{list(label)}. Give several labels as columns of a CSV or Parquet table."
        )
    frame = tables.read_frame(source, label=label or "y", features=features)
    return frame, str(source), tables.row_namer(kind), label


def _read_table(
    name: str,
    *,
    train: Table | None,
    test: Table | None,
    label: str | Sequence[str] | None,
    features: Sequence[str] | None,
    categorical: Sequence[str],
    task: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str, int | None, Preprocessing]:
    """:func:`_read` for tables: files (``table``) or arrays (``arrays``)."""
    if task not in TASKS:
        raise DataError(
            f"data.name={name}: the task follows from the model's head; pass task= one of "
            f"{list(TASKS)}, got {task!r}."
        )
    if name == "arrays" and not isinstance(train, tuple):
        raise DataError(
            "data.name=arrays: the data are arrays passed to fmlp.fit(cfg, train=(x, y)); "
            "pass them again (train=, test=) to train, resume or evaluate such a run."
        )
    if train is None:
        raise DataError("data.name=table needs data.train: a table file.")
    if name == "table" and label is None:
        raise DataError("data.name=table needs data.label: the label column.")
    frame, where, row, label = _table_frame(train, "train", label=label, features=features)
    npz = name == "table" and tables.file_format(train) == "npz"
    pre = tables.fit_preprocessing(
        frame, name=where, label=label, features=None if npz else features,  # npz: x0, x1, ...
        categorical=categorical,
        task=task, row=row,
    )  # fmt: skip
    x, y = tables.encode(frame, pre, name=where, row=row)
    tables.check_targets(y, pre, task, name=where, row=row)
    num_classes = None if pre.class_names is None else len(pre.class_names)
    if test is None:
        pool, held_out = _test_split(y, task)
        if len(held_out) == 0 or len(pool) == 0:
            raise DataError(
                f"{where}: {len(y)} rows are too few to hold out a test split; add rows or "
                f"give a test file ({'data.test' if name == 'table' else 'test='})."
            )
        return x[pool], y[pool], x[held_out], y[held_out], task, num_classes, pre
    test_frame, test_where, test_row, _ = _table_frame(test, "test", label=label, features=features)
    x_test, y_test = tables.encode(test_frame, pre, name=test_where, row=test_row, training=False)
    tables.check_targets(y_test, pre, task, name=test_where, row=test_row)
    return x, y, x_test, y_test, task, num_classes, pre


def _standardizer(
    x: np.ndarray, rows: int = 65_536, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float32 ``(mean, std)`` of ``x`` ``(examples, features)``, summed in float64
    over blocks of ``rows`` (no float64 copy of ``x``); a constant feature gets std 1."""
    mean = np.zeros(x.shape[1])
    for start in range(0, len(x), rows):
        mean += x[start : start + rows].sum(axis=0, dtype=np.float64)
    mean /= len(x)
    var = np.zeros(x.shape[1])
    for start in range(0, len(x), rows):
        # A block's squared deviations a chunk at a time (a float64 copy of the whole block
        # was 10x slower), each chunk's sum carried into the next one's first row: numpy adds
        # an axis-0 sum row after row, so these are the block's sums in its order, bit for bit.
        total, end = None, min(start + rows, len(x))
        for at in range(start, end, chunk):
            d = x[at : min(at + chunk, end)].astype(np.float64)
            d -= mean
            d *= d
            if total is not None:
                d[0] += total
            total = d.sum(axis=0)
        var += total
    std = np.sqrt(var / len(x))
    return mean.astype(np.float32), np.where(std < _MIN_STD, 1.0, std).astype(np.float32)


def load(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    validation_fraction: float = 0.1,
    normalize: str = "standardize",
    subset: int | None = None,
    seed: int = 0,
    synthetic_examples: int = 2000,
    train: Table | None = None,
    test: Table | None = None,
    label: str | Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    task: str | None = None,
) -> Dataset:
    """Load a named dataset, split it, normalise it and validate it.

    Fashion-MNIST keeps its official test set, and a table keeps its ``test`` file when
    there is one; the others hold out a fixed, class-stratified
    ``TEST_FRACTION`` of their examples that does not depend on ``seed``. The remaining pool
    is shuffled by ``seed``, cut to its first ``subset`` examples, and its first
    ``validation_fraction`` becomes the validation split. The synthetic sets are generated
    with seed 0, so they are the same data for every run.

    Args:
      name: one of :data:`DATASETS`.
      path: directory of the Fashion-MNIST IDX files (default
        :data:`DEFAULT_FASHION_MNIST_PATH`); ignored by the other datasets.
      validation_fraction: share of the (subset) pool used for validation, in [0, 1); at
        least one example when positive.
      normalize: ``"standardize"`` (per-feature mean and std of the training split, applied to
        every split; constant features are only centred) or ``"none"``.
      subset: keep only this many examples of the shuffled training pool (fast tests).
      seed: seeds the shuffle that picks the subset and the validation split.
      synthetic_examples: size of the synthetic sets before the test split.
      train: for ``table``, the training file (.csv, .tsv, .parquet, .npz); for ``arrays``,
        ``(x, y)``: numpy arrays or pandas objects (a frame's columns name the features).
      test: like ``train``; ``None`` holds out a stratified test split of ``train``.
      label: the label column of a table, or a list of columns (multi-label 0/1 columns or
        regression targets, one output each); for .npz, the label array's name; for
        arrays, the label's name or names (default: the Series' or frame's, else ``y`` or
        ``y0, y1, ...``).
      features: the feature columns in order (``None``: every other column; for .npz, the
        one features array, default ``x``).
      categorical: feature columns to one-hot encode, categories from ``train``.
      task: ``"classification"`` or ``"regression"``: required for tables, whose task
        follows from the model's head; ignored by the named sets.

    Returns:
      A :class:`Dataset`; for tables and scikit-learn's sets its ``preprocessing`` holds the
      feature and class names (and a table's categories).

    Raises:
      DataError: an argument is out of range, or the data is missing or invalid.
    """
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; expected one of {list(DATASETS)}.")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"Unknown normalize {normalize!r}; expected one of {list(NORMALIZATIONS)}.")
    if not 0 <= validation_fraction < 1:
        raise DataError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    _check_positive(synthetic_examples=synthetic_examples)
    if subset is not None:
        _check_positive(subset=subset)

    if name in TABLE_SOURCES:
        x_pool, y_pool, x_test, y_test, task, num_classes, pre = _read_table(
            name, train=train, test=test, label=label, features=features,
            categorical=categorical, task=task,
        )  # fmt: skip
    else:
        x_pool, y_pool, x_test, y_test, task, num_classes, pre = _read(
            name, path, synthetic_examples
        )
    if subset is not None and subset > len(x_pool):
        raise DataError(
            f"subset={subset} is larger than the {len(x_pool)} training examples of {name}; "
            "lower it or leave it unset."
        )
    order = np.random.default_rng(seed).permutation(len(x_pool))[:subset]
    num_val = max(1, round(validation_fraction * len(order))) if validation_fraction > 0 else 0
    if num_val >= len(order):
        raise DataError(
            f"{name}: validation_fraction={validation_fraction} of {len(order)} examples leaves "
            "none for training; lower it or raise subset."
        )
    val, train = order[:num_val], order[num_val:]
    x_train, y_train, x_val, y_val = x_pool[train], y_pool[train], x_pool[val], y_pool[val]

    mean = std = None
    if normalize == "standardize":
        mean, std = _standardizer(x_train)
        x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))

    dataset = Dataset(
        x_train, y_train, x_val, y_val, x_test, y_test, task, num_classes, mean, std, pre
    )
    for split in ("train", "val", "test"):
        validate(
            getattr(dataset, f"x_{split}"),
            getattr(dataset, f"y_{split}"),
            task=task,
            num_classes=num_classes,
            num_features=dataset.num_features,
            name=f"{name} {split}",
        )
    return dataset


# ----------------------------------------------------------------------------- batching


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "shuffle"))
def batch_indices(
    key: jax.Array, n: int, batch_size: int, *, shuffle: bool = True
) -> tuple[jax.Array, jax.Array]:
    """One epoch's mini-batches as fixed-shape index and mask arrays (no recompiles).

    Every example appears exactly once; the last batch is padded with index 0 and masked
    out, so no example is dropped and every batch has the same shape. Jitted with ``n``,
    ``batch_size`` and ``shuffle`` static (one compilation per combination); it can be called
    inside another jitted function, where those three must be Python values.

    Args:
      key: PRNG key for the order; the same key gives the same order.
      n: number of examples.
      batch_size: examples per batch.
      shuffle: ``False`` keeps the order ``0, 1, ..., n - 1`` (``key`` unused).

    Returns:
      ``(idx, mask)`` of shape ``(ceil(n / batch_size), batch_size)``: int32 example indices
      and float32 weights, 1.0 for real examples and 0.0 for padding.
    """
    _check_positive(n=n, batch_size=batch_size)
    num_batches = -(-n // batch_size)
    order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
    padding = jnp.zeros(num_batches * batch_size - n, dtype=jnp.int32)
    idx = jnp.concatenate([order.astype(jnp.int32), padding])
    mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32)
    return idx.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)
