"""One experiment per claim of the article, all under one tuning protocol.

Each experiment returns ``{"runs": [...], "curves": {...}, "settings": {...}}``:
every trained run with its final measurements (the format of
`lossjax.study._protocol`), the mean learning curves of every cell (for the
figures), and what each setting is (dataset, model, selection metric).
Every variant of every setting is tuned by `_protocol.tune` (half-decade
grid, edge extension) in two replicates (`REPLICATES`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable

import numpy as np

from lossjax import data, metrics, models, train
from lossjax.study import _protocol

# Replicate B changes everything random that the verdicts should not hang
# on: the initial seeds, the batch order and the data split (for synthetic
# data, the draw).
REPLICATES = {"A": {"seed_offset": 0, "order_seed": 0, "data_seed": 0},
              "B": {"seed_offset": 1000, "order_seed": 1, "data_seed": 1}}
SQUARED_ERRORS = ("mse", "brier")
FAILURE_THRESHOLD = 0.5  # claim 4: train accuracy below this at the budget is a failure
TARGETS = {"digits": 0.9, "mnist5k": 0.85}  # claim 3's target test accuracy


@dataclasses.dataclass(frozen=True)
class Budget:
  """How big every experiment is; `quick` shrinks everything for a smoke run."""
  seeds: int = 5
  learning_rates: tuple[float, ...] = _protocol.rate_grid()
  max_extensions: int = 3
  steps: int = 600  # mnist5k runs
  small_steps: int = 1000  # digits and synthetic tasks, cheap per step
  eval_interval: int = 20  # where steps to a target are measured (claim 3)
  # Elsewhere only final values matter: evaluating the train, validation and
  # test splits every 20 steps would cost more than the training.
  coarse_eval_interval: int = 100
  width: int = 256
  # Claim 4: the rate is tuned on `failure_tune_seeds` seeds a rate and the
  # failure rate measured on `failure_seeds` fresh seeds at the chosen rate
  # (as many runs as the grid, so both share one compiled program).
  failure_tune_seeds: int = 4
  failure_seeds: int = 28
  failure_continue: int = 5  # failed runs are retrained this many times longer
  sigmoid_depths: tuple[int, ...] = (1, 2, 3, 4, 5)
  tanh_depths: tuple[int, ...] = (2, 6, 10)
  failure_inits: tuple[str, ...] = ("lecun", "classical")
  init_stds: tuple[float, ...] = (0.01, 0.1, 1.0, 4.0)  # absolute, claim 3
  init_lecun_multiples: tuple[float, ...] = (1.0, 4.0)
  init_models: tuple[str, ...] = ("linear", "MLP")
  imbalances: tuple[float, ...] = (10.0, 50.0, 100.0)
  class_balance_betas: tuple[float, ...] = (0.99, 0.999)
  many_classes_seeds: int = 3
  vocabulary_classes: int = 8192
  quick: bool = False

  @classmethod
  def quick_budget(cls) -> "Budget":
    # Five rates: 40 steps favour large rates, and from three the grid would
    # be extended (a program of another shape to compile) nearly every time.
    return cls(seeds=2, learning_rates=_protocol.rate_grid(10**-1.5, 10**0.5), max_extensions=1,
               steps=40,
               small_steps=40, eval_interval=20, coarse_eval_interval=20, width=32,
               failure_tune_seeds=1, failure_seeds=5, failure_continue=2, sigmoid_depths=(3,),
               tanh_depths=(), failure_inits=("classical",), init_models=("MLP",),
               init_stds=(4.0,), init_lecun_multiples=(1.0,), imbalances=(100.0,),
               class_balance_betas=(0.999,), many_classes_seeds=2, vocabulary_classes=512,
               quick=True)


@functools.lru_cache(maxsize=64)
def _load(name: str, seed: int, imbalance: float | None = None, noise: float | None = None,
          options: tuple = ()) -> data.Dataset:
  return data.load(name, seed=seed, imbalance=imbalance, noise=noise, **dict(options))


def dataset_for(config: train.TrainConfig) -> data.Dataset:
  return _load(config.dataset, config.data_seed, config.imbalance, config.noise,
               tuple(sorted(config.dataset_options.items())))


def _config(budget: Budget, *, dataset: str, loss: str, steps: int | None = None,
            batch_size: int = 128, model: models.ModelConfig | None = None,
            fine: bool = False, **overrides) -> train.TrainConfig:
  """A config of the study; `fine` evaluates every `eval_interval` steps
  (steps to a target), else every `coarse_eval_interval`."""
  return train.TrainConfig(
      dataset=dataset, loss=loss, model=model or models.ModelConfig(width=budget.width),
      batch_size=batch_size, steps=steps or budget.steps,
      eval_interval=budget.eval_interval if fine else budget.coarse_eval_interval,
      seeds=(0,), learning_rates=(0.1,), targets=(), **overrides)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One thing to tune: a label, its config and how its rate is chosen."""
  loss: str  # the label the verdicts and tables use
  config: train.TrainConfig
  key: str = ""  # hyper-parameters besides the rate (e.g. "beta=0.99")
  select: str = "val_accuracy"
  select_higher: bool = True


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  variants: tuple[Variant, ...]
  target: float | None = None  # steps to this test accuracy
  posthoc: bool = True  # temperature scaling etc. (needs every run's final logits)
  binary: bool = False
  # Derive a post-hoc logit-adjusted variant (key "plain+logit adjustment")
  # from each run of the variants keyed "plain".
  logit_adjustment: bool = False
  fresh_seeds: int = 0  # measure at the chosen rate on this many fresh seeds
  continue_failed: int = 0  # retrain failed fresh runs this many times longer
  replicates: tuple[str, ...] = ("A", "B")
  describe: dict = dataclasses.field(default_factory=dict)
  # The data to train on, instead of loading the configs' dataset (e.g. a
  # validation subset); replicates then differ in seeds and batch order only.
  dataset: data.Dataset | None = dataclasses.field(default=None, compare=False)


class Runner:
  """Trains settings under the protocol, collecting runs and curves."""

  def __init__(self, budget: Budget, log: Callable[[str], None]):
    self.budget, self.log = budget, log
    self.runs: list[dict] = []
    self.curves: dict[str, dict] = {}
    self.settings: dict[str, dict] = {}
    # The compiled programs of the setting being trained: its replicates and
    # its fresh seeds train the tuning runs' programs again (`train.Trainer`).
    self._programs: dict = {}

  def result(self) -> dict:
    return {"runs": self.runs, "curves": self.curves, "settings": self.settings}

  def setting(self, setting: Setting) -> None:
    self.settings[setting.name] = {**setting.describe, "target": setting.target,
                                   "select": {v.loss: v.select for v in setting.variants}}
    self._programs.clear()
    for replicate in setting.replicates:
      for variant in setting.variants:
        self.variant(setting, variant, replicate)

  def variant(self, setting: Setting, variant: Variant, replicate: str) -> list[dict]:
    started = time.perf_counter()
    options = REPLICATES[replicate]
    config = dataclasses.replace(variant.config, order_seed=options["order_seed"],
                                 data_seed=options["data_seed"])
    tune_seeds = self.budget.failure_tune_seeds if setting.fresh_seeds else self.budget.seeds
    if config.fused_head:
      tune_seeds = min(tune_seeds, self.budget.many_classes_seeds)
    first = options["seed_offset"]
    seeds = tuple(range(first, first + tune_seeds))

    def train_rates(rates, seeds=seeds, phase="tune", steps=None):
      return self._train(setting, variant, replicate, dataclasses.replace(
          config, seeds=seeds, learning_rates=tuple(rates), steps=steps or config.steps), phase)

    runs = _protocol.tune(train_rates, self.budget.learning_rates, select=variant.select,
                          higher_is_better=variant.select_higher,
                          max_extensions=self.budget.max_extensions, key=variant.key)
    chosen = _protocol.choose([r for r in runs if r["key"] == variant.key], variant.select,
                              variant.select_higher)
    if setting.fresh_seeds:
      fresh = tuple(range(first + 500, first + 500 + setting.fresh_seeds))
      fresh_runs = train_rates((chosen[1],), seeds=fresh, phase="fresh")
      runs += fresh_runs
      # Failed runs retrained longer (from scratch: with a constant rate the
      # first steps are the same), to tell a plateau from a minimum. All the
      # fresh seeds are retrained: the same number of runs shares the program.
      if (setting.continue_failed and replicate == "A"
          and any(r["metrics"].get("failed") for r in fresh_runs)):
        runs += train_rates((chosen[1],), seeds=fresh, phase="continued",
                            steps=config.steps * setting.continue_failed)
    self.runs += runs
    tuned = [r for r in runs if r["phase"] == "tune"]
    at = [r for r in runs if r["phase"] == ("fresh" if setting.fresh_seeds else "tune")
          and _protocol.cell_key(r) == chosen]
    acc = np.nanmean([np.nan if r["metrics"].get("test_accuracy") is None
                      else r["metrics"]["test_accuracy"] for r in at])
    self.log(f"  {setting.name} [{replicate}] / {variant.loss}{' ' + variant.key if variant.key else ''}: "
             f"lr {chosen[1]:g} ({_protocol.position(tuned, chosen)}, "
             f"{len({r['learning_rate'] for r in tuned})} rates), test acc {acc:.3f}, "
             f"{time.perf_counter() - started:.0f}s")
    return runs

  def _train(self, setting: Setting, variant: Variant, replicate: str,
             config: train.TrainConfig, phase: str) -> list[dict]:
    dataset = setting.dataset or dataset_for(config)
    history = train.Trainer(config, dataset=dataset, programs=self._programs).run(
        keep_final_logits=setting.posthoc)
    runs = _records(history, dataset, setting, variant, replicate, phase)
    self._keep_curves(history, setting, variant, replicate, phase)
    return runs

  def _keep_curves(self, history, setting, variant, replicate, phase):
    """Mean curves per rate (tuning runs) of the settings timed to a target,
    for the figures (4 significant digits)."""
    if phase != "tune" or setting.target is None:
      return
    for rate in np.unique(history.learning_rates):
      runs = history.runs_at(rate)
      name = f"{setting.name}|{replicate}|{variant.loss}|{variant.key}|{float(rate):g}"
      curve = {"eval_steps": history.eval_steps.tolist()}
      for metric in ("test_accuracy", "test_misclassified_grad_norm"):
        values = history.metrics[metric][runs]
        with np.errstate(all="ignore"):
          curve[metric] = [None if not np.isfinite(v) else float(f"{v:.4g}")
                           for v in np.nanmean(np.where(np.isfinite(values), values, np.nan), 0)]
      self.curves[name] = curve


# The final evaluations a run record keeps (the verdicts, tables and
# figures read no others; a study's result files stay a few megabytes).
FINAL_METRICS = ("train_accuracy", "val_accuracy", "val_balanced_accuracy", "test_accuracy",
                 "test_balanced_accuracy", "test_nll", "test_ece", "test_brier")


def _records(history: train.History, dataset: data.Dataset, setting: Setting, variant: Variant,
             replicate: str, phase: str) -> list[dict]:
  """One run record per run of `history`, and the post-hoc variants' records."""
  records, adjusted = [], []
  steps = history.eval_steps
  budget_steps = int(steps[-1])
  for run in range(history.num_runs):
    m = {name: history.metrics[name][run, -1] for name in FINAL_METRICS
         if name in history.metrics}
    if setting.target is not None:
      for split in ("val", "test"):
        reached = history.metrics[f"{split}_accuracy"][run] >= setting.target
        # Not reached: one interval past the budget (a lower bound), and the
        # fraction that reached is reported beside the median.
        m[f"{split}_steps_to_target"] = (steps[reached.argmax()] if reached.any()
                                         else budget_steps + history.config["eval_interval"])
        m[f"{split}_reached_target"] = float(reached.any())
      # Speed first, then accuracy: a run that reaches the target sooner is
      # better; runs that miss it are ordered by their final accuracy (< 1,
      # so it never outranks an interval of speed).
      m["val_speed"] = -m["val_steps_to_target"] + m["val_accuracy"]
    if "train_accuracy" in m:
      m["failed"] = float(not m["train_accuracy"] >= FAILURE_THRESHOLD)
    if setting.posthoc:
      extra, adjusted_metrics = _posthoc(history, dataset, run, setting,
                                         adjust=setting.logit_adjustment and variant.key == "plain")
      m.update(extra)
      if adjusted_metrics is not None:
        adjusted.append(_record(history, run, setting, variant, replicate, phase,
                                adjusted_metrics, key=f"{variant.key}+logit adjustment"))
    records.append(_record(history, run, setting, variant, replicate, phase, m))
  return records + adjusted


def _record(history, run, setting, variant, replicate, phase, values, key=None) -> dict:
  """A run's record: rates to 4 significant digits (the grid's own, undoing
  float32), measurements to 9 (a float32 exactly)."""
  return {"setting": setting.name, "replicate": replicate, "loss": variant.loss,
          "key": variant.key if key is None else key,
          "learning_rate": float(f"{history.learning_rates[run]:.4g}"),
          "seed": int(history.seeds[run]), "phase": phase,
          "diverged": bool(history.diverged[run]),
          "metrics": {k: (None if v is None or not np.isfinite(v) else float(f"{v:.9g}"))
                      for k, v in values.items()}}


LOGIT_ADJUSTMENT_TAUS = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2))


def _posthoc(history, dataset, run, setting, adjust: bool) -> tuple[dict, dict | None]:
  """Temperature scaling, per-class metrics, binary thresholds and the
  logit-adjusted predictions of one run."""
  val_logits = history.final_logits["val"][run]
  test_logits = history.final_logits["test"][run]
  if not (np.all(np.isfinite(val_logits)) and np.all(np.isfinite(test_logits))):
    return {}, None
  c = dataset.num_classes
  out = {}
  temperature = metrics.fit_temperature(val_logits, dataset.y_val)
  scaled = test_logits / temperature
  out["temperature"] = temperature
  out["test_ece_scaled"] = float(metrics.expected_calibration_error(scaled, dataset.y_test))
  out["test_nll_scaled"] = float(metrics.nll(scaled, dataset.y_test))
  out.update(_class_metrics(test_logits, dataset.y_test, c))
  if setting.binary:
    test_scores, val_scores = _binary_scores(test_logits), _binary_scores(val_logits)
    threshold = metrics.best_f1_threshold(val_scores, dataset.y_val)
    out["val_auroc"] = metrics.auroc(val_scores, dataset.y_val)
    out["auroc"] = metrics.auroc(test_scores, dataset.y_test)
    out["f1_at_0.5"] = metrics.f1_at_threshold(test_scores, dataset.y_test, 0.5)
    out["f1_at_tuned"] = metrics.f1_at_threshold(test_scores, dataset.y_test, threshold)
    out["f1_gain"] = out["f1_at_tuned"] - out["f1_at_0.5"]
    out["tuned_threshold"] = threshold
  adjusted = None
  if adjust:
    adjusted = logit_adjusted(val_logits, test_logits, dataset)
    out["adjustment_gain"] = adjusted["test_balanced_accuracy"] - out["test_balanced_accuracy"]
  return out, adjusted


def _class_metrics(logits, labels, num_classes) -> dict:
  recall = np.asarray(metrics.per_class_recall(logits, labels, num_classes))
  return {"test_balanced_accuracy": float(np.nanmean(recall)),
          "worst_class_recall": float(np.nanmin(recall)),
          "macro_f1": float(metrics.macro_f1(logits, labels, num_classes)),
          "test_accuracy": float(metrics.accuracy(logits, labels))}


def logit_adjusted(val_logits, test_logits, dataset: data.Dataset) -> dict:
  """Post-hoc logit adjustment (Menon et al. 2021): predict
  argmax_c z_c - tau log pi_c, pi the training prior, tau chosen on the
  validation split's balanced accuracy from `LOGIT_ADJUSTMENT_TAUS`."""
  log_prior = np.log(np.maximum(dataset.class_counts(), 1) / len(dataset.y_train))
  c = dataset.num_classes
  scores = [float(metrics.balanced_accuracy(val_logits - tau * log_prior, dataset.y_val, c))
            for tau in LOGIT_ADJUSTMENT_TAUS]
  best = int(np.argmax(scores))  # ties: the smallest tau (0 = no adjustment)
  tau = LOGIT_ADJUSTMENT_TAUS[best]
  out = _class_metrics(test_logits - tau * log_prior, dataset.y_test, c)
  return {"val_balanced_accuracy": scores[best], "tau": float(tau), **out}


def _binary_scores(two_logits: np.ndarray) -> np.ndarray:
  """Probability of the positive class from the [0, z] logits of a binary model,
  as sigmoid(z) = exp(-log(1 + exp(-z))) in float64: in float32 the sigmoid
  rounds to 1.0 above z ~ 17, tying confident examples that AUROC and the
  threshold search must tell apart, and exp(-z) overflows below z ~ -89."""
  z = (two_logits[:, 1] - two_logits[:, 0]).astype(np.float64)
  return np.exp(-np.logaddexp(0.0, -z))


# The experiments.

def _variants(budget, losses, **config) -> tuple[Variant, ...]:
  return tuple(Variant(loss, _config(budget, loss=loss, **config)) for loss in losses)


def classification(budget: Budget, dataset_name: str, log) -> dict:
  """Claims 1-2: accuracy and calibration of CE vs logit-MSE vs Brier."""
  runner = Runner(budget, log)
  losses = ("cross_entropy",) + SQUARED_ERRORS
  small = dict(dataset="digits", batch_size=32, steps=budget.small_steps)
  settings = [
      Setting(f"{dataset_name} MLP", _variants(budget, losses, dataset=dataset_name),
              describe={"dataset": dataset_name, "model": f"MLP {budget.width}"}),
      Setting("digits MLP", _variants(budget, losses, **small),
              describe={"dataset": "digits", "model": f"MLP {budget.width}"}),
      Setting("digits linear", _variants(budget, losses, model=models.ModelConfig(depth=0),
                                         **small),
              describe={"dataset": "digits", "model": "linear"}),
  ]
  for setting in settings[:1] if budget.quick else settings:
    runner.setting(setting)
  return runner.result()


def init_scale(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 3: steps to a target accuracy from gentle to saturating initial
  weights, on a linear model and an MLP; rates tuned for speed."""
  runner = Runner(budget, log)
  losses = ("cross_entropy",) + SQUARED_ERRORS
  scales = [("normal", s) for s in budget.init_stds] + [
      ("lecun", m) for m in budget.init_lecun_multiples]
  for name in (("digits",) if budget.quick else ("digits", dataset_name)):
    small = name == "digits"
    common = dict(dataset=name, batch_size=32 if small else 128,
                  steps=budget.small_steps if small else budget.steps)
    models_here = [m for m in (("linear", 0, 64), ("MLP", 1, 64)) if m[0] in budget.init_models]
    for model_name, depth, width in models_here:
      for init, scale in scales:
        model = models.ModelConfig(depth=depth, width=width, init=init, init_scale=scale)
        label = f"std {scale:g}" if init == "normal" else f"{scale:g}x LeCun"
        variants = tuple(Variant(l, _config(budget, loss=l, model=model, fine=True, **common),
                                 select="val_speed") for l in losses)
        runner.setting(Setting(
            f"{name} {model_name} (init {label})", variants, target=TARGETS.get(name, 0.9),
            posthoc=False, describe={"dataset": name, "model": model_name, "init": init,
                                     "init_scale": scale}))
  return runner.result()


def local_minima(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 4: how often each loss fails to fit (train accuracy below
  `FAILURE_THRESHOLD` at the budget), by depth, activation and initialisation."""
  runner = Runner(budget, log)
  losses = ("cross_entropy",) + SQUARED_ERRORS
  grid = [("sigmoid", d) for d in budget.sigmoid_depths] + [("tanh", d) for d in budget.tanh_depths]
  for activation, depth in grid:
    for init in budget.failure_inits:
      model = models.ModelConfig(depth=depth, width=64, activation=activation, init=init)
      variants = _variants(budget, losses, dataset="digits", batch_size=32,
                           steps=budget.small_steps, model=model,
                           eval_splits=("train", "val", "test"))
      runner.setting(Setting(
          f"{activation} depth {depth} ({init})", variants, posthoc=False,
          fresh_seeds=budget.failure_seeds, continue_failed=budget.failure_continue,
          describe={"activation": activation, "depth": depth, "init": init,
                    "dataset": "digits"}))
  return runner.result()


def imbalance(budget: Budget, dataset_name: str, log) -> dict:
  """Claims 5 and 6: long-tailed training data, a balanced test set; for CE
  and logit-MSE the same baselines (plain, class-balanced weights, post-hoc
  logit adjustment), and focal for CE."""
  runner = Runner(budget, log)
  select = "val_balanced_accuracy"
  for factor in budget.imbalances:
    common = dict(dataset=dataset_name, imbalance=factor, model=models.ModelConfig(width=128))
    variants = []
    for family, losses in (("cross_entropy", ("cross_entropy", "focal")), ("mse", ("mse",))):
      for loss in losses:
        key = "plain" if loss == family else loss
        variants.append(Variant(family, _config(budget, loss=loss, **common), key, select))
      for beta in budget.class_balance_betas:
        variants.append(Variant(family, _config(budget, loss=family, class_balance_beta=beta,
                                                **common), f"class-balanced beta={beta:g}",
                                select))
    runner.setting(Setting(f"imbalance {factor:g}", tuple(variants), logit_adjustment=True,
                           describe={"dataset": dataset_name, "imbalance": factor}))
  return runner.result()


def threshold(budget: Budget, dataset_name: str, log) -> dict:
  """Claim 6: F1 at 0.5 vs at a validation-tuned threshold, and AUROC."""
  runner = Runner(budget, log)
  tasks = [("rare_positive 2%", "rare_positive", {"positive_rate": 0.02}),
           ("breast_cancer", "breast_cancer", {})]
  for name, dataset, options in tasks[:1] if budget.quick else tasks:
    variants = tuple(Variant(l, _config(budget, loss=l, dataset=dataset, batch_size=64,
                                        steps=budget.small_steps, dataset_options=options,
                                        model=models.ModelConfig(width=32)), select="val_auroc")
                     for l in ("binary_cross_entropy", "binary_mse", "binary_focal"))
    runner.setting(Setting(name, variants, binary=True, describe={"dataset": dataset}))
  return runner.result()


MANY_CLASSES_LOSSES = ("cross_entropy", "mse", "mse_rescaled")


def many_classes(budget: Budget, dataset_name: str, log) -> dict:
  """Beyond the article: CE vs plain and rescaled (Hui & Belkin 2021) MSE up
  to thousands of classes, the last layer and loss trained as a fused head
  (`lossjax.fused`: no [batch, C] logits). One replicate: no verdict rests on it."""
  runner = Runner(budget, log)
  for classes in ((100,) if budget.quick else (100, 1000)):
    # spread 0.7: a nearest-centre classifier would score ~90% (C=100) and ~70%
    # (C=1000), so the losses have room to differ.
    options = {"num_classes": classes, "num_examples": 20 * classes, "dim": 64, "spread": 0.7}
    variants = _variants(budget, MANY_CLASSES_LOSSES, dataset="blobs", dataset_options=options,
                         steps=budget.small_steps // 2, fused_head=True)
    runner.setting(Setting(f"blobs C={classes}", variants, replicates=("A",),
                           describe={"dataset": "blobs", "classes": classes}))
  runner.setting(_vocabulary_setting(budget))
  return runner.result()


def _vocabulary_setting(budget: Budget) -> Setting:
  """A vocabulary-sized label space: blobs with 8 examples a class (5 train,
  2 validation, 1 test), one evaluation at the end of training and no
  post-hoc metrics (the runs' final logits would take gigabytes).
  Mean-over-classes squared error scales its gradient by 1/C, so its rates
  are found by the edge extension."""
  classes = budget.vocabulary_classes
  options = {"num_classes": classes, "num_examples": 8 * classes, "dim": 64, "spread": 0.3}
  steps = budget.small_steps // 2
  variants = tuple(Variant(l, dataclasses.replace(
      _config(budget, loss=l, dataset="blobs", dataset_options=options, steps=steps,
              model=models.ModelConfig(width=64), fused_head=True), eval_interval=steps))
                   for l in MANY_CLASSES_LOSSES)
  return Setting(f"blobs C={classes}", variants, posthoc=False, replicates=("A",),
                 describe={"dataset": "blobs", "classes": classes})


def label_noise(budget: Budget, dataset_name: str, log) -> dict:
  """Beyond the article: symmetric label noise; CE vs MSE vs MAE vs GCE.
  One replicate: no verdict rests on it."""
  runner = Runner(budget, log)
  for rate in ((0.4,) if budget.quick else (0.2, 0.4)):
    variants = _variants(budget, ("cross_entropy", "mse", "mae", "gce"), dataset=dataset_name,
                         noise=rate, model=models.ModelConfig(width=128))
    runner.setting(Setting(f"noise {rate:g}", variants, replicates=("A",),
                           describe={"dataset": dataset_name, "noise": rate}))
  return runner.result()


EXPERIMENTS: dict[str, Callable] = {
    "classification": classification,
    "init_scale": init_scale,
    "local_minima": local_minima,
    "imbalance": imbalance,
    "threshold": threshold,
    "many_classes": many_classes,
    "label_noise": label_noise,
}
