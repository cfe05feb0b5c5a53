"""The training benchmark's cases, shared by `test_training.py` and
`engine_probe.py`: one definition of what "the digits MLP" is."""

from __future__ import annotations

from lossjax import models, train

THROUGHPUT_CASES = {
    # name: (dataset, model, batch, full steps)
    "mnist5k-mlp": ("mnist5k", models.ModelConfig("mlp", width=256), 128, 200),
    # ~40 run-steps/s on a 2-core CPU: fewer steps.
    "mnist5k-cnn": ("mnist5k", models.ModelConfig("cnn", width=120), 128, 50),
    # The "MLP 64-32-10": 64 inputs, one hidden layer of 32, 10 logits
    # (as its "784-256-10" for mnist5k). Runs before 2026-11-30 had a 64-64-32-10
    # model under the name "digits-mlp-64-32-tanh".
    "digits-mlp-64-32-10-tanh": ("digits", models.ModelConfig("mlp", hidden=(32,),
                                                              activation="tanh"), 32, 500),
}


def throughput_config(case: str, runs: int, steps: int, eval_interval: int) -> train.TrainConfig:
  """`runs` seeds of a case at learning rate 0.05, plain SGD, one chunk."""
  dataset, model, batch, _ = THROUGHPUT_CASES[case]
  return train.TrainConfig(dataset=dataset, model=model, batch_size=batch, steps=steps,
                           eval_interval=eval_interval, seeds=tuple(range(runs)),
                           learning_rates=(0.05,), optimizer="sgd",
                           optimizer_options={}, max_chunk_steps=steps)
