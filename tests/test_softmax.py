"""The log-normaliser: both backend formulations give the same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from lossjax import _softmax


@pytest.mark.parametrize("platform", ["cpu", "default", None])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_log_normalizer_matches_scipy(platform, scale, rng):
  logits = rng.normal(scale=scale, size=(64, 33)).astype(np.float32)
  got = jax.jit(lambda z: _softmax.log_normalizer(z, platform=platform))(logits)
  np.testing.assert_allclose(got, logsumexp(logits.astype(np.float64), axis=-1), rtol=1e-6)
  grad = jax.grad(lambda z: _softmax.log_normalizer(z, platform=platform).sum())(logits)
  np.testing.assert_allclose(grad, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)


def test_cpu_formulation_is_chosen_when_lowering_for_cpu():
  lowered = jax.jit(_softmax.log_normalizer).lower(jnp.zeros((4, 8)))
  compiled = lowered.compile().as_text()
  assert (jax.default_backend() == "cpu") == ("reduce-precision" in compiled)


def test_cpu_rounding_is_the_identity_in_float64():
  with jax.enable_x64(True):
    sums = jnp.asarray([1.0 + 2.0 ** -50, np.pi], jnp.float64)
    np.testing.assert_array_equal(_softmax._row_sums_materialized(sums), sums)


def test_unknown_platform_is_named():
  with pytest.raises(ValueError, match="`platform` must be"):
    _softmax.log_normalizer(jnp.zeros((2, 3)), platform="tpu")
