"""A sweep's members in one program against the same members trained one after another.

Usage: python scripts/bench_sweep.py [--epochs 2] [--rates 4] [--seeds 4] [--cases tiny,small]
       [--versus sequential|one] [--data-path DIR] [--out benchmarks/bench_sweep.json]

For each case (``tiny``: 784-16-16-10 at batch 16; ``small``: 784-256-256-10 at batch 128;
real Fashion-MNIST) the grid is ``--rates`` learning rates x ``--seeds`` seeds.
``fmlp.sweep.sweep`` trains it (one vectorized program), then ``fmlp.fit`` trains each
member in turn with the same overrides (``--versus one``: only the first member, for a
GPU's 64 members against one). Both wall times include loading, compilation and writing
the run directories; their ratio is printed and saved, with the date and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import fmlp
from fmlp import sweep
from fmlp.bench.report import metadata as report_metadata

ROOT = Path(__file__).resolve().parents[1]
CASES = {"tiny": ([16, 16], 16), "small": ([256, 256], 128)}
RATES = tuple(f"{0.2 * 0.8**i:.4g}" for i in range(16))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--cases", default="tiny,small")
    parser.add_argument("--rates", type=int, default=4, help=f"learning rates (<= {len(RATES)})")
    parser.add_argument(
        "--versus", choices=("sequential", "one"), default="sequential",
        help="sequential: every member by fmlp.fit in turn; one: only the first member",
    )  # fmt: skip
    parser.add_argument("--data-path", help="Fashion-MNIST's directory (default: the Debian one)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "bench_sweep.json"))
    args = parser.parse_args(argv)
    results = []
    for case in args.cases.split(","):
        hidden, batch = CASES[case]
        base = {
            "data": {"name": "fashion_mnist", "path": args.data_path},
            "model": {"hidden": hidden, "activation": "relu"},
            "train": {"epochs": args.epochs, "batch_size": batch},
            "run": {"progress": "never"},
        }
        grid = {"optimizer.learning_rate": list(RATES[: args.rates])}
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            result = sweep.sweep(base, grid, seeds=args.seeds, out=f"{scratch}/sweep")
            swept = time.perf_counter() - start
            start = time.perf_counter()
            rows = result["members"][: 1 if args.versus == "one" else None]
            for i, row in enumerate(rows):
                overrides = [f"optimizer.learning_rate={row['optimizer.learning_rate']}"]
                overrides += [f"train.seed={row['train.seed']}"] if "train.seed" in row else []
                fmlp.fit(base, overrides=overrides, out=f"{scratch}/one-{i}")
            sequential = time.perf_counter() - start
        members = len(result["members"])
        results.append(
            {"case": case, "sizes": [784, *hidden, 10], "batch_size": batch, "members": members,
             "epochs": args.epochs, "sweep_seconds": swept, "versus": args.versus,
             "sequential_seconds": sequential,
             "ratio": swept / sequential}
        )  # fmt: skip
        print(
            f"{case:6s} {members} members x {args.epochs} epochs: sweep {swept:6.1f} s, "
            f"{'one member' if args.versus == 'one' else 'one after another'} "
            f"{sequential:6.1f} s, ratio {swept / sequential:.3f}"
        )
    report = {
        **report_metadata(" ".join(["python", *sys.argv])),  # date, CPU, device, versions
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
