"""Squared- and absolute-error losses on logits and on softmax probabilities."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _native
from lossjax import _softmax
from lossjax import _softmax_functionals
from lossjax.losses import _prepare

Array = jax.Array


def squared_error(predictions, targets=None) -> Array:
  r"""Elementwise squared error, ``(predictions - targets)^2``.

  Same numbers as ``optax.squared_error``; ``targets=None`` means zeros.
  Shapes must match exactly (no broadcasting).

  Args:
    predictions: ``[...]`` floats.
    targets: ``[...]`` floats of the same shape, or ``None``.

  Returns:
    ``[...]`` elementwise squared errors in float32 (or wider).
  """
  predictions = _checks.floating_array(predictions, "predictions")
  dtype = _checks.compute_dtype(predictions.dtype)
  if targets is None:
    return jnp.square(predictions.astype(dtype))
  targets = jnp.asarray(targets)
  _checks.check_shape(targets, predictions.shape, "targets",
                      "the shape of `predictions`")
  return jnp.square(predictions.astype(dtype) - targets.astype(dtype))


def mean_squared_error_logits(logits, labels, *, k=1.0, m=1.0,
                              axis: int = -1, where=None) -> Array:
  r"""Square loss on raw logits against (scaled) one-hot targets.

  .. math::
    \ell_i = \frac{1}{C}\Big[k\,(z_{i,y_i} - M)^2 + \sum_{c \ne y_i} z_{ic}^2\Big]

  ``k = M = 1`` (the defaults) is plain MSE against one-hot targets,
  ``mean_c (z_c - onehot_c)^2``; Hui & Belkin rescale with ``k > 1`` and
  ``M > 1`` for many classes (``k=5, M=30`` for ImageNet's 1000).

  Args:
    logits: ``[..., C]`` raw network outputs.
    labels: ``[...]`` integers in ``[0, C)``.
    k: weight of the true-class term (the paper's ``k``).
    m: target value of the true class (the paper's ``M``).
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses.

  Reference: Hui & Belkin, "Evaluation of Neural Architectures Trained with
  Square Loss vs Cross-Entropy in Classification Tasks", ICLR 2021.
  """
  batch = _prepare.integer_label_batch(logits, labels, axis, where)
  # sum_c z_c^2 - z_y^2 + k (z_y - M)^2: a plain sum of squares and the picked
  # logit. On XLA:CPU a row sum with a per-row select inside (z_y's own term
  # swapped) does not vectorise (docs/measurement.md). Subtracting z_y^2 back
  # loses at most a rounding of the whole sum, which the loss is of the order of.
  if _softmax.native_statistics_pay(batch.stored):
    true_logit, squares = _native_true_logit_and_squares(batch.stored, batch.labels)
  else:
    true_logit, squares = batch.true_logit(), _sum_of_squares(batch.stored)
  loss = squares - jnp.square(true_logit) + k * jnp.square(true_logit - m)
  return batch.finish(loss / batch.num_classes)


def _xla_true_logit_and_squares(stored: Array, labels: Array) -> tuple:
  return _softmax.compute(_softmax.take_class(stored, labels)), _sum_of_squares(stored)


@jax.custom_jvp
def _native_true_logit_and_squares(stored: Array, labels: Array) -> tuple:
  """(z_y, sum_c z_c^2) in float32 from one pass over the logits on CPU
  (`lossjax._native`): XLA:CPU's gather of z_y is a loop of its own, whose
  loads wait on memory a row at a time (docs/measurement.md); XLA's
  operations elsewhere."""
  return _native.true_logit_and_squares(stored, labels, _xla_true_logit_and_squares)


@_native_true_logit_and_squares.defjvp
def _native_true_logit_and_squares_jvp(primals, tangents):
  # As `_sum_of_squares`' rule, and z_y's tangent as `take_class`' (for
  # two-byte floats a masked row sum, whose transpose is an elementwise
  # select fused with the rest of the gradient; else the gather's own).
  # Both tangents read one float32 conversion of the logits' tangent: their
  # transposes then add in float32, and one conversion rounds the gradient.
  (stored, labels), (d_stored, _) = primals, tangents
  d_wide = _softmax.compute(d_stored)
  d_true = (_softmax._true_class_tangent(labels, d_wide) if _softmax._two_byte_float(stored)
            else _softmax.compute(_softmax.take_class(d_stored, labels)))
  return (_native_true_logit_and_squares(stored, labels),
          (d_true, _squares_tangent(stored, d_wide)))


@jax.custom_jvp
def _sum_of_squares(logits: Array) -> Array:
  """sum_c z_c^2 over the last axis, in the compute dtype.

  Its derivative converts the logits again, from behind an optimization
  barrier: with JAX's own, the forward's float32 conversion of bfloat16
  logits is shared with the gradient, and XLA:CPU writes it out between them
  (262 MB a call at (65536, 1000))."""
  return jnp.sum(jnp.square(_softmax.compute(logits)), axis=-1)


@_sum_of_squares.defjvp
def _sum_of_squares_jvp(primals, tangents):
  (logits,), (d_logits,) = primals, tangents
  return _sum_of_squares(logits), _squares_tangent(logits, _softmax.compute(d_logits))


def _squares_tangent(logits: Array, d_wide: Array) -> Array:
  """sum_c 2 z_c d_c for the tangent `d_wide` in the compute dtype, the
  logits converted again from behind the barrier."""
  wide = _softmax.compute(jax.lax.optimization_barrier(logits))
  return jnp.sum(2.0 * wide * d_wide, axis=-1)


def brier_loss(logits, labels, *, axis: int = -1, where=None) -> Array:
  r"""Brier score: squared error between softmax probabilities and one-hot.

  .. math:: \ell_i = \sum_c (\mathrm{softmax}(z_i)_c - \mathrm{onehot}(y_i)_c)^2

  Args:
    logits: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses in ``[0, 2]``.

  Reference: Brier, "Verification of forecasts expressed in terms of
  probability", 1950; as a training loss, Mukhoti et al., NeurIPS 2020.
  """
  batch = _prepare.integer_label_batch(logits, labels, axis, where)
  return batch.finish(_brier(batch.stored, batch.labels))


def _brier_terms(stored: Array, labels: Array):
  """Each row's shift c (`[..., 1]`), sum_c exp(z_c - c), log p_y and sum_c
  p_c^2: on CPU, for rows of `_softmax.NATIVE_FROM_CLASSES` or more, from
  lossjax's kernel (`lossjax._native`; c the row max, both sums from one
  exponential per logit, one pass over the logits from memory), elsewhere
  `_xla_brier_terms`."""
  if not _softmax.native_statistics_pay(stored):
    return _xla_brier_terms(stored, labels)
  return _native_brier_terms(stored, labels)


@jax.custom_jvp
def _native_brier_terms(stored: Array, labels: Array):
  def finish(true_logit, row_max, sums, squares):
    log_p_y = true_logit - row_max - jnp.log(sums)
    return row_max[..., None], sums, log_p_y, squares / jnp.square(sums)
  return _native.softmax_statistics(stored, labels, _xla_brier_terms, extra="squares",
                                    finish=finish)


@_native_brier_terms.defjvp
def _native_brier_terms_jvp(primals, tangents):
  # Differentiated only for second derivatives (`_brier`'s own rule calls
  # the terms undifferentiated). The shift, the row max, has no derivative
  # (as `_xla_brier_terms`' stop_gradient); with e = exp(z - c) = s p, from
  # the softmax functionals: d s = sum_c e_c dz_c, d log p_y = dz_y - d s / s
  # and d sum_c p_c^2 = 2 (sum_c e_c^2 dz_c / s^2 - sum_c p_c^2 d s / s).
  (stored, labels), (d_stored, _) = primals, tangents
  shift, sums, log_p_y, squares = terms = _native_brier_terms(stored, labels)
  d_true, d_sums, d_squares, _ = _softmax_functionals.functionals(
      d_stored, stored, shift[..., 0], labels)
  d_terms = (jnp.zeros_like(shift), d_sums, d_true - d_sums / sums,
             2.0 * (d_squares / jnp.square(sums) - squares * d_sums / sums))
  return terms, d_terms


def _xla_brier_terms(stored: Array, labels: Array):
  """`_brier_terms` in XLA's operations.

  On CPU the shift is the true class's logit (as the softmax losses'
  `_softmax.shifted_log_normalizer`: no pass for a row max; elsewhere, and
  below `_softmax.SHIFT_FROM_LOGITS` logits, the row max); where a sum
  overflows (a logit more than ~44 above it, as the squares double the
  exponent) the whole batch takes the row max instead (`lax.cond`). Either
  is a stored logit, exact in float32, so exp(z - c) / s carries no more
  rounding than the softmax itself (relative to the log-normaliser l, exp(z
  - l) is off by l's rounding, ~|l| ulps: 6e-6 relative for logits near 100).
  sum_c p_c^2 = sum_c exp(2 (z_c - c)) / s^2: on CPU both sums come from one
  exponential per logit (`_exp_sums_in_chunks`); elsewhere it is one more
  exp-and-sum pass that reads the stored logits afresh
  (`_softmax.read_again`), so that bfloat16 logits are converted inside each
  pass, not written out once in float32 for both (docs/measurement.md)."""
  true_logit = _softmax.take_class(stored, labels)

  def relative_to(shift):
    return (shift,) + jax.lax.platform_dependent(
        stored, shift, cpu=_exp_sums_in_chunks, default=_exp_sums_in_two_passes)

  by_max = lambda: relative_to(_softmax.compute(
      jax.lax.stop_gradient(jnp.max(stored, axis=-1, keepdims=True))))

  def by_true_logit():
    fast = relative_to(_softmax.compute(true_logit)[..., None])
    _, sums, squares = fast
    return jax.lax.cond(jnp.all(jnp.isfinite(squares) & jnp.isfinite(sums * sums)),
                        lambda: fast, by_max)

  shift, sums, squares = _softmax.shifted_where_it_pays(stored, by_true_logit, by_max)
  squares = squares / jnp.square(sums)
  log_p_y = _softmax.compute(true_logit) - shift[..., 0] - jnp.log(sums)
  return shift, sums, log_p_y, squares


def _exp_sums_in_two_passes(stored: Array, shift: Array) -> tuple:
  """sum_c exp(z_c - shift) and sum_c exp(2 (z_c - shift)) of each row, each
  an exp-and-sum pass of its own over the logits."""
  sums = _softmax.apart(jnp.sum(jnp.exp(_softmax.compute(stored) - shift), axis=-1))
  again, again_shift = _softmax.read_again((stored, shift))
  squares = _softmax.apart(
      jnp.sum(jnp.exp(2.0 * (_softmax.compute(again) - again_shift)), axis=-1))
  return sums, squares


def _exp_sums_in_chunks(stored: Array, shift: Array) -> tuple:
  """The same two sums from one exponential per logit: on cache-sized chunks
  of rows (`_softmax.CHUNK` logits), each chunk's exp(z - shift) written out
  (to the cache) and both sums read from it. XLA:CPU runs two reductions of
  one exponential as two passes, each taking the exponential, and as
  siblings of one fusion slower still (docs/measurement.md). bfloat16
  chunks are converted as they are read (`_softmax.by_row_chunks`)."""
  classes = stored.shape[-1]
  rows = stored.reshape(-1, classes)

  def chunk_sums(values, chunk_shift):
    exps = jax.lax.optimization_barrier(jnp.exp(_softmax.compute(values) - chunk_shift))
    return jnp.sum(exps, axis=-1), jnp.sum(jnp.square(exps), axis=-1)

  sums, squares = _softmax.by_row_chunks(chunk_sums, (rows, shift.reshape(-1, 1)),
                                         _softmax.rows_per_chunk(*rows.shape))
  return sums.reshape(stored.shape[:-1]), squares.reshape(stored.shape[:-1])


def _brier_value(log_p_y: Array, squares: Array) -> Array:
  # sum_c (p_c - [c = y])^2 = (1 - p_y)^2 + (sum_c p_c^2 - p_y^2): 1 - p_y from
  # log p_y without cancelling (as the MAE's), the rivals' squares as the
  # difference, exact to float32 rounding of sum_c p_c^2 <= 1 and kept >= 0.
  rivals = jnp.maximum(squares - jnp.exp(2.0 * log_p_y), 0.0)
  return jnp.square(_softmax.one_minus_prob(log_p_y)) + rivals


@jax.custom_jvp
def _brier(stored: Array, labels: Array) -> Array:
  _, _, log_p_y, squares = _brier_terms(stored, labels)
  return _brier_value(log_p_y, squares)


@_brier.defjvp
def _brier_jvp(primals, tangents):
  # d loss / d z_c = 2 p_c (p_c - [c = y] - (sum_k p_k^2 - p_y)): one
  # expression of the tangent, so that the gradient of two-byte logits is
  # rounded to their dtype once, at the end.
  (stored, labels), (d_stored, _) = primals, tangents  # labels: no tangent
  shift, sums, log_p_y, squares = _brier_terms(stored, labels)
  if _softmax.native_statistics_pay(stored):
    # With e = exp(z - c) = s p: 2 (sum e^2 dz / s^2 - (sum p^2 - p_y) sum e dz / s
    # - p_y dz_y), the three functionals one primitive whose transpose, the
    # gradient, lossjax's kernel writes in one pass on CPU.
    d_true, d_exps, d_squares, _ = _softmax_functionals.functionals(
        d_stored, stored, shift[..., 0], labels)
    p_y = jnp.exp(log_p_y)
    tangent = 2.0 * (d_squares / jnp.square(sums) - (squares - p_y) * d_exps / sums
                     - p_y * d_true)
    return _brier_value(log_p_y, squares), tangent
  p_y = jnp.exp(log_p_y)[..., None]
  again, again_shift = _softmax.read_again((stored, shift), 2)
  probs = jnp.exp(_softmax.compute(again) - again_shift) / sums[..., None]
  hit = jnp.where(_softmax._is_class(stored.shape, labels), p_y, 0.0)
  weights = 2.0 * (probs * (probs - (squares[..., None] - p_y)) - hit)
  return _brier_value(log_p_y, squares), jnp.sum(weights * _softmax.compute(d_stored), axis=-1)


def mean_absolute_error_probs(logits, labels, *, axis: int = -1,
                              where=None) -> Array:
  r"""L1 distance between softmax probabilities and one-hot targets.

  .. math:: \ell_i = \sum_c |p_{ic} - \mathrm{onehot}(y_i)_c| = 2 (1 - p_{i,y_i})

  Robust to label noise but slow to train from scratch.

  Args:
    logits: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses in ``[0, 2]``.

  Reference: Ghosh, Kumar & Sastry, "Robust Loss Functions under Label Noise
  for Deep Neural Networks", AAAI 2017.
  """
  batch = _prepare.integer_label_batch(logits, labels, axis, where)
  log_prob = _softmax.true_class_log_prob(batch.stored, batch.labels)
  return batch.finish(2.0 * _softmax.one_minus_prob(log_prob))
