"""Sigmoid (one logit per decision) losses: binary cross-entropy and focal."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from lossjax import _checks
from lossjax import _native
from lossjax import _sigmoid
from lossjax import _softmax

Array = jax.Array


def _binary_batch(logits, labels, where):
  """The checked logits (as given), labels (as given) and mask."""
  logits = _checks.floating_array(logits, "logits")
  labels = jnp.asarray(labels)
  _checks.check_shape(labels, logits.shape, "labels", "one label per logit")
  if not (jnp.issubdtype(labels.dtype, jnp.floating)
          or jnp.issubdtype(labels.dtype, jnp.integer)
          or labels.dtype == jnp.bool_):
    raise TypeError(f"`labels` must be numbers in [0, 1], got dtype {labels.dtype}.")
  where = _checks.example_mask(where, logits.shape)
  if not _checks.is_traced(labels):
    _checks.check_in_range(labels, "labels", 0.0, 1.0)
  elif not jnp.issubdtype(labels.dtype, jnp.floating):
    _checks.record_check((labels == 0) | (labels == 1), where, labels,
                         "`labels` must be 0 or 1")
  return logits, labels, where


def keeping_nan(loss: Array, x: Array) -> Array:
  """`loss` + 0 sign(x): NaN where `x` is, else `loss` unchanged (sign is
  finite at +-inf). XLA:CPU's max and min drop a NaN: an elementwise loss
  whose arithmetic takes one gives a finite mean over a NaN once the mean
  takes the chain into its library kernel, where the loss alone, written
  out, is NaN. Two operations a value (docs/measurement.md)."""
  return loss + 0.0 * jnp.sign(x)


def label_values(labels: Array, dtype) -> Array:
  """The labels as `dtype` numbers; integer and boolean ones through uint8.

  XLA:CPU's YNNPACK reductions (the mean over a loss) read no int32 or bool
  input, so their convert to float is written out beside the reduction, a
  float32 buffer as large as the logits; through uint8 the buffer written is
  a quarter of that. A traced integer label other than 0 and 1 (which no
  check can see at trace time, unless ``label_checks()`` is on) reads as 2.
  """
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return labels.astype(dtype)
  return _where_zero_or_one(labels, labels, 2).astype(jnp.uint8).astype(dtype)


def label_signs(labels: Array, dtype) -> Array:
  """1 - 2y as `dtype` numbers: +1 for label 0, -1 for label 1; integer and
  boolean labels through int8, as `label_values`' through uint8 (a traced
  integer other than 0 and 1 reads as 2, so -3 here), the two steps of
  arithmetic done in the labels' own pass (in int32, which the library
  kernel that reads the int8 signs does not take)."""
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return 1.0 - 2.0 * labels.astype(dtype)
  signs = _where_zero_or_one(labels, 1 - 2 * labels.astype(jnp.int32), -3)
  return signs.astype(jnp.int8).astype(dtype)


def label_signs_by_selects(labels: Array, dtype) -> Array:
  """`label_signs` by two selects on the labels, for a loss that XLA:CPU
  runs as one loop of its own (no library kernel reads the signs): fewer
  operations than the route through int8, whose cost estimate split binary
  sparsemax's loop at 4096x10 over both cores, slower than optax's unsplit
  one (docs/measurement.md). The same values."""
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return label_signs(labels, dtype)
  one = jnp.asarray(1.0, dtype)
  if labels.dtype == jnp.bool_:
    return jnp.where(labels, -one, one)
  return jnp.where(labels == 0, one, jnp.where(labels == 1, -one, jnp.asarray(-3.0, dtype)))


def _where_zero_or_one(labels: Array, values: Array, other: int) -> Array:
  """`values` where the integer or boolean `labels` are 0 or 1, else `other`."""
  if labels.dtype == jnp.bool_:
    return values
  return jnp.where((labels == 0) | (labels == 1), values, other)


def separate(values: tuple, constants: tuple, dtype) -> tuple:
  """`values`, and `constants` as `dtype` scalars, behind an optimization
  barrier: the inputs of a derivative's own arithmetic.

  XLA merges equal subexpressions of a loss and its derivative (a negated
  logit, a converted label, a broadcast constant) and then writes each shared
  one out as a logits-sized array, since XLA:CPU's YNNPACK reduction of the
  loss shares nothing with the derivative's loop. Arithmetic on values and
  constants from behind a barrier is never equal to the loss's. The barrier
  itself costs nothing at run time.
  """
  return jax.lax.optimization_barrier(
      (values, tuple(jnp.asarray(c, dtype) for c in constants)))


def _masked(values: Array, where) -> Array:
  return values if where is None else jnp.where(where, values, 0.0)


def sigmoid_binary_cross_entropy(logits, labels, *, pos_weight=None,
                                 where=None) -> Array:
  r"""Binary cross-entropy on logits, elementwise.

  .. math:: \ell = -w_+\, y \log \sigma(z) - (1 - y) \log(1 - \sigma(z))

  Same numbers as ``optax.sigmoid_binary_cross_entropy`` without
  ``pos_weight``.

  Args:
    logits: ``[...]`` one logit per binary decision.
    labels: ``[...]`` targets in ``[0, 1]`` (hard or soft), same shape.
    pos_weight: optional weight ``w_+`` of the positive term, scalar or
      broadcastable to the last axis (``torch``'s ``pos_weight``).
    where: optional boolean mask of the same shape; masked entries give 0.

  Returns:
    ``[...]`` elementwise losses in float32 (or wider).

  Example:
    >>> import jax.numpy as jnp, lossjax
    >>> lossjax.sigmoid_binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))
    Array([0.693...], dtype=float32)
  """
  logits, labels, where = _binary_batch(logits, labels, where)
  if pos_weight is None:
    return _masked(_cross_entropy(logits, labels), where)
  _checks.check_nonnegative(pos_weight, "pos_weight")
  dtype = _checks.compute_dtype(logits.dtype)
  logits, labels = logits.astype(dtype), label_values(labels, dtype)
  # log p and log(1 - p) = log sigmoid(-z), both from one exp and one log1p,
  # exact in relative terms (no 1 - p cancellation).
  log_p, log_not_p = _sigmoid.log_sigmoids(logits)
  return _masked(-pos_weight * labels * log_p - (1.0 - labels) * log_not_p, where)


@jax.custom_jvp
def _cross_entropy(logits: Array, labels: Array) -> Array:
  # -y log p - (1 - y) log(1 - p) = y relu(-z) + (1 - y) relu(z) + log1p(e^-|z|):
  # three terms >= 0 for y in [0, 1], so exact in relative terms, and one
  # chain of arithmetic, which XLA:CPU reduces in one read of the logits.
  # Integer labels: softplus((1 - 2y) z) = relu((1 - 2y) z) + log1p(e^-|z|),
  # the sign from the labels' own pass (`label_signs`): eight operations a
  # logit where the soft labels' form takes thirteen.
  dtype = _checks.compute_dtype(logits.dtype)
  z = logits.astype(dtype)
  shared = jnp.log1p(jnp.exp(-jnp.abs(z)))
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    return jnp.maximum(label_signs(labels, dtype) * z, 0.0) + shared
  y = label_values(labels, dtype)
  return (1.0 - y) * jnp.maximum(z, 0.0) + y * jnp.maximum(-z, 0.0) + shared


@_cross_entropy.defjvp
def _cross_entropy_jvp(primals, tangents):
  (logits, labels), (logits_dot, labels_dot) = primals, tangents
  dtype = _checks.compute_dtype(logits.dtype)
  (z, y), (one,) = separate((logits, labels), (1,), dtype)
  z, y = z.astype(dtype), label_values(y, dtype)
  # d/dz = sigmoid(z) - y, d/dy = log(1 - p) - log p = -z.
  tangent = (one / (one + jnp.exp(-z)) - y) * logits_dot.astype(dtype)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    tangent = tangent - z * labels_dot.astype(dtype)
  return _cross_entropy(logits, labels), tangent


def sigmoid_focal_loss(logits, labels, *, alpha=None, gamma=2.0,
                       where=None) -> Array:
  r"""Sigmoid focal loss, elementwise.

  .. math:: \ell = -\alpha_t (1 - p_t)^\gamma \log p_t

  Same numbers as ``optax.sigmoid_focal_loss``.

  Args:
    logits: ``[...]`` one logit per binary decision.
    labels: ``[...]`` targets in ``[0, 1]``.
    alpha: ``None`` or the weight of positives in ``[0, 1]`` (0.25 in the
      paper); negatives get ``1 - alpha``.
    gamma: focusing exponent ``>= 0``.
    where: optional boolean mask; masked entries give 0.

  Returns:
    ``[...]`` elementwise losses.

  Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  _checks.check_nonnegative(gamma, "gamma")
  if alpha is not None:
    _checks.check_in_range(alpha, "alpha", 0.0, 1.0)
  logits, labels, where = _binary_batch(logits, labels, where)
  dtype = _checks.compute_dtype(logits.dtype)
  if not jnp.issubdtype(labels.dtype, jnp.floating):
    weight = jnp.asarray(0.5 if alpha is None else alpha, dtype)
    return _masked(_hard_focal(logits, labels, weight, jnp.asarray(gamma, dtype),
                               alpha is not None, _whole_power(gamma)), where)
  logits, labels = logits.astype(dtype), label_values(labels, dtype)
  log_p, log_not_p = _sigmoid.log_sigmoids(logits)
  cross_entropy = -labels * log_p - (1.0 - labels) * log_not_p
  # 1 - p_t = y (1 - p) + (1 - y) p, each from its exact log-probability.
  one_minus_pt = labels * jnp.exp(log_not_p) + (1.0 - labels) * jnp.exp(log_p)
  loss = cross_entropy * _softmax.safe_power(one_minus_pt, gamma)
  if alpha is not None:
    loss = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
  return _masked(loss, where)


def _hard_focal_terms(logits, labels, alpha, gamma, weighted, zero=0.0, half=0.5,
                      one=1.0, one_again=None):
  """Hard labels: with x = (1 - 2y) z, -log p_t = softplus(x) and
  1 - p_t = sigmoid(x), so (1 - p_t)^gamma = exp(-gamma softplus(-x)): one
  more exp beside the cross-entropy's, exact in relative terms, one chain of
  arithmetic (no select), the sign 1 - 2y from the labels' own pass
  (`label_signs`). Returns 1 - 2y, x, the cross-entropy, the modulating
  factor, softplus(-x), alpha_t (None unless `weighted`) and exp(-|z|).
  Given `one_again` (a 1 XLA cannot see as one), log1p(exp(-|z|)) is
  `_sigmoid.log1p_by_log`'s."""
  dtype = alpha.dtype
  z, signs = logits.astype(dtype), label_signs(labels, dtype)
  x = signs * z
  exp_abs = jnp.exp(-jnp.abs(z))
  shared = (jnp.log1p(exp_abs) if one_again is None
            else _sigmoid.log1p_by_log(exp_abs, one, one_again))
  softplus_minus_x = jnp.maximum(-x, zero) + shared
  cross_entropy = jnp.maximum(x, zero) + shared
  modulator = jnp.exp(-gamma * softplus_minus_x)
  # alpha y + (1 - alpha)(1 - y), as 1/2 + (1 - 2y)(1/2 - alpha).
  alpha_t = half + signs * (half - alpha) if weighted else None
  return signs, x, cross_entropy, modulator, softplus_minus_x, alpha_t, exp_abs


# A gamma known to be a whole number up to this takes the gradient's
# (1 - p_t)^gamma as products (`_hard_focal_slopes`).
WHOLE_POWERS_UP_TO = 8


def _whole_power(gamma) -> int | None:
  """gamma as an int where it is a known whole number up to
  `WHOLE_POWERS_UP_TO` (not traced: no derivative in it is asked for), else None."""
  if _checks.is_traced(gamma):
    return None
  value = np.asarray(gamma, np.float64)
  if value.ndim or not float(value).is_integer() or not 0 <= value <= WHOLE_POWERS_UP_TO:
    return None
  return int(value)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _hard_focal(logits, labels, alpha, gamma, weighted, power):
  _, _, cross_entropy, modulator, _, alpha_t, _ = _hard_focal_terms(
      logits, labels, alpha, gamma, weighted)
  loss = cross_entropy * modulator
  return loss if alpha_t is None else alpha_t * loss


def _hard_focal_jvp(weighted, power, primals, tangents):
  # Symbolic zeros: the terms in gamma and alpha only where they are
  # differentiated (reverse mode drops them anyway; forward mode in the
  # logits alone then computes none of them).
  logits, labels, alpha, gamma = primals
  logits_dot, _, alpha_dot, gamma_dot = tangents
  value = _hard_focal(logits, labels, alpha, gamma, weighted, power)
  terms = []
  if not isinstance(logits_dot, SymbolicZero):
    slope = _logit_slope(logits, labels, alpha, gamma, weighted, power)
    terms.append(slope.astype(alpha.dtype) * logits_dot.astype(alpha.dtype))
  in_gamma, in_alpha = (not isinstance(t, SymbolicZero) for t in (gamma_dot, alpha_dot))
  if in_gamma or (weighted and in_alpha):
    _, d_gamma, alpha_t, d_alpha = _hard_focal_slopes(logits, labels, alpha, gamma, weighted, power)
    if in_gamma:
      terms.append((d_gamma if alpha_t is None else alpha_t * d_gamma) * gamma_dot)
    if weighted and in_alpha:
      terms.append(d_alpha * alpha_dot)
  if not terms:
    return value, jnp.zeros(value.shape, value.dtype)
  return value, functools.reduce(jnp.add, terms)


_hard_focal.defjvp(_hard_focal_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _logit_slope(logits, labels, alpha, gamma, weighted, power):
  """alpha_t times the unweighted loss's derivative in each logit: the
  gradient's factor. Where lossjax's CPU kernel runs (`_native.takes`), by
  it, in the logits' dtype (a bfloat16 gradient is then rounded twice, here
  and after the caller's cotangent, within an ulp of once; the same in
  XLA's form off CPU); else `_hard_focal_slopes`' in the compute dtype. The
  kernel's loop is 16 lanes wide and writes the slope in one pass, where
  XLA:CPU's loop of the same arithmetic, 8 lanes wide, is the slower
  (measured: docs/measurement.md); the cotangent's product after it runs in
  place."""
  def xla_form(z, y, alpha_, gamma_):
    d_logits, _, alpha_t, _ = _hard_focal_slopes(z, y, alpha_, gamma_, weighted, power)
    return d_logits if alpha_t is None else alpha_t * d_logits
  if _native.takes(logits):
    return _native.binary_focal_slope(
        logits, labels, alpha, gamma, weighted, power,
        lambda *args: xla_form(*args).astype(logits.dtype))
  return xla_form(logits, labels, alpha, gamma)


@_logit_slope.defjvp
def _logit_slope_jvp(weighted, power, primals, tangents):
  # As `_hard_focal_slopes_jvp`: the second order from the smooth form.
  def smooth(*args):
    d_logits, _, alpha_t, _ = _smooth_hard_focal_slopes(*args, weighted)
    return d_logits if alpha_t is None else alpha_t * d_logits
  slope = _logit_slope(*primals, weighted, power)
  _, tangent = jax.jvp(smooth, primals, tangents)
  return slope, tangent.astype(slope.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5))
def _hard_focal_slopes(logits, labels, alpha, gamma, weighted, power):
  """The unweighted loss's derivatives in the logit and in gamma, alpha_t,
  and the loss's derivative in alpha (alpha_t and the last None unless
  `weighted`): each one chain of arithmetic, for the gradient's loop, with
  one exp, one log and one division (docs/measurement.md). Given `power`
  (gamma, a known whole number), the modulating factor is q^power by
  products, not the exponential of the loss's own chain."""
  (z, y, alpha_, gamma_), (zero, half, one, one_again) = separate(
      (logits, labels, alpha, gamma), (0, 0.5, 1, 1), alpha.dtype)
  signs, x, cross_entropy, modulator, softplus_minus_x, alpha_t, exp_abs = _hard_focal_terms(
      z, y, alpha_, gamma_, weighted, zero, half, one, one_again)
  # With w = -x and q = sigmoid(-w): d softplus(-w)/dw = -q, d exp(-gamma
  # softplus(w))/dw = -gamma sigmoid(w) exp(...), so dl/dw = -m (q + gamma ce
  # sigmoid(w)), and dl/dz = -(1 - 2y) dl/dw. Both sigmoids from the terms'
  # exp(-|w|), no exponential of their own: sigmoid(|w|) = 1 / (1 +
  # exp(-|w|)) and sigmoid(-|w|) = exp(-|w|) times that, the sign of w
  # picking which is p and which q (a select is no cost in this loop, which
  # writes the gradient; only the loss's reduction cannot take one).
  larger = one / (one + exp_abs)
  smaller = exp_abs * larger
  positive = x <= zero
  q = jnp.where(positive, smaller, larger)
  p = jnp.where(positive, larger, smaller)
  if power is not None:
    modulator = jax.lax.integer_pow(q, power)
  d_w = -modulator * (q + gamma_ * cross_entropy * p)
  d_alpha = -signs * cross_entropy * modulator if weighted else None
  return -signs * d_w, -(cross_entropy * modulator * softplus_minus_x), alpha_t, d_alpha


@_hard_focal_slopes.defjvp
def _hard_focal_slopes_jvp(weighted, power, primals, tangents):
  # The slopes' own derivatives (the loss's second order) by autodiff of the
  # same slopes written with smooth functions: the chain above has kinks at
  # w = 0 (|w|, max(w, 0), the selects) that cancel in its value but not
  # in autodiff's derivative of it (0.08 for 0.40 at z = 0, gamma = 2).
  return jax.jvp(lambda *args: _smooth_hard_focal_slopes(*args, weighted), primals, tangents)


def _smooth_hard_focal_slopes(logits, labels, alpha, gamma, weighted):
  y = label_values(labels, alpha.dtype)
  sign = 2.0 * y - 1.0
  w = sign * logits.astype(alpha.dtype)
  log_p, log_q = jax.nn.log_sigmoid(w), jax.nn.log_sigmoid(-w)
  modulator = jnp.exp(gamma * log_q)
  d_w = -modulator * (jax.nn.sigmoid(-w) - gamma * log_p * jax.nn.sigmoid(w))
  alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y) if weighted else None
  d_alpha = -sign * log_p * modulator if weighted else None
  return sign * d_w, -(log_p * modulator * log_q), alpha_t, d_alpha


def sigmoid_squared_error(logits, labels, *, where=None) -> Array:
  r"""Squared error between the sigmoid probability and the label.

  .. math:: \ell = (\sigma(z) - y)^2

  The binary analogue of the Brier score; what "MSE on a sigmoid output"
  trains.

  Args:
    logits: ``[...]``.
    labels: ``[...]`` targets in ``[0, 1]``.
    where: optional boolean mask; masked entries give 0.

  Returns:
    ``[...]`` elementwise losses.
  """
  logits, labels, where = _binary_batch(logits, labels, where)
  return _masked(_squared_error(logits, labels), where)


@jax.custom_jvp
def _squared_error(logits: Array, labels: Array) -> Array:
  dtype = _checks.compute_dtype(logits.dtype)
  return jnp.square(jax.nn.sigmoid(logits.astype(dtype)) - label_values(labels, dtype))


@_squared_error.defjvp
def _squared_error_jvp(primals, tangents):
  (logits, labels), (logits_dot, labels_dot) = primals, tangents
  dtype = _checks.compute_dtype(logits.dtype)
  (z, y), (one,) = separate((logits, labels), (1,), dtype)
  z, y = z.astype(dtype), label_values(y, dtype)
  # d sigmoid(z)/dz = sigmoid(z) sigmoid(-z) = e / (1 + e)^2, e = exp(-|z|).
  error = one / (one + jnp.exp(-z)) - y
  e = jnp.exp(-jnp.abs(z))
  tangent = (one + one) * error * (e / jnp.square(one + e)) * logits_dot.astype(dtype)
  if jnp.issubdtype(labels.dtype, jnp.floating):
    tangent = tangent - (one + one) * error * labels_dot.astype(dtype)
  return _squared_error(logits, labels), tangent
