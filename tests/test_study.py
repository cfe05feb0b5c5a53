"""The study: verdict rules on fixtures, statistics, and the quick pipeline."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import special

from lossjax import cli, study
from lossjax.study import _experiments, _verdicts


def _runs(setting, loss, metric, values, *, replicate="A", key="", select="val_accuracy",
          select_values=None, phase="tune", rate=0.1):
  """Runs of one cell: `metric` takes `values` seed by seed."""
  select_values = select_values or [0.5] * len(values)
  return [{"setting": setting, "replicate": replicate, "loss": loss, "key": key,
           "learning_rate": rate, "seed": i, "phase": phase, "diverged": False,
           "metrics": {metric: v, select: sv}} for i, (v, sv) in enumerate(zip(values, select_values))]


def _both(setting, metric, ce, other, loss="mse", **options):
  return _runs(setting, "cross_entropy", metric, ce, **options) + _runs(setting, loss, metric,
                                                                          other, **options)


CE_BETTER = ([0.95, 0.96, 0.95, 0.96, 0.95], [0.90, 0.91, 0.90, 0.91, 0.90])
TIE = ([0.95, 0.96, 0.95, 0.96, 0.95], [0.96, 0.95, 0.95, 0.96, 0.95])


def test_claim1_supported_only_when_ce_wins_everywhere_and_in_both_replicates():
  wins = _both("a", "test_accuracy", *CE_BETTER) + _both("a", "test_accuracy", *CE_BETTER,
                                                         replicate="B")
  tie = _both("b", "test_accuracy", *TIE) + _both("b", "test_accuracy", *TIE, replicate="B")
  verdict = _verdicts.claim1(wins, "mse")
  assert verdict["verdict"] == "supported" and verdict["stability"] == "firm"
  assert _verdicts.claim1(tie, "mse")["verdict"] == "not supported"
  mixed = _verdicts.claim1(wins + tie, "mse")
  assert mixed["verdict"] == "depends" and "a" in mixed["why"]
  # Replicate B disagrees: unstable, with both outcomes.
  flip = _both("a", "test_accuracy", *CE_BETTER) + _both("a", "test_accuracy", *TIE,
                                                         replicate="B")
  unstable = _verdicts.claim1(flip, "mse")
  assert unstable["stability"] == "unstable"
  assert {o["verdict"] for o in unstable["replicates"].values()} == {"supported",
                                                                   "not supported"}


def test_holm_correction_can_remove_a_marginal_win():
  # Alone, a difference with p ~ 0.02 wins; in a family of 12 tied settings it does not.
  marginal = _both("m", "test_accuracy", [0.91, 0.92, 0.91, 0.93, 0.91, 0.90],
                   [0.90, 0.91, 0.90, 0.91, 0.89, 0.90])
  alone = _verdicts._family(marginal, "A", ["m"], a="cross_entropy", b="mse",
                            metric="test_accuracy", select="val_accuracy")
  ties = []
  for i in range(12):
    ties += _both(f"t{i}", "test_accuracy", *TIE)
  family = _verdicts._family(marginal + ties, "A", ["m"] + [f"t{i}" for i in range(12)],
                             a="cross_entropy", b="mse", metric="test_accuracy",
                             select="val_accuracy")
  assert alone[0]["p_value"] < 0.05 and alone[0]["sign"] == 1
  assert family[0]["p_adjusted"] > family[0]["p_value"] and family[0]["sign"] == 0


def test_claim2_depends_when_temperature_scaling_closes_the_gap():
  runs = (_both("a", "test_ece", [0.01, 0.012, 0.011, 0.01, 0.012], [0.2, 0.21, 0.2, 0.22, 0.2])
          + _both("a", "test_ece_scaled", [0.01, 0.012, 0.011, 0.01, 0.012],
                  [0.011, 0.01, 0.012, 0.01, 0.011]))
  verdict = _verdicts.claim2(runs, "mse")
  assert verdict["verdict"] == "depends" and "temperature scaling" in verdict["why"]


def test_claim3_uses_fewer_steps_as_better():
  runs = _both("a", "test_steps_to_target", [100, 120, 100, 110, 100], [300, 320, 310, 300, 330],
               loss="brier", select="val_speed")
  assert _verdicts.claim3(runs, "brier")["verdict"] == "supported"


def test_claim4_judges_only_cells_where_failure_rates_can_differ():
  def cell(setting, ce, other):
    return (_runs(setting, "cross_entropy", "failed", [0.0] * 4)
            + _runs(setting, "cross_entropy", "failed", ce, phase="fresh")
            + _runs(setting, "mse", "failed", [0.0] * 4)
            + _runs(setting, "mse", "failed", other, phase="fresh"))
  always = cell("deep", [1.0] * 20, [1.0] * 20)
  never = cell("shallow", [0.0] * 20, [0.0] * 20)
  middle = cell("middle", [0.0] * 16 + [1.0] * 4, [1.0] * 16 + [0.0] * 4)
  verdict = _verdicts.claim4(always + never + middle, "mse")
  assert verdict["verdict"] == "supported"
  assert [c["setting"] for c in verdict["evidence"]] == ["middle"]
  assert "2 where both losses always or never fail" in verdict["why"]
  assert _verdicts.claim4(always + never, "mse")["verdict"] == "no data"


def test_claim5_pools_each_familys_variants_and_asks_if_mse_needs_them():
  runs = []
  select = "val_balanced_accuracy"
  for family, key, acc in [("cross_entropy", "plain", 0.7), ("cross_entropy", "focal", 0.72),
                           ("mse", "plain", 0.6), ("mse", "class-balanced beta=0.99", 0.8)]:
    values = [acc, acc + 0.01, acc - 0.01, acc]
    runs += _runs("imbalance 10", family, "test_balanced_accuracy", values, key=key,
                  select=select, select_values=values)
  verdict = _verdicts.claim5(runs)
  assert verdict["verdict"] == "not supported"
  assert "beats plain logit-MSE in: imbalance 10" in verdict["why"]
  chosen = verdict["evidence"][0]["b"]["chosen"]
  assert chosen[0] == "class-balanced beta=0.99"


def test_claim6_not_supported_when_ce_also_gains_from_tuning():
  options = dict(select="val_auroc")
  gains = _runs("rare", "binary_cross_entropy", "f1_gain", [0.2, 0.22, 0.21, 0.2], **options)
  gains += _runs("rare", "binary_mse", "f1_gain", [0.2, 0.22, 0.21, 0.2], **options)
  assert _verdicts.claim6(gains, [])["verdict"] == "not supported"
  only_mse = _runs("rare", "binary_cross_entropy", "f1_gain", [0.0, 0.01, -0.01, 0.0], **options)
  only_mse += _runs("rare", "binary_mse", "f1_gain", [0.2, 0.22, 0.21, 0.2], **options)
  assert _verdicts.claim6(only_mse, [])["verdict"] == "supported"
  # Cross-entropy's own argmax gains from logit adjustment under a prior shift.
  select = "val_balanced_accuracy"
  shifted = (_runs("lt", "cross_entropy", "test_balanced_accuracy", [0.6, 0.61, 0.6, 0.62],
                   key="plain", select=select)
             + _runs("lt", "cross_entropy", "test_balanced_accuracy", [0.7, 0.71, 0.7, 0.72],
                     key="plain+logit adjustment", select=select))
  verdict = _verdicts.claim6(only_mse, shifted)
  assert verdict["verdict"] == "not supported" and "lt" in verdict["why"]


def test_claim6_depends_when_the_gains_cannot_be_separated():
  options = dict(select="val_auroc")
  runs = (_runs("rare", "binary_cross_entropy", "f1_gain", [0.0, 0.3, -0.1, 0.2], **options)
          + _runs("rare", "binary_mse", "f1_gain", [0.05, 0.1, 0.08, 0.06], **options))
  verdict = _verdicts.claim6(runs, [])
  assert verdict["verdict"] == "depends" and "not significantly less" in verdict["why"]


def test_logit_adjustment_corrects_a_head_biased_model():
  from lossjax import data
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 200)
  train_labels = np.repeat(np.arange(3), [500, 50, 5])
  dataset = data.Dataset("toy", np.zeros((555, 1), np.float32), train_labels.astype(np.int32),
                         np.zeros((600, 1), np.float32), labels.astype(np.int32),
                         np.zeros((600, 1), np.float32), labels.astype(np.int32), 3)
  # Logits of a model that learned the training prior: log pi plus a noisy signal.
  prior = np.log(np.array([500, 50, 5]) / 555)
  logits = lambda: (prior + 2.0 * np.eye(3)[labels] + rng.normal(size=(600, 3))).astype(np.float32)
  val, test = logits(), logits()
  adjusted = _experiments.logit_adjusted(val, test, dataset)
  plain = _experiments._class_metrics(test, labels, 3)
  assert adjusted["tau"] > 0.5
  assert adjusted["test_balanced_accuracy"] > plain["test_balanced_accuracy"] + 0.1
  assert adjusted["worst_class_recall"] > plain["worst_class_recall"]


def test_half_depth_interpolates_the_failure_rate():
  from lossjax.study import _report
  assert _report.half_depth([(1, 0.0), (2, 0.2), (3, 0.8)]) == "2.5"
  assert _report.half_depth([(1, 0.0), (2, 0.1)]) == "> 2"
  assert _report.half_depth([(2, 0.6), (3, 1.0)]) == "≤ 2"


def test_binary_scores_keep_confident_examples_apart():
  z = np.array([-1000.0, -30.0, 0.0, 17.0, 20.0, 30.0], np.float32)
  two_logits = np.stack([np.zeros_like(z), z], axis=1)
  with np.errstate(over="raise", invalid="raise"):  # none for very negative z
    scores = _experiments._binary_scores(two_logits)
  np.testing.assert_allclose(scores, special.expit(z.astype(np.float64)), rtol=1e-12)
  # float32's sigmoid rounds all three of 17, 20 and 30 to 1.0: these stay ordered.
  assert np.all(np.diff(scores) > 0) and scores[0] == 0.0


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_resumes(quick_study, capsys):
  from tests.conftest import QUICK_STUDY as only
  tmp_path = quick_study  # `lossjax study --quick --only threshold,local_minima`, run once
  report = (tmp_path / "REPORT.md").read_text()
  assert "Quick mode" in report and "## Claim 6" in report
  assert "| 4 | Risk of local minima" in report and "stability" in report
  saved = json.loads((tmp_path / "study" / "threshold.json").read_text())
  assert saved["meta"]["mode"] == "quick" and saved["runs"]
  assert {r["replicate"] for r in saved["runs"]} == {"A", "B"}
  assert {"f1_at_0.5", "f1_at_tuned", "f1_gain", "auroc", "val_auroc"} <= set(
      saved["runs"][0]["metrics"])
  minima = json.loads((tmp_path / "study" / "local_minima.json").read_text())
  assert {"tune", "fresh"} <= {r["phase"] for r in minima["runs"]}
  assert all("train_accuracy" in r["metrics"] and "failed" in r["metrics"]
             for r in minima["runs"])
  assert (tmp_path / "study" / "figures" / "claim_4_failure_vs_depth.png").exists()
  # A second run finds both experiments on disk and trains nothing.
  capsys.readouterr()
  assert cli.main(["study", "--quick", "--out", str(tmp_path), "--only", only]) == 0
  assert capsys.readouterr().err.count("already done") == 2
  assert cli.main(["report", "--out", str(tmp_path)]) == 0


@pytest.mark.slow
def test_quick_many_classes_trains_through_the_fused_head(tmp_path):
  from lossjax.study import _experiments
  # No edge extensions (tests/test_protocol.py tests them): each would be one
  # more training program to compile, 20 s -> 13 s here.
  budget = dataclasses.replace(_experiments.Budget.quick_budget(), max_extensions=0)
  runs = _experiments.many_classes(budget, "mnist5k", log=lambda message: None)["runs"]
  settings = {r["setting"] for r in runs}
  assert settings == {"blobs C=100", "blobs C=512"}
  for setting in settings:
    mine = [r for r in runs if r["setting"] == setting]
    assert {"test_accuracy", "test_nll", "test_ece"} <= set(mine[0]["metrics"])
    # The vocabulary-sized setting keeps no final logits: no post-hoc metrics.
    assert ("temperature" in mine[0]["metrics"]) == (setting == "blobs C=100")
    assert {r["replicate"] for r in mine} == {"A"}
  assert {r["loss"] for r in runs} == set(_experiments.MANY_CLASSES_LOSSES)


def test_unknown_experiment_is_named(tmp_path):
  with pytest.raises(SystemExit, match="unknown experiment"):
    cli.main(["study", "--quick", "--out", str(tmp_path), "--only", "nope"])
