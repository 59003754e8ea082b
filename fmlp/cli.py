"""The ``fmlp`` command: parse, call the library, print. Exit 0 ok, 2 bad input, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fmlp import config, data, train

BAD_INPUT = (config.ConfigError, data.DataError, train.RunDirectoryError, FileNotFoundError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmlp", description="Functional MLPs in JAX with hand-written VJPs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a config and write a run directory")
    p.add_argument("config", help="YAML config, e.g. configs/fashion_mnist.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=3")
    p.add_argument("--out", help="run directory to create (default: run.out_dir/<name>-<time>)")
    p.add_argument("--resume", help="run directory to continue from its latest checkpoint")
    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--best", action="store_true", help="use the best checkpoint, not the latest")
    return parser


def _train(args: argparse.Namespace) -> None:
    _, history = train.fit(args.config, overrides=args.overrides, out=args.out, resume=args.resume)
    summary = history["summary"]
    print(json.dumps(summary, indent=2))
    metric = "test_accuracy" if "test_accuracy" in summary else "test_mse"
    print(f"{metric}: {summary[metric]:.4f}  (run directory: {summary['run_dir']})")


def _eval(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir)
    result = train.evaluate_run(run_dir, split=args.split, best=args.best)
    print(json.dumps(result, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "eval": _eval}[args.command](args)
    except BAD_INPUT as e:
        print(f"fmlp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (train.TrainingDiverged, train.GradientMismatch) as e:
        print(f"fmlp {args.command}: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fmlp {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
