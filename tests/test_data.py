"""Tests for fmlp.data: IDX files, datasets, splits, normalisation, validation and batching."""

import dataclasses
import functools
import gzip
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmlp import data
from fmlp.data import DataError

FASHION_DIR = Path(data.DEFAULT_FASHION_MNIST_PATH)
TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray, *, type_code: int | None = None) -> bytes:
    """The IDX encoding of ``array``: magic, big-endian uint32 dims, big-endian values."""
    code = TYPE_CODES[array.dtype] if type_code is None else type_code
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_fashion(
    directory: Path,
    *,
    n_train: int = 6,
    n_test: int = 4,
    n_train_labels: int | None = None,
    suffix: str = ".gz",
) -> Path:
    """A tiny Fashion-MNIST lookalike: 2x3 images, labels cycling through the 10 classes."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    labels = {"train": n_train if n_train_labels is None else n_train_labels, "t10k": n_test}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 2, 3), dtype=np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        ys = (np.arange(labels[split]) % 10).astype(np.uint8)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", ys)
    return directory


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", list(TYPE_CODES))
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_read_idx_round_trip(tmp_path, suffix, dtype, shape):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        array = (100 * rng.normal(size=shape)).astype(dtype)
    out = data.read_idx(write_idx(tmp_path / f"a-idx{suffix}", array))
    assert out.dtype == dtype and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, array)


def test_read_idx_accepts_str_path(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(data.read_idx(str(write_idx(tmp_path / "a", array))), array)


def test_read_idx_detects_gzip_without_suffix(tmp_path):
    array = np.arange(6, dtype=np.int32)
    path = tmp_path / "compressed-idx"
    path.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx(path), array)


GOOD = idx_bytes(np.arange(12, dtype=np.int16).reshape(3, 4))  # 4 + 8 header + 24 value bytes


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x01" + GOOD[1:], r"bad magic number.*first two bytes to be 0"),
        (GOOD[:2] + b"\x07" + GOOD[3:], r"unknown type code 0x07; expected one of 0x08"),
        (GOOD[:3] + b"\x00", r"declares 0 dimensions"),
        (GOOD[:2], r"too short for a header: expected at least 4 bytes, got 2"),
        (GOOD[:10], r"truncated inside its header: expected at least 12 bytes .*, got 10"),
        (GOOD[:-3], r"truncated: .*shape \(3, 4\) of int16, so expected 36 bytes, got 33"),
        (GOOD + b"\x00\x00", r"has trailing bytes: .*expected 36 bytes, got 38"),
    ],
    ids=["magic", "type-code", "no-dims", "short", "header-truncated", "truncated", "trailing"],
)
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_rejects_corrupt_files(tmp_path, payload, match, compress):
    path = tmp_path / ("bad-idx.gz" if compress else "bad-idx")
    path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(DataError, match=match) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [gzip.compress(GOOD)[:-10], b"\x1f\x8b" + b"garbage" * 4, GOOD],
    ids=["truncated-gzip", "garbage-gzip", "raw-named-gz"],
)
def test_read_idx_rejects_corrupt_gzip(tmp_path, payload):
    path = tmp_path / "bad-idx.gz"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"bad-idx\.gz is not a valid gzip file"):
        data.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope-idx does not exist"):
        data.read_idx(tmp_path / "nope-idx")


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_fashion_mnist_from_any_directory(tmp_path, suffix):
    directory = write_fashion(tmp_path / "fm", suffix=suffix)
    x_train, y_train, x_test, y_test = data.fashion_mnist(directory)
    assert x_train.shape == (6, 6) and x_test.shape == (4, 6)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    np.testing.assert_array_equal(y_test, [0, 1, 2, 3])
    raw = data.read_idx(directory / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_allclose(x_train, raw.reshape(6, 6) / 255.0, rtol=1e-6)


def test_fashion_mnist_count_mismatch(tmp_path):
    directory = write_fashion(tmp_path, n_train=6, n_train_labels=5)
    with pytest.raises(DataError, match=r"train-images.* holds 6 images but .*train-labels.* 5"):
        data.fashion_mnist(directory)


def test_fashion_mnist_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"apt-get install -y dataset-fashion-mnist") as info:
        data.fashion_mnist(missing)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and f"{missing} does not exist" in message
    assert "data.path" in message


def test_fashion_mnist_missing_file(tmp_path):
    directory = write_fashion(tmp_path)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in .*apt-get"):
        data.fashion_mnist(directory)


def test_fashion_mnist_rejects_labels_out_of_range(tmp_path):
    directory = write_fashion(tmp_path, suffix="")
    write_idx(directory / "t10k-labels-idx1-ubyte", np.array([0, 1, 12, 3], dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels.*label 12 in row 2 is outside \[0, 10\)"):
        data.fashion_mnist(directory)


@pytest.fixture(scope="module")
def fashion():
    if not FASHION_DIR.is_dir():
        pytest.skip(f"{FASHION_DIR} is absent (apt-get install -y dataset-fashion-mnist)")
    return data.fashion_mnist()


def test_fashion_mnist_real(fashion):
    x_train, y_train, x_test, y_test = fashion
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    for y, per_class in ((y_train, 6000), (y_test, 1000)):
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [per_class] * 10)
    assert len(data.CLASS_NAMES) == 10 and data.CLASS_NAMES[9] == "Ankle boot"


def test_load_fashion_mnist_subset(fashion):
    ds = data.load("fashion_mnist", subset=1000, validation_fraction=0.2)
    assert ds.x_train.shape == (800, 784) and ds.x_val.shape == (200, 784)
    assert ds.x_test.shape == (10000, 784) and ds.y_test.shape == (10000,)
    assert ds.task == "classification" and ds.num_classes == ds.num_outputs == 10
    # The subset is a shuffle of the official training set, not its first rows.
    x_train = fashion[0]
    first = x_train[np.random.default_rng(0).permutation(60000)[200]]
    np.testing.assert_allclose(ds.x_train[0] * ds.std + ds.mean, first, atol=1e-5)


# ----------------------------------------------------------------------------- digits


def test_digits():
    pytest.importorskip("sklearn")
    x, y = data.digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r'pip install "fmlp\[digits\]"'):
        data.digits()


# ----------------------------------------------------------------------------- synthetic sets


def test_lecture_regression_shapes_and_determinism():
    x, y = data.lecture_regression(300, seed=3, inputs=5, outputs=3, noise=0.1)
    assert x.shape == (300, 5) and y.shape == (300, 3)
    assert x.dtype == y.dtype == np.float32
    assert np.isfinite(y).all()
    again = data.lecture_regression(300, seed=3, inputs=5, outputs=3, noise=0.1)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert not np.array_equal(x, data.lecture_regression(300, seed=4, inputs=5)[0])


def test_lecture_classification_shapes_and_determinism():
    x, y = data.lecture_classification(301, seed=3, inputs=4, classes=5)
    assert x.shape == (301, 4) and x.dtype == np.float32
    assert y.shape == (301,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.unique(y), np.arange(5))
    again = data.lecture_classification(301, seed=3, inputs=4, classes=5)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert not np.array_equal(x, data.lecture_classification(301, seed=4, inputs=4)[0])


def _fit_predict(x: np.ndarray, t: np.ndarray, *, hidden: int) -> np.ndarray:
    """Train-set predictions of a tanh MLP with a random first layer and a ridge-regression head.

    ``hidden=0`` leaves a linear model. (Normal equations, not ``lstsq``: LAPACK's threaded
    solver is slow next to XLA's thread pool on a busy CPU.)
    """
    rng = np.random.default_rng(0)
    features = np.tanh(x @ rng.normal(size=(x.shape[1], hidden)) + rng.normal(size=hidden))
    features = np.concatenate([features, x, np.ones((len(x), 1))], axis=1)
    gram = features.T @ features + 1e-3 * np.eye(features.shape[1])
    return features @ np.linalg.solve(gram, features.T @ t)


def test_lecture_sets_are_learnable_but_not_linear():
    x, y = data.lecture_classification(1000)
    one_hot = np.eye(3)[y]
    linear = (_fit_predict(x, one_hot, hidden=0).argmax(1) == y).mean()
    mlp = (_fit_predict(x, one_hot, hidden=200).argmax(1) == y).mean()
    assert linear < 0.6 < 0.9 < mlp

    x, y = data.lecture_regression(1000)
    linear = ((_fit_predict(x, y, hidden=0) - y) ** 2).mean()
    mlp = ((_fit_predict(x, y, hidden=200) - y) ** 2).mean()
    assert mlp < 0.5 * linear and linear < 0.5 * y.var()


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (data.lecture_regression, {"n": 0}, r"n must be a positive integer, got 0"),
        (data.lecture_regression, {"outputs": 0}, r"outputs must be a positive integer, got 0"),
        (data.lecture_regression, {"noise": -1.0}, r"noise must be .* >= 0, got -1.0"),
        (data.lecture_classification, {"inputs": 1}, r"inputs must be at least 2 .*, got 1"),
        (data.lecture_classification, {"classes": 1}, r"classes must be at least 2, got 1"),
    ],
)
def test_synthetic_sets_reject_bad_arguments(make, kwargs, match):
    with pytest.raises(DataError, match=match):
        make(**kwargs)


# ----------------------------------------------------------------------------- load


@pytest.mark.parametrize(
    ("name", "task", "features", "outputs"),
    [
        ("lecture_regression", "regression", 8, 2),
        ("lecture_classification", "classification", 2, 3),
        ("digits", "classification", 64, 10),
    ],
)
def test_load_splits(name, task, features, outputs):
    if name == "digits":
        pytest.importorskip("sklearn")
    ds = data.load(name, validation_fraction=0.25)
    total = 1797 if name == "digits" else 2000
    sizes = [len(ds.x_train), len(ds.x_val), len(ds.x_test)]
    assert sum(sizes) == total and sizes[2] == pytest.approx(0.2 * total, abs=5)
    assert sizes[1] == round(0.25 * (total - sizes[2]))
    assert ds.task == task and ds.num_features == features and ds.num_outputs == outputs
    assert ds.num_classes == (None if task == "regression" else outputs)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.shape[1] == features and len(y) == len(x)
        assert y.dtype == (np.float32 if task == "regression" else np.int32)
        if task == "regression":
            assert y.shape[1] == outputs
    if name != "digits":  # digits holds a few duplicate images; the synthetic sets do not
        rows = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
        assert len(np.unique(rows, axis=0)) == len(rows)  # no example is in two splits


def test_load_is_deterministic_and_seed_moves_only_the_validation_split():
    a = data.load("lecture_classification", seed=1)
    b = data.load("lecture_classification", seed=1)
    c = data.load("lecture_classification", seed=2)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_val, c.x_val)
    # Same held-out examples for every seed (compared before normalisation).
    np.testing.assert_allclose(a.x_test * a.std + a.mean, c.x_test * c.std + c.mean, atol=1e-5)
    np.testing.assert_array_equal(a.y_test, c.y_test)


def test_load_test_split_is_stratified():
    ds = data.load("lecture_classification", synthetic_examples=1500)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100, 100, 100])


def test_load_subset():
    ds = data.load("lecture_regression", subset=50, validation_fraction=0.1)
    assert len(ds.x_train) == 45 and len(ds.x_val) == 5 and len(ds.x_test) == 400
    full = data.load("lecture_regression", normalize="none")
    small = data.load("lecture_regression", normalize="none", subset=50)
    pool = np.concatenate([full.x_val, full.x_train])
    np.testing.assert_array_equal(np.concatenate([small.x_val, small.x_train]), pool[:50])


def test_load_without_validation_split():
    ds = data.load("lecture_regression", validation_fraction=0.0)
    assert ds.x_val.shape == (0, 8) and ds.y_val.shape == (0, 2) and len(ds.x_train) == 1600


def test_standardize_fits_on_training_split_only():
    ds = data.load("lecture_regression", seed=5)
    raw = data.load("lecture_regression", seed=5, normalize="none")
    assert raw.mean is None and raw.std is None
    assert ds.mean.shape == ds.std.shape == (8,) and ds.mean.dtype == np.float32
    np.testing.assert_allclose(ds.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(ds.mean, raw.x_train.mean(0), atol=1e-6)
    for split in ("x_val", "x_test"):
        scaled, original = getattr(ds, split), getattr(raw, split)
        np.testing.assert_allclose(scaled, (original - ds.mean) / ds.std, rtol=1e-6, atol=1e-6)
        assert np.abs(scaled.mean(0)).max() > 1e-3  # not refitted on this split
    np.testing.assert_array_equal(ds.y_train, raw.y_train)


def test_the_standardizer_sums_in_chunks_as_in_one_pass():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 5)) * [1e-3, 1, 10, 1e3, 0] + [0, 5, -7, 1e4, 2]).astype(
        np.float32
    )
    mean, std = data._standardizer(x, rows=1000, chunk=64)
    one_pass = data._standardizer(x, rows=1000, chunk=1000)  # the same sums, in the same order
    np.testing.assert_array_equal(mean, one_pass[0])
    np.testing.assert_array_equal(std, one_pass[1])
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std[:4], x[:, :4].astype(np.float64).std(axis=0), rtol=1e-6)
    assert std[4] == 1.0  # a constant feature is only centred


def test_standardize_leaves_constant_features_unscaled():
    pytest.importorskip("sklearn")
    ds = data.load("digits")
    raw = data.load("digits", normalize="none")
    constant = raw.x_train.std(0) == 0
    assert constant.any()
    np.testing.assert_array_equal(ds.std[constant], 1.0)
    assert np.isfinite(ds.x_test).all()


def test_dataset_is_frozen():
    ds = data.load("lecture_classification", synthetic_examples=100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.task = "regression"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "mnist"}, r"Unknown dataset 'mnist'; expected one of \['fashion_mnist', "),
        ({"normalize": "minmax"}, r"Unknown normalize 'minmax'; .*'standardize', 'none'"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\), got 1.0"),
        ({"subset": 0}, r"subset must be a positive integer, got 0"),
        ({"subset": 5000}, r"subset=5000 is larger than the 1600 training examples"),
        ({"subset": 1}, r"validation_fraction=0.1 of 1 examples leaves none for training"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, match):
    kwargs = {"name": "lecture_regression", **kwargs}
    with pytest.raises(DataError, match=match):
        data.load(**kwargs)


def test_load_reports_missing_fashion_mnist(tmp_path):
    with pytest.raises(DataError, match=r"not found .*apt-get install -y dataset-fashion-mnist"):
        data.load("fashion_mnist", path=str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- validate


X = np.arange(12, dtype=np.float32).reshape(4, 3)
LABELS = np.array([0, 1, 2, 1], dtype=np.int32)


def test_validate_accepts_good_data():
    data.validate(X, LABELS, task="classification", num_classes=3, num_features=3)
    data.validate(X, np.ones((4, 2), np.float32), task="regression", num_features=3)


def _with(array: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (
            _with(_with(X, (2, 1), np.nan), (3, 0), np.inf),
            LABELS,
            {},
            r"train: 2 feature values are NaN or Inf, the first in row 2",
        ),
        (X, _with(LABELS, (2,), 7), {}, r"train: label 7 in row 2 is outside \[0, 3\)"),
        (X, _with(LABELS, (1,), -1), {}, r"label -1 in row 1 is outside \[0, 3\)"),
        (
            X,
            LABELS,
            {"num_features": 5},
            r"the model expects 5 features, the data has 3; check model/data config",
        ),
        (X, LABELS[:3], {}, r"features have 4 examples but targets have shape \(3,\)"),
        (X[0], LABELS, {}, r"features must be a numeric array .* got float32 of shape \(3,\)"),
        (X, np.array([0.0, 1.5, 2.0, 1.0]), {}, r"class labels must be integers, got 1.5 in row 1"),
        (X, np.array([0.0, 1.0, 2.0, 1.0]), {}, r"integer dtype, got float64; .*astype"),
        (X, np.eye(4, 3, dtype=np.int32), {}, r"labels must have shape \(examples,\)"),
        (
            X,
            _with(np.ones((4, 2), np.float32), (3, 1), np.nan),
            {"task": "regression"},
            r"1 regression targets are NaN or Inf, the first in row 3",
        ),
        (X, np.ones(4, np.float32), {"task": "regression"}, r"shape \(examples, outputs\)"),
        (X, LABELS, {"task": "ranking"}, r"unknown task 'ranking'; expected one of"),
    ],
    ids=[
        "nan-features", "label-too-big", "label-negative", "feature-count", "length",
        "x-1d", "fractional-labels", "float-labels", "one-hot", "nan-targets",
        "targets-1d", "task",
    ],
)  # fmt: skip
def test_validate_errors(x, y, kwargs, match):
    kwargs = {"task": "classification", "num_classes": 3, "name": "train", **kwargs}
    with pytest.raises(DataError, match=match):
        data.validate(x, y, **kwargs)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- batch_indices


# Few shapes: each (n, batch_size, shuffle) costs one compilation.
@pytest.mark.parametrize(
    ("n", "batch_size", "shuffle"),
    [(10, 3, True), (3, 8, True), (9, 3, False)],
    ids=["ragged", "one-batch", "exact-no-shuffle"],
)
def test_batch_indices_cover_every_example_once(key, n, batch_size, shuffle):
    idx, mask = data.batch_indices(key, n, batch_size, shuffle=shuffle)
    num_batches = -(-n // batch_size)
    assert idx.shape == mask.shape == (num_batches, batch_size)
    assert idx.dtype == jnp.int32 and mask.dtype == jnp.float32
    idx, mask = np.asarray(idx).ravel(), np.asarray(mask).ravel()
    assert mask.sum() == n
    np.testing.assert_array_equal(np.sort(idx[mask == 1]), np.arange(n))
    # Padding sits at the end of the last batch, holds a valid index and is masked out.
    np.testing.assert_array_equal(mask[n:], 0.0)
    assert ((idx >= 0) & (idx < n)).all()
    if not shuffle:
        np.testing.assert_array_equal(idx[:n], np.arange(n))


def test_batch_indices_deterministic_per_key(key):
    a = data.batch_indices(key, 10, 3)
    b = data.batch_indices(key, 10, 3)
    c = data.batch_indices(jax.random.key(1), 10, 3)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], c[1])


def test_batch_indices_under_jit(key):
    epoch = jax.jit(functools.partial(data.batch_indices, n=10, batch_size=3))
    idx, mask = epoch(key)
    eager_idx, eager_mask = data.batch_indices(key, 10, 3)
    np.testing.assert_array_equal(idx, eager_idx)
    np.testing.assert_array_equal(mask, eager_mask)


@pytest.mark.parametrize(
    ("n", "batch_size", "match"),
    [(0, 4, r"n must be a positive integer, got 0"), (4, 0, r"batch_size must be .*, got 0")],
)
def test_batch_indices_rejects_bad_sizes(key, n, batch_size, match):
    with pytest.raises(DataError, match=match):
        data.batch_indices(key, n, batch_size)
