"""Every multiclass loss of the registry as a function of per-row statistics.

A ``RowLoss`` names the statistics it needs (``_statistics``), the per-class
parameters its blocks see, and ``finish(stats) -> [n]``: the per-example loss
from the statistics over all classes. Each form gives the numbers of the
registry function it stands for (tested against it for every registry name).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _softmax
from lossjax.losses import _cross_entropy
from lossjax.losses import _margin
from lossjax.losses import _squared

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RowLoss:
  statistics: tuple[str, ...]
  finish: Callable[[dict], Array]  # statistics over all classes -> [n] losses
  columns: dict = dataclasses.field(default_factory=dict)  # name -> [V] parameters


def log_normalizer(stats: dict) -> Array:
  # logsumexp(z) = m + log sum_c exp(z_c - m), m the row maximum.
  return stats["zmax"] + jnp.log(stats["sumexp"])


def true_class_log_prob(stats: dict) -> Array:
  return stats["label"] - log_normalizer(stats)


def _cross_entropy_form(num_classes, *, class_weights=None, label_smoothing=0.0) -> RowLoss:
  _checks.check_in_range(label_smoothing, "label_smoothing", 0.0, 1.0)
  smoothing = not _checks.is_static_zero(label_smoothing)
  names = ["zmax", "sumexp", "label"]
  if class_weights is not None:
    names.append("label_weight")
  if smoothing:
    names.append("gap")

  def finish(stats):
    loss = log_normalizer(stats) - stats["label"]
    if class_weights is not None:
      loss = loss * stats["label_weight"]
    if smoothing:
      # sum_c w_c (lse - z_c) = sum_c w_c log sum exp(z - m) + sum_c w_c (m - z_c).
      uniform = stats["wsum"] * jnp.log(stats["sumexp"]) + stats["gap"]
      loss = (1.0 - label_smoothing) * loss + (label_smoothing / num_classes) * uniform
    return loss

  columns = {} if class_weights is None else {"class_weights": class_weights}
  return RowLoss(tuple(names), finish, columns)


def _focal_form(num_classes, *, gamma=2.0, alpha=None) -> RowLoss:
  _checks.check_nonnegative(gamma, "gamma")
  per_class = alpha is not None and jnp.ndim(alpha) > 0
  names = ("zmax", "sumexp", "label") + (("label_alpha",) if per_class else ())

  def finish(stats):
    log_prob = true_class_log_prob(stats)
    loss = -_softmax.safe_power(_softmax.one_minus_prob(log_prob), gamma) * log_prob
    if per_class:
      return loss * stats["label_alpha"]
    return loss if alpha is None else loss * alpha

  return RowLoss(names, finish, {"alpha": alpha} if per_class else {})


def _true_class_form(of_log_prob: Callable[[Array], Array]) -> RowLoss:
  """A loss that depends on the true class's log-probability alone."""
  return RowLoss(("zmax", "sumexp", "label"),
                 lambda stats: of_log_prob(true_class_log_prob(stats)))


def _poly1_form(num_classes, *, epsilon=2.0) -> RowLoss:
  return _true_class_form(lambda lp: -lp + epsilon * _softmax.one_minus_prob(lp))


def _gce_form(num_classes, *, q=0.7) -> RowLoss:
  _checks.check_in_range(q, "q", 0.0, 1.0, low_open=True)
  # 1 - p^q = -expm1(q log p), as the registry's function.
  return _true_class_form(lambda lp: -jnp.expm1(q * lp) / q)


def _mae_form(num_classes) -> RowLoss:
  return _true_class_form(lambda lp: 2.0 * _softmax.one_minus_prob(lp))


def _brier_form(num_classes) -> RowLoss:
  def finish(stats):
    # sum_c (p_c - onehot_c)^2 = (1 - p_y)^2 + sum_{c != y} p_c^2, the second
    # sum accumulated without the true class so that nothing cancels.
    one_minus = _softmax.one_minus_prob(true_class_log_prob(stats))
    return jnp.square(one_minus) + stats["sumexp2_other"] / jnp.square(stats["sumexp"])
  return RowLoss(("zmax", "sumexp", "sumexp2_other", "label"), finish)


def _mse_form(num_classes, *, k=1.0, m=1.0) -> RowLoss:
  def finish(stats):
    return (k * jnp.square(stats["label"] - m) + stats["sumsq_other"]) / num_classes
  return RowLoss(("label", "sumsq_other"), finish)


def _hinge_form(num_classes) -> RowLoss:
  return RowLoss(("margin", "label"), lambda stats: stats["margin"] - stats["label"])


def _squared_hinge_form(num_classes) -> RowLoss:
  return RowLoss(("margin", "label"),
                 lambda stats: jnp.square(stats["margin"] - stats["label"]))


def _perceptron_form(num_classes) -> RowLoss:
  return RowLoss(("top", "label"), lambda stats: stats["top"] - stats["label"])


# The registry's functions, by identity, and their row forms.
FORMS: dict[Callable, Callable[..., RowLoss]] = {
    _cross_entropy.softmax_cross_entropy_with_integer_labels: _cross_entropy_form,
    _cross_entropy.softmax_focal_loss: _focal_form,
    _cross_entropy.poly_loss_cross_entropy: _poly1_form,
    _cross_entropy.generalized_cross_entropy: _gce_form,
    _squared.mean_absolute_error_probs: _mae_form,
    _squared.brier_loss: _brier_form,
    _squared.mean_squared_error_logits: _mse_form,
    _margin.multiclass_hinge_loss: _hinge_form,
    _margin.multiclass_squared_hinge_loss: _squared_hinge_form,
    _margin.multiclass_perceptron_loss: _perceptron_form,
}
