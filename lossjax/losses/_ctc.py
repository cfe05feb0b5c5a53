"""Connectionist temporal classification (CTC): a sequence loss over frames.

A sequence loss (``[B, T, K]`` frames against ``[B, N]`` label sequences),
not a per-example classification loss, so it is not in the registry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lossjax import _checks

Array = jax.Array


def _check_paddings(paddings, shape: tuple, name: str, of: str) -> Array:
  paddings = jnp.asarray(paddings)
  _checks.check_shape(paddings, shape, name, f"one entry per {of}")
  if not _checks.is_traced(paddings):
    values = np.asarray(paddings)
    if not np.all((values == 0) | (values == 1)):
      raise ValueError(f"`{name}` must hold 0 (a real {of}) or 1 (padding), got values "
                       f"{np.unique(values[(values != 0) & (values != 1)])[:10].tolist()}.")
  return paddings


def _ctc_inputs(logits, logit_paddings, labels, label_paddings, blank_id):
  logits = _checks.floating_array(logits, "logits")
  if logits.ndim != 3:
    raise ValueError(f"`logits` must be [batch, frames, classes], got shape {logits.shape}.")
  labels = _checks.integer_array(labels, "labels")
  if labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
    raise ValueError(f"`labels` must be [batch={logits.shape[0]}, label frames], "
                     f"got shape {labels.shape}.")
  num_classes = logits.shape[-1]
  blank_id = _checks.check_count(blank_id, "blank_id", 0)
  if blank_id >= num_classes:
    raise ValueError(f"`blank_id`={blank_id} is not a class of `logits` "
                     f"({num_classes} classes).")
  logit_paddings = _check_paddings(logit_paddings, logits.shape[:2], "logit_paddings", "frame")
  label_paddings = _check_paddings(label_paddings, labels.shape, "label_paddings", "label")
  if not _checks.is_traced(labels) and not _checks.is_traced(label_paddings):
    real = np.asarray(label_paddings) == 0
    values = np.asarray(labels)
    bad = real & ((values < 0) | (values >= num_classes))
    if bad.any():
      raise ValueError(f"`labels` must be integers in [0, {num_classes}) where not padded, "
                       f"got values {np.unique(values[bad])[:10].tolist()}.")
  dtype = _checks.compute_dtype(logits.dtype)
  return (logits.astype(dtype), logit_paddings.astype(dtype), labels,
          label_paddings.astype(dtype), blank_id)


def ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings, *,
                                blank_id: int = 0, log_epsilon=-1e5):
  r"""CTC loss and the forward (alpha) log-probabilities behind it.

  The lattice has, for every prefix of ``n`` labels, a state "ready" (the
  prefix is complete: it was closed by a blank frame, or the next label
  differs so no blank is needed) and, for ``n >= 1``, a state "emitting label
  n" (the last frame was label ``n``). A frame either repeats the current
  state's symbol (blank in "ready", the label in "emitting") or emits the next
  label; a repeated label must pass through a blank. Padded frames change
  nothing. The loss is ``-log`` of the "ready" probability after each
  sequence's last label, at its last frame. Same numbers and layout as
  ``optax.ctc_loss_with_forward_probs``.

  Args:
    logits: ``[B, T, K]`` unnormalised log-probabilities per frame, blank
      included.
    logit_paddings: ``[B, T]``, 1.0 for a padded frame and 0.0 otherwise.
    labels: ``[B, N]`` integer labels (not the blank).
    label_paddings: ``[B, N]``, 1.0 for padding; right-padded (each row's
      zeros come first).
    blank_id: the class of the blank symbol.
    log_epsilon: the finite stand-in for log 0 (keeps gradients finite).

  Returns:
    ``(loss [B], log_alpha_ready [T, B, N+1], log_alpha_emitting [T, B, N])``:
    element ``[t, b, n]`` is the log-probability of having read frames
    ``0..t`` of sequence ``b`` and being in that state of prefix ``n`` (the
    emitting states index labels from 0). The last frame's "ready" row
    includes the final closing step.

  Reference: Graves et al., "Connectionist Temporal Classification", ICML 2006.
  """
  logits, logit_paddings, labels, label_paddings, blank_id = _ctc_inputs(
      logits, logit_paddings, labels, label_paddings, blank_id)
  batch, _, _ = logits.shape
  length = labels.shape[1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  # [T, B, N]: each frame's log-probability of each position's label; [T, B, 1]: of blank.
  emit_scores = jnp.transpose(jnp.take_along_axis(log_probs, labels[:, None, :], axis=-1),
                              (1, 0, 2))
  blank_scores = jnp.transpose(log_probs[:, :, blank_id:blank_id + 1], (1, 0, 2))
  # Label n+1 repeats label n: emitting n may not step straight to emitting n+1.
  repeats = jnp.pad((labels[:, :-1] == labels[:, 1:]).astype(logits.dtype), ((0, 0), (0, 1)))
  no_repeat_closing = log_epsilon * repeats  # 0 where "emitting n" closes for free
  repeat_closing = log_epsilon * (1.0 - repeats)  # 0 where it needs a blank frame

  def close(ready, emitting, extra):
    """ready[n+1] += emitting[n] * exp(extra[n]) in log space."""
    return jnp.concatenate([ready[:, :1], jnp.logaddexp(ready[:, 1:], emitting + extra)], axis=1)

  def frame(state, inputs):
    ready, emitting = state
    emit_score, blank_score, padded = inputs
    ready_closed = close(ready, emitting, no_repeat_closing)
    next_emitting = jnp.logaddexp(ready_closed[:, :-1], emitting) + emit_score
    next_ready = close(ready_closed + blank_score, emitting, blank_score + repeat_closing)
    padded = padded[:, None]
    next_ready = padded * ready + (1.0 - padded) * next_ready
    next_emitting = padded * emitting + (1.0 - padded) * next_emitting
    return (next_ready, next_emitting), (next_ready, next_emitting)

  start_ready = jnp.full((batch, length + 1), log_epsilon, logits.dtype).at[:, 0].set(0.0)
  start_emitting = jnp.full((batch, length), log_epsilon, logits.dtype)
  _, (ready, emitting) = jax.lax.scan(
      frame, (start_ready, start_emitting),
      (emit_scores, blank_scores, jnp.transpose(logit_paddings)))
  final_ready = close(ready[-1], emitting[-1], jnp.zeros_like(repeats))
  ready = ready.at[-1].set(final_ready)
  label_lengths = length - jnp.sum(label_paddings, axis=1).astype(jnp.int32)
  loss = -jnp.take_along_axis(final_ready, label_lengths[:, None], axis=1)[:, 0]
  return loss, ready, emitting


def ctc_loss(logits, logit_paddings, labels, label_paddings, *, blank_id: int = 0,
             log_epsilon=-1e5) -> Array:
  """CTC loss per sequence: ``-log p(labels | logits)`` summed over alignments.

  See ``ctc_loss_with_forward_probs`` for the arguments; same numbers as
  ``optax.ctc_loss``.

  Returns:
    ``[B]`` per-sequence losses.

  Example:
    >>> import jax.numpy as jnp, lossjax
    >>> logits = jnp.zeros((1, 3, 4))  # 3 frames, 4 classes, blank = 0
    >>> loss = lossjax.ctc_loss(logits, jnp.zeros((1, 3)), jnp.array([[1, 2]]),
    ...                         jnp.zeros((1, 2)))
    >>> loss.shape
    (1,)
  """
  return ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings,
                                     blank_id=blank_id, log_epsilon=log_epsilon)[0]
