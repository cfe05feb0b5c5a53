"""Sparsemax and its Fenchel-Young loss, binary and multiclass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _softmax
from lossjax.losses import _binary
from lossjax.losses import _prepare

Array = jax.Array


@jax.custom_jvp
def _threshold(logits: Array) -> Array:
  """The sparsemax threshold tau of each row: `[..., C] -> [..., 1]`, in the
  compute dtype (`_softmax.compute`), of `logits` in any floating dtype.

  Its derivative, d tau / dz_c = [c in S] / |S| (S the support), gives
  sparsemax its Jacobian diag(s) - s s^T / |S|; it is taken only where a
  derivative is asked for, so that the value costs no pass beyond the rounds.
  """
  return _threshold_and_support(logits)[0]


@_threshold.defjvp
def _threshold_jvp(primals, tangents):
  (logits,), (logits_dot,) = primals, tangents
  tau, n = _threshold_and_support(logits)
  # The support's indicator is constant where it has a derivative (a.e.).
  support = _indicator(_softmax.compute(jax.lax.stop_gradient(logits)), tau)
  tangent = jnp.sum(support * _softmax.compute(logits_dot), axis=-1, keepdims=True) / n
  return tau, tangent


def _threshold_and_support(logits: Array) -> tuple:
  """tau and the support's size |S| of each row, `[..., 1]` each.

  Michelot's fixed point, from below: with S = {z > t}, the next t is
  (sum_S z - 1) / |S| = t + (sum_c relu(z_c - t) - 1) / |S|. From any t at or
  below tau, t only grows and S only shrinks, so it stops, exactly, once |S|
  stops changing (at most C rounds).

  The rounds start from the fixed point of the rows' block maxima
  (`_maxima_start`) where the classes divide into blocks and a chunk holds
  few rows; otherwise each chunk starts from Michelot's steps on its own
  block maxima (`_start`).

  Each round is two reductions of one elementwise chain of the logits each
  (the excess sum relu(z - t) and the count |S|, as sign(relu(z - t))):
  XLA:CPU runs such a chain in one vectorised pass, where a compare or a
  select (z > t) is first written out as a logits-sized array
  (docs/measurement.md has the count measured both ways). The count is
  exact; a z - t below the dtype's smallest normal number is flushed to 0
  by XLA:CPU, and its share of the probability is below that number. The rounds run on
  chunks of rows (`_softmax.CHUNK` logits, `_softmax.by_row_chunks`), each
  chunk's rows until all of its rows stop, so that the logits of every round
  after the first come from the cache, and a round skips its step in a chunk
  where no row's count changed.
  bfloat16 rows go in as the bits of pairs of logits (`_unpack`), so that
  each chunk is converted to float32 as the rounds read it: XLA moves a
  conversion of the rows themselves out of the loop, writing all the logits
  out in float32 first (float16, and an odd number of classes, still do).
  """
  z = jax.lax.stop_gradient(logits)
  classes = z.shape[-1]
  rows = z.reshape(-1, classes)
  chunk = _softmax.rows_per_chunk(*rows.shape)
  start = _maxima_start(rows, chunk)
  if rows.dtype == jnp.bfloat16 and classes > 0 and classes % 2 == 0:
    pairs = jax.lax.bitcast_convert_type(rows.reshape(-1, classes // 2, 2), jnp.uint32)
    rounds = lambda p, *start: _fixed_point(_unpack(p), *start)
    tau, n = _softmax.by_row_chunks(rounds, (pairs, *start), chunk)
  else:
    tau, n = _softmax.by_row_chunks(_fixed_point, (rows, *start), chunk)
  shape = z.shape[:-1] + (1,)
  return tau.reshape(shape), n.reshape(shape)


def _indicator(values: Array, t: Array) -> Array:
  """[values > t] as arithmetic, sign(relu(values - t)) (see
  `_threshold_and_support`): three operations a logit, where min(relu(values
  - t) / tiny, 1) took four."""
  return jnp.sign(jnp.maximum(values - t, 0.0))


def _count(values: Array, t: Array) -> Array:
  return _softmax.apart(jnp.sum(_indicator(values, t), axis=-1, keepdims=True))


def _count_or_nan(values: Array, t: Array) -> Array:
  """`_count`, NaN in a row with a NaN: sign(x) sign(relu(x)), x = values - t.
  XLA:CPU's library kernel drops a NaN from a max (relu(NaN) is 0 there), and
  so from the count, the excess sum and the block maxima; sign(NaN) is NaN,
  and sign(x) is -1, not NaN, for a logit of -inf. Two operations a logit
  more than `_count`'s chain, and x is written out a chunk at a time (the
  values behind a barrier for one of the signs instead took longer; see
  docs/measurement.md): it is taken once a chunk."""
  signs = jnp.sign(values - t)
  return _softmax.apart(jnp.sum(signs * _indicator(values, t), axis=-1, keepdims=True))


def _excess(values: Array, t: Array) -> Array:
  return _softmax.apart(jnp.sum(jnp.maximum(values - t, 0.0), axis=-1, keepdims=True))


def _step(values: Array, t: Array, n: Array) -> Array:
  return t + (_excess(values, t) - 1.0) / n


def _unpack(pairs: Array) -> Array:
  """Two bfloat16 logits a uint32 (`[..., C / 2]`) as their float32 values
  (`[..., C]`, in another order, which no round depends on): a bfloat16 is
  the upper half of its float32, exactly."""
  lo = jax.lax.bitcast_convert_type(jax.lax.shift_left(pairs, jnp.uint32(16)), jnp.float32)
  hi = jax.lax.bitcast_convert_type(pairs & jnp.uint32(0xFFFF0000), jnp.float32)
  return jnp.concatenate([lo, hi], axis=-1)


# Classes a block in the rounds' starts (`_maxima_start`, `_start`), and
# Michelot steps `_start` takes on the blocks' maxima (measured in
# docs/measurement.md).
BLOCK = 32
BLOCK_STEPS = 3


def _maxima_block(classes: int) -> int | None:
  """Classes a block for `_maxima_start`: the divisor of `classes` nearest
  BLOCK within half to twice BLOCK (the smaller on a tie), or None where
  there is none or the rows are narrower than 4 BLOCK."""
  if classes < 4 * BLOCK:
    return None
  near = sorted(range(BLOCK // 2, 2 * BLOCK + 1), key=lambda k: (abs(k - BLOCK), k))
  return next((k for k in near if classes % k == 0), None)


# The most rows a chunk may hold for the rounds to start from the block
# maxima's threshold (`_maxima_start`; measured in docs/measurement.md).
MAXIMA_START_ROWS = 128


def _maxima_start(rows: Array, chunk: int) -> tuple:
  """The rounds' start for rows `[rows, C]`, whose rounds take `chunk` rows
  at a time: `(t, n)`, `[rows, 1]` each, the fixed point of Michelot's rounds
  on each row's block maxima (`_maxima_block` classes a block) and its count;
  `()`, each chunk then taking `_start`, where the classes have no such block
  or a chunk holds more than MAXIMA_START_ROWS rows.

  The maxima's threshold t lies at or below tau (a block's max is one of
  its logits), and it is tau itself where the row counts n logits above t,
  as many as the maxima: the logits above t are then the maxima above t,
  whose excess sum is 1. So the first round's count either ends the row's
  rounds or gives the step from t. For Gaussian logits of scale 2 (the
  benchmarks') 0.6% of rows of 32,000 classes need that step (a block holds
  two of the support), and a chunk of 8 rows rarely holds one; 6.5% of rows
  of 1,000 classes do, and nearly every chunk of 256 rows still takes the
  step and one more count, so that the maxima's pass and rounds cost about
  what they save there.

  The maxima are one pass over the stored logits for all rows (a slice of
  the logits, for classes no block divides, would be copied out); their
  rounds, on chunks of rows, read `C / k` values a row.
  """
  k = _maxima_block(rows.shape[-1])
  if k is None or chunk > MAXIMA_START_ROWS:
    return ()
  maxima = _softmax.compute(jnp.max(rows.reshape(rows.shape[0], -1, k), axis=-1))
  return _softmax.by_row_chunks(_maxima_fixed_point, (maxima,),
                                _softmax.rows_per_chunk(*maxima.shape))


def _maxima_fixed_point(maxima: Array) -> tuple:
  """Michelot's rounds on `[rows, n]` values from max - 1 to their fixed
  point: `(t, n)`, `[rows, 1]` each. A round steps, then counts; the rounds
  stop when no row's count changed (a NaN row's count, never equal to
  itself, is left out of the test)."""
  t = jnp.max(maxima, axis=-1, keepdims=True) - 1.0

  def round_(state):
    t, n, _, rounds = state
    t = _step(maxima, t, n)
    new = _count(maxima, t)
    return t, new, _changed(new, n) & (rounds < maxima.shape[-1]), rounds + 1

  state = (t, _count(maxima, t), jnp.array(True), jnp.array(0))
  t, n, _, _ = jax.lax.while_loop(lambda state: state[2], round_, state)
  return t, n


def _changed(new: Array, n: Array) -> Array:
  """Whether a round changed any row's count from `n` to `new`. A NaN count
  never equals itself: it is left out, so that it cannot keep every row
  going to the round limit (C rounds)."""
  return jnp.any((new != n) & (new == new))


def _start(z: Array) -> Array:
  """A first t at or below tau for a chunk of rows `[rows, C]` where
  `_maxima_start` gives none: Michelot's steps on the rows' block maxima
  (BLOCK classes a block, and the classes left over as one more). Each block
  adds at least relu(its max - t) to the excess sum, so the maxima's own
  threshold, and each of their Michelot steps from max - 1
  (which never pass it), lies at or below tau. For Gaussian logits of scale
  2 (the benchmarks'), 2.3% of rows of 1000 classes and 1.4% of 32000 need
  more than the first full round from there; from max - 1, 58% and 72% did,
  up to 5 rounds more. A start a rounding above tau is still
  safe: the step from it lands at or below tau (f is convex), and the rounds
  go on from there."""
  classes = z.shape[-1]
  if classes < 4 * BLOCK:
    return jnp.max(z, axis=-1, keepdims=True) - 1.0
  whole = classes - classes % BLOCK
  maxima = jnp.max(z[..., :whole].reshape(*z.shape[:-1], whole // BLOCK, BLOCK), axis=-1)
  if whole < classes:
    maxima = jnp.concatenate([maxima, jnp.max(z[..., whole:], axis=-1, keepdims=True)], axis=-1)
  t = jnp.max(maxima, axis=-1, keepdims=True) - 1.0
  for _ in range(BLOCK_STEPS):
    t = _step(maxima, t, _count(maxima, t))
  return t


def _fixed_point(z: Array, t: Array | None = None, n: Array | None = None):
  """Michelot's rounds for a chunk of rows `[rows, C]`: tau and |S| at the
  fixed point, `[rows, 1]` each. A round counts |S| first and takes its step
  only where a row's count changed. From `(t, n)`, a start at or below tau
  and the count it was taken with (`_maxima_start`), or else from `_start`'s
  bound and one step.

  A row with a NaN gets a NaN tau (and so NaN probabilities, loss and
  gradient), and the other rows' rounds leave it out of their test: from
  `(t, n)` its first count is NaN (`_count_or_nan`), which the rounds carry;
  from `_start`, its first step's excess sum is (XLA:CPU's loop keeps the NaN
  there; the tests hold both starts to it).
  """
  z = _softmax.compute(z)

  def round_(state, count=_count):
    t, n, _, rounds = state
    new = count(z, t) + 0.0 * n
    changed = _changed(new, n)
    t = jax.lax.cond(changed, lambda: _step(z, t, new), lambda: t)
    return t, new, changed & (rounds < z.shape[-1]), rounds + 1

  if t is None:
    start = _start(z)
    n = _count(z, start)
    state = (_step(z, start, n), n, jnp.array(True), jnp.array(0))
  else:
    state = round_((t, n, jnp.array(True), jnp.array(0)), _count_or_nan)
  tau, n, _, _ = jax.lax.while_loop(lambda state: state[2], round_, state)
  return jnp.where(jnp.isnan(n), n, tau), n


def sparsemax(logits: Array) -> Array:
  r"""The Euclidean projection of ``logits`` onto the probability simplex.

  .. math:: \mathrm{sparsemax}(z) = \arg\min_{p \in \Delta} \|p - z\|^2
    = \max(z - \tau(z), 0)

  over the last axis. Differentiable: its Jacobian is
  ``diag(s) - s s^T / |S|`` on the support ``S`` (``s`` its indicator).

  Args:
    logits: ``[..., C]`` in float32 or wider.

  Returns:
    ``[..., C]`` probabilities, with exact zeros outside the support.

  Reference: Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016.
  """
  return jnp.maximum(logits - _threshold(logits).astype(logits.dtype), 0.0)


def multiclass_sparsemax_loss(scores, labels, *, axis: int = -1, where=None) -> Array:
  r"""Sparsemax loss: the Fenchel-Young loss of the Gini entropy.

  .. math:: \ell_i = \sum_c p_c (z_c - z_y) + \tfrac12 (1 - \|p\|^2),
    \quad p = \mathrm{sparsemax}(z_i)

  Zero exactly when ``sparsemax(z) = onehot(y)``; its gradient is
  ``sparsemax(z) - onehot(y)``. Same numbers as
  ``optax.multiclass_sparsemax_loss``.

  Args:
    scores: ``[..., C]``.
    labels: ``[...]`` integers in ``[0, C)``.
    axis: the class axis.
    where: optional ``[...]`` per-example mask.

  Returns:
    ``[...]`` per-example losses, ``>= 0``.

  Reference: Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016;
  Blondel et al., "Learning with Fenchel-Young Losses", JMLR 2020.
  """
  batch = _prepare.integer_label_batch(scores, labels, axis, where)
  return batch.finish(_fenchel_young(batch.stored, batch.labels))


def _loss_given(logits: Array, labels: Array, tau: Array) -> Array:
  """The loss from its threshold `tau` (`[..., 1]`): with p = relu(z - tau)
  summing to 1, sum_c p_c (z_c - z_y) = ||p||^2 + tau - z_y, so the loss is
  ||p||^2 / 2 + tau - z_y + 1/2, one pass over the logits."""
  # The pass converts the logits for itself (`read_again`), and relu's 0 here
  # is -0.0 (the same squares): a conversion, or a constant, equal to the
  # derivative's (`_fenchel_young_jvp`) would be one array that XLA:CPU
  # shares between the two passes and so writes out, as large as the logits.
  z = _softmax.compute(_softmax.read_again(logits))
  squares = _softmax.apart(jnp.sum(jnp.square(jnp.maximum(z - tau, -0.0)), axis=-1))
  true_logit = _softmax.take_class(logits, labels).astype(tau.dtype)
  return 0.5 * squares + tau[..., 0] - true_logit + 0.5


@jax.custom_jvp
def _fenchel_young(logits: Array, labels: Array) -> Array:
  """The sparsemax loss, in the compute dtype, of `logits` in the caller's dtype."""
  return _loss_given(logits, labels, _threshold(logits))


@_fenchel_young.defjvp
def _fenchel_young_jvp(primals, tangents):
  # The gradient is p - onehot(y), one elementwise pass: tau's own terms,
  # (1 - sum_c p_c) dtau/dz, vanish, and autodiff of the loss would compute
  # them anyway (two more logits-sized arrays written). p keeps tau's
  # derivative, so that the loss's second derivative is sparsemax's Jacobian.
  (logits, labels), (logits_dot, _) = primals, tangents
  tau = _threshold(logits)
  value = _loss_given(logits, labels, tau)
  z, t = _softmax.read_again((logits, tau), 2)
  hit = _softmax._is_class(z.shape, labels)
  # The one-hot as a converted compare (a select is written out first).
  probabilities = jnp.maximum(_softmax.compute(z) - t, 0.0)
  tangent = jnp.sum((probabilities - hit.astype(t.dtype)) * _softmax.compute(logits_dot), axis=-1)
  return value, tangent


def sparsemax_loss(logits, labels, *, where=None) -> Array:
  r"""Binary sparsemax loss, elementwise, for labels in ``{0, 1}``.

  .. math:: \ell = \mathrm{sparseplus}(-s z), \quad s = 2y - 1, \qquad
    \mathrm{sparseplus}(x) = \begin{cases} 0 & x \le -1 \\ (x + 1)^2 / 4 &
    |x| < 1 \\ x & x \ge 1 \end{cases}

  The multiclass loss on the two scores ``(0, z)``. Zero exactly when
  ``jax.nn.sparse_sigmoid(z)`` equals the label. Same numbers as
  ``optax.sparsemax_loss``.

  Args:
    logits: ``[...]`` one score per binary decision.
    labels: ``[...]`` labels in ``{0, 1}`` (integer, bool or float), same shape.
    where: optional boolean mask of the same shape; masked entries give 0.

  Returns:
    ``[...]`` elementwise losses.

  Reference: Blondel et al., "Learning with Fenchel-Young Losses", JMLR 2020,
  section 4.4.
  """
  logits = _checks.floating_array(logits, "logits")
  labels = jnp.asarray(labels)
  _checks.check_shape(labels, logits.shape, "labels", "one label per logit")
  _checks.check_values_in(labels, (0, 1), "labels")
  where = _checks.example_mask(where, logits.shape)
  loss = _binary_sparsemax(logits, labels)
  return loss if where is None else jnp.where(where, loss, 0.0)


def _sparseplus_terms(logits, labels, zero=0.0, one=1.0):
  """1 - 2y, relu(x + 1) and relu(x - 1) for x = (1 - 2y) z: sparseplus'
  derivative is half their difference (the loss's own chain,
  `_binary_sparsemax`, is shorter), one chain of arithmetic without a select
  or a clamp for the gradient's loop."""
  dtype = _checks.compute_dtype(logits.dtype)
  sign = _binary.label_signs(labels, dtype)
  x = sign * logits.astype(dtype)
  return sign, jnp.maximum(x + one, zero), jnp.maximum(x - one, zero)


@jax.custom_jvp
def _binary_sparsemax(logits: Array, labels: Array) -> Array:
  # sparseplus(x) = max(x, relu(min(x, 1) + 1)^2 / 4): (x + 1)^2 / 4 >= x
  # everywhere (their difference is (x - 1)^2 / 4), and the min caps it at 1
  # from x = 1 on. Six operations where the terms' form takes eight, in a
  # chain whose every operation costs XLA:CPU's library kernel about a pass
  # over its tile (docs/measurement.md).
  dtype = _checks.compute_dtype(logits.dtype)
  x = _binary.label_signs(labels, dtype) * logits.astype(dtype)
  return jnp.maximum(x, 0.25 * jnp.square(jnp.maximum(jnp.minimum(x, 1.0) + 1.0, 0.0)))


@_binary_sparsemax.defjvp
def _binary_sparsemax_jvp(primals, tangents):
  # The labels are 0 or 1: no derivative in them (as optax's).
  (logits, labels), (logits_dot, _) = primals, tangents
  dtype = _checks.compute_dtype(logits.dtype)
  (z, y), (zero, half, one) = _binary.separate((logits, labels), (0, 0.5, 1), dtype)
  sign, from_below, above = _sparseplus_terms(z, y, zero, one)
  tangent = sign * half * (from_below - above) * logits_dot.astype(dtype)
  return _binary_sparsemax(logits, labels), tangent
