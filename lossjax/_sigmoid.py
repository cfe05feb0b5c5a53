"""log sigmoid(x) and log sigmoid(-x) in the formulation XLA:CPU runs fastest.

``jax.nn.softplus`` (``logaddexp(x, 0)``, i.e. ``-log sigmoid(-x)``) took
270 ms over 65,536,000 float32 logits on 2 CPU cores where
``max(x, 0) + log1p(exp(-|x|))`` took 68 ms (one exp and one log1p each,
measured alternately).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_jvp
def log_sigmoids(x: Array) -> tuple[Array, Array]:
  """(log sigmoid(x), log sigmoid(-x)) from one exp and one log1p.

  Both are exact in relative terms for every x (``-log1p(exp(-|x|))`` on the
  side the sign favours, ``-x`` plus it on the other): a binary loss built on
  them keeps ``exp(-20)``-sized losses of confident, right predictions. The
  derivatives are the sigmoids, ``lax.logistic``, exact to every order.
  """
  shared = jnp.log1p(jnp.exp(-jnp.abs(x)))
  return -(jnp.maximum(-x, 0.0) + shared), -(jnp.maximum(x, 0.0) + shared)


@log_sigmoids.defjvp
def _log_sigmoids_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return log_sigmoids(x), (jax.lax.logistic(-x) * dx, -jax.lax.logistic(x) * dx)
