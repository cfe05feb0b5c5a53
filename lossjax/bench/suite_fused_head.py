"""Fused linear + cross-entropy heads: lossjax beside optax on materialised
logits and PyTorch 2.13's `linear_cross_entropy` (chunked and reference).

One test per case (N, D, V, dtype): `value_and_grad` of the mean cross-entropy
with respect to the hidden states and the weight. Every implementation is
called alternately in the test (one round each, then again), after an
untimed call each (the rounds' median); `lossjax_forward` and
`lossjax_recompute` are the two gradient strategies, one of them what
`strategy="auto"` takes at that shape. JAX programs report XLA's temporary bytes from
`compiled.memory_analysis()`, PyTorch's the peak RSS growth of one call in a
fresh process. The floor is three matrix products of 2 N D V flops (forward
logits, the hidden-state gradient, the weight gradient).
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lossjax.bench._timing import (device_facts, full_grid_only, interleaved_medians, pedantic,
                                   skip_if_too_big)
from lossjax.bench.plugin import grid
from lossjax.fused import default_strategy, fused_linear_loss

__all__ = ["pytest_generate_tests", "test_fused_head"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# (rows, features, classes, dtype, time the materialised and PyTorch programs)
# The headline grid has none: one case takes minutes on 2 CPU cores.
CASES = {"smoke": [(64, 16, 512, "float32", True)], "headline": [],
         "full": [(4096, 512, 32768, "float32", True), (4096, 512, 32768, "bfloat16", True),
                  (4096, 512, 131072, "float32", False)]}


def pytest_generate_tests(metafunc):
  if "fused_case" not in metafunc.fixturenames:
    return
  cases = CASES[grid(metafunc.config)]
  if not cases:
    metafunc.parametrize("fused_case", full_grid_only(
        "the fused heads are timed with --lossjax-full (minutes a case on a CPU)"))
    return
  metafunc.parametrize("fused_case", cases,
                       ids=[f"{n}x{d}x{v}-{dtype}" for n, d, v, dtype, _ in cases])


def _inputs(rows, features, classes, dtype):
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(rows, features)).astype(np.float32)
  weight = (rng.normal(size=(features, classes)) / np.sqrt(features)).astype(np.float32)
  labels = rng.integers(0, classes, size=rows).astype(np.int32)
  return hidden, weight, labels


def _jax_programs(hidden, weight, labels, time_materialised: bool):
  y = jnp.asarray(labels)
  programs = {
      "lossjax_forward": lambda h, w: fused_linear_loss(h, w, y, reduction="mean",
                                                        strategy="forward"),
      "lossjax_recompute": lambda h, w: fused_linear_loss(h, w, y, reduction="mean",
                                                          strategy="recompute"),
      "optax_materialised": lambda h, w: jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(h @ w, y)),
  }
  compiled, temporaries = {}, {}
  for name, fn in programs.items():
    c = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(hidden, weight).compile()
    temporaries[name] = int(c.memory_analysis().temp_size_in_bytes)
    if name != "optax_materialised" or time_materialised:
      compiled[name] = c
  return compiled, temporaries


def _torch_matmul_gflops(dtype: str) -> float:
  """PyTorch's rate for a 512x512 @ 512x2048 product in `dtype` (best of 3)."""
  import time

  import torch
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  a, b = torch.ones(512, 512, dtype=torch_dtype), torch.ones(512, 2048, dtype=torch_dtype)
  seconds = []
  for _ in range(3):
    started = time.perf_counter()
    a @ b
    seconds.append(time.perf_counter() - started)
  return 2 * 512 * 512 * 2048 / min(seconds) / 1e9


# PyTorch is timed in a low-precision dtype only where its matmul there runs at
# least this share of its float32 rate: on a CPU without bfloat16 instructions
# it falls back to a path ~50x slower (one call here would take many minutes).
TORCH_MIN_RATE_SHARE = 0.1


def _torch_call(hidden, weight, labels, dtype: str, chunked: bool):
  """One PyTorch value-and-grad call (forward, backward), grads cleared."""
  import torch
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  h = torch.from_numpy(hidden).to(torch_dtype).requires_grad_()
  # nn.Linear's layout: weight [V, D].
  w = torch.from_numpy(np.ascontiguousarray(weight.T)).to(torch_dtype).requires_grad_()
  y = torch.from_numpy(labels).long()
  options = torch.nn.LinearCrossEntropyOptions() if chunked else None

  def call():
    h.grad = w.grad = None
    loss = torch.nn.functional.linear_cross_entropy(h, w, y, options=options)
    loss.backward()
    return loss

  return call


_PEAK_SCRIPT = r"""
import json, sys
from lossjax.bench.suite_fused_head import _inputs, _torch_call

def status_kib(field):
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

rows, features, classes, dtype, chunked = json.loads(sys.argv[1])
call = _torch_call(*_inputs(rows, features, classes, dtype), dtype, chunked)
with open("/proc/self/clear_refs", "w") as f:
  f.write("5")  # resets the peak RSS (VmHWM) to the current RSS: the inputs' making is not counted
before = status_kib("VmRSS")
call()
print(json.dumps({"peak_rss_growth_bytes": (status_kib("VmHWM") - before) * 1024}))
"""


def _torch_peak_rss_growth(case, chunked: bool) -> int:
  """Peak RSS growth of one PyTorch call in a fresh process (its allocator
  has no counter on CPU; a process that ran the other path would hide it).
  None where /proc cannot reset the peak (not Linux)."""
  import os
  if not os.path.exists("/proc/self/clear_refs"):
    return None
  out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT,
                        json.dumps(list(case[:4]) + [chunked])],
                       capture_output=True, text=True, check=True, timeout=900)
  return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_growth_bytes"])


def test_fused_head(benchmark, fused_case, timed):
  rows, features, classes, dtype, time_references = fused_case
  skip_if_too_big(4 * rows * classes * 3 if time_references else 4 * features * classes * 6)
  hidden_np, weight_np, labels = _inputs(rows, features, classes, dtype)
  hidden = jax.device_put(jnp.asarray(hidden_np, DTYPES[dtype]))
  weight = jax.device_put(jnp.asarray(weight_np, DTYPES[dtype]))
  compiled, temporaries = _jax_programs(hidden, weight, labels, time_references)

  benchmark.group = f"fused_head {rows}x{features}x{classes} {dtype}"
  auto = "lossjax_" + default_strategy("mean", classes)  # what strategy="auto" takes
  pedantic(benchmark, compiled[auto], (hidden, weight), timed=timed, rounds=1)

  calls = {name: (lambda c=c: c(hidden, weight)) for name, c in compiled.items()}
  torch_available, torch_info = True, {}
  try:
    import torch  # noqa: F401
  except ImportError:
    torch_available = False
  if torch_available and dtype != "float32":
    rates = {d: _torch_matmul_gflops(d) for d in (dtype, "float32")}
    torch_info["torch_matmul_gflops"] = rates
    if rates[dtype] < TORCH_MIN_RATE_SHARE * rates["float32"]:
      torch_available = False
      torch_info["torch_not_timed"] = (
          f"PyTorch's {dtype} matmul runs at {rates[dtype]:.1f} GFLOP/s here vs "
          f"{rates['float32']:.0f} in float32")
  if time_references and torch_available:
    calls["torch_chunked"] = _torch_call(hidden_np, weight_np, labels, dtype, chunked=True)
    calls["torch_reference"] = _torch_call(hidden_np, weight_np, labels, dtype, chunked=False)
    for name in ("torch_chunked", "torch_reference"):
      calls[name]()  # untimed first call
  for name in compiled:
    if name != auto:  # its first calls were the benchmark's
      jax.block_until_ready(calls[name]())
  medians = interleaved_medians(calls, (), rounds=(3 if time_references else 2) if timed else 1)

  flops = 3 * 2 * rows * features * classes
  info = {"rows": rows, "features": features, "classes": classes, "dtype": dtype, "auto": auto,
          "floor_flops": flops, "milliseconds": {k: v * 1e3 for k, v in medians.items()},
          "xla_temp_bytes": temporaries,
          "logits_bytes": rows * classes * jnp.dtype(DTYPES[dtype]).itemsize,
          "torch_timed": torch_available and time_references, **torch_info, **device_facts()}
  if time_references and torch_available:
    info["torch_peak_rss_growth_bytes"] = {
        name: _torch_peak_rss_growth(fused_case, chunked=name == "torch_chunked")
        for name in ("torch_chunked", "torch_reference")} if timed else {}
  benchmark.extra_info.update(info)
