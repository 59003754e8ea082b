"""The gradient parity monitor: engine gradients vs jax.grad during training."""

import json

import jax.numpy as jnp
import pytest

import fmlp
from fmlp import gates, nn, train

BASE = {
    "model": {"hidden": [8], "activation": "tanh", "output": "softmax"},
    "data": {"name": "lecture_classification", "synthetic_examples": 300},
    "train": {"epochs": 2, "batch_size": 64, "check_gradients_every": 1},
    "run": {"progress": "never"},
}


def test_monitor_logs_a_small_error_per_parameter(tmp_path):
    _, history = fmlp.fit(BASE, out=tmp_path / "run")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        errors = row["gradient_check"]
        assert set(errors) == {"[0]['W']", "[0]['b']", "[1]['W']", "[1]['b']"}
        assert all(0.0 <= e < 1e-4 for e in errors.values()), errors
    assert history["epochs"] == rows


def test_monitor_runs_only_every_n_epochs(tmp_path):
    cfg = BASE | {"train": BASE["train"] | {"epochs": 3, "check_gradients_every": 2}}
    _, history = fmlp.fit(cfg, out=tmp_path / "run")
    assert ["gradient_check" in r for r in history["epochs"]] == [False, True, False]


def test_monitor_stops_a_run_whose_gate_has_a_wrong_vjp(tmp_path, monkeypatch):
    wrong = gates.Gate(
        "tanh",
        jnp.tanh,
        lambda g, out, x: (g * (1.0 + out * out),),  # sign error: d tanh is 1 - tanh^2
        gates.REGISTRY["tanh"].samples,
    )
    monkeypatch.setitem(nn.ACTIVATIONS, "tanh", wrong)
    with pytest.raises(
        train.GradientMismatch, match=r"epoch 1 .*params\[0\]\['(W|b)'\].*fmlp gradcheck"
    ):
        fmlp.fit(BASE, out=tmp_path / "run")
    (row,) = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(row["gradient_check"].values()) > 1e-2


def test_monitor_is_off_by_default(tmp_path):
    cfg = BASE | {"train": {"epochs": 1, "batch_size": 64}}
    _, history = fmlp.fit(cfg, out=tmp_path / "run")
    assert "gradient_check" not in history["epochs"][0]
