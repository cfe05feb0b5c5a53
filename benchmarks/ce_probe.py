"""Where a cross-entropy's time goes: lossjax, its pieces and optax, called alternately.

  python -m benchmarks.ce_probe [--dtype bfloat16] [--shapes large|small] [--rounds 50] [OUT.json]

Every variant computes the mean integer-label cross-entropy (and, with
value_and_grad, its gradient) of the same logits; all are compiled first and
then called one after another in each round, so they see the same machine
state; the table gives each one's median ms per call, and "(N pf)" where the
median call took N minor page faults (fresh pages from the OS: above 32 MiB
every call of a program that allocates such a buffer pays them; below, the
allocator's state decides which variant does). Variants:

- `lossjax`: the library (label checks, float32 arithmetic, log-normaliser
  chosen per backend, the picked logit's gradient as a select);
- `no_label_check`: the same without the label-validity selects;
- `gather_autodiff`: `no_label_check` with the picked logit taken by a plain
  `take_along_axis`, whose gradient autodiff forms as a scatter into a
  logits-sized zero buffer (lossjax before it got its own derivative);
- `optax`: optax in the logits' dtype; `optax_f32`: optax on the logits cast
  to float32 inside the program (lossjax's arithmetic dtype).

For bfloat16 logits, lossjax ≈ optax_f32 means a gap to optax is the cost of
float32 arithmetic; lossjax > no_label_check, the cost of the label checks;
gather_autodiff vs no_label_check, what the select-gradient saves.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lossjax import _softmax, losses
from lossjax.bench._timing import (LOSS_SHAPES_FULL, device_facts, interleaved_medians,
                                   loss_program, random_inputs)

f32 = lambda z: z.astype(jnp.float32)

VARIANTS = {
    "lossjax": losses.softmax_cross_entropy_with_integer_labels,
    "no_label_check": lambda z, y: _softmax.log_normalizer(f32(z)) - _softmax.take_class(f32(z), y),
    "gather_autodiff": lambda z, y: _softmax.log_normalizer(f32(z)) - jnp.take_along_axis(
        f32(z), y[:, None], axis=-1)[:, 0],
    "optax": optax.softmax_cross_entropy_with_integer_labels,
    "optax_f32": lambda z, y: optax.softmax_cross_entropy_with_integer_labels(f32(z), y),
}


def probe(shape, dtype, mode, rounds: int) -> dict:
  """Median ms per call of every variant at one shape, dtype and mode."""
  args = random_inputs(shape, jnp.dtype(dtype))
  calls = {name: loss_program(fn, mode).lower(*args).compile() for name, fn in VARIANTS.items()}
  loss_value = lambda compiled: float(compiled(*args) if mode == "forward" else compiled(*args)[0])
  reference = loss_value(calls["no_label_check"])
  faults = {}
  seconds = interleaved_medians(calls, args, rounds, warmup=3, faults=faults)
  for name, compiled in calls.items():  # every variant computes the same loss
    np.testing.assert_allclose(loss_value(compiled), reference, rtol=2e-2, err_msg=name)
  return {name: s * 1e3 for name, s in seconds.items()}, faults


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.ce_probe", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--shapes", default="large", choices=("large", "small"),
                      help="the benchmark's three largest shapes, or its three smallest")
  parser.add_argument("--rounds", type=int, default=50)
  parser.add_argument("out", nargs="?", help="write the medians to this JSON file")
  args = parser.parse_args(argv)
  ordered = sorted(LOSS_SHAPES_FULL, key=np.prod)
  shapes = ordered[-3:] if args.shapes == "large" else ordered[:3]
  print(f"median ms per call, {args.dtype} logits, {args.rounds} alternating rounds, "
        f"{jax.default_backend()}")
  print(f"{'shape':>12} {'mode':>15} " + " ".join(f"{n:>18}" for n in VARIANTS))
  rows = []
  for shape in shapes:
    for mode in ("forward", "value_and_grad"):
      ms, faults = probe(shape, args.dtype, mode, args.rounds)
      rows.append({"batch": shape[0], "classes": shape[1], "mode": mode, "ms": ms,
                   "page_faults_per_call": faults})
      cell = lambda n: f"{ms[n]:.4g}" + (f" ({faults[n]:.0f} pf)" if faults[n] else "")
      print(f"{shape[0]:>6}x{shape[1]:<5} {mode:>15} "
            + " ".join(f"{cell(n):>18}" for n in VARIANTS), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"facts": device_facts(), "dtype": args.dtype, "rounds": args.rounds,
                 "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
