"""Tests for fmlp.run: the run directory, learning, determinism, resume, errors, load/eval.

Every run is small (the lecture's synthetic sets, digits, a Fashion-MNIST lookalike) and the
tests assert learning (loss falls, accuracy above a stated floor), never wall time. Runs are
shared through module-scoped fixtures, so each configuration trains once.

The in-process runs train under this suite's strict settings (x64 enabled, rank promotion
raises, strict dtype promotion): the library must still train float32 params there. The
resume tests kill real ``python -m fmlp train`` processes; those, and the uninterrupted
reference they are compared with, run with JAX's default settings on the CPU, as a user's
command does, sharing a persistent compilation cache so repeated programs compile once.
"""

import concurrent.futures
import contextlib
import csv
import dataclasses
import gzip
import hashlib
import importlib.metadata
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import numpy as np
import pytest
import yaml

import fmlp
from fmlp import config, data, train
from fmlp.config import ConfigError
from fmlp.data import DataError
from fmlp.errors import RunDirectoryError, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
CLASSIFICATION = ROOT / "configs" / "lecture_classification.yaml"
REGRESSION = ROOT / "configs" / "lecture_regression.yaml"
DIGITS = ROOT / "configs" / "digits.yaml"
FASHION = ROOT / "configs" / "fashion_mnist.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {"epoch", "train_loss", "val_loss", "learning_rate", "seconds"}
SUMMARY_KEYS = {"test_loss", "epochs", "examples_per_second", "compile_seconds", "device"}
SUMMARY_KEYS |= {"fmlp_version", "best_epoch", "stopped_epoch", "tested_epoch", "versions"}
SUMMARY_KEYS |= {"device_count", "config_sha256"}

FEATURES_OUTPUTS = {
    "lecture_classification": (2, 3),
    "lecture_regression": (8, 2),
    "digits": (64, 10),
}
# lecture_classification: 2000 examples, 400 held out for testing, 160 for validation.
CLASSIFICATION_TRAIN_EXAMPLES = 1440
CLASSIFICATION_STEPS = math.ceil(CLASSIFICATION_TRAIN_EXAMPLES / 128)  # 12; the last is partial


class Run(NamedTuple):
    """A finished in-process run: what fit returned, where it wrote, the config it was given."""

    state: train.TrainState
    history: dict[str, Any]
    dir: Path
    cfg: config.Config


def fit_run(
    tmp_path_factory: pytest.TempPathFactory, source: Any, *overrides: str, name: str = "run"
) -> Run:
    out = tmp_path_factory.mktemp(name) / "run"
    state, history = fmlp.fit(source, overrides=list(overrides), out=out)
    return Run(state, history, out, config.resolve(source, list(overrides)))


def leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def assert_params_equal(a: Any, b: Any) -> None:
    """Bitwise equality of two param pytrees, leaf by leaf, shapes and dtypes included."""
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
    chex.assert_trees_all_equal(a, b)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict[str, Any]]:
    """``metrics.csv`` as metrics rows: numbers parsed, an empty field null."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    number = lambda k, v: int(v) if k == "epoch" else float(v)
    return [{k: None if v == "" else number(k, v) for k, v in row.items()} for row in rows]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"  # the run's lock: who holds it, not saved work
    }


def step_dirs(directory: Path) -> list[int]:
    """The complete (finalised) checkpoint steps an orbax manager directory holds."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} missing"
    payload = path.read_bytes()
    assert payload[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(payload) > 2000, f"{path} is only {len(payload)} bytes"


def check_float32_params(params: Any, widths: list[int]) -> None:
    assert isinstance(params, list) and len(params) == len(widths) - 1
    for layer, (fan_in, fan_out) in zip(params, itertools.pairwise(widths)):
        assert set(layer) == {"W", "b"}
        assert layer["W"].shape == (fan_in, fan_out) and layer["b"].shape == (fan_out,)
        assert layer["W"].dtype == np.float32 and layer["b"].dtype == np.float32
        assert np.all(np.isfinite(layer["W"])) and np.all(np.isfinite(layer["b"]))


def sizes(cfg: config.Config) -> list[int]:
    """Layer widths [features, *hidden, outputs] of a run on one of the built-in sets."""
    features, outputs = FEATURES_OUTPUTS[cfg.data.name]
    return [features, *cfg.model.hidden, outputs]


def raw_test_split(cfg: config.Config) -> data.Dataset:
    """The run's dataset with the same seed and splits but unnormalised features."""
    raw = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, normalize="none"))
    return fmlp.run.load_dataset(raw)


# ----------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Run:
    """lecture_classification from its YAML file: 30 epochs, a checkpoint every 5, keep 3."""
    return fit_run(
        tmp_path_factory,
        CLASSIFICATION,
        "train.epochs=30",
        "train.checkpoint_every=5",
        "train.keep_checkpoints=3",
        name="cls",
    )


@pytest.fixture(scope="module")
def reg_source() -> dict[str, Any]:
    """lecture_regression as a dict (fit's other input form), drawing its progress bar."""
    raw = yaml.safe_load(REGRESSION.read_text())
    raw["train"] |= {"epochs": 30, "checkpoint_every": 10, "keep_checkpoints": 2}
    raw["run"] |= {"progress": "always"}
    return raw


@pytest.fixture(scope="module")
def reg_run_and_stderr(tmp_path_factory, reg_source) -> tuple[Run, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run = fit_run(tmp_path_factory, reg_source, name="reg")
    return run, stderr.getvalue()


@pytest.fixture(scope="module")
def reg_run(reg_run_and_stderr) -> Run:
    return reg_run_and_stderr[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Run:
    return fit_run(
        tmp_path_factory, DIGITS, "train.epochs=3", "train.checkpoint_every=100", name="digits"
    )


SMALL = (CLASSIFICATION, "train.epochs=3", "train.checkpoint_every=100")


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory) -> dict[str, Run]:
    """Three epochs of lecture_classification: twice alike, another seed, the jax backend, and
    the epoch's loop unrolled."""
    variants = {
        "a": (),
        "b": (),
        "seed1": ("train.seed=1",),
        "jax": ("train.gradients=jax",),
        "unroll": ("train.unroll=5",),  # 12 steps an epoch: two unrolled iterations and a rest
    }
    return {
        key: fit_run(tmp_path_factory, *SMALL, *extra, name=f"small-{key}")
        for key, extra in variants.items()
    }


@pytest.fixture(params=["classification", "regression"])
def any_run(request) -> Run:
    return request.getfixturevalue(
        {"classification": "cls_run", "regression": "reg_run"}[request.param]
    )


# ----------------------------------------------------------------------------- the run directory


def test_run_directory_contract(any_run: Run):
    run, cfg = any_run, any_run.cfg
    classification = cfg.data.name != "lecture_regression"
    metric = "accuracy" if classification else "mse"

    # config.yaml: the resolved config, itself a valid config file.
    assert config.load(run.dir / "config.yaml") == cfg

    # metrics.jsonl: one object per epoch, 1..N in order, with the contract's keys.
    rows = read_jsonl(run.dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, cfg.train.epochs + 1))
    assert read_csv(run.dir / "metrics.csv") == rows  # the same rows, for spreadsheets
    for row in rows:
        assert METRIC_KEYS | {f"val_{metric}"} <= set(row), row
        for key in ("train_loss", "val_loss", f"val_{metric}", "learning_rate", "seconds"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row)
        assert row["seconds"] >= 0
        assert row["learning_rate"] == pytest.approx(cfg.optimizer.learning_rate)  # constant
        if classification:
            assert 0.0 <= row["val_accuracy"] <= 1.0

    # summary.json
    summary = json.loads((run.dir / "summary.json").read_text())
    assert SUMMARY_KEYS | {f"test_{metric}"} <= set(summary), summary
    assert summary["epochs"] == cfg.train.epochs
    assert math.isfinite(summary["test_loss"]) and math.isfinite(summary[f"test_{metric}"])
    assert summary["examples_per_second"] > 0
    assert summary["compile_seconds"] >= 0
    assert isinstance(summary["device"], str) and summary["device"]
    assert summary["fmlp_version"] == fmlp.__version__
    # The best epoch: the first with the highest validation accuracy (regression: lowest loss).
    watched = [r["val_accuracy" if classification else "val_loss"] for r in rows]
    best_epoch = watched.index(max(watched) if classification else min(watched)) + 1
    assert (summary["best_epoch"], summary["stopped_epoch"]) == (best_epoch, None)
    assert summary["tested_epoch"] == cfg.train.epochs  # train.restore_best: false
    assert step_dirs(run.dir / "checkpoints" / "best") == [best_epoch]
    # Provenance: what produced the numbers, and which config (the hash of config.yaml).
    packages = {"jax": "jax", "jaxlib": "jaxlib", "optax": "optax", "orbax": "orbax-checkpoint"}
    assert summary["versions"] == {"python": sys.version.split()[0]} | {
        name: importlib.metadata.version(package) for name, package in packages.items()
    } | {"fmlp": fmlp.__version__}
    config_bytes = (run.dir / "config.yaml").read_bytes()
    assert summary["config_sha256"] == hashlib.sha256(config_bytes).hexdigest()
    assert summary["device_count"] == jax.device_count()

    # checkpoints/: latest keeps the last keep_checkpoints saves, best holds one.
    every, keep, epochs = cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.epochs
    saved = [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]
    latest, best = run.dir / "checkpoints" / "latest", run.dir / "checkpoints" / "best"
    assert step_dirs(latest) == saved[-keep:]
    for manager in (latest, best):
        leftovers = [p.name for p in manager.iterdir() if not p.name.isdigit()]
        assert not leftovers, f"unfinished checkpoint folders left in {manager}: {leftovers}"

    # plots/: valid, non-trivial PNG files.
    plots = ["loss.png", f"{metric}.png"] + (["confusion_test.png"] if classification else [])
    for name in plots:
        assert_png(run.dir / "plots" / name)


def test_fit_returns_state_and_history(any_run: Run):
    state, history, run_dir = any_run.state, any_run.history, any_run.dir
    assert isinstance(state, train.TrainState)
    check_float32_params(state.params, sizes(any_run.cfg))
    assert int(state.epoch) == any_run.cfg.train.epochs
    assert history["epochs"] == read_jsonl(run_dir / "metrics.jsonl")
    assert history["summary"] == json.loads((run_dir / "summary.json").read_text())
    assert Path(history["run_dir"]) == run_dir
    # The latest checkpoint holds exactly the returned params.
    assert_params_equal(fmlp.run.restore_params(run_dir), state.params)


# ----------------------------------------------------------------------------- learning


def test_lecture_classification_learns(cls_run: Run):
    rows = cls_run.history["epochs"]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    # Reached about 0.97 when written; a linear classifier cannot pass 0.6 on the spirals.
    assert cls_run.history["summary"]["test_accuracy"] >= 0.9
    assert rows[-1]["val_accuracy"] >= 0.9


def test_lecture_regression_learns(reg_run: Run):
    rows = reg_run.history["epochs"]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    y_test = raw_test_split(reg_run.cfg).y_test
    # Predicting the mean scores the target variance (about 0.64); a linear fit about a fifth
    # of it. 30 epochs reached 0.046 when written.
    assert reg_run.history["summary"]["test_mse"] < 0.15 * float(np.var(y_test))


def test_digits_learns(digits_run: Run):
    rows = digits_run.history["epochs"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # 3 epochs reached 0.96 test accuracy when written; chance is 0.1.
    assert digits_run.history["summary"]["test_accuracy"] >= 0.9
    check_float32_params(digits_run.state.params, sizes(digits_run.cfg))


# ----------------------------------------------------------------------------- determinism


def test_same_config_and_seed_give_bitwise_identical_params(small_runs):
    assert_params_equal(small_runs["a"].state.params, small_runs["b"].state.params)
    a = [{k: v for k, v in r.items() if k != "seconds"} for r in small_runs["a"].history["epochs"]]
    b = [{k: v for k, v in r.items() if k != "seconds"} for r in small_runs["b"].history["epochs"]]
    assert a == b


def test_an_unrolled_epoch_computes_the_same_params(small_runs):
    assert small_runs["unroll"].cfg.train.unroll == 5
    assert_params_equal(small_runs["a"].state.params, small_runs["unroll"].state.params)


def test_different_seed_gives_different_params(small_runs):
    a, other = leaves(small_runs["a"].state.params), leaves(small_runs["seed1"].state.params)
    assert all(not np.array_equal(x, y) for x, y in zip(a, other))


# The backends round differently in float32; after 36 momentum steps the params differed by
# at most 1.8e-7 when written (weights of order 0.1 to 1).
GRADIENT_BACKEND_RTOL = 1e-5
GRADIENT_BACKEND_ATOL = 1e-6


def test_gradient_backends_agree_and_both_learn(small_runs):
    engine, oracle = small_runs["a"], small_runs["jax"]
    assert engine.cfg.train.gradients == "engine" and oracle.cfg.train.gradients == "jax"
    for x, y in zip(leaves(engine.state.params), leaves(oracle.state.params)):
        np.testing.assert_allclose(x, y, rtol=GRADIENT_BACKEND_RTOL, atol=GRADIENT_BACKEND_ATOL)
    for run in (engine, oracle):
        rows = run.history["epochs"]
        assert rows[-1]["train_loss"] < rows[0]["train_loss"]
        check_float32_params(run.state.params, sizes(run.cfg))


# ----------------------------------------------------------------------------- optimizers


OPTIMIZERS = {
    "sgd-nesterov-exponential-clip_norm": (
        "optimizer.nesterov=true",
        "optimizer.schedule=exponential",
        "optimizer.decay_rate=0.5",
        "optimizer.clip_norm=1.0",
    ),
    "adam-cosine": (
        "optimizer.name=adam",
        "optimizer.learning_rate=0.01",
        "optimizer.schedule=cosine",
    ),
    "adamw-weight_decay-warmup_cosine": (
        "optimizer.name=adamw",
        "optimizer.learning_rate=0.01",
        "optimizer.weight_decay=0.001",
        "optimizer.schedule=warmup_cosine",
        "optimizer.warmup_epochs=1",
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_and_schedules_train(tmp_path_factory, name):
    epochs = 4
    run = fit_run(
        tmp_path_factory,
        CLASSIFICATION,
        f"train.epochs={epochs}",
        "train.checkpoint_every=100",
        *OPTIMIZERS[name],
        name=name,
    )
    rows = run.history["epochs"]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    check_float32_params(run.state.params, sizes(run.cfg))
    assert int(run.state.step) == epochs * CLASSIFICATION_STEPS

    lr = [r["learning_rate"] for r in rows]
    peak = run.cfg.optimizer.learning_rate
    assert all(0 <= v <= peak * (1 + 1e-6) for v in lr), lr
    # The constant schedule is checked in test_run_directory_contract.
    if run.cfg.optimizer.schedule == "warmup_cosine":  # up over the first epoch, then down
        assert lr[0] > 0.5 * peak and lr[1] < lr[0] and lr[-1] < lr[1]
    else:  # exponential, cosine: strictly decreasing
        assert all(a > b for a, b in itertools.pairwise(lr)), lr


def test_steps_per_epoch_include_the_partial_last_batch(tmp_path_factory):
    # subset 1000 -> 100 validation + 900 training examples; 900 / 128 = 7.03 -> 8 steps.
    run = fit_run(
        tmp_path_factory,
        REGRESSION,
        "data.subset=1000",
        "train.batch_size=128",
        "train.epochs=2",
        "train.checkpoint_every=100",
        name="steps",
    )
    assert int(run.state.step) == 2 * 8
    assert int(run.state.epoch) == 2


# ----------------------------------------------------------------------------- resume


RESUME_ARGS = (str(CLASSIFICATION), "train.epochs=8")  # test_cli trains the same programs
RESUME_EPOCHS = 8
KILL_AFTER = 3  # epochs logged before the SIGKILL
POLL_TIMEOUT = 240.0
# Seconds from the KILL_AFTER-th metrics line to the SIGKILL. The line is written just before
# that epoch's checkpoint, so these land the kill inside the orbax save (which leaves a
# '<step>.orbax-checkpoint-tmp' folder) or just after it; 0 kills at once.
KILL_DELAYS = [0.0] + [round(random.Random(20240611 + i).uniform(0.0, 0.12), 3) for i in range(2)]


class Resumed(NamedTuple):
    """A killed run after ``--resume``: what it held before, and the resume's outcome."""

    dir: Path
    lines_before: list[str]  # metrics.jsonl lines when killed
    last_complete: int  # newest complete checkpoint when killed
    result: subprocess.CompletedProcess


def train_and_kill(run_dir: Path, *, delay: float, env: dict[str, str]) -> str | None:
    """Start ``fmlp train`` into ``run_dir``; SIGKILL it ``delay`` s after KILL_AFTER epochs.

    Returns None, or what went wrong (the run ended first, or never got that far).
    """
    log = run_dir.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fmlp", "train", *RESUME_ARGS, "--out", str(run_dir)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + POLL_TIMEOUT
        while logged_epochs(run_dir / "metrics.jsonl") < KILL_AFTER:
            if proc.poll() is not None:
                return f"fmlp train exited ({proc.returncode}) early:\n{log.read_text()}"
            if time.monotonic() > deadline:
                return f"no {KILL_AFTER} epochs logged within {POLL_TIMEOUT} s"
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != -signal.SIGKILL:
        return f"the run finished ({proc.returncode}) before it could be killed"
    return None


def logged_epochs(metrics: Path) -> int:
    try:
        return metrics.read_text().count("\n")  # complete lines only
    except FileNotFoundError:
        return 0


def fmlp_train(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmlp", "train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def add_partial_checkpoints(run_dir: Path) -> None:
    """Junk folders named the way orbax names a step it is still writing, for later steps.

    This orbax writes '<step>.orbax-checkpoint-tmp' and renames it when complete
    (orbax/checkpoint/_src/path/atomicity.py); older versions append '-<timestamp>'.
    """
    root = run_dir / "checkpoints"
    last = max(step_dirs(root / "latest"))
    partial = [
        root / "latest" / f"{last + 1}.orbax-checkpoint-tmp",
        root / "latest" / f"{last + 2}.orbax-checkpoint-tmp-1718000000123456",
        root / "best" / f"{last + 1}.orbax-checkpoint-tmp",
    ]
    for folder in partial:
        (folder / "state" / "d").mkdir(parents=True, exist_ok=True)
        (folder / "_CHECKPOINT_METADATA").write_bytes(b"\x00not json")
        (folder / "state" / "manifest.ocdbt").write_bytes(os.urandom(64))
        (folder / "state" / "d" / "0123456789abcdef").write_bytes(os.urandom(256))


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory) -> dict[str, Any]:
    """The uninterrupted reference run and killed runs resumed with ``--resume``.

    The subprocesses run two at a time: first the reference and the runs killed after
    KILL_DELAYS; then a copy of the run killed at once, given junk partial checkpoints;
    then every killed run is resumed.
    """
    base = tmp_path_factory.mktemp("resume")
    env = os.environ | {
        "JAX_PLATFORMS": "cpu",  # the bitwise contract is stated for the CPU
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    reference_dir = base / "reference"
    killed = {f"delay={d}": base / f"killed-{i}" for i, d in enumerate(KILL_DELAYS)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        reference = pool.submit(fmlp_train, *RESUME_ARGS, "--out", str(reference_dir), env=env)
        kills = {
            name: pool.submit(train_and_kill, run_dir, delay=delay, env=env)
            for (name, run_dir), delay in zip(killed.items(), KILL_DELAYS)
        }
        problems = {name: future.result() for name, future in kills.items()}
        for name, problem in problems.items():
            if problem is not None:
                pytest.fail(f"{name}: {problem}")
        killed["partial checkpoints"] = base / "partial"
        shutil.copytree(killed[f"delay={KILL_DELAYS[0]}"], killed["partial checkpoints"])
        add_partial_checkpoints(killed["partial checkpoints"])
        before = {
            name: (
                (run_dir / "metrics.jsonl").read_text().splitlines(),
                max(step_dirs(run_dir / "checkpoints" / "latest"), default=0),
            )
            for name, run_dir in killed.items()
        }
        resumes = {
            name: pool.submit(fmlp_train, *RESUME_ARGS, "--resume", str(run_dir), env=env)
            for name, run_dir in killed.items()
        }
        reference_result = reference.result()
        resumed = {
            name: Resumed(run_dir, *before[name], resumes[name].result())
            for name, run_dir in killed.items()
        }
    assert reference_result.returncode == 0, reference_result.stderr
    rows = read_jsonl(reference_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, RESUME_EPOCHS + 1))
    return {
        "reference": (fmlp.run.restore_params(reference_dir), [without_seconds(r) for r in rows]),
        "resumed": resumed,
    }


def without_seconds(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "seconds"}


def check_resumed(run: Resumed, reference: tuple[Any, list[dict[str, Any]]]) -> None:
    """The resumed run continued from its checkpoint and ended where the reference did."""
    assert run.result.returncode == 0, run.result.stderr
    assert KILL_AFTER <= len(run.lines_before) < RESUME_EPOCHS
    assert 1 <= run.last_complete <= len(run.lines_before)

    ref_params, ref_rows = reference
    assert_params_equal(fmlp.run.restore_params(run.dir), ref_params)
    lines = (run.dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == list(range(1, RESUME_EPOCHS + 1))  # each once
    assert [without_seconds(r) for r in rows] == ref_rows
    # The epochs up to the restored checkpoint were not trained again: their lines, timings
    # included, are the killed run's.
    assert lines[: run.last_complete] == run.lines_before[: run.last_complete]
    assert json.loads((run.dir / "summary.json").read_text())["epochs"] == RESUME_EPOCHS


@pytest.mark.parametrize("delay", KILL_DELAYS)
def test_resume_after_sigkill_is_bitwise_identical(resume_runs, delay):
    check_resumed(resume_runs["resumed"][f"delay={delay}"], resume_runs["reference"])


def test_resume_ignores_partial_checkpoint_folders(resume_runs):
    run = resume_runs["resumed"]["partial checkpoints"]
    check_resumed(run, resume_runs["reference"])


# ----------------------------------------------------------------------------- divergence


def test_divergence_at_first_epoch_raises(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"epoch 1\b") as info:
        fmlp.fit(REGRESSION, overrides=["optimizer.learning_rate=1e6"], out=run_dir)
    assert re.search(r"learning.rate", str(info.value))
    assert read_jsonl(run_dir / "metrics.jsonl") == []
    assert step_dirs(run_dir / "checkpoints" / "latest") == []
    assert not (run_dir / "summary.json").exists()


def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path):
    # No momentum, the rate warming up to 4 over 9 epochs: the first epochs learn, then the
    # rising rate blows the loss up (at epoch 7 when written).
    overrides = [
        "train.epochs=10",
        "optimizer.momentum=0.0",
        "optimizer.learning_rate=4",
        "optimizer.schedule=warmup_cosine",
        "optimizer.warmup_epochs=9",
    ]
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        fmlp.fit(REGRESSION, overrides=overrides, out=run_dir)
    message = str(info.value)
    bad = int(re.search(r"at epoch (\d+)", message).group(1))
    assert "optimizer.learning_rate=4" in message
    assert bad >= 2

    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, bad))  # only the good epochs
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    cfg = config.load(run_dir / "config.yaml")
    dataset = fmlp.run.load_dataset(cfg)
    assert rows[0]["val_mse"] < 0.5 * float(np.var(dataset.y_val))  # a good first epoch
    assert max(step_dirs(run_dir / "checkpoints" / "latest")) == bad - 1

    latest = fmlp.run.restore_params(run_dir)
    check_float32_params(latest, sizes(cfg))
    val = fmlp.run.evaluate_split(cfg, dataset, latest, "val")
    assert val["mse"] == pytest.approx(rows[-1]["val_mse"], rel=1e-5)
    best = fmlp.run.restore_params(run_dir, best=True)
    val = fmlp.run.evaluate_split(cfg, dataset, best, "val")
    assert val["mse"] == pytest.approx(min(r["val_mse"] for r in rows), rel=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_out_dir_holding_a_run_is_refused_untouched(cls_run: Run):
    before = snapshot(cls_run.dir)
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        fmlp.fit(CLASSIFICATION, overrides=["train.epochs=1"], out=cls_run.dir)
    assert snapshot(cls_run.dir) == before


def test_resume_of_a_directory_without_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    before = snapshot(tmp_path)
    with pytest.raises(RunDirectoryError, match=r"config\.yaml"):
        fmlp.fit(CLASSIFICATION, resume=tmp_path)
    assert snapshot(tmp_path) == before


def test_resume_may_change_the_unroll(cls_run: Run):
    asked = dataclasses.replace(cls_run.cfg, train=dataclasses.replace(cls_run.cfg.train, unroll=4))
    resumed = fmlp.run.RunDir(cls_run.dir).resumed_config(asked)
    assert resumed.train.unroll == 4
    assert resumed == dataclasses.replace(asked, run=resumed.run)


def test_resume_with_a_changed_model_is_refused_untouched(cls_run: Run):
    before = snapshot(cls_run.dir)
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        fmlp.fit(
            CLASSIFICATION,
            overrides=["train.epochs=30", "train.checkpoint_every=5", "train.keep_checkpoints=3",
                       "model.hidden=[8]"],
            resume=cls_run.dir,
        )  # fmt: skip
    assert snapshot(cls_run.dir) == before


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gzip"])
def test_corrupt_fashion_mnist_file_is_named(tmp_path, compressed):
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("t10k", 20)):
        images = idx(rng.integers(0, 256, (n, 28, 28)))
        (fashion / f"{split}-images-idx3-ubyte").write_bytes(images)
        (fashion / f"{split}-labels-idx1-ubyte").write_bytes(idx(np.arange(n) % 10))
    broken = fashion / "train-images-idx3-ubyte"
    if compressed:  # a download cut short
        payload = gzip.compress(broken.read_bytes())
        broken.unlink()
        broken = broken.with_name(broken.name + ".gz")
        broken.write_bytes(payload[: len(payload) // 2])
    else:  # the header announces 50 images; half of them are there
        broken.write_bytes(broken.read_bytes()[: 16 + 25 * 784])
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=re.escape(str(broken))):
        fmlp.fit(FASHION, overrides=[f"data.path={fashion}", "train.epochs=1"], out=run_dir)
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- load / evaluate


def test_load_predicts_probabilities_on_raw_features(cls_run: Run):
    params, predict = fmlp.load(cls_run.dir)
    assert_params_equal(params, cls_run.state.params)
    raw = raw_test_split(cls_run.cfg)
    probs = np.asarray(predict(raw.x_test))
    assert probs.shape == (len(raw.x_test), 3)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == raw.y_test))
    assert accuracy == pytest.approx(cls_run.history["summary"]["test_accuracy"], abs=0.01)
    with pytest.raises(DataError, match=r"\(batch, 2\).*\(5, 3\)"):
        predict(np.zeros((5, 3), np.float32))


def test_load_predicts_regression_outputs_on_raw_features(reg_run: Run):
    _, predict = fmlp.load(reg_run.dir)
    raw = raw_test_split(reg_run.cfg)
    out = np.asarray(predict(raw.x_test))
    assert out.shape == raw.y_test.shape == (len(raw.x_test), 2)
    mse = float(np.mean((out - raw.y_test) ** 2))
    assert mse == pytest.approx(reg_run.history["summary"]["test_mse"], rel=1e-3)
    with pytest.raises(DataError, match="shape"):
        predict(np.zeros((4, 7), np.float32))


def test_evaluate_run_on_validation_split(tmp_path, cls_run: Run):
    run_dir = tmp_path / "run"
    shutil.copytree(cls_run.dir, run_dir)
    report = fmlp.run.evaluate_run(run_dir, split="val")
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert report["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert report["accuracy"] == pytest.approx(last["val_accuracy"], abs=1e-6)
    assert json.loads((run_dir / "eval_val.json").read_text()) == report
    assert_png(run_dir / "plots" / "confusion_val.png")
    confusion = np.asarray(report["confusion"])
    assert confusion.shape == (3, 3)
    assert confusion.sum() == len(fmlp.run.load_dataset(cls_run.cfg).x_val)


def test_progress_bar_is_drawn_when_asked(reg_run_and_stderr):
    # run.progress=always: the tqdm bar reaches stderr. test_cli checks that 'auto' draws
    # none when stderr is a pipe; this shows that check looks for the right thing.
    _, stderr = reg_run_and_stderr
    assert "%|" in stderr and "30/30" in stderr


# ----------------------------------------------------------------------------- the loop's features


def test_early_stopping_stops_at_the_right_epoch_of_a_scripted_sequence():
    def stopped(mode, patience, min_delta, values):
        cfg = config.from_dict(
            {"train": {"early_stopping": {"patience": patience, "min_delta": min_delta}}}
        )
        watched = "val_accuracy" if mode == "max" else "val_loss"
        run = types.SimpleNamespace(
            cfg=cfg, best=fmlp.run.Best(mode, min_delta), watched=watched, stopped=None
        )
        for epoch, value in enumerate(values, 1):
            fmlp.run.stop_early(run, fmlp.run.EpochResult(epoch, {}, {watched: value}, 0.0))
            if run.stopped is not None:
                break
        return run.stopped, run.best.epoch

    # 0.605 gains less than min_delta on 0.6; 0.62 gains; 0.625 and 0.629 do not: stop at 6.
    assert stopped("max", 2, 0.01, [0.5, 0.6, 0.605, 0.62, 0.625, 0.629, 0.9]) == (6, 4)
    # A tie is no gain; the loss is watched downwards.
    assert stopped("min", 3, 0.0, [1.0, 0.8, 0.8, 0.9, 0.7, 0.75, 0.7, 0.71]) == (8, 5)
    assert stopped("max", 3, 0.0, [0.1, 0.2, 0.3, 0.4]) == (None, 4)  # never stale


FEATURES = (
    CLASSIFICATION,
    "optimizer.name=adamw",
    "optimizer.learning_rate=0.05",
    "optimizer.weight_decay=0.01",
    "optimizer.b2=0.99",
    "optimizer.schedule=plateau",
    "optimizer.warmup_epochs=1",
    "optimizer.plateau.patience=1",
    "train.accumulate=5",  # 12 mini-batches an epoch: the accumulation spans epochs
    "train.early_stopping.patience=3",
    "train.restore_best=true",
    "train.checkpoint_every=100",
    "train.check_gradients_every=2",
)
FEATURES_EPOCHS = 16  # early stopping ended the run at epoch 8 when written (best: epoch 5)
SPLIT_AT = 3  # the resumed run's first part trains this many epochs
WATCHED = ("run.tensorboard=true", "run.histogram_every=2", "run.progress=always")


@pytest.fixture(scope="module")
def feature_runs(tmp_path_factory) -> dict[str, Any]:
    """Every feature of the loop on, trained in one go (no progress bar), and trained
    SPLIT_AT epochs then resumed with TensorBoard events and the in-epoch progress bar (from
    each process's second epoch on); then that stopped run resumed once more."""
    reference = fit_run(
        tmp_path_factory, *FEATURES, f"train.epochs={FEATURES_EPOCHS}", "run.progress=never",
        name="features",
    )  # fmt: skip
    split = tmp_path_factory.mktemp("features-split") / "run"
    overrides = [*FEATURES[1:], *WATCHED]
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setattr(fmlp.run, "PROGRESS_AFTER", 0.0)
        fmlp.fit(CLASSIFICATION, overrides=[*overrides, f"train.epochs={SPLIT_AT}"], out=split)
        first_part = read_jsonl(split / "metrics.jsonl")
        state, history = fmlp.fit(
            CLASSIFICATION, overrides=[*overrides, f"train.epochs={FEATURES_EPOCHS}"], resume=split
        )
    before = snapshot(split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = fmlp.fit(
            CLASSIFICATION, overrides=[*overrides, f"train.epochs={FEATURES_EPOCHS}"], resume=split
        )
    return {
        "reference": reference,
        "split": Run(state, history, split, config.load(split / "config.yaml")),
        "first part": first_part,
        "stderr": stderr.getvalue(),
        "again": (again, before, [str(w.message) for w in caught], snapshot(split)),
    }


def test_early_stopping_ends_the_run_and_tests_the_best_epoch(feature_runs):
    run = feature_runs["reference"]
    rows, summary = run.history["epochs"], run.history["summary"]
    accuracy = [r["val_accuracy"] for r in rows]
    best = accuracy.index(max(accuracy)) + 1
    assert summary["best_epoch"] == best
    assert summary["stopped_epoch"] == summary["epochs"] == len(rows) == best + 3  # patience
    assert len(rows) < FEATURES_EPOCHS  # it did stop early
    # The best checkpoint is the best epoch's; latest the last's (the stopping epoch).
    assert step_dirs(run.dir / "checkpoints" / "best") == [best]
    assert max(step_dirs(run.dir / "checkpoints" / "latest")) == len(rows)
    # train.restore_best: the test split was evaluated on the best params, which fit returns.
    assert summary["tested_epoch"] == int(run.state.epoch) == best
    assert_params_equal(run.state.params, fmlp.run.restore_params(run.dir, best=True))
    dataset = fmlp.run.load_dataset(run.cfg)
    test = fmlp.run.evaluate_split(run.cfg, dataset, run.state.params, "test")
    assert summary["test_accuracy"] == pytest.approx(test["accuracy"], abs=1e-7)
    latest = fmlp.run.evaluate_split(run.cfg, dataset, fmlp.run.restore_params(run.dir), "val")
    assert latest["accuracy"] == pytest.approx(rows[-1]["val_accuracy"], abs=1e-7)


def test_plateau_lowers_the_rate_after_an_epoch_without_a_better_validation_loss(feature_runs):
    rows = feature_runs["reference"].history["epochs"]
    peak = 0.05
    assert rows[0]["learning_rate"] < peak  # the warm-up's first epoch
    assert rows[1]["learning_rate"] == pytest.approx(peak)
    # patience 1, factor 0.5: fed from epoch 2 on (after the warm-up); an epoch whose loss is
    # not below the best so far (optax's relative 1e-4) halves the next epoch's rate.
    best, drops = math.inf, 0
    for row, after in itertools.pairwise(rows[1:]):
        improved = row["val_loss"] < (1 - 1e-4) * best
        best = min(best, row["val_loss"]) if improved else best
        factor = 1.0 if improved else 0.5
        assert after["learning_rate"] == pytest.approx(factor * row["learning_rate"]), rows
        drops += not improved
    assert drops >= 2


def test_resume_with_every_feature_on_is_bitwise_identical(feature_runs):
    reference, split = feature_runs["reference"], feature_runs["split"]
    assert len(feature_runs["first part"]) == SPLIT_AT < len(split.history["epochs"])
    assert_params_equal(fmlp.run.restore_params(split.dir), fmlp.run.restore_params(reference.dir))
    assert_params_equal(split.state.params, reference.state.params)  # the best epoch's
    strip = lambda rows: [without_seconds(r) for r in rows]
    assert strip(read_jsonl(split.dir / "metrics.jsonl")) == strip(reference.history["epochs"])
    keys = ("best_epoch", "stopped_epoch", "tested_epoch", "test_accuracy", "test_loss")
    assert {k: split.history["summary"][k] for k in keys} == {
        k: reference.history["summary"][k] for k in keys
    }


def test_resuming_a_stopped_run_says_so_and_trains_nothing(feature_runs):
    (state, history), before, messages, after = feature_runs["again"]
    split = feature_runs["split"]
    stopped = split.history["summary"]["stopped_epoch"]
    assert len(messages) == 1, messages
    assert f"early stopping ended this run at epoch {stopped}" in messages[0]
    assert "not trained on" in messages[0]
    assert after == before  # nothing written
    assert history["summary"] == split.history["summary"]
    assert_params_equal(state.params, split.state.params)


def test_metrics_csv_holds_the_rows_of_metrics_jsonl(feature_runs):
    split = feature_runs["split"]
    rows = read_jsonl(split.dir / "metrics.jsonl")
    checked = [
        r | {"gradient_check": max(r["gradient_check"].values())} if "gradient_check" in r
        else r | {"gradient_check": None} for r in rows
    ]  # fmt: skip
    assert read_csv(split.dir / "metrics.csv") == checked
    assert [r["gradient_check"] is not None for r in checked] == [r["epoch"] % 2 == 0 for r in rows]


def test_tensorboard_events_read_back(feature_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    split = feature_runs["split"]
    rows, summary = split.history["epochs"], split.history["summary"]
    events = EventAccumulator(str(split.dir / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    for key in ("train_loss", "val_loss", "val_accuracy", "learning_rate"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-7)) for r in rows], key
    sizes = {"W": [(2, 32), (32, 3)], "b": [(32,), (3,)]}
    for kind in ("weights", "gradients"):
        for layer in (0, 1):
            for name in ("W", "b"):
                histograms = events.Histograms(f"{kind}/layer{layer}/{name}")
                assert [h.step for h in histograms] == list(range(2, len(rows) + 1, 2))
                count = math.prod(sizes[name][layer])
                assert all(h.histogram_value.num == count for h in histograms)
    weights = events.Histograms("weights/layer0/W")[-1].histogram_value
    gradients = events.Histograms("gradients/layer0/W")[-1].histogram_value
    assert weights.max > weights.min and gradients.max > gradients.min
    session = EventAccumulator(str(split.dir / "tensorboard" / "hparams"))
    session.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        session.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert start["optimizer.schedule"].string_value == "plateau"
    assert start["train.accumulate"].number_value == 5
    assert start["model.hidden"].string_value == "[32]"
    final = session.Scalars("test_accuracy")[-1]
    assert final.value == pytest.approx(summary["test_accuracy"], rel=1e-7)


def test_the_progress_bar_advances_inside_a_long_epoch(feature_runs):
    stderr = feature_runs["stderr"]
    steps = re.findall(
        r"epoch (\d+): +\d+%.*?(\d+)/12 .*?loss \d\.\d{4}, [\d,]+ examples/s", stderr
    )
    assert steps, stderr[-2000:]
    # Each epoch after one (of this process) longer than PROGRESS_AFTER: here, from the second.
    assert {int(epoch) for epoch, _ in steps} == set(range(2, SPLIT_AT + 1)) | set(
        range(SPLIT_AT + 2, len(feature_runs["split"].history["epochs"]) + 1)
    )
    assert {int(done) for _, done in steps} >= {12}


# ----------------------------------------------------------------------------- building blocks

BLOCKS = (
    CLASSIFICATION,
    "model.hidden=[16, 16]",
    "model.activation=[gelu, silu]",
    "model.dropout=[0.3, 0.1]",
    "model.layer_norm=true",
    "model.residual=true",
    "model.label_smoothing=0.1",
    "data.class_weight=balanced",
    "train.checkpoint_every=1",
    "run.progress=never",
)


@pytest.fixture(scope="module")
def blocks_run(tmp_path_factory) -> Run:
    """Four epochs of lecture_classification with every model block turned on."""
    return fit_run(tmp_path_factory, *BLOCKS, "train.epochs=4", name="blocks")


def test_a_run_with_every_block_trains_and_saves_its_layer_norm(blocks_run: Run):
    summary, rows = blocks_run.history["summary"], read_jsonl(blocks_run.dir / "metrics.jsonl")
    assert summary["test_accuracy"] > 0.5  # chance: 1/3
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    saved = config.load(blocks_run.dir / "config.yaml")
    assert saved == blocks_run.cfg and saved.model.loss == "cross_entropy"
    params = fmlp.run.restore_params(blocks_run.dir)
    assert [sorted(layer) for layer in params] == [["W", "b", "offset", "scale"]] * 2 + [["W", "b"]]
    assert not np.allclose(params[1]["scale"], 1.0)  # the layer norm's scale was trained
    assert_params_equal(params, blocks_run.state.params)


def test_a_resumed_run_with_dropout_is_bitwise_the_uninterrupted_one(tmp_path, blocks_run: Run):
    out = tmp_path / "run"
    fmlp.fit(BLOCKS[0], overrides=[*BLOCKS[1:], "train.epochs=2"], out=out)
    state, _ = fmlp.fit(BLOCKS[0], overrides=[*BLOCKS[1:], "train.epochs=4"], resume=out)
    assert_params_equal(state.params, blocks_run.state.params)
    assert_params_equal(fmlp.run.restore_params(out), blocks_run.state.params)
    reference = [without_seconds(r) for r in read_jsonl(blocks_run.dir / "metrics.jsonl")]
    assert [without_seconds(r) for r in read_jsonl(out / "metrics.jsonl")] == reference


def test_predict_and_evaluation_run_without_dropout(blocks_run: Run):
    params, predict = fmlp.load(blocks_run.dir)
    raw = raw_test_split(blocks_run.cfg)
    probs = np.asarray(predict(raw.x_test))
    np.testing.assert_array_equal(probs, np.asarray(predict(raw.x_test)))  # no masks drawn
    ds = fmlp.run.load_dataset(blocks_run.cfg)
    net = train.build_model(blocks_run.cfg, num_features=2, num_outputs=3)
    np.testing.assert_allclose(probs, net.apply(params, ds.x_test), rtol=1e-5, atol=1e-6)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == raw.y_test))
    assert accuracy == pytest.approx(blocks_run.history["summary"]["test_accuracy"], abs=1e-6)
    report = fmlp.run.evaluate_checkpoint(blocks_run.dir, split="test")
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_class_weights_of_the_wrong_length_stop_the_run_before_it_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.class_weight: expected one weight per class \(3"):
        fmlp.fit(CLASSIFICATION, overrides=["data.class_weight=[1.0, 2.0]"], out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> Run:
    return fit_run(
        tmp_path_factory, CLASSIFICATION, "data.name=lecture_multilabel", "model.output=sigmoid",
        "model.hidden=[32, 32]", "model.activation=relu", "optimizer.name=adam",
        "optimizer.learning_rate=0.01", "train.epochs=40", "train.checkpoint_every=40",
        "run.progress=never", name="multilabel",
    )  # fmt: skip


def test_multi_label_training_learns_every_label(multilabel_run: Run):
    summary = multilabel_run.history["summary"]
    assert multilabel_run.cfg.model.loss == "binary_cross_entropy"
    # Chance is about 1/2 per label; label 1 (an XOR of signs) needs the hidden layers.
    assert summary["test_accuracy"] > 0.9
    assert len(summary["test_label_accuracy"]) == len(summary["test_label_f1"]) == 3
    assert min(summary["test_label_accuracy"]) > 0.85 and summary["test_f1"] > 0.85
    rows = read_jsonl(multilabel_run.dir / "metrics.jsonl")
    assert {"val_accuracy", "val_f1"} <= set(rows[-1]) and rows[-1]["val_accuracy"] > 0.9
    _, predict = fmlp.load(multilabel_run.dir)
    raw = raw_test_split(multilabel_run.cfg)
    probs = np.asarray(predict(raw.x_test))
    assert probs.shape == raw.y_test.shape == (len(raw.x_test), 3)
    assert np.all((probs >= 0) & (probs <= 1))
    accuracy = float(np.mean((probs > 0.5) == (raw.y_test > 0.5)))
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)


def test_a_huber_regression_reports_mse_and_mae(tmp_path_factory):
    run = fit_run(
        tmp_path_factory, REGRESSION, "model.loss=huber", "train.epochs=3", "run.progress=never",
        name="huber",
    )  # fmt: skip
    summary = run.history["summary"]
    assert run.cfg.model.output == "identity"
    assert 0 < summary["test_mae"] < 2 and 0 < summary["test_mse"] < 5
    rows = read_jsonl(run.dir / "metrics.jsonl")
    assert {"val_mse", "val_mae"} <= set(rows[-1])
