"""Sparsemax and its Fenchel-Young loss, binary and multiclass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _softmax
from lossjax.losses import _binary
from lossjax.losses import _prepare

Array = jax.Array


def _threshold(logits: Array) -> Array:
  """The sparsemax threshold tau of each row: `[..., C] -> [..., 1]`.

  Michelot's fixed point, from below: with S = {z > t}, the next t is
  (sum_S z - 1) / |S| = t + (sum_c relu(z_c - t) - 1) / |S|. From t = max z - 1
  (where S holds the answer's support, as no probability exceeds 1, and the
  largest logit) t only grows and S only shrinks, so it stops, exactly, once
  |S| stops changing: at most C rounds, a handful for real rows (5 for
  Gaussian logits, C = 1000 or 32000), no sort.

  Each round is two reductions of one elementwise chain of the logits each
  (the excess sum relu(z - t) and the count |S|, as min(relu(z - t) / tiny, 1)):
  XLA:CPU runs such a chain in one vectorised pass, where a compare or a
  select (z > t) is first written out as a logits-sized array (a count at
  (65536, 1000) float32: 115 ms as sum(z > t) against 11 ms as the chain,
  measured alternately on 2 cores). The count is exact for every z - t above
  the dtype's smallest normal number; a z within that of t counts partly,
  and its share of the probability is below that number. The rounds run on
  chunks of rows (`_CHUNK` logits), each chunk's rows until all of its rows
  stop, so that the logits of every round after the first come from the cache.
  """
  z = jax.lax.stop_gradient(logits)
  classes = z.shape[-1]
  rows = z.reshape(-1, classes)
  tau, n = jax.lax.map(_fixed_point, rows, batch_size=max(1, _CHUNK // max(classes, 1)))
  # One more step from the fixed point, on the logits themselves: the same
  # value, and the derivative d tau / dz_c = [c in S] / |S| that gives
  # sparsemax its Jacobian diag(s) - s s^T / |S|.
  shape = z.shape[:-1] + (1,)
  return _step(logits, tau.reshape(shape), n.reshape(shape))


# Logits per chunk of rows that `_threshold` runs its rounds on: 1 MiB of
# float32, so that every round after the first reads them from the cache
# (docs/measurement.md); chunks of half or twice the size measured slower.
_CHUNK = 2 ** 18


def _excess(values: Array, t: Array) -> Array:
  return _softmax.apart(jnp.sum(jnp.maximum(values - t, 0.0), axis=-1, keepdims=True))


def _step(values: Array, t: Array, n: Array) -> Array:
  return t + (_excess(values, t) - 1.0) / n


def _fixed_point(z: Array):
  """Michelot's rounds for one row `[C]` (vmapped over a chunk of rows):
  tau and |S| at the fixed point, `[1]` each."""
  scale = 1.0 / jnp.finfo(z.dtype).tiny
  count = lambda t: _softmax.apart(jnp.sum(
      jnp.minimum(jnp.maximum(z - t, 0.0) * scale, 1.0), axis=-1, keepdims=True))

  def round_(state):
    t, n, _, rounds = state
    new = count(t)
    # A row with a NaN counts NaN, which never equals itself: it is left out of
    # the test (it would keep every row going to the round limit, C rounds).
    changed = jnp.any((new != n) & (new == new))
    return _step(z, t, new), new, changed & (rounds < z.shape[-1]), rounds + 1

  start = jnp.max(z, axis=-1, keepdims=True) - 1.0
  n = count(start)
  state = (_step(z, start, n), n, jnp.array(True), jnp.array(0))
  tau, n, _, _ = jax.lax.while_loop(lambda state: state[2], round_, state)
  return tau, n


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
  return jnp.maximum(logits - _threshold(logits), 0.0)


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
  # With p = relu(z - tau) summing to 1, sum_c p_c (z_c - z_y) = ||p||^2 + tau - z_y,
  # so the loss is ||p||^2 / 2 + tau - z_y + 1/2: one pass over the logits
  # once tau is known. Its gradient is p - onehot(y): tau's terms,
  # (1 - sum_c p_c) dtau/dz, vanish.
  tau = _threshold(batch.logits)
  squares = _softmax.apart(jnp.sum(jnp.square(jnp.maximum(batch.logits - tau, 0.0)), axis=-1))
  return batch.finish(0.5 * squares + tau[..., 0] - batch.true_logit() + 0.5)


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
  """x = (1 - 2y) z, relu(x + 1) and relu(x - 1): sparseplus(x) is
  (relu(x + 1) - relu(x - 1))^2 / 4 + relu(x - 1), its derivative half the
  difference, one chain of arithmetic without a select (which XLA:CPU writes
  out before its reduction) or a clamp (which it cannot fuse into one)."""
  dtype = _checks.compute_dtype(logits.dtype)
  sign = one - (one + one) * _binary.label_values(labels, dtype)
  x = sign * logits.astype(dtype)
  return sign, jnp.maximum(x + one, zero), jnp.maximum(x - one, zero)


@jax.custom_jvp
def _binary_sparsemax(logits: Array, labels: Array) -> Array:
  _, from_below, above = _sparseplus_terms(logits, labels)
  return 0.25 * jnp.square(from_below - above) + above


@_binary_sparsemax.defjvp
def _binary_sparsemax_jvp(primals, tangents):
  # The labels are 0 or 1: no derivative in them (as optax's).
  (logits, labels), (logits_dot, _) = primals, tangents
  dtype = _checks.compute_dtype(logits.dtype)
  (z, y), (zero, half, one) = _binary.separate((logits, labels), (0, 0.5, 1), dtype)
  sign, from_below, above = _sparseplus_terms(z, y, zero, one)
  tangent = sign * half * (from_below - above) * logits_dot.astype(dtype)
  return _binary_sparsemax(logits, labels), tangent
