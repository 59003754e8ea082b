"""Public gradient checkers: verify a gate's VJP, or the engine on a whole function, against JAX.

``jax.vjp``/``jax.grad`` are the oracle here, never a fallback inside the engine. Use these
checkers on your own gates the way the test suite uses them on fmlp's:

>>> import fmlp
>>> fmlp.testing.check_gate("tanh") < 1e-6
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fmlp import engine
from fmlp.engine import REGISTRY, Gate
from fmlp.errors import UnknownGateError
from fmlp.gates import sample_rng

PyTree = Any

#: Default relative-error tolerances per dtype for the VJP vs ``jax.vjp`` comparison.
TOLERANCE = {jnp.dtype("float32"): 2e-4, jnp.dtype("float64"): 1e-9}
#: Tolerance for the finite-difference inner-product test (always run in float64).
FD_TOLERANCE = 1e-5


class GradientCheckError(AssertionError):
    """A VJP or gradient disagrees with the oracle by more than the tolerance."""


def relative_error(ours: jax.Array, ref: jax.Array) -> jax.Array:
    """``max|ours - ref| / max(|ours|, |ref|)`` as a jittable scalar (0 where both are 0)."""
    scale = jnp.maximum(jnp.max(jnp.abs(ours)), jnp.max(jnp.abs(ref)))
    diff = jnp.max(jnp.abs(ours - ref))
    return jnp.where(scale > 0, diff / jnp.where(scale > 0, scale, 1), 0.0)


def _rel_error(ours: Any, ref: Any) -> float:
    """max |ours - ref| / max(|ref|, |ours|), floored so exact zeros compare absolutely."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    if ours.size == 0:
        return 0.0
    scale = max(np.max(np.abs(ref)), np.max(np.abs(ours)), 1e-6)
    return float(np.max(np.abs(ours - ref)) / scale)


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _gate_cotangents(gate: Gate, ct: Any, out: Any, args: tuple, params: dict) -> list:
    """The gate's hand-written VJP, with each cotangent summed back to its input's shape."""
    cts = gate.vjp(ct, out, *args, **params)
    if len(cts) != len(args):
        raise GradientCheckError(
            f"VJP of gate {gate.name!r} returned {len(cts)} cotangents for {len(args)} inputs."
        )
    return [
        engine.unbroadcast(jnp.asarray(c), jnp.shape(a)) if c is not None else jnp.zeros_like(a)
        for a, c in zip(args, cts)
    ]


def _describe(args: tuple, params: dict) -> str:
    shapes = ", ".join(f"{jnp.shape(a)} {jnp.result_type(a)}" for a in args)
    return f"inputs ({shapes})" + (f" params {params}" if params else "")


class GateReport(NamedTuple):
    """What :func:`compare_gate` found: the worst errors and a line per failing sample."""

    name: str
    dtype: str
    vs_jax: float  # largest relative error vs jax.vjp over the samples
    vs_fd: float  # largest relative error vs finite differences (float64)
    failures: list[str]


def compare_gate(
    gate: Gate | str,
    *,
    key: jax.Array | None = None,
    dtype: Any = jnp.float64,
    tolerance: float | None = None,
    fd_tolerance: float = FD_TOLERANCE,
) -> GateReport:
    """Compare a gate's hand-written VJP with the oracles on all of its samples.

    Arguments as in :func:`check_gate`; returns a :class:`GateReport` listing any mismatch
    instead of raising. An unknown gate name raises :class:`~fmlp.errors.UnknownGateError`.
    """
    gate = REGISTRY[gate] if isinstance(gate, str) else gate
    key = jax.random.key(0) if key is None else key
    tolerance = TOLERANCE[jnp.dtype(dtype)] if tolerance is None else tolerance
    worst, failures = [0.0, 0.0], []
    with jax.enable_x64(True):
        k_samples, k_check = jax.random.split(key)
        rng = sample_rng(k_check)
        for i, (args, params) in enumerate(gate.samples(k_samples, dtype)):
            errors = _compare(gate, args, params, rng)
            for j, (label, err, tol) in enumerate(
                zip(("jax.vjp", "finite differences"), errors, (tolerance, fd_tolerance))
            ):
                worst[j] = max(worst[j], err)
                if not err <= tol:
                    failures.append(
                        f"  sample {i} {_describe(args, params)}: relative error {err:.3g} vs "
                        f"{label} (tolerance {tol:g})"
                    )
    return GateReport(gate.name, jnp.dtype(dtype).name, worst[0], worst[1], failures)


def check_gate(
    gate: Gate | str,
    *,
    key: jax.Array | None = None,
    dtype: Any = jnp.float64,
    tolerance: float | None = None,
    fd_tolerance: float = FD_TOLERANCE,
) -> float:
    """Check a gate's hand-written VJP on all of its sample inputs.

    Two comparisons per sample: the VJP against ``jax.vjp`` of the same forward, on a random
    cotangent, in ``dtype``; and the inner-product identity
    ``<ct, (f(x + h v) - f(x - h v)) / 2h> == sum_i <vjp_i(ct), v_i>`` by central finite
    differences in float64.

    Args:
      gate: a :class:`~fmlp.gates.Gate` or the name of a registered one.
      key: PRNG key for samples, cotangents and directions (default ``jax.random.key(0)``).
      dtype: float dtype of the samples for the ``jax.vjp`` comparison.
      tolerance: max relative error allowed vs ``jax.vjp`` (default :data:`TOLERANCE`).
      fd_tolerance: max relative error allowed vs finite differences.

    Returns:
      The largest relative error seen over all samples and both comparisons.

    Raises:
      GradientCheckError: with a report of every failing sample.
      UnknownGateError: no gate of that name is registered.
    """
    report = compare_gate(
        gate, key=key, dtype=dtype, tolerance=tolerance, fd_tolerance=fd_tolerance
    )
    if report.failures:
        raise GradientCheckError(
            f"VJP of gate {report.name!r} disagrees with the oracle:\n" + "\n".join(report.failures)
        )
    return max(report.vs_jax, report.vs_fd)


def _compare(
    gate: Gate, args: tuple, params: dict, rng: np.random.Generator
) -> tuple[float, float]:
    """Relative errors of the gate's VJP vs ``jax.vjp``, and vs finite differences (float64)."""
    diff = [i for i, a in enumerate(args) if _is_float(a)]
    args64 = tuple(jnp.asarray(a, jnp.float64) if i in diff else a for i, a in enumerate(args))
    out_shape = jax.eval_shape(lambda *a: gate.forward(*a, **params), *args).shape
    ct = rng.standard_normal(out_shape)
    dirs = [rng.standard_normal(jnp.shape(args[i])) for i in diff]

    def with_diff(full: tuple, diff_args: Sequence[Any]) -> tuple:
        full = list(full)
        for i, a in zip(diff, diff_args):
            full[i] = a
        return tuple(full)

    @jax.jit  # one compilation per sample, not one per operation
    def cotangents(args: tuple, args64: tuple, ct: jax.Array, dirs: list) -> tuple:
        out, oracle_vjp = jax.vjp(
            lambda *d: gate.forward(*with_diff(args, d), **params), *(args[i] for i in diff)
        )
        ct_in = ct.astype(jnp.result_type(out))
        ours = _gate_cotangents(gate, ct_in, out, args, params)
        # <ct, J v> by central differences, and <J^T ct, v> from the hand-written VJP
        h = 1e-6
        shifted = lambda s: gate.forward(
            *with_diff(args64, [args64[i] + s * v for i, v in zip(diff, dirs)]), **params
        )
        lhs = jnp.sum(ct * (shifted(h) - shifted(-h)) / (2 * h))
        ours64 = _gate_cotangents(gate, ct, gate.forward(*args64, **params), args64, params)
        rhs = sum(jnp.sum(ours64[i] * v) for i, v in zip(diff, dirs))
        return [ours[i] for i in diff], list(oracle_vjp(ct_in)), lhs, rhs

    ours, ref, lhs, rhs = cotangents(args, args64, jnp.asarray(ct), [jnp.asarray(d) for d in dirs])
    vs_jax = max([_rel_error(o, r) for o, r in zip(ours, ref)], default=0.0)
    lhs, rhs = float(lhs), float(rhs)
    return vs_jax, abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-3)


def check_grad(
    fun: Callable[..., Any],
    *args: Any,
    argnums: int | Sequence[int] = 0,
    tolerance: float | None = None,
) -> float:
    """Check :func:`fmlp.grad` of ``fun`` against :func:`jax.grad` of the very same function.

    Args:
      fun: scalar-valued function written with gates.
      *args: where to differentiate; pytrees of arrays.
      argnums: which arguments to differentiate, as in :func:`jax.grad`.
      tolerance: max relative error per gradient leaf (default from the leaves' dtype).

    Returns:
      The largest relative error over all gradient leaves (and the value).

    Raises:
      GradientCheckError: naming each leaf whose gradient differs, with both values' norms.
    """
    value, grads = jax.jit(engine.value_and_grad(fun, argnums))(*args)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(fun, argnums))(*args)
    leaves = jax.tree_util.tree_leaves_with_path(ref_grads)
    ours = jax.tree.leaves(grads)
    if len(ours) != len(leaves):
        raise GradientCheckError(
            f"engine returned {len(ours)} gradient leaves, jax.grad returned {len(leaves)}."
        )
    worst, failures = _rel_error(value, ref_value), []
    if worst > TOLERANCE[jnp.dtype(jnp.result_type(ref_value))]:
        failures.append(f"  value: {float(value)!r} vs jax {float(ref_value)!r}")
    for (path, ref), g in zip(leaves, ours):
        err = _rel_error(g, ref)
        worst = max(worst, err)
        tol = TOLERANCE[jnp.dtype(jnp.result_type(ref))] if tolerance is None else tolerance
        if not err <= tol:
            failures.append(
                f"  grad{jax.tree_util.keystr(path)}: relative error {err:.3g} (tolerance "
                f"{tol:g}); |engine| = {float(jnp.linalg.norm(g)):.6g}, "
                f"|jax| = {float(jnp.linalg.norm(ref)):.6g}"
            )
    if failures:
        raise GradientCheckError("fmlp.grad disagrees with jax.grad:\n" + "\n".join(failures))
    return worst


def check_all_gates(
    names: Sequence[str] | None = None,
    *,
    dtypes: Sequence[Any] = (jnp.float32, jnp.float64),
    key: jax.Array | None = None,
) -> list[GateReport]:
    """:func:`compare_gate` for each named gate (default: all registered) and dtype."""
    names = sorted(REGISTRY) if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UnknownGateError(f"No gate named {unknown}; registered gates: {sorted(REGISTRY)}.")
    return [compare_gate(name, key=key, dtype=d) for name in names for d in dtypes]


def format_reports(reports: Sequence[GateReport]) -> str:
    """A table of :class:`GateReport` rows, then each failing sample."""
    lines = [f"{'gate':<24} {'dtype':<8} {'vs jax.vjp':>11} {'vs fin. diff':>12}  result"]
    for r in reports:
        result = "FAIL" if r.failures else "ok"
        lines.append(f"{r.name:<24} {r.dtype:<8} {r.vs_jax:>11.2e} {r.vs_fd:>12.2e}  {result}")
    for r in reports:
        if r.failures:
            lines += ["", f"{r.name} ({r.dtype}):", *r.failures]
    return "\n".join(lines)
