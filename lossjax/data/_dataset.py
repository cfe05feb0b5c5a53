"""The Dataset container and the split helper every loader uses."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train / validation / test arrays and what a model needs to know of them.

  Inputs are float32 (images in [0, 1], tabular data standardised on the
  training split), labels int32 in [0, num_classes).
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  def class_counts(self) -> np.ndarray:
    return np.bincount(self.y_train, minlength=self.num_classes)

  def replace(self, **changes) -> "Dataset":
    return dataclasses.replace(self, **changes)

  def summary(self) -> str:
    return (f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} val / "
            f"{len(self.y_test)} test, {self.num_classes} classes, "
            f"inputs {self.input_shape}")


def split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
          seed: int, fractions=(0.6, 0.2, 0.2)) -> Dataset:
  """A seeded, stratified train/validation/test split."""
  rng = np.random.default_rng(seed)
  parts = ([], [], [])
  for label in range(num_classes):
    members = rng.permutation(np.flatnonzero(y == label))
    cut_train = int(round(fractions[0] * len(members)))
    cut_val = cut_train + int(round(fractions[1] * len(members)))
    for part, chunk in zip(parts, np.split(members, [cut_train, cut_val])):
      part.append(chunk)
  train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
  return Dataset(name, x[train], y[train], x[val], y[val], x[test], y[test],
                 num_classes)


def standardize(dataset: Dataset) -> Dataset:
  """Scales every feature by the training split's mean and deviation."""
  mean = dataset.x_train.mean(axis=0)
  std = dataset.x_train.std(axis=0) + 1e-6
  scale = lambda x: ((x - mean) / std).astype(np.float32)
  return dataset.replace(x_train=scale(dataset.x_train), x_val=scale(dataset.x_val),
                         x_test=scale(dataset.x_test))
