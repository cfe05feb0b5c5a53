"""Turns user arguments into checked, class-axis-last, float32+ arrays."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _softmax

Array = jax.Array


class IntegerLabelBatch(NamedTuple):
  logits: Array  # [..., C], compute dtype, class axes last (flattened)
  labels: Array  # [...], integer, forced into [0, C) where invalid or masked out
  valid: Array | None  # [...] bool, None when all labels are known valid
  where: Array | None  # [...] bool per-example mask, None for all
  keep: Array | None = None  # [..., C] bool per-logit mask (optax's), None for all
  stored: Array | None = None  # `logits` in the caller's dtype (bfloat16 stays bfloat16)

  @property
  def num_classes(self) -> int:
    return self.logits.shape[-1]

  def true_logit(self) -> Array:
    """z[..., label] in the compute dtype, picked from the stored logits (see
    lossjax/_softmax.py: on XLA:CPU that keeps bfloat16 logits from being
    written out in float32)."""
    return _softmax.take_class(self.stored, self.labels).astype(self.logits.dtype)

  def finish(self, values: Array) -> Array:
    """Per-example values with invalid labels as NaN and masked ones as 0."""
    if self.valid is not None:
      values = jnp.where(self.valid, values, jnp.nan)
    if self.where is not None:
      values = jnp.where(self.where, values, 0.0)
    return values


def masks(where, shape: tuple, axes: tuple[int, ...], per_logit: bool):
  """(per-example mask, per-logit mask) from the user's `where`: a mask of the
  input's rank masks logits (optax's convention: masked logits leave the
  softmax; an example with none left gives 0), one of the batch's rank masks
  examples."""
  batch_shape = tuple(n for a, n in enumerate(shape) if a not in axes)
  if not _checks.is_per_element(where, len(shape)):
    return _checks.example_mask(where, batch_shape), None
  if not per_logit:
    raise ValueError(
        f"`where` must have shape {batch_shape} for this loss (one entry per example), "
        f"got {tuple(jnp.shape(where))}; per-logit masks (the rank of `logits`) are taken by "
        "the softmax cross-entropies, poly_loss_cross_entropy and the KL divergences.")
  keep = _checks.element_mask(where, shape, axes)
  return jnp.any(keep, axis=-1), keep


def integer_label_batch(logits, labels, axis, where, *,
                        per_logit: bool = False) -> IntegerLabelBatch:
  logits = _checks.floating_array(logits, "logits")
  labels = _checks.integer_array(labels, "labels")
  axes = _checks.class_axes(axis, logits.ndim)
  where, keep = masks(where, logits.shape, axes, per_logit)
  logits = _checks.classes_last(logits, axes)
  batch_shape = logits.shape[:-1]
  _checks.check_shape(labels, batch_shape, "labels",
                      "the shape of `logits` without its class axis")
  num_classes = logits.shape[-1]
  valid = _checks.label_validity(labels, num_classes, where)
  if valid is not None:
    labels = jnp.where(valid, labels, 0)
  elif where is not None:
    # Masked-out examples may carry any label (an ignore index such as -100):
    # 0 stands in, so that every label picks one of its row's own logits (the
    # log-normaliser's shift: out of range, NaN, and the batch's slow path).
    labels = jnp.where(where, labels, 0)
  return IntegerLabelBatch(logits.astype(_checks.compute_dtype(logits.dtype)), labels, valid,
                           where, keep, stored=logits)


class ProbabilityLabelBatch(NamedTuple):
  logits: Array  # [..., C], compute dtype, class axes last (flattened)
  labels: Array  # [..., C], compute dtype, class axes last (flattened)
  where: Array | None  # [...] per-example mask
  keep: Array | None = None  # [..., C] per-logit mask

  def finish(self, values: Array) -> Array:
    if self.where is not None:
      values = jnp.where(self.where, values, 0.0)
    return values


_PROBABILITY_LABELS = ("logits", "labels", "one probability per logit; integer class "
                      "indices go to the `_with_integer_labels` form")


def probability_label_batch(logits, labels, axis, where, *, per_logit: bool = False,
                            names: tuple[str, str, str] = _PROBABILITY_LABELS
                            ) -> ProbabilityLabelBatch:
  """Two float arrays of one shape, class (or distribution) axes last, in one
  compute dtype, with their masks; `names` are the two arguments' names and
  why the second has the first's shape, for the errors."""
  first, second, why = names
  logits = _checks.floating_array(logits, first)
  labels = _checks.floating_array(labels, second)
  _checks.check_shape(labels, logits.shape, second, why)
  axes = _checks.class_axes(axis, logits.ndim, first)
  where, keep = masks(where, logits.shape, axes, per_logit)
  logits = _checks.classes_last(logits, axes)
  labels = _checks.classes_last(labels, axes)
  dtype = _checks.common_compute_dtype(logits.dtype, labels.dtype)
  return ProbabilityLabelBatch(logits.astype(dtype), labels.astype(dtype), where, keep)


def kept_count(batch) -> Array | int:
  """The number of classes each example's softmax runs over."""
  if batch.keep is None:
    return batch.logits.shape[-1]
  return jnp.sum(batch.keep, axis=-1).astype(batch.logits.dtype)


def log_normalizer(batch) -> Array:
  """logsumexp over each example's kept classes (all of them without a
  per-logit mask). Integer labels without a mask take theirs from
  `class_statistics`, shifted by the true class's logit."""
  if batch.keep is not None:
    return _softmax.masked_log_normalizer(batch.logits, batch.keep)
  return _softmax.log_normalizer(batch.logits)


def class_statistics(batch: IntegerLabelBatch, row_sum: bool = False) -> tuple:
  """``(z[..., label], logsumexp over the kept classes)`` in the compute dtype,
  and ``sum_c z_c`` over all classes after them if `row_sum`: without a
  per-logit mask, `lossjax._softmax.class_statistics`, whose derivative for
  bfloat16 logits is one expression, rounded once."""
  if batch.keep is None:
    return _softmax.class_statistics(batch.stored, batch.labels, row_sum)
  values = (batch.true_logit(), log_normalizer(batch))
  return values + (_softmax.row_sum_apart(batch.stored),) if row_sum else values


def margin_statistics(batch: IntegerLabelBatch, rival: bool = False) -> tuple:
  """``(max, z[..., label])`` in the compute dtype, the max without the label's
  class if `rival`: `lossjax._softmax.margin_statistics` of the stored logits."""
  return _softmax.margin_statistics(batch.stored, batch.labels, rival)


def over_kept(batch, values: Array) -> Array:
  """`values` [..., C] with the masked-out logits' entries set to 0."""
  return values if batch.keep is None else jnp.where(batch.keep, values, 0.0)


def per_class(value, batch, name: str) -> Array | None:
  if value is None:
    return None
  return _checks.class_vector(value, batch.logits.shape[-1], name).astype(
      batch.logits.dtype)


def along_last_axis(vector: Array, ndim: int) -> Array:
  """A `[C]` vector as `[1, ..., 1, C]`, broadcasting explicitly (no rank promotion)."""
  return vector.reshape((1,) * (ndim - 1) + vector.shape)
