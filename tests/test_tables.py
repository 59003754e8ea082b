"""Tables and arrays as data sources: reading, encoding, the saved preprocessing, bad data.

Also scikit-learn's bundled sets and the shipped configs that use them, the Python API's
``fmlp.fit(cfg, train=(x, y), test=...)``, and the README's "Your own data" commands.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fmlp
from fmlp import config, data, tables
from fmlp.errors import ConfigError, DataError
from fmlp.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
FMLP = Path(sys.executable).with_name("fmlp")
FAST = {"train": {"epochs": 1, "batch_size": 8}, "run": {"progress": "never"}}

HEADER = "species,island,bill,mass"
ROWS = [
    "a,x,1.0,10",
    "b,y,2.0,20",
    "c,x,3.0,30",
    "a,y,1.5,15",
    "b,x,2.5,25",
    "c,y,3.5,35",
] * 3


def write_csv(path: Path, rows=ROWS, header=HEADER, sep=",") -> Path:
    path.write_text("\n".join([header.replace(",", sep), *(r.replace(",", sep) for r in rows)]))
    return path


def load_table(train, *, task="classification", **kw) -> data.Dataset:
    kw.setdefault("label", "species")
    return data.load("table", train=train, task=task, **kw)


def table_config(train, **data_keys) -> dict:
    keys = {"name": "table", "train": str(train), "label": "species"} | data_keys
    return {"data": keys, "model": {"hidden": [4]}} | FAST


# ----------------------------------------------------------------------------- sklearn sets


@pytest.mark.parametrize(
    "name, shape, task, classes",
    [
        ("iris", (150, 4), "classification", ("setosa", "versicolor", "virginica")),
        ("wine", (178, 13), "classification", ("class_0", "class_1", "class_2")),
        ("breast_cancer", (569, 30), "classification", ("malignant", "benign")),
        ("diabetes", (442, 10), "regression", None),
    ],
)
def test_sklearn_sets_load_with_their_shapes_and_names(name, shape, task, classes):
    ds = data.load(name, validation_fraction=0.0)
    assert data.DATASET_TASKS[name] == ds.task == task
    assert len(ds.x_train) + len(ds.x_test) == shape[0]
    assert ds.num_features == shape[1] and ds.x_train.dtype == np.float32
    assert ds.class_names == classes
    assert len(ds.preprocessing.features) == shape[1]
    if task == "classification":
        assert ds.num_classes == len(classes) and ds.y_train.dtype == np.int32
        # stratified: every class in the held-out test split
        assert set(np.unique(ds.y_test)) == set(range(len(classes)))
    else:
        assert ds.y_train.shape == (len(ds.x_train), 1) and ds.num_classes is None


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "diabetes", "table_example"])
def test_shipped_tabular_configs_train(name, tmp_path):
    path = ROOT / "configs" / f"{name}.yaml"
    cfg = config.load(path, ["train.epochs=1", "run.progress=never"])
    if name == "table_example":  # relative to the repository root, where the README runs it
        cfg = config.load(path, ["train.epochs=1", f"data.train={ROOT / cfg.data.train}"])
    _, history = fmlp.fit(cfg, out=tmp_path / "run")
    summary = history["summary"]
    assert summary["epochs"] == 1
    assert np.isfinite(summary.get("test_accuracy", summary.get("test_mse")))


# ----------------------------------------------------------------------------- formats


def test_csv_labels_categories_and_feature_names(tmp_path):
    ds = load_table(write_csv(tmp_path / "t.csv"), categorical=["island"], normalize="none")
    pre = ds.preprocessing
    assert pre.class_names == ("a", "b", "c")
    assert pre.features == ("island", "bill", "mass")
    assert pre.categorical == (("island", ("x", "y")),)
    assert pre.input_names == ("island=x", "island=y", "bill", "mass")
    x = np.concatenate([ds.x_train, ds.x_val])
    assert x.shape[1] == 4 and set(np.unique(x[:, :2])) == {0.0, 1.0}
    assert (x[:, :2].sum(axis=1) == 1).all(), "one-hot: exactly one category per row"
    # the label follows the bill: class ids in sorted order of the names
    y = np.concatenate([ds.y_train, ds.y_val])
    assert (np.floor(x[:, 2]).astype(np.int32) - 1 == y).all()


def test_integer_labels_sort_numerically(tmp_path):
    rows = [f"{label},x,{i},{i}" for i, label in enumerate([10, 2, 10, 2, 3, 3] * 3)]
    ds = load_table(write_csv(tmp_path / "t.csv", rows), categorical=["island"])
    assert ds.class_names == ("2", "3", "10")


def test_features_pick_and_order_columns(tmp_path):
    ds = load_table(write_csv(tmp_path / "t.csv"), features=["mass", "bill"])
    assert ds.preprocessing.features == ("mass", "bill") and ds.num_features == 2


@pytest.mark.parametrize("kind", ["tsv", "parquet", "npz"])
def test_other_formats_read_as_the_csv(tmp_path, kind):
    csv = write_csv(tmp_path / "t.csv")
    frame = pd.read_csv(csv)
    if kind == "tsv":
        path = write_csv(tmp_path / "t.tsv", sep="\t")
        ds = load_table(path, categorical=["island"])
        assert ds.preprocessing.features == ("island", "bill", "mass")
    elif kind == "parquet":
        path = tmp_path / "t.parquet"
        frame.to_parquet(path, engine="pyarrow")
        ds = load_table(path, categorical=["island"])
        assert ds.preprocessing.features == ("island", "bill", "mass")
    else:
        path = tmp_path / "t.npz"
        np.savez(
            path, x=frame[["bill", "mass"]].to_numpy(), y=frame["species"].to_numpy().astype(str)
        )
        ds = load_table(path, label="y")
        assert ds.preprocessing.features == ("x0", "x1")
    assert ds.class_names == ("a", "b", "c")


def test_npz_with_a_named_features_array_for_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 6)):
        np.savez(tmp_path / f"{split}.npz", feats=rng.normal(size=(n, 3)), y=np.arange(n) % 2)
    ds = load_table(
        tmp_path / "train.npz", test=tmp_path / "test.npz", label="y", features=["feats"]
    )
    assert ds.num_features == 3 and len(ds.x_test) == 6
    with pytest.raises(DataError, match=r"train\.npz: no array named 'x'; it holds feats, y"):
        load_table(tmp_path / "train.npz", label="y")


def test_text_in_a_regression_label_suggests_a_classification_head(tmp_path):
    with pytest.raises(
        DataError, match=r"column 'species', line 2: 'a' is not a number.*model\.output: softmax"
    ):
        load_table(write_csv(tmp_path / "t.csv"), task="regression", categorical=["island"])


def test_test_file_is_kept_as_the_test_split(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    test = write_csv(tmp_path / "test.csv", ROWS[:4])
    ds = load_table(train, test=test, categorical=["island"])
    assert len(ds.x_test) == 4 and len(ds.x_train) + len(ds.x_val) == len(ROWS)


def test_regression_from_a_numeric_label(tmp_path):
    ds = data.load(
        "table", train=write_csv(tmp_path / "t.csv"), label="mass", task="regression",
        categorical=["species", "island"],
    )  # fmt: skip
    assert ds.task == "regression" and ds.y_train.shape == (len(ds.x_train), 1)
    assert ds.class_names is None and ds.num_features == 3 + 2 + 1


def test_preprocessing_round_trips_through_json():
    pre = tables.Preprocessing(("a", "c"), (("c", ("u", "v")),), "y", ("p", "q"), ("a", "c", "y"))
    assert tables.Preprocessing.from_json(pre.to_json()) == pre


def test_importing_fmlp_does_not_import_pandas():
    code = "import sys, fmlp; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    "rows, kw, match",
    [
        (ROWS, {"label": "kind"}, r"t\.csv: no label column \(data\.label\) 'kind'"),
        (ROWS, {"features": ["bill", "beak"]}, r"t\.csv: no feature column .* 'beak'"),
        (
            [*ROWS[:3], "a,x,abc,10", *ROWS[4:]],
            {"categorical": ["island"]},
            r"t\.csv: column 'bill', line 5: 'abc' is not a number",
        ),
        (
            [*ROWS[:2], "a,x,,10", *ROWS[3:]],
            {"categorical": ["island"]},
            r"t\.csv: column 'bill', line 4: the value is missing",
        ),
        (
            [*ROWS[:6], "a,x,1.0,inf", *ROWS[7:]],
            {"categorical": ["island"]},
            r"t\.csv: column 'mass', line 8: the value is inf",
        ),
        (
            [*ROWS[:6], "a,x,1.0,1e39", *ROWS[7:]],
            {"categorical": ["island"]},
            r"t\.csv: column 'mass', line 8: the value 1e\+39 is beyond float32's range",
        ),
        (
            [*ROWS[:6], "a,x,1.0,nan", *ROWS[7:]],
            {"categorical": ["island"]},
            r"t\.csv: column 'mass', line 8: the value is missing",
        ),
        (
            ["a,x,1,2", "a,y,3,4"],
            {"categorical": ["island"]},
            r"t\.csv: the label column 'species' holds a single class \('a'\)",
        ),
        (ROWS, {}, r"t\.csv: column 'island', line 2: 'x' is not a number.*data\.categorical"),
        (ROWS, {"categorical": ["colour"]}, r"categorical column 'colour'.*not a feature"),
        (
            [*ROWS[:1], ",x,1,2", *ROWS[2:]],
            {"categorical": ["island"]},
            r"t\.csv: label column 'species', line 3: the label is missing",
        ),
    ],
    ids=[
        "missing label", "missing feature", "not a number", "empty value", "inf", "float32 range",
        "nan",
        "single class", "text without categorical", "unknown categorical", "missing label value",
    ],
)  # fmt: skip
def test_bad_tables_name_file_column_and_row(tmp_path, rows, kw, match):
    with pytest.raises(DataError, match=match):
        load_table(write_csv(tmp_path / "t.csv", rows), **kw)


def test_fractional_class_labels_suggest_regression(tmp_path):
    rows = [f"{v},x,1,2" for v in (0.5, 1.0, 2.0, 1.0)]
    with pytest.raises(DataError, match=r"line 2: 0\.5 is not a class.*model\.output: identity"):
        load_table(write_csv(tmp_path / "t.csv", rows), categorical=["island"])


def test_parquet_rows_are_counted_from_zero(tmp_path):
    frame = pd.read_csv(write_csv(tmp_path / "t.csv"))
    frame.loc[3, "bill"] = np.inf
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet: column 'bill', row 3: the value is inf"):
        load_table(tmp_path / "t.parquet", categorical=["island"])


@pytest.mark.parametrize(
    "text, match",
    [("", r"t\.csv is empty"), (HEADER + "\n", r"t\.csv has a header \(species, island.*no rows")],
    ids=["empty", "header only"],
)
def test_empty_and_header_only_files(tmp_path, text, match):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_table(tmp_path / "t.csv")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match=r"train file .*nope\.csv \(data\.train\) does not exist"):
        load_table(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"t\.xlsx: unknown table format '\.xlsx'.*\.csv"):
        load_table(tmp_path / "t.xlsx")


def test_unseen_category_in_the_test_file(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    test = write_csv(tmp_path / "test.csv", ["a,x,1,2", "b,z,2,3"])
    with pytest.raises(
        DataError, match=r"test\.csv: column 'island', line 3: category 'z' was not in the training"
    ):
        load_table(train, test=test, categorical=["island"])


def test_unseen_class_in_the_test_file(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    test = write_csv(tmp_path / "test.csv", ["a,x,1,2", "d,x,2,3"])
    with pytest.raises(DataError, match=r"test\.csv: label column 'species', line 3: class 'd'"):
        load_table(train, test=test, categorical=["island"])


def test_test_file_with_other_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv")
    test = write_csv(tmp_path / "test.csv", ["a,x,1", "b,y,2"], header="species,island,beak")
    with pytest.raises(
        DataError, match=r"test\.csv: its columns differ .* lacks bill, mass and has beak besides"
    ):
        load_table(train, test=test, categorical=["island"])


def test_a_file_larger_than_memory_is_refused_before_loading(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "t.csv")
    monkeypatch.setattr(data, "available_memory", lambda: 100)
    monkeypatch.setattr(tables, "read_frame", lambda *a, **k: pytest.fail("it was read"))
    with pytest.raises(DataError, match=r"t\.csv is 0\.00 GiB; loading it as csv needs about"):
        load_table(path)


def test_missing_pandas_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(DataError, match=r"needs pandas and pyarrow.*fmlp\[tables\]"):
        load_table(write_csv(tmp_path / "t.csv"))


# ----------------------------------------------------------------------------- the config


def test_table_config_needs_train_and_label():
    with pytest.raises(ConfigError, match=r"data\.train: data\.name=table needs it"):
        config.from_dict({"data": {"name": "table", "label": "y"}})
    with pytest.raises(ConfigError, match=r"data\.label: data\.name=table needs it"):
        config.from_dict({"data": {"name": "table", "train": "t.csv"}})
    for head in ("softmax", "identity"):  # the task follows from the head
        config.from_dict({"data": {"name": "table", "train": "t.csv", "label": "y"},
                          "model": {"output": head}})  # fmt: skip


# ----------------------------------------------------------------------------- runs


def test_table_run_saves_its_preprocessing(tmp_path):
    train = write_csv(tmp_path / "t.csv")
    _, _history = fmlp.fit(table_config(train, categorical=["island"]), out=tmp_path / "run")
    run = RunDir(tmp_path / "run")
    cfg = run.read_config()
    pre = run.preprocessing(cfg)
    assert pre.class_names == ("a", "b", "c")
    assert pre.input_names == ("island=x", "island=y", "bill", "mass")
    _, predict = fmlp.load(tmp_path / "run")
    assert predict(np.zeros((2, 4), np.float32)).shape == (2, 3)
    # a table run without its preprocessing.json is refused, not silently mis-encoded
    (tmp_path / "run" / RunDir.PREPROCESSING).unlink()
    with pytest.raises(fmlp.errors.RunDirectoryError, match=r"preprocessing\.json is missing"):
        run.preprocessing(cfg)


def test_eval_names_the_classes_and_refuses_an_edited_train_file(tmp_path):
    train = write_csv(tmp_path / "t.csv")
    fmlp.fit(table_config(train, categorical=["island"]), out=tmp_path / "run")
    report = fmlp.run.evaluate_run(tmp_path / "run", split="val")
    assert report["class_names"] == ["a", "b", "c"]
    assert np.asarray(report["confusion"]).shape == (3, 3)
    saved = json.loads((tmp_path / "run" / "eval_val.json").read_text())
    assert saved["class_names"] == ["a", "b", "c"]
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    # a category added to the training file: evaluating now would mis-encode the rows
    write_csv(train, [*ROWS, "c,z,4.0,25"])
    for call in (
        lambda: fmlp.run.evaluate_run(tmp_path / "run"),
        lambda: fmlp.fit(tmp_path / "run" / "config.yaml", resume=tmp_path / "run"),
    ):
        with pytest.raises(DataError, match=r"not the data this run was trained on"):
            call()
    # a changed value: the same encoding, other normalizer statistics
    write_csv(train, [f"{r},{int(mass) + 1}" for r, mass in (r.rsplit(",", 1) for r in ROWS)])
    with pytest.raises(DataError, match=r"other feature statistics than .*normalizer\.npz"):
        fmlp.run.evaluate_run(tmp_path / "run")
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def test_builtin_runs_without_preprocessing_still_load(tmp_path):
    cfg = {"data": {"name": "lecture_classification"}, "model": {"hidden": [4]}} | FAST
    fmlp.fit(cfg, out=tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert not (tmp_path / "run" / RunDir.PREPROCESSING).exists()
    assert run.preprocessing(run.read_config()) is None
    _, predict = fmlp.load(tmp_path / "run")
    assert predict(np.zeros((1, 2), np.float32)).shape == (1, 3)


def test_fit_takes_arrays_and_frames(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cfg = {"model": {"hidden": [4]}} | FAST
    _, history = fmlp.fit(cfg, train=(x, y), test=(x[:10], y[:10]), out=tmp_path / "a")
    saved = RunDir(tmp_path / "a")
    assert saved.read_config().data.name == "arrays"
    assert saved.preprocessing(saved.read_config()).features == ("x0", "x1", "x2")
    assert "test_accuracy" in history["summary"]

    frame = pd.DataFrame({"size": x[:, 0], "colour": np.where(y == 1, "red", "blue")})
    labels = pd.Series(np.where(y == 1, "yes", "no"), name="answer")
    _, history = fmlp.fit(
        cfg, train=(frame, labels), out=tmp_path / "f", overrides=["data.categorical=[colour]"]
    )
    pre = RunDir(tmp_path / "f").preprocessing(saved.read_config())
    assert pre.input_names == ("size", "colour=blue", "colour=red")
    assert (pre.label, pre.class_names) == ("answer", ("no", "yes"))

    reg = {"model": {"hidden": [4], "output": "identity"}} | FAST
    _, history = fmlp.fit(reg, train=(x, x[:, 1]), out=tmp_path / "r")
    assert "test_mse" in history["summary"]


def test_fit_with_bad_arrays_writes_nothing(tmp_path):
    x = np.zeros((20, 2), np.float32)
    x[7, 1] = np.nan
    y = np.arange(20) % 2
    with pytest.raises(DataError, match=r"arrays \(train\): column 'x1', row 7: the value is miss"):
        fmlp.fit({"model": {"hidden": [4]}} | FAST, train=(x, y), out=tmp_path / "run")
    assert not (tmp_path / "run").exists() and not list(tmp_path.iterdir())
    with pytest.raises(DataError, match=r"test= was given without train="):
        fmlp.fit({} | FAST, test=(x, y), out=tmp_path / "run")
    with pytest.raises(DataError, match=r"x has 20 rows but y has shape \(3,\)"):
        fmlp.fit({} | FAST, train=(x, y[:3]), out=tmp_path / "run")


def test_resume_of_an_arrays_run_needs_the_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    cfg = {"model": {"hidden": [4]}} | FAST
    fmlp.fit(cfg, train=(x, y), out=tmp_path / "run")
    more = {**cfg, "train": {**FAST["train"], "epochs": 2}}
    with pytest.raises(DataError, match=r"data are arrays passed to fmlp\.fit.*pass them again"):
        fmlp.fit(more, resume=tmp_path / "run", overrides=["data.name=arrays"])
    _, history = fmlp.fit(more, train=(x, y), resume=tmp_path / "run")
    assert history["summary"]["epochs"] == 2


def labelled_frame(n: int = 240) -> pd.DataFrame:
    """Four features, a category and three 0/1 labels each a rule of them, and two targets."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["colour"] = rng.choice(["red", "blue"], n)
    frame["sunny"] = (x[:, 0] + x[:, 1] > 0).astype(int)
    frame["windy"] = (x[:, 2] > 0.3).astype(int)
    frame["cold"] = ((x[:, 3] < 0) & (frame.colour == "red")).astype(int)
    frame["t1"], frame["t2"] = 2 * x[:, 0] + x[:, 1], x[:, 2] - x[:, 3]
    return frame


MULTILABEL = {"model": {"hidden": [16], "loss": "binary_cross_entropy", "output": "sigmoid"}}


def test_several_label_columns_train_a_multilabel_net_and_name_its_outputs(tmp_path):
    frame = labelled_frame()
    frame.iloc[:200].to_csv(tmp_path / "train.csv", index=False)
    new = frame.iloc[200:].drop(columns=["sunny", "windy", "cold", "t1", "t2"])
    new.to_csv(tmp_path / "new.csv", index=False)
    labels = ["sunny", "windy", "cold"]
    features = ["a", "b", "c", "d", "colour"]
    cfg = table_config(
        tmp_path / "train.csv", label=labels, features=features, categorical=["colour"]
    )
    cfg |= MULTILABEL | {"train": {"epochs": 40, "batch_size": 16}}
    _, history = fmlp.fit(cfg, out=tmp_path / "run")
    assert history["summary"]["test_accuracy"] > 0.85  # per-label accuracy; chance ~0.5-0.75
    run = RunDir(tmp_path / "run")
    pre = run.preprocessing(run.read_config())
    assert pre.labels == tuple(labels) and pre.class_names is None
    report = fmlp.run.evaluate_run(tmp_path / "run", split="test")
    assert report["label_names"] == labels and len(report["label_f1"]) == 3
    out = tmp_path / "pred.csv"
    fmlp.run.predict_file(tmp_path / "run", tmp_path / "new.csv", out=out, proba=True)
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == [f"prediction_{c}" for c in labels] + [
        f"proba_{c}" for c in labels
    ]
    proba = predicted[[f"proba_{c}" for c in labels]].to_numpy()
    np.testing.assert_array_equal(predicted[[f"prediction_{c}" for c in labels]], proba > 0.5)
    truth = frame.iloc[200:][labels].to_numpy()
    assert ((proba > 0.5) == truth).mean() > 0.85  # the run's encoding was applied


def test_several_target_columns_train_a_multi_output_regression(tmp_path):
    frame = labelled_frame()
    frame[["a", "b", "c", "d", "t1", "t2"]].to_csv(tmp_path / "train.csv", index=False)
    cfg = table_config(tmp_path / "train.csv", label=["t1", "t2"])
    cfg["model"] |= {"output": "identity", "hidden": [16]}
    cfg["train"] = {"epochs": 30, "batch_size": 16}
    _, history = fmlp.fit(cfg, out=tmp_path / "run")
    assert history["summary"]["test_mse"] < 0.5  # the targets' variance is about 5 and 2
    pre = RunDir(tmp_path / "run").preprocessing(RunDir(tmp_path / "run").read_config())
    assert pre.features == ("a", "b", "c", "d") and pre.labels == ("t1", "t2")


def test_fit_takes_a_2d_y_of_labels(tmp_path):
    frame = labelled_frame()
    x, y = frame[["a", "b", "c", "d"]].to_numpy(np.float32), frame[["sunny", "windy"]]
    fmlp.fit(MULTILABEL | FAST, train=(x, y), out=tmp_path / "frame")
    saved = RunDir(tmp_path / "frame")
    assert saved.preprocessing(saved.read_config()).labels == ("sunny", "windy")
    fmlp.fit(MULTILABEL | FAST, train=(x, y.to_numpy(np.float32)), out=tmp_path / "array")
    saved = RunDir(tmp_path / "array")
    assert saved.preprocessing(saved.read_config()).labels == ("y0", "y1")
    with pytest.raises(DataError, match=r"data\.label names 1 column\(s\) \(s\) but y has 2"):
        fmlp.fit(MULTILABEL | FAST, train=(x, y), overrides=["data.label=s"], out=tmp_path / "n")
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    "keys, error, match",
    [
        ({"label": ["sunny", "t1"]} | MULTILABEL, DataError,
         r"label column 't1', line \d+: -?[\d.]+ is not a 0/1 label"),
        ({"label": ["sunny", "windy"]}, ConfigError,
         r"data\.label: 2 label columns need one output each: model\.loss=binary_cross_entropy"),
        ({"label": ["sunny", "sunny"]} | MULTILABEL, ConfigError,
         r"data\.label: expected distinct column names"),
        ({"label": ["sunny", "gone"]} | MULTILABEL, DataError, r"'gone'"),
        ({"label": ["sunny", "windy"], "features": ["a", "windy"]} | MULTILABEL, DataError,
         r"column 'windy' is both a label and a feature"),
    ],
)  # fmt: skip
def test_bad_label_lists_name_the_key_column_and_row(tmp_path, keys, error, match):
    labelled_frame().to_csv(tmp_path / "t.csv", index=False)
    keys = {"features": ["a", "b", "c", "d"]} | keys
    model = keys.pop("model", {})
    cfg = table_config(tmp_path / "t.csv", categorical=[], **keys)
    cfg["model"] |= model
    with pytest.raises(error, match=match):
        fmlp.fit(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_bad_csv_exits_2_with_one_line(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", [*ROWS[:3], "a,x,abc,10", *ROWS[4:]])
    result = subprocess.run(
        [str(FMLP), "train", "configs/table_example.yaml", f"data.train={bad}",
         "data.categorical=[island]", "--out", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(r"bad\.csv: column 'bill', line 5: 'abc' is not a number", lines[0])
    assert not (tmp_path / "run").exists()


def test_readme_table_example_runs_verbatim(tmp_path):
    """The README's "Your own data" commands, run as written from the repository root."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    lines = [line for block in commands for line in block.splitlines() if line.strip()]
    assert "fmlp train configs/table_example.yaml --out runs/penguins" in lines
    env = {"PATH": f"{FMLP.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for line in lines:  # the README's run directory moved under tmp_path: the checkout stays clean
        command = line.split("#", 1)[0].strip().replace("runs/penguins", str(tmp_path / "run"))
        result = subprocess.run(
            command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8
    assert any(line.startswith("fmlp predict runs/penguins ") for line in lines)
    predictions = pd.read_csv(tmp_path / "run-predictions.csv")
    assert len(predictions) == 300 and list(predictions.columns)[:2] == [
        "prediction",
        "proba_Adelie",
    ]
