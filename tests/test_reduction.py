import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossjax import reduction


def test_reductions_match_numpy(rng):
  values = rng.random(10).astype(np.float32)
  weights = rng.random(10).astype(np.float32)
  keep = rng.random(10) < 0.5
  assert np.isclose(reduction.mean(values), values.mean())
  assert np.isclose(reduction.sum(values), values.sum())
  assert np.isclose(reduction.weighted_mean(values, weights), (values * weights).sum() / weights.sum())
  assert np.isclose(reduction.masked_mean(values, keep), values[keep].mean())
  assert np.isclose(reduction.reduce(values, "mean", where=keep), values[keep].mean())
  assert np.isclose(reduction.reduce(values, "sum", weights=weights, where=keep),
                    (values * weights)[keep].sum())


def test_masked_mean_hides_nan_and_is_zero_when_empty():
  values = jnp.array([1.0, jnp.nan, 3.0])
  assert float(reduction.masked_mean(values, jnp.array([True, False, True]))) == 2.0
  none = jnp.zeros(3, bool)
  assert float(reduction.masked_mean(values, none)) == 0.0
  grad = jax.grad(lambda v: reduction.masked_mean(v, none))(jnp.ones(3))
  np.testing.assert_array_equal(grad, 0.0)
  assert float(reduction.weighted_mean(jnp.ones(3), jnp.zeros(3))) == 0.0


def test_shape_mismatch_and_unknown_reduction_are_named():
  with pytest.raises(ValueError, match=r"`weights` must have shape \(3,\)"):
    reduction.weighted_mean(jnp.ones(3), jnp.ones((3, 1)))
  with pytest.raises(ValueError, match="`reduction` must be"):
    reduction.reduce(jnp.ones(3), "avg")
