"""Scale-out: a mesh of 1-8 devices, several processes, bfloat16 mixed precision.

The device count is fixed when JAX starts, so the mesh runs happen in one subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (tests/parallel_runs.py), and the
multi-process runs are real ``fmlp train`` processes joined through ``jax.distributed`` on
127.0.0.1. The test process itself keeps its single CPU device.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parallel_runs import BASE, CONFIG, leaves

import fmlp
from fmlp import config, gates, parallel

ROOT = Path(__file__).resolve().parents[1]
EIGHT = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
# Relative to the largest entry of each param: the gradient all-reduce adds the shards' sums in
# another order than one device adds the whole batch, so float32 round-off differs (~1e-6).
TOLERANCE = 1e-5


def assert_same_params(params: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert params.keys() == ref.keys()
    for name, want in ref.items():
        got = np.asarray(params[name])
        assert got.shape == want.shape and got.dtype == want.dtype == np.float32, name
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert err <= TOLERANCE, f"{name}: relative difference {err:.2e}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
    """Every run of tests/parallel_runs.py: name -> (final params, summary with specs)."""
    out = tmp_path_factory.mktemp("mesh")
    proc = subprocess.run(
        [sys.executable, "tests/parallel_runs.py", str(out)],
        cwd=ROOT, env=EIGHT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {
        p.stem: (dict(np.load(p)), json.loads(p.with_suffix(".json").read_text()))
        for p in out.glob("*.npz")
    }


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize(
    "name, devices",
    [("data2", 2), ("data4", 4), ("data8", 8), ("data4_model2", 8), ("data2_model4", 8)],
)
def test_training_on_a_mesh_gives_the_one_device_params(runs, name, devices):
    params, summary = runs[name]
    assert summary["devices"] == devices and summary["processes"] == 1
    assert_same_params(params, runs["data1"][0])


def test_model_axis_splits_the_columns_of_layers_it_divides(runs):
    specs = runs["data2_model4"][1]["specs"]
    # hidden widths 16 and 16 divide by 4; the 3-class output layer does not.
    for name in ("0W", "1W"):
        assert specs[name] == "P(None, 'model')"
    assert specs["0b"] == specs["1b"] == "P('model',)"
    assert specs["2W"] == specs["2b"] == "P()"
    assert set(runs["data8"][1]["specs"].values()) == {"P()"}


@pytest.mark.parametrize("name, devices", [("from8to1", 1), ("from8to4", 4), ("from1to8", 8)])
def test_checkpoint_resumes_on_another_device_count(runs, name, devices):
    """Two epochs on one device count, two more on another: the uninterrupted run's params."""
    first = int(name[4])
    assert runs[f"half{first}to{devices}"][1]["devices"] == first
    params, summary = runs[name]
    assert summary["devices"] == devices and summary["epochs"] == 4
    assert_same_params(params, runs["data1"][0])


def fmlp_train(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmlp", "train", CONFIG, *BASE, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_batch_that_does_not_split_over_the_data_axis_exits_2(tmp_path):
    out = tmp_path / "run"
    proc = fmlp_train("train.batch_size=30", "parallel.data=8", "--out", str(out), env=EIGHT)
    assert proc.returncode == 2, proc.stderr
    assert "train.batch_size=30 does not divide by the 8 devices of the data axis" in proc.stderr
    assert "e.g. train.batch_size=24 or 32" in proc.stderr
    assert not out.exists(), "nothing may be written for a rejected config"


def test_more_devices_than_visible_is_rejected():
    with pytest.raises(config.ConfigError, match=r"parallel.data=2 x parallel.model=1 needs 2"):
        parallel.make_mesh(2, 1)  # this test process sees one CPU device


def test_process_id_must_be_below_the_process_count():
    with pytest.raises(config.ConfigError, match=r"distributed.process_id must be < "):
        config.from_dict({"distributed": {"num_processes": 2, "process_id": 2}})


# ----------------------------------------------------------------------------- several processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(out: Path, *args: str, count: int = 2) -> list[subprocess.Popen]:
    """``count`` ``fmlp train`` processes joined on 127.0.0.1, each with one CPU device."""
    address = f"127.0.0.1:{free_port()}"
    joined = [f"distributed.coordinator_address={address}", f"distributed.num_processes={count}"]
    command = [sys.executable, "-m", "fmlp", "train", CONFIG, *BASE, *args, *joined]
    return [
        subprocess.Popen(
            [*command, f"distributed.process_id={i}", "--out", str(out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


def test_two_processes_train_to_the_single_process_result(tmp_path, runs):
    procs = start_processes(tmp_path / "run")
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == 2
    params, _ = fmlp.load(tmp_path / "run")
    assert_same_params(leaves(params), runs["data1"][0])


def test_when_one_process_dies_the_other_exits_with_an_error(tmp_path):
    out = tmp_path / "run"
    heartbeat = 5
    survivor, victim = start_processes(
        out, "train.epochs=100000", f"distributed.heartbeat_timeout={heartbeat}"
    )
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert survivor.poll() is None and victim.poll() is None, "training did not start"
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = survivor.communicate(timeout=heartbeat + 60)  # raises if it hangs
    finally:
        for p in (survivor, victim):
            p.kill()
            p.communicate()  # reap it and close its pipes
    assert survivor.returncode != 0
    assert time.monotonic() - killed < heartbeat + 60
    # fmlp's message when a collective fails; JAX's own when its heartbeat check fires first.
    assert re.search(r"another (process|task) died", err), err[-3000:]


# ----------------------------------------------------------------------------- bfloat16


def test_astype_vjp_matches_jax_for_down_casts():
    x = jnp.linspace(-3.0, 3.0, 12, dtype=jnp.float32).reshape(4, 3)
    for dtype in ("bfloat16", "float16"):
        out, vjp = jax.vjp(lambda v, d=dtype: v.astype(d), x)
        ct = jnp.cos(jnp.arange(12.0, dtype=jnp.float32)).reshape(4, 3).astype(dtype)
        (ours,) = gates.astype.vjp(ct, out, x, dtype=dtype)
        (ref,) = vjp(ct)
        assert ours.dtype == ref.dtype == jnp.float32
        np.testing.assert_array_equal(ours, ref)


def test_bfloat16_engine_gradients_match_jax_grad(key):
    net = fmlp.nn.mlp([8, 16, 3], activation="relu", scheme="he_uniform")
    params = net.init(key, jnp.float32)
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (32, 8), jnp.float32)
    y = jax.random.randint(ky, (32,), 0, 3)

    def loss(p):
        return fmlp.nn.loss(p, x, y, activation="relu", compute_dtype="bfloat16")

    grads = fmlp.grad(loss)(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads)), "master params stay f32"
    # Both backends run the same bfloat16 ops; they may round sums in another order.
    assert fmlp.testing.check_grad(loss, params, tolerance=1e-2) <= 1e-2


def test_bfloat16_run_learns_close_to_float32(tmp_path):
    results = {}
    for precision in ("float32", "bfloat16"):
        state, history = fmlp.fit(
            "configs/digits.yaml",
            overrides=["train.epochs=8", f"precision={precision}", "run.progress=never"],
            out=tmp_path / precision,
        )
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        rows = history["epochs"]
        assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"], precision
        results[precision] = history["summary"]["test_accuracy"]
    assert results["float32"] >= 0.9
    # Margin: bfloat16 keeps 8 bits of mantissa; on digits it lands within 2 points.
    assert abs(results["bfloat16"] - results["float32"]) <= 0.02, results
