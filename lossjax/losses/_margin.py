"""Hinge (margin) losses, binary and multiclass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks, _softmax
from lossjax.losses import _binary, _prepare

Array = jax.Array


def hinge_loss(predictor_outputs, targets) -> Array:
  r"""Binary hinge loss, elementwise: ``max(0, 1 - y f)`` with ``y in {-1, 1}``.

  Same numbers as ``optax.hinge_loss``.

  Args:
    predictor_outputs: ``[...]`` scores.
    targets: ``[...]`` targets in ``{-1, +1}``, same shape.

  Returns:
    ``[...]`` elementwise losses.
  """
  outputs, targets = _signed_targets(predictor_outputs, targets)
  margin = 1.0 - outputs * targets
  return _binary.keeping_nan(jnp.maximum(0.0, margin), margin)


def _crammer_singer_margin(batch) -> Array:
  """max_c (z_c + 1 - [c = y]) - z_y = max(0, 1 + max_{c != y} z_c - z_y): the
  worst margin violation, >= 0. The largest rival logit is taken over the
  stored logits (exact in any dtype; see `_softmax.rival_max` for how it
  avoids writing a select of the logits out)."""
  rival, true_logit = _prepare.margin_statistics(batch, rival=True)
  margin = rival + 1.0 - true_logit
  return _binary.keeping_nan(jnp.maximum(margin, 0.0), margin)


def multiclass_hinge_loss(scores, labels, *, axis: int = -1,
                          where=None) -> Array:
  r"""Multiclass (Crammer-Singer) hinge loss.

  .. math:: \ell_i = \max_c (z_{ic} + 1 - [c = y_i]) - z_{i,y_i}

  Same numbers as ``optax.multiclass_hinge_loss``.

  Args:
    scores: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses, ``>= 0``.

  Reference: Crammer & Singer, "On the Algorithmic Implementation of
  Multiclass Kernel-based Vector Machines", JMLR 2001.
  """
  batch = _prepare.integer_label_batch(scores, labels, axis, where)
  return batch.finish(
      _crammer_singer_margin(batch))


def multiclass_squared_hinge_loss(scores, labels, *, axis: int = -1,
                                  where=None) -> Array:
  r"""Squared multiclass hinge loss: the Crammer-Singer hinge, squared.

  .. math:: \ell_i = \big(\max_c (z_{ic} + 1 - [c = y_i]) - z_{i,y_i}\big)^2

  Differentiable everywhere the max is unique, unlike the plain hinge.

  Args:
    scores: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses, ``>= 0``.
  """
  batch = _prepare.integer_label_batch(scores, labels, axis, where)
  return batch.finish(jnp.square(
      _crammer_singer_margin(batch)))


def _signed_targets(predictor_outputs, targets, name: str = "targets"):
  """Outputs and ±1 targets of the same shape, in the compute dtype."""
  outputs = _checks.floating_array(predictor_outputs, "predictor_outputs")
  targets = jnp.asarray(targets)
  _checks.check_shape(targets, outputs.shape, name, "the shape of `predictor_outputs`")
  _checks.check_values_in(targets, (-1, 1), name)
  dtype = _checks.compute_dtype(outputs.dtype)
  return outputs.astype(dtype), targets.astype(dtype)


def perceptron_loss(predictor_outputs, targets) -> Array:
  r"""Binary perceptron loss, elementwise: ``max(0, -y f)`` with ``y in {-1, 1}``.

  Same numbers as ``optax.perceptron_loss``: zero once the sign is right,
  with no margin (the hinge loss asks for a margin of 1).

  Args:
    predictor_outputs: ``[...]`` scores.
    targets: ``[...]`` targets in ``{-1, +1}``, same shape.

  Returns:
    ``[...]`` elementwise losses.

  Reference: Rosenblatt, "The Perceptron", 1958.
  """
  outputs, targets = _signed_targets(predictor_outputs, targets)
  margin = -outputs * targets
  return _binary.keeping_nan(jnp.maximum(0.0, margin), margin)


def multiclass_perceptron_loss(scores, labels, *, axis: int = -1,
                               where=None) -> Array:
  r"""Multiclass perceptron loss: how far the best score is above the true one.

  .. math:: \ell_i = \max_c z_{ic} - z_{i,y_i}

  Same numbers as ``optax.multiclass_perceptron_loss``.

  Args:
    scores: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses, ``>= 0``.

  Reference: Collins, "Discriminative Training Methods for Hidden Markov
  Models", EMNLP 2002.
  """
  batch = _prepare.integer_label_batch(scores, labels, axis, where)
  top, true_logit = _prepare.margin_statistics(batch)
  return batch.finish(top - true_logit)
