"""The ``fmlp`` command: parse, call the library, print. Exit 0 ok, 2 bad input, 1 otherwise."""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import optax

from fmlp import config, errors, gates, run, sweep, testing, train, viz


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
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (with --resume: the one the resume would train) as "
        "YAML and exit without training",
    )
    p = sub.add_parser(
        "sweep",
        help="train every member of a grid (x seeds) together; rank them, keep each as a run",
        description="Each key=v1,v2,... gives a key's values; the members are their product "
        "(x --seeds). Members that differ only in optimizer hyper-parameters, dropout rates, "
        "label smoothing or the seed train in one vectorized program.",
    )
    p.add_argument("config", nargs="?", help="base YAML config (not with --resume)")
    p.add_argument(
        "grid", nargs="*", help="section.key=v1,v2,..., e.g. optimizer.learning_rate=0.1,0.01"
    )
    p.add_argument("--seeds", type=_positive, default=1, help="seeds per grid point (default 1)")
    p.add_argument("--out", help="sweep directory to create (default: run.out_dir/sweep-<time>)")
    p.add_argument(
        "--vectorize",
        default="auto",
        metavar="auto|never|KEY,...",
        help="auto: one program per group of members; never: one member at a time; swept "
        "keys, e.g. optimizer.learning_rate,train.seed: as auto, and an error (exit 2) for a "
        "key whose values cannot train in one program",
    )
    p.add_argument("--top", type=_positive, default=3, help="members in the ensemble (default 3)")
    p.add_argument(
        "--search",
        choices=sweep.SEARCHES,
        default="grid",
        help="grid: every point; random or optuna (TPE): --trials points drawn from "
        "the values or low..high[:log] ranges",
    )
    p.add_argument("--trials", type=_positive, default=16, help="points a search draws")
    p.add_argument(
        "--batch",
        type=_positive,
        default=8,
        help="trials a search asks for and trains together at a time (default 8)",
    )
    p.add_argument("--resume", help="an interrupted sweep directory to continue")
    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--best", action="store_true", help="use the best checkpoint, not the latest")
    p = sub.add_parser(
        "predict",
        help="predict the rows of a table file with a run's model (CSV to stdout or --out)",
    )
    p.add_argument("run_dir")
    p.add_argument("input", help=".csv, .tsv, .parquet or .npz with the run's feature columns")
    p.add_argument("--out", help="write .csv, .parquet or .npz (default: CSV to stdout)")
    p.add_argument("--proba", action="store_true", help="add each class's probability")
    p.add_argument("--best", action="store_true", help="use the best checkpoint, not the latest")
    p.add_argument("--top", type=_positive, help="RUN is a sweep: average its N best members")
    p = sub.add_parser(
        "export",
        help="serialize a run's model (jax.export or ONNX, any batch size) with its preprocessing",
    )
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="the file to write, e.g. model.jax or model.onnx")
    p.add_argument(
        "--format",
        choices=run.EXPORT_FORMATS,
        default="jax",
        help="jax: a jax.export artifact (default); onnx: an ONNX model (needs fmlp[onnx])",
    )
    p.add_argument("--best", action="store_true", help="use the best checkpoint, not the latest")
    p = sub.add_parser(
        "graph",
        help="draw a computation graph with forward values and gradients (DOT or Graphviz)",
        description="Draw the lecture's circuit (--circuit) or a config's model loss on a "
        "small batch: every gate call with its shape and, for small arrays, value and gradient.",
    )
    p.add_argument("config", nargs="?", help="YAML config whose model loss to draw")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.hidden=[4]")
    p.add_argument(
        "--circuit", action="store_true", help="the lecture's f(x, y, z) = (x + y) z instead"
    )
    p.add_argument("--batch", type=_positive, default=2, help="examples in the batch (default 2)")
    p.add_argument(
        "--max-elements", type=_positive, default=4, help="show values of arrays up to this size"
    )
    p.add_argument("--out", help="write .dot, or .svg/.png/.pdf via Graphviz (default: stdout)")
    p = sub.add_parser(
        "gradcheck",
        help="check every registered gate's VJP against jax.vjp and finite differences",
        description="Run fmlp.testing.check_gate over every registered gate (yours too, with "
        "--module) and print the largest relative errors; exit 1 if any gate fails.",
    )
    p.add_argument(
        "--module",
        action="append",
        default=[],
        help="module name or .py file whose import registers gates (repeatable)",
    )
    p.add_argument(
        "--gate", action="append", help="check only this gate (repeatable; default: all)"
    )
    p.add_argument(
        "--dtype", choices=("float32", "float64", "both"), default="both", help="sample dtype"
    )
    sub.add_parser(
        "bench",
        add_help=False,  # never parsed here: main hands every argument to fmlp.bench's parser
        help="train side by side with JAX, Flax NNX, Equinox, PyTorch and scikit-learn "
        "(fmlp bench --help)",
    )
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int | None:
    if args.print_config:
        cfg = config.resolve(args.config, args.overrides)
        if args.resume is not None:
            cfg = run.RunDir(args.resume).resumed_config(cfg)
        print(config.dumps(cfg), end="")
        return None
    if os.environ.get(_SUPERVISED) is None and (
        config.resolve(args.config, args.overrides).distributed.enabled
    ):
        return _supervise(args.argv)
    _, history = run.fit(args.config, overrides=args.overrides, out=args.out, resume=args.resume)
    summary = history["summary"]
    print(json.dumps(summary, indent=2))
    metric = "test_accuracy" if "test_accuracy" in summary else "test_mse"
    print(f"{metric}: {summary[metric]:.4f}  (run directory: {summary['run_dir']})")


_SUPERVISED = "FMLP_SUPERVISED"  # set in the child of a supervised multi-process run
# A line of absl's log (JAX's runtime): severity, date, time, thread, file:line], message.
_ABSL = re.compile(r"^(?P<severity>[IWEF])\d{4} [\d:.]+ +\d+ \S+\] (?P<message>.*)")


def _supervise(argv: Sequence[str]) -> int:
    """Run ``fmlp ARGV`` in a child and report a C++ abort of JAX's distributed runtime (a
    peer that died or never came) as one line instead of a stack trace.

    JAX's coordination client ends the process with a check failure when a peer is lost;
    no Python code of that process can catch it, so its parent does.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "fmlp", *argv],
        env=os.environ | {_SUPERVISED: "1"},
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        preexec_fn=_die_with_parent,
    )
    # Ctrl-C reaches the child from the terminal itself; SIGTERM is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    fatal, runtime_logging = None, False
    for line in child.stderr:
        match = _ABSL.match(line)
        if match:
            runtime_logging = True  # from here on, the runtime's messages are noise
            if match["severity"] == "F" and fatal is None:
                fatal = match["message"]
        if not runtime_logging or line.startswith("fmlp"):
            sys.stderr.write(line)
    status = child.wait()
    if fatal is None:
        return status if status >= 0 else 128 - status
    reason = fatal.split(" absl::Status: ")[-1].strip()
    print(
        f"fmlp train: error: JAX's distributed runtime stopped this process ({reason}): "
        "another process of the run died, or never joined within "
        "distributed.initialization_timeout. Checkpoints already written are kept; restart "
        "every process with --resume RUN_DIR once all of them can start.",
        file=sys.stderr,
    )
    return 1


def _die_with_parent() -> None:
    """In the child: receive SIGKILL when the supervising parent dies (Linux)."""
    libc = ctypes.CDLL(None)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _export(args: argparse.Namespace) -> None:
    info = run.export_run(args.run_dir, args.out, best=args.best, format=args.format)
    print(
        f"wrote {info['file']}: takes (batch, {len(info['inputs'])}) float32 features "
        f"({', '.join(info['inputs'])}), returns (batch, {len(info['outputs'])}) "
        f"({', '.join(info['outputs'])})"
    )


def _eval(args: argparse.Namespace) -> None:
    report = run.evaluate_checkpoint(args.run_dir, split=args.split, best=args.best)
    print(json.dumps(report, indent=2), flush=True)  # shown even if saving it fails
    run.save_evaluation(args.run_dir, report)


def _predict(args: argparse.Namespace) -> None:
    runs = args.run_dir if args.top is None else sweep.SweepDir(args.run_dir).best_members(args.top)
    rows = run.predict_file(runs, args.input, out=args.out, proba=args.proba, best=args.best)
    if args.out is not None:
        print(f"wrote {rows} predictions to {args.out}")


def _sweep(args: argparse.Namespace) -> None:
    if (args.config is None) == (args.resume is None) or (args.resume and args.grid):
        raise config.ConfigError("give a config and key=v1,v2 values, or --resume DIR alone")
    result = sweep.sweep(
        args.config, args.grid, seeds=args.seeds, out=args.out, vectorize=args.vectorize,
        top=args.top, resume=args.resume, search=args.search, trials=args.trials,
        batch=args.batch,
    )  # fmt: skip
    rows = result["members"]
    keys = [k for k in rows[0] if k not in ("member", "run_dir")] if rows else []
    widths = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_cell(r[k]).rjust(widths[k]) for k in keys))
    summary = result["summary"]
    ensemble = {k: v for k, v in summary.items() if k.startswith("ensemble_")}
    for k, v in ensemble.items():
        print(f"{k} (top {summary['top']}): {v:.4f}")
    members, groups = summary["members"], summary["groups"]
    counts = f"{members} member{'s' * (members != 1)}, {groups} program{'s' * (groups != 1)}"
    print(f"sweep directory: {result['dir']} ({counts})")


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _graph(args: argparse.Namespace) -> None:
    """Print the DOT source, or write ``--out`` (svg/png/pdf need Graphviz)."""
    if args.circuit == (args.config is not None) or (args.circuit and args.overrides):
        raise config.ConfigError("give either a config file (and key=value overrides) or --circuit")
    out = None if args.out is None else Path(args.out)
    if out is not None and out.suffix.lower() not in (".dot", ".gv", ".svg", ".png", ".pdf"):
        raise config.ConfigError(f"--out {out}: expected a file ending in .dot, .svg, .png or .pdf")
    if args.circuit:
        # The lecture's circuit: q = x + y = 3, f = q z = -12; df/dx = df/dy = z, df/dz = q.
        drawing = viz.graph(
            lambda x, y, z: gates.multiply(gates.add(x, y), z),
            -2.0, 5.0, -4.0, max_elements=args.max_elements,
        )  # fmt: skip
    else:
        drawing = _model_graph(args.config, args.overrides, args.batch, args.max_elements)
    if out is None:
        sys.stdout.write(drawing.dot)
        return
    drawing.render(out)
    print(f"wrote {out}")


def _model_graph(
    source: str, overrides: Sequence[str], batch: int, max_elements: int
) -> viz.GraphDrawing:
    """The config's model loss on the first ``batch`` training examples, at the seed's params."""
    cfg = config.resolve(source, overrides)
    dataset = run.load_dataset(cfg)
    if batch > len(dataset.x_train):
        raise errors.DataError(
            f"--batch {batch} is more than the {len(dataset.x_train)} training examples"
        )
    net = train.build_model(
        cfg, num_features=dataset.num_features, num_outputs=dataset.num_outputs
    )._replace(compute_dtype=None)  # drawn in the params' dtype, whatever the precision
    params = train.init_state(net, optax.identity(), seed=cfg.train.seed).params
    x, t = jnp.asarray(dataset.x_train[:batch]), jnp.asarray(dataset.y_train[:batch])
    # Named as the lecture names them: the drawing labels the leaves params, x and t.
    return viz.graph(
        lambda params, x, t: net.loss(params, x, t), params, x, t, max_elements=max_elements
    )


def _bench(argv: Sequence[str]) -> None:
    # Imported here, so that no other command pays for (or depends on) the benchmark.
    importlib.import_module("fmlp.bench").main(argv)


def _import_gates(spec: str) -> None:
    """Import a module by name, or a ``.py`` file by path, so that its gates register."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise errors.ModuleLoadError(f"--module {spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module_spec.loader.exec_module(importlib.util.module_from_spec(module_spec))
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise errors.ModuleLoadError(
            f"--module {spec}: {e}; give a module on sys.path or a .py file"
        ) from None


def _gradcheck(args: argparse.Namespace) -> int:
    for spec in args.module:
        _import_gates(spec)
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    reports = testing.check_all_gates(args.gate, dtypes=dtypes)
    print(testing.format_reports(reports))
    failed = sorted({r.name for r in reports if r.failures})
    ok = sum(not r.failures for r in reports)
    print(f"{ok} of {len(reports)} gate checks agree with the oracles.")
    if failed:
        print(f"Wrong VJPs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "train": _train,
    "eval": _eval,
    "export": _export,
    "predict": _predict,
    "sweep": _sweep,
    "graph": _graph,
    "gradcheck": _gradcheck,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.formatwarning = _one_line_warning
    if argv[:1] == ["bench"]:  # fmlp bench has its own parser: every argument is its
        command, call = "bench", lambda: _bench(argv[1:])
    else:
        args = _parse(argv)
        args.argv = argv
        command, call = args.command, lambda: COMMANDS[args.command](args)
    try:
        status = call()
    except errors.InputError as e:
        print(f"fmlp {command}: error: {e}", file=sys.stderr)
        return 2
    except (errors.TrainingDiverged, errors.GradientMismatch) as e:
        print(f"fmlp {command}: training stopped: {e}", file=sys.stderr)
        return 1
    except errors.DistributedError as e:
        print(f"fmlp {command}: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # JAX's shutdown at exit would wait for the lost process and then abort; skip it.
        os._exit(1)
    except errors.Interrupted as e:
        print(f"fmlp {command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except BrokenPipeError:  # the reader of stdout (e.g. `| head`) stopped: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (errors.FmlpError, OSError) as e:  # an environment fault: one line, no traceback
        print(f"fmlp {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handling (start-up, eval...)
        print(f"fmlp {command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any) -> str:
    return f"fmlp: warning: {message}\n"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow an option (``fmlp train C --out D a.b=1``), which argparse
    # leaves over; anything else left over is an error as usual.
    if extra and hasattr(args, "overrides") and not any(a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
