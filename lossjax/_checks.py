"""Argument checks shared by every loss: shapes, dtypes, label ranges, masks.

Checks on shapes and dtypes run at trace time (they see only abstract values),
so a mismatch raises before anything is computed. Label-range checks depend on
values: outside a trace they raise ``ValueError`` naming the offending labels;
inside a trace they cannot, so the affected examples become NaN (never a
silently wrong number); inside ``label_checks()`` a ``checkify`` check is
recorded too, which ``lossjax.checked`` (or the caller's own
``checkify.checkify``) turns into an exception under ``jit``.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array

# Whether traced losses record checkify checks on their labels. Off by
# default: a recorded check is an effect, and effects take jit's slow
# dispatch path (~0.15 ms a call, measured), even when nothing checkifies them.
_LABEL_CHECKS = contextvars.ContextVar("lossjax_label_checks", default=False)


@contextlib.contextmanager
def label_checks(enabled: bool = True):
  """Within this context, traced losses record checkify checks on labels."""
  token = _LABEL_CHECKS.set(enabled)
  try:
    yield
  finally:
    _LABEL_CHECKS.reset(token)


def is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def is_static_zero(value) -> bool:
  """True when `value` is known at trace time to be 0 (a term to skip)."""
  return not is_traced(value) and bool(np.all(np.asarray(value) == 0))


def compute_dtype(dtype) -> np.dtype:
  """The dtype a loss computes and returns in: at least float32."""
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize >= 4:
    return dtype
  return np.dtype(jnp.float32)


def common_compute_dtype(*dtypes) -> np.dtype:
  """The compute dtype of several inputs: the widest of theirs (no implicit
  promotion, so that it works under strict dtype promotion too)."""
  return max((compute_dtype(d) for d in dtypes), key=lambda d: d.itemsize)


def floating_array(value, name: str) -> Array:
  """`value` as a floating-point array; TypeError naming `name` otherwise."""
  array = jnp.asarray(value)
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must be a floating-point array, got dtype {array.dtype}.")
  return array


def integer_array(value, name: str) -> Array:
  array = jnp.asarray(value)
  if not jnp.issubdtype(array.dtype, jnp.integer):
    raise TypeError(
        f"`{name}` must be an integer array of class indices, got dtype "
        f"{array.dtype}; for probability (one-hot) labels use "
        "`softmax_cross_entropy`.")
  return array


def class_axes(axis, ndim: int, name: str = "logits") -> tuple[int, ...]:
  """`axis` (an int, a tuple of ints, or None for every axis) as a tuple of
  non-negative axes of an array of rank `ndim`, in the order given."""
  if ndim == 0:
    raise ValueError(f"`{name}` must have a class axis, got a scalar.")
  if axis is None:
    return tuple(range(ndim))
  axes = axis if isinstance(axis, tuple) else (axis,)
  if not axes or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                         for a in axes):
    raise TypeError(f"`axis` must be an int, a non-empty tuple of ints or None, got {axis!r}.")
  if not all(-ndim <= a < ndim for a in axes):
    raise ValueError(f"`axis`={axis} is out of range for `{name}` of rank {ndim}.")
  canonical = tuple(int(a) % ndim for a in axes)
  if len(set(canonical)) != len(canonical):
    raise ValueError(f"`axis`={axis} names an axis twice.")
  return canonical


def classes_last(array: Array, axes: tuple[int, ...]) -> Array:
  """`array` with the class `axes` moved to the end (in their given order) and
  flattened into one: `[..., C]`, C the product of their sizes. A class index
  is then the flat index over those axes (optax's convention)."""
  if axes == (array.ndim - 1,):
    return array
  batch = tuple(a for a in range(array.ndim) if a not in axes)
  moved = jnp.transpose(array, batch + axes)
  return moved.reshape(moved.shape[:len(batch)] + (-1,))


def check_shape(value: Array, expected: tuple, name: str, why: str) -> None:
  if tuple(value.shape) != tuple(expected):
    raise ValueError(
        f"`{name}` must have shape {tuple(expected)} ({why}), got "
        f"{tuple(value.shape)}; broadcasting is not applied.")


def example_mask(where, batch_shape: tuple) -> Array | None:
  """The per-example mask `where` (True = keep), checked against the batch."""
  if where is None:
    return None
  where = boolean_mask(where)
  check_shape(where, batch_shape, "where",
              "one entry per example: the shape of `logits` without its "
              "class axis")
  return where


def boolean_mask(where) -> Array:
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"`where` must be a boolean array, got dtype {where.dtype}.")
  return where


def is_per_element(where, like_ndim: int) -> bool:
  """Whether `where` masks elements (the rank of the input, optax's per-logit
  mask) rather than examples (the rank of the batch)."""
  return where is not None and jnp.ndim(where) == like_ndim


def element_mask(where, shape: tuple, axes: tuple[int, ...]) -> Array:
  """A per-element mask broadcast to `shape` and laid out classes-last, as
  `classes_last` lays out the input it masks."""
  where = boolean_mask(where)
  try:
    where = jnp.broadcast_to(where, shape)
  except ValueError:
    raise ValueError(
        f"`where` of shape {tuple(where.shape)} must broadcast to the input's shape "
        f"{tuple(shape)} (a per-element mask) or have the shape of the input "
        "without its class axis (a per-example mask).") from None
  return classes_last(where, axes)


def class_vector(value, num_classes: int, name: str) -> Array:
  """A `[C]` per-class array (class weights, per-class alpha) in float32+."""
  vector = floating_array(value, name)
  check_shape(vector, (num_classes,), name, "one entry per class")
  return vector


def _invalid_label_summary(labels: np.ndarray, invalid: np.ndarray) -> str:
  bad = labels[invalid]
  positions = np.argwhere(invalid)[:5].tolist()
  values = np.unique(bad)[:10].tolist()
  return (f"{bad.size} label(s) out of range, values {values} at positions "
          f"{positions}{' ...' if bad.size > 5 else ''}")


def label_validity(labels: Array, num_classes: int, where: Array | None,
                   name: str = "labels") -> Array | None:
  """Checks integer labels lie in [0, num_classes).

  Outside a trace, raises ValueError naming the offending values (masked-out
  examples are not checked: that is the ignore-index use case). Inside a trace,
  returns the boolean validity mask (the caller turns invalid examples into
  NaN) and, inside ``label_checks()``, records a checkify check. Returns None
  when all labels are known to be valid.
  """
  if not is_traced(labels) and not is_traced(where):
    labels_np = np.asarray(labels)
    invalid = (labels_np < 0) | (labels_np >= num_classes)
    if where is not None:
      invalid &= np.asarray(where)
    if invalid.any():
      raise ValueError(
          f"`{name}` must be integers in [0, num_classes={num_classes}): "
          f"{_invalid_label_summary(labels_np, invalid)}.")
    return None
  valid = (labels >= 0) & (labels < num_classes)
  record_check(valid, where, labels,
               f"`{name}` must be integers in [0, num_classes={num_classes})")
  return valid


def record_check(valid: Array, where: Array | None, values: Array,
                 message: str) -> None:
  """Inside ``label_checks()``, records a checkify check that `valid` holds
  wherever `where` does, its error naming the first offending of `values`."""
  if not _LABEL_CHECKS.get():
    return
  considered = valid if where is None else valid | ~where
  checkify.check(
      jnp.all(considered), message + "; first offending value: {value}",
      value=jnp.where(considered, 0, values).ravel()[jnp.argmin(considered.ravel())])


def check_count(value, name: str, minimum: int) -> int:
  """A Python or NumPy integer >= `minimum` (0 or 1), as an int; not a bool."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    kind = "non-negative" if minimum == 0 else "positive"
    raise ValueError(f"`{name}` must be a {kind} integer, got {value!r}.")
  return int(value)


def check_nonnegative(value, name: str) -> None:
  if not is_traced(value) and np.any(np.asarray(value) < 0):
    raise ValueError(f"`{name}` must be >= 0, got {value!r}.")


def check_values_in(value, allowed: tuple, name: str) -> None:
  """Outside a trace, ValueError naming `name` and its values not in
  `allowed` (e.g. labels that must be 0 or 1, targets that must be -1 or +1)."""
  if is_traced(value):
    return
  values = np.asarray(value)
  bad = ~np.isin(values, allowed)
  if bad.any():
    choices = " or ".join(f"{a:+g}" if min(allowed) < 0 else f"{a:g}" for a in allowed)
    raise ValueError(f"`{name}` must be {choices}, got values "
                     f"{np.unique(values[bad])[:10].tolist()}.")


def check_in_range(value, name: str, low: float, high: float,
                   low_open: bool = False) -> None:
  if is_traced(value):
    return
  array = np.asarray(value)
  below = array <= low if low_open else array < low
  if np.any(below) or np.any(array > high):
    bracket = "(" if low_open else "["
    raise ValueError(
        f"`{name}` must be in {bracket}{low}, {high}], got {value!r}.")
