"""Turns user arguments into checked, class-axis-last, float32+ arrays."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lossjax import _checks

Array = jax.Array


class IntegerLabelBatch(NamedTuple):
  logits: Array  # [..., C], compute dtype, class axis last
  labels: Array  # [...], integer, forced into [0, C) where invalid
  valid: Array | None  # [...] bool, None when all labels are known valid
  where: Array | None  # [...] bool per-example mask, None for all

  @property
  def num_classes(self) -> int:
    return self.logits.shape[-1]

  def finish(self, values: Array) -> Array:
    """Per-example values with invalid labels as NaN and masked ones as 0."""
    if self.valid is not None:
      values = jnp.where(self.valid, values, jnp.nan)
    if self.where is not None:
      values = jnp.where(self.where, values, 0.0)
    return values


def integer_label_batch(logits, labels, axis, where) -> IntegerLabelBatch:
  logits = _checks.floating_array(logits, "logits")
  labels = _checks.integer_array(labels, "labels")
  logits = _checks.class_axis_last(logits, axis)
  batch_shape = logits.shape[:-1]
  _checks.check_shape(labels, batch_shape, "labels",
                      "the shape of `logits` without its class axis")
  where = _checks.example_mask(where, batch_shape)
  num_classes = logits.shape[-1]
  valid = _checks.label_validity(labels, num_classes, where)
  if valid is not None:
    labels = jnp.where(valid, labels, 0)
  logits = logits.astype(_checks.compute_dtype(logits.dtype))
  return IntegerLabelBatch(logits, labels, valid, where)


class ProbabilityLabelBatch(NamedTuple):
  logits: Array  # [..., C], compute dtype, class axis last
  labels: Array  # [..., C], compute dtype, class axis last
  where: Array | None

  def finish(self, values: Array) -> Array:
    if self.where is not None:
      values = jnp.where(self.where, values, 0.0)
    return values


def probability_label_batch(logits, labels, axis, where) -> ProbabilityLabelBatch:
  logits = _checks.floating_array(logits, "logits")
  labels = _checks.floating_array(labels, "labels")
  _checks.check_shape(labels, logits.shape, "labels",
                      "one probability per logit; integer class indices go "
                      "to the `_with_integer_labels` form")
  logits = _checks.class_axis_last(logits, axis)
  labels = jnp.moveaxis(labels, axis, -1)
  where = _checks.example_mask(where, logits.shape[:-1])
  dtype = _checks.compute_dtype(jnp.promote_types(logits.dtype, labels.dtype))
  return ProbabilityLabelBatch(logits.astype(dtype), labels.astype(dtype), where)


def per_class(value, batch, name: str) -> Array | None:
  if value is None:
    return None
  return _checks.class_vector(value, batch.logits.shape[-1], name).astype(
      batch.logits.dtype)


def along_last_axis(vector: Array, ndim: int) -> Array:
  """A `[C]` vector as `[1, ..., 1, C]`, broadcasting explicitly (no rank promotion)."""
  return vector.reshape((1,) * (ndim - 1) + vector.shape)
