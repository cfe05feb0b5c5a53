"""Where a bfloat16 cross-entropy's time goes, beside optax, on this backend.

  python -m benchmarks.dtype_probe [OUT.json]

lossjax computes bfloat16 logits in float32 (the log-normaliser of bf16
logits in bf16 loses ~3 significant digits). This times, called alternately
in one loop at each large benchmark shape, forward and value_and_grad:
`lossjax` (the library), `optax` (bf16 arithmetic), `optax_f32` (optax on the
logits cast to float32 inside the program: the same arithmetic dtype as
lossjax) and `lossjax_f32_input` (lossjax on float32 logits: twice the bytes
read). If lossjax ≈ optax_f32, a gap to optax is the price of float32
arithmetic, not of lossjax's formulation.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.conftest import LOSS_SHAPES_FULL, device_facts, random_inputs
from lossjax import losses

VARIANTS = {
    "lossjax": lambda z, y: losses.softmax_cross_entropy_with_integer_labels(z, y),
    "optax": optax.softmax_cross_entropy_with_integer_labels,
    "optax_f32": lambda z, y: optax.softmax_cross_entropy_with_integer_labels(
        z.astype(jnp.float32), y),
    "lossjax_f32_input": None,  # lossjax on float32 logits (its own inputs)
}


def _program(fn, mode):
  mean = lambda z, y: jnp.mean(fn(z, y).astype(jnp.float32))
  return jax.jit(mean if mode == "forward" else jax.value_and_grad(mean))


def probe(shape, mode, rounds: int = 50) -> dict:
  logits, labels = random_inputs(shape, jnp.bfloat16)
  logits32 = logits.astype(jnp.float32)
  calls = {}
  for name, fn in VARIANTS.items():
    args = (logits32, labels) if fn is None else (logits, labels)
    fn = VARIANTS["lossjax"] if fn is None else fn
    calls[name] = (_program(fn, mode).lower(*args).compile(), args)
  times = {name: [] for name in calls}
  for _ in range(rounds):  # alternately, so that every variant sees the same machine state
    for name, (compiled, args) in calls.items():
      started = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times[name].append(time.perf_counter() - started)
  return {name: float(np.median(t[3:])) * 1e3 for name, t in times.items()}  # first 3: warm-up


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  rows = []
  print("median ms per call, bfloat16 logits (lossjax_f32_input: float32 logits)")
  print(f"{'shape':>12} {'mode':>15} " + " ".join(f"{n:>17}" for n in VARIANTS))
  for shape in sorted(LOSS_SHAPES_FULL, key=np.prod)[-3:]:
    for mode in ("forward", "value_and_grad"):
      ms = probe(shape, mode)
      rows.append({"batch": shape[0], "classes": shape[1], "mode": mode, "ms": ms})
      print(f"{shape[0]:>6}x{shape[1]:<5} {mode:>15} "
            + " ".join(f"{ms[n]:>17.4g}" for n in VARIANTS), flush=True)
  if argv:
    with open(argv[0], "w") as f:
      json.dump({"facts": device_facts(), "rows": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
