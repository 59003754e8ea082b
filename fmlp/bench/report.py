"""The report: the run's metadata (machine, device, versions) and the markdown tables."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(command: str) -> dict[str, Any]:
    """Date, machine, device, library versions and the command line."""
    packages = ("fmlp", "jax", "jaxlib", "optax", "flax", "equinox", "torch", "scikit-learn")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("numpy", *packages)},
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


THROUGHPUT_COLUMNS = (
    "contestant", "model", "batch", "dtype", "ex/s median [min-max]", "compile s", "s/epoch",
    "test acc", "fmlp speed-up", "% matmul peak", "dparams vs fmlp", "notes",
)  # fmt: skip
TTA_COLUMNS = (
    "contestant", "model", "batch", "target", "s to target median [min-max]", "epoch",
    "test acc", "notes",
)  # fmt: skip


def _table(columns: Sequence[str], lines: list[list[str]]) -> str:
    head = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(head + ["| " + " | ".join(cells) + " |" for cells in lines])


def throughput_table(rows: list[dict[str, Any]]) -> str:
    """The throughput rows as a markdown table (columns: :data:`THROUGHPUT_COLUMNS`)."""
    lines = []
    for r in rows:
        cells = [r["contestant"], r["model"], str(r["batch"]), r["dtype"]]
        if r["status"] != "ok":
            lines.append([*cells, *["-"] * 7, f"skipped: {r['notes']}"])
            continue
        e = r["examples_per_second"]
        lines.append(
            [
                *cells,
                f"{_si(e['median'])} [{_si(e['min'])}-{_si(e['max'])}]",
                f"{r['compile_seconds']:.2f}",
                f"{r['seconds_per_epoch']:.3g}",
                f"{r['test_accuracy']:.4f}",
                _fmt(r["fmlp_speedup"], ".2f"),
                f"{100 * r['fraction_of_matmul_peak']:.1f}",
                _fmt(r["params_difference_vs_fmlp"], ".1e"),
                r["notes"],
            ]
        )
    return _table(THROUGHPUT_COLUMNS, lines)


def tta_table(rows: list[dict[str, Any]]) -> str:
    """The time-to-accuracy rows as a markdown table (columns: :data:`TTA_COLUMNS`)."""
    lines = []
    for r in rows:
        cells = [r["contestant"], r["model"], str(r["batch"])]
        if r["status"] != "ok":
            lines.append([*cells, *["-"] * 4, f"skipped: {r['notes']}"])
            continue
        s = r["seconds_to_target"]
        spread = "-" if s is None else f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"
        lines.append(
            [
                *cells,
                f"{r['target']:.4f}",
                spread,
                _fmt(r["epoch"], "d"),
                f"{r['test_accuracy']:.4f}",
                r["notes"],
            ]
        )
    return _table(TTA_COLUMNS, lines)
