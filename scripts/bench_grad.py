"""Engine vs jax.grad: jitted value_and_grad of the same MLP loss, interleaved, one process.

Usage: python scripts/bench_grad.py [--rounds 7] [--steps 20] [--out benchmarks/bench_grad.json]

Prints a table of median step times (min/max in brackets) and the ratio engine / jax, and
writes the same figures as JSON. A ratio <= 1.00 within noise means the engine costs
nothing over jax.grad: under jit both become one XLA program.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import fmlp

CASES = [((784, 256, 256, 10), 128), ((784, 1024, 1024, 10), 512)]


def _timed(fn, params, x, y, steps: int) -> float:
    out = None
    start = time.perf_counter()
    for _ in range(steps):
        out = fn(params, x, y)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def bench_case(sizes: tuple[int, ...], batch: int, rounds: int, steps: int) -> dict:
    """Median seconds per jitted value_and_grad step for the engine and for jax.grad."""
    kp, kx, ky = jax.random.split(jax.random.key(0), 3)
    net = fmlp.nn.mlp(sizes, activation="relu", output="softmax", scheme="he_uniform")
    params = net.init(kp)
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    fns = {
        "engine": jax.jit(fmlp.value_and_grad(net.loss)),
        "jax": jax.jit(jax.value_and_grad(net.loss)),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        _timed(fn, params, x, y, 2)  # compile and warm up
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_timed(fn, params, x, y, steps))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "model": "-".join(map(str, sizes)),
        "batch": batch,
        "seconds": times,
        "median_engine_ms": 1e3 * med["engine"],
        "median_jax_ms": 1e3 * med["jax"],
        "ratio_engine_over_jax": med["engine"] / med["jax"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/bench_grad.json")
    args = parser.parse_args()
    results = [bench_case(s, b, args.rounds, args.steps) for s, b in CASES]
    print(f"{'model':<20} {'batch':>5} {'engine ms':>22} {'jax ms':>22} {'engine/jax':>10}")
    for r in results:
        e, j = r["seconds"]["engine"], r["seconds"]["jax"]
        print(
            f"{r['model']:<20} {r['batch']:>5} "
            f"{r['median_engine_ms']:>7.3f} [{1e3 * min(e):.3f}-{1e3 * max(e):.3f}] "
            f"{r['median_jax_ms']:>7.3f} [{1e3 * min(j):.3f}-{1e3 * max(j):.3f}] "
            f"{r['ratio_engine_over_jax']:>10.3f}"
        )
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device": str(jax.devices()[0]),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
