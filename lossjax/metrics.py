"""Evaluation metrics.

The ones computed inside the compiled training program (accuracy, NLL, Brier,
ECE, balanced accuracy, per-class recall) are pure ``jnp`` functions of
``logits [N, C]`` and ``labels [N]``; the post-hoc ones on scores (AUROC, F1,
thresholds, temperature scaling) are NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lossjax import _softmax

Array = jax.Array


def accuracy(logits, labels) -> Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def nll(logits, labels) -> Array:
  """Mean negative log-likelihood of the softmax of `logits`."""
  logits = logits.astype(jnp.float32)
  return -jnp.mean(_softmax.true_class_log_prob(logits, labels))


def brier(logits, labels) -> Array:
  """Mean Brier score, sum_c (p_c - onehot_c)^2, of the softmax of `logits`."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
  return jnp.mean(jnp.sum(jnp.square(probs - one_hot), axis=-1))


def confidence_bins(confidence, num_bins: int) -> Array:
  """The equal-width bin of each confidence: bins are (k/n, (k+1)/n], and a
  confidence of 1.0 belongs to the last one."""
  return jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)


def expected_calibration_error(logits, labels, num_bins: int = 15) -> Array:
  r"""ECE with `num_bins` equal-width confidence bins (Guo et al. 2017).

  .. math::
    \mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,
    \left|\mathrm{accuracy}(B_b) - \mathrm{mean\ confidence}(B_b)\right|

  where the confidence of an example is its top softmax probability.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  confidence = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(jnp.float32)
  return calibration_error(confidence, correct, num_bins)


def calibration_error(confidence, correct, num_bins: int = 15) -> Array:
  """ECE from each example's top probability `[N]` and whether its top class
  is right (`[N]`, 0 or 1): ``expected_calibration_error`` without logits."""
  in_bin = confidence_bins(confidence, num_bins)[:, None] == jnp.arange(num_bins)[None, :]
  # A masked sum, not a scatter-add (segment_sum): on a GPU the scatter's
  # float additions come in a varying order, so the same run gave ECEs
  # differing in the 8th digit.
  gap = jnp.sum(jnp.where(in_bin, (correct - confidence)[:, None], 0.0), axis=0)
  return jnp.sum(jnp.abs(gap)) / correct.shape[0]


def per_class_recall(logits, labels, num_classes: int) -> Array:
  """Recall of each class; NaN for a class absent from `labels`."""
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return recall_by_class(correct, labels, num_classes)


def recall_by_class(correct, labels, num_classes: int) -> Array:
  """``per_class_recall`` from whether each example's top class is right."""
  hits = jax.ops.segment_sum(correct, labels, num_segments=num_classes)
  counts = jax.ops.segment_sum(jnp.ones_like(correct), labels, num_segments=num_classes)
  return jnp.where(counts > 0, hits / jnp.maximum(counts, 1.0), jnp.nan)


def balanced_accuracy(logits, labels, num_classes: int) -> Array:
  """Mean per-class recall over the classes present (sklearn's definition)."""
  return jnp.nanmean(per_class_recall(logits, labels, num_classes))


def macro_f1(logits, labels, num_classes: int) -> Array:
  """Mean over the classes present in `labels` of each class's F1 (the
  harmonic mean of its precision and recall, 0 when it is never predicted
  right); sklearn's ``f1_score(average="macro")`` over those classes."""
  predicted = jnp.argmax(logits, axis=-1)
  ones = jnp.ones(labels.shape, jnp.float32)
  hits = jax.ops.segment_sum((predicted == labels).astype(jnp.float32), labels,
                             num_segments=num_classes)
  actual = jax.ops.segment_sum(ones, labels, num_segments=num_classes)
  guessed = jax.ops.segment_sum(ones, predicted, num_segments=num_classes)
  f1 = 2 * hits / jnp.maximum(actual + guessed, 1.0)
  present = (actual > 0).astype(jnp.float32)
  return jnp.sum(present * f1) / jnp.sum(present)


# Post-hoc metrics on scores (NumPy).

def auroc(scores, labels) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative),
  ties counted half (the Mann-Whitney statistic)."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels).astype(bool)
  positives, negatives = labels.sum(), (~labels).sum()
  if positives == 0 or negatives == 0:
    raise ValueError("`labels` must contain both classes to compute AUROC.")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  average = first + (counts + 1) / 2.0
  ranks[order] = np.repeat(average, counts)
  return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def f1_at_threshold(scores, labels, threshold: float) -> float:
  """F1 of the positive class when predicting positive for score >= threshold."""
  predicted = np.asarray(scores) >= threshold
  labels = np.asarray(labels).astype(bool)
  true_positives = np.sum(predicted & labels)
  denominator = predicted.sum() + labels.sum()
  return float(2 * true_positives / denominator) if denominator else 0.0


def best_f1_threshold(scores, labels) -> float:
  """The threshold (among the scores) that maximises F1 on these data."""
  candidates = np.unique(np.asarray(scores))
  f1s = [f1_at_threshold(scores, labels, t) for t in candidates]
  return float(candidates[int(np.argmax(f1s))])


def fit_temperature(logits, labels, *, low: float = 0.05, high: float = 20.0) -> float:
  """Temperature T minimising the NLL of softmax(logits / T) (Guo et al. 2017).

  A coarse log-spaced grid, then a finer one around the best point: the NLL
  is unimodal in log T, and this needs no optimiser state or tuning.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)

  def nll_at(temperatures):
    scaled = logits[None] / temperatures[:, None, None]
    scaled = scaled - scaled.max(-1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(-1))
    true = np.take_along_axis(scaled, labels[None, :, None], -1)[..., 0]
    return (log_norm - true).mean(-1)

  grid = np.geomspace(low, high, 60)
  best = grid[np.argmin(nll_at(grid))]
  fine = np.geomspace(best / 1.15, best * 1.15, 60)
  return float(fine[np.argmin(nll_at(fine))])
