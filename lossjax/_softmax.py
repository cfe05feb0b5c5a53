"""The softmax log-normaliser and the pieces every softmax loss is built from.

All functions here take logits with the class axis last and reduce over that
last axis. `log_normalizer` and `take_class` also take bfloat16/float16
logits as they are stored: on XLA:CPU a row max or a gather over logits
converted to float32 makes the program write the whole converted array out
first (a logits-sized float32 buffer, 64,002 fresh pages at (65536, 1000)),
where the same reduction over the stored logits reads them once (the
measurements behind this module's choices: docs/measurement.md). A max and a
pick are exact in any dtype, so only the exponentials need the wider one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lossjax import _checks, _native, _softmax_functionals

Array = jax.Array


def _row_sums_fused(sums: Array) -> Array:
  """Leaves the row sums for the default (GPU/TPU) fusion decisions."""
  return sums


def _row_sums_materialized(sums: Array) -> Array:
  """Marks the row sums with a no-op rounding so that XLA:CPU keeps them apart.

  On CPU, XLA fuses max, exp-and-sum *and* the log that follows into one
  kernel that runs several times slower than the exp-and-sum alone, and
  takes a logits-sized buffer of fresh pages every call (docs/measurement.md).
  Rounding to the dtype's own precision changes no bit but is not fused
  into that kernel.
  """
  info = jnp.finfo(sums.dtype)
  return jax.lax.reduce_precision(sums, exponent_bits=info.nexp,
                                  mantissa_bits=info.nmant)


def _two_byte_float(values: Array) -> bool:
  """Whether `values` are bfloat16 or float16 (static)."""
  return values.dtype.itemsize == 2 and jnp.issubdtype(values.dtype, jnp.floating)


def compute(values: Array) -> Array:
  """`values` in the dtype losses compute in: float32 for narrower floats."""
  return values.astype(_checks.compute_dtype(values.dtype))


def apart(row_values: Array) -> Array:
  """`row_values` (a row reduction's result), kept out of the consumer's
  fusion on XLA:CPU (see `_row_sums_materialized`); unchanged elsewhere.

  XLA:CPU otherwise fuses a row reduction with the elementwise work on its
  result and the reduction after it (a loss's mean) into one library kernel
  that writes the row reduction's logits-sized input out first (sparsemax's
  squared-probability sum at (65536, 1000) float32: 64,002 page faults a call
  without this, none with it).
  """
  return jax.lax.platform_dependent(row_values, cpu=_row_sums_materialized,
                                    default=_row_sums_fused)


def read_again(values, times: int = 1):
  """`values` (an array or a tuple of them) as new values for one more pass
  of their own to read: `times` optimization barriers, no-ops at run time.

  XLA:CPU writes out a logits-sized value that two passes share, where each
  pass alone would compute it as it reads: the float32 conversion of
  bfloat16 logits, or a row statistic broadcast over the classes. A barrier
  makes each pass's copy its own; distinct passes need distinct counts.
  """
  for _ in range(times):
    values = jax.lax.optimization_barrier(values)
  return values


# Logits per chunk of rows for work that takes several passes over each row
# (sparsemax's threshold rounds, Brier's two sums of exponentials): 1 MiB of
# float32, so that every pass after the first reads them from the cache
# (docs/measurement.md); chunks of half or twice the size measured slower for
# sparsemax, and half the size for Brier.
CHUNK = 2 ** 18


def rows_per_chunk(rows: int, classes: int, size: int = CHUNK) -> int:
  """Rows per chunk: the most, up to `size` logits, that divide `rows`.

  lax.map runs the rows that fill no whole chunk apart, and first slices the
  others out of the logits, a copy as large as the logits. Where no divisor
  of at least half the most does (a prime number of rows), the copy is taken
  rather than chunks too small for the cache to pay.
  """
  most = max(1, size // max(classes, 1))
  divisor = next(k for k in range(min(most, max(rows, 1)), 0, -1) if rows % k == 0)
  return divisor if 2 * divisor >= min(most, rows) else most


def by_row_chunks(fn, args: tuple, chunk: int):
  """`fn(*args)` on `chunk` rows of `args` (arrays whose leading axis is the
  rows) at a time: `lax.map` over whole chunks, so that `fn` sees a chunk
  `[chunk, ...]`, not one row under vmap (a `lax.cond` in it then branches
  once for the chunk, where under vmap it runs both branches); the rows that
  fill no whole chunk are one call more. `fn` returns an array, or a tuple of
  them, with the rows leading.

  Each chunk is sliced from `args` behind an optimization barrier that
  depends on the chunk's index: XLA:CPU slices no bfloat16, and would
  otherwise convert all the logits to float32 once, out of the loop (a
  logits-sized write; as their uint16 bits, a copy), before the loop's
  slices read them (docs/measurement.md)."""
  count = args[0].shape[0]
  whole = count - count % chunk
  parts = []
  if whole:
    def chunk_of(index):
      stored = jax.lax.optimization_barrier((args, index))[0]
      return fn(*(jax.lax.dynamic_slice_in_dim(a, index * chunk, chunk) for a in stored))
    stacked = jax.lax.map(chunk_of, jnp.arange(whole // chunk))
    parts.append(jax.tree.map(lambda x: x.reshape(whole, *x.shape[2:]), stacked))
  if whole < count or not parts:  # (or no rows at all)
    parts.append(fn(*(a[whole:] for a in args)))
  return jax.tree.map(lambda *x: jnp.concatenate(x, axis=0), *parts)


@jax.custom_jvp
def row_sum_apart(values: Array, weights: Array | None = None) -> Array:
  """sum over the last axis of `compute(values)` (times `weights`, shaped
  `[1, ..., 1, C]`, if given), `[..., C] -> [...]`, its pass reading `values`
  on its own.

  The values are read from behind optimization barriers (`read_again`):
  XLA merges equal conversions of bfloat16 logits to float32, and XLA:CPU then
  writes the one shared conversion out for the two row sums that read it
  (the log-normaliser's and this one; 262 MB a call at (65536, 1000)). The
  derivative is the plain sum's, with no barrier in it: a barrier's
  transpose writes the broadcast cotangent out as a logits-sized array of
  its own before the gradient's other terms are added to it.
  """
  # Two barriers: the log-normaliser's derivative reads the logits from
  # behind one, and the same barrier twice would be merged with it.
  values = compute(read_again(values, 2))
  return jnp.sum(values if weights is None else values * weights, axis=-1)


@row_sum_apart.defjvp
def _row_sum_apart_jvp(primals, tangents):
  (values, weights), (d_values, d_weights) = primals, tangents
  d_wide = compute(d_values)
  if weights is None:
    return row_sum_apart(values), jnp.sum(d_wide, axis=-1)
  tangent = jnp.sum(d_wide * weights + compute(values) * d_weights, axis=-1)
  return row_sum_apart(values, weights), tangent


def log_normalizer(logits: Array, *, shift: Array | None = None,
                   platform: str | None = None) -> Array:
  """logsumexp over the last axis: `[..., C] -> [...]`, in float32 or wider
  (the dtype of `compute(logits)`).

  `shift`, optional, `[...]`: one of each row's own logits (the true class's,
  say), in the logits' dtype. On CPU, from `SHIFT_FROM_LOGITS` logits on, the
  exponentials are then taken relative to it in one pass over the logits
  (`shifted_log_normalizer`) instead of relative to the row max, which costs
  XLA:CPU a pass of its own; other backends and fewer logits ignore it.

  The formulation is chosen per backend when the program is lowered
  (``jax.lax.platform_dependent``); `platform` ('cpu' or 'default') forces
  one, for tests of the path the current machine would not take.
  """
  if logits.shape[-1] == 0:  # no classes: log 0 (a sum over them is then empty, 0)
    return jnp.full(logits.shape[:-1], -jnp.inf, compute(logits).dtype)
  if shift is not None and platform == "cpu" and shift_pays(logits):
    return shifted_log_normalizer(logits, shift)
  if shift is not None and platform is None:
    return shifted_where_it_pays(logits, lambda: shifted_log_normalizer(logits, shift),
                                 lambda: log_normalizer(logits))
  # log sum_j exp(z_j) = m + log sum_j exp(z_j - m) for any m; m = max keeps
  # every exponent <= 0 so nothing overflows, and one term is exactly 1. The
  # max is taken in the logits' own dtype (exact), the rest in float32.
  row_max = compute(jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  sums = jnp.sum(jnp.exp(compute(logits) - row_max), axis=-1)
  if platform == "cpu":
    sums = _row_sums_materialized(sums)
  elif platform == "default":
    sums = _row_sums_fused(sums)
  elif platform is None:
    sums = apart(sums)
  else:
    raise ValueError(f"`platform` must be 'cpu', 'default' or None, got {platform!r}.")
  return row_max[..., 0] + jnp.log(sums)


# From this many logits on, a shift by one of each row's logits pays for its
# conditional on CPU: below, the conditional's fixed cost a call outweighs the
# max's pass it saves (docs/measurement.md).
SHIFT_FROM_LOGITS = 1 << 18


def shift_pays(logits: Array) -> bool:
  """Whether `logits` are many enough for `shifted_log_normalizer` (static)."""
  return logits.size >= SHIFT_FROM_LOGITS


def shifted_where_it_pays(logits: Array, shifted, by_max):
  """`shifted()`, sums relative to one of each row's logits, where the program
  is lowered for CPU and `logits` has `SHIFT_FROM_LOGITS` or more entries;
  `by_max()`, relative to the row max, elsewhere. XLA:CPU only: other
  backends fuse the max into the sum's kernel anyway, and a conditional (the
  shift's fallback) can cost a device-to-host sync (GPU)."""
  if not shift_pays(logits):
    return by_max()
  return jax.lax.platform_dependent(cpu=shifted, default=by_max)


@jax.custom_jvp
def shifted_log_normalizer(logits: Array, shift: Array) -> Array:
  """logsumexp over the last axis, `[..., C], [...] -> [...]`, in float32 or
  wider, from exponentials relative to `shift`, one of each row's own logits.

  ``log sum_j exp(z_j) = c + log sum_j exp(z_j - c)`` for any c. With c the
  row max, as `log_normalizer` takes it, every exponent is <= 0; but that max
  is used twice (inside the sum and added after the log), and XLA:CPU then
  runs it as a pass over the logits of its own, where a max used only inside
  the sum is fused into the sum's pass (the measurements:
  docs/measurement.md). With c one of the row's logits the sum holds exp(0) =
  1, so it is >= 1 and cannot underflow; it overflows only where a logit lies
  more than ~88 (float32) above c. If any row's sum is not finite, the whole
  batch is computed relative to the row max instead (`lax.cond`: one branch
  runs; under `vmap` the two become a select and both run).

  Its derivative is softmax(z) . dz, the probabilities recomputed as
  `exp(z - logsumexp)` from the logits read again (`read_again`), so that
  the forward pass's exponentials are never written out to be shared with
  the backward pass; `shift` has no derivative (the value does not depend on
  it). Saved for the backward pass: nothing but the logits and the result.
  """
  wide_shift = compute(shift)
  sums = apart(jnp.sum(jnp.exp(compute(logits) - wide_shift[..., None]), axis=-1))
  return jax.lax.cond(jnp.all(jnp.isfinite(sums)),
                      lambda: wide_shift + jnp.log(sums),
                      lambda: log_normalizer(logits))


@shifted_log_normalizer.defjvp
def _shifted_log_normalizer_jvp(primals, tangents):
  (logits, shift), (d_logits, _) = primals, tangents
  value = shifted_log_normalizer(logits, shift)
  return value, _log_normalizer_tangent(logits, value, compute(d_logits))


def _log_normalizer_tangent(logits: Array, value: Array, d_wide: Array) -> Array:
  """softmax(z) . dz, the probabilities recomputed as exp(z - logsumexp) from
  the logits read again, `value` the log-normaliser."""
  probs = jnp.exp(compute(read_again(logits)) - value[..., None])
  return jnp.sum(probs * d_wide, axis=-1)


def masked_log_normalizer(logits: Array, keep: Array) -> Array:
  """logsumexp over the classes where `keep` is True: `[..., C] -> [...]`.

  Masked logits become -inf (their softmax weight, and gradient, is 0). A row
  with nothing kept is given zeros instead, so that its value and gradient
  stay finite; callers set that example's loss to 0.
  """
  any_kept = jnp.any(keep, axis=-1, keepdims=True)
  fill = jnp.where(any_kept, -jnp.inf, 0.0).astype(logits.dtype)
  return log_normalizer(jnp.where(keep, logits, fill))


@jax.custom_jvp
def row_max(values: Array) -> Array:
  """max over the last axis, `[..., C] -> [...]`, in the dtype of `values`, with
  jnp.max's derivative (the tangent averaged over the row's maxima).

  The derivative's indicator of the maxima is arithmetic (`_indicator`),
  not jnp.max's compare, and NaN in a row with a NaN, as are the derivative
  and, under differentiation, the value (`with_nan_of`). The value alone is
  jnp.max's: on XLA:CPU a float32 or float64 row max drops a NaN
  (openxla/xla#21461; two-byte floats keep it).
  """
  return jnp.max(values, axis=-1)


@row_max.defjvp
def _row_max_jvp(primals, tangents):
  (values,), (d_values,) = primals, tangents
  top = row_max(values)
  tangent, count = _row_max_derivative(values, top, compute(d_values))
  return with_nan_of(top, count), tangent.astype(top.dtype)


def _row_max_derivative(values: Array, top: Array, d_wide: Array,
                        count: Array | None = None) -> tuple:
  """jnp.max's tangent, in the compute dtype, of the row maxima `top`, and
  the count of the maxima it averages over (NaN in a row with a NaN),
  counted here unless given (`_max_true_logit_and_count`)."""
  level = compute(top)
  if count is None:
    count = _count_equal(values, level)
  return jnp.sum(_indicator(values, level) * d_wide, axis=-1) / count, count


def with_nan_of(values: Array, counts: Array) -> Array:
  """`values` (`[...]`), NaN where `counts` (`[...]`) is NaN and `values`
  are finite (an infinite max stays itself: its count is NaN from inf - inf).

  XLA:CPU's float32 and float64 max over a row drops a NaN in it (its
  library kernel; openxla/xla#21461), so a row max there says nothing of a
  NaN among the row's other values. The derivatives' counts (`_count_equal`)
  do: a max's value from a derivative's rule carries them, so that a
  gradient step sees its loss NaN as well as its gradient."""
  return jnp.where(jnp.isinf(values), values, values + (0.0 * counts).astype(values.dtype))


def _indicator(values: Array, level: Array) -> Array:
  """`[..., C]`, in the compute dtype: 1 where `values` equal their row's
  `level` (`[...]`), 0 elsewhere, NaN where either is NaN, as arithmetic,
  1 - sign(|z - level|): XLA:CPU computes it inside the pass that uses it,
  where a compare's indicator is first written out as a logits-sized array
  (docs/measurement.md). Exact, but for values a subnormal number apart,
  which XLA:CPU's flush of such differences to 0 makes equal."""
  wide = compute(values)
  return 1.0 - _differs(wide, level[..., None])


def _differs(values: Array, level: Array) -> Array:
  """sign(|values - level|): 0 where equal, 1 where not, NaN with a NaN (a
  max or min in its place would drop the NaN on XLA:CPU). sign of the
  difference itself, where most differences are negative, took XLA:CPU's
  library kernel twice the time (docs/measurement.md)."""
  return jnp.sign(jnp.abs(values - level))


def _count_equal(values: Array, level: Array) -> Array:
  """How many of each row's `values` equal its `level`, `[...]`, NaN in a
  row with a NaN: C less the sum of `_differs`, three operations a logit.

  In a pass of its own: its inputs from behind a barrier and the count kept
  apart (`apart`), so that the gradient's loop computes its indicator again.
  Shared with that loop, XLA:CPU writes `_differs` out as a logits-sized
  float32 array; made one kernel with a bfloat16 gradient, the indicator or
  the true class's one-hot (docs/measurement.md).
  """
  values, level = read_again((values, level))
  differ = jnp.sum(_differs(compute(values), level[..., None]), axis=-1)
  return values.shape[-1] - apart(differ)


@jax.custom_jvp
def take_class(values: Array, labels: Array) -> Array:
  """values[..., labels]: `[..., C], [...] -> [...]`, labels in `[0, C)`, in
  the dtype of `values`.

  The derivative of two-byte floats is a masked row sum (`labels == class
  index`), so that a gradient flows back as an elementwise select that XLA
  fuses with the rest of the backward pass: the transpose of the gather, a
  scatter, is made in float32 around a bfloat16 gradient, one more full pass
  over memory. Four- and eight-byte floats keep the gather's own derivative:
  XLA:CPU scatters it into the dense gradient in place, one value a row,
  where the select's compare against the class index costs every element
  (the measurements: docs/measurement.md).

  Two-byte floats are gathered as their bits (uint16): XLA moves a float32
  conversion of the picked values in front of the gather, converting every
  logit, and then writes all of them out (see the module's docstring).
  """
  if _two_byte_float(values):
    bits = jax.lax.bitcast_convert_type(values, jnp.uint16)
    return jax.lax.bitcast_convert_type(_gather(bits, labels), values.dtype)
  return _gather(values, labels)


def _gather(values: Array, labels: Array) -> Array:
  return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


@take_class.defjvp
def _take_class_jvp(primals, tangents):
  values, labels = primals
  d_values, _ = tangents  # labels are integers: no tangent
  if values.dtype.itemsize >= 4:
    return take_class(values, labels), _gather(d_values, labels)
  return take_class(values, labels), _true_class_tangent(labels, d_values)


def _is_class(shape: tuple, labels: Array) -> Array:
  """`[..., C]` booleans: whether each position along the last axis is the
  row's class in `labels` (`[...]`)."""
  return jax.lax.broadcasted_iota(labels.dtype, shape, len(shape) - 1) == labels[..., None]


# The rival max's blocks: the widest class count per block in this range
# that divides the classes (a narrower block makes the block maxima a larger
# array to write, a wider one the true class's block).
_RIVAL_BLOCKS = range(64, 15, -1)


# Logits of the true classes' blocks gathered at a time (`rival_max`).
OWN_BLOCKS_CHUNK = 2 ** 16


def _rival_block(classes: int) -> int | None:
  """Classes per block for `rival_max`, or None where none divides them or
  where a row is narrower than the narrowest block. Such a row is one block,
  and its own block a copy of the logits, as many values as the select
  writes, after the block maxima's extra pass and small kernels of their own
  (docs/measurement.md)."""
  if classes < _RIVAL_BLOCKS[-1]:
    return None
  if classes <= _RIVAL_BLOCKS.start:
    return classes
  return next((k for k in _RIVAL_BLOCKS if classes % k == 0), None)


@jax.custom_jvp
def rival_max(values: Array, labels: Array) -> Array:
  """max over the last axis with class `labels` left out, `[..., C], [...] ->
  [...]`, labels in `[0, C)`, in the dtype of `values` (-inf where C = 1).

  A select that leaves the class out (`where(class == label, -inf, z)`) is
  written out as a logits-sized array before XLA:CPU's max reads it. Here the
  classes are cut into blocks of k (a divisor of C): the block maxima are a
  max over the stored logits (one fast pass, writing C/k values a row), and
  only the true class's own block of k logits is picked and searched with the
  class left out; the rival is the larger of that and the other blocks'
  maxima. Where C < 16, or no k in 16..64 divides C (C > 64), the select is used.
  A NaN in a row, other than the label's, gives NaN where `row_max` does
  (two-byte floats through their block maxima).

  The derivative is jnp.max's (the tangent averaged over the classes, other
  than the label's, that attain the max), its indicator arithmetic as in
  `row_max`; the label's class, which may tie the rival, is taken back out.
  """
  classes = values.shape[-1]
  k = _rival_block(classes)
  if k is None:
    return jnp.max(jnp.where(_is_class(values.shape, labels), -jnp.inf, values), axis=-1)
  blocks = values.reshape(*values.shape[:-1], classes // k, k)
  block_max = jnp.max(blocks, axis=-1)
  args = (block_max.reshape(-1, classes // k), blocks.reshape(-1, *blocks.shape[-2:]),
          labels.reshape(-1))
  count = args[0].shape[0]
  chunk = rows_per_chunk(count, k, OWN_BLOCKS_CHUNK)
  # float32 blocks are searched a chunk of rows at a time: gathered for all
  # rows at once, the label's own blocks are an array of k logits a row,
  # written out on fresh pages every call (13 MB at 65536x1000). Two-byte
  # floats take all rows at once (chunked, they measured 0.93-1.09x the
  # time), as do rows that no chunk size divides (the loop would copy them
  # out) and rows that fit one chunk (docs/measurement.md).
  if _two_byte_float(values) or count % chunk or chunk == count:
    return _rival_of_blocks(*args).reshape(labels.shape)
  return by_row_chunks(_rival_of_blocks, args, chunk).reshape(labels.shape)


def _rival_of_blocks(block_max: Array, blocks: Array, labels: Array) -> Array:
  """rival_max from the block maxima `[rows, n]` and the blocks `[rows, n, k]`:
  the max of the other blocks' maxima and the label's own block with the
  label left out, as one reduction over the two side by side (one kernel
  fewer than a max of each: docs/measurement.md)."""
  k = blocks.shape[-1]
  others = jnp.where(_is_class(block_max.shape, labels // k), -jnp.inf, block_max)
  own = _own_block(blocks, labels // k)
  own = jnp.where(_is_class(own.shape, labels % k), -jnp.inf, own)
  rival = jnp.max(jnp.concatenate([compute(others), own], axis=-1), axis=-1)
  if _two_byte_float(block_max):
    # The two-byte block maxima keep a NaN of their block (XLA:CPU's float32
    # max above drops it): the rows' NaNs, from them.
    rival = with_nan_of(rival, apart(jnp.sum(jnp.sign(read_again(compute(block_max))), axis=-1)))
  return rival.astype(block_max.dtype)


def _own_block(blocks: Array, index: Array) -> Array:
  """`blocks[..., index, :]`, `[..., n, k], [...] -> [..., k]`, in the compute
  dtype. Two-byte floats are gathered as their bits and converted after:
  XLA:CPU's own loop over bfloat16 values (the gather, the select and the max
  that follow) costs it twice the time (docs/measurement.md)."""
  narrow = _two_byte_float(blocks)
  source = jax.lax.bitcast_convert_type(blocks, jnp.uint16) if narrow else blocks
  own = jnp.take_along_axis(source, index[..., None, None], axis=-2)[..., 0, :]
  return compute(jax.lax.bitcast_convert_type(own, blocks.dtype) if narrow else own)


@rival_max.defjvp
def _rival_max_jvp(primals, tangents):
  values, labels = primals
  d_values, _ = tangents  # labels are integers: no tangent
  rival = rival_max(values, labels)
  tangent, count = _rival_max_derivative(values, labels, rival, compute(d_values))
  return with_nan_of(rival, count), tangent.astype(rival.dtype)


def _rival_max_derivative(values: Array, labels: Array, rival: Array, d_wide: Array,
                          count: Array | None = None) -> tuple:
  """`rival_max`'s tangent, in the compute dtype, and the count of the
  classes other than the label's at the rival (NaN in a row with a NaN),
  counted here unless given (`_rival_true_logit_and_ties`)."""
  level, true_at_level = _rival_level(rival, compute(take_class(values, labels)))
  if count is None:
    count = _rival_ties(values, level, true_at_level)
  share = (jnp.sum(_indicator(values, level) * d_wide, axis=-1)
           - true_at_level * _true_class_tangent(labels, d_wide))
  return share / jnp.maximum(count, 1.0), count


def _rival_level(rival: Array, true_logit: Array) -> tuple:
  """The level the rival's derivative compares the logits with, and whether
  the label's logit lies at it (1 or 0). A rival of -inf (every other class
  -inf, or C = 1) has no derivative: a finite stand-in keeps the indicator
  finite (the ties' count is then 0)."""
  level = jnp.where(rival == -jnp.inf, 0.0, compute(rival))
  return level, _indicator(true_logit[..., None], level)[..., 0]


def _rival_ties(values: Array, level: Array, true_at_level: Array) -> Array:
  """The classes other than the label's at `level`: the label's own class,
  which may tie the rival, taken back out of the count."""
  return _count_equal(values, level) - true_at_level


def _true_class_tangent(labels: Array, d_values: Array) -> Array:
  """`take_class`'s tangent as a masked row sum, in the tangent's dtype."""
  return jnp.sum(jnp.where(_is_class(d_values.shape, labels), d_values, 0.0), axis=-1)


def margin_statistics(values: Array, labels: Array, rival: bool = False) -> tuple:
  """``(top, z[..., label])`` in float32 or wider, `[..., C], [...] -> [...]`
  each: `top` the row max (`row_max`), or with `rival` the max without the
  label's class (`rival_max`). As `class_statistics`, two-byte floats give
  both one derivative, one float32 expression rounded once."""
  if _two_byte_float(values):
    return _narrow_margin_statistics(values, labels, rival)
  return _margin_statistics(values, labels, rival)


def _margin_statistics(values: Array, labels: Array, rival: bool) -> tuple:
  if _native.takes(values):
    return (_rival_and_true_logit if rival else _max_and_true_logit)(values, labels)
  top = rival_max(values, labels) if rival else row_max(values)
  return compute(top), compute(take_class(values, labels))


def _xla_max_and_true_logit(values: Array, labels: Array) -> tuple:
  return compute(row_max(values)), compute(take_class(values, labels))


@jax.custom_jvp
def _max_and_true_logit(values: Array, labels: Array) -> tuple:
  """`row_max` and `take_class`, in float32: on CPU from the rival's kernel
  (`lossjax._native`), the max the larger of the rival and the label's logit
  (NaN where either is), so that the derivative's count of the maxima comes
  from the same pass (the ties at the rival, and the label); elsewhere XLA's
  row max, which other backends fuse. The derivatives are `row_max`'s and
  `take_class`'s."""
  def on_cpu(v, y):
    rival, true_logit = _native.rival_and_true_logit(v, y, _xla_rival_and_true_logit)
    return jnp.maximum(rival, true_logit), true_logit
  return jax.lax.platform_dependent(values, labels, cpu=on_cpu, default=_xla_max_and_true_logit)


def _max_true_logit_and_count(values: Array, labels: Array) -> tuple:
  """`_max_and_true_logit`'s two and the count of the classes at the max,
  which its derivative divides by: on CPU from the rival's kernel (the
  ties at the rival where it is the max, and the label where it is), where
  XLA's form counts in a pass over the logits of its own."""
  def on_cpu(v, y):
    rival, true_logit, ties = _rival_true_logit_and_ties(v, y)
    top = jnp.maximum(rival, true_logit)
    at_top = (true_logit == top).astype(ties.dtype)
    return top, true_logit, jnp.where(rival == top, ties, 0.0) + at_top
  def elsewhere(v, y):
    top, true_logit = _xla_max_and_true_logit(v, y)
    return top, true_logit, _count_equal(v, top)
  return jax.lax.platform_dependent(values, labels, cpu=on_cpu, default=elsewhere)


@_max_and_true_logit.defjvp
def _max_and_true_logit_jvp(primals, tangents):
  (values, labels), (d_values, _) = primals, tangents
  top, true_logit, count = _max_true_logit_and_count(values, labels)
  d_top, _ = _row_max_derivative(values, top, compute(d_values), count)
  return (with_nan_of(top, count), true_logit), (d_top, compute(_gather(d_values, labels)))


@jax.custom_jvp
def _rival_and_true_logit(values: Array, labels: Array) -> tuple:
  """`rival_max` and `take_class`, in float32, from one pass over the logits
  on CPU (`lossjax._native`: XLA:CPU reads them about three times for the
  rival alone) and from XLA's forms elsewhere. The derivatives are those of
  `rival_max` and `take_class`."""
  return _native.rival_and_true_logit(values, labels, _xla_rival_and_true_logit)


def _xla_rival_and_true_logit(values: Array, labels: Array) -> tuple:
  return compute(rival_max(values, labels)), compute(take_class(values, labels))


@_rival_and_true_logit.defjvp
def _rival_and_true_logit_jvp(primals, tangents):
  # The derivative's kernel, which also counts the ties the rival's tangent
  # divides by.
  (rival, true_logit, ties), (d_rival, d_true, _) = jax.jvp(
      _rival_true_logit_and_ties, primals, tangents)
  return (with_nan_of(rival, ties), true_logit), (d_rival, d_true)


@jax.custom_jvp
def _rival_true_logit_and_ties(values: Array, labels: Array) -> tuple:
  """`_rival_and_true_logit` and the count of the classes other than the
  label's at the rival, which the rival's derivative divides by, from the
  same pass (on CPU the count from the row in cache, where XLA's form counts
  in a pass over the logits of its own). Its own derivative gives the first
  two theirs and the count none, so that a second derivative can run
  through it."""
  return _native.rival_true_logit_and_ties(values, labels, _xla_rival_true_logit_and_ties)


def _xla_rival_true_logit_and_ties(values: Array, labels: Array) -> tuple:
  rival, true_logit = _xla_rival_and_true_logit(values, labels)
  return rival, true_logit, _rival_ties(values, *_rival_level(rival, true_logit))


@_rival_true_logit_and_ties.defjvp
def _rival_true_logit_and_ties_jvp(primals, tangents):
  values, labels = primals
  d_values, _ = tangents
  rival, true_logit, ties = _rival_true_logit_and_ties(values, labels)
  d_rival, _ = _rival_max_derivative(values, labels, rival, compute(d_values), ties)
  return ((rival, true_logit, ties),
          (d_rival, compute(_gather(d_values, labels)), jnp.zeros_like(ties)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _narrow_margin_statistics(values: Array, labels: Array, rival: bool) -> tuple:
  return _margin_statistics(values, labels, rival)


@_narrow_margin_statistics.defjvp
def _narrow_margin_statistics_jvp(rival, primals, tangents):
  (values, labels), (d_values, _) = primals, tangents
  d_wide = compute(d_values)
  if rival and _native.takes(values):
    top, true_logit, ties = _rival_true_logit_and_ties(values, labels)
    d_top, count = _rival_max_derivative(values, labels, top, d_wide, ties)
    return (with_nan_of(top, count), true_logit), (d_top, _true_class_tangent(labels, d_wide))
  if _native.takes(values):
    top, true_logit, count = _max_true_logit_and_count(values, labels)
    d_top, _ = _row_max_derivative(values, top, d_wide, count)
    return (with_nan_of(top, count), true_logit), (d_top, _true_class_tangent(labels, d_wide))
  top, true_logit = _narrow_margin_statistics(values, labels, rival)
  d_top, count = (_rival_max_derivative(values, labels, top, d_wide) if rival
                  else _row_max_derivative(values, top, d_wide))
  return (with_nan_of(top, count), true_logit), (d_top, _true_class_tangent(labels, d_wide))


def true_class_log_prob(logits: Array, labels: Array) -> Array:
  """log softmax(logits)[label], without forming the full log-softmax, in
  float32 or wider (the log-normaliser shifted by the true class's logit)."""
  true_logit, log_norm = class_statistics(logits, labels)
  return true_logit - log_norm


def class_statistics(logits: Array, labels: Array, row_sum: bool = False) -> tuple:
  """The row statistics of the softmax losses with integer labels, in float32
  or wider: ``(z[..., label], logsumexp(z))``, and ``sum_c z_c`` after them
  if `row_sum`; `[..., C], [...] -> [...]` each.

  For two-byte floats the three share one derivative (`_narrow_statistics`),
  so that the gradient is one float32 expression rounded once to the logits'
  dtype: each statistic's own derivative gives a bfloat16 cotangent, and the
  sum of two or three of them costs XLA's gradient loop a rounding and two
  conversions per logit (docs/measurement.md), and rounds the true class's
  entry twice. Wider floats keep each statistic's own derivative: their
  cotangents add without rounding, and the true logit's is a scatter into
  the gradient, one value a row.

  On CPU, for rows of `NATIVE_FROM_CLASSES` or more, the values come from
  lossjax's kernel in one pass over the logits (`_native_statistics`), the
  log-normaliser relative to the row max, and the three tangents are one
  primitive whose transpose, the gradient, is lossjax's kernel too
  (`lossjax._softmax_functionals`), for both dtypes.
  """
  if native_statistics_pay(logits):
    return _native_statistics(logits, labels, row_sum)
  if _two_byte_float(logits):
    return _narrow_statistics(logits, labels, row_sum)
  return _xla_statistics(logits, labels, row_sum)


# From this many classes on, the softmax losses' row statistics come from
# lossjax's CPU kernel (`_native_statistics`): on shorter rows its fixed cost
# a row (two passes, the lanes' reductions) outweighs its faster exponential
# (docs/measurement.md).
NATIVE_FROM_CLASSES = 256


def native_statistics_pay(logits: Array) -> bool:
  """Whether `logits` take lossjax's CPU kernel for the softmax statistics
  (static): rows of `NATIVE_FROM_CLASSES` or more, and `_native.takes`."""
  return logits.shape[-1] >= NATIVE_FROM_CLASSES and _native.takes(logits)


def _xla_statistics(logits: Array, labels: Array, row_sum: bool) -> tuple:
  true_logit = take_class(logits, labels)
  values = (compute(true_logit), log_normalizer(logits, shift=true_logit))
  return values + (row_sum_apart(logits),) if row_sum else values


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _native_statistics(logits: Array, labels: Array, row_sum: bool) -> tuple:
  """`_xla_statistics`' values from one pass over the logits on CPU
  (`lossjax._native`: XLA:CPU takes the row sum in a pass of its own, and
  its exponential runs slower), and from XLA's operations elsewhere. The
  log-normaliser is relative to the row max, which the kernel takes from the
  row in cache."""
  def finish(true_logit, row_max, sums, *rest):
    return (true_logit, row_max + jnp.log(sums), *rest)
  return _native.softmax_statistics(
      logits, labels, functools.partial(_xla_statistics, row_sum=row_sum),
      extra="row_sum" if row_sum else None, finish=finish)


@_native_statistics.defjvp
def _native_statistics_jvp(row_sum, primals, tangents):
  # The tangents d_y, sum_c p_c d_c and sum_c d_c as one primitive
  # (`_softmax_functionals`), whose transpose, the gradient, lossjax's kernel
  # writes in one pass on CPU, rounded once to the logits' dtype.
  (logits, labels), (d_logits, _) = primals, tangents
  values = _native_statistics(logits, labels, row_sum)
  d_true, d_log_norm, _, d_sum = _softmax_functionals.functionals(
      d_logits, logits, values[1], labels)
  return values, (d_true, d_log_norm) + ((d_sum,) if row_sum else ())


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _narrow_statistics(logits: Array, labels: Array, row_sum: bool) -> tuple:
  return _xla_statistics(logits, labels, row_sum)


@_narrow_statistics.defjvp
def _narrow_statistics_jvp(row_sum, primals, tangents):
  # One float32 tangent of the logits that all three linear maps read: their
  # transposes then add in float32, and one conversion rounds the sum.
  (logits, labels), (d_logits, _) = primals, tangents
  values = _narrow_statistics(logits, labels, row_sum)
  d_wide = compute(d_logits)
  d_values = (_true_class_tangent(labels, d_wide),
              _log_normalizer_tangent(logits, values[1], d_wide))
  return values, d_values + (jnp.sum(d_wide, axis=-1),) if row_sum else d_values


def one_minus_prob(log_prob: Array) -> Array:
  # 1 - exp(x) = -expm1(x): exact near x = 0, where 1 - p would cancel.
  return -jnp.expm1(log_prob)


def safe_power(base: Array, exponent) -> Array:
  """base ** exponent for base >= 0, with a finite gradient at base = 0.

  d/dx x**g is infinite (g < 1) or 0 * inf = NaN (g = 0) at x = 0; there the
  gradient is taken as 0, the limit from the right for g > 1.
  """
  if isinstance(exponent, (int, float)) and not isinstance(exponent, bool) \
      and float(exponent).is_integer() and 0 <= exponent <= 8:
    # A static small integer: multiplications (x**2 = x * x), exact, with
    # the derivative n x**(n-1) finite everywhere; no exp and log.
    return jax.lax.integer_pow(base, int(exponent))
  positive = base > 0
  safe_base = jnp.where(positive, base, 1.0)
  return jnp.where(positive, safe_base ** exponent,
                   jnp.where(exponent == 0, 1.0, 0.0))
