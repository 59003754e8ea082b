"""Side-by-side training benchmark: fmlp against raw JAX, Flax NNX, Equinox, PyTorch, scikit-learn.

Every contestant trains the same MLP (ReLU hidden layers, softmax cross-entropy) in one
process on the same machine, from the same initial weights (``fmlp.nn.init``, he_uniform), on
the same standardized Fashion-MNIST, in the same mini-batches: the order fmlp's jitted epoch
draws from its state's key, the last batch padded and masked out of the mean loss
(``sum(loss * mask) / sum(mask)``), with the same SGD with momentum. The final params of every
contestant are compared with fmlp's (column dparams): equal within float rounding means the
contestants did the same arithmetic, so the timings compare like with like. (In bfloat16 the
frameworks round in different places, so dparams grows to bfloat16's rounding, ~5e-3.)

Usage (``fmlp bench`` and ``python scripts/bench.py`` are the same command; paths are relative
to the working directory, the repository root in these examples):
  fmlp bench                                          # every size, 2 epochs x 5 rounds
  fmlp bench --sizes 784-256-256-10:128 --sweep 64,512 --only fmlp,jax-step,torch
  fmlp bench --subset 2048 --epochs 2 --rounds 1 --out /tmp/bench.json  # quick look
  fmlp bench --time-to-accuracy 0.895                 # configs/fashion_mnist.yaml vs peers

Peers come from ``pip install -e ".[bench]"``; one that is not installed (or fails, e.g.
torch.compile without a compiler) is a skipped row with the reason. fmlp (``fmlp``, and
``fmlp-jax`` with ``jax.grad`` in place of the engine) runs its default path,
``fmlp.train.make_epoch``: one jitted epoch over device-resident data that gathers the
epoch's batches once and ``lax.scan``s over them. ``jax-scan`` is that loop written by hand
in raw JAX + optax (``jax.grad`` of a plain ``jnp`` loss), the best hand-written loop: its
``fmlp speed-up`` is what fmlp's layers cost or save; ``--unroll`` applies to both.
The other peers run the usual tutorial loop: a Python loop over the epoch's batches, each
gathered on the host and passed to one compiled (or eager) step: ``jax-step`` (raw JAX +
optax), ``nnx`` (Flax NNX), ``equinox``, ``torch`` and ``torch-compile`` (CUDA when
available). ``sklearn`` (``MLPClassifier``, CPU) runs one ``partial_fit`` per epoch on the
epoch's examples in fmlp's order with ``shuffle=False``, so its batches are fmlp's too.

Throughput columns (one row per contestant and size; ``--rounds`` rounds, round-robin over the
contestants, each round training ``--epochs`` epochs from the initial weights):
  ex/s             training examples per second of the steady epochs (all but a contestant's
                   very first, which compiles/warms up), median [min-max] over rounds
  compile s        the first epoch's seconds minus the median steady epoch's seconds
  s/epoch          median steady epoch seconds
  test acc         test accuracy after the round's epochs (the same for every round)
  fmlp speed-up    fmlp ex/s / contestant ex/s (> 1: fmlp is faster)
  % matmul peak    achieved FLOP/s (matmul FLOPs per example, forward and backward, see
                   flops_per_example) as a share of the jitted matmul rate of the same dtype
                   measured in this run
  dparams vs fmlp  max |p - p_fmlp| / max |p_fmlp| over the W and b after the last round

Time to accuracy (``--time-to-accuracy T``): fmlp runs ``--config`` (default
configs/fashion_mnist.yaml) as is, built from the pieces ``fmlp.run.fit`` builds; the
peers use the same architecture, initial weights, split, batches and optimizer (SGD with the
config's momentum/Nesterov and per-step learning-rate schedule). The clock starts before
each contestant's setup (data loading and imports excluded, compilation included) and
stops when the test accuracy, evaluated after every epoch with the clock paused, first
reaches T; each round starts from scratch, compiling again.

Defaults differ by backend: on GPU a 784-8192-8192-8192-10 case at batch 8192 in bfloat16
(mixed precision: float32 params, layers in bfloat16, loss in float32) is added, and the
JSON goes to benchmarks/bench_gpu.json instead of benchmarks/bench_cpu.json (``_tta``
appended in time-to-accuracy mode).

The package: :mod:`~fmlp.bench.problem` (what every contestant trains),
:mod:`~fmlp.bench.contestants`, :mod:`~fmlp.bench.measure`, :mod:`~fmlp.bench.report`; this
module is the command line, :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fmlp import config, data, errors, run, train
from fmlp.bench.contestants import BENCH_HINT as BENCH_HINT
from fmlp.bench.contestants import CONTESTANTS as CONTESTANTS
from fmlp.bench.contestants import Skip as Skip
from fmlp.bench.contestants import Trainer as Trainer
from fmlp.bench.contestants import equinox_trainer as equinox_trainer
from fmlp.bench.contestants import fmlp_trainer as fmlp_trainer
from fmlp.bench.contestants import jax_scan_trainer as jax_scan_trainer
from fmlp.bench.contestants import jax_step_trainer as jax_step_trainer
from fmlp.bench.contestants import nnx_trainer as nnx_trainer
from fmlp.bench.contestants import sklearn_trainer as sklearn_trainer
from fmlp.bench.contestants import torch_trainer as torch_trainer
from fmlp.bench.contestants import train_epochs as train_epochs
from fmlp.bench.measure import matmul_rate as matmul_rate
from fmlp.bench.measure import throughput as throughput
from fmlp.bench.measure import time_to_accuracy as time_to_accuracy
from fmlp.bench.problem import DTYPES as DTYPES
from fmlp.bench.problem import Case as Case
from fmlp.bench.problem import NumpyParams as NumpyParams
from fmlp.bench.problem import Optim as Optim
from fmlp.bench.problem import Problem as Problem
from fmlp.bench.problem import accuracy as accuracy
from fmlp.bench.problem import constant_sgd as constant_sgd
from fmlp.bench.problem import flops_per_example as flops_per_example
from fmlp.bench.problem import initial as initial
from fmlp.bench.problem import make_problem as make_problem
from fmlp.bench.problem import numpy_params as numpy_params
from fmlp.bench.problem import params_difference as params_difference
from fmlp.bench.problem import parse_case as parse_case
from fmlp.bench.problem import scheduled_sgd as scheduled_sgd
from fmlp.bench.report import THROUGHPUT_COLUMNS as THROUGHPUT_COLUMNS
from fmlp.bench.report import TTA_COLUMNS as TTA_COLUMNS
from fmlp.bench.report import metadata as metadata
from fmlp.bench.report import throughput_table as throughput_table
from fmlp.bench.report import tta_table as tta_table

CPU_CASES = ("784-16-16-10:16", "784-256-256-10:128", "784-1024-1024-10:512")
GPU_CASES = ("784-8192-8192-8192-10:8192:bfloat16",)
SWEEP_WIDTHS = (64, 128, 512, 2048)
SWEEP_BATCH = 128


def _parser() -> argparse.ArgumentParser:
    summary, _, details = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        prog="fmlp bench",
        description=summary,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        help="MODEL[:BATCH[:DTYPE]],... e.g. 784-256-256-10:128 (default: "
        f"{','.join(CPU_CASES)}, on GPU also {','.join(GPU_CASES)})",
    )
    p.add_argument(
        "--sweep",
        help=f"widths W of 784-W-W-10 at batch {SWEEP_BATCH} (default "
        f"{','.join(map(str, SWEEP_WIDTHS))} unless --sizes is given; '' for none)",
    )
    p.add_argument(
        "--dtype", choices=DTYPES, help="compute dtype of every case (default: each case's)"
    )
    p.add_argument("--epochs", type=int, default=2, help="epochs per round (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--subset", type=int, help="train on this many examples (quick runs)")
    p.add_argument("--only", help=f"comma-separated contestants among {','.join(CONTESTANTS)}")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    p.add_argument(
        "--unroll",
        type=int,
        default=1,
        help="fmlp's and jax-scan's steps per iteration of their compiled epoch loops "
        "(default 1; --time-to-accuracy takes the config's train.unroll)",
    )
    p.add_argument("--data-path", help="directory of the Fashion-MNIST IDX files")
    p.add_argument("--matmul-size", type=int, help="n of the n x n matmul (default 2048, GPU 8192)")
    p.add_argument("--out", help="JSON path (default benchmarks/bench_<backend>[_tta].json)")
    p.add_argument(
        "--time-to-accuracy",
        type=float,
        metavar="T",
        help="instead: seconds to test accuracy T, trained as --config says",
    )
    p.add_argument(
        "--config",
        default="configs/fashion_mnist.yaml",
        help="fmlp config for --time-to-accuracy (default configs/fashion_mnist.yaml)",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for --time-to-accuracy, e.g. train.epochs=5 (repeatable)",
    )
    return p


def _cases(args: argparse.Namespace, gpu: bool) -> list[Case]:
    specs = args.sizes.split(",") if args.sizes else [*CPU_CASES, *(GPU_CASES if gpu else ())]
    sweep = args.sweep if args.sweep is not None else ("" if args.sizes else None)
    widths = SWEEP_WIDTHS if sweep is None else [int(w) for w in sweep.split(",") if w]
    cases = [parse_case(s) for s in specs] + [Case((784, w, w, 10), SWEEP_BATCH) for w in widths]
    return [dataclasses.replace(c, dtype=args.dtype) if args.dtype else c for c in cases]


def _run_throughput(args: argparse.Namespace, names: list[str], gpu: bool) -> dict[str, Any]:
    ds = data.load(
        "fashion_mnist", path=args.data_path, validation_fraction=0.0, subset=args.subset
    )
    rates: dict[str, dict[str, Any]] = {}
    rows = []
    for case in _cases(args, gpu):
        if case.dtype not in rates:
            rates[case.dtype] = matmul_rate(case.dtype, args.matmul_size or (8192 if gpu else 2048))
        steps = args.epochs * math.ceil(len(ds.x_train) / case.batch)
        params, key = initial(args.seed, case.sizes)
        problem = make_problem(
            ds.x_train, ds.y_train, ds.x_test, ds.y_test,
            sizes=case.sizes, batch_size=case.batch, epochs=args.epochs,
            optim=constant_sgd(args.lr, args.momentum, steps=steps),
            params=params, key=key, dtype=case.dtype, unroll=args.unroll,
        )  # fmt: skip
        peak = rates[case.dtype]["gflops"] * 1e9
        rows += throughput(problem, names, epochs=args.epochs, rounds=args.rounds, peak_flops=peak)
        print(throughput_table(rows[-len(names) :]) + "\n", flush=True)
    settings = {k: vars(args)[k] for k in ("epochs", "rounds", "lr", "momentum", "seed", "unroll")}
    return {"settings": settings, "matmul": rates, "results": rows}


def _run_tta(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    overrides = list(args.override)
    overrides += [f"data.subset={args.subset}"] if args.subset else []
    overrides += [f"data.path={args.data_path}"] if args.data_path else []
    cfg = config.resolve(args.config, overrides)
    m, o = cfg.model, cfg.optimizer
    plain = ("relu", "cross_entropy", "sgd", 0.0, None, 1)
    blocks = m.dropout or m.layer_norm or m.residual or m.label_smoothing  # others lack them
    setting = (m.activation, m.loss, o.name, o.weight_decay, o.clip_norm, cfg.train.accumulate)
    if setting != plain or blocks or o.schedule == "plateau":
        raise errors.ConfigError(
            f"--time-to-accuracy needs model.activation=relu, model.loss=cross_entropy, none of "
            f"model.dropout, layer_norm, residual and label_smoothing, and plain SGD "
            f"(optimizer.name=sgd, no weight_decay, clip_norm, train.accumulate or plateau "
            f"schedule); {args.config} has {m.activation}, {m.loss}, dropout={m.dropout}, "
            f"layer_norm={m.layer_norm}, residual={m.residual}, "
            f"label_smoothing={m.label_smoothing}, {o.name}, weight_decay={o.weight_decay}, "
            f"clip_norm={o.clip_norm}, accumulate={cfg.train.accumulate}, schedule={o.schedule}"
        )
    ds = run.load_dataset(cfg)
    net = train.build_model(cfg, num_features=ds.num_features, num_outputs=ds.num_outputs)
    epochs, batch = cfg.train.epochs, cfg.train.batch_size
    steps_per_epoch = math.ceil(len(ds.x_train) / batch)
    optimizer = train.make_optimizer(o, steps_per_epoch=steps_per_epoch, epochs=epochs)
    state = train.init_state(net, optimizer.tx, seed=cfg.train.seed)
    optim = scheduled_sgd(
        optimizer.tx, optimizer.schedule, o.momentum, nesterov=o.nesterov,
        steps=steps_per_epoch * epochs,
    )  # fmt: skip
    problem = make_problem(
        ds.x_train, ds.y_train, ds.x_test, ds.y_test,
        sizes=net.sizes, batch_size=batch, epochs=epochs, optim=optim,
        params=numpy_params(state.params), key=np.asarray(state.key),
        dtype=cfg.precision, unroll=cfg.train.unroll,
    )  # fmt: skip
    rows = time_to_accuracy(
        problem, names, target=args.time_to_accuracy, epochs=epochs, rounds=args.rounds
    )
    print(tta_table(rows) + "\n", flush=True)
    settings = {
        "config": args.config,
        "overrides": overrides,
        "rounds": args.rounds,
        "epochs": epochs,
        "clock": "setup + compile + training epochs; test evaluation paused",
    }
    return {"settings": settings, "results": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark the command line asks for; print tables, write and return the JSON."""
    # torch shares the GPU: XLA must not take 75% of it up front (read when JAX starts a GPU)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONTESTANTS)
    unknown = sorted(set(names) - set(CONTESTANTS))
    if unknown:
        parser.error(f"--only: unknown contestants {unknown}; choose from {list(CONTESTANTS)}")
    if args.time_to_accuracy is None and args.epochs * args.rounds < 2:
        parser.error("--epochs x --rounds must be at least 2: the first epoch is warm-up")
    if args.unroll < 1:
        parser.error(f"--unroll must be at least 1, got {args.unroll}")
    backend = jax.default_backend()
    command = shlex.join(["fmlp", "bench", *argv])
    meta = metadata(command)
    print(f"# fmlp training benchmark, {meta['date']}\n")
    print(f"{meta['cpu']} ({meta['cpu_count']} cores), {backend}: {meta['device']}")
    print(", ".join(f"{p} {v}" for p, v in meta["versions"].items() if v) + "\n")
    if args.time_to_accuracy is not None:
        report = _run_tta(args, names)
    else:
        report = _run_throughput(args, names, backend == "gpu")
        for rate in report["matmul"].values():
            print(f"matmul {rate['n']}x{rate['n']} {rate['dtype']}: {rate['gflops']:.1f} GFLOP/s")
    report = {"meta": meta} | report
    tta = "_tta" if args.time_to_accuracy is not None else ""
    out = Path(args.out or f"benchmarks/bench_{backend}{tta}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report
