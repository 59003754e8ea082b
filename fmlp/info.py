"""Entropy, cross-entropy and KL divergence of discrete distributions, as in the lecture.

The entropy ``H(C) = -sum_i P(c_i) log2 P(c_i)`` is the expected number of bits an ideal code
spends per value of ``C``. Coding with a model's estimates ``P_m`` instead costs the
cross-entropy ``H_{P_m}(C) = -sum_i P(c_i) log2 P_m(c_i)`` bits, never fewer than ``H(C)``
(Gibbs' inequality); the difference is the KL divergence. For a one-hot ``P`` (the correct
class), the cross-entropy is ``-log2 P_m(correct class)``: the classification loss.

These are plain ``jax.numpy`` functions for inspection and teaching; training uses the
gate :func:`fmlp.gates.softmax_cross_entropy` (natural log) for its loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

_LOG_BASES = {"bits": math.log(2.0), "nats": 1.0}


def _scale(unit: str) -> float:
    if unit not in _LOG_BASES:
        raise ValueError(f"unit must be 'bits' or 'nats', got {unit!r}.")
    return _LOG_BASES[unit]


def _xlogy(x: Array, y: Array) -> Array:
    """``x * log(y)`` with the convention ``0 log 0 = 0``."""
    return jax.scipy.special.xlogy(x, y)


def entropy(p: Array, *, unit: str = "bits", axis: int = -1) -> Array:
    """Entropy of the distribution(s) ``p`` along ``axis``: ``-sum p log p``.

    Args:
      p: probabilities of shape ``(..., K)``, summing to 1 along ``axis``.
      unit: ``"bits"`` (log base 2, the lecture's unit) or ``"nats"``.
      axis: the axis holding the distribution.

    Returns:
      Array of shape ``(...)``.

    >>> float(entropy(jnp.array([0.5, 0.5])))
    1.0
    """
    return -jnp.sum(_xlogy(p, p), axis=axis) / _scale(unit)


def cross_entropy(p: Array, q: Array, *, unit: str = "bits", axis: int = -1) -> Array:
    """Cross-entropy ``H_q(p) = -sum p log q``: bits to code ``p``-distributed values with ``q``.

    Args:
      p: true distribution ``(..., K)`` (e.g. a one-hot target ``t``).
      q: model distribution ``(..., K)`` (e.g. the softmax output ``o``).
      unit: ``"bits"`` or ``"nats"``.
      axis: the axis holding the distributions.

    Returns:
      Array of shape ``(...)``; infinite where ``q`` gives zero probability to a value ``p`` has.

    >>> float(cross_entropy(jnp.array([0.0, 1.0]), jnp.array([0.5, 0.5])))
    1.0
    """
    return -jnp.sum(_xlogy(p, q), axis=axis) / _scale(unit)


def kl_divergence(p: Array, q: Array, *, unit: str = "bits", axis: int = -1) -> Array:
    """KL divergence ``D(p || q) = H_q(p) - H(p) >= 0``, shape ``(...)``."""
    return cross_entropy(p, q, unit=unit, axis=axis) - entropy(p, unit=unit, axis=axis)
