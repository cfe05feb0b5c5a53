"""Strict JAX settings for every test: a (B,) vs (B, 1) slip fails loudly."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def rng():
  """A seeded NumPy generator; every test's randomness starts here."""
  return np.random.default_rng(20261129)
