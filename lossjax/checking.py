"""Label checks that raise under ``jit``, built on ``jax.experimental.checkify``.

Traced lossjax losses record a ``checkify`` check on their labels inside
``label_checks()``; ``checked`` does that for one loss. To check inside your own
jitted step, trace it with checks on and checkify it::

    with lossjax.label_checks():
      checked_step = jax.jit(checkify.checkify(step))
      error, out = checked_step(...)
    error.throw()

Without ``label_checks()`` nothing is recorded, so plain ``jit`` pays nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.experimental import checkify

from lossjax._checks import label_checks


def checked(loss_fn: Callable[..., Any], *, static_argnames=("axis",)):
  """`loss_fn`, jit-compiled with its label checks on; raises on bad labels.

  Example:
    >>> import jax.numpy as jnp, lossjax
    >>> ce = lossjax.checked(lossjax.softmax_cross_entropy_with_integer_labels)
    >>> ce(jnp.zeros((2, 3)), jnp.array([0, 3]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jax...JaxRuntimeError: `labels` must be integers in [0, num_classes=3); ...

  The result is jitted: hyper-parameters passed as keywords are traced
  values, except those in `static_argnames`.
  """
  checkified = jax.jit(checkify.checkify(loss_fn), static_argnames=static_argnames)

  @functools.wraps(loss_fn)
  def run(*args, **kwargs):
    with label_checks():
      error, values = checkified(*args, **kwargs)
    error.throw()
    return values

  return run
