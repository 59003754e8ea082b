"""The in-epoch progress bar's cost: one Fashion-MNIST epoch with and without its callback.

Usage: python scripts/bench_progress.py [--rounds 30] [--out benchmarks/bench_progress.json]

The 784-256-256-10 ReLU net of configs/fashion_mnist.yaml (SGD, batch 128, 422 steps an
epoch) is compiled twice by fmlp.train.make_epoch: plain, and with the progress callback
``fmlp train`` uses after an epoch longer than fmlp.run.PROGRESS_AFTER when it shows a bar
(fmlp.run._ProgressBar.steps_done, drawing into /dev/null, every
``steps // fmlp.run.PROGRESS_UPDATES``-th step).
Epochs of the two alternate in one process (A B, then B A); the ratio of the median epoch
times, and the median of the rounds' ratios, are the callback's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import jax

import fmlp
from fmlp import config, run, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="epochs of each, interleaved")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    cfg = config.load(ROOT / "configs" / "fashion_mnist.yaml")
    ds = run.load_dataset(cfg)
    net = train.build_model(cfg, num_features=ds.num_features, num_outputs=ds.num_outputs)
    n, batch = len(ds.x_train), cfg.train.batch_size
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
    every = max(1, steps // run.PROGRESS_UPDATES)
    permute = train.use_permuted_copy("auto", net, x, y, batch_size=batch)
    options = {"n": n, "batch_size": batch, "permute": permute, "progress_every": every}
    epochs = {
        name: train.make_epoch(net.loss, optimizer.tx, progress=progress, **options)
        for name, progress in (("plain", None), ("progress", bar.steps_done))
    }
    states = {name: train.init_state(net, optimizer.tx, seed=0) for name in epochs}
    times: dict[str, list[float]] = {name: [] for name in epochs}
    with contextlib.redirect_stderr(devnull):
        for name, epoch in epochs.items():  # compile and warm up
            states[name], loss = epoch(states[name], x, y)
            jax.block_until_ready(loss)
        for round in range(args.rounds):
            order = list(epochs.items())
            for name, epoch in order if round % 2 == 0 else order[::-1]:  # ABBA: no drift bias
                bar.begin()
                start = time.perf_counter()
                states[name], loss = epoch(states[name], x, y)
                jax.block_until_ready(loss)
                times[name].append(time.perf_counter() - start)
        bar.close()
    median = {name: statistics.median(t) for name, t in times.items()}
    paired = [p / q for p, q in zip(times["progress"], times["plain"])]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "fmlp": fmlp.__version__,
        "model": "-".join(map(str, net.sizes)),
        "batch": batch,
        "steps_per_epoch": steps,
        "callback_every": every,
        "seconds": times,
        "median_plain_s": median["plain"],
        "median_progress_s": median["progress"],
        "ratio_of_medians": median["progress"] / median["plain"],
        "median_paired_ratio": statistics.median(paired),
    }
    print(
        f"{result['model']} batch {batch}, {steps} steps, a callback every {every}: plain "
        f"{median['plain']:.3f} s, with the progress callback {median['progress']:.3f} s "
        f"(median of {args.rounds}); ratio {result['ratio_of_medians']:.4f}, "
        f"median paired ratio {result['median_paired_ratio']:.4f}",
        file=sys.stdout,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
