"""Loading a large table against training on it: time and peak memory, CSV and Parquet.

Usage: python scripts/bench_tables.py [--rows 1000000] [--columns 50] [--dir DIR]
       [--out benchmarks/bench_tables.json]

Writes one generated table (``columns - 2`` float features, one categorical column of 8
categories and a 10-class label) as CSV and as Parquet, then, for each file in a process of
its own, times ``fmlp.data.load`` (read, check, encode, split, normalise), then ``fmlp.fit`` of the
file for one epoch (the default 100-unit tanh net, SGD, batch 128; its epoch time is the
summary's ``train_seconds``, compilation apart),
and records the process's peak resident memory (``ru_maxrss``) after each step. The load
should cost well under one epoch: the ratio is printed and saved.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(rows: int, columns: int, directory: Path) -> dict[str, Path]:
    """The table as ``table.csv`` and ``table.parquet`` under ``directory``."""
    import pandas as pd

    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, columns - 2)).astype(np.float32)
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(columns - 2)])
    frame["kind"] = np.asarray([f"k{i}" for i in range(8)])[rng.integers(0, 8, rows)]
    w = rng.normal(size=(columns - 2, 10))
    frame["label"] = np.asarray([f"c{i}" for i in range(10)])[np.argmax(features @ w, axis=1)]
    paths = {"csv": directory / "table.csv", "parquet": directory / "table.parquet"}
    frame.to_csv(paths["csv"], index=False, float_format="%.6g")
    frame.to_parquet(paths["parquet"], index=False)
    return paths


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str) -> dict[str, Any]:
    """Load ``path`` and train one epoch on it, in this process."""
    import jax

    import fmlp
    from fmlp import data

    before = peak_mib()
    start = time.perf_counter()
    dataset = data.load(
        "table", train=path, label="label", categorical=["kind"], task="classification"
    )
    load_seconds = time.perf_counter() - start
    after_load = peak_mib()
    rows, features = dataset.x_train.shape
    del dataset
    with tempfile.TemporaryDirectory() as scratch:
        cfg = {
            "data": {"name": "table", "train": path, "label": "label", "categorical": ["kind"]},
            "train": {"epochs": 1, "batch_size": 128},
            "run": {"progress": "never"},
        }
        _, history = fmlp.fit(cfg, out=f"{scratch}/run")
    summary = history["summary"]
    return {
        "file": Path(path).name,
        "bytes": Path(path).stat().st_size,
        "rows_train": rows,
        "features_encoded": features,
        "load_seconds": load_seconds,
        "epoch_seconds": summary["train_seconds"],
        "compile_seconds": summary["compile_seconds"],
        "load_over_epoch": load_seconds / summary["train_seconds"],
        "peak_rss_mib_before": before,
        "peak_rss_mib_after_load": after_load,
        "peak_rss_mib_after_epoch": peak_mib(),
        "test_accuracy": summary["test_accuracy"],
        "device": jax.devices()[0].device_kind,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=50)
    parser.add_argument("--dir", help="where to write the tables (default: a temporary dir)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "bench_tables.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child)))
        return {}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        start = time.perf_counter()
        paths = generate(args.rows, args.columns, Path(scratch))
        print(f"generated {args.rows} x {args.columns} in {time.perf_counter() - start:.1f} s")
        results = []
        for kind, path in paths.items():
            child = subprocess.run(
                [sys.executable, __file__, "--child", str(path)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results.append({"format": kind} | json.loads(child.stdout.splitlines()[-1]))
            r = results[-1]
            print(
                f"{kind:8s} {r['bytes'] / 2**20:7.0f} MiB  load {r['load_seconds']:6.2f} s  "
                f"epoch {r['epoch_seconds']:6.2f} s  load/epoch {r['load_over_epoch']:.2f}  "
                f"peak RSS {r['peak_rss_mib_after_load']:.0f} MiB after load, "
                f"{r['peak_rss_mib_after_epoch']:.0f} MiB after the epoch"
            )
    from fmlp.bench.report import metadata as report_metadata

    report = {
        **report_metadata(" ".join(["python", *sys.argv])),  # date, CPU, device, versions
        "rows": args.rows,
        "columns": args.columns,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
