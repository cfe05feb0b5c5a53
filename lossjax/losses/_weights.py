"""Per-class weights derived from class counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lossjax import _checks

Array = jax.Array


def class_balanced_weights(counts, beta=0.999) -> Array:
  r"""Class-balanced weights from the effective number of samples.

  .. math:: w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}}, \quad \sum_c w_c = C

  ``beta = 0`` gives equal weights; ``beta -> 1`` approaches inverse
  frequency.

  Args:
    counts: ``[C]`` positive numbers of training examples per class.
    beta: in ``[0, 1)``.

  Returns:
    ``[C]`` float32 weights summing to ``C``, for ``class_weights=``.

  Example:
    >>> import lossjax
    >>> lossjax.class_balanced_weights([100, 10], beta=0.99)
    Array([0.26..., 1.73...], dtype=float32)

  Reference: Cui et al., "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019.
  """
  counts = jnp.asarray(counts)
  if counts.ndim != 1:
    raise ValueError(f"`counts` must be a 1-D array [C], got shape {counts.shape}.")
  if not _checks.is_traced(counts) and np.any(np.asarray(counts) <= 0):
    raise ValueError(
        f"`counts` must all be > 0 (a class with no examples has no weight), "
        f"got {np.asarray(counts).tolist()}.")
  if not _checks.is_traced(beta) and not 0.0 <= float(beta) < 1.0:
    raise ValueError(f"`beta` must be in [0, 1), got {beta!r}.")
  counts = counts.astype(_checks.compute_dtype(counts.dtype))
  # 1 - beta^n = -expm1(n log beta): exact for beta near 1, where it matters.
  effective_number = -jnp.expm1(counts * jnp.log(beta))
  weights = (1.0 - beta) / effective_number
  return weights * (counts.shape[0] / jnp.sum(weights))
