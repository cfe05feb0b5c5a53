"""Metrics against independent references (scikit-learn where it has one)."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from lossjax import metrics


@pytest.fixture
def predictions(rng):
  logits = rng.normal(scale=2.0, size=(500, 6)).astype(np.float32)
  labels = rng.integers(0, 6, size=500)
  labels[:200] = logits[:200].argmax(-1)  # some signal, so metrics are not trivial
  return logits, labels


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_accuracy_nll_brier_match_sklearn(predictions):
  logits, labels = predictions
  probs = _softmax(logits.astype(np.float64))
  assert np.isclose(metrics.accuracy(logits, labels), skm.accuracy_score(labels, probs.argmax(-1)))
  assert np.isclose(metrics.nll(logits, labels), skm.log_loss(labels, probs, labels=range(6)), rtol=1e-5)
  one_hot = np.eye(6)[labels]
  assert np.isclose(metrics.brier(logits, labels), ((probs - one_hot) ** 2).sum(-1).mean(), rtol=1e-5)


def test_balanced_accuracy_and_recall_match_sklearn(predictions):
  logits, labels = predictions
  predicted = logits.argmax(-1)
  assert np.isclose(metrics.balanced_accuracy(logits, labels, 6),
                    skm.balanced_accuracy_score(labels, predicted))
  np.testing.assert_allclose(metrics.per_class_recall(logits, labels, 6),
                             skm.recall_score(labels, predicted, average=None), rtol=1e-6)


def test_macro_f1_matches_sklearn(predictions):
  logits, labels = predictions
  labels = np.where(labels == 5, 0, labels)  # class 5 absent from the labels, still predicted
  predicted = logits.argmax(-1)
  expected = skm.f1_score(labels, predicted, labels=range(5), average="macro", zero_division=0)
  assert np.isclose(metrics.macro_f1(logits, labels, 6), expected, rtol=1e-6)


def test_ece_matches_a_loop_over_bins(predictions):
  logits, labels = predictions
  probs = _softmax(logits.astype(np.float64))
  confidence, predicted = probs.max(-1), probs.argmax(-1)
  expected = 0.0
  edges = np.linspace(0, 1, 16)
  for low, high in zip(edges[:-1], edges[1:]):
    members = (confidence > low) & (confidence <= high)
    if members.any():
      expected += members.mean() * abs((predicted[members] == labels[members]).mean()
                                       - confidence[members].mean())
  assert np.isclose(metrics.expected_calibration_error(logits, labels), expected, atol=1e-6)


def test_ece_of_a_perfectly_confident_correct_model_is_zero():
  logits = jnp.array([[100.0, 0.0], [0.0, 100.0]])
  assert float(metrics.expected_calibration_error(logits, jnp.array([0, 1]))) == 0.0


def test_auroc_matches_sklearn_with_ties(rng):
  labels = rng.integers(0, 2, size=300)
  scores = np.round(rng.normal(size=300) + labels, 1)  # rounding makes ties
  assert np.isclose(metrics.auroc(scores, labels), skm.roc_auc_score(labels, scores))
  with pytest.raises(ValueError, match="both classes"):
    metrics.auroc(scores, np.zeros(300))


def test_f1_and_best_threshold_match_sklearn(rng):
  labels = (rng.uniform(size=400) < 0.1).astype(int)
  scores = rng.uniform(size=400) * 0.6 + 0.4 * labels
  assert np.isclose(metrics.f1_at_threshold(scores, labels, 0.5),
                    skm.f1_score(labels, scores >= 0.5))
  best = metrics.best_f1_threshold(scores, labels)
  precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  assert np.isclose(metrics.f1_at_threshold(scores, labels, best), f1[:-1].max())


def test_temperature_scaling_recovers_a_known_temperature(rng):
  true_logits = rng.normal(scale=2.0, size=(4000, 5))
  probs = _softmax(true_logits)
  labels = np.array([rng.choice(5, p=p) for p in probs])
  # An overconfident model: logits 3x too large; the fitted T should be ~3.
  temperature = metrics.fit_temperature(3.0 * true_logits, labels)
  assert 2.6 < temperature < 3.4
