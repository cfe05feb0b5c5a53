"""REPORT.md and its figures, regenerated from the study's result files only."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lossjax import _io
from lossjax.study import _experiments, _protocol, _verdicts

ARTICLE_ROWS = [
    (1, "Suitable for classification", "CE ✅, MSE ❌", "classification",
     "test accuracy, each loss at its own validated rate"),
    (2, "Probabilistic output required", "CE ✅, MSE ❌", "classification",
     "ECE (15 bins) as trained and after temperature scaling"),
    (3, "Convergence speed", "CE fast, MSE slower", "init_scale",
     "median steps to a target test accuracy, initial weights from gentle to saturating, "
     "rates tuned for speed"),
    (4, "Risk of local minima", "CE lower, MSE higher", "local_minima",
     "failure rate (train accuracy < 0.5 at the budget) on fresh seeds, by depth, "
     "activation and initialisation"),
    (5, "Handling imbalanced classes", "CE better, MSE needs extra methods", "imbalance",
     "balanced accuracy on a balanced test set, each family's best of plain, class-balanced "
     "and logit-adjusted (and focal for CE)"),
    (6, "Threshold dependency", "CE none, MSE requires threshold", "threshold+imbalance",
     "F1 gained by a validation-tuned threshold (binary); balanced accuracy gained by "
     "logit adjustment of CE's argmax under a prior shift"),
]

# What each experiment's tables show (the selection metric comes from the settings).
TABLE_METRICS = {
    "classification": ["test_accuracy", "test_ece", "test_ece_scaled", "test_nll",
                       "test_nll_scaled"],
    "init_scale": ["test_steps_to_target", "test_reached_target", "test_accuracy"],
    "local_minima": ["failed", "test_accuracy"],
    "imbalance": ["test_balanced_accuracy", "worst_class_recall", "macro_f1", "test_accuracy"],
    "threshold": ["f1_at_0.5", "f1_at_tuned", "f1_gain", "auroc"],
    "many_classes": ["test_accuracy", "test_ece", "test_nll"],
    "label_noise": ["test_accuracy", "test_ece"],
}
MEDIAN_METRICS = {"test_steps_to_target"}


def load_results(out: pathlib.Path) -> dict:
  results = {}
  for path in sorted((out / "study").glob("*.json")):
    results[path.stem] = json.loads(path.read_text())
  return results


def _runs(results, names) -> list:
  runs = []
  for name in names.split("+"):
    runs += results.get(name, {}).get("runs", [])
  return runs


def _select(result, setting, loss) -> str:
  return result.get("settings", {}).get(setting, {}).get("select", {}).get(loss, "val_accuracy")


def _fmt(value, metric) -> str:
  if value is None:
    return "n/a"
  value += 0.0  # -0.0 prints as 0
  return f"{value:.0f}" if metric == "test_steps_to_target" else f"{value:.3f}"


def format_summary(s: dict, metric: str = "") -> str:
  if s.get("mean") is None:
    return "n/a"
  if s.get("low") is None:
    return _fmt(s["mean"], metric)
  return f"{_fmt(s['mean'], metric)} [{_fmt(s['low'], metric)}, {_fmt(s['high'], metric)}]"


def _choices(s: dict) -> str:
  ranked = sorted(s["choices"].items(), key=lambda kv: -kv[1])[:3]
  return ", ".join(f"{k} {v:.0%}" for k, v in ranked)


def _rows_of(result) -> list[tuple[str, str, str, str | None]]:
  """(setting, replicate, loss, key) of every table row: one per variant,
  and for families of several keys (claim 5) a pooled row first."""
  runs = [r for r in result["runs"] if r["phase"] in ("tune", "fresh")]
  rows = []
  for setting in _verdicts.settings_of(runs):
    for replicate in _verdicts.replicates_of([r for r in runs if r["setting"] == setting]):
      for loss in _verdicts.losses_of(runs, setting):
        keys = list(dict.fromkeys(r["key"] for r in runs if r["setting"] == setting
                                  and r["loss"] == loss))
        if len(keys) > 1:
          rows.append((setting, replicate, loss, None))
        rows += [(setting, replicate, loss, k) for k in keys]
  return rows


def experiment_table(result: dict, metrics: list[str]) -> list[str]:
  """Per setting, replicate and variant: the chosen rate, where it sits in
  the grid, how often the nested bootstrap chose each rate, and every
  metric with its selection-aware 95% interval."""
  runs = result["runs"]
  lines = ["| setting | rep. | loss | chosen | position | choices (bootstrap) | "
           + " | ".join(metrics) + " |", "|---|---|---|---|---|---|" + "---|" * len(metrics)]
  for setting, replicate, loss, key in _rows_of(result):
    chosen_runs = _verdicts.variant_runs(runs, setting=setting, replicate=replicate, loss=loss,
                                         key=key)
    if not chosen_runs:
      continue
    select = _select(result, setting, loss)
    cells = []
    first = None
    for metric in metrics:
      s = _protocol.summary(chosen_runs, select=select, metric=metric,
                            statistic="median" if metric in MEDIAN_METRICS else "mean")
      first = first or s
      cells.append(format_summary(s, metric))
    name = f"`{loss}`" + (f" {key}" if key else " (best variant)" if key is None else "")
    chosen_key, rate = first["chosen"]
    chosen = f"{rate:g}" + (f" ({chosen_key})" if key is None and chosen_key else "")
    lines.append(f"| {setting} | {replicate} | {name} | {chosen} | {first['position']} | "
                 f"{_choices(first)} | " + " | ".join(cells) + " |")
  return lines


def _evidence_lines(verdict) -> list[str]:
  lines = []
  for item in verdict["evidence"]:
    d = item["difference"]
    p = item.get("p_adjusted")
    lines.append(
        f"- [{item['replicate']}] {item['setting']}: {item['metric']} "
        f"({item['statistic']}), advantage of `{item['better']}` over `{item['other']}` "
        f"(> 0 favours `{item['better']}`) = {format_summary(d, item['metric'])}; "
        f"P(better) = {_probability(item['p_better'])}, Holm p {_p_value(p)}")
  return lines


def _p_value(p) -> str:
  if p is None:
    return "n/a"
  # The bootstrap resolves p-values down to 2 / RESAMPLES.
  return f"< {2 / _protocol.RESAMPLES:g}" if p == 0 else f"= {p:.3f}"


def _probability(p) -> str:
  return "n/a" if p is None else f"{p:.2f}"


def _verdict_cell(verdict: dict) -> str:
  """The verdict, or each replicate's when they disagree."""
  if verdict.get("stability") == _protocol.UNSTABLE:
    return "; ".join(f"{r}: **{o['verdict']}**" for r, o in verdict["replicates"].items())
  return f"**{verdict['verdict']}**"


def verdict_rows(results: dict) -> list[tuple]:
  """(claim number, squared error or None, verdict) for the table."""
  out = []
  for number, *_ in ARTICLE_ROWS:
    if number == 5:
      out.append((number, "mse", _verdicts.claim5(_runs(results, "imbalance"))))
    elif number == 6:
      out.append((number, "mse", _verdicts.claim6(_runs(results, "threshold"),
                                                  _runs(results, "imbalance"))))
    else:
      source = ARTICLE_ROWS[number - 1][3]
      for other in _experiments.SQUARED_ERRORS:
        out.append((number, other, _verdicts.CLAIM_RULES[number](_runs(results, source), other)))
  return out


def _failure_lines(result: dict) -> list[str]:
  """Claim 4: failure rates with Wilson intervals, recovery when trained
  longer, and the depth at which half the seeds fail."""
  runs = result["runs"]
  lines = ["| cell | rep. | loss | rate | position | failed (fresh seeds) | Wilson 95% | "
           "recovered at 5x |", "|---|---|---|---|---|---|---|---|"]
  half = {}
  for setting in _verdicts.settings_of(runs):
    described = result["settings"].get(setting, {})
    for replicate in _verdicts.replicates_of([r for r in runs if r["setting"] == setting]):
      for loss in _verdicts.losses_of(runs, setting):
        mine = _protocol.select_runs(runs, setting=setting, replicate=replicate, loss=loss)
        fresh = [r for r in mine if r["phase"] == "fresh"]
        if not fresh:
          continue
        failed = [r for r in fresh if r["metrics"].get("failed")]
        low, high = _protocol.wilson(len(failed), len(fresh))
        longer = {r["seed"]: r for r in mine if r["phase"] == "continued"}
        recovered = "—"
        if failed and longer:
          back = sum(1 for r in failed if r["seed"] in longer
                     and not longer[r["seed"]]["metrics"].get("failed"))
          recovered = f"{back}/{len(failed)}"
        tuned = [r for r in mine if r["phase"] == "tune"]
        chosen = _protocol.choose(tuned, "val_accuracy")
        lines.append(f"| {setting} | {replicate} | `{loss}` | {chosen[1]:g} | "
                     f"{_protocol.position(tuned, chosen)} | {len(failed)}/{len(fresh)} | "
                     f"[{low:.2f}, {high:.2f}] | {recovered} |")
        group = (described.get("activation"), described.get("init"), replicate, loss)
        half.setdefault(group, []).append((described.get("depth"), len(failed) / len(fresh)))
  lines += ["", "Depth at which half the fresh seeds fail (linear interpolation between the "
            "depths measured; '>' when no depth reached half):", "",
            "| activation | init | rep. | loss | depth |", "|---|---|---|---|---|"]
  for (activation, init, replicate, loss), points in half.items():
    lines.append(f"| {activation} | {init} | {replicate} | `{loss}` | {half_depth(points)} |")
  return lines


def half_depth(points: list[tuple[int, float]]) -> str:
  """The depth where the failure rate first crosses 1/2, interpolated."""
  points = sorted(points)
  if points[0][1] >= 0.5:
    return f"≤ {points[0][0]:g}"
  for (d0, f0), (d1, f1) in zip([(points[0][0], 0.0)] + points[:-1], points):
    if f1 >= 0.5:
      if f1 == f0 or d0 == d1:
        return f"{d1:g}"
      return f"{d0 + (0.5 - f0) / (f1 - f0) * (d1 - d0):.1f}"
  return f"> {points[-1][0]:g}"


def _plots(out: pathlib.Path, results: dict) -> dict[str, str]:
  """Writes the figures; returns {name: path relative to `out`}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figures = {}
  directory = out / "study" / "figures"
  directory.mkdir(parents=True, exist_ok=True)
  for stale in directory.glob("*.png"):
    stale.unlink()

  def save(fig, name):
    path = directory / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    figures[name] = str(path.relative_to(out))

  def tuning_curves(result, name, settings):
    """Validation metric against rate per loss, replicate A, chosen rate marked."""
    settings = [s for s in settings if any(r["setting"] == s for r in result["runs"])]
    if not settings:
      return
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
      for loss in _verdicts.losses_of(result["runs"], setting):
        select = _select(result, setting, loss)
        tuned = [r for r in result["runs"] if r["setting"] == setting and r["loss"] == loss
                 and r["replicate"] == "A" and r["phase"] == "tune"]
        first_key = tuned[0]["key"]  # of several (claim 5's variants): the first, "plain"
        tuned = [r for r in tuned if r["key"] == first_key]
        grouped = _protocol.cells(tuned)
        keys = sorted(grouped, key=lambda k: k[1])
        rates = [k[1] for k in keys]
        means = [np.nanmean([np.nan if r["diverged"] or r["metrics"].get(select) is None
                             else r["metrics"][select] for r in grouped[k]]) for k in keys]
        line, = ax.plot(rates, means, "o-", label=loss + (f" ({first_key})" if first_key else ""),
                        ms=3)
        chosen = _protocol.choose(tuned, select)
        ax.plot([chosen[1]], [means[rates.index(chosen[1])]], "*", ms=12, color=line.get_color())
      ax.set_xscale("log")
      ax.set_xlabel("learning rate (★ chosen; missing points diverged)")
      ax.set_title(f"{setting}: {select}", fontsize=9)
      ax.legend(fontsize=7)
    save(fig, name)

  if "classification" in results:
    result = results["classification"]
    tuning_curves(result, "claims_1_2_tuning_curves", _verdicts.settings_of(result["runs"]))
  if "init_scale" in results:
    result = results["init_scale"]
    settings = _verdicts.settings_of(result["runs"])
    tuning_curves(result, "claim_3_tuning_curves", [s for s in settings if "std 4" in s][:4])
    groups = {}
    for setting in settings:
      d = result["settings"][setting]
      if d.get("init") != "normal":
        continue
      for loss in _verdicts.losses_of(result["runs"], setting):
        tuned = _verdicts.variant_runs(result["runs"], setting=setting, replicate="A", loss=loss)
        s = _protocol.summary(tuned, select="val_speed", metric="test_accuracy")
        steps = _protocol.summary(tuned, select="val_speed", metric="test_steps_to_target",
                                  statistic="median")
        groups.setdefault(f"{d['dataset']} {d['model']}", {}).setdefault(loss, []).append(
            (d["init_scale"], s["mean"], steps["mean"]))
    fig, axes = plt.subplots(2, max(1, len(groups)), figsize=(3.4 * max(1, len(groups)), 6),
                             squeeze=False)
    colours = {}
    for column, (model, by_loss) in enumerate(groups.items()):
      for loss, points in by_loss.items():
        points.sort()
        colour = colours.setdefault(loss, f"C{len(colours)}")
        axes[0][column].plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3,
                             color=colour, label=loss)
        axes[1][column].plot([p[0] for p in points], [p[2] for p in points], "o-", ms=3,
                             color=colour)
      axes[0][column].set_title(f"Claim 3: {model}", fontsize=9)
      axes[1][column].set_xlabel("initial weight std (absolute)")
      for ax in (axes[0][column], axes[1][column]):
        ax.set_xscale("log")
    axes[0][0].set_ylabel("final test accuracy")
    axes[1][0].set_ylabel("median steps to target\n(budget + interval = missed)")
    axes[0][0].legend(fontsize=7)
    save(fig, "claim_3_accuracy_vs_init_scale")
    saturating = [s for s in settings if "std 4" in s]
    if saturating:
      fig, axes = plt.subplots(1, len(saturating), figsize=(4 * len(saturating), 3.4),
                               squeeze=False)
      for ax, setting in zip(axes[0], saturating):
        for loss in _verdicts.losses_of(result["runs"], setting):
          tuned = _verdicts.variant_runs(result["runs"], setting=setting, replicate="A",
                                         loss=loss)
          key, rate = _protocol.choose(tuned, "val_speed")
          curve = result["curves"].get(f"{setting}|A|{loss}|{key}|{rate:g}")
          if curve:
            norms = [np.nan if v is None else v for v in curve["test_misclassified_grad_norm"]]
            ax.plot(curve["eval_steps"], norms, label=f"{loss} (lr {rate:g})")
        ax.set_yscale("log")
        ax.set_title(f"{setting}", fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
      axes[0][0].set_ylabel("|dL/dz| on misclassified test examples")
      save(fig, "claim_3_gradient_on_misclassified")
  if "local_minima" in results:
    result = results["local_minima"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    curves = {}
    for setting in _verdicts.settings_of(result["runs"]):
      d = result["settings"][setting]
      for loss in _verdicts.losses_of(result["runs"], setting):
        fresh = [r for r in _protocol.select_runs(result["runs"], setting=setting,
                                                  replicate="A", loss=loss)
                 if r["phase"] == "fresh"]
        if fresh:
          rate = np.mean([bool(r["metrics"].get("failed")) for r in fresh])
          curves.setdefault((d["activation"], d["init"], loss), []).append((d["depth"], rate))
    for ax, activation in zip(axes, ("sigmoid", "tanh")):
      for (act, init, loss), points in curves.items():
        if act == activation:
          points.sort()
          ax.plot([p[0] for p in points], [p[1] for p in points], "o-" if init == "lecun"
                  else "s--", ms=3, label=f"{loss}, {init}")
      ax.set_title(f"Claim 4: failure rate vs depth ({activation}, replicate A)", fontsize=9)
      ax.set_xlabel("hidden layers")
      ax.set_ylim(-0.05, 1.05)
      if ax.lines:  # a quick study trains one activation only
        ax.legend(fontsize=6)
    save(fig, "claim_4_failure_vs_depth")
  if "imbalance" in results:
    result = results["imbalance"]
    tuning_curves(result, "claim_5_tuning_curves", _verdicts.settings_of(result["runs"]))
  return figures


def analytic_gradient_norms(num_classes: int = 10):
  """|dL/dz| for logits (m, 0, ..., 0) with the true class first, for a range
  of margins m, computed with lossjax's own losses."""
  import jax
  import jax.numpy as jnp

  from lossjax import losses
  margins = np.linspace(-8, 8, 161)
  logits = jnp.zeros((len(margins), num_classes)).at[:, 0].set(jnp.asarray(margins, jnp.float32))
  labels = jnp.zeros(len(margins), jnp.int32)
  norms = {}
  for name in ("cross_entropy", "mse", "brier"):
    fn = losses.get(name)
    grads = jax.vmap(jax.grad(lambda z, y: fn(z[None], y[None])[0]))(logits, labels)
    norms[name] = np.linalg.norm(np.asarray(grads), axis=-1)
  return margins, norms


def _analytic_gradient_sentence() -> str:
  margins, norms = analytic_gradient_norms()
  at = lambda m: {name: float(np.interp(m, margins, n)) for name, n in norms.items()}
  wrong, right = at(-4.0), at(4.0)
  fmt = lambda d: ", ".join(f"`{k}` {v:.3f}" for k, v in d.items())
  return ("The gradient argument, computed with lossjax's losses (logits (m, 0, ..., 0), "
          f"C = 10): at margin m = -4 (wrong: the true class 4 below the others) |dL/dz| is "
          f"{fmt(wrong)}; at m = +4 (right) {fmt(right)}. Squared error on softmax "
          "probabilities (Brier) has a vanishing gradient on confidently wrong predictions; "
          "squared error on raw logits (logit-MSE) has none, which is why the two are "
          "separate rows everywhere.")


def _protocol_lines(results: dict) -> list[str]:
  meta = next(iter(results.values()))["meta"]
  env, budget = meta["environment"], meta["budget"]
  total = sum(r["meta"]["seconds"] for r in results.values())
  rates = budget["learning_rates"]
  return [
      f"- Data: `{meta['dataset']}` (real MNIST digits), scikit-learn digits and breast_cancer, "
      f"seeded synthetic tasks; machine: {env['cpu_count']} CPUs ({env['machine']}), backend "
      f"`{env['backend']}`, JAX {env['jax']}, optax {env['optax']}, flax {env['flax']}.",
      f"- Tuning: every variant of every setting picks its learning rate on the validation "
      f"split from half-decade steps {rates[0]:g} to {rates[-1]:g}; when the best is an end of "
      f"the grid the grid is extended by a decade in that direction (new runs only, at most "
      f"{budget['max_extensions']} times) until it is interior or the next rate diverges. The "
      "tables mark each choice `interior`, `edge` (a stability edge: the next rate up "
      "diverged) or `grid end` (extensions spent). SGD with momentum 0.9, batch 128 "
      "(32 on digits, 64 on the binary tasks), constant rate.",
      f"- Intervals: a nested bootstrap ({_protocol.RESAMPLES} replicates): each replicate "
      "resamples the seeds of every (variant, rate) cell, redoes the validation argmax and "
      "reads the test statistic at the re-chosen rate, so the noise of the choice is inside "
      "every 95% interval; 'choices' says how often each rate was chosen. Comparisons give "
      "P(A better than B) and a two-sided bootstrap p-value, Holm-corrected over the "
      "settings of one verdict; a side wins a setting when its adjusted p < 0.05. Claim 4 "
      f"instead tunes on {budget['failure_tune_seeds']} seeds a rate and measures failure "
      f"on {budget['failure_seeds']} fresh seeds at the chosen rate (Wilson intervals).",
      f"- Stability: every verdict is computed in two replicates: A, and B with fresh initial "
      "seeds, another batch order and another random train/validation/test split (another "
      "draw for synthetic data). `firm`: both agree; `unstable`: they do not, and both "
      "outcomes are shown.",
      f"- Seeds: {budget['seeds']} per cell; compute: {total / 60:.1f} minutes for all "
      "experiments.", ""]


def write_report(out) -> pathlib.Path:
  out = pathlib.Path(out)
  results = load_results(out)
  stale = [name for name, r in results.items() if "runs" not in r]
  if stale:
    raise ValueError(f"result files from the first edition of the study (no 'runs'): "
                     f"{', '.join(stale)} under {out / 'study'}; rerun `lossjax study` "
                     "after removing them.")
  figures = _plots(out, results) if results else {}
  modes = {r["meta"]["mode"] for r in results.values()}
  lines = ["# Cross-entropy vs mean squared error: the article's claims, measured", "",
           "Generated by `lossjax report` from the result files in `study/` "
           "(written by `lossjax study`). Do not edit by hand.", ""]
  if "quick" in modes:
    lines += ["> **Quick mode**: reduced sizes for a pipeline check; these numbers are not "
              "evidence.", ""]
  if results:
    lines += _protocol_lines(results)

  rows = verdict_rows(results)
  lines += ["## The article's table, row by row", "",
            "Each claim about \"MSE\" is judged against squared error on logits (logit-MSE, "
            "`mse`) and on softmax probabilities (Brier, `brier`) separately.", "",
            "| # | article says | measured with | MSE | verdict | stability | why |",
            "|---|---|---|---|---|---|---|"]
  for number, other, verdict in rows:
    _, scenario, says, _, measure = ARTICLE_ROWS[number - 1]
    lines.append(f"| {number} | {scenario}: {says} | {measure} | "
                 f"{_verdicts.SQUARED_ERROR_NAMES[other]} | {_verdict_cell(verdict)} | "
                 f"{verdict['stability'] or '—'} | {verdict['why']} |")
  lines.append("")

  shown = {}
  for number, scenario, says, source, measure in ARTICLE_ROWS:
    lines += [f"## Claim {number}: {scenario} ({says})", ""]
    for n, other, verdict in rows:
      if n != number:
        continue
      lines += [f"Against {_verdicts.SQUARED_ERROR_NAMES[other]}: {_verdict_cell(verdict)} "
                f"({verdict['stability'] or 'no data'}) — {verdict['why']}.", ""]
      lines += _evidence_lines(verdict) + [""]
    if number == 3:
      lines += [_analytic_gradient_sentence(), ""]
    for name in source.split("+"):
      if name in shown:
        lines += [f"Experiment `{name}`: see the tables under Claim {shown[name]}.", ""]
      elif name in results:
        shown[name] = number
        lines += [f"Experiment `{name}` ({results[name]['meta']['seconds']:.0f} s). Each "
                  "metric at the variant's validation-chosen rate, with its selection-aware "
                  "95% interval (medians for steps):", ""]
        lines += experiment_table(results[name], TABLE_METRICS[name]) + [""]
        if name == "local_minima":
          lines += _failure_lines(results[name]) + [""]
    for figure, path in figures.items():
      if figure.startswith((f"claim_{number}_", f"claims_{number}_")) or (
          number == 2 and figure.startswith("claims_1_2")):
        lines += [f"![{figure}]({path})", ""]
  for name, title in (("many_classes", "Beyond the article: many classes"),
                      ("label_noise", "Beyond the article: label noise")):
    if name in results:
      lines += [f"## {title}", "", f"Experiment `{name}` ({results[name]['meta']['seconds']:.0f} "
                "s, replicate A only: no verdict rests on it):", ""]
      lines += experiment_table(results[name], TABLE_METRICS[name]) + [""]
  return _io.write_text_atomically(out / "REPORT.md", "\n".join(lines) + "\n")
