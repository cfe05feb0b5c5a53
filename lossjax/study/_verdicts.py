"""Verdict rules: from long-format rows to supported / not supported / depends.

Each rule compares per-seed values with bootstrap 95% intervals and returns
``{"verdict", "why", "evidence": [...]}``. Kept apart from the experiments so
they can be tested on fixtures.
"""

from __future__ import annotations

from collections import defaultdict

from lossjax.study import _stats

SUPPORTED, NOT_SUPPORTED, DEPENDS, NO_DATA = "supported", "not supported", "depends", "no data"


def values(rows, *, setting, loss, metric) -> list[float]:
  return [r["value"] for r in rows if r["setting"] == setting and r["loss"] == loss
          and r["metric"] == metric and r["value"] is not None]


def settings_of(rows) -> list[str]:
  return list(dict.fromkeys(r["setting"] for r in rows))


def losses_of(rows, setting) -> list[str]:
  return list(dict.fromkeys(r["loss"] for r in rows if r["setting"] == setting))


def compare(rows, metric, better_loss, other_loss, *, higher_is_better=True, settings=None):
  """Per setting: the difference better - other (sign-adjusted so > 0 means
  `better_loss` is better), with its interval."""
  out = []
  for setting in settings or settings_of(rows):
    a = values(rows, setting=setting, loss=better_loss, metric=metric)
    b = values(rows, setting=setting, loss=other_loss, metric=metric)
    if not a or not b:
      continue
    ci = _stats.difference_ci(a, b) if higher_is_better else _stats.difference_ci(b, a)
    out.append({"setting": setting, "metric": metric, "better": better_loss,
                "other": other_loss, "difference": ci, "sign": _stats.sign(ci)})
  return out


def _by_sign(comparisons) -> tuple[int, int, int]:
  signs = [c["sign"] for c in comparisons]
  return signs.count(1), signs.count(0), signs.count(-1)


def _settings(comparisons, sign) -> str:
  return ", ".join(c["setting"] for c in comparisons if c["sign"] == sign) or "none"


def verdict_from_comparisons(comparisons, *, claim_side: str, other_side: str) -> dict:
  """Supported when the claimed side is better in every setting, not
  supported when it is better in none, depends otherwise."""
  if not comparisons:
    return {"verdict": NO_DATA, "why": "no measurements", "evidence": []}
  wins, ties, losses = _by_sign(comparisons)
  if wins == len(comparisons):
    verdict, why = SUPPORTED, f"{claim_side} is better in every setting"
  elif wins == 0:
    verdict = NOT_SUPPORTED
    why = (f"{claim_side} is better in no setting (no significant difference in "
           f"{_settings(comparisons, 0)}; {other_side} better in {_settings(comparisons, -1)})")
  else:
    verdict = DEPENDS
    why = (f"{claim_side} is better in {_settings(comparisons, 1)}; not in "
           f"{', '.join(c['setting'] for c in comparisons if c['sign'] != 1)}")
  return {"verdict": verdict, "why": why, "evidence": comparisons}


def claim1(rows) -> dict:
  """CE suits classification; MSE does not: CE's test accuracy vs MSE's."""
  comparisons = compare(rows, "test_accuracy", "cross_entropy", "mse")
  return verdict_from_comparisons(comparisons, claim_side="cross-entropy",
                                  other_side="MSE")


def claim2(rows) -> dict:
  """CE gives probabilistic output; MSE does not: calibration before and after
  temperature scaling (ECE; lower is better)."""
  before = compare(rows, "test_ece", "cross_entropy", "mse", higher_is_better=False)
  after = compare(rows, "test_ece_scaled", "cross_entropy", "mse", higher_is_better=False)
  raw = verdict_from_comparisons(before, claim_side="cross-entropy", other_side="MSE")
  if not before:
    return raw
  wins_after = sum(c["sign"] == 1 for c in after)
  if raw["verdict"] == SUPPORTED and after and wins_after < len(after):
    return {"verdict": DEPENDS,
            "why": ("cross-entropy is better calibrated as trained, but after temperature "
                    f"scaling MSE is as well calibrated in {_settings(after, 0)}"
                    + (f" and better in {_settings(after, -1)}" if any(c['sign'] == -1 for c in after) else "")),
            "evidence": before + after}
  raw["evidence"] = before + after
  return raw


def claim3(rows) -> dict:
  """CE converges faster: fewer steps to the target accuracy (lower is better)."""
  comparisons = compare(rows, "steps_to_target", "cross_entropy", "mse", higher_is_better=False)
  return verdict_from_comparisons(comparisons, claim_side="cross-entropy", other_side="MSE")


def claim4(rows) -> dict:
  """Lower risk of poor local minima: fraction of seeds reaching the target."""
  comparisons = compare(rows, "reached_target", "cross_entropy", "mse")
  result = verdict_from_comparisons(comparisons, claim_side="cross-entropy", other_side="MSE")
  deep = [c for c in comparisons if c["setting"].endswith(("depth 4", "depth 8"))]
  if result["verdict"] == DEPENDS and deep and all(c["sign"] == 1 for c in deep):
    result["why"] += "; the difference shows in the deeper nets, as the article says"
  return result


def claim5(rows) -> dict:
  """CE handles imbalance better (with class weights / focal); MSE needs
  resampling: the best CE variant vs class-weighted MSE, balanced accuracy."""
  comparisons = []
  for setting in settings_of(rows):
    best_ce = max(("cross_entropy", "cross_entropy_balanced", "focal"),
                  key=lambda l: _mean(values(rows, setting=setting, loss=l,
                                             metric="test_balanced_accuracy")))
    comparisons += compare(rows, "test_balanced_accuracy", best_ce, "mse_balanced",
                           settings=[setting])
  result = verdict_from_comparisons(comparisons, claim_side="the best cross-entropy variant",
                                    other_side="class-weighted MSE")
  weighting = compare(rows, "test_balanced_accuracy", "mse_balanced", "mse")
  helped = _settings(weighting, 1)
  result["why"] += f"; class weights improve MSE's balanced accuracy in: {helped}"
  result["evidence"] = comparisons + weighting
  return result


def claim6(rows) -> dict:
  """MSE needs a threshold; CE does not: the F1 gained by tuning the threshold
  on validation (per seed: F1 at the tuned threshold - F1 at 0.5), for BCE and
  for MSE on a sigmoid, and how the two gains compare."""
  gains, evidence = {}, []
  for setting in settings_of(rows):
    for loss in ("binary_cross_entropy", "binary_mse"):
      tuned = values(rows, setting=setting, loss=loss, metric="f1_at_tuned")
      fixed = values(rows, setting=setting, loss=loss, metric="f1_at_0.5")
      if tuned and len(tuned) == len(fixed):
        gains[setting, loss] = [t - f for t, f in zip(tuned, fixed)]
        ci = _stats.mean_ci(gains[setting, loss])
        evidence.append({"setting": setting, "metric": "f1_gain_from_tuning", "better": loss,
                         "other": "threshold 0.5", "difference": ci, "sign": _stats.sign(ci)})
  if not evidence:
    return {"verdict": NO_DATA, "why": "no measurements", "evidence": []}
  ce_needs, mse_needs, mse_needs_more = [], [], []
  for setting in settings_of(rows):
    ce, mse = gains.get((setting, "binary_cross_entropy")), gains.get((setting, "binary_mse"))
    if ce is None or mse is None:
      continue
    if _stats.sign(_stats.mean_ci(ce)) == 1:
      ce_needs.append(setting)
    if _stats.sign(_stats.mean_ci(mse)) == 1:
      mse_needs.append(setting)
    more = _stats.difference_ci(mse, ce)
    evidence.append({"setting": setting, "metric": "f1_gain_from_tuning", "better": "binary_mse",
                     "other": "binary_cross_entropy", "difference": more,
                     "sign": _stats.sign(more)})
    if _stats.sign(more) == 1:
      mse_needs_more.append(setting)
  if ce_needs:
    verdict = NOT_SUPPORTED
    why = "tuning the threshold raises cross-entropy's F1 too, in " + ", ".join(ce_needs)
  elif mse_needs_more:
    verdict = SUPPORTED
    why = ("MSE gains from a tuned threshold, significantly more than cross-entropy, in "
           + ", ".join(mse_needs_more))
  elif mse_needs:
    verdict = DEPENDS
    why = ("MSE gains significantly from a tuned threshold in " + ", ".join(mse_needs)
           + "; cross-entropy's gain there is not significant, but not significantly smaller "
           "either (the seeds cannot separate the two)")
  else:
    verdict, why = NOT_SUPPORTED, "neither loss gains significantly from tuning the threshold"
  return {"verdict": verdict, "why": why, "evidence": evidence}


def _mean(xs) -> float:
  return sum(xs) / len(xs) if xs else float("-inf")


CLAIMS = {1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6}
