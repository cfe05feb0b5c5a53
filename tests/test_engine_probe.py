"""The engine probe: each variant drops what its name says, and nothing else."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import engine_probe
from lossjax import data, models, train


def _config(**options):
  defaults = dict(dataset="digits", model=models.ModelConfig("mlp", hidden=(8,)), batch_size=32,
                  steps=40, eval_interval=20, seeds=(0,), learning_rates=(0.05,))
  return train.TrainConfig(**{**defaults, **options})


def test_no_shuffle_takes_the_stored_order_epoch_after_epoch():
  program = engine_probe._NoShuffle(_config(), data.load("digits"))
  batches = np.asarray(program.interval_batches(None, jnp.int32(30), 5))
  per_epoch = program.steps_per_epoch  # 1078 // 32 = 33
  expected = [(step % per_epoch) * 32 + np.arange(32) for step in range(30, 35)]
  np.testing.assert_array_equal(batches, expected)


def test_no_divergence_check_lets_a_wild_run_go_non_finite():
  # Squared error on logits overflows within a few steps at this rate.
  config = _config(loss="mse", learning_rates=(1e4,))
  checked = train.Trainer(config).run()
  unchecked = engine_probe._trainer(engine_probe._NoDivergenceCheck, config).run()
  assert checked.diverged.all() and np.isfinite(checked.metrics["test_nll"]).all()
  assert not unchecked.diverged.any() and np.isnan(unchecked.metrics["train_loss"]).all()


def test_the_variants_match_the_engine_where_they_keep_its_work():
  config = _config()
  engine = train.Trainer(config).run()
  for variant in (engine_probe._NoDivergenceCheck, engine_probe._NoEvaluation):
    history = engine_probe._trainer(variant, config).run()
    np.testing.assert_array_equal(history.metrics["train_loss"], engine.metrics["train_loss"])


@pytest.mark.slow
def test_probe_times_every_variant():
  rates = engine_probe.probe("digits", runs=2, rounds=1, steps=10)
  assert list(rates) == list(engine_probe.VARIANTS)
  assert all(np.isfinite(rate) and rate > 0 for rate in rates.values())
