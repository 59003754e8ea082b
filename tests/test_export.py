"""Tests for ``fmlp export``: a run's model as a jax.export artifact, called with jax alone."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fmlp
from fmlp import errors, run
from fmlp.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
FMLP = Path(sys.executable).with_name("fmlp")
PENGUINS = ROOT / "examples" / "penguins_small.csv"
QUIET = ["train.epochs=2", "run.progress=never"]

# What a user writes to call the artifact: jax and numpy, no fmlp.
CALL = """
import sys, jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exported.call(x)))
assert not any(m == "fmlp" or m.startswith("fmlp.") for m in sys.modules), "fmlp was imported"
"""


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("penguins") / "run"
    fmlp.fit(str(ROOT / "configs/table_example.yaml"), overrides=QUIET, out=out)
    return out


def raw_features(run_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    """The artifact's inputs: the feature columns in order, categories as their index."""
    pre = json.loads((run_dir / RunDir.PREPROCESSING).read_text())
    columns = []
    for name in pre["features"]:
        if name in pre["categorical"]:
            columns.append([pre["categorical"][name].index(v) for v in frame[name]])
        else:
            columns.append(frame[name].to_numpy())
    return np.asarray(columns, np.float32).T


def call_with_jax_alone(artifact: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [sys.executable, "-c", CALL, artifact, tmp_path / "x.npy", tmp_path / "out.npy"],
        check=True,
        cwd=tmp_path,
    )
    return np.load(tmp_path / "out.npy")


def test_the_artifact_equals_predict_for_any_batch_size(penguins, tmp_path):
    before = {p: p.read_bytes() for p in penguins.rglob("*") if p.is_file() and p.name != ".lock"}
    artifact = tmp_path / "penguins.jax"
    info = run.export_run(penguins, artifact)
    assert info["inputs"][0] == "island" and info["outputs"] == ["Adelie", "Chinstrap", "Gentoo"]
    frame = pd.read_csv(PENGUINS)
    predicted = tmp_path / "p.csv"
    run.predict_file(penguins, PENGUINS, out=predicted, proba=True)
    want = pd.read_csv(predicted)[[f"proba_{c}" for c in info["outputs"]]].to_numpy()
    for rows in (slice(0, 1), slice(0, 7), slice(None)):
        got = call_with_jax_alone(artifact, raw_features(penguins, frame[rows]), tmp_path)
        np.testing.assert_allclose(got, want[rows], rtol=1e-5, atol=1e-6)
    after = {p: p.read_bytes() for p in penguins.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # export writes nothing in the run directory


def test_a_builtin_set_run_exports_its_normalised_net(tmp_path):
    out = tmp_path / "run"
    fmlp.fit(str(ROOT / "configs/lecture_classification.yaml"), overrides=QUIET, out=out)
    artifact = tmp_path / "lecture.jax"
    info = run.export_run(out, artifact)
    assert info["inputs"] == ["x0", "x1"]
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    got = call_with_jax_alone(artifact, x, tmp_path)
    np.testing.assert_allclose(got, np.asarray(fmlp.load(out)[1](x)), rtol=1e-5, atol=1e-6)


def test_cli_export_writes_the_file_and_refuses_the_run_directory(penguins, tmp_path):
    artifact = tmp_path / "m.jax"
    result = subprocess.run(
        [str(FMLP), "export", str(penguins), "--out", str(artifact)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert artifact.stat().st_size > 0 and "takes (batch, 6) float32 features" in result.stdout
    inside = subprocess.run(
        [str(FMLP), "export", str(penguins), "--out", str(penguins / "m.jax")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert inside.returncode == 2
    assert inside.stderr.startswith("fmlp export: error: --out") and "outside" in inside.stderr
    assert not (penguins / "m.jax").exists()
    with pytest.raises(errors.RunDirectoryError, match=r"no config\.yaml"):
        run.export_run(tmp_path, tmp_path / "x.jax")


def test_onnx_model_in_onnxruntime_equals_predict(penguins, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra (scripts/setup.sh installs it)")
    model = tmp_path / "penguins.onnx"
    result = subprocess.run(
        [str(FMLP), "export", str(penguins), "--out", str(model), "--format", "onnx"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # the converter's log stays quiet
    session = ort.InferenceSession(str(model))
    (x_input,) = session.get_inputs()
    assert x_input.name == "x" and isinstance(x_input.shape[0], str)  # a dynamic batch
    frame = pd.read_csv(PENGUINS)
    want = run.predict_file(penguins, PENGUINS, out=tmp_path / "p.csv", proba=True)
    want = pd.read_csv(tmp_path / "p.csv").filter(like="proba_").to_numpy()
    for rows in (slice(0, 1), slice(None)):
        (got,) = session.run(["y"], {"x": raw_features(penguins, frame[rows])})
        np.testing.assert_allclose(got, want[rows], rtol=1e-5, atol=1e-6)


def test_an_unknown_export_format_is_refused(penguins, tmp_path):
    with pytest.raises(errors.DataError, match=r"--format tflite: expected one of jax, onnx"):
        run.export_run(penguins, tmp_path / "m.tflite", format="tflite")
    assert not (tmp_path / "m.tflite").exists()


BLOCKS = ["model.hidden=[12, 12]", "model.activation=[gelu, relu]", "model.dropout=0.5",
          "model.layer_norm=true", "model.residual=true"]  # fmt: skip


def test_an_artifact_with_layer_norm_and_dropout_equals_predict(tmp_path):
    out = tmp_path / "run"
    fmlp.fit(str(ROOT / "configs/table_example.yaml"), overrides=[*QUIET, *BLOCKS], out=out)
    artifact = tmp_path / "blocks.jax"
    info = run.export_run(out, artifact)
    frame = pd.read_csv(PENGUINS)
    predicted = tmp_path / "p.csv"
    run.predict_file(out, PENGUINS, out=predicted, proba=True)
    want = pd.read_csv(predicted)[[f"proba_{c}" for c in info["outputs"]]].to_numpy()
    # Dropout is training only: the artifact and predict run the whole net, deterministically.
    got = call_with_jax_alone(artifact, raw_features(out, frame), tmp_path)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    again = tmp_path / "again.csv"
    run.predict_file(out, PENGUINS, out=again, proba=True)
    assert again.read_text() == predicted.read_text()


def test_onnx_without_the_extra_names_it_and_writes_nothing(penguins, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if not installed
    with pytest.raises(errors.ModuleLoadError, match=r"pip install 'fmlp\[onnx\]'"):
        run.export_run(penguins, tmp_path / "m.onnx", format="onnx")
    assert not list(tmp_path.iterdir())
