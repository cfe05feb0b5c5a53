"""Dataset transforms: long-tailed subsampling and symmetric label noise."""

from __future__ import annotations

import numpy as np

from lossjax.data._dataset import Dataset


def long_tail_counts(max_count: int, num_classes: int, imbalance: float) -> np.ndarray:
  """n_c = n_max * IF^(-c / (C - 1)), the Cui et al. 2019 profile."""
  exponents = np.arange(num_classes) / max(num_classes - 1, 1)
  return np.maximum(1, np.floor(max_count * imbalance ** -exponents)).astype(int)


def _subsample(x, y, counts, rng):
  keep = [rng.permutation(np.flatnonzero(y == c))[:n] for c, n in enumerate(counts)]
  keep = rng.permutation(np.concatenate(keep))
  return x[keep], y[keep]


def long_tail(dataset: Dataset, imbalance: float, *, seed: int = 0) -> Dataset:
  """Subsamples train and validation to a long tail; the test split stays balanced.

  Class 0 keeps n_max (the smallest class count, so every class can supply
  its share); class C-1 keeps n_max / `imbalance`.
  """
  if imbalance < 1:
    raise ValueError(f"`imbalance` must be >= 1, got {imbalance}.")
  rng = np.random.default_rng(seed)
  train_counts = long_tail_counts(dataset.class_counts().min(), dataset.num_classes, imbalance)
  val_max = np.bincount(dataset.y_val, minlength=dataset.num_classes).min()
  val_counts = long_tail_counts(val_max, dataset.num_classes, imbalance)
  x_train, y_train = _subsample(dataset.x_train, dataset.y_train, train_counts, rng)
  x_val, y_val = _subsample(dataset.x_val, dataset.y_val, val_counts, rng)
  return dataset.replace(name=f"{dataset.name}-lt{imbalance:g}", x_train=x_train,
                         y_train=y_train, x_val=x_val, y_val=y_val)


def label_noise(dataset: Dataset, rate: float, *, seed: int = 0) -> Dataset:
  """Symmetric noise on the training labels: with probability `rate` a label
  is replaced by a different class drawn uniformly. Validation and test stay clean."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"`rate` must be in [0, 1), got {rate}.")
  rng = np.random.default_rng(seed)
  y = dataset.y_train.copy()
  flip = rng.uniform(size=y.shape) < rate
  offsets = rng.integers(1, dataset.num_classes, size=y.shape)
  y[flip] = (y[flip] + offsets[flip]) % dataset.num_classes
  return dataset.replace(name=f"{dataset.name}-noise{rate:g}", y_train=y.astype(np.int32))
