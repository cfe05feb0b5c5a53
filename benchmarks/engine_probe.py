"""Where the engine's time goes: the training benchmark's engine beside copies
of it without parts of its bookkeeping, called alternately in one process.

  python -m benchmarks.engine_probe [--case digits] [--devices N] [--runs 16]
                                    [--rounds 9] [OUT.json]

Variants (each a `lossjax.train.Trainer` whose program drops something):

- engine: as `lossjax train` runs it;
- no_shuffle: every epoch in the data's stored order (no per-epoch permutations);
- no_divergence_check: no finiteness check of the loss and gradient, no freeze;
- no_evaluation: no validation and test metrics at the end of the chunk;
- bare: none of the three (what is left: model, loss, optimizer, batch gather).

The cases are the training benchmark's (`lossjax/bench/cases.py`), with
one evaluation at the last step. The table gives each variant's median
run-steps/s over the rounds and its share of the engine's time; the
variants train differently (no shuffle) or skip work, so their numbers are
for this accounting only.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from lossjax import train
from lossjax.bench._timing import device_facts, interleaved_medians
from lossjax.bench.cases import THROUGHPUT_CASES, throughput_config

# The probe's names for the training benchmark's cases.
CASES = {"digits": "digits-mlp-64-32-10-tanh", "mnist5k": "mnist5k-mlp"}


class _NoShuffle(train._Program):
  def interval_batches(self, data_key, first_step, length: int):
    steps = first_step + jnp.arange(length)
    size = self.config.batch_size
    return (steps % self.steps_per_epoch)[:, None] * size + jnp.arange(size)[None, :]


class _NoDivergenceCheck(train._Program):
  def train_step(self, run_state, learning_rate, step, x, y):
    loss, grads = jax.value_and_grad(self.batch_loss)(run_state["params"], x, y, step)
    params, opt_state = self.update(run_state["params"], run_state["opt_state"], grads,
                                    learning_rate, step)
    return {**run_state, "params": params, "opt_state": opt_state}, loss


class _NoEvaluation(train._Program):
  def evaluate(self, params, x, y):
    return {"accuracy": jnp.float32(0.0)}  # the progress line reads test accuracy


class _Bare(_NoShuffle, _NoDivergenceCheck, _NoEvaluation):
  pass


VARIANTS = {"engine": train._Program, "no_shuffle": _NoShuffle,
            "no_divergence_check": _NoDivergenceCheck, "no_evaluation": _NoEvaluation,
            "bare": _Bare}


def _trainer(program_type, config: train.TrainConfig) -> train.Trainer:
  return type("ProbeTrainer", (train.Trainer,), {"program_type": program_type})(config)


def probe(case: str, runs: int, rounds: int, steps: int | None = None) -> dict:
  """Median run-steps/s of each variant, the variants run one after another
  in every round (the first, untimed, round warms them up)."""
  benchmark_case = CASES[case]
  steps = steps or THROUGHPUT_CASES[benchmark_case][3]
  config = throughput_config(benchmark_case, runs, steps, eval_interval=steps)
  runs_of = {name: _trainer(program_type, config).run for name, program_type in VARIANTS.items()}
  seconds = interleaved_medians(runs_of, (), rounds, warmup=1)
  return {name: runs * steps / s for name, s in seconds.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_probe", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", choices=list(CASES), default="digits")
  parser.add_argument("--devices", type=int, default=None,
                      help="CPU devices (default: one per core, as `lossjax train`)")
  parser.add_argument("--runs", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--steps", type=int, default=None, help="default: the case's")
  parser.add_argument("out", nargs="?", help="write the rates to this JSON file")
  args = parser.parse_args(argv)
  train.use_cpu_cores(args.devices)  # before JAX starts; no effect on other backends
  rates = probe(args.case, args.runs, args.rounds, args.steps)
  engine = rates["engine"]
  print(f"{args.case}, {args.runs} runs, {jax.device_count()} {jax.default_backend()} "
        f"device(s), median of {args.rounds} alternating rounds:")
  for name, rate in rates.items():
    print(f"  {name:20s} {rate:10,.0f} run-steps/s  ({engine / rate:.0%} of the engine's time)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"case": args.case, "runs": args.runs, "rounds": args.rounds,
                 "run_steps_per_s": rates, **device_facts()}, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
