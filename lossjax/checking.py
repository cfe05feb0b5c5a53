"""Label checks that raise under ``jit``, built on ``jax.experimental.checkify``.

Every lossjax loss records a debug ``checkify`` check on its labels when it is
traced. Plain ``jit`` drops it (no cost); ``checked`` (or wrapping your own
step in ``checkify.checkify``) turns it into an error at run time.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.experimental import checkify


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
    error, values = checkified(*args, **kwargs)
    error.throw()
    return values

  return run
