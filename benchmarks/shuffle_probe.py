"""What the engine's per-epoch shuffles cost: `lossjax.train.permutation` vs
`jax.random.permutation`, called alternately.

  python -m benchmarks.shuffle_probe [--batches 272] [--n 1078] [--rounds 50] [OUT.json]

Each call makes `--batches` permutations of `--n` indices in one vmapped
program, as the engine does for a chunk (the 16-run digits MLP of the
training benchmark permutes 16 runs x 17 epochs of 1078 examples). The table
gives each variant's median ms per call on the default backend.
"""

from __future__ import annotations

import argparse
import json

import jax

from lossjax import train
from lossjax.bench._timing import device_facts, interleaved_medians

VARIANTS = {
    "lossjax": train.permutation,
    "jax_random": jax.random.permutation,
}


def probe(batches: int, n: int, rounds: int) -> dict:
  """Median ms per call of each variant."""
  keys = jax.random.split(jax.random.key(0), batches)
  calls = {name: jax.jit(jax.vmap(lambda key, fn=fn: fn(key, n))).lower(keys).compile()
           for name, fn in VARIANTS.items()}
  seconds = interleaved_medians(calls, (keys,), rounds, warmup=3)
  return {name: s * 1e3 for name, s in seconds.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.shuffle_probe", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batches", type=int, default=272, help="permutations per call")
  parser.add_argument("--n", type=int, default=1078, help="indices per permutation")
  parser.add_argument("--rounds", type=int, default=50)
  parser.add_argument("out", nargs="?", help="write the medians to this JSON file")
  args = parser.parse_args(argv)
  ms = probe(args.batches, args.n, args.rounds)
  print(f"{args.batches} permutations of {args.n} indices, median ms per call over "
        f"{args.rounds} alternating rounds, {jax.default_backend()}: "
        + ", ".join(f"{name} {value:.3g}" for name, value in ms.items())
        + f"; jax_random / lossjax = {ms['jax_random'] / ms['lossjax']:.2f}x")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"batches": args.batches, "n": args.n, "rounds": args.rounds, "ms": ms,
                 **device_facts()}, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
