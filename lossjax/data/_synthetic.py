"""Seeded synthetic tasks: many-class blobs, spirals, XOR, rare positives."""

from __future__ import annotations

import numpy as np

from lossjax.data._dataset import Dataset, split


def blobs(*, num_classes: int = 10, num_examples: int = 5000, dim: int = 32,
          spread: float = 1.0, seed: int = 0) -> Dataset:
  """Gaussian blobs, one per class, centres on a sphere of radius 3."""
  if not 2 <= num_classes <= 100_000:
    raise ValueError(f"`num_classes` must be in [2, 100000], got {num_classes}.")
  if num_examples < 3 * num_classes:
    raise ValueError(f"`num_examples` ({num_examples}) must be at least 3 per class "
                     f"({3 * num_classes}) for a train/val/test split.")
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  centres *= 3.0 / np.linalg.norm(centres, axis=1, keepdims=True)
  y = np.arange(num_examples) % num_classes
  x = centres[y] + spread * rng.normal(size=(num_examples, dim))
  return split(f"blobs{num_classes}", x.astype(np.float32), y.astype(np.int32),
               num_classes, seed=seed)


def spirals(*, num_examples: int = 2000, noise: float = 0.1, turns: float = 1.5,
            seed: int = 0) -> Dataset:
  """Two interleaved spirals in 2-D: hard for shallow or saturating nets."""
  rng = np.random.default_rng(seed)
  half = num_examples // 2
  t = np.sqrt(rng.uniform(size=half)) * turns * 2 * np.pi
  arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (turns * 2 * np.pi)
  x = np.concatenate([arm, -arm]) + noise * rng.normal(size=(2 * half, 2))
  y = np.concatenate([np.zeros(half), np.ones(half)]).astype(np.int32)
  return split("spirals", x.astype(np.float32), y, 2, seed=seed)


def xor(*, num_examples: int = 2000, noise: float = 0.15, seed: int = 0) -> Dataset:
  """Four Gaussian clusters labelled by XOR of their quadrant signs."""
  rng = np.random.default_rng(seed)
  corners = rng.integers(0, 2, size=(num_examples, 2))
  x = (2.0 * corners - 1.0) + noise * rng.normal(size=(num_examples, 2))
  y = (corners[:, 0] ^ corners[:, 1]).astype(np.int32)
  return split("xor", x.astype(np.float32), y, 2, seed=seed)


def rare_positive(*, num_examples: int = 10000, positive_rate: float = 0.02,
                  dim: int = 16, separation: float = 2.0, seed: int = 0) -> Dataset:
  """Binary task with 1-5% positives, overlapping classes (threshold matters)."""
  if not 0.0 < positive_rate < 0.5:
    raise ValueError(f"`positive_rate` must be in (0, 0.5), got {positive_rate}.")
  rng = np.random.default_rng(seed)
  y = (rng.uniform(size=num_examples) < positive_rate).astype(np.int32)
  direction = rng.normal(size=dim)
  direction /= np.linalg.norm(direction)
  x = rng.normal(size=(num_examples, dim)) + separation * y[:, None] * direction
  return split("rare_positive", x.astype(np.float32), y, 2, seed=seed)
