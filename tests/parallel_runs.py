"""Training runs on several (simulated) CPU devices, for tests/test_parallel.py.

Run as ``python tests/parallel_runs.py OUT_DIR`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: the device count is fixed when JAX
starts, so these runs need a process of their own. Each run's final params go to
``OUT_DIR/<name>.npz`` and its summary to ``OUT_DIR/<name>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import fmlp

BASE = [
    "train.epochs=4",
    "train.batch_size=64",
    "data.synthetic_examples=600",
    "model.hidden=[16, 16]",
    "run.progress=never",
]
CONFIG = "configs/lecture_classification.yaml"


def leaves(params: fmlp.nn.Params) -> dict:
    """``{"0W": W of layer 0, "0b": ..., "1W": ...}``: one flat dict of the params' arrays."""
    return {f"{i}{k}": v for i, layer in enumerate(params) for k, v in layer.items()}


def run(out: Path, name: str, *overrides: str, resume: str | None = None) -> None:
    """Train (or resume) with the base overrides plus ``overrides``; save params and summary."""
    target = out / f"run-{name}"
    if resume is not None:
        (out / f"run-{resume}").rename(target)
    state, history = fmlp.run.fit(
        CONFIG,
        overrides=[*BASE, *overrides],
        out=None if resume else target,
        resume=target if resume else None,
    )
    np.savez(out / f"{name}.npz", **leaves(fmlp.parallel.fetch(state.params)))
    specs = {name: str(v.sharding.spec) for name, v in leaves(state.params).items()}
    (out / f"{name}.json").write_text(json.dumps(history["summary"] | {"specs": specs}))


def main(out: Path) -> None:
    for d in (1, 2, 4, 8):
        run(out, f"data{d}", f"parallel.data={d}")
    run(out, "data4_model2", "parallel.data=4", "parallel.model=2")
    run(out, "data2_model4", "parallel.data=2", "parallel.model=4")
    # A checkpoint written on 8 devices resumed on 1 and on 4; one written on 1 resumed on 8.
    for first, then in ((8, 1), (8, 4), (1, 8)):
        run(out, f"half{first}to{then}", f"parallel.data={first}", "train.epochs=2")
        run(out, f"from{first}to{then}", f"parallel.data={then}", resume=f"half{first}to{then}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
