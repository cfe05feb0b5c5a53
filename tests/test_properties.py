"""Property-based checks (hypothesis) over random shapes, labels and scales.

The number of examples comes from the hypothesis profile (tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, strategies as st

import lossjax
from lossjax import losses

SOFTMAX_BASED = ["cross_entropy", "label_smoothing", "focal", "poly1", "gce", "brier", "mae"]
# Every multiclass loss in one program, compiled once per shape: {name: [B]}.
ALL_LOSSES = jax.jit(lambda z, y: {name: losses.get(name)(z, y) for name in losses.names("multiclass")})


@st.composite
def logits_and_labels(draw):
  # A few shapes (one example, two classes, ...) and many values: each loss is
  # compiled once per shape, and the values are what the properties are about.
  batch = draw(st.sampled_from([1, 6]))
  classes = draw(st.sampled_from([2, 5, 9]))
  scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e3]))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(scale=scale, size=(batch, classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, classes, size=(batch,)), jnp.int32)
  return logits, labels


@given(logits_and_labels())
def test_every_multiclass_loss_is_finite_and_nonnegative(batch):
  logits, labels = batch
  for name, values in jax.device_get(ALL_LOSSES(logits, labels)).items():
    assert np.all(np.isfinite(values)), name
    assert np.all(values >= -1e-6), name


@given(logits_and_labels(), st.floats(-50.0, 50.0))
def test_softmax_losses_are_invariant_to_a_per_row_shift(batch, shift):
  logits, labels = batch
  shifted = logits + jnp.float32(shift)
  before, after = jax.device_get((ALL_LOSSES(logits, labels), ALL_LOSSES(shifted, labels)))
  for name in SOFTMAX_BASED:
    np.testing.assert_allclose(after[name], before[name], rtol=1e-3, atol=1e-4, err_msg=name)


@given(logits_and_labels(), st.floats(0.0, 1.0))
def test_label_smoothing_interpolates_between_cross_entropies(batch, smoothing):
  logits, labels = batch
  hard = lossjax.softmax_cross_entropy_with_integer_labels(logits, labels)
  uniform = lossjax.softmax_cross_entropy(logits, jnp.full(logits.shape, 1.0 / logits.shape[-1]))
  smoothed = lossjax.softmax_cross_entropy_with_integer_labels(
      logits, labels, label_smoothing=smoothing)
  np.testing.assert_allclose(smoothed, (1 - smoothing) * hard + smoothing * uniform,
                             rtol=1e-4, atol=1e-4)
