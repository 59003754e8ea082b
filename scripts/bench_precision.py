"""fmlp in float32 vs bfloat16 mixed precision: throughput and peak device memory.

Usage: python scripts/bench_precision.py [--cases 784-256-256-10:128,...] [--epochs 3]
       [--data-path DIR] [--out benchmarks/precision_<backend>.json]

Each (case, precision) trains in a process of its own, so the device's peak-memory counter
(``memory_stats()["peak_bytes_in_use"]``, GPU/TPU only; null on CPU) belongs to that run
alone. The training path and the timing are ``fmlp bench``'s ``fmlp`` contestant on real
Fashion-MNIST; ``bfloat16`` is ``precision: bfloat16`` (bf16 layers, float32 params, loss
and softmax).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = ("784-256-256-10:128", "784-8192-8192-8192-10:8192")


def measure(case: str, precision: str, epochs: int, data_path: str | None) -> dict[str, Any]:
    """One case in this process: ``fmlp bench``'s throughput row plus the peak memory."""
    import jax

    from fmlp import bench

    with tempfile.TemporaryDirectory() as scratch:  # bench.main writes a JSON; ours is below
        report = bench.main(
            ["--sizes", f"{case}:{precision}", "--sweep", "", "--only", "fmlp", "--epochs",
             str(epochs), "--rounds", "1", "--out", f"{scratch}/bench.json"]
            + (["--data-path", data_path] if data_path else [])
        )  # fmt: skip
    stats = jax.devices()[0].memory_stats() or {}
    (row,) = report["results"]
    return row | {"peak_bytes_in_use": stats.get("peak_bytes_in_use"), "meta": report["meta"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="MODEL:BATCH,...")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (first: warm-up)")
    parser.add_argument("--data-path", help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--out", help="JSON path (default benchmarks/precision_<backend>.json)")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child process
        print(json.dumps(measure(*args.one, args.epochs, args.data_path)))
        return
    rows = []
    for case in args.cases.split(","):
        for precision in ("float32", "bfloat16"):
            command = [sys.executable, __file__, "--one", case, precision,
                       "--epochs", str(args.epochs)]  # fmt: skip
            command += ["--data-path", args.data_path] if args.data_path else []
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| model | batch | precision | ex/s median | s/epoch | GFLOP/s | peak memory MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        peak = r["peak_bytes_in_use"]
        print(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | "
            f"{r['examples_per_second']['median']:.4g} | {r['seconds_per_epoch']:.4g} | "
            f"{r['achieved_gflops']:.4g} | {'-' if peak is None else f'{peak / 2**20:.0f}'} |"
        )
    backend = rows[0]["meta"]["backend"]
    out = Path(args.out or ROOT / "benchmarks" / f"precision_{backend}.json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
