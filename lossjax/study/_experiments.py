"""One experiment per claim of the article; each returns long-format rows.

A row is ``{"setting", "loss", "seed", "learning_rate", "metric", "value"}``:
one run's final measurement at the learning rate its loss chose on the
validation split. Curves for figures ride along under ``curves``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from lossjax import data, metrics, models, train


@dataclasses.dataclass(frozen=True)
class Budget:
  """How big every experiment is; `quick` shrinks everything for a smoke run."""
  seeds: int = 5
  failure_seeds: int = 20
  learning_rates: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
  steps: int = 600  # mnist-sized MLP runs
  long_steps: int = 1000  # the headline mnist MLP comparison (claims 1-3)
  eval_interval: int = 20
  width: int = 256
  small_steps: int = 1000  # digits / synthetic tasks, cheap per step
  # The CNN is ~20x slower per step than the MLP on a 2-core CPU (~50
  # run-steps/s): it gets the MLP's rates and steps, with the CNN's own knobs
  # to shrink it on slower machines.
  cnn_seeds: int = 5
  cnn_learning_rates: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
  cnn_steps: int = 600
  quick: bool = False

  @classmethod
  def quick_budget(cls) -> "Budget":
    return cls(seeds=2, failure_seeds=3, learning_rates=(0.03, 0.3), steps=40, long_steps=40,
               eval_interval=20, width=32, small_steps=40, cnn_seeds=1,
               cnn_learning_rates=(0.1,), cnn_steps=20, quick=True)


def _config(budget: Budget, *, dataset: str, loss: str, seeds: int | None = None,
            steps: int | None = None, batch_size: int = 128, learning_rates=None,
            **overrides) -> train.TrainConfig:
  model = overrides.pop("model", models.ModelConfig(width=budget.width))
  return train.TrainConfig(
      dataset=dataset, loss=loss, model=model, batch_size=batch_size,
      steps=steps or budget.steps, eval_interval=budget.eval_interval,
      seeds=tuple(range(seeds or budget.seeds)),
      learning_rates=learning_rates or budget.learning_rates,
      targets=(0.8, 0.85, 0.9, 0.92, 0.95), **overrides)


def _minority_classes(dataset: data.Dataset, count: int = 3) -> np.ndarray:
  return np.argsort(dataset.class_counts(), kind="stable")[:count]


def run_setting(setting: str, config: train.TrainConfig, dataset: data.Dataset, *,
                select: str = "val_accuracy", target: float | None = 0.9,
                binary: bool = False, posthoc: bool = True,
                log: Callable[[str], None] = print) -> tuple[list, dict]:
  """Trains the grid of `config`, picks the learning rate on validation, and
  returns the chosen runs' rows and the curves of their training.

  `posthoc=False` skips what needs every run's final logits (temperature
  scaling, minority recall, the reliability curve): for tens of thousands of
  classes those logits do not fit in memory."""
  started = time.perf_counter()
  trainer = train.Trainer(config, dataset=dataset)
  history = trainer.run(keep_final_logits=posthoc)
  if select == "val_auroc":
    scores = [_binary_scores(history.final_logits["val"][r]) for r in range(history.num_runs)]
    val_auroc = np.array([metrics.auroc(s, dataset.y_val) if np.all(np.isfinite(s)) else np.nan
                          for s in scores])
    history.metrics["val_auroc"] = np.repeat(val_auroc[:, None], len(history.eval_steps), axis=1)
  chosen = history.best_learning_rate(select)
  runs = history.runs_at(chosen)
  rows = []

  def add(run, metric, value):
    rows.append({"setting": setting, "loss": config.loss, "seed": int(history.seeds[run]),
                 "learning_rate": float(chosen), "metric": metric,
                 "value": None if value is None or not np.isfinite(value) else float(value)})

  budget_steps = int(history.eval_steps[-1])
  minority = _minority_classes(dataset)
  for run in runs:
    add(run, "diverged", float(history.diverged[run]))
    for name in ("accuracy", "balanced_accuracy", "nll", "ece", "brier"):
      add(run, f"test_{name}", history.metrics[f"test_{name}"][run, -1])
    if target is not None:
      reached = history.metrics["test_accuracy"][run] >= target
      add(run, "reached_target", float(reached.any()))
      # Not reached: counted as one interval past the budget (a lower bound).
      steps = history.eval_steps[reached.argmax()] if reached.any() else budget_steps + config.eval_interval
      add(run, "steps_to_target", float(steps))
    if not posthoc:
      continue
    val_logits = history.final_logits["val"][run]
    test_logits = history.final_logits["test"][run]
    if not (np.all(np.isfinite(val_logits)) and np.all(np.isfinite(test_logits))):
      continue
    temperature = metrics.fit_temperature(val_logits, dataset.y_val)
    scaled = test_logits / temperature
    add(run, "temperature", temperature)
    add(run, "test_ece_scaled", metrics.expected_calibration_error(scaled, dataset.y_test))
    add(run, "test_nll_scaled", metrics.nll(scaled, dataset.y_test))
    add(run, "test_brier_scaled", metrics.brier(scaled, dataset.y_test))
    recall = np.asarray(metrics.per_class_recall(test_logits, dataset.y_test, dataset.num_classes))
    add(run, "minority_recall", np.nanmean(recall[minority]))
    if binary:
      test_scores, val_scores = _binary_scores(test_logits), _binary_scores(val_logits)
      threshold = metrics.best_f1_threshold(val_scores, dataset.y_val)
      add(run, "auroc", metrics.auroc(test_scores, dataset.y_test))
      add(run, "f1_at_0.5", metrics.f1_at_threshold(test_scores, dataset.y_test, 0.5))
      add(run, "f1_at_tuned", metrics.f1_at_threshold(test_scores, dataset.y_test, threshold))
      add(run, "tuned_threshold", threshold)

  curves = {
      "eval_steps": history.eval_steps.tolist(),
      "test_accuracy": np.nanmean(history.metrics["test_accuracy"][runs], axis=0).tolist(),
      "misclassified_grad_norm": np.nanmean(
          history.metrics["test_misclassified_grad_norm"][runs], axis=0).tolist(),
      "reliability": (_reliability(history.final_logits["test"][runs], dataset.y_test)
                      if posthoc else None),
  }
  variant = config.loss + (" (class-balanced)" if config.class_balance_beta else "") + (
      f" (after {config.pretrain_loss})" if config.pretrain_loss else "")
  log(f"  {setting} / {variant}: lr {chosen:g}, test acc "
      f"{np.nanmean(history.metrics['test_accuracy'][runs, -1]):.3f}, "
      f"{time.perf_counter() - started:.0f}s")
  return rows, curves


def _binary_scores(two_logits: np.ndarray) -> np.ndarray:
  """Probability of the positive class from the [0, z] logits of a binary model,
  as sigmoid(z) = exp(-log(1 + exp(-z))) in float64: in float32 the sigmoid
  rounds to 1.0 above z ~ 17, tying confident examples that AUROC and the
  threshold search must tell apart, and exp(-z) overflows below z ~ -89."""
  z = (two_logits[:, 1] - two_logits[:, 0]).astype(np.float64)
  return np.exp(-np.logaddexp(0.0, -z))


def _reliability(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
  """Accuracy and confidence per equal-width confidence bin, pooled over runs."""
  finite = [l for l in logits if np.all(np.isfinite(l))]
  if not finite:
    return {}
  logits = np.concatenate(finite)
  labels = np.tile(labels, len(finite))
  shifted = logits - logits.max(-1, keepdims=True)
  probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
  confidence, predicted = probs.max(-1), probs.argmax(-1)
  index = np.asarray(metrics.confidence_bins(confidence, bins))
  counts = np.bincount(index, minlength=bins)
  correct = np.bincount(index, weights=(predicted == labels), minlength=bins)
  conf = np.bincount(index, weights=confidence, minlength=bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    return {"count": counts.tolist(), "accuracy": (correct / counts).tolist(),
            "confidence": (conf / counts).tolist()}


# The experiments. Each returns {"rows": [...], "curves": {setting: {loss: ...}}}.

def _collect(settings, budget, log) -> dict:
  rows, curves = [], {}
  for setting, dataset, configs, kwargs in settings:
    for config in configs:
      setting_rows, setting_curves = run_setting(setting, config, dataset, log=log, **kwargs)
      rows += setting_rows
      curves.setdefault(setting, {})[config.loss] = setting_curves
  return {"rows": rows, "curves": curves}


def classification(budget: Budget, dataset_name: str, log) -> dict:
  """Claims 1-3: accuracy, calibration and speed of CE vs squared errors."""
  base = data.load(dataset_name)
  digits = data.load("digits")
  loss_names = ("cross_entropy", "mse", "brier")
  cnn = models.ModelConfig("cnn", width=120 if budget.width > 64 else 32)
  settings = [
      (f"{dataset_name} MLP", base,
       [_config(budget, dataset=dataset_name, loss=l, steps=budget.long_steps)
        for l in loss_names], {}),
      (f"{dataset_name} CNN", base,
       [_config(budget, dataset=dataset_name, loss=l, model=cnn, steps=budget.cnn_steps,
                seeds=budget.cnn_seeds, learning_rates=budget.cnn_learning_rates)
        for l in loss_names], {}),
      ("digits MLP", digits,
       [_config(budget, dataset="digits", loss=l, batch_size=32, steps=budget.small_steps)
        for l in loss_names], {}),
  ]
  return _collect(settings, budget, log)


def init_scale(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 3: sensitivity to a small or large ("confident") initial scale."""
  base = data.load(dataset_name)
  settings = []
  for scale in ((0.25, 4.0) if budget.quick else (0.25, 1.0, 4.0)):
    model = models.ModelConfig(width=budget.width, init_scale=scale)
    settings.append((f"init scale {scale:g}", base,
                     [_config(budget, dataset=dataset_name, loss=l, model=model)
                      for l in ("cross_entropy", "mse", "brier")], {}))
  return _collect(settings, budget, log)


def local_minima(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 4: fraction of seeds reaching the target by depth and activation,
  and squared error fine-tuned from a cross-entropy start (Golik et al.)."""
  digits = data.load("digits")
  # Quick: the one depth where the article places the difference (a pipeline check).
  depths = (4,) if budget.quick else (1, 2, 4, 8)
  activations = ("tanh",) if budget.quick else ("sigmoid", "tanh")
  settings = []
  for activation in activations:
    for depth in depths:
      model = models.ModelConfig(depth=depth, width=64, activation=activation)
      common = dict(dataset="digits", batch_size=32, steps=budget.small_steps,
                    seeds=budget.failure_seeds, model=model)
      configs = [_config(budget, loss="cross_entropy", **common),
                 _config(budget, loss="mse", **common),
                 _config(budget, loss="brier", **common)]
      settings.append((f"{activation} depth {depth}", digits, configs, {"target": 0.9}))
  rows_curves = _collect(settings, budget, log)
  # Squared error after a CE start, at the deepest nets.
  for activation in activations:
    model = models.ModelConfig(depth=depths[-1], width=64, activation=activation)
    config = _config(budget, loss="mse", dataset="digits", batch_size=32,
                     steps=budget.small_steps, seeds=budget.failure_seeds, model=model,
                     pretrain_loss="cross_entropy", pretrain_steps=budget.small_steps // 4)
    rows, curves = run_setting(f"{activation} depth {depths[-1]}", config, digits, target=0.9, log=log)
    for row in rows:
      row["loss"] = "mse_after_ce"
    rows_curves["rows"] += rows
    rows_curves["curves"][f"{activation} depth {depths[-1]}"]["mse_after_ce"] = curves
  return rows_curves


def imbalance(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 5: long-tailed data; CE, class-balanced CE, focal, MSE, class-balanced MSE."""
  settings = []
  for factor in ((100.0,) if budget.quick else (10.0, 100.0)):
    dataset = data.load(dataset_name, imbalance=factor)
    variants = [("cross_entropy", None), ("cross_entropy", 0.999), ("focal", None),
                ("mse", None), ("mse", 0.999)]
    configs = [_config(budget, dataset=dataset_name, loss=l, imbalance=factor,
                       class_balance_beta=beta) for l, beta in variants]
    settings.append((f"imbalance {factor:g}", dataset, configs,
                     {"select": "val_balanced_accuracy", "target": None}))
  result = {"rows": [], "curves": {}}
  for setting, dataset, configs, kwargs in settings:
    for config in configs:
      rows, curves = run_setting(setting, config, dataset, log=log, **kwargs)
      label = config.loss + ("_balanced" if config.class_balance_beta else "")
      for row in rows:
        row["loss"] = label
      result["rows"] += rows
      result["curves"].setdefault(setting, {})[label] = curves
  return result


def threshold(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 6: F1 at 0.5 vs at a validation-tuned threshold, and AUROC."""
  settings = []
  tasks = [("rare_positive 2%", lambda: data.load("rare_positive", positive_rate=0.02)),
           ("breast_cancer", lambda: data.load("breast_cancer"))]
  # Quick: the 2%-positive task alone (a pipeline check).
  for name, load in tasks[:1] if budget.quick else tasks:
    dataset = load()
    option = {"dataset_options": {"positive_rate": 0.02}} if name.startswith("rare") else {}
    dataset_id = "rare_positive" if name.startswith("rare") else "breast_cancer"
    configs = [_config(budget, dataset=dataset_id, loss=l, batch_size=64,
                       steps=budget.small_steps, model=models.ModelConfig(width=32), **option)
               for l in ("binary_cross_entropy", "binary_mse", "binary_focal")]
    settings.append((name, dataset, configs,
                     {"select": "val_auroc", "target": None, "binary": True}))
  return _collect(settings, budget, log)


MANY_CLASSES_LOSSES = ("cross_entropy", "mse", "mse_rescaled")


def many_classes(budget: Budget, dataset_name: str, log) -> dict:
  """Beyond the article: CE vs plain and rescaled (Hui & Belkin) MSE, C up to
  32768, every model's last layer and loss trained as a fused head
  (`lossjax.fused`: no [batch, C] logits)."""
  settings = []
  for classes in ((100,) if budget.quick else (100, 1000)):
    # spread 0.7: a nearest-centre classifier would score ~90% (C=100) and ~70%
    # (C=1000), so the losses have room to differ.
    options = {"num_classes": classes, "num_examples": 20 * classes, "dim": 64, "spread": 0.7}
    dataset = data.load("blobs", **options)
    configs = [_config(budget, dataset="blobs", loss=l, dataset_options=options,
                       model=models.ModelConfig(width=budget.width), fused_head=True)
               for l in MANY_CLASSES_LOSSES]
    settings.append((f"blobs C={classes}", dataset, configs, {"target": None}))
  settings.append(_vocabulary_setting(budget))
  return _collect(settings, budget, log)


def _vocabulary_setting(budget: Budget):
  """A language-model-sized label space: C = 32768 blobs, 8 examples a class
  (5 train, 2 validation, 1 test), one evaluation at the end of training (an
  evaluation of the 98,304 validation and test examples costs as much as
  ~200 training steps) and no post-hoc metrics (the runs' final logits
  would take gigabytes). Mean-over-classes squared error scales its gradient
  by 1/C, so the rate grid reaches 100."""
  classes = 512 if budget.quick else 32768
  options = {"num_classes": classes, "num_examples": 8 * classes, "dim": 64, "spread": 0.3}
  steps = budget.small_steps
  configs = [_config(budget, dataset="blobs", loss=l, dataset_options=options, steps=steps,
                     seeds=min(budget.seeds, 2), learning_rates=(0.1, 1.0, 10.0, 100.0),
                     model=models.ModelConfig(width=64), fused_head=True)
             for l in MANY_CLASSES_LOSSES]
  configs = [dataclasses.replace(c, eval_interval=steps) for c in configs]
  return (f"blobs C={classes}", data.load("blobs", **options), configs,
          {"target": None, "posthoc": False})


def label_noise(budget: Budget, dataset_name: str, log) -> dict:
  """Beyond the article: symmetric label noise; CE vs MSE vs MAE vs GCE."""
  settings = []
  for rate in ((0.4,) if budget.quick else (0.2, 0.4)):
    dataset = data.load(dataset_name, noise=rate)
    configs = [_config(budget, dataset=dataset_name, loss=l, noise=rate)
               for l in ("cross_entropy", "mse", "mae", "gce")]
    settings.append((f"noise {rate:g}", dataset, configs, {"target": None}))
  return _collect(settings, budget, log)


EXPERIMENTS: dict[str, Callable] = {
    "classification": classification,
    "init_scale": init_scale,
    "local_minima": local_minima,
    "imbalance": imbalance,
    "threshold": threshold,
    "many_classes": many_classes,
    "label_noise": label_noise,
}
