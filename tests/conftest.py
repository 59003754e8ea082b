"""Strict numerics for every test: no silent rank promotion or dtype widening.

Warnings are errors (pyproject.toml). float64 is enabled so gradient checks can run in double
precision; tests that want float32 ask for it.
"""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key() -> jax.Array:
    """A fixed PRNG key, so every test is reproducible."""
    return jax.random.key(0)
