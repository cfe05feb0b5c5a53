"""Softmax cross-entropy and the losses built on its log-normaliser."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _softmax
from lossjax.losses import _prepare

Array = jax.Array


def _uniform_target_term(batch, log_norm: Array, class_weights: Array | None,
                         row_sum: Array | None = None) -> Array:
  """sum_c w_c (-log p_c) over the kept classes: cross-entropy against a
  uniform target, times the number of classes (`row_sum`, sum_c z_c, if
  given, from `_prepare.class_statistics`)."""
  if batch.keep is None:
    # sum_c w_c (L - z_c) = L sum_c w_c - sum_c w_c z_c: a sum of the logits, which
    # XLA:CPU reduces in the pass it reads them in, where L - z, formed
    # elementwise, is first written out (docs/measurement.md; shifting the
    # logits by their max or true logit first, both tried, brings the write
    # back).
    # The two terms cancel to within the logits' offset times float32's
    # rounding, as L - z_c does: L itself is rounded at the offset's scale.
    if class_weights is None:
      if row_sum is None:
        row_sum = _softmax.row_sum_apart(batch.stored)
      return batch.num_classes * log_norm - row_sum
    weights = _prepare.along_last_axis(class_weights, batch.logits.ndim)
    return log_norm * jnp.sum(class_weights) - _softmax.row_sum_apart(batch.stored, weights)
  # -log p_c = logsumexp(z) - z_c, summed elementwise so no large terms cancel.
  neg_log_probs = log_norm[..., None] - batch.logits
  if class_weights is not None:
    neg_log_probs = neg_log_probs * _prepare.along_last_axis(class_weights, batch.logits.ndim)
  return jnp.sum(_prepare.over_kept(batch, neg_log_probs), axis=-1)


def _target_sum(targets: Array, neg_log_probs: Array) -> Array:
  """sum_c q_c (-log p_c), with 0 log 0 = 0: a class of probability 0 and
  logit -inf adds nothing (optax's `safe_softmax_cross_entropy`) instead of NaN."""
  impossible = (targets == 0) & jnp.isinf(neg_log_probs)
  return jnp.sum(jnp.where(impossible, 0.0, targets * neg_log_probs), axis=-1)


def softmax_cross_entropy_with_integer_labels(
    logits, labels, axis: int = -1, where=None, *,
    class_weights=None, label_smoothing=0.0) -> Array:
  r"""Softmax cross-entropy against integer class labels.

  .. math::
    \ell_i = -\sum_c w_c\, q_{ic} \log \mathrm{softmax}(z_i)_c, \quad
    q_i = (1 - \varepsilon)\,\mathrm{onehot}(y_i) + \varepsilon / C

  With no class weights and no smoothing this is
  ``logsumexp(z_i) - z_{i, y_i}``, the same numbers as
  ``optax.softmax_cross_entropy_with_integer_labels``.

  Args:
    logits: ``[..., C]`` unnormalised log-probabilities (any float dtype;
      bfloat16/float16 are computed in float32).
    labels: ``[...]`` integers in ``[0, C)``. Out-of-range labels raise
      ``ValueError`` outside ``jit`` and give NaN for that example inside.
    axis: the class axis of ``logits``, or a tuple of axes (then a label is
      the flat index into ``logits``' slice over those axes, in the order
      given: optax's convention).
    where: optional boolean mask, either per example (``[...]``, the shape of
      ``labels``: masked examples give 0 and their labels are not checked, the
      ignore-index use case) or per logit (broadcastable to ``logits``,
      optax's: masked logits leave the softmax, an example with none left
      gives 0).
    class_weights: optional ``[C]`` weights, as ``torch``'s ``weight=``: an
      example's loss is scaled by the weight of its target class(es).
    label_smoothing: ``ε`` in ``[0, 1]``, ``torch``'s semantics (the uniform
      part spreads over the kept classes under a per-logit mask).

  Returns:
    ``[...]`` per-example losses in float32 (float64 for float64 logits).

  Example:
    >>> import jax.numpy as jnp, lossjax
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> lossjax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]))
    Array([0.27..., 2.95...], dtype=float32)

  Reference: label smoothing, Szegedy et al., "Rethinking the Inception
  Architecture for Computer Vision", 2016.
  """
  _checks.check_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)
  batch = _prepare.integer_label_batch(logits, labels, axis, where, per_logit=True)
  weights = _prepare.per_class(class_weights, batch, "class_weights")
  smoothing = not _checks.is_static_zero(label_smoothing)
  true_logit, log_norm, *row_sum = _prepare.class_statistics(
      batch, row_sum=smoothing and weights is None and batch.keep is None)
  loss = log_norm - true_logit
  if weights is not None:
    loss = loss * weights[batch.labels]
  if smoothing:
    uniform = _uniform_target_term(batch, log_norm, weights, *row_sum)
    loss = (1.0 - label_smoothing) * loss + (
        label_smoothing / _prepare.kept_count(batch)) * uniform
  return batch.finish(loss)


def softmax_cross_entropy(
    logits, labels, axis: int = -1, where=None, *,
    class_weights=None, label_smoothing=0.0) -> Array:
  r"""Softmax cross-entropy against probability (e.g. one-hot) labels.

  .. math::
    \ell_i = -\sum_c w_c\, q_{ic} \log \mathrm{softmax}(z_i)_c, \quad
    q_i = (1 - \varepsilon)\,y_i + \varepsilon / C

  Same numbers as ``optax.softmax_cross_entropy`` without the options, and
  as ``optax.safe_softmax_cross_entropy``: a class of probability 0 whose
  logit is -inf adds 0 (``0 log 0 = 0``), not NaN.

  Args:
    logits: ``[..., C]`` unnormalised log-probabilities.
    labels: ``[..., C]`` probabilities (same shape as ``logits``, no
      broadcasting).
    axis: the class axis, a tuple of axes, or None for all of them.
    where: optional boolean mask, per example (``[...]``: masked examples
      give 0) or per logit (broadcastable to ``logits``: masked logits leave
      the softmax and the sum).
    class_weights: optional ``[C]`` weights (``torch``'s ``weight=``).
    label_smoothing: ``ε`` in ``[0, 1]``.

  Returns:
    ``[...]`` per-example losses in float32 (or wider).

  Example:
    >>> import jax.numpy as jnp, lossjax
    >>> logits = jnp.array([[1.2, -0.8, -0.5]])
    >>> lossjax.softmax_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))
    Array([0.27...], dtype=float32)
  """
  _checks.check_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)
  batch = _prepare.probability_label_batch(logits, labels, axis, where, per_logit=True)
  weights = _prepare.per_class(class_weights, batch, "class_weights")
  targets = batch.labels
  if not _checks.is_static_zero(label_smoothing):
    count = _prepare.kept_count(batch)
    targets = (1.0 - label_smoothing) * targets + _prepare.over_kept(
        batch, jnp.broadcast_to(jnp.expand_dims(label_smoothing / count, -1), targets.shape))
  if weights is not None:
    targets = targets * _prepare.along_last_axis(weights, targets.ndim)
  log_norm = _prepare.log_normalizer(batch)
  neg_log_probs = log_norm[..., None] - batch.logits
  return batch.finish(_target_sum(_prepare.over_kept(batch, targets), neg_log_probs))


def safe_softmax_cross_entropy(logits, labels) -> Array:
  r"""Softmax cross-entropy against probability labels with ``0 log 0 = 0``.

  optax's name for what ``softmax_cross_entropy`` always does: where a label
  is 0 and its logit is -inf the term is 0 (not NaN); where a label is
  positive and its logit -inf the loss is +inf.

  Args:
    logits: ``[..., C]``, -inf allowed.
    labels: ``[..., C]`` probabilities.

  Returns:
    ``[...]`` per-example losses.
  """
  return softmax_cross_entropy(logits, labels)


def poly_loss_cross_entropy(
    logits, labels, *, epsilon=2.0, axis: int = -1, where=None) -> Array:
  r"""Poly-1 loss: cross-entropy plus ε times one minus the target probability.

  .. math:: \ell_i = \mathrm{CE}_i + \varepsilon\,(1 - p_{i,t})

  ``labels`` may be probabilities ``[..., C]`` (optax's form, where
  ``1 - p_t = sum_c y_c (1 - p_c)``) or integer classes ``[...]``.

  Args:
    logits: ``[..., C]``.
    labels: ``[..., C]`` probabilities or ``[...]`` integers in ``[0, C)``.
    epsilon: weight of the first polynomial term (2.0 as optax and the paper's
      ImageNet setting; 0 gives cross-entropy).
    axis: the class axis, a tuple of axes, or None for all of them.
    where: optional mask, per example (``[...]``) or per logit (broadcastable
      to ``logits``), as ``softmax_cross_entropy``.

  Returns:
    ``[...]`` per-example losses.

  Reference: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of
  Classification Loss Functions", ICLR 2022.
  """
  probability_labels = (jnp.issubdtype(jnp.result_type(labels), jnp.floating)
                        and jnp.ndim(labels) == jnp.ndim(logits))
  if not probability_labels:
    batch = _prepare.integer_label_batch(logits, labels, axis, where, per_logit=True)
    true_logit, log_norm = _prepare.class_statistics(batch)
    log_prob = true_logit - log_norm
    return batch.finish(-log_prob + epsilon * _softmax.one_minus_prob(log_prob))
  batch = _prepare.probability_label_batch(logits, labels, axis, where, per_logit=True)
  log_norm = _prepare.log_normalizer(batch)
  targets = _prepare.over_kept(batch, batch.labels)
  cross_entropy = _target_sum(targets, log_norm[..., None] - batch.logits)
  one_minus_pt = jnp.sum(targets * _softmax.one_minus_prob(batch.logits - log_norm[..., None]),
                         axis=-1)
  return batch.finish(cross_entropy + epsilon * one_minus_pt)


def softmax_focal_loss(
    logits, labels, *, gamma=2.0, alpha=None, axis: int = -1,
    where=None) -> Array:
  r"""Multiclass (softmax) focal loss with optional per-class alpha.

  .. math:: \ell_i = -\alpha_{y_i} (1 - p_{i,y_i})^\gamma \log p_{i,y_i}

  ``gamma = 0`` and ``alpha = None`` give cross-entropy exactly.

  Args:
    logits: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    gamma: focusing exponent ``>= 0`` (2 in the paper).
    alpha: ``None``, a scalar, or a ``[C]`` array of per-class weights.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses.

  Reference: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017
  (generalised from the sigmoid form to the softmax).
  """
  _checks.check_nonnegative(gamma, "gamma")
  batch = _prepare.integer_label_batch(logits, labels, axis, where)
  log_prob = _softmax.true_class_log_prob(batch.stored, batch.labels)
  loss = -_softmax.safe_power(_softmax.one_minus_prob(log_prob), gamma) * log_prob
  if alpha is not None:
    alpha = jnp.asarray(alpha)
    if alpha.ndim == 0:
      loss = loss * alpha
    else:
      loss = loss * _prepare.per_class(alpha, batch, "alpha")[batch.labels]
  return batch.finish(loss)


def generalized_cross_entropy(
    logits, labels, *, q=0.7, axis: int = -1, where=None) -> Array:
  r"""Generalized cross-entropy, robust to label noise.

  .. math:: \ell_i = (1 - p_{i,y_i}^q) / q

  ``q -> 0`` approaches cross-entropy, ``q = 1`` is half the MAE on
  probabilities.

  Args:
    logits: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    q: exponent in ``(0, 1]`` (0.7 in the paper).
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses.

  Reference: Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training
  Deep Neural Networks with Noisy Labels", NeurIPS 2018.
  """
  _checks.check_in_range(q, "q", 0.0, 1.0, low_open=True)
  batch = _prepare.integer_label_batch(logits, labels, axis, where)
  log_prob = _softmax.true_class_log_prob(batch.stored, batch.labels)
  # 1 - p^q = -expm1(q log p): exact when p is close to 1.
  return batch.finish(-jnp.expm1(q * log_prob) / q)
