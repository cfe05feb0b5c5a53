"""The engine: determinism, divergence, compile count, devices, CLI."""

import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.stats

from lossjax import cli, data, models, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(dataset="digits", model=models.ModelConfig(width=32), batch_size=32, steps=100,
             eval_interval=25, seeds=(0, 1), learning_rates=(0.05, 0.2), max_chunk_steps=50)


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.fixture(scope="module")
def small_program(digits):
  """The SMALL config's program (pure functions: tests may share it)."""
  return train._Program(train.TrainConfig(**SMALL), digits)


@pytest.fixture(scope="module")
def small_history(digits):
  return train.train(train.TrainConfig(**SMALL), dataset=digits)


def test_history_has_every_metric_for_every_run_and_evaluation(small_history):
  history = small_history
  assert history.num_runs == 4
  np.testing.assert_array_equal(history.eval_steps, [25, 50, 75, 100])
  for split in ("val", "test"):
    for name in train.EVAL_METRICS:
      assert history.metrics[f"{split}_{name}"].shape == (4, 4)
  assert history.metrics["train_loss"].shape == (4, 4)
  assert np.all(history.metrics["test_accuracy"][:, -1] > 0.8)
  assert not history.diverged.any()


def test_steps_to_target_is_the_first_evaluation_reaching_it(small_history):
  accuracy = small_history.metrics["test_accuracy"]
  for target, steps in small_history.steps_to_target.items():
    for run in range(small_history.num_runs):
      reached = np.flatnonzero(accuracy[run] >= target)
      expected = small_history.eval_steps[reached[0]] if len(reached) else -1
      assert steps[run] == expected


def test_same_config_gives_the_same_numbers(small_history, digits):
  again = train.train(train.TrainConfig(**SMALL), dataset=digits)
  for name, values in small_history.metrics.items():
    np.testing.assert_array_equal(values, again.metrics[name], err_msg=name)


def test_a_diverging_run_is_marked_and_the_others_go_on(digits):
  # Squared error on logits overflows to inf within a few steps at this rate.
  config = train.TrainConfig(**{**SMALL, "loss": "mse", "learning_rates": (0.05, 1e4), "seeds": (0,)})
  history = train.train(config, dataset=digits)
  sane, wild = history.runs_at(0.05)[0], history.runs_at(1e4)[0]
  assert history.diverged[wild] and not history.diverged[sane]
  assert 0 < history.diverged_at[wild] <= 100
  assert history.metrics["test_accuracy"][sane, -1] > 0.8
  assert history.best_learning_rate() == pytest.approx(0.05)


def test_one_compilation_for_the_whole_grid(digits, caplog):
  config = train.TrainConfig(**{**SMALL, "seeds": (0, 1, 2), "learning_rates": (0.01, 0.1, 0.3),
                                "steps": 200, "loss": "focal"})
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    history = train.train(config, dataset=digits)
  compiles = [r for r in caplog.records if "run_chunk" in r.getMessage()
              and "Finished" not in r.getMessage()]
  assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]
  assert history.num_runs == 9 and len(history.eval_steps) == 8


def _program_text(trainer) -> str:
  """The trainer's compiled program, without where in the source its
  operations were traced (whose numbering depends on what was traced before)."""
  text = trainer._compiled.as_text().split("\nFileNames")[0]
  return re.sub(r", metadata=\{[^}]*\}", "", text)


def test_a_program_is_reused_across_seeds_rates_and_batch_orders_only(digits, monkeypatch):
  base = train.TrainConfig(**SMALL)
  programs = {}
  first = train.Trainer(base, dataset=digits, programs=programs)
  other = dataclasses.replace(base, seeds=(5, 6), learning_rates=(0.1, 0.3), order_seed=2,
                              data_seed=1, targets=(0.5,))
  assert set(train.Trainer.ARGUMENT_FIELDS) == {
      f.name for f in dataclasses.fields(base) if getattr(other, f.name) != getattr(base, f.name)}
  reused = train.Trainer(other, dataset=digits, programs=programs)
  assert reused._compiled is first._compiled and len(programs) == 1
  # The argument fields change no program: built afresh, it is the same one,
  # and so are the numbers.
  fresh = train.Trainer(other, dataset=digits)
  assert _program_text(fresh) == _program_text(first)
  ours, theirs = reused.run(keep_final_logits=True), fresh.run(keep_final_logits=True)
  for name, values in {**theirs.metrics, **theirs.final_logits}.items():
    np.testing.assert_array_equal({**ours.metrics, **ours.final_logits}[name], values,
                                  err_msg=name)

  # Anything else builds a program of its own.
  built = []

  def build(self, evals_per_chunk):
    built.append(self.config)
    return object(), object(), "vmap", object(), object()

  monkeypatch.setattr(train.Trainer, "_build", build)
  fewer = digits.replace(x_train=digits.x_train[:-10], y_train=digits.y_train[:-10])
  # The same shapes, other class counts (class-balanced weights are constants).
  relabelled = digits.replace(y_train=np.where(np.arange(len(digits.y_train)) < 10, 0,
                                               digits.y_train))
  for config, dataset in [(dataclasses.replace(base, steps=50), digits),
                          (dataclasses.replace(base, loss="focal"), digits),
                          (dataclasses.replace(base, loss_options={"gamma": 1.0}), digits),
                          (dataclasses.replace(base, seeds=(0, 1, 2)), digits),
                          (dataclasses.replace(base, class_balance_beta=0.9), digits),
                          (base, fewer), (base, relabelled)]:
    train.Trainer(config, dataset=dataset, programs=programs)
  assert len(built) == 7 and len(programs) == 8


@pytest.mark.parametrize("loss, dataset", [("binary_cross_entropy", "breast_cancer"),
                                           ("binary_mse", "breast_cancer"),
                                           ("mse", "digits"), ("hinge", "digits")])
def test_losses_of_both_kinds_train(loss, dataset):
  config = train.TrainConfig(**{**SMALL, "dataset": dataset, "loss": loss, "seeds": (0,)})
  history = train.train(config)
  assert np.nanmax(history.metrics["test_accuracy"][:, -1]) > 0.8


def test_class_balanced_weighting_and_cnn(digits):
  config = train.TrainConfig(**{**SMALL, "model": models.ModelConfig("cnn", width=16),
                                "class_balance_beta": 0.99, "imbalance": 10.0, "seeds": (0,),
                                "steps": 20, "eval_interval": 10})
  history = train.train(config)
  assert np.all(np.isfinite(history.metrics["test_balanced_accuracy"]))


def test_an_order_seed_changes_the_batches_not_the_initial_models(digits):
  options = {**SMALL, "eval_splits": ("train", "val", "test")}
  base = train.Trainer(train.TrainConfig(**options), dataset=digits)
  other = train.Trainer(train.TrainConfig(**options, order_seed=1), dataset=digits)
  same_init = jax.tree.map(np.array_equal, base._initial_state()["params"],
                           other._initial_state()["params"])
  assert all(jax.tree.leaves(same_init))
  first, second = base.run(), other.run()
  assert not np.array_equal(first.metrics["train_loss"], second.metrics["train_loss"])
  # The train split is evaluated on request.
  assert first.metrics["train_accuracy"].shape == first.metrics["test_accuracy"].shape


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="`eval_splits` must hold 'val' and 'test'"):
    train.TrainConfig(eval_splits=("train", "test"))
  with pytest.raises(ValueError, match="`order_seed` must be >= 0"):
    train.TrainConfig(order_seed=-1)
  with pytest.raises(ValueError, match="unknown loss"):
    train.TrainConfig(loss="nope")
  with pytest.raises(ValueError, match="must be a multiple of `eval_interval`"):
    train.TrainConfig(steps=110, eval_interval=25)
  with pytest.raises(ValueError, match="unknown optimizer"):
    train.TrainConfig(optimizer="sgdd")
  with pytest.raises(ValueError, match="binary"):
    train.train(train.TrainConfig(**{**SMALL, "loss": "binary_cross_entropy"}))


_SHARDED_SCRIPT = """
import json, sys, jax
from lossjax import models, train
results = []
for options, devices in json.loads(sys.argv[1]):
  config = train.TrainConfig(**options | {"model": models.ModelConfig(**options["model"])})
  trainer = train.Trainer(config, devices=jax.devices()[:devices])
  history = trainer.run()
  results.append({"devices": len(trainer.devices), "acc": history.metrics["test_accuracy"].tolist(),
                  "loss": history.metrics["train_loss"].tolist()})
print(json.dumps({"devices": jax.device_count(), "results": results}))
"""


def _train_on_cpu(jobs: list, devices: int) -> list[dict]:
  """Each (options, device count) of `jobs` trained in one subprocess that
  has `devices` simulated CPU devices."""
  # The session's XLA flags too (tests/conftest.py), so both sides compile alike.
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, json.dumps(jobs)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == devices
  assert [r["devices"] for r in result["results"]] == [used for _, used in jobs]
  return result["results"]


# One run per device and eight runs on one device are different programs
# whose float rounding differs (~1e-7). A smooth activation keeps that at
# rounding level; with ReLU a pre-activation that rounds to the other side
# of 0 changes the gradient outright (seed 3 at lr 0.05: 3e-3 apart after
# 100 steps).
EIGHT_RUNS = {**SMALL, "seeds": [0, 1, 2, 3], "learning_rates": [0.05, 0.2],
              "model": {"width": 32, "activation": "tanh"}}
# 3 runs, a CNN's. 10 steps: the CNN trains ~50 run-steps/s here, and the
# check is equality.
THREE_CNN_RUNS = {**SMALL, "seeds": [0, 1, 2], "learning_rates": [0.05], "steps": 10,
                  "eval_interval": 5, "model": {"name": "cnn", "width": 16}}


@pytest.fixture(scope="module")
def sharded():
  """EIGHT_RUNS on 8 devices and THREE_CNN_RUNS on 2, in one subprocess of 8
  simulated CPU devices (JAX starts once)."""
  return dict(zip(("eight", "cnn"), _train_on_cpu([(EIGHT_RUNS, 8), (THREE_CNN_RUNS, 2)], 8)))


def _on_one_device(options) -> dict:
  if jax.default_backend() != "cpu":
    # An accelerator's numbers differ from the CPU's: the reference runs on the CPU too.
    return _train_on_cpu([(options, 1)], 1)[0]
  history = train.train(train.TrainConfig(
      **options | {"model": models.ModelConfig(**options["model"])}))
  return {"acc": history.metrics["test_accuracy"], "loss": history.metrics["train_loss"]}


@pytest.mark.slow
def test_eight_simulated_devices_give_the_one_device_result(sharded):
  single = _on_one_device(EIGHT_RUNS)
  np.testing.assert_allclose(sharded["eight"]["acc"], single["acc"], atol=1e-6)
  np.testing.assert_allclose(sharded["eight"]["loss"], single["loss"], rtol=1e-4)


@pytest.mark.slow
def test_runs_that_do_not_divide_are_padded_and_a_cnn_maps_its_runs_per_device(sharded):
  # 3 runs on 2 devices: a copy of run 0 fills device 1's share and is dropped.
  # The CNN's runs are mapped (lax.map) on each device, as on one.
  assert np.shape(sharded["cnn"]["acc"]) == (3, 2)
  single = _on_one_device(THREE_CNN_RUNS)
  np.testing.assert_allclose(sharded["cnn"]["acc"], single["acc"], atol=1e-6)
  np.testing.assert_allclose(sharded["cnn"]["loss"], single["loss"], rtol=1e-4)


_CORES_SCRIPT = """
import json, sys, jax
from lossjax import train
kept = train.use_cpu_cores(None if sys.argv[1] == "default" else int(sys.argv[1]))
print(json.dumps({"returned": kept, "cpu_devices": jax.local_device_count("cpu")}))
"""


@pytest.mark.parametrize("count, xla_flags, expected", [
    ("3", "", 3), ("default", "", train.cpu_cores()),
    ("default", "--xla_force_host_platform_device_count=5", 5)])
def test_use_cpu_cores_sets_the_cpu_device_count(count, xla_flags, expected):
  env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CORES_SCRIPT, count], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout) == {"returned": expected, "cpu_devices": expected}


def test_use_cpu_cores_after_jax_started_names_the_problem():
  jax.numpy.zeros(1).block_until_ready()
  started_with = jax.local_device_count("cpu")
  assert train.use_cpu_cores(started_with) == started_with  # nothing to change
  with pytest.raises(RuntimeError, match=r"must run before JAX computes anything.*"
                                         f"{started_with} CPU device"):
    train.use_cpu_cores(started_with + 1)
  for bad in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match="`count` must be a positive integer"):
      train.use_cpu_cores(bad)


def test_cli_trains_and_writes_plain_json(tmp_path, capsys):
  path = tmp_path / "out.json"
  code = cli.main(["train", "--dataset", "digits", "--width", "32", "--seeds", "2",
                   "--lrs", "0.05,0.2", "--steps", "100", "--eval-interval", "50",
                   "--batch-size", "32", "--json", str(path), "--quiet"])
  assert code == 0
  written = json.loads(path.read_text())
  assert len(written["runs"]) == 4
  run = written["runs"][0]
  assert {"seed", "learning_rate", "diverged", "steps_to_target", "test_accuracy",
          "val_accuracy", "test_ece", "test_nll", "train_loss"} <= set(run)
  assert len(run["test_accuracy"]) == 2
  assert "final test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("flag, message", [(["--dataset", "nope"], "unknown dataset 'nope'"),
                                           (["--loss", "nope"], "unknown loss 'nope'")])
def test_cli_names_the_valid_choices(flag, message):
  with pytest.raises(SystemExit, match=message):
    cli.main(["train", *flag])


@pytest.mark.parametrize("first, length", [(0, 1), (0, 40), (7, 13), (29, 70), (100, 1)])
def test_interval_batches_equal_the_step_by_step_epochs(small_program, first, length):
  program = small_program
  key = jax.random.key(3)
  steps = jax.numpy.arange(first, first + length)
  expected = np.asarray(program.batch_indices(key, steps))
  got = np.asarray(jax.jit(program.interval_batches, static_argnums=2)(key, first, length))
  np.testing.assert_array_equal(got, expected)
  per_epoch = program.steps_per_epoch
  one_epoch = np.asarray(program.interval_batches(key, per_epoch, per_epoch))
  assert len(set(one_epoch.ravel())) == per_epoch * SMALL["batch_size"]  # no repeats


def test_a_step_with_a_non_finite_gradient_is_not_taken(small_program, digits):
  program = small_program
  state = program.init(jax.random.key(0))
  x = np.asarray(digits.x_train[:32]).copy()
  y = np.asarray(digits.y_train[:32])
  step = jax.jit(program.train_step)
  good, loss = step(state, np.float32(0.1), np.int32(3), x, y)
  assert np.isfinite(loss) and not good["diverged"]
  x[0, 0] = np.nan  # one poisoned example: the loss and every gradient are NaN
  bad, loss = step(good, np.float32(0.1), np.int32(4), x, y)
  assert np.isnan(loss) and bad["diverged"] and int(bad["diverged_at"]) == 4
  for kept, before in zip(jax.tree.leaves(bad["params"]), jax.tree.leaves(good["params"])):
    np.testing.assert_array_equal(kept, before)
  later, _ = step(bad, np.float32(0.1), np.int32(5), np.asarray(digits.x_train[:32]), y)
  assert later["diverged"] and int(later["diverged_at"]) == 4  # frozen from then on
  for kept, before in zip(jax.tree.leaves(later["params"]), jax.tree.leaves(good["params"])):
    np.testing.assert_array_equal(kept, before)


@pytest.mark.parametrize("n, packed_max", [(1, None), (2, None), (5, None), (1078, None),
                                           (70_000, None), (1078, 1000)])
def test_permutation_holds_every_index_once(n, packed_max):
  limit = {} if packed_max is None else {"packed_max": packed_max}  # 1000: jax.random's path
  order = np.asarray(jax.jit(lambda k: train.permutation(k, n, **limit))(jax.random.key(n)))
  assert order.dtype == np.int32
  np.testing.assert_array_equal(np.sort(order), np.arange(n))
  if n > 2:
    assert not np.array_equal(order, np.arange(n))


@pytest.mark.parametrize("n", [-1, 2.0, "5", True])
def test_permutation_names_a_bad_n(n):
  with pytest.raises(ValueError, match="`n` must be a non-negative integer"):
    train.permutation(jax.random.key(0), n)


def test_permutation_is_uniform():
  # All 24 orders of 4 elements, 48,000 shuffles: chi-square against uniform.
  keys = jax.random.split(jax.random.key(0), 48_000)
  orders = np.asarray(jax.jit(jax.vmap(lambda k: train.permutation(k, 4)))(keys))
  _, counts = np.unique(orders, axis=0, return_counts=True)
  assert len(counts) == 24
  assert scipy.stats.chisquare(counts).pvalue > 1e-3
  # Larger n: every element's mean position over 2,000 shuffles is (n-1)/2.
  n = 1078
  orders = np.asarray(jax.jit(jax.vmap(lambda k: train.permutation(k, n)))(keys[:2000]))
  positions = np.argsort(orders, axis=1)  # positions[s, i]: where element i went
  std_of_mean = np.sqrt((n * n - 1) / 12 / 2000)
  assert np.all(np.abs(positions.mean(axis=0) - (n - 1) / 2) < 5 * std_of_mean)


def test_fused_head_trains_as_the_materialised_head():
  """`fused_head=True` gives the same runs (same batches, same loss, its
  gradients computed without logits) and the same chunked evaluation."""
  options = dict(dataset="blobs", dataset_options={"num_classes": 50, "num_examples": 1000,
                                                   "dim": 16},
                 loss="label_smoothing", model=models.ModelConfig(width=32), seeds=(0, 1),
                 learning_rates=(0.1,), steps=40, eval_interval=20, class_balance_beta=0.9)
  plain = train.train(train.TrainConfig(**options))
  fused = train.train(train.TrainConfig(**options, fused_head=True))
  for name, values in plain.metrics.items():
    np.testing.assert_allclose(fused.metrics[name], values, rtol=2e-5, atol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match="`fused_head` needs a multiclass loss"):
    train.TrainConfig(dataset="breast_cancer", loss="binary_cross_entropy", fused_head=True)
