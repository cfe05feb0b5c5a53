"""Kullback-Leibler divergences between a predicted and a target distribution.

These take log-probabilities (not logits) and a target distribution over the
same axis, as optax's; they are distribution losses (distillation, VAEs)
rather than label losses, so they are not in the registry.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from lossjax.losses import _prepare

Array = jax.Array


def _distribution_pair(first, second, axis, where, names) -> _prepare.ProbabilityLabelBatch:
  """Both inputs checked, in one compute dtype, the distribution's axes last
  (flattened), with their per-example and per-element masks."""
  return _prepare.probability_label_batch(first, second, axis, where, per_logit=True,
                                          names=(*names, f"the shape of `{names[0]}`"))


def _sum(batch: _prepare.ProbabilityLabelBatch, terms: Array) -> Array:
  return batch.finish(jnp.sum(_prepare.over_kept(batch, terms), axis=-1))


def _x_log_x_over(targets: Array, log_predictions: Array) -> Array:
  """t (log t - log q), with 0 (log 0 - log q) = 0 whatever q (even q = 0)."""
  positive = targets > 0
  log_targets = jnp.log(jnp.where(positive, targets, 1.0))
  return jnp.where(positive, targets * (log_targets - log_predictions), 0.0)


def kl_divergence(log_predictions, targets, axis=-1, where=None) -> Array:
  r"""Kullback-Leibler divergence of the predictions from the targets.

  .. math:: \mathrm{KL}(t \,\|\, q) = \sum_d t_d (\log t_d - \log q_d)

  Same numbers as ``optax.kl_divergence``; a target of 0 adds 0 even where
  the prediction is 0 (optax gives NaN there).

  Args:
    log_predictions: ``[..., D]`` log-probabilities of the predicted
      distribution (e.g. ``jax.nn.log_softmax`` of logits).
    targets: ``[..., D]`` probabilities of the target distribution, same shape.
    axis: the distribution's axis, a tuple of axes, or None for all of them.
    where: optional boolean mask, per element (broadcastable to the inputs:
      masked elements leave the sum) or per example (the shape without the
      distribution's axes: masked examples give 0).

  Returns:
    ``[...]`` divergences, in float32 for low-precision inputs.

  Example:
    >>> import jax, jax.numpy as jnp, lossjax
    >>> q = jax.nn.log_softmax(jnp.array([1.0, 2.0, 3.0]))
    >>> lossjax.kl_divergence(q, jnp.array([0.2, 0.3, 0.5]))
    Array(0.10..., dtype=float32)

  Reference: Kullback & Leibler, "On Information and Sufficiency", 1951.
  """
  batch = _distribution_pair(log_predictions, targets, axis, where,
                             ("log_predictions", "targets"))
  return _sum(batch, _x_log_x_over(batch.labels, batch.logits))


def kl_divergence_with_log_targets(log_predictions, log_targets, axis=-1,
                                   where=None) -> Array:
  r"""Kullback-Leibler divergence with the targets given as log-probabilities.

  .. math:: \sum_d e^{\log t_d} (\log t_d - \log q_d)

  Same numbers as ``optax.kl_divergence_with_log_targets``; a target of
  log-probability -inf adds 0.

  Args:
    log_predictions: ``[..., D]`` log-probabilities of the predictions.
    log_targets: ``[..., D]`` log-probabilities of the targets, same shape.
    axis: the distribution's axis, a tuple of axes, or None for all of them.
    where: optional mask, per element or per example, as ``kl_divergence``.

  Returns:
    ``[...]`` divergences.
  """
  batch = _distribution_pair(log_predictions, log_targets, axis, where,
                             ("log_predictions", "log_targets"))
  log_predictions, log_targets = batch.logits, batch.labels
  possible = log_targets > -jnp.inf
  safe_log_targets = jnp.where(possible, log_targets, 0.0)
  terms = jnp.where(possible, jnp.exp(safe_log_targets) * (safe_log_targets - log_predictions),
                    0.0)
  return _sum(batch, terms)


def generalized_kl_divergence(log_predictions, targets, axis=-1, where=None) -> Array:
  r"""The Kullback-Leibler divergence extended to unnormalised measures.

  .. math:: \sum_d t_d (\log t_d - \log q_d) + q_d - t_d

  The Bregman divergence of ``x log x - x``; equal to ``kl_divergence`` when
  both sum to 1. Same numbers as ``optax.generalized_kl_divergence``.

  Args:
    log_predictions: ``[..., D]`` log of the (possibly unnormalised)
      predictions.
    targets: ``[..., D]`` non-negative targets, same shape.
    axis: the distribution's axis, a tuple of axes, or None for all of them.
    where: optional mask, per element or per example, as ``kl_divergence``.

  Returns:
    ``[...]`` divergences.

  Reference: Boyd & Vandenberghe, "Convex Optimization", 2004, p. 90.
  """
  batch = _distribution_pair(log_predictions, targets, axis, where,
                             ("log_predictions", "targets"))
  log_predictions, targets = batch.logits, batch.labels
  terms = _x_log_x_over(targets, log_predictions) + jnp.exp(log_predictions) - targets
  return _sum(batch, terms)


@functools.wraps(generalized_kl_divergence, assigned=("__module__", "__annotations__"))
def convex_kl_divergence(log_predictions, targets, axis=-1, where=None) -> Array:
  """Deprecated name of ``generalized_kl_divergence`` (as in optax)."""
  warnings.warn("convex_kl_divergence is deprecated: use generalized_kl_divergence.",
                DeprecationWarning, stacklevel=2)
  return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)
