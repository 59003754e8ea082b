"""The measurements: throughput (examples/s), time to a test accuracy, the device's matmul rate.

Each returns the JSON rows of the report (see :mod:`fmlp.bench` for the columns); a
contestant that cannot be built or fails is a ``skipped`` row with the reason.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fmlp.bench.contestants import CONTESTANTS, Skip, Trainer
from fmlp.bench.problem import NumpyParams, Problem, accuracy, flops_per_example, params_difference


def _reason(err: Exception) -> str:
    """Why a contestant is skipped: a :class:`Skip`'s message, else the error's first line."""
    if isinstance(err, Skip):
        return str(err)
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:200]


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "per_round": list(values),
    }


def _row(name: str, problem: Problem, **fields: Any) -> dict[str, Any]:
    return {
        "contestant": name,
        "model": "-".join(map(str, problem.sizes)),
        "batch": problem.batch_size,
        "dtype": problem.dtype,
        "train_examples": problem.n,
    } | fields


def _skipped(name: str, problem: Problem, reason: str) -> dict[str, Any]:
    return _row(name, problem, status="skipped", notes=reason)


def throughput(
    problem: Problem, names: Sequence[str], *, epochs: int, rounds: int, peak_flops: float
) -> list[dict[str, Any]]:
    """Train every contestant ``rounds`` times, round-robin, ``epochs`` epochs each; one row each.

    ``peak_flops`` is the measured matmul rate (FLOP/s) the achieved rate is compared with.
    ``epochs * rounds`` must be at least 2: a contestant's first epoch only warms up.
    """
    if epochs * rounds < 2:
        raise ValueError("epochs * rounds must be at least 2: the first epoch is warm-up")
    rows: dict[str, dict[str, Any]] = {}
    trainers: dict[str, Trainer] = {}
    for name in names:
        try:
            trainers[name] = CONTESTANTS[name](problem)
        except Exception as err:
            rows[name] = _skipped(name, problem, _reason(err))
    seconds: dict[str, list[list[float]]] = {name: [] for name in trainers}
    final: dict[str, NumpyParams] = {}
    for _ in range(rounds):
        for name, trainer in list(trainers.items()):
            try:
                state, secs = trainer.init(), []
                for e in range(epochs):
                    start = time.perf_counter()
                    state = trainer.epoch(state, e)
                    secs.append(time.perf_counter() - start)
            except Exception as err:  # e.g. torch.compile without a working compiler
                rows[name] = _skipped(name, problem, _reason(err))
                del trainers[name]
                continue
            seconds[name].append(secs)
            final[name] = trainer.export(state)

    for name, trainer in trainers.items():
        steady = [secs[1:] if r == 0 else secs for r, secs in enumerate(seconds[name])]
        rates = [problem.n * len(s) / sum(s) for s in steady if s]
        epoch_seconds = statistics.median([s for secs in steady for s in secs])
        rate = statistics.median(rates)
        achieved = rate * flops_per_example(problem.sizes)
        ref = final.get("fmlp")
        rows[name] = _row(
            name,
            problem,
            status="ok",
            examples_per_second=_spread(rates),
            compile_seconds=seconds[name][0][0] - epoch_seconds,
            epoch_seconds=seconds[name],
            seconds_per_epoch=epoch_seconds,
            epochs=epochs,
            test_accuracy=accuracy(final[name], problem.x_test, problem.y_test),
            achieved_gflops=achieved / 1e9,
            fraction_of_matmul_peak=achieved / peak_flops,
            params_difference_vs_fmlp=None if ref is None else params_difference(final[name], ref),
            notes=trainer.notes,
        )
    fmlp_rate = rows.get("fmlp", {}).get("examples_per_second", {}).get("median")
    for row in rows.values():
        if row["status"] == "ok":
            peer = row["examples_per_second"]["median"]
            row["fmlp_speedup"] = None if fmlp_rate is None else fmlp_rate / peer
    return [rows[name] for name in names]


def _race(problem: Problem, name: str, target: float, epochs: int) -> dict[str, Any]:
    """Seconds (clock paused for test evaluation) until test accuracy >= ``target``."""
    start, paused = time.perf_counter(), 0.0
    trainer = CONTESTANTS[name](problem)
    state = trainer.init()
    result = {"seconds": None, "epoch": None, "accuracy": None, "notes": trainer.notes}
    for e in range(epochs):
        state = trainer.epoch(state, e)
        stop = time.perf_counter()
        result["accuracy"] = accuracy(trainer.export(state), problem.x_test, problem.y_test)
        if result["accuracy"] >= target:
            return result | {"seconds": stop - start - paused, "epoch": e + 1}
        paused += time.perf_counter() - stop
    return result


def time_to_accuracy(
    problem: Problem, names: Sequence[str], *, target: float, epochs: int, rounds: int
) -> list[dict[str, Any]]:
    """For each contestant, seconds and epochs to ``target`` test accuracy; rounds round-robin."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name in names:
            if name in rows:
                continue
            try:
                runs[name].append(_race(problem, name, target, epochs))
            except Exception as err:
                rows[name] = _skipped(name, problem, _reason(err))
    for name, results in runs.items():
        if name in rows:
            continue
        reached = [r["seconds"] for r in results if r["seconds"] is not None]
        notes = [results[0]["notes"], "" if reached else f"not reached in {epochs} epochs"]
        rows[name] = _row(
            name,
            problem,
            status="ok",
            target=target,
            seconds_to_target=_spread(reached) if len(reached) == len(results) else None,
            epoch=results[0]["epoch"],
            test_accuracy=results[0]["accuracy"],
            notes="; ".join(note for note in notes if note),
        )
    return [rows[name] for name in names]


def matmul_rate(dtype: str, n: int, reps: int = 10) -> dict[str, Any]:
    """The device's rate for a jitted ``jnp.dot`` of two (n, n) ``dtype`` matrices.

    The fastest of ``reps`` calls: the rate the device reaches, which the training rates are
    compared with (a median would let other load on the machine lower the bar).
    """
    a = jnp.ones((n, n), dtype)  # the values do not change a dense matmul's speed
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        times.append(time.perf_counter() - start)
    return {"n": n, "dtype": dtype, "gflops": 2 * n**3 / min(times) / 1e9}
