"""Per-row statistics over the classes, accumulated block by block.

Every multiclass loss of the registry is a function of a few numbers per
example computed over its logits ``z [V]``: the row maximum, sums of
exponentials relative to it, the true-class logit, a sum of squares, a
margin maximum. Each can be computed on a block of classes and the blocks'
values combined, so that no ``[N, V]`` array is ever needed; combining works
the same across devices that hold different blocks (``all_reduce``).

The backward pass needs ``dloss/dz`` for every logit. For each statistic,
``surrogate`` is a function of a block of logits whose derivative is the
statistic's derivative: for the sums of exponentials it is written relative
to the *final* row maximum, held constant. That is exact because the loss
does not depend on which reference is used (``lse = m + log sum exp(z - m)``
for every ``m``), so the reference contributes no gradient.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Tile(NamedTuple):
  """What the statistics of one block of classes see besides its logits."""
  is_label: Array  # [n, vb] bool: this column is the example's class
  valid: Array  # [vb] bool: a real class, not padding
  columns: dict  # name -> [vb] per-class parameters (class weights, alpha)


# What each statistic needs computed beside it (for its combine rule).
_REQUIRES = {
    "sumexp": ("zmax",),
    "sumexp2_other": ("zmax",),
    "gap": ("zmax", "wsum"),
    "margin": ("margin_count",),
    "top": ("top_count",),
}

# Statistics that do not depend on the logits: no gradient flows through them.
_CONSTANT = frozenset({"zmax", "wsum", "label_weight", "label_alpha", "margin_count",
                       "top_count"})


def closure(names) -> tuple[str, ...]:
  """`names` with the statistics their combine rules need, in a fixed order."""
  out = set(names)
  for name in list(out):
    out.update(_REQUIRES.get(name, ()))
  return tuple(sorted(out))


def _weights(tile: Tile, name: str, like: Array) -> Array:
  """The per-class parameter `name` of the block as `[1, vb]`; ones if not given."""
  value = tile.columns.get(name)
  value = jnp.ones(like.shape[-1:], like.dtype) if value is None else value.astype(like.dtype)
  return value[None, :]


def _row_sum(values: Array) -> Array:
  return jnp.sum(values, axis=-1)


def block(names: tuple[str, ...], z: Array, tile: Tile) -> dict[str, Array]:
  """The statistics of one block of logits `z [n, vb]`, each `[n]`."""
  valid = jnp.broadcast_to(tile.valid, z.shape)
  minus_inf = jnp.array(-jnp.inf, z.dtype)
  zero = jnp.zeros((), z.dtype)
  stats = {}
  if "zmax" in names:
    stats["zmax"] = jnp.max(jnp.where(valid, z, minus_inf), axis=-1)
    # exp(z - m) with m the block's maximum: every exponent <= 0, no overflow.
    shifted = jnp.where(valid, z - stats["zmax"][:, None], minus_inf)
  if "sumexp" in names:
    stats["sumexp"] = _row_sum(jnp.exp(shifted))
  if "sumexp2_other" in names:
    stats["sumexp2_other"] = _row_sum(jnp.where(tile.is_label, zero, jnp.exp(2 * shifted)))
  weights = _weights(tile, "class_weights", z)
  if "wsum" in names:
    stats["wsum"] = jnp.broadcast_to(jnp.sum(jnp.where(tile.valid[None, :], weights, zero)),
                                     z.shape[:1])
  if "gap" in names:
    # sum_c w_c (m - z_c): every term >= 0, so nothing cancels.
    stats["gap"] = _row_sum(jnp.where(valid, weights * (stats["zmax"][:, None] - z), zero))
  if "label" in names:
    stats["label"] = _row_sum(jnp.where(tile.is_label, z, zero))
  if "label_weight" in names:
    stats["label_weight"] = _row_sum(jnp.where(tile.is_label, weights, zero))
  if "label_alpha" in names:
    stats["label_alpha"] = _row_sum(jnp.where(tile.is_label, _weights(tile, "alpha", z), zero))
  if "sumsq_other" in names:
    stats["sumsq_other"] = _row_sum(jnp.where(tile.is_label | ~valid, zero, jnp.square(z)))
  for name, candidates in _MAXIMA.items():
    if name in names:
      terms = jnp.where(valid, candidates(z, tile), minus_inf)
      stats[name] = jnp.max(terms, axis=-1)
      stats[f"{name}_count"] = _row_sum((terms == stats[name][:, None]).astype(z.dtype))
  return stats


def _margin_terms(z: Array, tile: Tile) -> Array:
  # z_c + 1 - [c = y]: the Crammer-Singer margin's candidates.
  return z + 1.0 - tile.is_label.astype(z.dtype)


# Differentiable maxima, each kept with how many classes attain it (its
# derivative is split evenly between ties, as jnp.max's): the name and the
# candidates it is the maximum of. "top" is the largest logit itself (the
# perceptron's), unlike "zmax", the reference the exponentials are taken from.
_MAXIMA = {"margin": _margin_terms, "top": lambda z, tile: z}


def _combine(a: dict, b: dict, maximum: Callable, total: Callable) -> dict:
  """Statistics of the union of two blocks (or of the shards across devices,
  with `maximum`/`total` the collective max/sum); `b` may be None when
  `maximum` and `total` reduce over devices."""
  out = {}
  pair = (lambda name: (a[name], b[name])) if b is not None else (lambda name: (a[name],))
  if "zmax" in a:
    out["zmax"] = maximum(*pair("zmax"))
    # Rescale each part's sums from its own maximum to the common one.
    factors = [jnp.exp(m - out["zmax"]) for m in pair("zmax")]
    shifts = [out["zmax"] - m for m in pair("zmax")]
  for name in a:
    if name == "zmax" or name in _MAXIMA or name.removesuffix("_count") in _MAXIMA:
      continue
    if name == "sumexp":
      out[name] = total(*[s * f for s, f in zip(pair(name), factors)])
    elif name == "sumexp2_other":
      out[name] = total(*[s * jnp.square(f) for s, f in zip(pair(name), factors)])
    elif name == "gap":
      # sum w (M - z) = sum w (m - z) + (M - m) sum w, for the common maximum M.
      out[name] = total(*[g + w * d for g, w, d in zip(pair(name), pair("wsum"), shifts)])
    else:
      out[name] = total(*pair(name))
  for name in _MAXIMA:
    if name in a:
      out[name] = maximum(*pair(name))
      out[f"{name}_count"] = total(*[jnp.where(m == out[name], c, 0.0)
                                     for m, c in zip(pair(name), pair(f"{name}_count"))])
  return out


def combine(a: dict, b: dict) -> dict:
  """The statistics of two blocks of classes, combined."""
  return _combine(a, b, jnp.maximum, jnp.add)


def all_reduce(stats: dict, axis_name: str) -> dict:
  """The statistics of every device's block on `axis_name`, combined."""
  return _combine(stats, None, lambda x: jax.lax.pmax(x, axis_name),
                  lambda x: jax.lax.psum(x, axis_name))


def surrogate(z: Array, tile: Tile, final: dict, cotangents: dict) -> Array:
  """A scalar whose gradient with respect to `z [n, vb]` is the block's part
  of ``sum_rows sum_k cotangent_k * d stat_k / dz``, with `final` the
  statistics over all classes (their maxima held constant)."""
  valid = jnp.broadcast_to(tile.valid, z.shape)
  zero = jnp.zeros((), z.dtype)
  total = jnp.zeros((), z.dtype)

  def add(name, per_element):
    return total + jnp.sum(cotangents[name][:, None] * per_element)

  if "sumexp" in cotangents or "sumexp2_other" in cotangents:
    shifted = jnp.where(valid, z - final["zmax"][:, None], -jnp.inf)
  if "sumexp" in cotangents:
    total = add("sumexp", jnp.exp(shifted))
  if "sumexp2_other" in cotangents:
    total = add("sumexp2_other", jnp.where(tile.is_label, zero, jnp.exp(2 * shifted)))
  if "gap" in cotangents:
    total = add("gap", jnp.where(valid, -_weights(tile, "class_weights", z) * z, zero))
  if "label" in cotangents:
    total = add("label", jnp.where(tile.is_label, z, zero))
  if "sumsq_other" in cotangents:
    total = add("sumsq_other", jnp.where(tile.is_label | ~valid, zero, jnp.square(z)))
  for name, candidates in _MAXIMA.items():
    if name in cotangents:
      terms = candidates(z, tile)
      # The maximum's derivative, split evenly between ties (as jnp.max's).
      at_max = jax.lax.stop_gradient(valid & (terms == final[name][:, None]))
      # (Padding rows have a count of 0 and a cotangent of 0.)
      share = cotangents[name] / jnp.maximum(final[f"{name}_count"], 1.0)
      total = total + jnp.sum(share[:, None] * jnp.where(at_max, terms, zero))
  return total


def differentiable(cotangents: dict) -> dict:
  """The cotangents of the statistics that depend on the logits."""
  return {k: v for k, v in cotangents.items() if k not in _CONSTANT}
