"""A Flax ``nnx.Linear`` as a fused head: the layer and the loss in one call."""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from lossjax.fused._head import fused_linear_loss


def nnx_head(linear: nnx.Linear, *, loss: str = "cross_entropy",
             **options) -> Callable[..., jax.Array]:
  """The loss of ``linear``'s logits, computed without them.

  Returns ``head(hidden, labels, **call_options)``, which reads the layer's
  kernel and bias when called (so ``nnx.grad`` of a loss built on it reaches
  them) and calls ``fused_linear_loss`` with ``loss``, ``options`` and
  ``call_options`` (e.g. ``reduction="mean"``, ``where=``). A layer with a
  computation ``dtype`` has its inputs cast to it first, as ``nnx.Linear``
  does; a custom ``dot_general`` or ``precision`` is not supported.

  Args:
    linear: the model's last layer, ``nnx.Linear(D, V)``.
    loss: a multiclass registry name (``fused_losses()``).
    **options: defaults for every call (``label_smoothing``, ``z_loss``, ...).

  Example:
    >>> import jax, jax.numpy as jnp, lossjax
    >>> from flax import nnx
    >>> layer = nnx.Linear(8, 1000, rngs=nnx.Rngs(0))
    >>> head = lossjax.fused.nnx_head(layer, label_smoothing=0.1)
    >>> hidden, labels = jnp.ones((4, 8)), jnp.array([1, 2, 3, 4])
    >>> float(head(hidden, labels, reduction="mean")) > 0
    True
    >>> grads = nnx.grad(lambda layer: lossjax.fused.nnx_head(layer)(
    ...     hidden, labels, reduction="mean"))(layer)
    >>> grads.kernel[...].shape
    (8, 1000)
  """
  if not isinstance(linear, nnx.Linear):
    raise TypeError(f"`linear` must be an nnx.Linear, got {type(linear).__name__}.")
  if linear.precision is not None or linear.dot_general is not jax.lax.dot_general:
    raise ValueError("`linear` has a custom `precision` or `dot_general`, which the fused "
                     "head does not reproduce.")

  def head(hidden, labels, **call_options):
    kernel = linear.kernel[...]
    bias = None if linear.bias is None else linear.bias[...]
    if linear.dtype is not None:
      hidden, kernel = hidden.astype(linear.dtype), kernel.astype(linear.dtype)
      bias = None if bias is None else bias.astype(linear.dtype)
    return fused_linear_loss(hidden, kernel, labels, loss=loss, bias=bias,
                             **{**options, **call_options})

  return head
