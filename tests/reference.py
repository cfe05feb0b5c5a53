"""Independent float64 NumPy references for every registered loss.

Written from the formulas in the papers, not by calling lossjax.
"""

import numpy as np


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  shifted = z - z.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _one_hot(labels, num_classes):
  return np.eye(num_classes)[labels]


def _true(values, labels):
  return np.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def cross_entropy(z, y, class_weights=None, label_smoothing=0.0):
  num_classes = z.shape[-1]
  target = (1 - label_smoothing) * _one_hot(y, num_classes) + label_smoothing / num_classes
  weights = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, np.float64)
  return -(weights * target * _log_softmax(z)).sum(-1)


def focal(z, y, gamma=2.0, alpha=None):
  p_true = np.exp(_true(_log_softmax(z), y))
  loss = -((1 - p_true) ** gamma) * np.log(p_true)
  if alpha is not None:
    loss = loss * np.broadcast_to(np.asarray(alpha, np.float64), (z.shape[-1],))[y]
  return loss


def poly1(z, y, epsilon=2.0):
  p_true = np.exp(_true(_log_softmax(z), y))
  return -np.log(p_true) + epsilon * (1 - p_true)


def gce(z, y, q=0.7):
  p_true = np.exp(_true(_log_softmax(z), y))
  return (1 - p_true ** q) / q


def mse(z, y, k=1.0, m=1.0):
  z = np.asarray(z, np.float64)
  num_classes = z.shape[-1]
  is_true = _one_hot(y, num_classes).astype(bool)
  others = np.where(is_true, 0.0, z ** 2).sum(-1)
  return (k * (_true(z, y) - m) ** 2 + others) / num_classes


def brier(z, y):
  return ((np.exp(_log_softmax(z)) - _one_hot(y, z.shape[-1])) ** 2).sum(-1)


def mae(z, y):
  return np.abs(np.exp(_log_softmax(z)) - _one_hot(y, z.shape[-1])).sum(-1)


def hinge(z, y):
  z = np.asarray(z, np.float64)
  margins = z - _true(z, y)[:, None] + 1.0
  margins[np.arange(len(y)), y] = 0.0
  return margins.max(-1)


def squared_hinge(z, y):
  return hinge(z, y) ** 2


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def binary_cross_entropy(z, y, pos_weight=1.0):
  p = _sigmoid(z)
  return -(pos_weight * y * np.log(p) + (1 - y) * np.log1p(-p))


def binary_focal(z, y, gamma=2.0, alpha=0.25):
  p = _sigmoid(z)
  p_true = np.where(y == 1, p, 1 - p)
  alpha_t = np.where(y == 1, alpha, 1 - alpha)
  return -alpha_t * (1 - p_true) ** gamma * np.log(p_true)


def binary_mse(z, y):
  return (_sigmoid(z) - y) ** 2


def perceptron(z, y):
  z = np.asarray(z, np.float64)
  return z.max(-1) - _true(z, y)


def sparsemax_probabilities(z):
  """The simplex projection by sorting (Held et al. 1974), not lossjax's
  fixed-point iteration."""
  z = np.asarray(z, np.float64)
  ordered = -np.sort(-z, axis=-1)
  ranks = np.arange(1, z.shape[-1] + 1)
  cumulative = np.cumsum(ordered, axis=-1)
  in_support = 1 + ranks * ordered > cumulative
  size = in_support.sum(-1, keepdims=True)
  tau = (np.take_along_axis(cumulative, size - 1, axis=-1) - 1) / size
  return np.maximum(z - tau, 0.0)


def sparsemax(z, y):
  # The Fenchel-Young loss of the Gini entropy: Omega*(z) - z_y + Omega(e_y),
  # Omega*(z) = <p, z> - |p|^2 / 2 at p = sparsemax(z), Omega(e_y) = 1/2.
  z = np.asarray(z, np.float64)
  p = sparsemax_probabilities(z)
  return (p * z).sum(-1) - 0.5 * (p ** 2).sum(-1) - _true(z, y) + 0.5


def binary_sparsemax(z, y):
  # The multiclass loss on the scores (0, z) with class 1 the positive one.
  z = np.asarray(z, np.float64)
  return sparsemax(np.stack([np.zeros_like(z), z], axis=-1), np.asarray(y).astype(int))


REFERENCES = {
    "cross_entropy": cross_entropy,
    "label_smoothing": lambda z, y, **kw: cross_entropy(z, y, **kw),
    "focal": focal,
    "poly1": poly1,
    "gce": gce,
    "mse": mse,
    "mse_rescaled": mse,
    "brier": brier,
    "mae": mae,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_focal": binary_focal,
    "binary_mse": binary_mse,
    "perceptron": perceptron,
    "sparsemax": sparsemax,
    "binary_sparsemax": binary_sparsemax,
}
