"""``fmlp predict``: a run's model on the rows of a table file, in batches, and its errors."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fmlp
from fmlp import run, tables
from fmlp.errors import DataError
from fmlp.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
FMLP = Path(sys.executable).with_name("fmlp")
PENGUINS = ROOT / "examples" / "penguins_small.csv"
QUIET = ["train.epochs=2", "run.progress=never"]


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("penguins") / "run"
    fmlp.fit(
        str(ROOT / "configs/table_example.yaml"),
        overrides=[*QUIET, f"data.train={PENGUINS}"],
        out=out,
    )
    return out


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diabetes") / "run"
    fmlp.fit(str(ROOT / "configs/diabetes.yaml"), overrides=QUIET, out=out)
    return out


def snapshot(run_dir: Path) -> dict:
    """Bytes and mtime of every file in a run directory but its lock."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != RunDir.LOCK
    }


def predict_frame(run_dir, source, tmp_path, **kw) -> pd.DataFrame:
    out = tmp_path / "p.csv"
    run.predict_file(run_dir, source, out=out, **kw)
    return pd.read_csv(out)


def fmlp_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(FMLP), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_classes_and_probabilities_match_load(penguins, tmp_path):
    before = snapshot(penguins)
    result = predict_frame(penguins, PENGUINS, tmp_path, proba=True)
    rd = RunDir(penguins)
    pre = rd.preprocessing(rd.read_config())
    assert list(result.columns) == ["prediction"] + [f"proba_{c}" for c in pre.class_names]
    probabilities = result[[f"proba_{c}" for c in pre.class_names]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    frame = pd.read_csv(PENGUINS)
    x, _ = tables.encode(frame, pre, name="penguins", row=tables.row_namer("csv"))
    expected = np.asarray(fmlp.load(penguins)[1](x))
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    classes = np.asarray(pre.class_names)[np.argmax(expected, axis=1)]
    assert list(result["prediction"]) == list(classes)
    assert snapshot(penguins) == before


def test_label_present_or_absent_and_every_output_format(penguins, tmp_path):
    with_label = predict_frame(penguins, PENGUINS, tmp_path)
    no_label = tmp_path / "rows.csv"
    pd.read_csv(PENGUINS).drop(columns="species").to_csv(no_label, index=False)
    assert predict_frame(penguins, no_label, tmp_path).equals(with_label)
    run.predict_file(penguins, PENGUINS, out=tmp_path / "p.parquet")
    assert pd.read_parquet(tmp_path / "p.parquet").equals(with_label)
    run.predict_file(penguins, PENGUINS, out=tmp_path / "p.npz", proba=True)
    with np.load(tmp_path / "p.npz") as saved:
        assert list(saved["prediction"]) == list(with_label["prediction"])
        assert saved["proba_Adelie"].shape == (len(with_label),)
    parquet_in = tmp_path / "rows.parquet"
    pd.read_csv(PENGUINS).to_parquet(parquet_in)
    assert predict_frame(penguins, parquet_in, tmp_path).equals(with_label)


def test_many_batches_equal_one(penguins, tmp_path):
    one = predict_frame(penguins, PENGUINS, tmp_path, proba=True)
    many = predict_frame(penguins, PENGUINS, tmp_path, proba=True, batch_size=7)
    pd.testing.assert_frame_equal(one, many, atol=1e-6)
    parquet_in = tmp_path / "rows.parquet"
    pd.read_csv(PENGUINS).to_parquet(parquet_in)
    pd.testing.assert_frame_equal(
        one, predict_frame(penguins, parquet_in, tmp_path, proba=True, batch_size=7), atol=1e-6
    )


def test_regression_values_and_npz_positional_features(diabetes, tmp_path):
    before = snapshot(diabetes)
    rd = RunDir(diabetes)
    pre = rd.preprocessing(rd.read_config())
    x = np.random.default_rng(0).normal(size=(20, len(pre.features))).astype(np.float32) * 0.05
    source = tmp_path / "rows.csv"
    pd.DataFrame(x, columns=list(pre.features)).to_csv(source, index=False)
    result = predict_frame(diabetes, source, tmp_path)
    assert list(result.columns) == ["prediction"]
    expected = np.asarray(fmlp.load(diabetes)[1](x))[:, 0]
    np.testing.assert_allclose(result["prediction"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    np.savez(tmp_path / "rows.npz", x=x)
    np.testing.assert_allclose(
        predict_frame(diabetes, tmp_path / "rows.npz", tmp_path)["prediction"], expected, atol=1e-6
    )
    with pytest.raises(DataError, match=r"regression run; it has no class probabilities"):
        run.predict_file(diabetes, source, out=tmp_path / "q.csv", proba=True)
    assert snapshot(diabetes) == before


def test_builtin_run_takes_raw_features_of_the_right_count(tmp_path):
    cfg = {"data": {"name": "lecture_classification"}, "model": {"hidden": [4]}}
    fmlp.fit(cfg | {"train": {"epochs": 1}, "run": {"progress": "never"}}, out=tmp_path / "run")
    x = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    np.savez(tmp_path / "x.npz", x=x, y=np.array([0, 1]))
    result = predict_frame(tmp_path / "run", tmp_path / "x.npz", tmp_path, proba=True)
    expected = np.asarray(fmlp.load(tmp_path / "run")[1](x))
    assert list(result["prediction"]) == list(np.argmax(expected, axis=1))
    assert "proba_2" in result.columns
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"bad\.npz: has 3 feature column\(s\); the run expects 2"):
        run.predict_file(tmp_path / "run", tmp_path / "bad.npz")


def test_bad_inputs_name_file_and_column(penguins, tmp_path):
    before = snapshot(penguins)
    frame = pd.read_csv(PENGUINS)
    frame.drop(columns="sex").assign(colour="red").to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(DataError, match=r"cols\.csv: .*it lacks sex and has colour besides"):
        run.predict_file(penguins, tmp_path / "cols.csv", out=tmp_path / "p.csv")
    bad = frame.copy()
    bad.loc[3, "island"] = "Atlantis"
    bad.to_csv(tmp_path / "cat.csv", index=False)
    with pytest.raises(DataError, match=r"cat\.csv: column 'island', line 5: category 'Atlantis'"):
        run.predict_file(penguins, tmp_path / "cat.csv", out=tmp_path / "p.csv", batch_size=2)
    with pytest.raises(DataError, match=r"unknown output format '\.txt'"):
        run.predict_file(penguins, PENGUINS, out=tmp_path / "p.txt")
    with pytest.raises(DataError, match=r"inside the run directory"):
        run.predict_file(penguins, PENGUINS, out=penguins / "p.csv")
    (tmp_path / "header.csv").write_text(",".join(frame.columns) + "\n")
    (tmp_path / "empty.csv").write_text("")
    for name, pattern in [("header", "has no rows"), ("empty", "is empty"), ("nope", "not exist")]:
        with pytest.raises(DataError, match=rf"{name}\.csv.*{pattern}"):
            run.predict_file(penguins, tmp_path / f"{name}.csv", out=tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / ".p.csv.partial").exists()
    assert snapshot(penguins) == before


def test_cli_prints_csv_and_exits_2_with_one_line(penguins, tmp_path):
    before = snapshot(penguins)
    result = fmlp_cli("predict", penguins, PENGUINS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "prediction" and len(lines) == 1 + len(pd.read_csv(PENGUINS))
    bad = pd.read_csv(PENGUINS)
    bad.loc[0, "sex"] = "unknown"
    bad.to_csv(tmp_path / "cat.csv", index=False)
    for args, pattern in [
        ((tmp_path / "cat.csv",), r"cat\.csv: column 'sex', line 2: category 'unknown'"),
        ((PENGUINS, "--out", tmp_path / "p.xlsx"), r"--out .*p\.xlsx: unknown output format"),
    ]:
        result = fmlp_cli("predict", penguins, *args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert re.search(pattern, result.stderr), result.stderr
    assert snapshot(penguins) == before


def test_a_reader_that_stops_early_ends_predict_quietly(penguins, tmp_path):
    # `fmlp predict RUN INPUT | head -2`: head closes the pipe while fmlp still writes (the
    # output is far larger than a pipe's buffer); no "Broken pipe" traceback.
    big = tmp_path / "big.csv"
    pd.concat([pd.read_csv(PENGUINS)] * 100).to_csv(big, index=False)  # 30,000 rows
    command = f"{shlex.quote(str(FMLP))} predict {shlex.quote(str(penguins))} {big} | head -2"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=ROOT, capture_output=True, text=True
    )
    assert result.stdout.splitlines()[0] == "prediction"
    assert len(result.stdout.splitlines()) == 2
    assert result.returncode in (0, 141), result.stderr  # 141: SIGPIPE, as coreutils end
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr


def test_a_binary_sigmoid_head_predicts_labels_and_probabilities(tmp_path):
    # A table whose label column holds 0/1: the binary case of binary_cross_entropy.
    x, y = fmlp.data.lecture_multilabel(300)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(y=y[:, 0])
    table = tmp_path / "binary.csv"
    frame.to_csv(table, index=False)
    out = tmp_path / "run"
    fmlp.fit(
        str(ROOT / "configs/table_example.yaml"),
        overrides=[*QUIET, f"data.train={table}", "data.label=y", "data.categorical=[]",
                   "model.output=null", "model.loss=binary_cross_entropy", "train.epochs=20"],
        out=out,
    )  # fmt: skip
    result = predict_frame(out, table, tmp_path, proba=True)
    assert list(result.columns) == ["prediction", "proba"]
    _, predict = fmlp.load(out)
    proba = np.asarray(predict(x))[:, 0]
    np.testing.assert_allclose(result["proba"], proba, atol=1e-6)
    assert list(result["prediction"]) == list((proba > 0.5).astype(int))
    assert np.mean(result["prediction"] == y[:, 0]) > 0.9  # label 0 is linear in f0 + f1
