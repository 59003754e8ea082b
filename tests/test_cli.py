"""Tests for the ``fmlp`` command: exit statuses, messages, the run directory, no progress bar.

Every test runs the real command in a subprocess (the venv's ``fmlp`` console script, or
``python -m fmlp``) from the repository root, with pipes for stdout and stderr as in a CI log,
except the bad value of each config key, which goes through ``fmlp.cli.main`` in process (the
same parsing, validation and exit status, without starting JAX in a process per key). The
bad-input cases run two at a time. A persistent compilation cache is shared with
test_train's subprocesses, so a program compiled once is loaded afterwards.
"""

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from fmlp import cli, config

ROOT = Path(__file__).resolve().parents[1]
FMLP = Path(sys.executable).with_name("fmlp")  # the console script pip installed
CLASSIFICATION = "configs/lecture_classification.yaml"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return os.environ | {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def fmlp(*args: str, env: dict[str, str], module: bool = False) -> subprocess.CompletedProcess:
    """Run ``fmlp ARGS`` (or ``python -m fmlp ARGS``) in the repository root."""
    command = [sys.executable, "-m", "fmlp"] if module else [str(FMLP)]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"  # the run's lock: who holds it, not saved work
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = fmlp("train", CLASSIFICATION, "train.epochs=2", "--out", str(run_dir), env=env)
    return result, run_dir


def test_train_writes_a_run_and_prints_the_test_metric(trained):
    result, run_dir = trained
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    match = re.search(r"^test_accuracy: (\d\.\d{4})\b", result.stdout, re.MULTILINE)
    assert match, result.stdout
    assert float(match.group(1)) == pytest.approx(summary["test_accuracy"], abs=5e-5)
    assert str(run_dir) in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]
    assert epochs == [1, 2]
    assert summary["epochs"] == 2
    assert any((run_dir / "checkpoints" / "latest").iterdir())
    assert (run_dir / "plots" / "loss.png").is_file()


def test_train_draws_no_progress_bar_into_a_pipe(trained):
    # run.progress is 'auto' in the config: stderr is a pipe here, so no tqdm bar.
    result, _ = trained
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr, result.stderr
    assert "\r" not in result.stderr, result.stderr
    assert not re.search(r"\d+/\d+ \[", result.stderr), result.stderr


BAD_INPUT = {
    # name: (args, fragments the message must contain)
    "unknown key": (
        ["train", CLASSIFICATION, "train.epoch=2", "--out", "{new}"],
        ["train.epoch", "did you mean train.epochs"],
    ),
    "wrong type": (
        ["train", CLASSIFICATION, "train.epochs=two", "--out", "{new}"],
        ["train.epochs", "integer", "two"],
    ),
    "override after --out": (
        ["train", CLASSIFICATION, "--out", "{new}", "train.epochs=0"],
        ["train.epochs", ">= 1", "0"],
    ),
    "unknown loss": (
        ["train", CLASSIFICATION, "model.loss=hinge", "--out", "{new}"],
        ["model.loss", "'hinge'", "cross_entropy"],
    ),
    "dropout outside [0, 1)": (
        ["train", CLASSIFICATION, "model.dropout=1.0", "--out", "{new}"],
        ["model.dropout", "[0, 1)", "1.0"],
    ),
    "a list per hidden layer of the wrong length": (
        ["train", CLASSIFICATION, "model.activation=[relu, tanh]", "--out", "{new}"],
        ["model.activation", "one entry per hidden layer (1), got 2"],
    ),
    "a head that does not fit the data": (
        ["train", CLASSIFICATION, "model.output=identity", "--out", "{new}"],
        ["model.loss='squared_error'", "regression head", "classification set"],
    ),
    "class weights for other classes": (
        ["train", CLASSIFICATION, "data.class_weight=[1.0, 2.0]", "--out", "{new}"],
        ["data.class_weight", "one weight per class (3 classes), got 2"],
    ),
    "unknown config file": (
        ["train", "configs/no_such_config.yaml", "--out", "{new}"],
        ["no_such_config.yaml", "not found"],
    ),
    "out dir holds a run": (
        ["train", CLASSIFICATION, "train.epochs=1", "--out", "{run}"],
        ["already holds a run", "--resume"],
    ),
    "missing Fashion-MNIST": (
        ["train", "configs/fashion_mnist.yaml", "data.path=/nonexistent", "--out", "{new}"],
        ["/nonexistent", "apt-get"],
    ),
    "resume of a non-run": (
        ["train", CLASSIFICATION, "--resume", "{empty}"],
        ["config.yaml"],
    ),
    "eval of a non-run": (
        ["eval", "{empty}"],
        ["config.yaml"],
    ),
}


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory, trained, env) -> dict[str, tuple]:
    """Each bad-input case run once: ``(result, its directories, the run's files before)``."""
    _, run_dir = trained
    cases = {}
    for i, (name, (args, _)) in enumerate(BAD_INPUT.items()):
        base = tmp_path_factory.mktemp(f"bad{i}")
        dirs = {"new": base / "new", "run": base / "run", "empty": base / "empty"}
        shutil.copytree(run_dir, dirs["run"])
        dirs["empty"].mkdir()
        (dirs["empty"] / "notes.txt").write_text("not a run\n")
        before = {key: snapshot(dirs[key]) for key in ("run", "empty")}
        cases[name] = ([a.format(**dirs) for a in args], dirs, before)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(fmlp, *args, env=env, module=name == "unknown key")
            for name, (args, _, _) in cases.items()
        }
        return {name: (futures[name].result(), *cases[name][1:]) for name in cases}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_exits_2_with_a_short_message(bad_input, name):
    result, dirs, before = bad_input[name]
    command = BAD_INPUT[name][0][0]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr
    assert lines[0].startswith(f"fmlp {command}: error: "), lines[0]
    for fragment in BAD_INPUT[name][1]:
        assert fragment in lines[0], (fragment, lines[0])
    # Nothing was written, and nothing that was there changed.
    assert not dirs["new"].exists()
    assert {key: snapshot(dirs[key]) for key in ("run", "empty")} == before


def test_diverging_run_exits_1_naming_epoch_and_learning_rate(tmp_path, env):
    result = fmlp(
        "train",
        "configs/lecture_regression.yaml",
        "optimizer.learning_rate=1e6",
        "train.epochs=3",
        "--out",
        str(tmp_path / "run"),
        env=env,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("fmlp train:")]
    assert len(message) == 1, result.stderr
    assert re.search(r"\bepoch 1\b", message[0]), message[0]
    assert re.search(r"learning.rate", message[0]) and "1000000" in message[0], message[0]


def test_eval_prints_test_metrics_as_json(trained, tmp_path, env):
    _, trained_dir = trained
    run_dir = tmp_path / "run"
    shutil.copytree(trained_dir, run_dir)
    result = fmlp("eval", str(run_dir), "--split", "test", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["split"] == "test"
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert json.loads((run_dir / "eval_test.json").read_text()) == report


def test_an_internal_key_error_during_fit_exits_1_not_as_bad_input(tmp_path, env):
    # A bug inside fmlp that raises KeyError is not the user's bad input: exit 1, with its
    # traceback, never the exit-2 "error:" line.
    code = (
        "import sys, fmlp.cli, fmlp.run\n"
        "def broken(cfg):\n"
        "    raise KeyError('internal')\n"
        "fmlp.run.load_dataset = broken\n"
        f"out = {str(tmp_path / 'r')!r}\n"
        f"sys.exit(fmlp.cli.main(['train', {CLASSIFICATION!r}, '--out', out]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr
    assert "KeyError: 'internal'" in result.stderr
    assert "fmlp train: error:" not in result.stderr


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, env):
    args = (CLASSIFICATION, "train.epochs=3", "optimizer.schedule=plateau", "--print-config")
    result = fmlp("train", *args, f"run.out_dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stderr
    printed = config.from_dict(yaml.safe_load(result.stdout))
    expected = config.load(ROOT / CLASSIFICATION, ["train.epochs=3", "optimizer.schedule=plateau"])
    assert printed == dataclasses.replace(
        expected, run=dataclasses.replace(expected.run, out_dir=str(tmp_path))
    )
    assert list(tmp_path.iterdir()) == []  # no run directory


NEW_KEYS_BAD = {
    "optimizer.b1=1": "optimizer.b1",
    "optimizer.b2=-0.1": "optimizer.b2",
    "optimizer.eps=0": "optimizer.eps",
    "optimizer.decay_biases=sometimes": "optimizer.decay_biases",
    "optimizer.schedule=plateu": "did you mean plateau",
    "optimizer.plateau.factor=1.5": "optimizer.plateau.factor",
    "optimizer.plateau.patience=0": "optimizer.plateau.patience",
    "optimizer.plateau.cooldown=-1": "optimizer.plateau.cooldown",
    "optimizer.plateau.min_scale=2": "optimizer.plateau.min_scale",
    "optimizer.plateau.facter=0.5": "did you mean optimizer.plateau.factor",
    "optimizer.plateau=0.5": "optimizer.plateau: expected a PlateauConfig",
    "train.accumulate=0": "train.accumulate",
    "train.early_stopping.patience=0": "train.early_stopping.patience",
    "train.early_stopping.min_delta=-0.1": "train.early_stopping.min_delta",
    "train.early_stopping=5": "train.early_stopping: expected an EarlyStoppingConfig",
    "train.restore_best=2": "train.restore_best",
    "run.tensorboard=yes please": "run.tensorboard",
    "run.histogram_every=0": "run.histogram_every",
}


@pytest.mark.parametrize("override", list(NEW_KEYS_BAD))
def test_a_bad_value_of_a_new_key_exits_2_naming_it(override, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    assert cli.main(["train", CLASSIFICATION, override, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmlp train: error: "), lines
    assert NEW_KEYS_BAD[override] in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "watching", ["train.early_stopping.patience=2", "optimizer.schedule=plateau"]
)
def test_watching_the_validation_split_needs_one(watching, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.chdir(ROOT)
    args = ["train", CLASSIFICATION, watching, "data.validation_fraction=0"]
    assert cli.main([*args, "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "data.validation_fraction" in error and watching.split("=")[0] in error
