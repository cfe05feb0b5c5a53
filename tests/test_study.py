"""The study: verdict rules on fixtures, statistics, and the quick pipeline."""

import json

import numpy as np
import pytest
from scipy import special

from lossjax import cli, study
from lossjax.study import _experiments, _stats, _verdicts


def _rows(setting, loss, metric, values):
  return [{"setting": setting, "loss": loss, "seed": i, "learning_rate": 0.1, "metric": metric,
           "value": v} for i, v in enumerate(values)]


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
  rng = np.random.default_rng(0)
  small = _stats.mean_ci(rng.normal(size=5))
  large = _stats.mean_ci(rng.normal(size=500))
  assert small["low"] <= small["mean"] <= small["high"]
  assert large["high"] - large["low"] < small["high"] - small["low"]
  assert _stats.mean_ci([np.nan])["n"] == 0
  assert _stats.sign(_stats.difference_ci([1.0, 1.1, 0.9], [0.0, 0.1, -0.1])) == 1


def test_claim1_supported_only_when_ce_wins_everywhere():
  ce_wins = (_rows("a", "cross_entropy", "test_accuracy", [0.95, 0.96, 0.95, 0.96, 0.95])
             + _rows("a", "mse", "test_accuracy", [0.90, 0.91, 0.90, 0.91, 0.90]))
  tie = (_rows("b", "cross_entropy", "test_accuracy", [0.95, 0.96, 0.95, 0.96, 0.95])
         + _rows("b", "mse", "test_accuracy", [0.96, 0.95, 0.95, 0.96, 0.95]))
  assert _verdicts.claim1(ce_wins)["verdict"] == "supported"
  assert _verdicts.claim1(tie)["verdict"] == "not supported"
  mixed = _verdicts.claim1(ce_wins + tie)
  assert mixed["verdict"] == "depends" and "a" in mixed["why"]


def test_claim2_depends_when_temperature_scaling_closes_the_gap():
  rows = (_rows("a", "cross_entropy", "test_ece", [0.01, 0.012, 0.011, 0.01, 0.012])
          + _rows("a", "mse", "test_ece", [0.2, 0.21, 0.2, 0.22, 0.2])
          + _rows("a", "cross_entropy", "test_ece_scaled", [0.01, 0.012, 0.011, 0.01, 0.012])
          + _rows("a", "mse", "test_ece_scaled", [0.011, 0.01, 0.012, 0.01, 0.011]))
  verdict = _verdicts.claim2(rows)
  assert verdict["verdict"] == "depends" and "temperature scaling" in verdict["why"]


def test_claim3_uses_fewer_steps_as_better():
  rows = (_rows("a", "cross_entropy", "steps_to_target", [100, 120, 100, 110, 100])
          + _rows("a", "mse", "steps_to_target", [300, 320, 310, 300, 330]))
  assert _verdicts.claim3(rows)["verdict"] == "supported"


def test_claim5_compares_the_best_ce_variant_with_weighted_mse():
  rows = []
  for loss, acc in [("cross_entropy", 0.7), ("cross_entropy_balanced", 0.8), ("focal", 0.72),
                    ("mse", 0.6), ("mse_balanced", 0.8)]:
    rows += _rows("imbalance 10", loss, "test_balanced_accuracy", [acc, acc + 0.01, acc - 0.01])
  verdict = _verdicts.claim5(rows)
  assert verdict["verdict"] == "not supported"
  assert "class weights improve MSE's balanced accuracy in: imbalance 10" in verdict["why"]


def test_claim6_not_supported_when_ce_also_gains_from_tuning():
  rows = []
  for loss in ("binary_cross_entropy", "binary_mse"):
    rows += _rows("rare", loss, "f1_at_0.5", [0.3, 0.32, 0.31, 0.3])
    rows += _rows("rare", loss, "f1_at_tuned", [0.5, 0.52, 0.51, 0.5])
  assert _verdicts.claim6(rows)["verdict"] == "not supported"
  only_mse = [r for r in rows if not (r["loss"] == "binary_cross_entropy" and r["metric"] == "f1_at_tuned")]
  only_mse += _rows("rare", "binary_cross_entropy", "f1_at_tuned", [0.3, 0.32, 0.31, 0.3])
  assert _verdicts.claim6(only_mse)["verdict"] == "supported"


def test_claim6_depends_when_the_gains_cannot_be_separated():
  rows = (_rows("rare", "binary_cross_entropy", "f1_at_0.5", [0.3, 0.3, 0.3, 0.3])
          + _rows("rare", "binary_cross_entropy", "f1_at_tuned", [0.3, 0.6, 0.2, 0.5])
          + _rows("rare", "binary_mse", "f1_at_0.5", [0.3, 0.3, 0.3, 0.3])
          + _rows("rare", "binary_mse", "f1_at_tuned", [0.35, 0.4, 0.38, 0.36]))
  verdict = _verdicts.claim6(rows)
  assert verdict["verdict"] == "depends" and "cannot separate" in verdict["why"]


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
  saved = json.loads((tmp_path / "study" / "threshold.json").read_text())
  assert saved["meta"]["mode"] == "quick" and saved["rows"]
  assert {"f1_at_0.5", "f1_at_tuned", "auroc"} <= {r["metric"] for r in saved["rows"]}
  assert (tmp_path / "study" / "figures" / "claim_6_threshold.png").exists()
  # A second run finds both experiments on disk and trains nothing.
  capsys.readouterr()
  assert cli.main(["study", "--quick", "--out", str(tmp_path), "--only", only]) == 0
  assert capsys.readouterr().err.count("already done") == 2
  assert cli.main(["report", "--out", str(tmp_path)]) == 0


@pytest.mark.slow
def test_quick_many_classes_trains_through_the_fused_head(tmp_path):
  from lossjax.study import _experiments
  rows = _experiments.many_classes(_experiments.Budget.quick_budget(), "mnist5k",
                                   log=lambda message: None)["rows"]
  settings = {r["setting"] for r in rows}
  assert settings == {"blobs C=100", "blobs C=512"}
  for setting in settings:
    metrics = {r["metric"] for r in rows if r["setting"] == setting}
    assert {"test_accuracy", "test_nll", "test_ece"} <= metrics
    # The vocabulary-sized setting keeps no final logits: no post-hoc metrics.
    assert ("temperature" in metrics) == (setting == "blobs C=100")
  assert {r["loss"] for r in rows} == set(_experiments.MANY_CLASSES_LOSSES)


def test_unknown_experiment_is_named(tmp_path):
  with pytest.raises(SystemExit, match="unknown experiment"):
    cli.main(["study", "--quick", "--out", str(tmp_path), "--only", "nope"])
