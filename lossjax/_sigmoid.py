"""Softplus and the sigmoid in the formulations XLA:CPU runs fastest.

``jax.nn.softplus`` (``logaddexp(x, 0)``) took 270 ms over 65,536,000
float32 logits on 2 CPU cores where ``max(x, 0) + log1p(exp(-|x|))`` took
68 ms (one exp and one log1p each, measured alternately).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sigmoid(x: Array) -> Array:
  """1 / (1 + exp(-x)) as 0.5 + 0.5 tanh(x / 2): smooth to every order."""
  return 0.5 + 0.5 * jnp.tanh(0.5 * x)


@jax.custom_jvp
def softplus(x: Array) -> Array:
  """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), exact for every x.

  Its derivative is given as ``sigmoid(x)``, not taken through ``max`` and
  ``abs`` (whose derivatives at 0 would make the second derivative there 0
  instead of 1/4).
  """
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  return softplus(x), sigmoid(x) * dx
