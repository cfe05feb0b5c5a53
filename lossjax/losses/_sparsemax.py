"""Sparsemax and its Fenchel-Young loss, binary and multiclass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks, _native
from lossjax import _softmax
from lossjax.losses import _binary
from lossjax.losses import _prepare

Array = jax.Array


@jax.custom_jvp
def _threshold_and_squares(logits: Array) -> tuple:
  """The sparsemax threshold tau of each row and ||p||^2 (p = relu(z - tau)):
  `[..., C] -> ([..., 1], [..., 1])`, in the compute dtype
  (`_softmax.compute`), of `logits` in any floating dtype (`_solve`).

  Their derivatives, d tau / dz_c = [c in S] / |S| (S the support) and
  d ||p||^2 = 2 (sum_c p_c dz_c - d tau) (p sums to 1), give sparsemax its
  Jacobian diag(s) - s s^T / |S| and the loss its Hessian; they are taken
  only where a derivative is asked for, so that the values cost no pass
  beyond `_solve`'s.
  """
  tau, _, squares = _solve(logits)
  return tau, squares


@_threshold_and_squares.defjvp
def _threshold_and_squares_jvp(primals, tangents):
  (logits,), (logits_dot,) = primals, tangents
  tau, n, squares = _solve(logits)
  # The support's indicator is constant where it has a derivative (a.e.).
  z = _softmax.compute(jax.lax.stop_gradient(logits))
  dz = _softmax.compute(logits_dot)
  tau_dot = jnp.sum(_indicator(z, tau) * dz, axis=-1, keepdims=True) / n
  squares_dot = 2.0 * (jnp.sum(jnp.maximum(z - tau, 0.0) * dz, axis=-1, keepdims=True) - tau_dot)
  return (tau, squares), (tau_dot, squares_dot)


def _threshold(logits: Array) -> Array:
  """tau of each row, `[..., C] -> [..., 1]` (`_threshold_and_squares`)."""
  return _threshold_and_squares(logits)[0]


def _solve(logits: Array) -> tuple:
  """tau, the support's size |S| and ||p||^2 of each row, `[..., 1]` each.

  On CPU, for float32 and bfloat16 logits, by lossjax's own kernel
  (`lossjax._native`): each row read once from memory, and tau found from
  its logits above max - 1 alone (by their ranks, or Michelot's rounds where
  there are more than 16). Elsewhere by XLA's operations (`_solve_xla`).
  """
  z = jax.lax.stop_gradient(logits)
  parts = _native.sparsemax_threshold(z, _solve_xla) if _native.takes(z) else _solve_xla(z)
  return tuple(part[..., None] for part in parts)


def _solve_xla(z: Array) -> tuple:
  """`_solve` by XLA's operations, `[..., C] -> [...]` each.

  Where the classes divide into blocks (`_maxima_block`; each block every
  (C / k)-th class), from the rows' block maxima: the threshold t of the
  maxima alone (`_maxima_threshold`) lies at or below tau (a block's max is
  one of its logits), and it is tau itself where the row counts as many
  logits above t as maxima: the logits above t are then the maxima above t,
  whose excess sum is 1, and ||p||^2 is the maxima's. So the logits take
  two passes, the maxima and one count at t (`_count_or_nan`; `_count` for
  two-byte floats), and only the rows whose count differs (a block holding
  two of the support: about 6% of Gaussian rows of scale 2 and 1000
  classes, docs/measurement.md) take Michelot's rounds, gathered a chunk of
  rows at a time (`_finish`).

  Otherwise, Michelot's rounds on chunks of rows (`_rounds`) from
  `_start`'s bound, and one pass for ||p||^2.
  """
  return tuple(part.reshape(z.shape[:-1]) for part in _solve_rows(z.reshape(-1, z.shape[-1])))


def _solve_rows(rows: Array) -> tuple:
  """`_solve` for rows `[rows, C]`: `[rows, 1]` each."""
  k = _maxima_block(rows.shape[-1])
  if k is None or rows.shape[0] == 0:
    tau, n = _rounds(rows)
    return tau, n, _squares(rows, tau)
  # Each block every (C / k)-th class: the maxima are a max across the k
  # rows of a `[k, C / k]` view of each row, elementwise along its C / k
  # columns. On an AVX-512 machine XLA:CPU's library kernel took the maxima
  # of contiguous bfloat16 blocks shorter than 32 classes several times as
  # long as longer ones; strided, no block is that short (docs/measurement.md).
  maxima = _softmax.compute(jnp.max(rows.reshape(rows.shape[0], k, -1), axis=1))
  t, n, squares = _maxima_threshold(maxima)
  # relu's 0 as -0.0: the gradient's pass (`_fenchel_young_jvp`) takes 0.0,
  # and one logits-sized broadcast of a constant both passes take is
  # written out by XLA:CPU (a bfloat16 value_and_grad faulted in 64,000
  # more pages a call at (65536, 1000)).
  z = _softmax.compute(_softmax.read_again(rows))
  if _softmax._two_byte_float(rows):
    # Two-byte block maxima keep a NaN of their block (the float32 ones drop
    # it), and the maxima's threshold t carries it: the count takes it from
    # t, without `_count_or_nan`'s slower factor (docs/measurement.md).
    count = _count(z, t, -0.0) + 0.0 * t
  else:
    count = _count_or_nan(z, t, -0.0)
  return _finish(rows, t, n, squares, count)


def _rounds(rows: Array) -> tuple:
  """Michelot's rounds (`_fixed_point`) on rows `[rows, C]`, `_softmax.CHUNK`
  logits at a time, from `_start`'s bound: tau and |S|, `[rows, 1]` each.

  Michelot's fixed point, from below: with S = {z > t}, the next t is
  (sum_S z - 1) / |S| = t + (sum_c relu(z_c - t) - 1) / |S|. From any t at or
  below tau, t only grows and S only shrinks, so it stops, exactly, once |S|
  stops changing (at most C rounds).

  Each round is two reductions of one elementwise chain of the logits each
  (the excess sum relu(z - t) and the count |S|, as sign(relu(z - t))):
  XLA:CPU runs such a chain in one vectorised pass, where a compare or a
  select (z > t) is first written out as a logits-sized array
  (docs/measurement.md has the count measured both ways). The count is
  exact; a z - t below the dtype's smallest normal number is flushed to 0
  by XLA:CPU, and its share of the probability is below that number. Each
  chunk's rows go on until all of its rows stop, so that the logits of every
  round after the first come from the cache, and a round skips its step in
  a chunk where no row's count changed.
  """
  return _softmax.by_row_chunks(_fixed_point, (rows,), _softmax.rows_per_chunk(*rows.shape))


def _squares(rows: Array, tau: Array) -> Array:
  """||p||^2 = sum_c relu(z_c - tau)^2 of rows `[rows, C]`, `[rows, 1]`: one
  pass that converts the logits for itself (`read_again`), with relu's 0 as
  -0.0 (the same squares): a conversion, or a constant, equal to the loss's
  derivative's (`_fenchel_young_jvp`) would be one array that XLA:CPU
  shares between the two passes and so writes out, as large as the
  logits."""
  z = _softmax.compute(_softmax.read_again(rows))
  return _softmax.apart(jnp.sum(jnp.square(jnp.maximum(z - tau, -0.0)), axis=-1, keepdims=True))


def _finish(rows: Array, t: Array, n: Array, squares: Array, count: Array) -> tuple:
  """tau, |S| and ||p||^2 of rows `[rows, C]` from the maxima's threshold
  `t`, its count `n` and squares (`_maxima_threshold`) and the rows' count
  above `t`, `[rows, 1]` each: the maxima's where the two counts agree, and
  Michelot's rounds from `t` and the rows' count on the other rows (a NaN
  count among them), a chunk of them at a time (`_softmax.rows_per_chunk`
  rows), gathered from the logits in order: as many chunks as those rows
  fill, none where there are none."""
  count_rows, classes = rows.shape
  left = ~(count[:, 0] == n[:, 0])
  chunk = _softmax.rows_per_chunk(count_rows, classes)
  chunks = -(-count_rows // chunk)
  # The rows left, in order, then count_rows (out of range: dropped below).
  order = jnp.nonzero(left, size=chunks * chunk, fill_value=count_rows)[0]

  def finish_chunk(i, state):
    tau, support, squares = state
    at = jax.lax.dynamic_slice_in_dim(order, i * chunk, chunk)
    take = jnp.minimum(at, count_rows - 1)
    # The rows from behind a barrier that depends on the chunk: XLA:CPU
    # gathers bfloat16 as float32, and would convert all the logits once,
    # out of the loop, to gather from (262 MB written at (65536, 1000)).
    z = _softmax.compute(jax.lax.optimization_barrier((rows, i))[0][take])
    tau_chunk, support_chunk = _fixed_point(z, t[take], count[take])
    squares_chunk = _squares(z, tau_chunk)
    return tuple(whole.at[at].set(part, mode="drop") for whole, part in
                 ((tau, tau_chunk), (support, support_chunk), (squares, squares_chunk)))

  taken = -(-jnp.sum(left) // chunk)
  return jax.lax.fori_loop(0, taken, finish_chunk, (t, n, squares))


# The most block maxima a row may have for `_maxima_threshold` to take them
# through `_top_maxima_threshold`'s network, and the maxima that network keeps.
NETWORK_MAXIMA = 64
TOP_MAXIMA = 8


def _maxima_threshold(maxima: Array) -> tuple:
  """The threshold of each row's block maxima `[rows, m]`, the count of
  maxima above it and their ||p||^2: `(t, n, squares)`, `[rows, 1]` each,
  where t may be only a bound below the maxima's threshold (then still at
  or below tau; `_top_maxima_threshold`).

  Up to NETWORK_MAXIMA maxima a row, from their TOP_MAXIMA largest
  (`_top_maxima_threshold`); more (rows of many classes), the maxima's own
  threshold, found as the rows' is (`_solve_rows`: from the maxima of
  blocks of maxima, at 32000 classes 40 of them)."""
  if maxima.shape[-1] <= NETWORK_MAXIMA:
    return _top_maxima_threshold(maxima)
  return _solve_rows(maxima)


def _top_maxima_threshold(maxima: Array) -> tuple:
  """`_maxima_threshold` from each row's TOP_MAXIMA largest maxima: tau of
  values sorted z_(1) >= z_(2) >= ... is max_j (z_(1) + ... + z_(j) - 1) / j
  (each j gives a bound at or below tau, and j = |S| gives tau), exact
  where at most TOP_MAXIMA maxima lie above it (all but 3 of 65536
  Gaussian rows of scale 2 and 1000 classes). Where more do, t is a bound
  below it, and n is -1, no count: the row takes Michelot's rounds (`_finish`).

  The maxima go in as columns, `[m]` values of all rows each, through an
  insertion network of max and min into the sorted top values: elementwise
  over the rows, one loop fusion vectorised across rows, where Michelot's
  rounds on `[rows, m]` reduce a short row at a time (docs/measurement.md).
  The network gives t alone, from behind a barrier: n and ||p||^2 are sums
  over the columns at t. XLA:CPU fuses no loop with two outputs, and each
  value taken from the sorted top values computed the network again (four
  networks in the loss's forward; docs/measurement.md)."""
  columns = list(maxima.T)
  top = []
  for value in columns:
    kept = []
    for high in top:
      kept.append(jnp.maximum(high, value))
      value = jnp.minimum(high, value)
    top = kept + [value] if len(kept) < TOP_MAXIMA else kept
  total, t = 0.0, None
  for j, value in enumerate(top, start=1):
    total = total + value
    bound = (total - 1.0) / j
    t = bound if t is None else jnp.maximum(t, bound)
  t = jax.lax.optimization_barrier(t)
  n = sum(_indicator(value, t) for value in columns)
  squares = sum(jnp.square(jnp.maximum(value - t, 0.0)) for value in columns)
  return t[:, None], jnp.where(n > TOP_MAXIMA, -1.0, n)[:, None], squares[:, None]


def _indicator(values: Array, t: Array, zero: float = 0.0) -> Array:
  """[values > t] as arithmetic, sign(relu(values - t)) (see `_rounds`):
  three operations a logit, where min(relu(values - t) / tiny, 1) took
  four. `zero` is relu's 0 (-0.0 gives the same sign)."""
  return jnp.sign(jnp.maximum(values - t, zero))


def _count(values: Array, t: Array, zero: float = 0.0) -> Array:
  return _softmax.apart(jnp.sum(_indicator(values, t, zero), axis=-1, keepdims=True))


def _count_or_nan(values: Array, t: Array, zero: float = 0.0) -> Array:
  """`_count`, NaN in a row with a NaN: sign(x) sign(relu(x)), x = values - t.
  XLA:CPU's library kernel drops a NaN from a max (relu(NaN) is 0 there), and
  so from the count, the excess sum and the block maxima; sign(NaN) is NaN,
  and sign(x) is -1, not NaN, for a logit of -inf. Two operations a logit
  more than `_count`'s chain (the values behind a barrier for one of the
  signs instead took longer; see docs/measurement.md): it is taken once, over
  all the logits of float32 or wider (`_solve_rows`). `zero` as `_indicator`'s."""
  signs = jnp.sign(values - t)
  return _softmax.apart(jnp.sum(signs * _indicator(values, t, zero), axis=-1, keepdims=True))


def _excess(values: Array, t: Array) -> Array:
  return _softmax.apart(jnp.sum(jnp.maximum(values - t, 0.0), axis=-1, keepdims=True))


def _step(values: Array, t: Array, n: Array) -> Array:
  return t + (_excess(values, t) - 1.0) / n


# Classes a block for the maxima (`_maxima_block`, `_start`), and
# Michelot steps `_start` takes on the blocks' maxima (measured in
# docs/measurement.md).
BLOCK = 32
BLOCK_STEPS = 3


def _maxima_block(classes: int) -> int | None:
  """Classes a block for `_solve_rows`'s maxima: the divisor of `classes`
  nearest BLOCK within half to twice BLOCK (the smaller on a tie), or None
  where there is none or the rows are narrower than 4 BLOCK."""
  if classes < 4 * BLOCK:
    return None
  near = sorted(range(BLOCK // 2, 2 * BLOCK + 1), key=lambda k: (abs(k - BLOCK), k))
  return next((k for k in near if classes % k == 0), None)


def _changed(new: Array, n: Array) -> Array:
  """Whether a round changed any row's count from `n` to `new`. A NaN count
  never equals itself: it is left out, so that it cannot keep every row
  going to the round limit (C rounds)."""
  return jnp.any((new != n) & (new == new))


def _start(z: Array) -> Array:
  """A first t at or below tau for a chunk of rows `[rows, C]` where
  `_solve_rows` takes no maxima: Michelot's steps on the rows' block maxima
  (BLOCK classes a block, and the classes left over as one more). Each block
  adds at least relu(its max - t) to the excess sum, so the maxima's own
  threshold, and each of their Michelot steps from max - 1
  (which never pass it), lies at or below tau. For Gaussian logits of scale
  2, 2.3% of rows of 1000 classes and 1.4% of 32000 needed more than the
  first full round from there (measured when those rows still took this
  start; they now take the maxima); from max - 1, 58% and 72% did, up to 5
  rounds more. A start a rounding above tau is still
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
  fixed point, `[rows, 1]` each. From `(t, n)`, a start at or below tau and
  the count of logits above it (`_finish` has both from its pass over all the
  logits), or else from `_start`'s bound and its count: one step, then
  rounds that count |S| first and take their step only where a row's count
  changed.

  A row with a NaN gets a NaN tau (and so NaN probabilities, loss and
  gradient), and the other rows' rounds leave it out of their test: from
  `(t, n)` its count is NaN (`_count_or_nan`), which the rounds carry; from
  `_start`, its first step's excess sum is (XLA:CPU's loop keeps the NaN
  there; the tests hold both starts to it).
  """
  z = _softmax.compute(z)

  def round_(state):
    t, n, _, rounds = state
    new = _count(z, t) + 0.0 * n
    changed = _changed(new, n)
    t = jax.lax.cond(changed, lambda: _step(z, t, new), lambda: t)
    return t, new, changed & (rounds < z.shape[-1]), rounds + 1

  if t is None:
    t = _start(z)
    n = _count(z, t)
  state = (_step(z, t, n), n, jnp.array(True), jnp.array(0))
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
  if jnp.ndim(logits) == 0 or jnp.shape(logits)[-1] == 0:
    raise ValueError(f"`logits` need a last axis of at least one class (the simplex's), "
                     f"got shape {jnp.shape(logits)}")
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


def _loss_of(logits: Array, labels: Array, tau: Array, squares: Array) -> Array:
  """The loss from its threshold `tau` and ||p||^2 (`[..., 1]` each): with
  p = relu(z - tau) summing to 1, sum_c p_c (z_c - z_y) = ||p||^2 + tau - z_y,
  so the loss is ||p||^2 / 2 + tau - z_y + 1/2."""
  true_logit = _softmax.take_class(logits, labels).astype(tau.dtype)
  return _loss_of_statistics(tau[..., 0], squares[..., 0], true_logit)


def _loss_of_statistics(tau: Array, squares: Array, true_logit: Array) -> Array:
  """`_loss_of` from the row statistics, `[...]` each."""
  return 0.5 * squares + tau - true_logit + 0.5


@jax.custom_jvp
def _fenchel_young(logits: Array, labels: Array) -> Array:
  """The sparsemax loss, in the compute dtype, of `logits` in the caller's
  dtype: on CPU its statistics and the label's logit from one kernel."""
  if _native.takes(logits):
    tau, _, squares, true_logit = _native.sparsemax_loss_statistics(
        logits, labels, _xla_loss_statistics)
    return _loss_of_statistics(tau, squares, true_logit)
  return _loss_of(logits, labels, *_threshold_and_squares(logits))


def _xla_loss_statistics(logits: Array, labels: Array) -> tuple:
  tau, size, squares = _solve_xla(logits)
  return tau, size, squares, _softmax.take_class(logits, labels).astype(tau.dtype)


@_fenchel_young.defjvp
def _fenchel_young_jvp(primals, tangents):
  # The gradient is p - onehot(y), one elementwise pass: tau's own terms,
  # (1 - sum_c p_c) dtau/dz, vanish, and autodiff of the loss would compute
  # them anyway (two more logits-sized arrays written). p keeps tau's
  # derivative, so that the loss's second derivative is sparsemax's Jacobian.
  (logits, labels), (logits_dot, _) = primals, tangents
  tau, squares = _threshold_and_squares(logits)
  value = _loss_of(logits, labels, tau, squares)
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


# Below this many logits, binary sparsemax takes sparseplus' selects (optax's
# form): XLA:CPU then runs the whole loss as one loop and a plain sum, where
# its library kernel's chain of the form below was slower than optax; from
# 32768x10 (327,680 logits) on, that chain is the faster
# (docs/measurement.md). Values are identical.
SELECT_FORM_BELOW = 2 ** 18


@jax.custom_jvp
def _binary_sparsemax(logits: Array, labels: Array) -> Array:
  # sparseplus(x) = max(x, relu(min(x, 1) + 1)^2 / 4): (x + 1)^2 / 4 >= x
  # everywhere (their difference is (x - 1)^2 / 4), and the min caps it at 1
  # from x = 1 on. Six operations where the terms' form takes eight, in a
  # chain whose every operation costs XLA:CPU's library kernel about a pass
  # over its tile (docs/measurement.md).
  dtype = _checks.compute_dtype(logits.dtype)
  z = logits.astype(dtype)
  if logits.size < SELECT_FORM_BELOW:
    x = _binary.label_signs_by_selects(labels, dtype) * z
    return jnp.where(x <= -1.0, 0.0, jnp.where(x >= 1.0, x, 0.25 * jnp.square(x + 1.0)))
  x = _binary.label_signs(labels, dtype) * z
  loss = jnp.maximum(x, 0.25 * jnp.square(jnp.maximum(jnp.minimum(x, 1.0) + 1.0, 0.0)))
  return _binary.keeping_nan(loss, x)


@_binary_sparsemax.defjvp
def _binary_sparsemax_jvp(primals, tangents):
  # The labels are 0 or 1: no derivative in them (as optax's).
  (logits, labels), (logits_dot, _) = primals, tangents
  dtype = _checks.compute_dtype(logits.dtype)
  (z, y), (zero, half, one) = _binary.separate((logits, labels), (0, 0.5, 1), dtype)
  sign, from_below, above = _sparseplus_terms(z, y, zero, one)
  tangent = sign * half * (from_below - above) * logits_dot.astype(dtype)
  return _binary_sparsemax(logits, labels), tangent
