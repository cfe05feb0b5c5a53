"""Loss throughput: every registered loss, forward and value_and_grad, beside optax.

One group per (loss, mode, shape, dtype); where optax has the same loss it is
timed in the same run at the same shape, and lossjax's test also calls both
programs alternately: that ratio (optax time / lossjax time, > 1 means
lossjax is faster) goes into ``extra_info``, as the tables show it. Losses
given with ``--lossjax-loss`` are registered by the plugin and timed as
the built-in ones are (impl ``user``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lossjax import _native
from lossjax import _sigmoid
from lossjax import _softmax
from lossjax import losses
from lossjax.losses import _binary, _sparsemax
from lossjax.bench._timing import (affordable_rounds, device_facts, interleaved_medians,
                                   interleaved_times, round_ratio,
                                   loss_dtypes, loss_program, loss_shapes, median_seconds,
                                   pedantic, random_inputs, skip_if_too_big)
from lossjax.bench.plugin import grid, user_losses

__all__ = ["pytest_generate_tests", "test_stream_read_bandwidth", "test_fresh_output_write",
           "test_exp_sum_floor", "test_loss_floor", "test_gradient_write_floor",
           "test_loss_throughput"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODES = ("forward", "value_and_grad")


def _optax_fn(spec):
  if spec.optax_equivalent is None:
    return None
  fn = getattr(optax.losses, spec.optax_equivalent)
  if spec.optax_equivalent == "poly_loss_cross_entropy":
    # optax's poly loss takes probability labels; one-hot them inside the program.
    return lambda z, y, **kw: fn(z, jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype), **kw)
  if spec.kind == "binary":
    return lambda z, y, **kw: fn(z, y.astype(z.dtype), **kw)
  return fn


# The least arithmetic each kind of loss needs, as a program of its own (each
# reduces to one number, so it writes nothing): every loss reads its logits
# and labels; a binary loss's labels are as many as its logits, and each
# label meets its own logit (`_paired`); a softmax loss also takes an
# exponential per logit relative to a per-row shift that keeps it finite
# (the row max, or one of the row's logits) and row sums; a sigmoid loss a
# softplus (an exp and a log1p) per logit. Each floor is the fastest of its
# formulations, measured in the same test: which one that is depends on the
# backend, the dtype and the JAX version (docs/measurement.md), and a floor
# slower than the loss would be no floor.
def _labels_read(y):
  return jnp.sum(y).astype(jnp.float32)


# The signs 1 - 2y of binary labels as float32 factors, in each way a label
# can meet its logit: converted to float32; through int8; through int8
# written out first, as lossjax's own label pass writes them. XLA:CPU's
# library kernel takes no int32 labels, so summing them apart from the logits
# pairs nothing, which no binary loss can do (docs/measurement.md).
_LABEL_SIGNS = {
    "float": lambda y: 1.0 - 2.0 * y.astype(jnp.float32),
    "int8": lambda y: (1 - 2 * y).astype(jnp.int8).astype(jnp.float32),
    "int8_apart": lambda y: jax.lax.optimization_barrier(
        (1 - 2 * y).astype(jnp.int8)).astype(jnp.float32),
}


def _paired(chain) -> dict:
  """`chain(x)` summed over x = (1 - 2y) z, one program for each of
  `_LABEL_SIGNS`."""
  return {route: lambda z, y, s=signs: jnp.sum(chain(s(y) * z.astype(jnp.float32)))
          for route, signs in _LABEL_SIGNS.items()}


def _paired_native(z, y):
  # sum((1 - 2y) z) and sum(z) as one variadic reduce, which XLA:CPU's
  # library kernel does not take: its own loop reads the int32 labels
  # beside the logits.
  f32 = jnp.float32
  z = z.astype(f32)
  pairs, plain = jax.lax.reduce(((1.0 - 2.0 * y.astype(f32)) * z, z), (f32(0), f32(0)),
                                lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))
  return pairs + plain


def _renamed(prefix: str, programs: dict) -> dict:
  return {f"{prefix}_{route}": fn for route, fn in programs.items()}


def _floor_programs(kind: str) -> dict:
  f32 = lambda z: z.astype(jnp.float32)
  read = {"read": lambda z, y: jnp.sum(z, dtype=jnp.float32) + _labels_read(y)}
  if kind == "read":
    return read
  if kind == "binary_read":
    # A binary loss's value depends on each label together with its own
    # logit (binary sparsemax's is sparseplus(z) - y z): the least such
    # arithmetic is the sum of the signed logits.
    return {**_renamed("pairs", _paired(lambda x: x)), "pairs_native": _paired_native}
  if kind == "sigmoid":
    return {**_renamed("jax_softplus", _paired(jax.nn.softplus)),
            **_renamed("lossjax_softplus", _paired(lambda x: -_sigmoid.log_sigmoids(x)[1]))}
  if kind == "sigmoid_focal":
    # Focal's (1 - p_t)^gamma is exp(gamma log(1 - p_t)): one exponential more
    # than the softplus that gives both log p_t and log(1 - p_t).
    def focal(x):
      log_p, log_q = _sigmoid.log_sigmoids(x)
      return -jnp.exp(2.0 * log_q) * log_p
    return _renamed("softplus_and_exp", _paired(focal))
  if kind == "threshold":
    # Sparsemax's least work with its threshold tau known: the row max that
    # bounds tau (tau >= max - 1) and one pass of relu(z - tau)^2 (||p||^2);
    # finding tau takes more (Michelot's rounds). In XLA's operations that
    # takes a pass of its own; lossjax's CPU kernel (lossjax._native) finds
    # tau from the row in cache and measured faster than this formulation,
    # so the read, a floor of any loss, is one of its formulations too.
    def threshold(z, y):
      tau = jnp.max(z, axis=-1, keepdims=True).astype(jnp.float32) - 0.5
      return jnp.sum(jnp.square(jnp.maximum(f32(z) - tau, 0.0))) + _labels_read(y)
    return {"max_and_relu_squares": threshold, **read}
  def naive(z, y):
    # The max over the logits as stored: a max over converted bfloat16 logits
    # first writes the conversion out (see docs/measurement.md).
    row_max = jnp.max(z, axis=-1, keepdims=True).astype(jnp.float32)
    return jnp.sum(jnp.exp(z.astype(jnp.float32) - row_max)) + _labels_read(y)
  def shifted(z, y):
    # Exponentials relative to one logit of each row (the true class's) need
    # no max pass; lossjax's integer-label losses take them so.
    true_logit = _softmax.take_class(z, y).astype(jnp.float32)
    return jnp.sum(jnp.exp(z.astype(jnp.float32) - true_logit[..., None])) + _labels_read(y)
  def kernel(z, y):
    # lossjax's CPU kernel (lossjax._native): the row max, then the
    # exponentials and their sum from the row in cache, and the label's
    # logit; its exponential measured faster than XLA's.
    return jnp.sum(_softmax.class_statistics(z, y)[1])
  programs = {"naive": naive, "shifted": shifted, "log_normalizer": lambda z, y: jnp.sum(
      _softmax.log_normalizer(z)) + _labels_read(y)}
  return {**programs, "native_kernel": kernel} if _native.runs() else programs


FLOOR_KINDS = ("read", "softmax", "sigmoid", "sigmoid_focal", "threshold", "binary_read")
BINARY_FLOOR_KINDS = ("sigmoid", "sigmoid_focal", "binary_read")


def floor_kind(name: str) -> str:
  """Which floor a registered loss is held to: the cheapest arithmetic its
  formula cannot do without (a user's loss, unknown, to the read)."""
  spec = losses.spec(name)
  if spec.fn is _binary.sigmoid_focal_loss:
    return "sigmoid_focal"
  if spec.fn is _binary.sigmoid_binary_cross_entropy or spec.fn is _binary.sigmoid_squared_error:
    return "sigmoid"
  if spec.fn is _sparsemax.multiclass_sparsemax_loss:
    return "threshold"
  if spec.kind == "multiclass" and (spec.log_normalizer or name == "brier"):
    return "softmax"
  return "read" if spec.kind == "multiclass" else "binary_read"


def _floor_inputs(shape, dtype, kind):
  # The binary losses see B*C logits (and labels) in one axis, as their benchmarks do.
  return _inputs(shape, dtype, "binary" if kind in BINARY_FLOOR_KINDS else "multiclass")


# optax's multiclass sparsemax sorts every row: seconds a call at 65536x1000,
# minutes of the headline run for one cell (its time beside lossjax's is in
# results/BENCHMARKS.md). It is timed beside lossjax's in the full grid
# (--lossjax-full).
OPTAX_IN_FULL_GRID_ONLY = {"sparsemax"}


def _timed_beside_optax(spec, config) -> bool:
  return bool(spec.optax_equivalent) and (
      grid(config) == "full" or spec.name not in OPTAX_IN_FULL_GRID_ONLY)


def pytest_generate_tests(metafunc):
  if "floor_shape" in metafunc.fixturenames:
    shapes = _large_shapes(metafunc.config)
    metafunc.parametrize("floor_shape", shapes, ids=[f"{b}x{c}" for b, c in shapes])
  if "floor_dtype" in metafunc.fixturenames:
    metafunc.parametrize("floor_dtype", loss_dtypes(metafunc.config))
  if "floor_of" in metafunc.fixturenames:
    metafunc.parametrize("floor_of", FLOOR_KINDS)
  if "loss_case" not in metafunc.fixturenames:
    return
  cases, ids = [], []
  yours = user_losses(metafunc.config)
  # Shape and dtype outermost: the inputs of one (shape, dtype) are made once.
  for shape in loss_shapes(metafunc.config):
    for dtype in loss_dtypes(metafunc.config):
      for name in losses.names():
        spec = losses.spec(name)
        impls = ["user"] if name in yours else (
            (["optax"] if _timed_beside_optax(spec, metafunc.config) else []) + ["lossjax"])
        for mode in MODES:
          for impl in impls:  # optax first, so lossjax's ratio can refer to it
            cases.append((name, shape, dtype, mode, impl))
            ids.append(f"{name}-{mode}-{shape[0]}x{shape[1]}-{dtype}-{impl}")
  metafunc.parametrize("loss_case", cases, ids=ids)


_INPUTS: dict = {}


def _inputs(shape, dtype, kind):
  """The current (shape, dtype)'s inputs; older ones are dropped to free memory."""
  key = (shape, dtype, kind)
  if key not in _INPUTS:
    for old in [k for k in _INPUTS if k[:2] != key[:2]]:
      del _INPUTS[old]
    _INPUTS[key] = random_inputs(shape, DTYPES[dtype], kind=kind)
  return _INPUTS[key]


def _bytes_touched(logits, labels, mode) -> int:
  read = logits.nbytes + labels.nbytes
  # value_and_grad reads the logits again for the backward pass and writes the gradient.
  return read if mode == "forward" else read + 2 * logits.nbytes


def test_stream_read_bandwidth(benchmark, timed, session_cache, request):
  """The machine's streaming-read rate: a sum over a 256 MiB float32 array."""
  size = 64 * 2**20 if timed else 2**20
  skip_if_too_big(4 * size * 2)
  data = jax.device_put(np.ones(size, np.float32))
  compiled = jax.jit(jnp.sum).lower(data).compile()
  benchmark.group = "machine"
  pedantic(benchmark, compiled, (data,), timed=timed, rounds=10)
  rate = data.nbytes / median_seconds(benchmark) / 1e9
  session_cache["stream_gb_per_s"] = rate
  benchmark.extra_info.update({"measure": "stream_read", "bytes": data.nbytes,
                               "gb_per_s": rate, **device_facts(),
                               "malloc_mmap_threshold": getattr(
                                   request.config, "_lossjax_mmap_threshold", None)})


def test_fresh_output_write(benchmark, timed, request):
  """The floor of any value_and_grad: `2 * z` reads the largest logits and
  writes a gradient-sized array to a fresh buffer (on CPU every call's
  output is new memory, paid for in page faults)."""
  shape = max(loss_shapes(request.config), key=np.prod)
  skip_if_too_big(4 * int(np.prod(shape)) * 3)
  data = jax.device_put(np.ones(shape, np.float32))
  compiled = jax.jit(lambda z: 2 * z).lower(data).compile()
  benchmark.group = "machine"
  pedantic(benchmark, compiled, (data,), timed=timed, rounds=5)
  seconds = median_seconds(benchmark)
  benchmark.extra_info.update({"measure": "fresh_output_write", "batch": shape[0],
                               "classes": shape[1], "bytes": 2 * data.nbytes,
                               "milliseconds": seconds * 1e3,
                               "gb_per_s": 2 * data.nbytes / seconds / 1e9, **device_facts()})


def _large_shapes(config):
  """The two largest loss shapes (the one shape of a smoke run)."""
  return sorted(loss_shapes(config), key=np.prod)[-2:]


def test_exp_sum_floor(benchmark, floor_shape, timed):
  """The arithmetic every softmax cross-entropy forward does, alone: row max,
  exp(z - max), row sums. Its time is the floor of the forward at that shape."""
  shape = floor_shape
  skip_if_too_big(4 * int(np.prod(shape)) * 2)
  logits, _ = random_inputs(shape, jnp.float32)
  exp_sum = lambda z: jnp.sum(jnp.exp(z - jnp.max(z, axis=-1, keepdims=True)), axis=-1)
  compiled = jax.jit(exp_sum).lower(logits).compile()
  benchmark.group = "machine"
  pedantic(benchmark, compiled, (logits,), timed=timed, rounds=5)
  benchmark.extra_info.update({"measure": "exp_sum_floor", "batch": shape[0],
                               "classes": shape[1],
                               "milliseconds": median_seconds(benchmark) * 1e3,
                               **device_facts()})


def test_loss_floor(benchmark, floor_of, floor_shape, floor_dtype, timed):
  """The forward floor of every loss of a kind at a shape and dtype (see
  `floor_kind`); the loss tables divide each loss's time by it."""
  skip_if_too_big(4 * int(np.prod(floor_shape)) * 2)
  inputs = _floor_inputs(floor_shape, floor_dtype, floor_of)
  compiled = {name: jax.jit(fn).lower(*inputs).compile()
              for name, fn in _floor_programs(floor_of).items()}
  medians = interleaved_medians(compiled, inputs, rounds=5 if timed else 1)
  fastest = min(medians, key=medians.get)
  benchmark.group = "floors"
  pedantic(benchmark, compiled[fastest], inputs, timed=timed, rounds=5)
  benchmark.extra_info.update({"measure": "loss_floor", "kind": floor_of,
                               "formulation": fastest, "batch": floor_shape[0],
                               "classes": floor_shape[1], "dtype": floor_dtype,
                               "milliseconds": float(np.nanmin([median_seconds(benchmark),
                                                                 medians[fastest]])) * 1e3,
                               "formulations_ms": {k: v * 1e3 for k, v in medians.items()},
                               **device_facts()})


def test_gradient_write_floor(benchmark, floor_shape, floor_dtype, timed):
  """Writing a fresh logits-sized gradient in the logits' dtype, nothing read:
  what value_and_grad adds to its forward floor."""
  skip_if_too_big(4 * int(np.prod(floor_shape)) * 2)
  dtype = DTYPES[floor_dtype]
  fill = jax.jit(lambda s: jnp.broadcast_to(s, floor_shape).astype(dtype))
  scalar = jnp.float32(1.0)
  compiled = fill.lower(scalar).compile()
  benchmark.group = "floors"
  pedantic(benchmark, compiled, (scalar,), timed=timed, rounds=5)
  benchmark.extra_info.update({"measure": "gradient_write_floor", "batch": floor_shape[0],
                               "classes": floor_shape[1], "dtype": floor_dtype,
                               "milliseconds": median_seconds(benchmark) * 1e3,
                               **device_facts()})


_OPTAX_PROGRAMS: dict = {}


def _optax_program(spec, mode, logits, labels):
  """optax's compiled program for a case, compiled once: its own test times it,
  lossjax's test calls it alternately with lossjax's."""
  key = (spec.name, mode, logits.shape, str(logits.dtype))
  if key not in _OPTAX_PROGRAMS:
    _OPTAX_PROGRAMS.clear()  # one case at a time: the cases come in optax, lossjax pairs
    fn = lambda z, y, _f=_optax_fn(spec): _f(z, y, **spec.hyperparameters)
    try:
      _OPTAX_PROGRAMS[key] = loss_program(fn, mode).lower(logits, labels).compile()
    except (TypeError, ValueError) as error:
      # optax itself fails on the case (its multiclass_sparsemax_loss cannot be
      # differentiated in bfloat16: its custom JVP returns a bfloat16 tangent
      # for a float32 output): remembered, so lossjax's test is timed alone.
      _OPTAX_PROGRAMS[key] = OptaxFailed(f"{type(error).__name__}: {str(error).splitlines()[0]}")
  return _OPTAX_PROGRAMS[key]


class OptaxFailed(str):
  """Why optax's program for a case could not be built."""


def test_loss_throughput(benchmark, loss_case, timed, request):
  name, shape, dtype, mode, impl = loss_case
  spec = losses.spec(name)
  skip_if_too_big(4 * int(np.prod(shape)) * 4)
  logits, labels = _inputs(shape, dtype, spec.kind)
  if impl == "optax":
    compiled = _optax_program(spec, mode, logits, labels)
    if isinstance(compiled, OptaxFailed):
      pytest.skip(f"optax fails on this case: {compiled}")
  else:
    compiled = loss_program(spec.bind(), mode).lower(logits, labels).compile()
  benchmark.group = f"{name} {mode} {shape[0]}x{shape[1]} {dtype}"
  large = np.prod(shape) >= 4e6
  # The largest shapes take 0.1-1 s a call: the headline grid times fewer rounds.
  full = grid(request.config) == "full"
  rounds = [(5 if full else 3) if large else 20, (7 if full else 5) if large else 30]
  warmup = True
  if timed and large:  # a program of seconds a call gets fewer rounds (~10 s of calls)
    rounds[0] = affordable_rounds(compiled, (logits, labels), rounds[0], 10.0)
    warmup = False  # that call was the warm-up
  pedantic(benchmark, compiled, (logits, labels), timed=timed, rounds=rounds[0], warmup=warmup)
  seconds = median_seconds(benchmark)
  touched = _bytes_touched(logits, labels, mode)
  info = {"loss": name, "impl": impl, "mode": mode, "batch": shape[0], "classes": shape[1],
          "dtype": dtype, "bytes_touched": touched, "floor_kind": floor_kind(name),
          "gb_per_s": touched / seconds / 1e9,
          "optax_equivalent": spec.optax_equivalent, **device_facts()}
  theirs = (_optax_program(spec, mode, logits, labels)
            if impl == "lossjax" and _timed_beside_optax(spec, request.config) else None)
  if isinstance(theirs, OptaxFailed):
    info["optax_fails"] = str(theirs)
  elif theirs is not None:
    # The ratio to optax: both programs called alternately in this test.
    if timed and large:
      rounds[1] = min(rounds[1], affordable_rounds(theirs, (logits, labels), rounds[1], 10.0))
    faults = {}
    times = interleaved_times({"ours": compiled, "theirs": theirs}, (logits, labels),
                              rounds=rounds[1] if timed else 1, faults=faults,
                              budget_s=RATIO_BUDGET_S if timed else None)
    info.update({"interleaved_ms": np.median(times["ours"]) * 1e3,
                 "optax_interleaved_ms": np.median(times["theirs"]) * 1e3,
                 "ratio_to_optax": round_ratio(times["theirs"], times["ours"]),
                 "page_faults_per_call": faults["ours"],
                 "optax_page_faults_per_call": faults["theirs"]})
  if impl != "optax" and timed and shape in _large_shapes(request.config):
    info.update(_floor_ratio(compiled, logits, labels, name, mode))
  benchmark.extra_info.update(info)


_FLOOR_PROGRAMS: dict = {}
# Seconds of alternating calls within which a ratio (to optax, to the floor)
# takes more rounds than its minimum (`interleaved_times`): only cells of
# fast calls get them, so the grids take little longer (docs/measurement.md).
RATIO_BUDGET_S = 1.0


def _floor_ratio(compiled, logits, labels, name, mode, rounds: int = 5) -> dict:
  """The loss's time over its floor, the loss and every formulation of its
  floor (and, for value_and_grad, the fresh gradient write) called
  alternately in this test: a floor timed in a test of its own, minutes
  earlier, sees another machine (one run measured the write at 396 ms, others
  at ~70 ms) and its ratio would measure the drift. Both write their large
  buffers to fresh pages (see `_timing.FRESH_PAGES_FROM_BYTES`)."""
  kind = floor_kind(name)
  key = (kind, mode, logits.shape, str(logits.dtype))
  if key not in _FLOOR_PROGRAMS:
    _FLOOR_PROGRAMS.clear()
    programs = {f"floor_{k}": jax.jit(fn).lower(logits, labels).compile()
                for k, fn in _floor_programs(kind).items()}
    if mode == "value_and_grad":
      write = lambda z, y: jnp.broadcast_to(jnp.ones((), z.dtype), z.shape)
      programs["write"] = jax.jit(write).lower(logits, labels).compile()
    _FLOOR_PROGRAMS[key] = programs
  programs = _FLOOR_PROGRAMS[key]
  faults = {}
  times = interleaved_times({"loss": compiled, **programs}, (logits, labels),
                            rounds=rounds, warmup=1, faults=faults, budget_s=RATIO_BUDGET_S)
  medians = {k: float(np.median(t)) for k, t in times.items()}
  forward = {k[len("floor_"):]: v for k, v in medians.items() if k.startswith("floor_")}
  fastest = min(forward, key=forward.get)
  floor = [times[f"floor_{fastest}"]] + ([times["write"]] if "write" in times else [])
  return {"floor_formulation": fastest, "floor_ms": forward[fastest] * 1e3,
          "gradient_write_ms": medians["write"] * 1e3 if "write" in medians else None,
          "floor_interleaved_ms": medians["loss"] * 1e3,
          "floor_page_faults_per_call": faults,
          "ratio_to_floor": round_ratio(times["loss"], *floor)}
