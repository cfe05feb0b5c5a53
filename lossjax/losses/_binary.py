"""Sigmoid (one logit per decision) losses: binary cross-entropy and focal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _sigmoid
from lossjax import _softmax

Array = jax.Array


def _binary_batch(logits, labels, where):
  logits = _checks.floating_array(logits, "logits")
  labels = jnp.asarray(labels)
  _checks.check_shape(labels, logits.shape, "labels", "one label per logit")
  if not (jnp.issubdtype(labels.dtype, jnp.floating)
          or jnp.issubdtype(labels.dtype, jnp.integer)
          or labels.dtype == jnp.bool_):
    raise TypeError(f"`labels` must be numbers in [0, 1], got dtype {labels.dtype}.")
  if not _checks.is_traced(labels):
    _checks.check_in_range(labels, "labels", 0.0, 1.0)
  where = _checks.example_mask(where, logits.shape)
  dtype = _checks.compute_dtype(logits.dtype)
  return logits.astype(dtype), labels.astype(dtype), where


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
  # log p and log(1 - p) = log sigmoid(-z), both from one exp and one log1p,
  # exact in relative terms (no 1 - p cancellation).
  log_p, log_not_p = _sigmoid.log_sigmoids(logits)
  positive = labels * log_p
  if pos_weight is not None:
    _checks.check_nonnegative(pos_weight, "pos_weight")
    positive = pos_weight * positive
  return _masked(-positive - (1.0 - labels) * log_not_p, where)


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
  log_p, log_not_p = _sigmoid.log_sigmoids(logits)
  cross_entropy = -labels * log_p - (1.0 - labels) * log_not_p
  # 1 - p_t = y (1 - p) + (1 - y) p, each from its exact log-probability.
  one_minus_pt = labels * jnp.exp(log_not_p) + (1.0 - labels) * jnp.exp(log_p)
  loss = cross_entropy * _softmax.safe_power(one_minus_pt, gamma)
  if alpha is not None:
    loss = (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
  return _masked(loss, where)


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
  return _masked(jnp.square(jax.nn.sigmoid(logits) - labels), where)
