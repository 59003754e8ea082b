"""Early stopping and reduce-on-plateau against neither, on the default Fashion-MNIST config.

Usage: python scripts/bench_stopping.py [--seeds 2] [--out benchmarks/bench_stopping.json]

Trains configs/fashion_mnist.yaml four ways (as is; ``train.early_stopping.patience=3`` with
``train.restore_best=true``; ``optimizer.schedule=plateau``; both) for each of ``--seeds``
seeds, one after another in this process, and prints each run's test accuracy, epochs
trained and training seconds (``summary.json``) with the mean per way. The comparison decides
what the shipped config uses by default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import fmlp
from fmlp.bench.report import metadata

ROOT = Path(__file__).resolve().parents[1]

WAYS = {
    "neither": [],
    "early stopping": ["train.early_stopping.patience=3", "train.restore_best=true"],
    "plateau": ["optimizer.schedule=plateau"],
    "both": [
        "train.early_stopping.patience=3", "train.restore_best=true", "optimizer.schedule=plateau"
    ],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per way: 0, 1, ...")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    config = ROOT / "configs" / "fashion_mnist.yaml"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for way, overrides in WAYS.items():
                out = Path(tmp) / f"{len(runs)}"
                _, result = fmlp.fit(
                    config,
                    overrides=[*overrides, f"train.seed={seed}", "run.progress=never"],
                    out=out,
                )
                summary = result["summary"]
                row = {
                    "way": way,
                    "seed": seed,
                    "test_accuracy": summary["test_accuracy"],
                    "epochs": summary["epochs"],
                    "stopped_epoch": summary["stopped_epoch"],
                    "best_epoch": summary["best_epoch"],
                    "train_seconds": summary["train_seconds"],
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
    means = {
        way: {
            key: statistics.mean(r[key] for r in runs if r["way"] == way)
            for key in ("test_accuracy", "epochs", "train_seconds")
        }
        for way in WAYS
    }
    print(f"{'way':<16} {'test accuracy':>13} {'epochs':>7} {'train s':>8}  (mean of seeds)")
    for way, m in means.items():
        print(
            f"{way:<16} {m['test_accuracy']:>13.4f} {m['epochs']:>7.1f} {m['train_seconds']:>8.1f}"
        )
    if args.out:
        result = {**metadata(" ".join(["python", *sys.argv])), "runs": runs, "means": means}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
