"""The study's tuning protocol on fixtures: grid, edge extension, selection-aware
intervals, Holm, Wilson, stability."""

import math

import numpy as np
import pytest

from lossjax.study import _protocol


def _run(rate, seed, metrics, *, diverged=False, key="", phase="tune", loss="cross_entropy",
         setting="s", replicate="A"):
  return {"setting": setting, "replicate": replicate, "loss": loss, "key": key,
          "learning_rate": rate, "seed": seed, "phase": phase, "diverged": diverged,
          "metrics": metrics}


def _trainer(score, diverges=lambda rate: False, seeds=3):
  """A fake `train_rates`: val_accuracy = score(rate) + seed noise; records every call."""
  calls = []

  def train_rates(rates):
    calls.append(tuple(rates))
    return [_run(r, s, {"val_accuracy": score(r) + 0.001 * s, "test_accuracy": score(r)},
                 diverged=diverges(r)) for r in rates for s in range(seeds)]
  return train_rates, calls


def test_rate_grid_is_half_decades_over_three_decades():
  grid = _protocol.rate_grid()
  assert len(grid) == 7 and grid[0] == 0.003162 and grid[-1] == 3.162
  ratios = np.diff(np.log10(grid))
  np.testing.assert_allclose(ratios, 0.5, atol=1e-3)
  assert math.log10(grid[-1] / grid[0]) >= 3 - 1e-3
  assert _protocol.rate_grid(0.01, 1.0) == (0.01, 0.03162, 0.1, 0.3162, 1.0)
  with pytest.raises(ValueError, match="`high`"):
    _protocol.rate_grid(1.0, 0.1)


def test_tune_extends_the_grid_towards_a_best_rate_beyond_it():
  # The optimum is at 10**1.5: two extensions of a decade reach past it.
  train_rates, calls = _trainer(lambda r: -abs(math.log10(r) - 1.5))
  runs = _protocol.tune(train_rates, _protocol.rate_grid(), select="val_accuracy")
  assert calls[1:] == [(10.0, 31.62), (100.0, 316.2)]  # new rates only, a decade each time
  chosen = _protocol.choose(runs, "val_accuracy")
  assert chosen == ("", 31.62)
  assert _protocol.position(runs, chosen) == _protocol.INTERIOR


def test_tune_extends_downwards_too():
  train_rates, calls = _trainer(lambda r: -abs(math.log10(r) + 3.5))
  runs = _protocol.tune(train_rates, (0.01, 0.03162, 0.1), select="val_accuracy")
  assert calls[1] == (0.001, 0.003162) and calls[2] == (0.0001, 0.0003162)
  assert _protocol.position(runs, _protocol.choose(runs, "val_accuracy")) == "interior"


def test_a_best_rate_below_diverging_ones_is_a_stability_edge():
  train_rates, calls = _trainer(lambda r: math.log10(r), diverges=lambda r: r > 5)
  runs = _protocol.tune(train_rates, _protocol.rate_grid(), select="val_accuracy")
  assert len(calls) == 2  # one extension: its rates diverged
  chosen = _protocol.choose(runs, "val_accuracy")
  assert chosen[1] == 3.162 and _protocol.position(runs, chosen) == _protocol.EDGE


def test_extensions_run_out_at_a_grid_end():
  train_rates, calls = _trainer(lambda r: math.log10(r))
  runs = _protocol.tune(train_rates, (0.1, 0.3162, 1.0), select="val_accuracy", max_extensions=2)
  assert len(calls) == 3
  assert _protocol.position(runs, _protocol.choose(runs, "val_accuracy")) == _protocol.GRID_END


def test_a_rate_with_one_diverged_seed_is_never_chosen():
  runs = [_run(0.1, s, {"val_accuracy": 0.5}) for s in range(3)]
  runs += [_run(1.0, s, {"val_accuracy": 0.9}, diverged=s == 2) for s in range(3)]
  assert _protocol.choose(runs, "val_accuracy") == ("", 0.1)


def test_selection_noise_is_inside_the_nested_bootstrap_interval():
  # Two rates tie on validation but differ on test: the choice flips between
  # replicates, and the interval spans both rates' test values.
  rng = np.random.default_rng(0)
  val = 0.85 + 0.01 * rng.normal(size=5)  # the same seeds' values at both rates
  runs = []
  for rate, test in ((0.1, 0.80), (1.0, 0.90)):
    for seed in range(5):
      runs.append(_run(rate, seed, {"val_accuracy": val[seed],
                                    "test_accuracy": test + 0.001 * rng.normal()}))
  result = _protocol.summary(runs, select="val_accuracy", metric="test_accuracy")
  assert set(result["choices"]) == {"0.1", "1"}
  assert abs(sum(result["choices"].values()) - 1) < 1e-9
  assert result["low"] < 0.81 and result["high"] > 0.89
  # At a fixed rate the same seeds give an interval a fraction as wide.
  fixed = _protocol.summary([r for r in runs if r["learning_rate"] == 1.0],
                            select="val_accuracy", metric="test_accuracy")
  assert fixed["high"] - fixed["low"] < 0.1 * (result["high"] - result["low"])


def test_compare_gives_the_probability_and_a_p_value():
  a = [_run(0.1, s, {"val_accuracy": 0.9, "test_accuracy": 0.9 + 0.01 * s}) for s in range(5)]
  b = [_run(0.1, s, {"val_accuracy": 0.8, "test_accuracy": 0.8 + 0.01 * s}) for s in range(5)]
  better = _protocol.compare(a, b, select="val_accuracy", metric="test_accuracy")
  assert better["p_better"] == 1.0 and better["p_value"] < 0.01
  assert better["difference"]["low"] > 0 and abs(better["difference"]["mean"] - 0.1) < 1e-9
  same = _protocol.compare(a, a, select="val_accuracy", metric="test_accuracy")
  assert same["p_value"] > 0.3 and 0.3 < same["p_better"] < 0.7
  lower = _protocol.compare(a, b, select="val_accuracy", metric="test_accuracy",
                            metric_higher=False)
  assert lower["difference"]["mean"] < 0 and lower["p_better"] == 0.0
  against_zero = _protocol.compare(a, None, select="val_accuracy", metric="test_accuracy")
  assert against_zero["difference"]["low"] > 0.89 and against_zero["b"] is None


def test_fresh_seeds_are_measured_apart_from_the_tuning_seeds():
  tuning = [_run(r, s, {"val_accuracy": 1 - abs(r - 0.3), "failed": 1.0})
            for r in (0.1, 0.3, 1.0) for s in range(2)]
  fresh = [_run(0.3, 100 + s, {"val_accuracy": 0.0, "failed": float(s < 3)}, phase="fresh")
           for s in range(10)]
  result = _protocol.summary(tuning + fresh, select="val_accuracy", metric="failed")
  assert result["chosen"] == ["", 0.3] and result["n"] == 10 and result["mean"] == 0.3


def test_median_statistic():
  runs = [_run(0.1, s, {"val_accuracy": 1.0, "steps": v}) for s, v in enumerate([1, 2, 100])]
  assert _protocol.summary(runs, select="val_accuracy", metric="steps",
                           statistic="median")["mean"] == 2


def test_holm_adjusts_step_down():
  np.testing.assert_allclose(_protocol.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  assert _protocol.holm([None, 0.02]) == [None, 0.02]
  assert _protocol.holm([0.5, 0.9]) == [1.0, 1.0]


def test_wilson_interval():
  low, high = _protocol.wilson(0, 28)
  assert low == 0 and abs(high - 3.8415 / (28 + 3.8415)) < 1e-4
  low, high = _protocol.wilson(14, 28)
  assert abs((low + high) / 2 - 0.5) < 1e-12 and 0.3 < low < 0.35
  assert _protocol.wilson(0, 0) == (None, None)


def test_stability():
  assert _protocol.stability(["supported", "supported"]) == "firm"
  assert _protocol.stability(["supported", "depends"]) == "unstable"


def test_equal_counts_tie_whatever_the_float_rounding():
  # 0.1 + 0.2 > 0.3 in floats: the two rates still tie, and the smaller rate wins,
  # in the choice and in every bootstrap replicate.
  runs = [_run(0.1, s, {"val_accuracy": 0.3, "test_accuracy": 0.5}) for s in range(3)]
  runs += [_run(1.0, s, {"val_accuracy": 0.1 + 0.2, "test_accuracy": 0.9}) for s in range(3)]
  assert _protocol.choose(runs, "val_accuracy") == ("", 0.1)
  assert _protocol.summary(runs, select="val_accuracy", metric="test_accuracy")["choices"] == {
      "0.1": 1.0}
  same = [_run(0.1, s, {"val_accuracy": 0.3, "test_accuracy": 0.1 + 0.2}) for s in range(3)]
  other = [_run(0.1, s, {"val_accuracy": 0.3, "test_accuracy": 0.3}) for s in range(3)]
  result = _protocol.compare(same, other, select="val_accuracy", metric="test_accuracy")
  assert result["p_better"] == 0.5 and result["p_value"] == 1.0


def test_runs_of_another_key_do_not_steer_the_extension():
  # A post-hoc variant of the same runs peaks inside the grid; the tuned one
  # at its top: the grid is extended for the tuned variant's sake.
  calls = []

  def train_rates(rates):
    calls.append(tuple(rates))
    return ([_run(r, s, {"val_accuracy": math.log10(r)}, key="plain") for r in rates
             for s in range(2)]
            + [_run(r, s, {"val_accuracy": 5 - abs(math.log10(r) + 0.5)}, key="adjusted")
               for r in rates for s in range(2)])
  _protocol.tune(train_rates, (0.1, 0.3162, 1.0), select="val_accuracy", key="plain",
                 max_extensions=1)
  assert len(calls) == 2 and calls[1] == (3.162, 10.0)
