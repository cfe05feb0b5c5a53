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


def test_take_class_derivatives_match_the_gather_in_both_modes(rng):
  values = jnp.asarray(rng.normal(size=(5, 2, 7)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, size=(5, 2)), jnp.int32)
  tangent = jnp.asarray(rng.normal(size=values.shape), jnp.float32)
  gather = lambda v: jnp.take_along_axis(v, labels[..., None], axis=-1)[..., 0]
  out, d_out = jax.jvp(lambda v: _softmax.take_class(v, labels), (values,), (tangent,))
  np.testing.assert_array_equal(out, gather(values))
  np.testing.assert_array_equal(d_out, gather(tangent))
  weights = jnp.asarray(rng.normal(size=labels.shape), jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(weights * _softmax.take_class(v, labels)))(values)
  np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.sum(weights * gather(v)))(values))
  second = jax.hessian(lambda v: jnp.sum(_softmax.take_class(v, labels[0]) ** 2))(values[0])
  assert np.count_nonzero(np.asarray(second)) == 2 and float(second.max()) == 2.0  # one per row


def test_cross_entropy_gradient_has_no_scatter():
  """The gradient of the picked logit is a select fused into the backward
  pass, not a scatter into a zero buffer the size of the logits."""
  loss = lambda z, y: jnp.mean(_softmax.log_normalizer(z) - _softmax.take_class(z, y))
  hlo = jax.jit(jax.grad(loss)).lower(jnp.zeros((8, 5)), jnp.zeros(8, jnp.int32)).as_text()
  assert "scatter" not in hlo
