"""The tuning protocol every experiment of the study uses.

A *run* is one trained model, a dict: ``setting``, ``replicate``, ``loss``
(the variant's label), ``key`` (its hyper-parameters besides the rate, e.g.
``"beta=0.99"``, ``""`` when none), ``learning_rate``, ``seed``, ``phase``
(``"tune"`` for the grid, ``"fresh"`` for seeds trained at the chosen rate
only), ``diverged`` and ``metrics`` (name -> final value, None when not
finite). A *cell* is the runs of one variant at one (key, rate).

1. **Grid.** Rates are powers of 10 in half-decade steps (`rate_grid`),
   spanning three decades by default.
2. **Edge extension.** When a variant's best validation rate is an end of
   its grid, `tune` trains the next decade beyond it (two half-decades, new
   runs only) until the best is interior or the new rates diverge.
   `position` marks the choice ``interior``, ``edge`` (a stability edge: the
   next rate up diverged) or ``grid end`` (extensions ran out; it should
   not happen and the report shows it when it does).
3. **Selection inside the intervals.** `nested_bootstrap` resamples the
   seeds of every cell independently, redoes the validation argmax in every
   replicate and reads the test statistic at the re-chosen cell, so the
   noise of the choice is inside each interval; `compare` turns two
   variants' replicates into a difference, its interval, P(A better than B)
   and a two-sided bootstrap p-value. Where a claim needs many seeds at one
   rate (failure rates), the rate is tuned on some seeds and measured on
   fresh ones instead (`phase="fresh"`), which keeps the choice's noise out
   of the measurement.
4. **Multiplicity.** `holm` adjusts the p-values of the settings that make
   up one claim's verdict (Holm 1979).
5. **Stability.** Every verdict is computed on two independent replicates
   (fresh initial seeds, another batch order and another data split) and
   is ``firm`` when both agree (`stability`).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Callable, Iterable

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
ALPHA = 0.05
INTERIOR, EDGE, GRID_END = "interior", "edge", "grid end"
FIRM, UNSTABLE = "firm", "unstable"


def half_decades(rate: float) -> int:
  """The exponent k of a grid rate 10**(k/2)."""
  if not rate > 0:
    raise ValueError(f"a learning rate must be > 0, got {rate}.")
  return round(2 * math.log10(rate))


def rate_of(k: int) -> float:
  """10**(k/2), rounded to 4 significant digits (0.0316, 0.1, 0.316, 1, ...)."""
  return float(f"{10 ** (k / 2):.4g}")


def rate_grid(low: float = 10**-2.5, high: float = 10**0.5) -> tuple[float, ...]:
  """Rates in half-decade steps from `low` to `high` (both rounded to the
  nearest half-decade); the default spans three decades, 0.00316 to 3.16."""
  first, last = half_decades(low), half_decades(high)
  if last < first:
    raise ValueError(f"`high` ({high}) must be >= `low` ({low}).")
  return tuple(rate_of(k) for k in range(first, last + 1))


# Runs and cells.

def select_runs(runs: Iterable[dict], **fields) -> list[dict]:
  """The runs whose fields equal `fields` (e.g. setting=..., loss=...)."""
  return [r for r in runs if all(r.get(name) == value for name, value in fields.items())]


def cell_key(run: dict) -> tuple[str, float]:
  return run.get("key", ""), run["learning_rate"]


def cells(runs: Iterable[dict]) -> dict[tuple[str, float], list[dict]]:
  """Runs grouped by (key, learning rate), in the order first seen."""
  grouped: dict[tuple[str, float], list[dict]] = defaultdict(list)
  for run in runs:
    grouped[cell_key(run)].append(run)
  return dict(grouped)


def _value(run: dict, metric: str) -> float:
  value = run["metrics"].get(metric)
  return np.nan if value is None else float(value)


def _cell_arrays(cell: list[dict], select: str, metric: str):
  """(selection values with diverged runs as NaN, metric values)."""
  diverged = np.array([bool(r["diverged"]) for r in cell])
  chosen_by = np.array([_value(r, select) for r in cell])
  measured = np.array([_value(r, metric) for r in cell])
  return np.where(diverged, np.nan, chosen_by), measured


# Scores within this of the best tie, and a tie goes to the smaller rate.
# Accuracies are counts over a split, so two rates with the same counts tie;
# their means, from float32 measurements summed in another order, can differ
# by ~1e-7, and a choice must not hang on that. Real differences of mean
# accuracies are at least 1 / (seeds x examples), above 1e-6 for any split here.
TIE_TOLERANCE = 1e-6


def cell_score(cell: list[dict], select: str, higher_is_better: bool = True) -> float:
  """The mean selection metric of a cell, oriented so that larger is better;
  -inf when any of its runs diverged or is not finite (a rate that diverges
  one time in five is not a usable rate)."""
  values, _ = _cell_arrays(cell, select, select)
  if not len(values) or not np.all(np.isfinite(values)):
    return -math.inf
  return float(values.mean() if higher_is_better else -values.mean())


def choose(runs: Iterable[dict], select: str, higher_is_better: bool = True) -> tuple[str, float]:
  """The (key, rate) cell with the best mean validation `select`; ties go to
  the smaller rate (and the key first seen)."""
  grouped = cells(r for r in runs if r.get("phase", "tune") == "tune")
  if not grouped:
    raise ValueError("no tuning runs to choose from.")
  scores = {k: cell_score(cell, select, higher_is_better) for k, cell in grouped.items()}
  best = max(scores.values())
  tied = [k for k, score in scores.items() if score >= best - TIE_TOLERANCE]
  return min(tied, key=lambda k: k[1])  # the smaller rate (then the key first seen)


def diverged_cell(cell: list[dict]) -> bool:
  return any(bool(r["diverged"]) for r in cell)


def position(runs: Iterable[dict], chosen: tuple[str, float]) -> str:
  """Where the chosen rate sits in its key's grid: ``interior``, ``edge``
  (the next rate up diverged: the largest stable rate) or ``grid end``."""
  key, rate = chosen
  grid = cells(r for r in runs if r.get("key", "") == key and r.get("phase", "tune") == "tune")
  rates = sorted(r for _, r in grid)
  index = rates.index(rate)
  if index + 1 < len(rates) and diverged_cell(grid[key, rates[index + 1]]):
    return EDGE
  if 0 < index < len(rates) - 1:
    return INTERIOR
  return GRID_END


def tune(train_rates: Callable[[tuple[float, ...]], list[dict]], rates: Iterable[float], *,
         select: str, higher_is_better: bool = True, max_extensions: int = 3,
         key: str = "") -> list[dict]:
  """Trains `rates`, then extends the grid by a decade (two half-decades)
  past whichever end holds the best validation `select`, until the best is
  interior, the rates beyond it diverge, or `max_extensions` are spent.

  `train_rates(rates)` trains every seed at each of `rates` and returns
  their runs; the grid is `key`'s (others that come with them, such as
  post-hoc variants of the same runs, do not steer it). Returns all the
  runs trained.
  """
  rates = tuple(sorted(rates))
  if len(rates) < 3:
    raise ValueError(f"a tuning grid needs at least 3 rates to have an interior, got {rates}.")
  runs = list(train_rates(rates))
  for _ in range(max_extensions):
    own = [r for r in runs if r.get("key", "") == key]
    chosen = choose(own, select, higher_is_better)
    trained = sorted({r["learning_rate"] for r in own})
    if position(own, chosen) != GRID_END:
      break
    step = -1 if chosen[1] == trained[0] else 1
    end = half_decades(trained[0] if step < 0 else trained[-1])
    runs += train_rates(tuple(sorted(rate_of(end + step * i) for i in (1, 2))))
  return runs


# Selection-aware statistics.

def _statistic(values: np.ndarray, statistic: str) -> np.ndarray:
  """Mean or median over the last axis, NaN-aware (an all-NaN slice, e.g. a
  cell whose runs all diverged, gives NaN without a warning)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmedian(values, axis=-1) if statistic == "median" else np.nanmean(values, axis=-1)


def nested_bootstrap(runs: list[dict], *, select: str, metric: str,
                     higher_is_better: bool = True, statistic: str = "mean",
                     resamples: int = RESAMPLES, seed: int = 0) -> dict:
  """The `statistic` of `metric` at the validation-chosen cell, with the
  choice redone in every replicate.

  Tuning runs choose; if the variant has fresh runs (trained at the chosen
  rate only), the statistic is theirs and they alone are resampled.
  Returns ``{"estimate", "replicates" [R], "chosen": (key, rate),
  "position", "choices": {"key@rate": fraction of replicates}}``.
  """
  tuning = [r for r in runs if r.get("phase", "tune") == "tune"]
  chosen = choose(tuning, select, higher_is_better)
  rng = np.random.default_rng(seed)
  fresh = [r for r in runs if r.get("phase") == "fresh"]
  if fresh:
    measured = np.array([_value(r, metric) for r in fresh])
    draws = rng.integers(0, len(measured), (resamples, len(measured)))
    return {"estimate": float(_statistic(measured, statistic)),
            "replicates": _statistic(measured[draws], statistic), "chosen": chosen,
            "position": position(tuning, chosen), "choices": {_label(chosen): 1.0},
            "n": len(measured)}
  grouped = cells(tuning)
  keys = list(grouped)
  scores, stats = [], []
  for key in keys:
    chosen_by, measured = _cell_arrays(grouped[key], select, metric)
    draws = rng.integers(0, len(measured), (resamples, len(measured)))
    sample = chosen_by[draws]
    score = sample.mean(axis=1) if higher_is_better else -sample.mean(axis=1)
    scores.append(np.where(np.isfinite(score), score, -np.inf))
    stats.append(_statistic(measured[draws], statistic))
  scores, stats = np.stack(scores, 1), np.stack(stats, 1)  # [R, cells]
  # Ties go to the smaller rate, as in `choose`: order the cells by rate first.
  by_rate = np.argsort([k[1] for k in keys], kind="stable")
  ordered = scores[:, by_rate]
  tied = ordered >= ordered.max(axis=1, keepdims=True) - TIE_TOLERANCE
  picked = by_rate[np.argmax(tied, axis=1)]  # the first (smallest-rate) of the best
  counts = np.bincount(picked, minlength=len(keys)) / resamples
  _, estimate_values = _cell_arrays(grouped[chosen], select, metric)
  return {"estimate": float(_statistic(estimate_values, statistic)),
          "replicates": stats[np.arange(resamples), picked], "chosen": chosen,
          "position": position(tuning, chosen),
          "choices": {_label(k): float(c) for k, c in zip(keys, counts) if c > 0},
          "n": len(grouped[chosen])}


def _label(key: tuple[str, float]) -> str:
  return f"{key[0]}@{key[1]:g}" if key[0] else f"{key[1]:g}"


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float | None, float | None]:
  finite = np.asarray(replicates, np.float64)
  finite = finite[np.isfinite(finite)]
  if len(finite) < 2:
    return None, None
  tail = (1 - level) / 2
  return float(np.quantile(finite, tail)), float(np.quantile(finite, 1 - tail))


def summary(runs: list[dict], **options) -> dict:
  """`nested_bootstrap`'s estimate with its interval (JSON-ready)."""
  return _json_side(nested_bootstrap(runs, **options))


def compare(a_runs: list[dict], b_runs: list[dict] | None, *, select: str, metric: str,
            select_higher: bool = True, metric_higher: bool = True,
            statistic: str = "mean", seed: int = 0) -> dict:
  """A's advantage over B in `metric` (> 0: A better), each at its own
  validation-chosen cell, the choices redone in every replicate; with
  `b_runs` None, A's statistic against 0.

  Returns ``{"difference": {"mean", "low", "high"}, "p_better"`` (P(A better
  than B) over the replicates, ties half), ``"p_value"`` (two-sided
  bootstrap), and each side's summary under ``"a"`` and ``"b"``.
  """
  options = dict(select=select, metric=metric, higher_is_better=select_higher,
                 statistic=statistic)
  a = nested_bootstrap(a_runs, seed=seed, **options)
  b = None if b_runs is None else nested_bootstrap(b_runs, seed=seed + 1, **options)
  orient = 1.0 if metric_higher else -1.0
  b_replicates = 0.0 if b is None else b["replicates"]
  diffs = orient * (a["replicates"] - b_replicates)
  diffs = diffs[np.isfinite(diffs)]
  # Equal counts are a tie, whatever the float32 rounding (see TIE_TOLERANCE).
  diffs = np.where(np.abs(diffs) < TIE_TOLERANCE, 0.0, diffs)
  sides = {"a": _json_side(a), "b": None if b is None else _json_side(b)}
  if not len(diffs):
    return {"difference": {"mean": None, "low": None, "high": None}, "p_better": None,
            "p_value": None, **sides}
  low, high = interval(diffs)
  p_better = float(np.mean(diffs > 0) + 0.5 * np.mean(diffs == 0))
  p_value = float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
  estimate = a["estimate"] - (0.0 if b is None else b["estimate"])
  return {"difference": {"mean": orient * estimate, "low": low, "high": high},
          "p_better": p_better, "p_value": p_value, **sides}


def _json_side(result: dict) -> dict:
  low, high = interval(result["replicates"])
  return {"mean": result["estimate"], "low": low, "high": high, "n": result["n"],
          "chosen": list(result["chosen"]), "position": result["position"],
          "choices": result["choices"]}


def holm(p_values: list[float | None]) -> list[float | None]:
  """Holm's step-down adjusted p-values (None stays None): rejecting where
  the adjusted value is below alpha keeps the family-wise error at most
  alpha (Holm 1979)."""
  present = [(p, i) for i, p in enumerate(p_values) if p is not None]
  present.sort()
  adjusted: list[float | None] = [None] * len(p_values)
  running, m = 0.0, len(present)
  for rank, (p, index) in enumerate(present):
    running = max(running, min(1.0, (m - rank) * p))
    adjusted[index] = running
  return adjusted


def significant_sign(comparison: dict, alpha: float = ALPHA) -> int:
  """+1 (A better) / -1 (B better) when the Holm-adjusted p-value is below
  `alpha`, else 0."""
  p = comparison.get("p_adjusted", comparison.get("p_value"))
  if p is None or p >= alpha:
    return 0
  return 1 if comparison["difference"]["mean"] > 0 else -1


def stability(verdicts: list[str]) -> str:
  """``firm`` when every replicate's verdict is the same, else ``unstable``."""
  return FIRM if len(set(verdicts)) == 1 else UNSTABLE


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float | None, float | None]:
  """Wilson's score interval of a binomial proportion (Wilson 1927)."""
  if trials == 0:
    return None, None
  p = successes / trials
  denominator = 1 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denominator
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
  return max(0.0, centre - half), min(1.0, centre + half)
