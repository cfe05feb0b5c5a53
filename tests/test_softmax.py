"""The log-normaliser: both backend formulations give the same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import logsumexp

from lossjax import _softmax, losses


@pytest.mark.parametrize("platform", ["cpu", "default", None])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_log_normalizer_matches_scipy(platform, scale, rng):
  logits = rng.normal(scale=scale, size=(64, 33)).astype(np.float32)
  got = jax.jit(lambda z: _softmax.log_normalizer(z, platform=platform))(logits)
  np.testing.assert_allclose(got, logsumexp(logits.astype(np.float64), axis=-1), rtol=1e-6)
  grad = jax.grad(lambda z: _softmax.log_normalizer(z, platform=platform).sum())(logits)
  np.testing.assert_allclose(grad, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])  # 1e4: sums overflow, the max's path
def test_shifted_log_normalizer_matches_scipy_with_any_row_logit_as_shift(dtype, scale, rng,
                                                                         monkeypatch):
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)  # small logits take the shift too
  logits = jnp.asarray(rng.normal(scale=scale, size=(64, 33)), dtype)
  wide = np.asarray(logits, np.float64)
  want = logsumexp(wide, axis=-1)
  for column in (0, 17):
    shift = logits[:, column]
    got = jax.jit(_softmax.log_normalizer)(logits, shift=shift)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for platform in ("cpu", "default"):  # the default backends' path ignores the shift
      np.testing.assert_allclose(_softmax.log_normalizer(logits, shift=shift, platform=platform),
                                 want, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda z: _softmax.log_normalizer(z, shift=shift).sum())(logits)
    assert grad.dtype == dtype
    np.testing.assert_allclose(np.asarray(grad, np.float64),
                               np.exp(wide - want[:, None]), rtol=2.0 ** -7, atol=1e-7)
  # Under vmap the overflow check is per row: both paths run, each row takes its own.
  per_row = jax.vmap(lambda z: _softmax.log_normalizer(z, shift=z[3]))(logits)
  np.testing.assert_allclose(per_row, want, rtol=1e-6, atol=1e-6)


def test_shifted_log_normalizer_derivatives_to_second_order(rng, monkeypatch):
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)
  logits = jnp.asarray(rng.normal(scale=3.0, size=(5, 9)), jnp.float32)
  for shift_column in (0, 4):
    fn = lambda z: _softmax.log_normalizer(z, shift=jax.lax.stop_gradient(z[:, shift_column]))
    check_grads(fn, (logits,), order=2, modes=("fwd", "rev"), eps=1e-2, atol=2e-2, rtol=2e-2)
  # With the shift taken from the logits themselves (not stopped), the same
  # derivative: the value does not depend on the shift.
  unstopped = jax.grad(lambda z: _softmax.log_normalizer(z, shift=z[:, 2]).sum())(logits)
  np.testing.assert_allclose(unstopped, jax.nn.softmax(logits), rtol=1e-5, atol=1e-7)


def test_shifted_log_normalizer_keeps_infinities(monkeypatch):
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)
  logits = jnp.asarray([[0.0, -jnp.inf, 1.0], [-jnp.inf, -jnp.inf, 2.0], [0.0, 1.0, 2.0]])
  got = _softmax.log_normalizer(logits, shift=logits[:, 1])  # a shift of -inf: the max's path
  np.testing.assert_allclose(got, [np.log(1 + np.e), 2.0, logsumexp([0.0, 1.0, 2.0])],
                             rtol=1e-6)


@pytest.mark.parametrize("rows", [8, _softmax.SHIFT_FROM_LOGITS // 64])
def test_shift_is_taken_on_cpu_from_enough_logits(rows):
  """The shift's overflow check (and its conditional) is in the CPU program
  only from SHIFT_FROM_LOGITS logits on, and never in a GPU one."""
  logits, shift = jnp.zeros((rows, 64)), jnp.zeros(rows)
  lower = lambda platform: jax.jit(
      lambda z, s: _softmax.log_normalizer(z, shift=s)).trace(logits, shift).lower(
          lowering_platforms=(platform,)).as_text()
  assert ("is_finite" in lower("cpu")) == (rows * 64 >= _softmax.SHIFT_FROM_LOGITS)
  assert "is_finite" not in lower("cuda")


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


def test_cross_entropy_gradient_of_the_pick_takes_no_logits_sized_buffer():
  """The gradient of the picked logit: for bfloat16 a select fused into the
  backward pass (no scatter, which XLA makes in float32 around it); for
  float32 the gather's own scatter, made in place in the dense gradient, so
  that the program's scratch holds nothing as large as the logits."""
  loss = lambda z, y: jnp.mean(_softmax.log_normalizer(z)
                              - _softmax.take_class(z, y).astype(jnp.float32))
  labels = jnp.zeros(256, jnp.int32)
  low = jax.jit(jax.grad(loss)).lower(jnp.zeros((256, 1000), jnp.bfloat16), labels).as_text()
  assert "scatter" not in low
  wide = jax.jit(jax.grad(loss)).lower(jnp.zeros((256, 1000), jnp.float32), labels).compile()
  assert "scatter" in wide.as_text()
  assert wide.memory_analysis().temp_size_in_bytes < 256 * 1000 * 4 // 8


def _rival_by_select(values, labels):
  index = jax.lax.broadcasted_iota(labels.dtype, values.shape, values.ndim - 1)
  return jnp.max(jnp.where(index == labels[..., None], -jnp.inf, values), axis=-1)


# 1, 7: narrower than a block (the select); 40: one block; 96: two of 48; 134: none divides.
@pytest.mark.parametrize("classes", [1, 7, 40, 96, 67 * 2])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_rival_max_is_the_max_without_the_label_with_its_derivative(classes, dtype, rng):
  blocks = {1: None, 7: None, 40: 40, 96: 48, 134: None, 1000: 50}
  assert {c: _softmax._rival_block(c) for c in blocks} == blocks
  # Few distinct values, so that ties are common (with the true class too).
  values = jnp.asarray(rng.integers(-3, 4, size=(6, 3, classes)) / 2, dtype)
  labels = jnp.asarray(rng.integers(0, classes, size=(6, 3)), jnp.int32)
  np.testing.assert_array_equal(_softmax.rival_max(values, labels),
                                _rival_by_select(values, labels))
  # The derivative is jnp.max's over the select: the tangent averaged over the
  # other classes at the max (-inf, C = 1: none, zero).
  tangent = jnp.asarray(rng.normal(size=values.shape), dtype)
  rtol = 2.0 ** -8 if dtype == jnp.bfloat16 else 1e-6  # bfloat16: its rounding
  _, got = jax.jvp(lambda v: _softmax.rival_max(v, labels), (values,), (tangent,))
  # The reference in float32, exactly the same inputs: jnp.max's own bfloat16
  # derivative averages in bfloat16.
  f32 = lambda x: x.astype(jnp.float32)
  _, want = jax.jvp(lambda v: _rival_by_select(v, labels), (f32(values),), (f32(tangent),))
  want = np.asarray(want, np.float32)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.where(np.isfinite(want), want, 0.0),
                             rtol=rtol, atol=1e-7)
  weights = jnp.asarray(rng.normal(size=labels.shape), jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(weights * f32(_softmax.rival_max(v, labels))))(values)
  assert grad.dtype == values.dtype
  want = jax.grad(lambda v: jnp.sum(weights * _rival_by_select(v, labels)))(f32(values))
  # bfloat16: two roundings, the cotangent of the bfloat16 rival and the gradient.
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(want, np.float32),
                             rtol=2 * rtol, atol=1e-7)


@pytest.mark.parametrize("classes", [7, 96, 1000])  # no block; two of 48; twenty of 50
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_row_max_derivative_averages_over_ties(classes, dtype, rng):
  """row_max's derivative is jnp.max's: the tangent averaged over the row's
  maxima. Few distinct values, so most rows have several; a row of -inf
  logits but one. The count is C less a sum of sign(|z - max|)
  (`_count_equal`)."""
  values = np.asarray(rng.integers(-3, 4, size=(12, classes)) / 2, np.float32)
  values[0, 1:] = -np.inf
  values = jnp.asarray(values, dtype)
  np.testing.assert_array_equal(_softmax.row_max(values), jnp.max(values, axis=-1))
  f32 = lambda x: x.astype(jnp.float32)
  tangent = jnp.asarray(rng.normal(size=values.shape), dtype)
  _, got = jax.jvp(_softmax.row_max, (values,), (tangent,))
  _, want = jax.jvp(lambda v: jnp.max(v, axis=-1), (f32(values),), (f32(tangent),))
  rtol = 2.0 ** -8 if dtype == jnp.bfloat16 else 1e-6
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=rtol, atol=1e-7)
  weights = jnp.asarray(rng.normal(size=values.shape[0]), jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(weights * f32(_softmax.row_max(v))))(values)
  want = jax.grad(lambda v: jnp.sum(weights * jnp.max(v, axis=-1)))(f32(values))
  np.testing.assert_allclose(np.asarray(grad, np.float32), want, rtol=2 * rtol, atol=1e-7)


@pytest.mark.parametrize("rows", [4096, 4099])  # 4 chunks of 1024 rows; a prime: none
def test_rival_max_over_chunks_of_rows_is_the_select(rows, rng):
  """float32 blocks are searched a chunk of rows at a time, each chunk with its
  own rows' labels."""
  assert _softmax.rows_per_chunk(4096, 48, _softmax.OWN_BLOCKS_CHUNK) == 1024
  values = rng.normal(size=(rows, 96)).astype(np.float32)
  labels = rng.integers(0, 96, size=rows)
  labels[::2] = values[::2].argmax(-1)  # where the rival is not the row max
  values, labels = jnp.asarray(values), jnp.asarray(labels, jnp.int32)
  got = jax.jit(_softmax.rival_max)(values, labels)
  np.testing.assert_array_equal(got, _rival_by_select(values, labels))


@pytest.mark.parametrize("rival", [False, True], ids=["max", "rival"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_margin_statistics_are_their_parts_with_one_derivative(rival, dtype, rng):
  # Few distinct values, so that ties are common (with the true class too).
  values = jnp.asarray(rng.integers(-3, 4, size=(64, 96)) / 2, dtype)
  labels = jnp.asarray(rng.integers(0, 96, size=64), jnp.int32)
  top, true_logit = _softmax.margin_statistics(values, labels, rival)
  assert top.dtype == true_logit.dtype == jnp.float32
  f32 = values.astype(jnp.float32)
  want_top = _rival_by_select(f32, labels) if rival else f32.max(-1)
  np.testing.assert_array_equal(top, want_top)
  np.testing.assert_array_equal(true_logit, f32[jnp.arange(64), labels])
  # The gradient of a combination of the two: the float32 one (jnp.max's
  # average over the ties, the one-hot) of the same logits, rounded once.
  a, b = jnp.asarray(rng.normal(size=64), jnp.float32), jnp.asarray(rng.normal(size=64),
                                                                    jnp.float32)
  def combined(v):
    top, true_logit = _softmax.margin_statistics(v, labels, rival)
    return jnp.sum(a * top + b * true_logit)
  by_select = lambda v: jnp.sum(a * (_rival_by_select(v, labels) if rival else v.max(-1))
                                + b * v[jnp.arange(64), labels])
  got = jax.grad(combined)(values)
  assert got.dtype == dtype
  want = np.asarray(jax.grad(by_select)(f32), np.float64)
  assert np.all(np.abs(np.asarray(got, np.float64) - want) <= _bfloat16_rounding_bound(want))


def test_row_sum_apart_is_the_row_sum_with_its_derivatives(rng):
  values = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(1, 6)), jnp.float32)
  np.testing.assert_allclose(_softmax.row_sum_apart(values), values.sum(-1), rtol=1e-6)
  np.testing.assert_allclose(_softmax.row_sum_apart(values, weights), (values * weights).sum(-1),
                             rtol=1e-6)
  check_grads(_softmax.row_sum_apart, (values, weights), order=2, modes=("fwd", "rev"))
  check_grads(_softmax.row_sum_apart, (values,), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing", "focal", "poly1", "gce",
                                  "mae", "perceptron", "hinge", "squared_hinge"])
def test_softmax_losses_bfloat16_gradient_takes_no_float32_logits_sized_buffer(name):
  """bfloat16 value_and_grad: neither the float32 conversion of the logits nor
  their float32 exponentials are written out between the passes (XLA merged
  them: the log-normaliser's with its derivative's, the label smoothing sum's
  with both), nor the margin losses' indicator of the maxima, its constants
  or the true class's one-hot (for a kernel of the ties' count and the
  gradient), so the scratch is far below one float32 copy of the logits."""
  spec = losses.spec(name)
  mean = lambda z, y: jnp.mean(spec.bind()(z, y))
  shape = (512, 1000)  # past SHIFT_FROM_LOGITS
  logits, labels = jnp.zeros(shape, jnp.bfloat16), jnp.zeros(shape[0], jnp.int32)
  compiled = jax.jit(jax.value_and_grad(mean)).lower(logits, labels).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < shape[0] * shape[1] * 4 // 8


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_class_statistics_are_their_parts_with_their_derivatives(dtype, rng, monkeypatch):
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)  # small logits take the shift too
  logits = jnp.asarray(rng.normal(scale=3.0, size=(16, 9)), dtype)
  labels = jnp.asarray(rng.integers(0, 9, size=16))
  true_logit, log_norm, row_sum = _softmax.class_statistics(logits, labels, row_sum=True)
  wide = np.asarray(logits, np.float64)
  np.testing.assert_array_equal(true_logit, wide[np.arange(16), labels])
  np.testing.assert_allclose(log_norm, logsumexp(wide, axis=-1), rtol=1e-6)
  np.testing.assert_allclose(row_sum, wide.sum(-1), rtol=1e-6)
  # Any linear combination of the three: its gradient is the same
  # combination of one-hot, softmax and ones, in float32 before rounding.
  a, b, c = 0.7, -1.3, 0.05
  combined = lambda z: sum(k * s for k, s in zip(
      (a, b, c), _softmax.class_statistics(z, labels, row_sum=True))).sum()
  got = jax.grad(combined)(logits)
  assert got.dtype == dtype
  want = (a * np.eye(9)[labels] + b * jax.nn.softmax(wide.astype(np.float32)) + c)
  np.testing.assert_allclose(np.asarray(got, np.float32), want.astype(dtype).astype(np.float32),
                             rtol=0, atol=float(np.abs(want).max()) * 2.0 ** -8)
  hessian = jax.hessian(lambda z: _softmax.true_class_log_prob(z, labels)[0])(
      logits.astype(jnp.float32) if dtype == jnp.float32 else logits)
  p = jax.nn.softmax(wide[0].astype(np.float32))
  np.testing.assert_allclose(np.asarray(hessian[0, :, 0, :], np.float32),
                             -(np.diag(p) - np.outer(p, p)), atol=0.02)


def _bfloat16_rounding_bound(wide: np.ndarray) -> np.ndarray:
  """Half a bfloat16 ulp of each float32 value, and a few float32 ulps for the
  order in which a gradient's terms are added."""
  exponent = np.floor(np.log2(np.maximum(np.abs(wide), np.finfo(np.float32).tiny)))
  return 2.0 ** (exponent - 8) + 4 * 2.0 ** (exponent - 23)


@pytest.mark.parametrize("name", ["cross_entropy", "label_smoothing", "focal", "poly1", "gce",
                                  "mae"])
def test_softmax_losses_bfloat16_gradient_is_the_float32_one_rounded_once(name, rng, monkeypatch):
  """The bfloat16 gradient is the float32 gradient of the same logits, rounded
  once: bfloat16 cotangents added in bfloat16 (each statistic's own
  derivative) round twice, label smoothing's entries then cancel (errors of
  several times the value where the softmax is near its uniform share)."""
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)
  spec = losses.spec(name)
  grad = jax.grad(lambda z, y: jnp.mean(spec.bind()(z, y)))
  logits = jnp.asarray(rng.normal(scale=0.05, size=(64, 40)), jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, 40, size=64))
  narrow = np.asarray(grad(logits, labels), np.float64)
  wide = np.asarray(grad(logits.astype(jnp.float32), labels), np.float64)
  assert np.all(np.abs(narrow - wide) <= _bfloat16_rounding_bound(wide))
