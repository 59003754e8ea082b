"""fmlp bench: every contestant does fmlp's arithmetic, and the report has its fields."""

import functools
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

from fmlp import bench, cli

ROOT = Path(__file__).resolve().parents[1]
CLASSIFICATION = "configs/lecture_classification.yaml"  # synthetic data: trains in seconds
SIZES = (784, 16, 16, 10)  # as in the report tests below: jitted fmlp.nn.init compiles once
N, BATCH = 200, 32  # 7 batches, the last one 8 real examples and 24 masked out
STEPS = -(-N // BATCH)


PEER_MODULES = {
    "fmlp-jax": None,
    "jax-scan": None,
    "jax-step": None,
    "nnx": "flax",
    "equinox": "equinox",
    "torch": "torch",
    "sklearn": "sklearn",
}  # torch-compile does the same as torch after a ~30 s compile: the report's dparams shows it
# The JAX contestants share one optax tx, so a schedule and Nesterov reach them alike; torch
# (and sklearn, which has no schedule) take the per-step rates and the momentum flavour instead.
CASES = [(name, "momentum") for name in PEER_MODULES] + [
    (name, "nesterov-cosine") for name in ("torch", "sklearn")
]


def _optim(kind: str) -> "bench.Optim":
    if kind == "momentum":
        return bench.constant_sgd(0.1, 0.9, steps=STEPS)
    schedule = optax.cosine_decay_schedule(0.1, STEPS)
    tx = optax.sgd(schedule, momentum=0.9, nesterov=True)
    return bench.scheduled_sgd(tx, schedule, 0.9, nesterov=True, steps=STEPS)


@functools.cache
def _problem(kind: str, order_seed: int = 0) -> "bench.Problem":
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + 50, SIZES[0])).astype(np.float32)
    y = np.argmax(x[:, : SIZES[-1]], axis=1).astype(np.int32)
    params, _ = bench.initial(0, SIZES)
    _, key = bench.initial(order_seed, SIZES)
    return bench.make_problem(
        x[:N], y[:N], x[N:], y[N:], sizes=SIZES, batch_size=BATCH, epochs=1,
        optim=_optim(kind), params=params, key=key,
    )  # fmt: skip


@functools.cache
def _reference(kind: str) -> list:
    """fmlp's params after one epoch; with the schedule jax-step's, equal to fmlp's as tested."""
    return bench.train_epochs(_problem(kind), "fmlp" if kind == "momentum" else "jax-step", 1)


def _assert_same(params: list, ref: list) -> None:
    for (w, b), (w_ref, b_ref) in zip(params, ref, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_every_contestant_reaches_fmlps_params_after_an_epoch(name, kind):
    if PEER_MODULES[name] is not None:
        pytest.importorskip(PEER_MODULES[name])
    problem = _problem(kind)
    if name == "sklearn" and kind != "momentum":
        assert "constant learning rate" in bench.CONTESTANTS[name](problem).notes
        return
    _assert_same(bench.train_epochs(problem, name, 1), _reference(kind))


def test_the_check_tells_training_and_batch_order_apart():
    problem = _problem("momentum")
    ref = _reference("momentum")
    assert bench.params_difference(problem.params, ref) > 1e-2  # an epoch moves the params
    reordered = bench.train_epochs(_problem("momentum", order_seed=1), "jax-step", 1)
    assert bench.params_difference(reordered, ref) > 1e-3  # same init, batches in another order


def test_the_batches_are_fmlps_padded_epoch():
    idx, mask = _problem("momentum").orders[0]
    assert idx.shape == mask.shape == (STEPS, BATCH)
    assert sorted(idx.reshape(-1)[mask.reshape(-1) > 0]) == list(range(N))
    assert mask.sum() == N and mask[-1].sum() == N - (STEPS - 1) * BATCH


def test_parse_case():
    assert bench.parse_case("784-256-256-10:128") == bench.Case((784, 256, 256, 10), 128)
    assert bench.parse_case("784-10") == bench.Case((784, 10), 128)
    assert bench.parse_case("784-10:64:bfloat16") == bench.Case((784, 10), 64, "bfloat16")
    with pytest.raises(ValueError, match="MODEL"):
        bench.parse_case("784-10:64:float16")


def test_a_contestant_that_fails_is_a_skipped_row(monkeypatch):
    def broken(problem):
        trainer = bench.jax_step_trainer(problem)

        def epoch(state, e):
            raise RuntimeError("no compiler\nmore detail")

        return bench.Trainer(trainer.init, epoch, trainer.export)

    monkeypatch.setitem(bench.CONTESTANTS, "broken", broken)
    rows = bench.throughput(
        _problem("momentum"), ["jax-step", "broken"], epochs=1, rounds=2, peak_flops=1e9
    )
    assert [r["status"] for r in rows] == ["ok", "skipped"], rows[0]["notes"]
    assert len(rows[0]["examples_per_second"]["per_round"]) == 1  # round 1: round 0 warmed up
    assert rows[1]["notes"] == "RuntimeError: no compiler"


def test_time_to_accuracy_says_when_the_target_is_not_reached():
    (row,) = bench.time_to_accuracy(
        _problem("momentum"), ["jax-step"], target=1.1, epochs=1, rounds=1
    )
    assert row["seconds_to_target"] is None and row["epoch"] is None
    assert row["notes"] == "not reached in 1 epochs"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion(tmp_path):
    """A tiny Fashion-MNIST look-alike: 160 train and 40 test random 28x28 images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("t10k", 40)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


ROW_FIELDS = {
    "contestant", "model", "batch", "dtype", "train_examples", "status", "examples_per_second",
    "compile_seconds", "epoch_seconds", "seconds_per_epoch", "epochs", "test_accuracy",
    "achieved_gflops", "fraction_of_matmul_peak", "params_difference_vs_fmlp", "fmlp_speedup",
    "notes",
}  # fmt: skip


def test_report_fields_and_table(fashion, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    out = tmp_path / "bench.json"
    argv = ["--data-path", str(fashion), "--sizes", "784-16-16-10:32", "--epochs", "2"]
    argv += ["--rounds", "2", "--only", "fmlp,jax-step,torch", "--matmul-size", "64"]
    assert cli.main(["bench", *argv, "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    meta = report["meta"]
    assert meta["command"] == "fmlp bench " + " ".join([*argv, "--out", str(out)])
    assert {"date", "cpu", "cpu_count", "backend", "device"} <= set(meta)
    assert {"jax", "optax", "flax", "equinox", "torch", "scikit-learn"} <= set(meta["versions"])
    assert report["matmul"]["float32"]["gflops"] > 0
    fmlp, jax_step, torch = report["results"]
    assert set(fmlp) == set(jax_step) == ROW_FIELDS
    assert fmlp["fmlp_speedup"] == 1.0 and fmlp["params_difference_vs_fmlp"] == 0.0
    assert jax_step["params_difference_vs_fmlp"] < 1e-5
    assert jax_step["test_accuracy"] == fmlp["test_accuracy"]
    spread = jax_step["examples_per_second"]
    assert len(spread["per_round"]) == 2 and spread["min"] <= spread["median"] <= spread["max"]
    flops = bench.flops_per_example((784, 16, 16, 10)) * spread["median"]
    assert jax_step["achieved_gflops"] == pytest.approx(flops / 1e9)
    assert torch["status"] == "skipped"
    assert torch["notes"] == f"torch not installed: {bench.BENCH_HINT}"

    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(bench.THROUGHPUT_COLUMNS) + " |"
    assert [line.split(" | ")[0] for line in table[2:]] == ["| fmlp", "| jax-step", "| torch"]


def test_jax_scan_is_fmlps_epoch_written_by_hand(fashion, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--data-path", str(fashion), "--sizes", "784-16-10:64", "--sweep", "", "--epochs"]
    argv += ["2", "--rounds", "1", "--unroll", "2", "--only", "fmlp,jax-scan"]
    assert cli.main(["bench", *argv, "--matmul-size", "64", "--out", str(out)]) == 0

    fmlp, jax_scan = json.loads(out.read_text())["results"]
    assert jax_scan["contestant"] == "jax-scan" and jax_scan["status"] == "ok"
    assert jax_scan["params_difference_vs_fmlp"] < 1e-4
    assert jax_scan["test_accuracy"] == fmlp["test_accuracy"]
    assert jax_scan["fmlp_speedup"] > 0


def test_time_to_accuracy_report(fashion, tmp_path, capsys):
    out = tmp_path / "tta.json"
    overrides = ["train.epochs=2", "model.hidden=[16, 16]", "train.batch_size=32"]
    argv = ["--time-to-accuracy", "0.0", "--data-path", str(fashion), "--rounds", "1"]
    argv += ["--only", "fmlp,jax-step", "--out", str(out)]
    bench.main(argv + [a for o in overrides for a in ("--override", o)])

    report = json.loads(out.read_text())
    assert report["settings"]["epochs"] == 2
    fmlp, jax_step = report["results"]
    for row in (fmlp, jax_step):
        assert row["status"] == "ok" and row["epoch"] == 1  # every accuracy reaches 0.0
        assert (row["model"], row["batch"]) == ("784-16-16-10", 32)
        assert row["seconds_to_target"]["median"] > 0
    assert fmlp["test_accuracy"] == jax_step["test_accuracy"]
    assert "| " + " | ".join(bench.TTA_COLUMNS) + " |" in capsys.readouterr().out


def test_the_script_is_the_cli_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["scripts/bench.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "bench.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: fmlp bench ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "fmlp,jaxx"], "--only: unknown contestants ['jaxx']"),
        (["--epochs", "1", "--rounds", "1"], "--epochs x --rounds must be at least 2"),
        (["--unroll", "0"], "--unroll must be at least 1, got 0"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        ("model.activation=tanh", "tanh"),
        ("model.dropout=0.2", "dropout=0.2"),
        ("model.layer_norm=true", "layer_norm=True"),
    ],
)
def test_time_to_accuracy_rejects_a_model_it_cannot_mirror(
    fashion, tmp_path, capsys, override, shown
):
    argv = ["bench", "--time-to-accuracy", "0.5", "--data-path", str(fashion)]
    argv += ["--override", override, "--out", str(tmp_path / "tta.json")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "fmlp bench: error: --time-to-accuracy needs model.activation=relu" in err
    assert shown in err and not (tmp_path / "tta.json").exists()


IMPORTS_CHECK = """
import sys
import fmlp.cli

def loaded(*names):
    return sorted(m for m in sys.modules for n in names if m == n or m.startswith(n + "."))

config, out = sys.argv[1:]
assert fmlp.cli.main(["train", config, "train.epochs=1", "run.progress=never", "--out", out]) == 0
assert not loaded("fmlp.bench"), loaded("fmlp.bench")
import fmlp.bench
peers = ("torch", "flax", "equinox", "sklearn")
assert not loaded(*peers), loaded(*peers)
"""


def test_only_fmlp_bench_loads_the_benchmark_and_only_its_contestants_load_peers(tmp_path):
    command = [sys.executable, "-c", IMPORTS_CHECK, CLASSIFICATION, str(tmp_path / "run")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
