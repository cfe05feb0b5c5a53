"""Sparsemax and its Fenchel-Young loss, binary and multiclass."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import _softmax
from lossjax.losses import _prepare

Array = jax.Array


def _support(logits: Array) -> Array:
  """The classes sparsemax keeps: `[..., C] -> [..., C]` bool.

  Michelot's fixed point: with S the current support, tau = (sum_S z - 1)/|S|
  and the next support is S ∩ {z > tau}. From any S that holds the answer's
  support, tau stays at or below the answer's and S only shrinks, so it stops
  exactly after at most C rounds of one pass each: no sort. It starts from
  {z > max z - 1}, which holds the support (no probability exceeds 1) and is
  small for confident rows, so a few rounds suffice. The largest logit
  always stays, so S is never empty.
  """
  z = jax.lax.stop_gradient(logits)

  def round_(state):
    support, _ = state
    new = support & (z > _threshold(z, support))
    return new, jnp.any(new != support)

  top = jnp.max(z, axis=-1, keepdims=True)
  start = (z > top - 1.0) | (z == top)
  support, _ = jax.lax.while_loop(lambda state: state[1], round_, (start, jnp.array(True)))
  return support


def _threshold(z: Array, support: Array) -> Array:
  """tau = (sum_S z - 1) / |S| for the support S: `[..., C] -> [..., 1]`."""
  count = jnp.sum(support, axis=-1, keepdims=True, dtype=z.dtype)
  return (jnp.sum(jnp.where(support, z, 0.0), axis=-1, keepdims=True) - 1.0) / count


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
  support = _support(logits)
  # tau from the logits themselves (not stopped): its derivative gives the Jacobian.
  return jnp.where(support, logits - _threshold(logits, support), 0.0)


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
  z = batch.logits
  p = sparsemax(z)
  # Shifted by z_y before the products, so that large scores do not cancel.
  gap = z - _softmax.take_class(z, batch.labels)[..., None]
  loss = jnp.sum(p * gap, axis=-1) + 0.5 * (1.0 - jnp.sum(jnp.square(p), axis=-1))
  return batch.finish(loss)


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
  z = logits.astype(_checks.compute_dtype(logits.dtype))
  x = jnp.where(labels.astype(bool), -z, z)
  loss = jnp.where(x <= -1.0, 0.0, jnp.where(x >= 1.0, x, jnp.square(x + 1.0) / 4.0))
  return loss if where is None else jnp.where(where, loss, 0.0)
