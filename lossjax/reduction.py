"""Reductions of per-example losses, kept apart from the loss formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks

Array = jax.Array


def _same_shape(values, other, name: str):
  other = jnp.asarray(other)
  _checks.check_shape(other, jnp.shape(values), name,
                      "one entry per example, the shape of `values`")
  return other


def mean(values) -> Array:
  """Mean of per-example losses."""
  return jnp.mean(values)


def sum(values) -> Array:  # noqa: A001 - mirrors jnp.sum, used as reduction.sum
  """Sum of per-example losses."""
  return jnp.sum(values)


def weighted_mean(values, weights) -> Array:
  """sum(w * values) / sum(w); 0 when all weights are 0 (not NaN)."""
  weights = _same_shape(values, weights, "weights").astype(jnp.result_type(values))
  total = jnp.sum(weights)
  # Dividing by max(total, tiny) keeps the all-zero case at 0 with a 0 gradient.
  return jnp.sum(weights * values) / jnp.maximum(total, jnp.finfo(total.dtype).tiny)


def masked_mean(values, where) -> Array:
  """Mean over the examples where `where` is True; 0 when none are.

  Masked entries are excluded with ``jnp.where``, so a NaN there (e.g. from an
  invalid label) does not leak into the result.
  """
  where = _same_shape(values, where, "where")
  if where.dtype != jnp.bool_:
    raise TypeError(f"`where` must be boolean, got dtype {where.dtype}.")
  values = jnp.asarray(values)
  count = jnp.sum(where).astype(values.dtype)
  return jnp.sum(jnp.where(where, values, 0.0)) / jnp.maximum(count, 1.0)


def reduce(values, reduction: str = "mean", *, weights=None, where=None) -> Array:
  """Reduces per-example losses: 'mean', 'sum' or 'none', with weights/mask.

  Args:
    values: ``[...]`` per-example losses.
    reduction: 'mean', 'sum' or 'none'.
    weights: optional per-example weights (mean becomes a weighted mean).
    where: optional boolean per-example mask (excluded examples count 0).

  Returns:
    A scalar, or ``values`` (masked/weighted) for 'none'.
  """
  if reduction not in ("mean", "sum", "none"):
    raise ValueError(
        f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}.")
  if where is not None:
    where = _same_shape(values, where, "where")
    weights = where if weights is None else jnp.where(
        where, _same_shape(values, weights, "weights"), 0)
    values = jnp.where(where, values, 0.0)
  if weights is None:
    return {"mean": mean, "sum": sum, "none": lambda v: v}[reduction](values)
  weights = _same_shape(values, weights, "weights").astype(jnp.result_type(values))
  if reduction == "mean":
    return weighted_mean(values, weights)
  weighted = weights * values
  return jnp.sum(weighted) if reduction == "sum" else weighted
