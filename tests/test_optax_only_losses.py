"""The losses that are not in the registry (KL divergences, CTC, the signed-target
binary losses) and optax's per-logit masks and tuple axes: float64 references,
extreme inputs in three dtypes, bad input, jit/vmap/grad."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lossjax
from lossjax import _softmax
from lossjax.losses import _sparsemax
from tests import reference

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _distributions(rng, shape, dtype=jnp.float32):
  log_q = jax.nn.log_softmax(jnp.asarray(rng.normal(size=shape), jnp.float32))
  t = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  t[..., 0] = 0.0  # a target of probability 0
  t /= t.sum(-1, keepdims=True)
  return log_q.astype(dtype), jnp.asarray(t, dtype)


def _kl_reference(log_q, t):
  log_q, t = np.asarray(log_q, np.float64), np.asarray(t, np.float64)
  terms = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1.0)) - log_q), 0.0)
  return terms.sum(-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_divergences_match_float64_references(dtype, rng):
  log_q, t = _distributions(rng, (6, 5), dtype)
  tol = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lossjax.kl_divergence(log_q, t), _kl_reference(log_q, t), **tol)
  log_t = jnp.log(t.astype(jnp.float32))  # -inf where t = 0
  np.testing.assert_allclose(lossjax.kl_divergence_with_log_targets(log_q, log_t),
                             _kl_reference(log_q, t), **tol)
  general = _kl_reference(log_q, t) + (np.exp(np.asarray(log_q, np.float64))
                                       - np.asarray(t, np.float64)).sum(-1)
  np.testing.assert_allclose(lossjax.generalized_kl_divergence(log_q, t), general, **tol)
  assert lossjax.kl_divergence(log_q, t).dtype == jnp.float32


def test_kl_where_a_prediction_and_its_target_are_zero_is_finite_with_a_finite_gradient():
  log_q = jnp.array([[-jnp.inf, 0.0]])  # prediction (0, 1)
  t = jnp.array([[0.0, 1.0]])
  assert float(lossjax.kl_divergence(log_q, t)[0]) == 0.0
  grad = jax.grad(lambda t: lossjax.kl_divergence(jnp.array([[-1.0, -0.5]]), t).sum())(t)
  assert np.all(np.isfinite(grad))
  grad = jax.grad(lambda q: lossjax.kl_divergence(q, t).sum())(jnp.array([[-30.0, 0.0]]))
  np.testing.assert_allclose(grad, [[0.0, -1.0]])


def test_kl_masks_per_element_and_per_example_and_tuple_axes(rng):
  log_q, t = _distributions(rng, (4, 3, 5))
  keep = jnp.asarray(rng.integers(0, 2, size=(4, 3, 5)).astype(bool))
  expected = np.where(np.asarray(keep), np.asarray(t) * (np.log(np.maximum(np.asarray(t), 1e-30))
                                                         - np.asarray(log_q)), 0.0)
  expected = np.where(np.asarray(t) > 0, expected, 0.0).sum(-1)
  np.testing.assert_allclose(lossjax.kl_divergence(log_q, t, where=keep), expected, rtol=1e-5,
                             atol=1e-6)
  examples = jnp.array([True, False, True, True])[:, None] & jnp.ones((4, 3), bool)
  got = lossjax.kl_divergence(log_q, t, where=examples)
  np.testing.assert_allclose(got, np.where(np.asarray(examples), _kl_reference(log_q, t), 0.0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(lossjax.kl_divergence(log_q, t, axis=(1, 2)),
                             _kl_reference(log_q, t).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(lossjax.kl_divergence(log_q, t, axis=None),
                             _kl_reference(log_q, t).sum(), rtol=1e-5)


def test_kl_bad_input_is_named(rng):
  log_q, t = _distributions(rng, (4, 5))
  with pytest.raises(ValueError, match=r"`targets` must have shape \(4, 5\)"):
    lossjax.kl_divergence(log_q, t[:, :4])
  with pytest.raises(TypeError, match="`log_targets` must be a floating-point"):
    lossjax.kl_divergence_with_log_targets(log_q, jnp.zeros((4, 5), jnp.int32))
  with pytest.raises(ValueError, match="`axis`=2 is out of range"):
    lossjax.generalized_kl_divergence(log_q, t, axis=2)
  with pytest.warns(DeprecationWarning, match="use generalized_kl_divergence"):
    lossjax.convex_kl_divergence(log_q, t)


def test_kl_under_jit_vmap_and_grad(rng):
  log_q, t = _distributions(rng, (6, 5))
  eager = lossjax.generalized_kl_divergence(log_q, t)
  np.testing.assert_allclose(jax.jit(lossjax.generalized_kl_divergence)(log_q, t), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(lossjax.generalized_kl_divergence)(log_q, t), eager,
                             rtol=1e-6)
  # d/dlog q_d of sum_d t_d (log t_d - log q_d) + q_d - t_d = q_d - t_d.
  grad = jax.grad(lambda q: lossjax.generalized_kl_divergence(q, t).sum())(log_q)
  np.testing.assert_allclose(grad, jnp.exp(log_q) - t, atol=1e-6)


def _ctc_brute_force(logits, labels, blank=0):
  """-log of the summed probability of every frame-level path that collapses
  (merge repeats, drop blanks) to `labels`: enumeration, not a lattice."""
  log_p = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)), np.float64)
  frames, classes = log_p.shape
  total = -np.inf
  for path in itertools.product(range(classes), repeat=frames):
    collapsed = [k for i, k in enumerate(path) if k != blank and (i == 0 or k != path[i - 1])]
    if collapsed == list(labels):
      total = np.logaddexp(total, sum(log_p[t, k] for t, k in enumerate(path)))
  return -total


@pytest.mark.parametrize("dtype", DTYPES)
def test_ctc_matches_enumerating_every_alignment(dtype, rng):
  logits = rng.normal(size=(3, 5, 3)) * 2
  labels = np.array([[1, 2, 0], [1, 1, 0], [2, 0, 0]])
  label_lengths = [2, 2, 1]
  frame_lengths = [5, 4, 3]
  label_paddings = (np.arange(3)[None] >= np.array(label_lengths)[:, None]).astype(np.float32)
  frame_paddings = (np.arange(5)[None] >= np.array(frame_lengths)[:, None]).astype(np.float32)
  z = jnp.asarray(logits, dtype)
  got = lossjax.ctc_loss(z, frame_paddings, labels, label_paddings)
  assert got.dtype == jnp.float32
  for b in range(3):
    want = _ctc_brute_force(np.asarray(z[b, :frame_lengths[b]], np.float32),
                            labels[b, :label_lengths[b]])
    np.testing.assert_allclose(got[b], want, rtol=1e-5)


def test_ctc_with_another_blank_gradients_and_jit(rng):
  logits = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
  labels = np.array([[0, 1], [1, 1]])
  paddings = np.zeros((2, 2), np.float32)
  frames = np.zeros((2, 4), np.float32)
  got = lossjax.ctc_loss(logits, frames, labels, paddings, blank_id=2)
  for b in range(2):
    np.testing.assert_allclose(got[b], _ctc_brute_force(logits[b], labels[b], blank=2), rtol=1e-5)
  loss = lambda z: jnp.sum(lossjax.ctc_loss(z, frames, labels, paddings, blank_id=2))
  np.testing.assert_allclose(jax.jit(loss)(logits), loss(logits), rtol=1e-6)
  grad = jax.grad(loss)(logits)
  step = 1e-2 * jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
  numeric = (loss(logits + step) - loss(logits - step)) / 2
  np.testing.assert_allclose(jnp.sum(grad * step), numeric, rtol=2e-2)
  # Each frame's gradient is softmax minus the alignment posterior: it sums to 0.
  np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-5)


def test_ctc_bad_input_is_named():
  logits = jnp.zeros((2, 4, 3))
  frames, labels, paddings = jnp.zeros((2, 4)), jnp.array([[1, 2], [1, 5]]), jnp.zeros((2, 2))
  with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, 3\).*\[5\]"):
    lossjax.ctc_loss(logits, frames, labels, paddings)
  lossjax.ctc_loss(logits, frames, labels, jnp.array([[0.0, 0.0], [0.0, 1.0]]))  # 5 is padding
  with pytest.raises(ValueError, match="`blank_id`=3 is not a class"):
    lossjax.ctc_loss(logits, frames, jnp.array([[1, 2], [1, 1]]), paddings, blank_id=3)
  with pytest.raises(ValueError, match=r"`logit_paddings` must have shape \(2, 4\)"):
    lossjax.ctc_loss(logits, frames[:, :3], labels, paddings)
  with pytest.raises(ValueError, match="`label_paddings` must hold 0"):
    lossjax.ctc_loss(logits, frames, labels, paddings + 0.5)
  with pytest.raises(ValueError, match=r"`logits` must be \[batch, frames, classes\]"):
    lossjax.ctc_loss(logits[0], frames, labels, paddings)


def test_signed_target_losses():
  scores = jnp.array([2.0, -0.5, 0.3])
  signs = jnp.array([1.0, 1.0, -1.0])
  np.testing.assert_allclose(lossjax.perceptron_loss(scores, signs), [0.0, 0.5, 0.3])
  np.testing.assert_allclose(lossjax.hinge_loss(scores, signs), [0.0, 1.5, 1.3])
  with pytest.raises(ValueError, match=r"`targets` must be -1 or \+1, got values \[0.0\]"):
    lossjax.perceptron_loss(scores, jnp.array([1.0, 0.0, -1.0]))
  # Checked outside a trace only; under jit the targets are abstract.
  np.testing.assert_allclose(jax.jit(lossjax.perceptron_loss)(scores, signs), [0.0, 0.5, 0.3])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("fn", [lossjax.hinge_loss, lossjax.perceptron_loss],
                         ids=lambda f: f.__name__)
def test_signed_target_losses_keep_a_nan_through_a_mean(fn, dtype, rng):
  """A mean over the losses takes their relu into XLA:CPU's library kernel,
  whose max drops a NaN (`lossjax.losses._binary.keeping_nan`); infinite
  scores keep their losses."""
  scores = rng.normal(size=(256, 1000))
  signs = jnp.asarray(np.where(rng.random((256, 1000)) < 0.5, -1.0, 1.0), jnp.float32)
  scores[0, :2] = np.inf * np.asarray(signs[0, :2])  # the right side: losses of 0
  scores[1, 0] = -np.inf * float(signs[1, 0])  # the wrong side: inf
  mean = jax.jit(lambda z: jnp.mean(fn(z, signs)))
  assert np.isposinf(float(mean(jnp.asarray(scores, dtype))))
  scores[1, 0] = 0.0
  np.testing.assert_array_equal(np.asarray(fn(jnp.asarray(scores, dtype), signs))[0, :2], 0.0)
  assert np.isfinite(float(mean(jnp.asarray(scores, dtype))))
  scores[5, 7] = np.nan
  assert np.isnan(float(mean(jnp.asarray(scores, dtype))))


def _masked_cross_entropy_reference(z, q, keep):
  z = np.where(keep, np.asarray(z, np.float64), -np.inf)
  with np.errstate(invalid="ignore"):  # rows with nothing kept: the caller sets them
    log_p = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
  return -np.where(keep, q * np.where(keep, log_p, 0.0), 0.0).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_logit_masks_leave_the_softmax(dtype, rng):
  z = jnp.asarray(rng.normal(size=(6, 5)) * 3, dtype)
  keep = rng.integers(0, 2, size=(6, 5)).astype(bool)
  keep[0] = False  # nothing left: 0
  labels = rng.integers(0, 5, size=6)
  q = np.eye(5)[labels]
  want = _masked_cross_entropy_reference(np.asarray(z, np.float64), q, keep)
  want[0] = 0.0
  got = lossjax.softmax_cross_entropy(z, jnp.asarray(q, jnp.float32), where=keep)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Integer labels: lse over the kept logits minus the label's logit (optax's).
  kept_lse = np.logaddexp.reduce(np.where(keep, np.asarray(z, np.float64), -np.inf), axis=-1)
  want_int = np.where(keep.any(-1), kept_lse - np.asarray(z, np.float64)[np.arange(6), labels], 0)
  got_int = lossjax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(labels), where=keep)
  np.testing.assert_allclose(got_int, want_int, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda z: lossjax.softmax_cross_entropy_with_integer_labels(
      z, jnp.asarray(labels), where=keep).sum())(z.astype(jnp.float32))
  # Masked logits get no gradient, except the label's own (its logit is read as optax does).
  others = ~keep & (np.arange(5)[None] != labels[:, None])
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[others] == 0)
  # A mask of ones is no mask.
  np.testing.assert_allclose(
      lossjax.poly_loss_cross_entropy(z, jnp.asarray(labels), where=np.ones((6, 5), bool)),
      reference.poly1(np.asarray(z, np.float64), labels), rtol=1e-5)


def test_tuple_axes_flatten_the_classes_in_the_order_given(rng):
  z = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 12, size=(2,)))
  # axis (2, 1): the class index is 3 * i4 + i3 over the transposed slice.
  flat = jnp.transpose(z, (0, 2, 1)).reshape(2, 12)
  np.testing.assert_allclose(
      lossjax.softmax_cross_entropy_with_integer_labels(z, labels, axis=(2, 1)),
      reference.cross_entropy(np.asarray(flat), np.asarray(labels)), rtol=1e-6)
  q = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32), axis=(1, 2))
  np.testing.assert_allclose(
      lossjax.softmax_cross_entropy(z, q, axis=(1, 2)),
      lossjax.softmax_cross_entropy(z.reshape(2, 12), q.reshape(2, 12)), rtol=1e-6)
  with pytest.raises(ValueError, match=r"`axis`=\(1, -2\) names an axis twice"):
    lossjax.softmax_cross_entropy(z, q, axis=(1, -2))
  with pytest.raises(TypeError, match="`axis` must be an int, a non-empty tuple"):
    lossjax.softmax_cross_entropy(z, q, axis=1.0)


def test_safe_cross_entropy_takes_zero_log_zero_as_zero():
  z = jnp.array([[-jnp.inf, 0.0, 0.0], [-jnp.inf, 0.0, 0.0]])
  q = jnp.array([[0.0, 0.5, 0.5], [0.4, 0.3, 0.3]])
  got = lossjax.safe_softmax_cross_entropy(z, q)
  np.testing.assert_allclose(got, [np.log(2.0), np.inf])
  grad = jax.grad(lambda z: lossjax.softmax_cross_entropy(z, q[:1]).sum())(z[:1])
  np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("label_dtype", [jnp.int32, jnp.uint8, jnp.bool_, jnp.float32])
def test_binary_sparsemax_at_its_kinks_and_far_out(label_dtype):
  """sparseplus(-(2y - 1) z) in float32 against float64 where its pieces meet
  (x = -(2y - 1) z at -1 and 1, and an ulp either side), at 0 and far out (x
  to 1e30, where x + 1 rounds to x), for every label dtype; a traced integer
  label other than 0 and 1 reads as 2 (`_binary.label_values`)."""
  one_ulp = np.float32(1 + 2.0 ** -23)
  x = np.array([-1e30, -3.0, -1 * one_ulp, -1.0, -1 / one_ulp, -0.5, 0.0, 1e-7, 0.5,
                1 / one_ulp, 1.0, 1 * one_ulp, 3.0, 1e7 + 1, 1e30], np.float32)
  z = np.concatenate([x, -x])
  y = np.repeat([0, 1], len(x))
  def sparseplus(x):
    x = np.asarray(x, np.float64)
    return np.where(x <= -1, 0.0, np.where(x >= 1, x, (x + 1) ** 2 / 4))
  got = jax.jit(lossjax.sparsemax_loss)(jnp.asarray(z), jnp.asarray(y, label_dtype))
  np.testing.assert_allclose(np.asarray(got, np.float64), sparseplus(np.concatenate([x, x])),
                             rtol=2e-7, atol=0)
  twos = jax.jit(lossjax.sparsemax_loss)(jnp.asarray(z), jnp.full(z.shape, 2, jnp.int32))
  np.testing.assert_allclose(np.asarray(twos, np.float64), sparseplus(-3.0 * z), rtol=2e-7)
  # From SELECT_FORM_BELOW logits on, another form of the same arithmetic:
  # the same values, bit for bit, NaN included.
  copies = -(-_sparsemax.SELECT_FORM_BELOW // z.size)
  many_z, many_y = np.tile(np.append(z, np.nan), copies), np.tile(np.append(y, 1), copies)
  few = jax.jit(lossjax.sparsemax_loss)(jnp.asarray(many_z[:z.size + 1]),
                                        jnp.asarray(many_y[:z.size + 1], label_dtype))
  many = jax.jit(lossjax.sparsemax_loss)(jnp.asarray(many_z), jnp.asarray(many_y, label_dtype))
  np.testing.assert_array_equal(np.asarray(many), np.tile(np.asarray(few), copies))


def test_sparsemax_is_the_simplex_projection(rng):
  z = jnp.asarray(rng.normal(size=(50, 9)) * 2, jnp.float32)
  p = lossjax.sparsemax(z)
  np.testing.assert_allclose(p, reference.sparsemax_probabilities(np.asarray(z)), atol=1e-6)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  labels = jnp.asarray(rng.integers(0, 9, size=50))
  grad = jax.grad(lambda z: lossjax.multiclass_sparsemax_loss(z, labels).sum())(z)
  np.testing.assert_allclose(grad, p - jax.nn.one_hot(labels, 9), atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 6), (5, 9), (263, 1000), (256, 1000)])
def test_sparsemax_bfloat16_is_its_float32_upcast(shape, rng):
  """bfloat16 rows against the float32 computation on the same values: the
  same loss, gradient and probabilities (the sums only add in another
  order). Few classes take Michelot's rounds, chunks of bfloat16 rows
  converted as they are read; 1000 take the block maxima, and the rows
  they leave over are gathered as bfloat16 (263 rows fill no whole chunk,
  256 do)."""
  z = jnp.asarray(rng.normal(size=shape) * 2, jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, shape[1], size=shape[0]))
  wide = z.astype(jnp.float32)
  loss = lambda z: lossjax.multiclass_sparsemax_loss(z, labels)
  # Under jit, one program a dtype (eagerly, each operation compiles apart).
  run = jax.jit(lambda z: (loss(z), jax.grad(lambda z: loss(z).sum())(z), lossjax.sparsemax(z)))
  (narrow_loss, narrow_grad, narrow_p), (wide_loss, wide_grad, _) = run(z), run(wide)
  np.testing.assert_allclose(narrow_loss, wide_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(narrow_grad.astype(jnp.float32), wide_grad.astype(jnp.bfloat16)
                             .astype(jnp.float32), atol=1e-2)
  # sparsemax's probabilities come out in bfloat16: z - tau rounds twice (tau
  # to bfloat16, then the difference), each by at most 2**-9 of the larger of |z|, |tau|.
  got = np.asarray(narrow_p.astype(jnp.float32))
  want = reference.sparsemax_probabilities(np.asarray(wide, np.float64))
  rounding = 2.0 ** -8 * (np.abs(np.asarray(wide)).max(-1, keepdims=True) + 1.0)
  assert np.all(np.abs(got - want) <= rounding)


@pytest.mark.parametrize("classes, copies", [(100, 1), (130, 1), (131, 1), (300, 1), (1000, 1),
                                             (1000, 40)])
def test_sparsemax_rows_whose_support_is_every_class_or_one(classes, copies, rng):
  """Rows where the rounds' start is furthest from the threshold or on it:
  all logits equal, all within 1e-3, one far above the rest, two tied above
  the rest (in one block of classes), half of them -inf; and Gaussian rows.
  Each start: max - 1 (100 classes); the fixed point of the block maxima
  (130, 300 and 1000 classes in 7 rows, blocks of 26, 30 and 25); steps on
  the maxima of blocks of 32 and the classes left over (131 classes, which
  no block divides, and 1000 classes in 280 rows, chunks of 140 rows)."""
  rows = np.stack([
      np.full(classes, 0.7),
      rng.normal(size=classes) * 1e-3,
      np.r_[50.0, rng.normal(size=classes - 1)],
      np.where(np.isin(np.arange(classes), _one_block(classes)), 9.0, rng.normal(size=classes)),
      np.where(np.arange(classes) % 2 == 0, -np.inf, rng.normal(size=classes) * 2),
      rng.normal(size=classes) * 2,
      rng.normal(size=classes) * 0.3,
  ] * copies).astype(np.float32)
  labels = jnp.asarray(rng.integers(0, classes // 2, size=len(rows)) * 2 + 1)
  z = jnp.asarray(rows)
  want = reference.sparsemax_probabilities(rows)
  loss = lambda z: lossjax.multiclass_sparsemax_loss(z, labels)
  # One program for the three (compiled apart, twice the time).
  p, values, grad = jax.jit(
      lambda z: (lossjax.sparsemax(z), loss(z), jax.grad(lambda z: loss(z).sum())(z)))(z)
  np.testing.assert_allclose(p, want, atol=1e-6)
  finite = np.maximum(rows, -1e30)  # the reference's p * z is 0 * -inf otherwise
  np.testing.assert_allclose(values, reference.sparsemax(finite, np.asarray(labels)), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(grad, want - np.eye(classes)[np.asarray(labels)], atol=1e-5)


@pytest.mark.parametrize("rows, classes", [(300, 1000), (24, 32000)])
def test_sparsemax_rows_the_block_maxima_do_not_settle(rows, classes, rng):
  """Rows whose block maxima's threshold is not tau, interleaved with rows
  where it is: Gaussian rows (a block can hold two of the support), two
  equal logits above the rest in one block, rows whose support is every
  class (at least TOP_MAXIMA maxima above the threshold: the network gives
  only a bound) or half the classes, and a NaN. At 1000 classes the rows
  left over fill several chunks of Michelot's rounds; at 32000 the maxima's
  own threshold comes from the maxima of blocks of maxima."""
  z = rng.normal(size=(rows, classes)) * 2
  kinds = np.arange(rows) % 6
  z[kinds == 1] = rng.normal(size=((kinds == 1).sum(), classes)) * 1e-3
  z[np.ix_(kinds == 2, _one_block(classes))] = 9.0
  z[kinds == 3] = 0.7
  z[kinds == 4] = np.where(np.arange(classes) % 2 == 0, 0.5 + z[kinds == 4] * 5e-4, -3.0)
  z[5, 7] = np.nan
  z = z.astype(np.float32)
  labels = jnp.asarray(rng.integers(0, classes, size=rows))
  # The rows the maxima's threshold does not settle: more logits above it than maxima.
  maxima = z.reshape(rows, _sparsemax._maxima_block(classes), -1).max(1)
  threshold = _maxima_tau(maxima)
  unsettled = (z > threshold).sum(-1) != (maxima > threshold).sum(-1)
  assert unsettled[(kinds == 2) | (kinds == 3) | (kinds == 4)].all()
  if classes == 1000:  # (at 32000 classes, 0.6% of Gaussian rows)
    assert unsettled[kinds == 0].any() and unsettled.sum() > _softmax.rows_per_chunk(rows, classes)

  loss = lambda z: lossjax.multiclass_sparsemax_loss(z, labels)
  # One program for the three (compiled apart, the three took 3.5x the time).
  got, values, grad = map(np.asarray, jax.jit(
      lambda z: (lossjax.sparsemax(z), loss(z), jax.grad(lambda z: loss(z).sum())(z)))(z))
  finite = np.delete(np.arange(rows), 5)
  want = reference.sparsemax_probabilities(z[finite])
  np.testing.assert_allclose(got[finite], want, atol=1e-6)
  want_loss = reference.sparsemax(z[finite], np.asarray(labels)[finite])
  np.testing.assert_allclose(values[finite], want_loss, rtol=1e-5, atol=1e-5)
  want[np.arange(len(finite)), np.asarray(labels)[finite]] -= 1.0
  np.testing.assert_allclose(grad[finite], want, atol=1e-5)
  assert np.isnan(got[5]).all() and np.isnan(values[5]) and np.isnan(grad[5]).all()


def _one_block(classes):
  """Two classes in one block of the sparsemax maxima (each block every
  (C / k)-th class, `_sparsemax._solve_rows`): the last, and the one C / k
  before it; the last two where the rows have no blocks."""
  k = _sparsemax._maxima_block(classes)
  return [classes - 1 - (classes // k if k else 1), classes - 1]


def _maxima_tau(values):
  """The sparsemax threshold of each row by sorting, `[rows, 1]`, NaN rows left NaN."""
  values = np.asarray(values, np.float64)
  p = reference.sparsemax_probabilities(values)
  return (values - p).max(-1, keepdims=True, where=p > 0, initial=-np.inf)


def test_sparsemax_jacobian_and_the_loss_hessian_are_the_supports_projection(rng):
  """d sparsemax / dz = diag(s) - s s^T / |S| (s the support's indicator),
  forward and reverse, and the loss's Hessian is the same matrix."""
  z = jnp.asarray(rng.normal(size=(3, 200)) * 2, jnp.float32)
  labels = jnp.asarray([0, 7, 199])
  s = (reference.sparsemax_probabilities(np.asarray(z)) > 0).astype(np.float64)
  want = np.stack([np.diag(r) - np.outer(r, r) / r.sum() for r in s])
  rows = jnp.arange(3)
  forward = jax.jit(jax.jacfwd(lossjax.sparsemax))(z)[rows, :, rows]
  reverse = jax.jit(jax.jacrev(lossjax.sparsemax))(z)[rows, :, rows]
  hessian = jax.jit(jax.hessian(lambda z: lossjax.multiclass_sparsemax_loss(z, labels).sum()))(z)
  for got in (forward, reverse, hessian[rows, :, rows]):
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("rows, classes", [(8, 2000), (280, 1000), (8, 131)])
def test_sparsemax_rows_with_a_nan_give_nan_and_leave_the_others_exact(rows, classes, rng):
  """A NaN logit below its row's threshold (XLA:CPU's max drops it from the
  maxima, the count and the excess sum) still makes its row's loss, gradient
  and probabilities NaN, from each start (see the test above)."""
  z = rng.normal(size=(rows, classes)).astype(np.float32) * 2
  labels = jnp.asarray(rng.integers(0, classes, size=rows))
  loss = lambda z: lossjax.multiclass_sparsemax_loss(z, labels)
  # One program for the three, under jit (eagerly, each operation compiles apart).
  run = jax.jit(lambda z: (loss(z), jax.grad(lambda z: loss(z).sum())(z), lossjax.sparsemax(z)))
  clean = np.asarray(run(z)[0])
  z[3, np.argmin(z[3])] = np.nan  # that row's count is NaN: it must not hold the others' rounds open
  got, grad, p = map(np.asarray, run(z))
  assert np.isnan(got[3])
  np.testing.assert_allclose(np.delete(got, 3), np.delete(clean, 3), rtol=1e-6)
  assert np.isnan(grad[3]).all() and np.isfinite(np.delete(grad, 3, axis=0)).all()
  assert np.isnan(p[3]).all()


def test_no_classes_left_gives_zero_as_optax():
  # optax's masking tests slice a random mask's logits: the slice can be empty.
  empty = jnp.zeros((0,), jnp.float32)
  for fn in (lossjax.softmax_cross_entropy, lossjax.poly_loss_cross_entropy, lossjax.kl_divergence,
             lossjax.generalized_kl_divergence, lossjax.kl_divergence_with_log_targets):
    assert float(fn(empty, empty)) == 0.0, fn.__name__
  z = jnp.array([1.0, 2.0, 3.0])
  q = jnp.array([0.2, 0.3, 0.5])
  assert float(lossjax.poly_loss_cross_entropy(z, q, where=jnp.zeros(3, bool))) == 0.0
