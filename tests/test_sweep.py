"""Tests for ``fmlp sweep``: members trained in one program equal separate ``fmlp train`` runs."""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import yaml

import fmlp
from fmlp import sweep
from fmlp.errors import ConfigError, RunDirectoryError
from fmlp.sweep import SweepDir

ROOT = Path(__file__).resolve().parents[1]
FMLP = Path(sys.executable).with_name("fmlp")
BASE = {
    "data": {"name": "lecture_classification", "synthetic_examples": 400},
    "model": {"hidden": [8]},
    "train": {"epochs": 3, "batch_size": 32},
    "run": {"progress": "never"},
}
GRID = ["optimizer.learning_rate=0.3,0.05"]


def params_of(run_dir) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(fmlp.run.restore_params(run_dir))]


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sweep") / "grid"
    # Requiring the swept keys to be vectorized changes nothing: one program, as with auto.
    return sweep.sweep(
        BASE, GRID, seeds=2, out=out, vectorize=["optimizer.learning_rate", "train.seed"]
    )


def assert_members_are_their_train_runs(result, base, keys, tmp_path) -> None:
    """Each member's params, validation curve and test accuracy are those of ``fmlp train``
    with the member's values of ``keys``."""
    for row in result["members"]:
        overrides = [f"{key}={row[key]}" for key in keys]
        out = tmp_path / f"m{row['member']}"
        _, history = fmlp.fit(base, overrides=overrides, out=out)
        for ours, theirs in zip(params_of(row["run_dir"]), params_of(out)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        lines = (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        logged = [json.loads(line) for line in lines]
        want = [e["val_accuracy"] for e in history["epochs"]]
        np.testing.assert_allclose([e["val_accuracy"] for e in logged], want, atol=1e-6)
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["test_accuracy"] == pytest.approx(row["test_accuracy"])


def test_members_equal_separate_train_runs(swept, tmp_path):
    assert len(swept["members"]) == 4 and swept["summary"]["groups"] == 1  # one program
    keys = ["optimizer.learning_rate", "train.seed"]
    assert_members_are_their_train_runs(swept, BASE, keys, tmp_path)


def test_members_with_dropout_train_with_it_as_their_train_runs(tmp_path):
    base = BASE | {"model": {"hidden": [8], "dropout": 0.3}}
    result = sweep.sweep(base, GRID, out=tmp_path / "s")
    assert result["summary"]["groups"] == 1
    assert_members_are_their_train_runs(result, base, ["optimizer.learning_rate"], tmp_path)


def test_watched_members_check_gradients_and_write_tensorboard_as_their_runs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = BASE | {
        "model": {"hidden": [8], "dropout": 0.2},
        "train": {**BASE["train"], "check_gradients_every": 2},
        "run": {"progress": "never", "tensorboard": True, "histogram_every": 1},
    }
    result = sweep.sweep(base, GRID, out=tmp_path / "s")
    assert result["summary"]["groups"] == 1
    assert_members_are_their_train_runs(result, base, ["optimizer.learning_rate"], tmp_path)

    def rows(run_dir) -> list[dict]:
        return [
            json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()
        ]

    for row in result["members"]:
        ours, theirs = rows(row["run_dir"]), rows(tmp_path / f"m{row['member']}")
        checked = [r.get("gradient_check") for r in ours]
        assert [c is not None for c in checked] == [False, True, False]  # every 2nd epoch
        assert [r.get("gradient_check") is not None for r in theirs] == [False, True, False]
        assert (
            set(checked[1])
            == set(theirs[1]["gradient_check"])
            == {f"[{layer}]['{name}']" for layer in (0, 1) for name in ("W", "b")}
        )
        assert max(checked[1].values()) < 1e-4  # the engine agrees with jax.grad
        events = EventAccumulator(
            str(Path(row["run_dir"], "tensorboard")), size_guidance={"histograms": 0}
        )
        events.Reload()
        assert [e.step for e in events.Scalars("val_accuracy")] == [1, 2, 3]
        np.testing.assert_allclose(
            [e.value for e in events.Scalars("val_accuracy")], [r["val_accuracy"] for r in ours]
        )
        assert [h.step for h in events.Histograms("gradients/layer0/W")] == [1, 2, 3]


@pytest.mark.parametrize(
    ("hidden", "grid", "programs"),
    [
        ([8], "model.dropout=0.1,0.3", 1),
        ([8, 8], "model.dropout=[0.1,0.0],[0.3,0.0]", 1),
        ([8], "model.dropout=0.0,0.2", 2),  # without dropout: the program without
        ([8], "model.label_smoothing=0.05,0.2", 1),
    ],
)
def test_dropout_and_label_smoothing_train_in_one_program(tmp_path, hidden, grid, programs):
    base = BASE | {"model": {"hidden": hidden}}
    result = sweep.sweep(base, [grid], out=tmp_path / "s")
    assert result["summary"]["groups"] == programs
    assert_members_are_their_train_runs(result, base, [grid.partition("=")[0]], tmp_path)


def test_seeds_train_with_the_class_weights_of_their_own_split(tmp_path):
    # Each seed splits off its own validation set, so balanced weights differ per member.
    base = BASE | {"data": {**BASE["data"], "class_weight": "balanced"}}
    result = sweep.sweep(base, [], seeds=2, out=tmp_path / "s")
    assert result["summary"]["groups"] == 1
    assert_members_are_their_train_runs(result, base, ["train.seed"], tmp_path)


def test_the_table_is_ranked_and_the_directory_complete(swept):
    rows = swept["members"]
    scores = [r["best_val_accuracy"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    directory = SweepDir(swept["dir"])
    table = pd.read_csv(directory.path / SweepDir.TABLE)
    assert list(table["member"]) == [r["member"] for r in rows]
    assert {"optimizer.learning_rate", "train.seed", "best_epoch", "test_accuracy"} <= set(table)
    assert (directory.path / SweepDir.PLOT).stat().st_size > 0
    assert 0.0 <= swept["summary"]["ensemble_test_accuracy"] <= 1.0
    report = fmlp.run.evaluate_run(rows[0]["run_dir"], split="val", best=True)  # members are runs
    assert report["accuracy"] == pytest.approx(rows[0]["best_val_accuracy"])


def test_one_member_at_a_time_gives_the_same_members(swept, tmp_path):
    alone = sweep.sweep(BASE, GRID, seeds=2, out=tmp_path / "alone", vectorize="never")
    assert alone["summary"]["groups"] == 4
    by_member = {r["member"]: r for r in swept["members"]}
    for row in alone["members"]:
        for a, b in zip(params_of(row["run_dir"]), params_of(by_member[row["member"]]["run_dir"])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_diverging_member_is_frozen_and_the_others_finish(tmp_path):
    base = BASE | {"data": {"name": "lecture_regression", "synthetic_examples": 400}}
    base = base | {"model": {"hidden": [8], "output": "identity"}}
    result = sweep.sweep(base, ["optimizer.learning_rate=1e6,0.01"], out=tmp_path / "s")
    status = {r["optimizer.learning_rate"]: r["status"] for r in result["members"]}
    assert status == {"1e6": "diverged", "0.01": "done"}
    assert result["members"][0]["optimizer.learning_rate"] == "0.01"  # ranked first
    diverged = next(r for r in result["members"] if r["status"] == "diverged")
    assert not (Path(diverged["run_dir"]) / "summary.json").exists()


def test_resume_after_an_interruption_is_bitwise(swept, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(swept["dir"], copy)
    for member in (copy / "members").iterdir():  # as if stopped after epoch 2
        shutil.rmtree(member / "checkpoints" / "latest" / "3")
        lines = (member / "metrics.jsonl").read_text().splitlines()[:2]
        (member / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        (member / "summary.json").unlink()
    (copy / SweepDir.TABLE).unlink()
    resumed = sweep.sweep(None, [], resume=copy)
    for row in resumed["members"]:
        original = Path(swept["dir"]) / "members" / str(row["member"])
        for a, b in zip(params_of(row["run_dir"]), params_of(original)):
            np.testing.assert_array_equal(a, b)


def test_cli_sweep_and_ensemble_predict(swept, tmp_path):
    rows = swept["members"]
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    pd.DataFrame(x, columns=["x0", "x1"]).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "p.csv"
    result = subprocess.run(
        [str(FMLP), "predict", swept["dir"], str(tmp_path / "in.csv"), "--top", "2", "--proba",
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    want = np.mean([np.asarray(fmlp.load(r["run_dir"])[1](x)) for r in rows[:2]], axis=0)
    got = pd.read_csv(out).filter(like="proba_").to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cli_prints_the_ranked_table(tmp_path):
    result = subprocess.run(
        [str(FMLP), "sweep", "configs/lecture_classification.yaml",
         "optimizer.learning_rate=0.3,0.05", "train.epochs=2", "run.progress=never",
         "--vectorize", "optimizer.learning_rate", "--out", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.split()[:2] == ["optimizer.learning_rate", "status"]
    assert "train.epochs" not in header  # a single value is a plain override
    assert "ensemble_test_accuracy (top 2)" in result.stdout
    assert "(2 members, 1 program)" in result.stdout


SHAPES = r"changes shapes or programs, so its values train in separate groups.* are optimizer\."


@pytest.mark.parametrize(
    ("args", "vectorize", "match"),
    [
        (
            ["optimizer.learnin_rate=0.1,0.2"],
            "auto",
            r"sweep member optimizer\.learnin_rate=0\.1: .*learnin_rate",
        ),
        (["optimizer.learning_rate=0.1,,0.2"], "auto", r"learning_rate has an empty value"),
        (["optimizer.learning_rate"], "auto", r"'optimizer\.learning_rate' is not key=v1,v2"),
        (["optimizer.learning_rate=-1,0.1"], "auto", r"sweep member optimizer\.learning_rate=-1: "),
        (
            ["model.hidden=[8],[16]"],
            "model.hidden",
            rf"--vectorize model\.hidden: model\.hidden {SHAPES}",
        ),
        (
            ["optimizer.learning_rate=0.1,0.2", "train.batch_size=16,32"],
            "optimizer.learning_rate,train.batch_size",
            rf"--vectorize train\.batch_size: train\.batch_size {SHAPES}",
        ),
        (
            ["model.activation=tanh,relu"],
            "model.activation",
            rf"--vectorize model\.activation: model\.activation {SHAPES}",
        ),
        (
            GRID,
            "optimizer.learning_rate,train.seed",
            r"--vectorize train\.seed: train\.seed is not swept \(swept keys: optimizer\.",
        ),
        (
            ["model.dropout=0.0,0.2,0.3"],
            "model.dropout",
            r"--vectorize model\.dropout: its values 0\.0 against 0\.2, 0\.3 cannot train in one "
            r"program: a rate of 0",
        ),
        (GRID, "optimizer.learning_rate,", r"--vectorize must be auto, never or swept keys"),
    ],
)
def test_bad_grids_exit_2_naming_the_key(tmp_path, args, vectorize, match):
    with pytest.raises(ConfigError, match=match):
        sweep.sweep(BASE, args, out=tmp_path / "s", vectorize=vectorize)
    assert not (tmp_path / "s").exists()
    result = subprocess.run(
        [str(FMLP), "sweep", "configs/lecture_classification.yaml", *args, "--vectorize",
         vectorize, "--out", str(tmp_path / "s")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(match, result.stderr), result.stderr
    assert not (tmp_path / "s").exists()


def test_a_full_directory_and_a_non_sweep_are_refused(swept, tmp_path):
    with pytest.raises(RunDirectoryError, match="is not empty"):
        sweep.sweep(BASE, GRID, out=swept["dir"])
    with pytest.raises(RunDirectoryError, match=r"sweep\.yaml cannot be read"):
        sweep.sweep(None, [], resume=tmp_path)


def test_readme_sweep_commands_run_verbatim(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Sweeps", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    env = {"PATH": f"{FMLP.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    outputs = []
    for line in "".join(blocks).strip().splitlines():
        command = line.replace("runs/", f"{tmp_path}/")
        result = subprocess.run(
            command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    table = pd.read_csv(tmp_path / "lr-sweep" / SweepDir.TABLE)
    assert len(table) == 9 and set(table["status"]) == {"done"}
    assert len(pd.read_csv(tmp_path / "lr-search" / SweepDir.TABLE)) == 8
    predictions = pd.read_csv(io.StringIO(outputs[1]))
    assert list(predictions.columns) == ["prediction"] and len(predictions) == 5


def test_a_grid_larger_than_memory_is_refused_before_compiling(monkeypatch, tmp_path):
    need = 4 * 2 * (400 * 0.8 * 0.9 * (2 + 1) + 320)  # two training sets, roughly
    monkeypatch.setattr(fmlp.data, "available_memory", lambda: int(need))
    with pytest.raises(ConfigError, match=r"these 4 members .* about \d+ fit"):
        sweep.sweep(BASE, GRID, seeds=2, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("search", ["random", "optuna"])
def test_a_search_asks_in_batches_and_trains_each_batch_in_one_program(tmp_path, search):
    pytest.importorskip("optuna", reason="the search extra (scripts/setup.sh installs it)")
    grid = ["optimizer.learning_rate=0.01..0.5:log", "optimizer.momentum=0.0,0.9"]
    result = sweep.sweep(BASE, grid, out=tmp_path / "s", search=search, trials=4, batch=2)
    rows = result["members"]
    assert len(rows) == 4 and result["summary"]["groups"] == 2  # two asks, one program each
    rates = [float(r["optimizer.learning_rate"]) for r in rows]
    assert all(0.01 <= r <= 0.5 for r in rates) and len(set(rates)) == 4
    assert {r["optimizer.momentum"] for r in rows} <= {"0.0", "0.9"}
    spec = yaml.safe_load((tmp_path / "s" / SweepDir.SPEC).read_text())
    assert spec["search"] == search and len(spec["members"]) == 4
    with pytest.raises(RunDirectoryError, match="cannot be resumed"):
        sweep.sweep(None, [], resume=tmp_path / "s")


def test_a_bad_range_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate=0\.5\.\.0\.1 is not a range"):
        sweep.sweep(BASE, ["optimizer.learning_rate=0.5..0.1"], search="random", out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


EIGHT_DEVICES = """
import sys, jax
from fmlp import sweep
assert jax.device_count() == 8
base = {"data": {"name": "lecture_classification", "synthetic_examples": 400},
        "model": {"hidden": [8]}, "train": {"epochs": 2, "batch_size": 32},
        "run": {"progress": "never"}}
sweep.sweep(base, [sys.argv[2]], seeds=int(sys.argv[3]), out=sys.argv[1])
"""


@pytest.mark.parametrize(
    ("rates", "seeds"),
    [("0.4,0.3,0.2,0.1,0.05,0.03,0.02,0.01", 1), ("0.3,0.1,0.03,0.01", 2)],
    ids=["members split", "sets split"],
)
def test_members_split_over_eight_devices_train_as_on_one(tmp_path, rates, seeds):
    grid = f"optimizer.learning_rate={rates}"
    env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, str(tmp_path / "eight"), grid, str(seeds)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = BASE | {"train": {"epochs": 2, "batch_size": 32}}
    one = sweep.sweep(base, [grid], seeds=seeds, out=tmp_path / "one")
    for row in one["members"]:
        eight = tmp_path / "eight" / "members" / str(row["member"])
        for a, b in zip(params_of(eight), params_of(row["run_dir"])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_early_stopping_stops_each_member_as_its_own_run_would(tmp_path):
    base = BASE | {
        "train": {"epochs": 8, "batch_size": 32,
                  "early_stopping": {"patience": 1, "min_delta": 0.02}},
    }  # fmt: skip
    result = sweep.sweep(base, ["optimizer.learning_rate=1e-5,0.3"], out=tmp_path / "s")
    for row in result["members"]:
        lr = row["optimizer.learning_rate"]
        _, alone = fmlp.fit(base, overrides=[f"optimizer.learning_rate={lr}"], out=tmp_path / lr)
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["status"] == "stopped" and row["epochs"] == alone["summary"]["stopped_epoch"]
        for key in ("stopped_epoch", "best_epoch", "test_accuracy"):
            assert summary[key] == alone["summary"][key], key
    stopped = {r["optimizer.learning_rate"]: r["epochs"] for r in result["members"]}
    assert stopped["1e-5"] < stopped["0.3"]  # the slow member stopped first, alone


def test_a_search_without_optuna_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'fmlp\[search\]'"):
        sweep.sweep(BASE, GRID, search="optuna", out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
