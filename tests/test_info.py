"""Entropy, cross-entropy and KL divergence, with the lecture's examples."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmlp import info

# The lecture's model output o for ten classes (sums to 1) and the one-hot target t.
LECTURE_O = jnp.array([0.05, 0.12, 0.08, 0.10, 0.07, 0.11, 0.09, 0.13, 0.11, 0.14])


def test_entropy_of_a_fair_coin_is_one_bit():
    assert float(info.entropy(jnp.array([0.5, 0.5]))) == pytest.approx(1.0, abs=1e-12)


def test_entropy_of_uniform_over_four_is_two_bits():
    assert float(info.entropy(jnp.full(4, 0.25))) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_entropy_of_a_one_hot_distribution_is_zero(k):
    p = jnp.zeros(5).at[k].set(1.0)
    h = info.entropy(p)
    assert not bool(jnp.isnan(h))
    assert float(h) == pytest.approx(0.0, abs=1e-12)


def test_entropy_of_a_biased_coin():
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert float(info.entropy(jnp.array([0.9, 0.1]))) == pytest.approx(h, rel=1e-12)


def test_nats_are_bits_times_ln2():
    p = jnp.array([0.2, 0.3, 0.5])
    q = jnp.array([0.4, 0.4, 0.2])
    bits, nats = info.entropy(p), info.entropy(p, unit="nats")
    assert float(nats) == pytest.approx(float(bits) * math.log(2.0), rel=1e-12)
    assert float(nats) == pytest.approx(-float(jnp.sum(p * jnp.log(p))), rel=1e-12)
    ce_bits, ce_nats = info.cross_entropy(p, q), info.cross_entropy(p, q, unit="nats")
    assert float(ce_nats) == pytest.approx(float(ce_bits) * math.log(2.0), rel=1e-12)
    kl_bits, kl_nats = info.kl_divergence(p, q), info.kl_divergence(p, q, unit="nats")
    assert float(kl_nats) == pytest.approx(float(kl_bits) * math.log(2.0), rel=1e-12)


def test_lecture_example_probabilities_sum_to_one():
    assert float(jnp.sum(LECTURE_O)) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("correct", [0, 3, 9])
def test_cross_entropy_of_a_one_hot_target_is_minus_log2_of_the_correct_probability(correct):
    t = jnp.zeros(10).at[correct].set(1.0)
    expected = -math.log2(float(LECTURE_O[correct]))
    assert float(info.cross_entropy(t, LECTURE_O)) == pytest.approx(expected, rel=1e-12)
    # The KL divergence from a one-hot target is the same number: H(t) = 0.
    assert float(info.kl_divergence(t, LECTURE_O)) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_is_infinite_where_the_model_gives_zero_probability():
    assert float(info.cross_entropy(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0]))) == math.inf


def test_batched_measures_along_an_axis():
    p = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    h = info.entropy(p)
    assert h.shape == (3,)
    assert float(h[0]) == pytest.approx(1.0)
    assert float(h[1]) == pytest.approx(0.0)
    np.testing.assert_allclose(info.entropy(p.T, axis=0), h, rtol=1e-12)
    np.testing.assert_allclose(info.cross_entropy(p, p), h, rtol=1e-12, atol=1e-15)


def test_kl_divergence_is_zero_for_equal_distributions_and_positive_otherwise():
    p = jnp.array([0.2, 0.3, 0.5])
    assert float(info.kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    q = jnp.array([0.3, 0.3, 0.4])
    assert float(info.kl_divergence(p, q)) > 0.0
    assert float(info.kl_divergence(q, p)) > 0.0


@pytest.mark.parametrize("fn", [info.entropy, info.cross_entropy, info.kl_divergence])
@pytest.mark.parametrize("unit", ["bit", "BITS", "nat", "log2", ""])
def test_bad_unit_raises(fn, unit):
    p = jnp.array([0.5, 0.5])
    args = (p,) if fn is info.entropy else (p, p)
    with pytest.raises(ValueError, match=rf"unit must be 'bits' or 'nats', got '{unit}'"):
        fn(*args, unit=unit)


def _distribution(weights: list[float]) -> jnp.ndarray:
    w = np.asarray(weights, np.float64)
    return jnp.asarray(w / w.sum())


@st.composite
def distribution_pairs(draw):
    """(p, q) over the same k values: p may have zeros, q is strictly positive."""
    k = draw(st.integers(min_value=1, max_value=8))
    p = draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k).filter(lambda w: sum(w) > 1e-3))
    q = draw(st.lists(st.floats(1e-3, 1.0), min_size=k, max_size=k))
    return _distribution(p), _distribution(q)


@settings(deadline=None, max_examples=50, database=None)
@given(distribution_pairs())
def test_gibbs_inequality(pq):
    p, q = pq
    h = float(info.entropy(p))
    ce = float(info.cross_entropy(p, q))
    kl = float(info.kl_divergence(p, q))
    assert np.isfinite(ce)
    assert ce >= h - 1e-9
    assert kl >= -1e-9
    assert kl == pytest.approx(ce - h, abs=1e-9)
    # Entropy lies between 0 and log2 k.
    assert -1e-12 <= h <= math.log2(p.shape[0]) + 1e-9
