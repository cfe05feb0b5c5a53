"""Verdict rules: from runs to supported / not supported / depends, per replicate.

Every comparison is selection-aware (`_protocol.compare`); the settings that
make up one verdict are one family for Holm's correction; a setting counts
for a side when its adjusted p-value is below 0.05. Each verdict is computed
in every replicate and is ``firm`` when they agree. Claims about "MSE" are
judged separately against logit-MSE (`mse`, Hui & Belkin 2021) and Brier
(squared error on softmax probabilities), which behave differently.
Kept apart from the experiments so they can be tested on fixtures.
"""

from __future__ import annotations

from lossjax.study import _protocol

SUPPORTED, NOT_SUPPORTED, DEPENDS, NO_DATA = "supported", "not supported", "depends", "no data"
SQUARED_ERROR_NAMES = {"mse": "logit-MSE", "brier": "Brier"}


def settings_of(runs) -> list[str]:
  return list(dict.fromkeys(r["setting"] for r in runs))


def replicates_of(runs) -> list[str]:
  return sorted({r["replicate"] for r in runs})


def losses_of(runs, setting) -> list[str]:
  return list(dict.fromkeys(r["loss"] for r in runs if r["setting"] == setting))


def variant_runs(runs, *, setting, replicate, loss, key=None) -> list[dict]:
  fields = dict(setting=setting, replicate=replicate, loss=loss)
  if key is not None:
    fields["key"] = key
  return [r for r in _protocol.select_runs(runs, **fields) if r["phase"] in ("tune", "fresh")]


def comparison(runs, *, setting, replicate, a, b, metric, select, metric_higher=True,
               statistic="mean", a_key=None, b_key=None) -> dict | None:
  """`a`'s selection-aware advantage over `b` (or over 0 when `b` is None)."""
  a_runs = variant_runs(runs, setting=setting, replicate=replicate, loss=a, key=a_key)
  b_runs = (None if b is None else
            variant_runs(runs, setting=setting, replicate=replicate, loss=b, key=b_key))
  if not a_runs or b_runs == []:
    return None
  result = _protocol.compare(a_runs, b_runs, select=select, metric=metric,
                             metric_higher=metric_higher, statistic=statistic)
  return {"setting": setting, "replicate": replicate, "metric": metric,
          "better": _label(a, a_key, a_runs),
          "other": "0" if b is None else _label(b, b_key, b_runs),
          "statistic": statistic, **result}


def _label(loss, key, runs) -> str:
  """The loss, its key, or "(best variant)" when the choice spans several keys."""
  if key:
    return f"{loss} ({key})"
  return loss + (" (best variant)" if len({r["key"] for r in runs}) > 1 else "")


def adjust(comparisons: list[dict]) -> list[dict]:
  """Adds Holm-adjusted p-values and the significant sign to a family."""
  adjusted = _protocol.holm([c["p_value"] for c in comparisons])
  for c, p in zip(comparisons, adjusted):
    c["p_adjusted"] = p
    c["sign"] = _protocol.significant_sign(c)
  return comparisons


def _names(comparisons, sign) -> str:
  return ", ".join(c["setting"] for c in comparisons if c["sign"] == sign) or "none"


def rule(comparisons, *, claim_side: str, other_side: str) -> dict:
  """Supported when the claimed side is significantly better in every
  setting, not supported when in none, depends otherwise."""
  if not comparisons:
    return {"verdict": NO_DATA, "why": "no measurements"}
  wins = sum(c["sign"] == 1 for c in comparisons)
  if wins == len(comparisons):
    return {"verdict": SUPPORTED, "why": f"{claim_side} is better in every setting"}
  if wins == 0:
    return {"verdict": NOT_SUPPORTED,
            "why": (f"{claim_side} is better in no setting (no significant difference in "
                    f"{_names(comparisons, 0)}; {other_side} better in "
                    f"{_names(comparisons, -1)})")}
  return {"verdict": DEPENDS,
          "why": (f"{claim_side} is better in {_names(comparisons, 1)}; not in "
                  + ", ".join(c["setting"] for c in comparisons if c["sign"] != 1))}


def per_replicate(runs, judge) -> dict:
  """Runs `judge(runs, replicate) -> (verdict dict, comparisons)` in every
  replicate; the result says `firm` or `unstable` and keeps each outcome."""
  outcomes, evidence = {}, []
  for replicate in replicates_of(runs):
    verdict, comparisons = judge(runs, replicate)
    outcomes[replicate] = verdict
    evidence += comparisons
  if not outcomes:
    return {"verdict": NO_DATA, "why": "experiment not run", "stability": None,
            "replicates": {}, "evidence": []}
  verdicts = [o["verdict"] for o in outcomes.values()]
  stability = _protocol.stability(verdicts)
  first = next(iter(outcomes.values()))
  if stability == _protocol.FIRM:
    verdict, why = first["verdict"], first["why"]
  else:
    verdict = "unstable"
    why = "; ".join(f"replicate {r}: {o['verdict']} ({o['why']})" for r, o in outcomes.items())
  return {"verdict": verdict, "why": why, "stability": stability, "replicates": outcomes,
          "evidence": evidence}


def _family(runs, replicate, settings, holm: bool = True, **options) -> list[dict]:
  found = [comparison(runs, setting=s, replicate=replicate, **options) for s in settings]
  found = [c for c in found if c is not None]
  return adjust(found) if holm else found


def claim1(runs, other: str) -> dict:
  """CE suits classification; MSE does not: test accuracy at each loss's
  validated rate."""
  def judge(runs, replicate):
    family = _family(runs, replicate, settings_of(runs), a="cross_entropy", b=other,
                     metric="test_accuracy", select="val_accuracy")
    return rule(family, claim_side="cross-entropy", other_side=SQUARED_ERROR_NAMES[other]), family
  return per_replicate(runs, judge)


def claim2(runs, other: str) -> dict:
  """CE gives probabilistic output; MSE does not: ECE (lower is better) as
  trained and after temperature scaling."""
  name = SQUARED_ERROR_NAMES[other]

  def judge(runs, replicate):
    options = dict(a="cross_entropy", b=other, select="val_accuracy", metric_higher=False)
    before = _family(runs, replicate, settings_of(runs), metric="test_ece", **options)
    after = _family(runs, replicate, settings_of(runs), metric="test_ece_scaled", **options)
    raw = rule(before, claim_side="cross-entropy", other_side=name)
    if raw["verdict"] == SUPPORTED and after and any(c["sign"] != 1 for c in after):
      raw = {"verdict": DEPENDS,
             "why": ("cross-entropy is better calibrated as trained, but after temperature "
                     f"scaling {name} is as well calibrated in {_names(after, 0)}"
                     + (f" and better in {_names(after, -1)}"
                        if any(c["sign"] == -1 for c in after) else ""))}
    return raw, before + after
  return per_replicate(runs, judge)


def claim3(runs, other: str) -> dict:
  """CE converges faster: median steps to the target test accuracy (misses
  counted at one interval past the budget), each loss's rate tuned for speed."""
  def judge(runs, replicate):
    family = _family(runs, replicate, settings_of(runs), a="cross_entropy", b=other,
                     metric="test_steps_to_target", select="val_speed", metric_higher=False,
                     statistic="median")
    return rule(family, claim_side="cross-entropy", other_side=SQUARED_ERROR_NAMES[other]), family
  return per_replicate(runs, judge)


def discriminating(runs, setting, replicate, losses) -> bool:
  """Whether a claim-4 cell can tell losses apart: some of `losses` fail on
  some but not all of their fresh seeds, or they differ."""
  rates = []
  for loss in losses:
    fresh = [r["metrics"]["failed"] for r in
             variant_runs(runs, setting=setting, replicate=replicate, loss=loss)
             if r["phase"] == "fresh" and r["metrics"].get("failed") is not None]
    rates.append(sum(fresh) / len(fresh) if fresh else None)
  rates = [r for r in rates if r is not None]
  return bool(rates) and not (all(r == 0 for r in rates) or all(r == 1 for r in rates))


def claim4(runs, other: str) -> dict:
  """Lower risk of poor local minima: the failure rate (train accuracy below
  the threshold at the budget) on fresh seeds at each loss's tuned rate,
  over the cells where some loss fails on some but not all seeds."""
  def judge(runs, replicate):
    cells = [s for s in settings_of(runs)
             if discriminating(runs, s, replicate, ("cross_entropy", other))]
    family = _family(runs, replicate, cells, a="cross_entropy", b=other, metric="failed",
                     select="val_accuracy", metric_higher=False)
    verdict = rule(family, claim_side="cross-entropy", other_side=SQUARED_ERROR_NAMES[other])
    skipped = len(settings_of(runs)) - len(cells)
    verdict["why"] += (f" ({len(cells)} cells where failure rates differ from all-or-none; "
                       f"{skipped} where both losses always or never fail)")
    return verdict, family
  return per_replicate(runs, judge)


def claim5(runs, other: str = "mse") -> dict:
  """CE handles imbalance better; MSE needs extra methods: each family's
  best variant (plain, class-balanced weights, post-hoc logit adjustment,
  and focal for CE; the variant chosen with the rate on validation balanced
  accuracy) on a balanced test set."""
  def judge(runs, replicate):
    options = dict(metric="test_balanced_accuracy", select="val_balanced_accuracy")
    family = _family(runs, replicate, settings_of(runs), a="cross_entropy", b=other, **options)
    verdict = rule(family, claim_side="cross-entropy (its best variant)",
                   other_side="logit-MSE (its best variant)")
    needs = _family(runs, replicate, settings_of(runs), a=other, b=other, b_key="plain",
                    **options)
    verdict["why"] += ("; logit-MSE's best variant beats plain logit-MSE in: "
                       + _names(needs, 1))
    return verdict, family + needs
  return per_replicate(runs, judge)


def claim6(binary_runs, imbalance_runs) -> dict:
  """CE needs no threshold; MSE does: the F1 gained by a validation-tuned
  threshold on binary tasks (BCE vs MSE on a sigmoid), and, under a prior
  shift (long-tailed training, balanced test), the balanced accuracy that
  post-hoc logit adjustment adds to cross-entropy's own argmax."""
  runs = binary_runs + imbalance_runs

  def judge(runs, replicate):
    binary, shifted = settings_of(binary_runs), settings_of(imbalance_runs)
    options = dict(metric="f1_gain", select="val_auroc")
    ce = _family(runs, replicate, binary, a="binary_cross_entropy", b=None, holm=False,
                 **options)
    mse = _family(runs, replicate, binary, a="binary_mse", b=None, **options)
    more = _family(runs, replicate, binary, a="binary_mse", b="binary_cross_entropy", **options)
    argmax = _family(runs, replicate, shifted, a="cross_entropy", b="cross_entropy",
                     a_key="plain+logit adjustment", b_key="plain",
                     metric="test_balanced_accuracy", select="val_balanced_accuracy", holm=False)
    adjust(ce + argmax)  # one family: every way cross-entropy could need a threshold
    evidence = ce + mse + more + argmax
    ce_needs = [c["setting"] for c in ce + argmax if c["sign"] == 1]
    if ce_needs:
      return {"verdict": NOT_SUPPORTED,
              "why": "a tuned threshold (or, under a prior shift, a logit adjustment) raises "
                     "cross-entropy's score too, in " + ", ".join(ce_needs)}, evidence
    if any(c["sign"] == 1 for c in more):
      return {"verdict": SUPPORTED,
              "why": "MSE gains from a tuned threshold, significantly more than cross-entropy, "
                     "in " + _names(more, 1)}, evidence
    if any(c["sign"] == 1 for c in mse):
      return {"verdict": DEPENDS,
              "why": "MSE gains significantly from a tuned threshold in " + _names(mse, 1)
                     + "; cross-entropy does not, but not significantly less either"}, evidence
    return {"verdict": NOT_SUPPORTED,
            "why": "neither loss gains significantly from tuning the threshold"}, evidence
  return per_replicate(runs, judge)


# The claims judged once per squared error (5 and 6 have their own signatures).
CLAIM_RULES = {1: claim1, 2: claim2, 3: claim3, 4: claim4}
