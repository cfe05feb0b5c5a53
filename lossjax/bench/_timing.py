"""Shared benchmark helpers: sizes by grid, machine facts, JAX-correct timing."""

import ctypes
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossjax.bench.plugin import grid

# The loss throughput shapes (batch, classes) of each grid: the headline grid
# is the two largest, where a loss's arithmetic, not dispatch, sets its time.
LOSS_SHAPES = {"smoke": [(128, 10)], "headline": [(256, 32000), (65536, 1000)],
               "full": [(128, 10), (4096, 10), (4096, 1000), (256, 32000), (65536, 1000)]}
LOSS_SHAPES_FULL = LOSS_SHAPES["full"]
# The smoke grid: float32 only; lossjax's bfloat16 path is tested in tests/.
LOSS_DTYPES = {"smoke": ("float32",), "headline": ("float32",), "full": ("float32", "bfloat16")}


def loss_shapes(config):
  return LOSS_SHAPES[grid(config)]


def loss_dtypes(config):
  return LOSS_DTYPES[grid(config)]


def full_grid_only(reason: str) -> list:
  """The parameters of a benchmark the running grid leaves out: one skipped
  case saying why, where an empty list would read "got empty parameter set"."""
  return [pytest.param(None, id="full-grid-only", marks=pytest.mark.skip(reason=reason))]


def device_facts() -> dict:
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "jax_version": jax.__version__}


def available_bytes() -> int:
  """Memory a benchmark may use on the default device (RAM on CPU)."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def skip_if_too_big(needed_bytes: int) -> None:
  free = available_bytes()
  if needed_bytes > 0.5 * free:
    pytest.skip(f"needs ~{needed_bytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on "
                f"{jax.devices()[0].device_kind}")


def pedantic(benchmark, compiled, args, *, timed: bool, rounds: int = 5, warmup: bool = True):
  """Times `compiled(*args)` to completion: inputs already on the device,
  compilation done by the caller, every round ends with block_until_ready.
  Untimed (a smoke run), calls it once through the disabled fixture.

  `warmup=False` for long jobs whose program was compiled ahead of time.
  """
  run = lambda: jax.block_until_ready(compiled(*args))
  if not timed:
    return benchmark(run)
  if warmup:
    run()  # untimed: first-call costs (allocation, thread start) stay out
  return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


def affordable_rounds(compiled, args, rounds: int, budget_s: float) -> int:
  """`rounds`, or fewer (at least 2) when one call of `compiled` takes so long
  that they would exceed `budget_s`: a program of seconds a call (sparsemax at
  65536x1000, optax's: 10 s) is timed in a few rounds, not held to the grid's
  count. The call made here to measure is also a warm-up."""
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - start
  return int(min(rounds, max(2, budget_s // max(seconds, 1e-9))))


# Timed runs have glibc's malloc map every buffer of at least this size
# afresh (mallopt's M_MMAP_THRESHOLD; its default moves between 128 KiB and
# 32 MiB with what the process freed): a call's large buffers are then fresh
# pages every time, page faults included, as a 65536x1000 gradient always is,
# instead of fresh or reused by the allocator's state, which put one
# 256x32000 float32 gradient write at 1.1 ms in one test and ~8 ms in the next.
FRESH_PAGES_FROM_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3


def fresh_pages_for_large_buffers() -> int | None:
  """Sets malloc's mmap threshold to FRESH_PAGES_FROM_BYTES; the threshold,
  or None where the C library has no mallopt (not glibc)."""
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return None
  return FRESH_PAGES_FROM_BYTES if mallopt(_M_MMAP_THRESHOLD, FRESH_PAGES_FROM_BYTES) else None


def loss_program(fn, mode: str):
  """The jitted mean of a per-example loss ("forward") or its value_and_grad."""
  mean_loss = lambda z, y: jnp.mean(fn(z, y).astype(jnp.float32))
  return jax.jit(mean_loss if mode == "forward" else jax.value_and_grad(mean_loss))


def _minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_medians(calls: dict, args, rounds: int, warmup: int = 0,
                        faults: dict | None = None, budget_s: float | None = None,
                        most_rounds: int = 25) -> dict:
  """Median seconds of each compiled call (see `interleaved_times`)."""
  times = interleaved_times(calls, args, rounds, warmup, faults, budget_s, most_rounds)
  return {name: float(np.median(t)) for name, t in times.items()}


def interleaved_times(calls: dict, args, rounds: int, warmup: int = 0,
                      faults: dict | None = None, budget_s: float | None = None,
                      most_rounds: int = 25) -> dict:
  """Seconds of each compiled call in every round (a list per call), the
  calls made one after another in every round so that all see the same
  machine state (a shared machine drifts between tests); the first `warmup`
  rounds are not counted. Their order rotates by one every round: in a
  fixed order, the call after one with a large output measured slower
  (docs/measurement.md), which would bias every ratio between them.

  With `budget_s`, more than `rounds` rounds (up to `most_rounds`) as long as
  they fit in it: calls of milliseconds get enough rounds that a short burst
  of the machine's other work does not move their medians (docs/measurement.md).

  `faults`, if given, receives each call's median count of minor page faults
  (the process's, all threads): on CPU a call whose buffer comes from fresh
  pages of the OS faults once per 4 KiB page (8,001 times for a 256x32000
  float32 gradient, ~8 ms here). glibc maps buffers above 32 MiB afresh on
  every call; below that, which program's buffers are fresh depends on the
  allocator's state, not on the program."""
  times = {name: [] for name in calls}
  counts = {name: [] for name in calls}
  began = time.perf_counter()
  done = 0
  while done < warmup + rounds or (
      budget_s is not None and 0 < done < warmup + most_rounds
      and (time.perf_counter() - began) * (done + 1) / done <= budget_s):
    names = list(calls)
    turn = done % len(names)
    for name in names[turn:] + names[:turn]:
      compiled = calls[name]
      before = _minor_faults()
      started = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times[name].append(time.perf_counter() - started)
      counts[name].append(_minor_faults() - before)
    done += 1
  if faults is not None:
    faults.update({name: float(np.median(c[warmup:])) for name, c in counts.items()})
  return {name: t[warmup:] for name, t in times.items()}


def round_ratio(numerator, *denominators) -> float:
  """The median over rounds of one round's time over the sum of others' in
  the same round (lists from `interleaved_times`). The machine's load moves
  the calls of one round together: a burst that outlasts a few rounds moves
  each call's median, and a ratio of medians with it, but not the ratios
  within its rounds (docs/measurement.md)."""
  return float(np.median(np.asarray(numerator) / np.sum(denominators, axis=0)))


def median_seconds(benchmark) -> float:
  stats = getattr(benchmark, "stats", None)
  if stats is None:  # benchmarks disabled (smoke mode)
    return float("nan")
  return float(stats.stats.median)


def random_inputs(shape, dtype, *, kind="multiclass", seed=0):
  rng = np.random.default_rng(seed)
  batch, classes = shape
  if kind == "binary":
    logits = rng.normal(scale=2.0, size=(batch * classes,))
    labels = rng.integers(0, 2, size=(batch * classes,))
  else:
    logits = rng.normal(scale=2.0, size=shape)
    labels = rng.integers(0, classes, size=(batch,))
  return (jax.device_put(np.asarray(logits, np.float32).astype(dtype)),
          jax.device_put(np.asarray(labels, np.int32)))
