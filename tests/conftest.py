"""Strict JAX settings for every test: a (B,) vs (B, 1) slip fails loudly."""

import jax
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def strict_promotion():
  # A fixture, not a global config update: the benchmarks in the same session
  # call optax, which mixes dtypes on purpose.
  with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
    yield


@pytest.fixture
def rng():
  """A seeded NumPy generator; every test's randomness starts here."""
  return np.random.default_rng(20261129)
