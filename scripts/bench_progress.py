"""The in-epoch progress bar's cost: one Fashion-MNIST epoch with and without its callback.

Usage: python scripts/bench_progress.py [--rounds 30] [--batch-size 128] [--out FILE.json]

The 784-256-256-10 ReLU net of configs/fashion_mnist.yaml (SGD, 54,000 training examples)
is compiled three times by fmlp.train.make_epoch: plain; with the progress callback
``fmlp train`` uses when it shows a bar (fmlp.run._ProgressBar.steps_done, drawing into
/dev/null) at the pace it picks from the plain epoch's time (fmlp.run.progress_every: a
report every fmlp.run.PROGRESS_INTERVAL seconds), as if that epoch were longer than
fmlp.run.PROGRESS_AFTER; and with ten reports an epoch, which gives the cost of one report.
Epochs alternate in one process (A B C, then C B A); the ratios of the median epoch times,
and the medians of the rounds' ratios, are the callback's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import jax

from fmlp import config, run, train
from fmlp.bench.report import metadata

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="epochs of each, interleaved")
    parser.add_argument("--batch-size", type=int, default=128, help="the config's is 128")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    cfg = config.load(ROOT / "configs" / "fashion_mnist.yaml")
    ds = run.load_dataset(cfg)
    net = train.build_model(cfg, num_features=ds.num_features, num_outputs=ds.num_outputs)
    n, batch = len(ds.x_train), args.batch_size
    steps = math.ceil(n / batch)
    optimizer = train.make_optimizer(cfg.optimizer, steps_per_epoch=steps, epochs=100)
    x, y = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    with contextlib.redirect_stderr(devnull):
        fake = types.SimpleNamespace(
            cfg=config.from_dict({"run": {"progress": "always"}, "train": {"epochs": 10**6}}),
            main=True, state=types.SimpleNamespace(epoch=0), arrays=(ds.x_train,),
        )  # fmt: skip
        bar = run._ProgressBar(fake)
    permute = train.use_permuted_copy("auto", net, x, y, batch_size=batch)
    options = {"n": n, "batch_size": batch, "permute": permute}

    def compiled(progress: Any = None, every: int = 1) -> Any:
        epoch = train.make_epoch(
            net.loss, optimizer.tx, progress=progress, progress_every=every, **options
        )
        state = train.init_state(net, optimizer.tx, seed=0)
        state, loss = epoch(state, x, y)  # compile and warm up
        jax.block_until_ready(loss)
        return epoch, state

    with contextlib.redirect_stderr(devnull):
        epochs, states = {}, {}
        epochs["plain"], states["plain"] = compiled()
        plain = []
        for _ in range(3):
            start = time.perf_counter()
            states["plain"], loss = epochs["plain"](states["plain"], x, y)
            jax.block_until_ready(loss)
            plain.append(time.perf_counter() - start)
        paces = {"progress": run.progress_every(steps, statistics.median(plain)),
                 "ten_reports": max(1, steps // 10)}  # fmt: skip
        for name, every in paces.items():
            epochs[name], states[name] = compiled(bar.steps_done, every)
        times: dict[str, list[float]] = {name: [] for name in epochs}
        for round in range(args.rounds):
            order = list(epochs.items())
            for name, epoch in order if round % 2 == 0 else order[::-1]:  # ABC CBA: no drift bias
                bar.begin()
                start = time.perf_counter()
                states[name], loss = epoch(states[name], x, y)
                jax.block_until_ready(loss)
                times[name].append(time.perf_counter() - start)
        bar.close()
    median = {name: statistics.median(t) for name, t in times.items()}
    reports = {name: steps // every + (steps % every > 0) for name, every in paces.items()}
    cost = {
        name: {
            "steps_between_reports": every,
            "reports_per_epoch": reports[name],
            "median_s": median[name],
            "ratio_of_medians": median[name] / median["plain"],
            "median_paired_ratio": statistics.median(
                p / q for p, q in zip(times[name], times["plain"])
            ),
        }
        for name, every in paces.items()
    }
    per_report = (median["ten_reports"] - median["plain"]) / reports["ten_reports"]
    result = {
        **metadata(" ".join(["python", *sys.argv])),  # date, CPU, device, versions
        "load_average": os.getloadavg(),
        "model": "-".join(map(str, net.sizes)),
        "batch": batch,
        "steps_per_epoch": steps,
        "progress_interval_s": run.PROGRESS_INTERVAL,
        "seconds": times,
        "median_plain_s": median["plain"],
        "cost": cost,
        "seconds_per_report": per_report,
    }
    print(
        f"{result['model']} batch {batch}, {steps} steps: plain epoch {median['plain']:.3f} s "
        f"(median of {args.rounds})",
        file=sys.stdout,
    )
    for name, c in cost.items():
        print(
            f"  {name}: a report every {c['steps_between_reports']} steps "
            f"({c['reports_per_epoch']} an epoch): {c['median_s']:.3f} s, ratio "
            f"{c['ratio_of_medians']:.4f}, median paired ratio {c['median_paired_ratio']:.4f}"
        )
    print(f"  one report costs {per_report * 1e3:.2f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
