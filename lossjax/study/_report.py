"""REPORT.md and its figures, regenerated from the study's result files only."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lossjax import _io
from lossjax.study import _stats, _verdicts

ARTICLE_ROWS = [
    (1, "Suitable for classification", "CE ✅, MSE ❌", "classification",
     "test accuracy, each loss at its own validated learning rate"),
    (2, "Probabilistic output required", "CE ✅, MSE ❌", "classification",
     "ECE (15 bins), NLL, Brier, before and after temperature scaling"),
    (3, "Convergence speed", "CE fast, MSE slower", "classification+init_scale",
     "steps to test accuracy 0.9 (not reached = budget + one interval)"),
    (4, "Risk of local minima", "CE lower, MSE higher", "local_minima",
     "fraction of 20 seeds reaching test accuracy 0.9, by depth and activation"),
    (5, "Handling imbalanced classes", "CE better, MSE needs extra methods", "imbalance",
     "balanced accuracy and minority-class recall on long-tailed data"),
    (6, "Threshold dependency", "CE none, MSE requires threshold", "threshold",
     "F1 at 0.5 vs at a validation-tuned threshold; AUROC"),
]

HEADLINE_METRICS = {
    "classification": ["test_accuracy", "test_ece", "test_ece_scaled", "test_nll",
                       "test_nll_scaled", "test_brier", "steps_to_target"],
    "init_scale": ["test_accuracy", "steps_to_target", "reached_target"],
    "local_minima": ["reached_target", "test_accuracy"],
    "imbalance": ["test_balanced_accuracy", "minority_recall", "test_accuracy"],
    "threshold": ["f1_at_0.5", "f1_at_tuned", "auroc", "tuned_threshold"],
    "many_classes": ["test_accuracy", "test_ece", "test_nll"],
    "label_noise": ["test_accuracy", "test_ece"],
}


# Figures of per-setting means with 95% intervals: experiment -> (file, panels).
POINT_FIGURES = {
    "classification": ("claims_1_2_accuracy_calibration", [
        ("test_accuracy", "Claim 1: test accuracy (95% CI)"),
        ("test_ece", "Claim 2: ECE as trained"),
        ("test_ece_scaled", "Claim 2: ECE after temperature scaling")]),
    "local_minima": ("claim_4_local_minima", [
        ("reached_target", "Claim 4: fraction of seeds reaching test accuracy 0.9")]),
    "imbalance": ("claim_5_imbalance", [
        ("test_balanced_accuracy", "Claim 5: balanced accuracy"),
        ("minority_recall", "Claim 5: recall of the 3 rarest classes")]),
    "threshold": ("claim_6_threshold", [
        ("f1_at_0.5", "Claim 6: F1 at threshold 0.5"),
        ("f1_at_tuned", "F1 at the validation-tuned threshold"),
        ("auroc", "AUROC")]),
}


def load_results(out: pathlib.Path) -> dict:
  results = {}
  for path in sorted((out / "study").glob("*.json")):
    results[path.stem] = json.loads(path.read_text())
  return results


def _rows(results, names) -> list:
  rows = []
  for name in names.split("+"):
    rows += results.get(name, {}).get("rows", [])
  return rows


def _table(rows, metrics) -> list[str]:
  lines = ["| setting | loss | lr | " + " | ".join(metrics) + " |",
           "|---|---|---|" + "---|" * len(metrics)]
  for setting in _verdicts.settings_of(rows):
    for loss in _verdicts.losses_of(rows, setting):
      lr = next(r["learning_rate"] for r in rows if r["setting"] == setting and r["loss"] == loss)
      cells = []
      for metric in metrics:
        ci = _stats.mean_ci(_verdicts.values(rows, setting=setting, loss=loss, metric=metric))
        fmt = "{:.0f}" if metric == "steps_to_target" else "{:.3f}"
        cells.append(_stats.format_ci(ci, fmt) if ci["n"] else "—")
      lines.append(f"| {setting} | `{loss}` | {lr:g} | " + " | ".join(cells) + " |")
  return lines


def _evidence_lines(verdict) -> list[str]:
  lines = []
  for item in verdict["evidence"]:
    lines.append(f"- {item['setting']}: {item['metric']}, advantage of `{item['better']}` over "
                 f"`{item['other']}` (> 0 favours `{item['better']}`) = "
                 f"{_stats.format_ci(item['difference'])}")
  return lines


def _plots(out: pathlib.Path, results: dict) -> dict[str, str]:
  """Writes the figures; returns {name: relative path}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figures = {}
  directory = out / "study" / "figures"
  directory.mkdir(parents=True, exist_ok=True)

  def save(fig, name):
    path = directory / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    figures[name] = str(path.relative_to(out))

  def points(ax, rows, metric, title):
    settings = _verdicts.settings_of(rows)
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    for j, loss in enumerate(losses):
      xs, ys, lows, highs = [], [], [], []
      for i, setting in enumerate(settings):
        ci = _stats.mean_ci(_verdicts.values(rows, setting=setting, loss=loss, metric=metric))
        if ci["n"]:
          xs.append(i + 0.12 * (j - len(losses) / 2))
          ys.append(ci["mean"])
          # One seed has no interval: drawn as a bare point.
          lows.append(ci["mean"] - ci["low"] if ci["low"] is not None else 0.0)
          highs.append(ci["high"] - ci["mean"] if ci["high"] is not None else 0.0)
      ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", capsize=3, label=loss)
    ax.set_xticks(range(len(settings)), settings, rotation=20, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)

  for experiment, (figure, panels) in POINT_FIGURES.items():
    if experiment not in results:
      continue
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 3.8))
    for ax, (metric, title) in zip(np.atleast_1d(axes), panels):
      points(ax, results[experiment]["rows"], metric, title)
    save(fig, figure)

  if "classification" in results:
    curves = results["classification"]["curves"]
    first = next(iter(curves))
    fig, axes = plt.subplots(1, len(curves[first]), figsize=(4 * len(curves[first]), 3.6))
    for ax, (loss, curve) in zip(np.atleast_1d(axes), curves[first].items()):
      rel = curve.get("reliability", {})
      if rel:
        ax.bar(np.arange(15) / 15 + 1 / 30, np.nan_to_num(rel["accuracy"]), width=1 / 15,
               edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
      ax.set_title(f"{first}: {loss}", fontsize=9)
      ax.set_xlabel("confidence")
    save(fig, "claim_2_reliability")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for loss, curve in curves[first].items():
      axes[0].plot(curve["eval_steps"], curve["test_accuracy"], label=loss)
      axes[1].plot(curve["eval_steps"], curve["misclassified_grad_norm"], label=loss)
    axes[0].set_title(f"Claim 3: test accuracy vs step ({first})", fontsize=10)
    axes[1].set_title("measured |dL/dz| on misclassified test examples", fontsize=10)
    axes[1].set_yscale("log")
    margins, analytic = analytic_gradient_norms()
    for loss, norms in analytic.items():
      axes[2].plot(margins, norms, label=loss)
    axes[2].set_title("analytic |dL/dz| vs true-class margin (C=10)", fontsize=10)
    axes[2].set_xlabel("logit margin of the true class (< 0: misclassified)")
    for ax in axes:
      ax.legend(fontsize=7)
    save(fig, "claim_3_convergence")

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
          f"{fmt(wrong)}; at m = +4 (right) "
          f"{fmt(right)}. Cross-entropy's gradient on a wrong prediction is indeed far larger "
          "than squared error on softmax probabilities (Brier), whose gradient vanishes when "
          "the softmax saturates; squared error on raw logits has no such plateau.")


def write_report(out) -> pathlib.Path:
  out = pathlib.Path(out)
  results = load_results(out)
  figures = _plots(out, results) if results else {}
  modes = {r["meta"]["mode"] for r in results.values()}
  lines = ["# Cross-entropy vs mean squared error: the article's claims, measured", "",
           "Generated by `lossjax report` from the result files in `study/` "
           "(written by `lossjax study`). Do not edit by hand.", ""]
  if "quick" in modes:
    lines += ["> **Quick mode**: reduced sizes for a pipeline check; these numbers are not "
              "evidence.", ""]
  if results:
    meta = next(iter(results.values()))["meta"]
    env, budget = meta["environment"], meta["budget"]
    total = sum(r["meta"]["seconds"] for r in results.values())
    lines += [
        f"- Data: `{meta['dataset']}` (real MNIST digits), scikit-learn digits and breast_cancer, "
        "seeded synthetic tasks; machine: "
        f"{env['cpu_count']} CPUs ({env['machine']}), backend `{env['backend']}`, JAX {env['jax']}, "
        f"optax {env['optax']}, flax {env['flax']}.",
        f"- Protocol: each loss picks its learning rate from {budget['learning_rates']} on the "
        f"validation split (SGD, momentum 0.9, batch 128 unless stated); {budget['seeds']} seeds "
        f"({budget['failure_seeds']} for failure rates); 95% bootstrap intervals over seeds; "
        "the test split is used only for the reported numbers.",
        f"- Compute: {total / 60:.1f} minutes for all experiments.", ""]

  lines += ["## The article's table, row by row", "",
            "| # | article says | measured with | verdict | why |", "|---|---|---|---|---|"]
  verdicts = {}
  for number, scenario, says, source, measure in ARTICLE_ROWS:
    rows = _rows(results, source if number != 3 else "classification+init_scale")
    verdict = _verdicts.CLAIMS[number](rows) if rows else {
        "verdict": _verdicts.NO_DATA, "why": "experiment not run", "evidence": []}
    verdicts[number] = verdict
    lines.append(f"| {number} | {scenario}: {says} | {measure} | **{verdict['verdict']}** | "
                 f"{verdict['why']} |")
  lines.append("")

  shown = {}
  for number, scenario, says, source, measure in ARTICLE_ROWS:
    lines += [f"## Claim {number}: {scenario} ({says})", "",
              f"Verdict: **{verdicts[number]['verdict']}** — {verdicts[number]['why']}.", ""]
    lines += _evidence_lines(verdicts[number]) + [""]
    if number == 3:
      lines += [_analytic_gradient_sentence(), ""]
    for name in source.split("+"):
      if name in shown:
        lines += [f"Experiment `{name}`: see the table under Claim {shown[name]}.", ""]
      elif name in results:
        shown[name] = number
        lines += [f"Experiment `{name}` ({results[name]['meta']['seconds']:.0f} s; mean "
                  "[95% CI] over seeds at the chosen learning rate):", ""]
        lines += _table(results[name]["rows"], HEADLINE_METRICS[name]) + [""]
    for figure, path in figures.items():
      if figure.startswith((f"claim_{number}", f"claims_{number}")) or (
          number == 2 and figure.startswith("claims_1_2")):
        lines += [f"![{figure}]({path})", ""]
  for name, title in (("many_classes", "Beyond the article: many classes"),
                      ("label_noise", "Beyond the article: label noise")):
    if name in results:
      lines += [f"## {title}", "", f"Experiment `{name}` ({results[name]['meta']['seconds']:.0f} s):", ""]
      lines += _table(results[name]["rows"], HEADLINE_METRICS[name]) + [""]
  return _io.write_text_atomically(out / "REPORT.md", "\n".join(lines) + "\n")
