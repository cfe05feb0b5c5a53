"""The training engine: every run of a config in one compiled program.

Runs (seeds x learning rates) are ``jax.vmap``-ed, steps are ``lax.scan``-ned,
and evaluation happens inside the program every ``eval_interval`` steps. The
program is compiled once per (model, loss, dataset shape) and called once per
chunk of steps, which is where progress is reported and where nothing
computed so far can be lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.random import threefry_2x32
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lossjax import _checks, _io, _progress, _softmax
from lossjax import data as data_lib
from lossjax import fused, losses, metrics, models, reduction

SCHEDULES = ("constant", "cosine", "warmup_cosine")
EVAL_METRICS = ("accuracy", "balanced_accuracy", "nll", "ece", "brier",
                "misclassified_grad_norm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything one training job needs; every field has a sensible default."""
  dataset: str = "mnist5k"
  dataset_options: dict = dataclasses.field(default_factory=dict)
  imbalance: float | None = None
  noise: float | None = None
  model: models.ModelConfig = models.ModelConfig()
  loss: str = "cross_entropy"
  loss_options: dict = dataclasses.field(default_factory=dict)
  class_balance_beta: float | None = None  # weight examples by Cui et al. 2019
  pretrain_loss: str | None = None  # train with this loss for the first steps
  pretrain_steps: int = 0
  optimizer: str = "sgd"
  optimizer_options: dict = dataclasses.field(default_factory=lambda: {"momentum": 0.9})
  schedule: str = "constant"
  batch_size: int = 128
  steps: int = 2000
  eval_interval: int = 100
  seeds: tuple[int, ...] = tuple(range(8))
  learning_rates: tuple[float, ...] = (0.01, 0.1)
  targets: tuple[float, ...] = (0.85, 0.9, 0.92)
  data_seed: int = 0
  # The batch order's seed, apart from the initial weights' (`seeds`): two
  # order seeds train the same initial models on different batch orders.
  order_seed: int = 0
  # Which splits are evaluated every interval: validation and test always,
  # "train" on request (its accuracy tells an optimisation failure apart).
  eval_splits: tuple[str, ...] = ("val", "test")
  max_chunk_steps: int = 500
  # How runs share the program: "vmap" batches them (one big op per layer);
  # "map" loops over them inside the program. "auto" maps convolutional
  # models on CPU, where XLA turns vmapped convolutions into grouped ones
  # (measured: LeNet on mnist5k, 4 runs, 50 run-steps/s mapped vs 9 vmapped).
  runs_mode: str = "auto"
  # The last layer and the loss as one `lossjax.fused` head: no [batch, C]
  # logits in training, and evaluation in chunks of examples (many classes).
  fused_head: bool = False

  def __post_init__(self):
    losses.spec(self.loss)  # unknown loss: ValueError listing the names
    if self.fused_head:
      for name in (self.loss, self.pretrain_loss):
        if name is not None and name not in fused.fused_losses():
          raise ValueError(f"`fused_head` needs a multiclass loss with a fused form, got "
                           f"{name!r}; fused: {', '.join(fused.fused_losses())}.")
    if self.pretrain_loss is not None:
      if losses.spec(self.pretrain_loss).kind != losses.spec(self.loss).kind:
        raise ValueError("`pretrain_loss` and `loss` must be of the same kind.")
      if not 0 < self.pretrain_steps < self.steps:
        raise ValueError(f"`pretrain_steps` must be in (0, steps={self.steps}), got "
                         f"{self.pretrain_steps}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"unknown schedule {self.schedule!r}; available: {', '.join(SCHEDULES)}.")
    if not hasattr(optax, self.optimizer):
      raise ValueError(f"unknown optimizer {self.optimizer!r}: not an optax optimizer "
                       "(e.g. sgd, adam, adamw).")
    for name in ("batch_size", "steps", "eval_interval"):
      if getattr(self, name) < 1:
        raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
    if self.steps % self.eval_interval:
      raise ValueError(f"`steps` ({self.steps}) must be a multiple of `eval_interval` "
                       f"({self.eval_interval}).")
    if not self.seeds or not self.learning_rates:
      raise ValueError("`seeds` and `learning_rates` must not be empty.")
    if not {"val", "test"} <= set(self.eval_splits) <= {"train", "val", "test"}:
      raise ValueError("`eval_splits` must hold 'val' and 'test', and may add 'train'; got "
                       f"{self.eval_splits}.")
    if self.order_seed < 0:
      raise ValueError(f"`order_seed` must be >= 0, got {self.order_seed}.")
    if self.runs_mode not in ("auto", "vmap", "map"):
      raise ValueError(f"`runs_mode` must be 'auto', 'vmap' or 'map', got {self.runs_mode!r}.")
    if any(lr <= 0 for lr in self.learning_rates):
      raise ValueError(f"`learning_rates` must be > 0, got {self.learning_rates}.")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class History:
  """What a training job measured, run by run and evaluation by evaluation.

  ``metrics[name]`` is ``[runs, evaluations]``, named ``train_loss``,
  ``val_accuracy``, ``test_accuracy``, ``test_nll``, ``test_ece``, ...
  ``steps_to_target[t]`` is ``[runs]``: the first evaluated step whose test
  accuracy reached ``t``, or -1 if none did.
  """
  config: dict
  seeds: np.ndarray
  learning_rates: np.ndarray
  eval_steps: np.ndarray
  metrics: dict[str, np.ndarray]
  diverged: np.ndarray
  diverged_at: np.ndarray
  steps_to_target: dict[float, np.ndarray]
  compile_seconds: float
  train_seconds: float
  final_logits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def num_runs(self) -> int:
    return len(self.seeds)

  def run_steps_per_second(self) -> float:
    return self.num_runs * int(self.eval_steps[-1]) / self.train_seconds

  def best_learning_rate(self, metric: str = "val_accuracy") -> float:
    """The learning rate whose runs have the best mean final `metric`
    (diverged runs count as the worst value); ties go to the smaller rate."""
    final = self.metrics[metric][:, -1].copy()
    worse = -np.inf if "accuracy" in metric else np.inf
    final[self.diverged | ~np.isfinite(final)] = worse
    rates = np.unique(self.learning_rates)
    means = [final[self.learning_rates == lr].mean() for lr in rates]
    return float(rates[int(np.nanargmax(means) if "accuracy" in metric else np.nanargmin(means))])

  def runs_at(self, learning_rate: float) -> np.ndarray:
    return np.flatnonzero(np.isclose(self.learning_rates, learning_rate))

  def to_json(self) -> dict:
    """Plain JSON: one record per run, with its metric series by name."""
    runs = []
    for r in range(self.num_runs):
      record = {"seed": int(self.seeds[r]), "learning_rate": float(self.learning_rates[r]),
                "diverged": bool(self.diverged[r]),
                "diverged_at_step": int(self.diverged_at[r]) if self.diverged[r] else None,
                "steps_to_target": {f"{t:g}": (int(s[r]) if s[r] >= 0 else None)
                                    for t, s in self.steps_to_target.items()}}
      for name, values in self.metrics.items():
        record[name] = [None if not np.isfinite(v) else float(v) for v in values[r]]
      runs.append(record)
    return {"config": self.config, "eval_steps": self.eval_steps.tolist(),
            "compile_seconds": self.compile_seconds, "train_seconds": self.train_seconds,
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "jax_version": jax.__version__, "runs": runs}


def _schedule(name: str, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """A multiplier of the base learning rate, as a function of the step."""
  if name == "constant":
    return lambda step: jnp.float32(1.0)
  if name == "cosine":
    return optax.cosine_decay_schedule(1.0, total_steps)
  warmup = max(1, total_steps // 20)
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps)


# Up to this many examples, `permutation` shuffles by sorting packed keys;
# beyond it (b random bits per round shrink, rounds grow) by jax.random.
PACKED_SHUFFLE_MAX = 2**24


def permutation(key: jax.Array, n: int, *, packed_max: int = PACKED_SHUFFLE_MAX) -> jax.Array:
  """A uniformly random permutation of `0 .. n-1` (int32).

  The algorithm of ``jax.random.permutation`` (rounds of a stable sort by
  fresh random keys; ties in one round are broken by the order the previous
  rounds left, so the result is uniform once every pair of elements got
  distinct keys in some round), with the sort made cheap on CPU: each round
  sorts one uint32 array whose high bits are random and whose low
  ``ceil(log2 n)`` bits hold the element's current position. XLA:CPU sorts
  a single primitive array ~5x faster than a key/value pair with its
  comparator (272 shuffles of 1078 indices: 7 vs 41 ms per round), which
  made shuffling a third of a small model's training time.

  With p = ceil(log2 n) position bits and b = 32 - p random bits a round,
  it makes ceil(3p / b) rounds: jax.random's criterion with b for its 32, so
  the chance that some pair of elements ties in every round is below 1/n.
  Above `packed_max` elements, where b gets small and the rounds many, it
  calls ``jax.random.permutation``.
  """
  n = _checks.check_count(n, "n", 0)
  if n > packed_max:
    return jax.random.permutation(key, n).astype(jnp.int32)
  position_bits = max(1, (n - 1).bit_length())
  random_bits = 32 - position_bits
  rounds = -(-3 * position_bits // random_bits)
  positions = jnp.arange(n, dtype=jnp.uint32)
  order = positions
  for words in _random_words(key, rounds * n).reshape(rounds, n):
    high = words >> position_bits << position_bits
    order = order[jnp.sort(high | positions) & ((1 << position_bits) - 1)]
  return order.astype(jnp.int32)


def _random_words(key: jax.Array, count: int) -> jax.Array:
  """`count` random uint32 words from `key`.

  From a threefry key (JAX's default), JAX's original counter-mode stream,
  in which one Threefry-2x32 hash gives two words. ``jax.random.bits`` now
  spends a hash per word (its "partitionable" stream, made for sharded
  arrays), which on the CPU took 4x the time (272 x 1078 words: 3.2 vs 0.8
  ms) and was half the cost of a shuffle. Other key types go through
  ``jax.random.bits``.
  """
  if (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
      and str(jax.random.key_impl(key)) == "threefry2x32"):
    return threefry_2x32(jax.random.key_data(key), jnp.arange(count, dtype=jnp.uint32))
  return jax.random.bits(key, (count,), jnp.uint32)


def _binary_as_two_logits(logit: jax.Array) -> jax.Array:
  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]: binary models share the
  # multiclass metrics.
  return jnp.stack([jnp.zeros_like(logit), logit], axis=-1)


class _Program:
  """The pure functions of one config: init, one chunk of steps, evaluation."""

  def __init__(self, config: TrainConfig, dataset: data_lib.Dataset):
    self.config = config
    spec = losses.spec(config.loss)
    self.binary = spec.kind == "binary"
    if self.binary and dataset.num_classes != 2:
      raise ValueError(f"loss {config.loss!r} is binary but dataset {dataset.name!r} has "
                       f"{dataset.num_classes} classes.")
    self.num_classes = dataset.num_classes
    self.model = models.build(config.model, dataset.input_shape,
                              1 if self.binary else dataset.num_classes)
    self.loss_fn = losses.get(config.loss, **config.loss_options)
    self.pretrain_loss_fn = (losses.get(config.pretrain_loss)
                             if config.pretrain_loss is not None else None)
    self.base_optimizer = getattr(optax, config.optimizer)(learning_rate=1.0,
                                                           **config.optimizer_options)
    self.schedule = _schedule(config.schedule, config.steps)
    weights = np.ones(dataset.num_classes, np.float32)
    if config.class_balance_beta is not None:
      weights = np.asarray(losses.class_balanced_weights(dataset.class_counts(),
                                                         beta=config.class_balance_beta))
    self.class_weights = jnp.asarray(weights)
    self.num_train = len(dataset.y_train)
    if config.batch_size > self.num_train:
      raise ValueError(f"`batch_size` ({config.batch_size}) exceeds the {self.num_train} "
                       "training examples.")
    self.steps_per_epoch = self.num_train // config.batch_size

  def logits(self, params, x):
    out = self.model.apply(params, x)
    return out[..., 0] if self.binary else out

  def metric_logits(self, params, x):
    return self._as_metric_logits(self.logits(params, x))

  def _as_metric_logits(self, raw):
    return _binary_as_two_logits(raw) if self.binary else raw

  def batch_loss(self, params, x, y, step):
    if self.config.fused_head:
      return self.fused_batch_loss(params, x, y, step)
    logits = self.logits(params, x)
    per_example = self.loss_fn(logits, y)
    if self.pretrain_loss_fn is not None:
      # Both are computed and one is selected: a switch inside the compiled
      # program, no recompilation at the hand-over step.
      per_example = jnp.where(step < self.config.pretrain_steps,
                              self.pretrain_loss_fn(logits, y), per_example)
    return reduction.weighted_mean(per_example, self.class_weights[y])

  def fused_batch_loss(self, params, x, y, step):
    """`batch_loss` through the fused head: the same weighted mean, its
    gradients computed with the loss (no logits array)."""
    hidden = self.model.features(params, x)
    kernel, bias = self.model.head(params)
    head = lambda name, options: fused.fused_linear_loss(
        hidden, kernel, y, loss=name, bias=bias, weights=self.class_weights[y],
        reduction="mean", **options)
    value = head(self.config.loss, self.config.loss_options)
    if self.pretrain_loss_fn is not None:
      value = jnp.where(step < self.config.pretrain_steps, head(self.config.pretrain_loss, {}),
                        value)
    return value

  def init(self, seed_key):
    params = self.model.init(jax.random.fold_in(seed_key, 0))
    return {"params": params, "opt_state": self.base_optimizer.init(params),
            "diverged": jnp.bool_(False), "diverged_at": jnp.int32(-1)}

  def epoch_permutation(self, data_key, epoch):
    return permutation(jax.random.fold_in(data_key, epoch), self.num_train)

  def interval_batches(self, data_key, first_step, length: int):
    """Batch indices `[length, batch]` of steps first_step .. first_step+length-1,
    drawn before the steps run: each epoch those steps touch is permuted once
    (the same indices as `batch_indices`), and the scanned steps only gather.
    (Batched this way the shuffles of 16 runs x 17 epochs of 1078 examples
    take ~14 ms; with jax.random.permutation's key/value sort they took ~44
    ms, a third of the chunk of the small digits MLP.)"""
    per_epoch, size = self.steps_per_epoch, self.config.batch_size
    first_epoch = first_step // per_epoch
    # `length` consecutive steps touch at most this many epochs.
    epochs = (length - 1) // per_epoch + 2
    permutations = jax.vmap(lambda e: self.epoch_permutation(data_key, first_epoch + e))(
        jnp.arange(epochs))
    steps = first_step + jnp.arange(length)
    rows = steps // per_epoch - first_epoch
    columns = (steps % per_epoch)[:, None] * size + jnp.arange(size)[None, :]
    return permutations[rows[:, None], columns]

  def batch_indices(self, data_key, steps):
    """Indices of each of `steps`' batches (a fresh permutation each epoch),
    step by step: the reference for `interval_batches`, and the batches of
    the benchmarks' per-step loops."""
    epochs = steps // self.steps_per_epoch
    positions = steps % self.steps_per_epoch
    size = self.config.batch_size

    def one(epoch, position):
      permutation = self.epoch_permutation(data_key, epoch)
      return jax.lax.dynamic_slice(permutation, (position * size,), (size,))

    return jax.vmap(one)(epochs, positions)

  def train_step(self, run_state, learning_rate, step, x, y):
    """One SGD-family step. A step whose loss or gradient is NaN/inf is not
    taken: the run is marked diverged and keeps its last finite parameters
    and optimizer state from then on. Checking the gradient rather than the
    new parameters lets the update and the freeze be one pass over them."""
    params, opt_state = run_state["params"], run_state["opt_state"]
    loss, grads = jax.value_and_grad(self.batch_loss)(params, x, y, step)
    finite = jnp.isfinite(loss)
    for leaf in jax.tree.leaves(grads):
      finite &= jnp.all(jnp.isfinite(leaf))
    diverged = run_state["diverged"] | ~finite
    new_params, new_opt_state = self.update(params, opt_state, grads, learning_rate, step)
    keep_old = lambda old, new: jnp.where(diverged, old, new)
    return {**run_state,
            "params": jax.tree.map(keep_old, params, new_params),
            "opt_state": jax.tree.map(keep_old, opt_state, new_opt_state),
            "diverged": diverged,
            "diverged_at": jnp.where(diverged & ~run_state["diverged"], step,
                                     run_state["diverged_at"])}, jnp.where(diverged, jnp.nan, loss)

  def update(self, params, opt_state, grads, learning_rate, step):
    """The optimizer's new parameters and state (the base optimizer runs at
    learning rate 1; its update is scaled by the run's rate and the schedule)."""
    updates, new_opt_state = self.base_optimizer.update(grads, opt_state, params)
    scale = learning_rate * self.schedule(step)
    return jax.tree.map(lambda p, u: p + scale * u, params, updates), new_opt_state

  def evaluate(self, params, x, y) -> dict[str, jax.Array]:
    if self.config.fused_head:
      return self.evaluate_in_chunks(params, x, y)
    raw = self.logits(params, x)
    logits = self._as_metric_logits(raw)
    grad_norm = self._loss_grad_norms(raw, y)
    wrong = jnp.argmax(logits, axis=-1) != y
    return {
        "accuracy": metrics.accuracy(logits, y),
        "balanced_accuracy": metrics.balanced_accuracy(logits, y, self.num_classes),
        "nll": metrics.nll(logits, y),
        "ece": metrics.expected_calibration_error(logits, y),
        "brier": metrics.brier(logits, y),
        "misclassified_grad_norm": reduction.masked_mean(grad_norm, wrong),
    }

  def _loss_grad_norms(self, raw, y):
    """Each example's norm of the loss gradient with respect to its logits."""
    per_example_grad = jax.vmap(jax.grad(
        lambda z, label: self.loss_fn(z[None], label[None])[0]))(raw, y)
    return jnp.sqrt(jnp.sum(jnp.square(per_example_grad.reshape(len(y), -1)), axis=-1))

  def evaluate_in_chunks(self, params, x, y) -> dict[str, jax.Array]:
    """`evaluate`'s metrics with the logits of a chunk of examples at a time
    (about 2**20 logits): each chunk gives per-example numbers, from which
    the metrics are the same functions of all examples."""
    size = max(1, min(len(y), 2**20 // self.num_classes))
    chunks = -(-len(y) // size)
    pad = chunks * size - len(y)
    x_chunks = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(chunks, size, *x.shape[1:])
    y_chunks = jnp.pad(y, (0, pad)).reshape(chunks, size)

    def per_example(chunk):
      xc, yc = chunk
      logits = self.logits(params, xc).astype(jnp.float32)
      log_probs = logits - _softmax.log_normalizer(logits)[:, None]
      probs = jnp.exp(log_probs)
      one_hot = jax.nn.one_hot(yc, self.num_classes, dtype=probs.dtype)
      return {"correct": (jnp.argmax(logits, axis=-1) == yc).astype(jnp.float32),
              "confidence": jnp.max(probs, axis=-1),
              "nll": -_softmax.take_class(log_probs, yc),
              "brier": jnp.sum(jnp.square(probs - one_hot), axis=-1),
              "grad_norm": self._loss_grad_norms(logits, yc)}

    values = jax.tree.map(lambda v: v.reshape(-1)[:len(y)], jax.lax.map(per_example,
                                                                         (x_chunks, y_chunks)))
    correct = values["correct"]
    return {
        "accuracy": jnp.mean(correct),
        "balanced_accuracy": jnp.nanmean(metrics.recall_by_class(correct, y, self.num_classes)),
        "nll": jnp.mean(values["nll"]),
        "ece": metrics.calibration_error(values["confidence"], correct),
        "brier": jnp.mean(values["brier"]),
        "misclassified_grad_norm": reduction.masked_mean(values["grad_norm"], correct == 0),
    }

  def chunk(self, run_state, learning_rate, data_key, first_step, arrays, evals: int):
    """`evals` x `eval_interval` steps of one run, evaluating after each interval."""
    interval = self.config.eval_interval

    def one_interval(state, interval_index):
      start = first_step + interval_index * interval
      steps = start + jnp.arange(interval)
      batches = self.interval_batches(data_key, start, interval)

      def one_step(state, step_and_batch):
        step, batch = step_and_batch
        return self.train_step(state, learning_rate, step, arrays["x_train"][batch],
                               arrays["y_train"][batch])

      state, batch_losses = jax.lax.scan(one_step, state, (steps, batches))
      record = {"train_loss": jnp.mean(batch_losses)}
      for split in self.config.eval_splits:
        for name, value in self.evaluate(state["params"], arrays[f"x_{split}"],
                                         arrays[f"y_{split}"]).items():
          record[f"{split}_{name}"] = value
      return state, record

    return jax.lax.scan(one_interval, run_state, jnp.arange(evals))


def _chunk_layout(total_evals: int, evals_per_chunk_max: int) -> int:
  """The largest divisor of `total_evals` <= the cap: equal chunks, one compile."""
  for evals in range(min(total_evals, max(1, evals_per_chunk_max)), 0, -1):
    if total_evals % evals == 0:
      return evals
  return 1


def cpu_cores() -> int:
  """The CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def use_cpu_cores(count: int | None = None) -> int:
  """Presents the CPU to JAX as `count` devices (default: one per core).

  JAX gives the CPU one device, and a program on it runs its small
  operations on one core. The engine shards its runs over all devices, so
  with one device per core the runs of small models train on every core
  (measured on 2 cores: the digits MLP, 16 runs, 79k run-steps/s on one
  device and 148k on two). Large matrix products use every core either way.

  Must be called before JAX computes anything (the CLI and the benchmarks
  call it at start-up). Without `count`, a device count already set with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is kept. Returns
  the number of CPU devices JAX will have.
  """
  if count is None:
    match = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                      os.environ.get("XLA_FLAGS", ""))
    if match:
      return int(match.group(1))
    count = cpu_cores()
  count = _checks.check_count(count, "count", 1)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as error:  # JAX has started: fine if it has what was asked for
    started_with = jax.local_device_count("cpu")
    if started_with != count:
      raise RuntimeError(
          f"use_cpu_cores({count}) must run before JAX computes anything: JAX has "
          f"already started with {started_with} CPU device(s).") from error
  return count


def _runs_layout(num_runs: int, devices: list) -> tuple[Mesh | None, int]:
  """The mesh that carries the runs axis and the padded number of runs.

  The runs are split evenly over min(runs, devices) devices; when they do
  not divide, copies of the first run fill the last device's share and are
  dropped from the results.
  """
  used = min(num_runs, len(devices))
  if used == 1:
    return None, num_runs
  return Mesh(np.asarray(devices[:used]), ("runs",)), -(-num_runs // used) * used


class Trainer:
  """A compiled training job: ``run()`` trains every run from scratch.

  Construction loads the data, builds the program and compiles it (timed in
  ``compile_seconds``); ``run()`` does only the training, so a benchmark can
  time it alone. ``programs``, a dict the caller keeps, lends a later Trainer
  the compiled program of an earlier one whose config differs only in
  `ARGUMENT_FIELDS` and whose data have the same shapes and class counts
  (``compile_seconds`` is then the lookup's time).
  """

  # The class of the program's pure functions; `benchmarks.engine_probe`
  # substitutes subclasses without parts of the bookkeeping.
  program_type = _Program

  def __init__(self, config: TrainConfig, *, dataset: data_lib.Dataset | None = None,
               devices: list | None = None, programs: dict | None = None):
    if dataset is None:
      dataset = data_lib.load(config.dataset, seed=config.data_seed,
                              imbalance=config.imbalance, noise=config.noise,
                              **config.dataset_options)
    self.config, self.dataset = config, dataset
    self.seeds = np.repeat(np.asarray(config.seeds), len(config.learning_rates))
    self.learning_rates = np.tile(np.asarray(config.learning_rates, np.float32),
                                  len(config.seeds))
    num_runs = len(self.seeds)
    devices = jax.devices() if devices is None else list(devices)
    mesh, padded_runs = _runs_layout(num_runs, devices)
    # Padding runs repeat the first run and are dropped from the results.
    pad = lambda per_run: np.concatenate([per_run,
                                          np.repeat(per_run[:1], padded_runs - num_runs)])
    run_seeds, run_rates = pad(self.seeds), pad(self.learning_rates)

    arrays = {name: jnp.asarray(getattr(dataset, name)) for name in
              ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    if mesh is not None:
      arrays = jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))
    self.arrays = arrays
    seed_keys = jax.vmap(jax.random.key)(jnp.asarray(run_seeds))
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys)
    if config.order_seed:
      data_keys = jax.vmap(lambda k: jax.random.fold_in(k, config.order_seed))(data_keys)
    self._seed_keys = seed_keys
    self._mesh, self._num_runs = mesh, num_runs
    self._rates, self._data_keys = self._on_runs_axis((jnp.asarray(run_rates), data_keys))
    self.devices = devices[:mesh.size] if mesh is not None else devices[:1]

    total_evals = config.steps // config.eval_interval
    evals_per_chunk = _chunk_layout(total_evals, config.max_chunk_steps // config.eval_interval)
    self.chunk_steps = evals_per_chunk * config.eval_interval
    self.eval_steps = np.arange(1, total_evals + 1) * config.eval_interval

    started = time.perf_counter()
    key = None if programs is None else self._program_key(padded_runs)
    built = None if key is None else programs.get(key)
    if built is None:
      built = self._build(evals_per_chunk)
      if key is not None:
        programs[key] = built
    self.program, self._init, self.runs_mode, self._compiled, self._final_logits = built
    self.compile_seconds = time.perf_counter() - started

  # The config's fields that reach the compiled program only as the values of
  # its arguments (the runs' initial keys, rates and batch-order keys; the data
  # `data_seed` draws), or not at all. Programs are reused across them, and
  # `tests/test_train.py` checks that they lower to the same program.
  ARGUMENT_FIELDS = ("seeds", "learning_rates", "order_seed", "data_seed", "targets")

  def _program_key(self, padded_runs: int) -> tuple:
    """What the compiled program is made of: the config but its
    `ARGUMENT_FIELDS`, the number of runs and their devices, and what the
    program takes from the data (its arrays' shapes, its class counts)."""
    dataset = self.dataset
    fields = {name: value for name, value in self.config.to_dict().items()
              if name not in self.ARGUMENT_FIELDS}
    shapes = tuple((name, value.shape, str(value.dtype)) for name, value in self.arrays.items())
    return (self.program_type, json.dumps(fields, sort_keys=True, default=repr), padded_runs,
            tuple(device.id for device in self.devices), shapes,
            dataset.num_classes, tuple(np.asarray(dataset.class_counts()).tolist()),
            jax.config.jax_enable_x64)

  def _build(self, evals_per_chunk: int) -> tuple:
    """Traces and compiles the program: `(program, init, runs_mode, chunk,
    final_logits)`, its pure functions, their jitted init, how the runs share
    it, the compiled chunk of steps and the jitted final logits."""
    config, mesh = self.config, self._mesh
    program = self.program_type(config, self.dataset)
    init = jax.jit(jax.vmap(program.init))
    final_logits = jax.jit(jax.vmap(program.metric_logits, in_axes=(0, None)))
    runs_mode = config.runs_mode
    if runs_mode == "auto":
      runs_mode = "map" if config.model.name == "cnn" and jax.default_backend() == "cpu" else "vmap"

    def run_chunk(state, rates, data_keys, first_step, arrays):
      """The chunk of every run on one device (of all runs without a mesh)."""
      if runs_mode == "vmap":
        return jax.vmap(program.chunk, in_axes=(0, 0, 0, None, None, None))(
            state, rates, data_keys, first_step, arrays, evals_per_chunk)
      return jax.lax.map(
          lambda run: program.chunk(*run, first_step, arrays, evals_per_chunk),
          (state, rates, data_keys))

    if mesh is not None:
      # Each device trains its share of the runs; nothing crosses devices and
      # every output is per run. (check_vma=False: the CPU convolution's
      # custom VJP returns a per-run gradient for the shared input images,
      # which the check rejects although nothing uses it.)
      runs, shared = PartitionSpec("runs"), PartitionSpec()
      run_chunk = jax.shard_map(run_chunk, mesh=mesh, in_specs=(runs, runs, runs, shared, shared),
                                out_specs=runs, check_vma=False)

    state = self._on_runs_axis(init(self._seed_keys))
    compiled = jax.jit(run_chunk).lower(state, self._rates, self._data_keys, jnp.int32(0),
                                        self.arrays).compile()
    return program, init, runs_mode, compiled, final_logits

  def _on_runs_axis(self, tree):
    """Shards the leading (runs) axis over the mesh."""
    if self._mesh is None:
      return tree
    return jax.device_put(tree, NamedSharding(self._mesh, PartitionSpec("runs")))

  def _initial_state(self):
    return self._on_runs_axis(self._init(self._seed_keys))

  def run(self, *, progress: bool = False, keep_final_logits: bool = False) -> History:
    config, arrays = self.config, self.arrays
    n = self._num_runs  # the padding runs, if any, come after these
    state = jax.block_until_ready(self._initial_state())
    records = []
    started = time.perf_counter()
    with _progress.Bar(f"{config.loss} on {self.dataset.name}, {n} runs, steps",
                       config.steps, enabled=progress) as bar:
      for first_step in range(0, config.steps, self.chunk_steps):
        state, record = self._compiled(state, self._rates, self._data_keys,
                                       jnp.int32(first_step), arrays)
        record = jax.device_get(record)
        records.append(record)
        bar.update(min(first_step + self.chunk_steps, config.steps),
                   f"mean test acc {np.nanmean(record['test_accuracy'][:n, -1]):.3f}")
    train_seconds = time.perf_counter() - started

    series = {name: np.concatenate([r[name][:n] for r in records], axis=1)
              for name in records[0]}
    state = jax.device_get(state)
    steps_to_target = {}
    for target in config.targets:
      reached = series["test_accuracy"] >= target
      steps_to_target[target] = np.where(reached.any(axis=1),
                                         self.eval_steps[reached.argmax(axis=1)], -1)
    final_logits = {}
    if keep_final_logits:
      for split in ("val", "test"):
        final_logits[split] = np.asarray(self._final_logits(state["params"],
                                                            arrays[f"x_{split}"]))[:n]
    return History(config.to_dict(), self.seeds, self.learning_rates, self.eval_steps, series,
                   np.asarray(state["diverged"])[:n], np.asarray(state["diverged_at"])[:n],
                   steps_to_target, self.compile_seconds, train_seconds, final_logits)


def train(config: TrainConfig, *, dataset: data_lib.Dataset | None = None,
          progress: bool = False, keep_final_logits: bool = False,
          devices: list | None = None) -> History:
  """Trains every (seed, learning rate) run of `config`; returns the History.

  Does no file I/O. `dataset` overrides loading `config.dataset`. The runs
  are split evenly over `devices` (default: all; at most one device per run),
  padded with copies of the first run when they do not divide (on a CPU, see
  `use_cpu_cores`). `keep_final_logits` adds the final validation and test
  logits of every run to the History.
  """
  trainer = Trainer(config, dataset=dataset, devices=devices)
  return trainer.run(progress=progress, keep_final_logits=keep_final_logits)


def save_json(history: History, path: str) -> None:
  """Writes the history as JSON atomically (a temporary file, then rename)."""
  _io.write_text_atomically(path, json.dumps(history.to_json(), indent=1,
                                             default=_json_default))


def _json_default(value: Any):
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")
