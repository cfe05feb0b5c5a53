"""Seeded bootstrap confidence intervals over seeds."""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def _clean(values) -> np.ndarray:
  values = np.asarray(values, np.float64)
  return values[np.isfinite(values)]


def mean_ci(values, *, level: float = 0.95, seed: int = 0) -> dict:
  """Mean and percentile-bootstrap interval of `values` (NaNs dropped)."""
  values = _clean(values)
  if len(values) == 0:
    return {"mean": None, "low": None, "high": None, "n": 0}
  if len(values) == 1:  # one value has no spread to resample
    return {"mean": float(values[0]), "low": None, "high": None, "n": 1}
  rng = np.random.default_rng(seed)
  means = rng.choice(values, size=(RESAMPLES, len(values)), replace=True).mean(axis=1)
  tail = (1 - level) / 2
  return {"mean": float(values.mean()), "low": float(np.quantile(means, tail)),
          "high": float(np.quantile(means, 1 - tail)), "n": int(len(values))}


def difference_ci(a, b, *, level: float = 0.95, seed: int = 0) -> dict:
  """mean(a) - mean(b) with an interval from resampling each group independently."""
  a, b = _clean(a), _clean(b)
  if len(a) == 0 or len(b) == 0:
    return {"mean": None, "low": None, "high": None, "n": 0}
  if len(a) == 1 or len(b) == 1:
    return {"mean": float(a.mean() - b.mean()), "low": None, "high": None, "n": 1}
  rng = np.random.default_rng(seed)
  diffs = (rng.choice(a, size=(RESAMPLES, len(a))).mean(axis=1)
           - rng.choice(b, size=(RESAMPLES, len(b))).mean(axis=1))
  tail = (1 - level) / 2
  return {"mean": float(a.mean() - b.mean()), "low": float(np.quantile(diffs, tail)),
          "high": float(np.quantile(diffs, 1 - tail)), "n": int(min(len(a), len(b)))}


def fraction_ci(successes, *, level: float = 0.95, seed: int = 0) -> dict:
  """Fraction of True in `successes`, with a bootstrap interval."""
  return mean_ci(np.asarray(successes, np.float64), level=level, seed=seed)


def sign(ci: dict) -> int:
  """+1 if the interval lies above 0, -1 if below, 0 if it contains 0 (or is empty)."""
  if ci.get("low") is None:
    return 0
  if ci["low"] > 0:
    return 1
  if ci["high"] < 0:
    return -1
  return 0


def format_ci(ci: dict, fmt: str = "{:.3f}") -> str:
  if ci.get("mean") is None:
    return "n/a"
  if ci.get("low") is None:
    return f"{fmt.format(ci['mean'])} (one seed, no interval)"
  return f"{fmt.format(ci['mean'])} [{fmt.format(ci['low'])}, {fmt.format(ci['high'])}]"
