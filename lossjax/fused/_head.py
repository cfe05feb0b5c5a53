"""Linear layer + loss in one pass over blocks: no ``[N, V]`` logits array.

``hidden [N, D] @ weight [D, V] (+ bias)`` is computed a tile of
``block_rows x block_classes`` logits at a time; each tile adds to per-row
statistics (``_statistics``), from which every registry loss is finished
(``_row_losses``). Two gradient strategies, one ``jax.custom_vjp`` each:

- ``"recompute"`` (per-example outputs): the forward pass keeps only the row
  statistics; the backward pass recomputes every tile and turns it into its
  part of the three gradients. Four matrix products of ``2 N D V`` flops.
- ``"forward"`` (``reduction="mean"`` or ``"sum"``): a scalar's cotangent is
  one number, so the gradients are computed during the forward pass, a block
  of rows with all of its classes at a time, and the backward pass scales
  them. Three matrix products.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from lossjax import _checks
from lossjax import losses as losses_lib
from lossjax.fused import _row_losses
from lossjax.fused import _statistics
from lossjax.fused._statistics import Tile

Array = jax.Array

# Logits per tile: 2**22 float32 values are 16 MiB; a tile's logits, its
# gradient and the elementwise temporaries stay well below the [N, V] arrays.
TILE_ELEMENTS = 2**22
MIN_BLOCK_ROWS = 8
# The forward strategy's row blocks hold all classes: with fewer rows than
# this per block its products are too thin (4096 x 512 x 131072 float32 on 2
# CPU cores: 32-row blocks took ~3x the recompute strategy's time, where at
# 32768 classes 128-row blocks were the faster), so "auto" recomputes there.
FORWARD_MIN_ROWS = 128
REDUCTIONS = ("none", "mean", "sum")
STRATEGIES = ("auto", "forward", "recompute")


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Everything static about one call: the loss form, shapes and tiles."""
  form: _row_losses.RowLoss
  statistics: tuple[str, ...]
  num_classes: int  # over all devices
  local_classes: int
  block_rows: int
  block_classes: int
  compute_dtype: Any
  matmul_dtype: Any
  z_loss: Any
  soft_cap: float | None
  vocab_axis: str | None

  def finish(self, stats: dict) -> Array:
    loss = self.form.finish(stats)
    if not _checks.is_static_zero(self.z_loss):
      # z-loss: a penalty on the log-normaliser, pulling logsumexp(z) to 0.
      loss = loss + self.z_loss * jnp.square(_row_losses.log_normalizer(stats))
    return loss

  def logits(self, hidden: Array, weight: Array, bias: Array | None) -> Array:
    raw = jnp.dot(hidden, weight, preferred_element_type=self.compute_dtype)
    return raw if bias is None else raw + bias.astype(self.compute_dtype)[None, :]

  def capped(self, raw: Array) -> Array:
    if self.soft_cap is None:
      return raw
    # Soft-capping (Gemma 2): cap * tanh(z / cap) keeps every logit in (-cap, cap).
    return self.soft_cap * jnp.tanh(raw / self.soft_cap)


def _pad_axis(x: Array, axis: int, pad: int) -> Array:
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How `num_rows` rows and the plan's classes are cut into tiles (static)."""
  num_rows: int
  block_rows: int
  row_chunks: int
  local_classes: int
  block_classes: int
  class_blocks: int

  @classmethod
  def of(cls, plan: _Plan, num_rows: int) -> "_Layout":
    return cls(num_rows, plan.block_rows, -(-num_rows // plan.block_rows),
               plan.local_classes, plan.block_classes,
               -(-plan.local_classes // plan.block_classes))

  def rows_of(self, per_row: Array) -> Array:
    """A `[N, ...]` array as `[row_chunks, block_rows, ...]` (zero-padded)."""
    pad = self.row_chunks * self.block_rows - self.num_rows
    return _pad_axis(per_row, 0, pad).reshape(self.row_chunks, self.block_rows,
                                              *per_row.shape[1:])

  def classes_of(self, per_class: Array) -> Array:
    """A `[V]` array as `[blocks, bv]` (zero-padded)."""
    return self.pad_classes(per_class, 0).reshape(self.class_blocks, self.block_classes)

  def pad_classes(self, per_class: Array, axis: int) -> Array:
    return _pad_axis(per_class, axis, self.class_blocks * self.block_classes - self.local_classes)

  def unrows(self, chunked: Array) -> Array:
    return chunked.reshape(-1, *chunked.shape[2:])[:self.num_rows]


class _Tiled:
  """The inputs cut into row chunks and class blocks, padded where needed."""

  def __init__(self, plan: _Plan, hidden, weight, bias, labels, columns):
    self.layout = layout = _Layout.of(plan, hidden.shape[0])
    self.hidden = layout.rows_of(hidden)
    # Each chunk transposed once, [chunks, D, br]: XLA:CPU runs `h.T @ dz` with
    # a contiguous h.T up to 2x faster than with the transpose in the product.
    self.hidden_t = self.hidden.transpose(0, 2, 1)
    self.labels = layout.rows_of(labels)
    self.weight = layout.pad_classes(weight, 1)  # a copy only when V needs padding
    self.bias = None if bias is None else layout.classes_of(bias)
    self.columns = {k: layout.classes_of(v) for k, v in columns.items()}
    self.valid = layout.classes_of(jnp.ones(plan.local_classes, jnp.bool_))
    first = 0 if plan.vocab_axis is None else (
        jax.lax.axis_index(plan.vocab_axis) * plan.local_classes)
    self.offsets = first + layout.block_classes * jnp.arange(layout.class_blocks)

  def blocks(self):
    """The per-block inputs, stacked along the leading axis (for `lax.scan`)."""
    return (jnp.arange(self.layout.class_blocks), self.bias, self.columns, self.valid,
            self.offsets)

  def weight_block(self, index) -> Array:
    size = self.layout.block_classes
    return jax.lax.dynamic_slice_in_dim(self.weight, index * size, size, axis=1)


def _tile(plan: _Plan, labels: Array, valid, columns, offset) -> Tile:
  classes = offset + jnp.arange(plan.block_classes, dtype=labels.dtype)
  return Tile(classes[None, :] == labels[:, None], valid, columns)


def _logit_gradients(plan: _Plan, hidden, weight, bias, tile, final, cotangents):
  """One tile's logits recomputed, and the loss's gradient with respect to
  them (`[n, vb]`, in the matmul dtype), with its part of `d hidden [n, D]`
  and `d bias [vb]` in the compute dtype."""
  raw = plan.logits(hidden, weight, bias)
  d_raw = jax.grad(lambda r: _statistics.surrogate(plan.capped(r), tile, final, cotangents))(raw)
  d_matmul = d_raw.astype(plan.matmul_dtype)
  d_hidden = jnp.dot(d_matmul, weight.T, preferred_element_type=plan.compute_dtype)
  return d_matmul, d_hidden, jnp.sum(d_raw, axis=0)


def _divisor_at_most(n: int, target: int) -> int:
  """The largest divisor of `n` that is <= `target` (at least 1)."""
  return next(d for d in range(min(n, max(target, 1)), 0, -1) if n % d == 0)


def _add_weight_gradient(plan: _Plan, d_weight: Array, hidden_t: Array, d_logits: Array):
  """`d_weight [D, V] + hidden_t [D, n] @ d_logits [n, V]`, a band of rows of
  `d_weight` at a time: XLA:CPU writes a product to a buffer of its own before
  adding it, and a whole `[D, V]` product would be a second weight-sized
  temporary (measured: 80 MiB of temporaries for a 64 MiB gradient, 32 MiB in
  bands of 128 rows, at similar speed)."""
  d = d_weight.shape[0]
  band = _divisor_at_most(d, max(1, TILE_ELEMENTS // d_weight.shape[1]))
  if band == d or band < d // 64:  # one product, or bands too thin to run fast
    return d_weight + jnp.dot(hidden_t, d_logits, preferred_element_type=plan.compute_dtype)

  def one_band(i, acc):
    rows = jax.lax.dynamic_slice_in_dim(hidden_t, i * band, band, axis=0)
    part = jnp.dot(rows, d_logits, preferred_element_type=plan.compute_dtype)
    current = jax.lax.dynamic_slice_in_dim(acc, i * band, band, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + part, i * band, axis=0)

  return jax.lax.fori_loop(0, d // band, one_band, d_weight)


def _reduce_over_vocab(plan: _Plan, stats: dict) -> dict:
  return stats if plan.vocab_axis is None else _statistics.all_reduce(stats, plan.vocab_axis)


def _varying(plan: _Plan, value: Array) -> Array:
  """`value` typed as varying over the vocabulary axis (a scan carry that
  accumulates per-device values must start as one)."""
  if plan.vocab_axis is None:
    return value
  return jax.lax.pcast(value, plan.vocab_axis, to="varying")


def _row_statistics(plan: _Plan, tiled: _Tiled) -> dict:
  """The statistics of every row over all classes, `[row_chunks, block_rows]`."""

  def of_block(index, bias, columns, valid, offset):
    weight = tiled.weight_block(index)

    def one_chunk(_, chunk):
      hidden, labels = chunk
      z = plan.capped(plan.logits(hidden, weight, bias))
      return None, _statistics.block(plan.statistics, z, _tile(plan, labels, valid, columns,
                                                               offset))
    return jax.lax.scan(one_chunk, None, (tiled.hidden, tiled.labels))[1]

  blocks = tiled.blocks()
  stats = of_block(*jax.tree.map(lambda x: x[0], blocks))
  if tiled.layout.class_blocks > 1:
    rest = jax.tree.map(lambda x: x[1:], blocks)
    stats = jax.lax.scan(lambda acc, b: (_statistics.combine(acc, of_block(*b)), None),
                         stats, rest)[0]
  return _reduce_over_vocab(plan, stats)


def _per_example_recompute(plan: _Plan):
  """Per-example losses; the backward pass recomputes the logits tile by tile.

  Saved for the backward pass: the inputs and the row statistics (a few
  numbers per example). Recomputed there: every tile of logits."""

  @jax.custom_vjp
  def per_example(hidden, weight, bias, labels, columns):
    return forward(hidden, weight, bias, labels, columns)[0]

  def forward(hidden, weight, bias, labels, columns):
    tiled = _Tiled(plan, hidden, weight, bias, labels, columns)
    stats = {k: tiled.layout.unrows(v) for k, v in _row_statistics(plan, tiled).items()}
    return plan.finish(stats), (hidden, weight, bias, labels, columns, stats)

  def backward(residuals, cotangent):
    hidden, weight, bias, labels, columns, stats = residuals
    _, finish_vjp = jax.vjp(plan.finish, stats)
    cotangents = _statistics.differentiable(finish_vjp(cotangent.astype(plan.compute_dtype))[0])
    tiled = _Tiled(plan, hidden, weight, bias, labels, columns)
    rows_of = lambda tree: {k: tiled.layout.rows_of(v) for k, v in tree.items()}
    per_chunk = (tiled.hidden, tiled.hidden_t, tiled.labels, rows_of(stats), rows_of(cotangents))
    size = plan.block_classes

    def of_block(acc, block):
      d_hidden, d_weight = acc
      index, bias_b, columns_b, valid, offset = block
      weight_b = tiled.weight_block(index)

      def one_chunk(acc, chunk):
        h, h_t, y, final, cts = chunk
        tile = _tile(plan, y, valid, columns_b, offset)
        dz, dh, db = _logit_gradients(plan, h, weight_b, bias_b, tile, final, cts)
        dw = jnp.dot(h_t, dz, preferred_element_type=plan.compute_dtype)
        return (acc[0] + dw, acc[1] + db), dh

      zeros = (_varying(plan, jnp.zeros((hidden.shape[1], size), plan.compute_dtype)),
               _varying(plan, jnp.zeros((size,), plan.compute_dtype)))
      (dw, db), dh = jax.lax.scan(one_chunk, zeros, per_chunk)
      # Written in place into the weight-shaped gradient (no stacked copy).
      d_weight = jax.lax.dynamic_update_slice_in_dim(d_weight, dw, index * size, axis=1)
      return (d_hidden + dh, d_weight), db

    start = (_varying(plan, jnp.zeros(tiled.hidden.shape, plan.compute_dtype)),
             _varying(plan, jnp.zeros(tiled.weight.shape, plan.compute_dtype)))
    (d_hidden, d_weight), d_bias = jax.lax.scan(of_block, start, tiled.blocks())
    return _input_gradients(plan, tiled.layout, residuals[:5], d_hidden, d_weight, d_bias)

  per_example.defvjp(forward, backward)
  return per_example


def _input_gradients(plan, layout, inputs, d_hidden, d_weight, d_bias, scale=None):
  """The gradients in the layout and dtypes of the inputs; labels and the
  per-class parameters get none."""
  hidden, weight, bias, labels, columns = inputs
  d_hidden = layout.unrows(d_hidden)
  if plan.vocab_axis is not None:
    # Each device saw its block of classes: the hidden state's gradient is their sum.
    d_hidden = jax.lax.psum(d_hidden, plan.vocab_axis)
  d_weight = d_weight[:, :plan.local_classes]
  d_bias = None if bias is None else d_bias.reshape(-1)[:plan.local_classes]
  if scale is not None:
    d_hidden, d_weight = scale * d_hidden, scale * d_weight
    d_bias = None if d_bias is None else scale * d_bias
  return (d_hidden.astype(hidden.dtype), d_weight.astype(weight.dtype),
          None if bias is None else d_bias.astype(bias.dtype), None,
          jax.tree.map(jnp.zeros_like, columns))


def _reduced_forward_gradients(plan: _Plan):
  """The weighted sum of the losses, `sum_i scale_i loss_i`, with its
  gradients computed in the forward pass: a block of rows has all of its
  classes' logits at once, so its loss cotangent (`scale`) is known there.

  Saved for the backward pass: the three gradients. Recomputed: nothing."""

  @jax.custom_vjp
  def reduced(hidden, weight, bias, labels, columns, scale):
    return forward(hidden, weight, bias, labels, columns, scale)[0]

  def forward(hidden, weight, bias, labels, columns, scale):
    tiled = _Tiled(plan, hidden, weight, bias, labels, columns)
    _, bias_b, columns_b, valid, offset = jax.tree.map(lambda x: x[0], tiled.blocks())

    def one_chunk(acc, chunk):
      value, d_weight, d_bias = acc
      h, h_t, y, s = chunk
      tile = _tile(plan, y, valid, columns_b, offset)
      z = plan.capped(plan.logits(h, tiled.weight, bias_b))
      stats = _reduce_over_vocab(plan, _statistics.block(plan.statistics, z, tile))
      loss, finish_vjp = jax.vjp(plan.finish, stats)
      keep = s > 0  # masked rows: no value (even NaN) and no gradient
      value = value + jnp.sum(jnp.where(keep, s * loss, 0.0))
      cts = _statistics.differentiable(finish_vjp(jnp.where(keep, s, 0.0))[0])
      dz, dh, db = _logit_gradients(plan, h, tiled.weight, bias_b, tile, stats, cts)
      return (value, _add_weight_gradient(plan, d_weight, h_t, dz), d_bias + db), dh

    zeros = (jnp.zeros((), plan.compute_dtype),
             _varying(plan, jnp.zeros(tiled.weight.shape, plan.compute_dtype)),
             _varying(plan, jnp.zeros((plan.block_classes,), plan.compute_dtype)))
    (value, dw, db), dh = jax.lax.scan(
        one_chunk, zeros, (tiled.hidden, tiled.hidden_t, tiled.labels,
                           tiled.layout.rows_of(scale)))
    return value, ((hidden, weight, bias, labels, columns), dh, dw, db, scale)

  def backward(residuals, cotangent):
    inputs, dh, dw, db, scale = residuals
    layout = _Layout.of(plan, inputs[0].shape[0])
    grads = _input_gradients(plan, layout, inputs, dh, dw, db,
                             scale=cotangent.astype(plan.compute_dtype))
    return grads + (jnp.zeros_like(scale),)

  reduced.defvjp(forward, backward)
  return reduced


def _row_form(loss: str, num_classes: int, loss_options: dict) -> _row_losses.RowLoss:
  spec = losses_lib.spec(loss)
  if spec.kind != "multiclass":
    raise ValueError(f"`loss` must be a multiclass loss for a fused head, got {loss!r} "
                     f"({spec.kind}); fused: {', '.join(fused_losses())}.")
  if spec.fn not in _row_losses.FORMS:
    raise ValueError(f"loss {loss!r} has no fused form; fused: {', '.join(fused_losses())}.")
  spec.bind(**loss_options)  # unknown options: ValueError naming the loss's options
  return _row_losses.FORMS[spec.fn](num_classes, **{**spec.hyperparameters, **loss_options})


def default_strategy(reduction: str, local_classes: int) -> str:
  """What ``strategy="auto"`` takes: the forward-gradient way for a scalar
  reduction whose row blocks can hold ``FORWARD_MIN_ROWS`` rows of all the
  (local) classes in a tile, the recompute way otherwise."""
  if reduction != "none" and TILE_ELEMENTS // local_classes >= FORWARD_MIN_ROWS:
    return "forward"
  return "recompute"


def fused_losses() -> list[str]:
  """The registry's losses that have a fused form (every multiclass one)."""
  return [n for n in losses_lib.names("multiclass")
          if losses_lib.spec(n).fn in _row_losses.FORMS]


def _check_inputs(hidden, weight, labels, bias, where):
  hidden = _checks.floating_array(hidden, "hidden")
  weight = _checks.floating_array(weight, "weight")
  labels = _checks.integer_array(labels, "labels")
  if hidden.ndim < 1:
    raise ValueError("`hidden` must have a feature axis [..., D], got a scalar.")
  if weight.ndim != 2:
    raise ValueError(f"`weight` must be [D, V] (a Dense kernel), got shape {weight.shape}.")
  if hidden.shape[-1] != weight.shape[0]:
    raise ValueError(
        f"`hidden` {tuple(hidden.shape)} and `weight` {tuple(weight.shape)} do not match: "
        f"hidden's last axis (D={hidden.shape[-1]}) must equal weight's first "
        f"(D={weight.shape[0]}).")
  _checks.check_shape(labels, hidden.shape[:-1], "labels",
                      "the shape of `hidden` without its feature axis")
  if bias is not None:
    bias = _checks.floating_array(bias, "bias")
    _checks.check_shape(bias, weight.shape[1:], "bias", "one entry per class of `weight`")
  where = _checks.example_mask(where, hidden.shape[:-1])
  return hidden, weight, labels, bias, where


def _local_columns(form, local: int, total: int, vocab_axis) -> dict:
  """The per-class parameters of this device's classes ([V_local])."""
  out = {}
  for name, value in form.columns.items():
    vector = _checks.floating_array(value, name)
    if vector.shape == (local,):
      out[name] = vector
    elif vector.shape == (total,) and vocab_axis is not None:
      start = jax.lax.axis_index(vocab_axis) * local
      out[name] = jax.lax.dynamic_slice_in_dim(vector, start, local)
    else:
      expected = f"({local},)" if local == total else f"({local},) or ({total},)"
      raise ValueError(f"`{name}` must have shape {expected} (one entry per class), got "
                       f"{tuple(vector.shape)}.")
  return out


def _block_sizes(strategy, rows, classes, block_rows, block_classes):
  if block_classes is None:
    block_classes = classes if strategy == "forward" else min(classes, 2048)
  if strategy == "forward" and block_classes != classes:
    raise ValueError(f"`block_classes` must be all {classes} classes with "
                     f"strategy='forward' (its rows see all their classes at once), got "
                     f"{block_classes}.")
  if block_rows is None:
    block_rows = max(MIN_BLOCK_ROWS, TILE_ELEMENTS // block_classes)
  for name, value in (("block_rows", block_rows), ("block_classes", block_classes)):
    _checks.check_count(value, name, 1)
  return min(block_rows, max(rows, 1)), min(block_classes, classes)


def fused_linear_loss(hidden, weight, labels, *, loss: str = "cross_entropy", bias=None,
                      where=None, weights=None, reduction: str = "none", z_loss=0.0,
                      soft_cap: float | None = None, strategy: str = "auto",
                      block_rows: int | None = None, block_classes: int | None = None,
                      vocab_axis: str | None = None, **loss_options) -> Array:
  r"""A linear layer and a registry loss, without the ``[N, V]`` logits.

  .. math::
    z_i = \mathrm{cap}\,\tanh\big((h_i W + b) / \mathrm{cap}\big), \quad
    \ell_i = \mathrm{loss}(z_i, y_i) + \lambda_z \,(\log \textstyle\sum_c e^{z_{ic}})^2

  (no cap when ``soft_cap=None``; ``z_loss`` is ``λ_z``). The logits are made
  a tile of ``block_rows x block_classes`` at a time and folded into a few
  statistics per example (row max, sums of exponentials, the true-class
  logit, ...), from which the loss is finished: the same numbers as the
  registry loss on the materialised logits, at a tile's memory.

  Gradients (with respect to ``hidden``, ``weight`` and ``bias``):

  - ``reduction="none"`` (per-example results, any cotangent): the forward
    pass saves the row statistics; the backward pass recomputes each tile
    of logits (strategy ``"recompute"``: four matrix products in all).
  - ``reduction="mean"`` or ``"sum"`` (a scalar): the gradients are computed
    during the forward pass, a block of rows with all its classes at a
    time, and the backward pass only scales them (strategy ``"forward"``:
    three matrix products). ``strategy="recompute"`` forces the other way;
    the benchmark's ``fused_head`` table times both (``results/BENCHMARKS.md``):
    the forward way was the faster while a tile holds at least 128 rows of
    all classes (32768 classes at the default tile) and much the slower
    beyond, so ``"auto"`` takes it for scalars up to there
    (``default_strategy``).

  Args:
    hidden: ``[..., D]`` features (the layer's input).
    weight: ``[D, V]``, the layout of a Flax ``Dense``/``nnx.Linear`` kernel.
      bfloat16/float16 products accumulate in float32, and so do the row
      statistics and the weight gradient over blocks.
    labels: ``[...]`` integers in ``[0, V)``. Out of range: ``ValueError``
      outside ``jit``, NaN for that example (and no gradient from it) inside.
    loss: a multiclass registry name (``fused_losses()`` lists them).
    bias: optional ``[V]``.
    where: optional ``[...]`` boolean mask; masked examples give 0 and no
      gradient, their labels are not checked; all masked gives 0, not NaN.
    weights: optional ``[...]`` per-example weights ``>= 0``: ``"none"``
      returns ``w * loss``, ``"sum"`` sums it, ``"mean"`` divides that sum by
      the unmasked examples' total weight (0 when it is 0), as
      ``lossjax.reduction.weighted_mean``.
    reduction: ``"none"`` (``[...]`` per-example losses), ``"mean"`` over
      the unmasked examples or ``"sum"`` (scalars).
    z_loss: weight of the squared log-normaliser (PaLM's 1e-4), ``>= 0``.
    soft_cap: ``cap > 0`` for logit soft-capping (Gemma 2's 30), or None.
    strategy: ``"auto"``, ``"forward"`` (scalar reductions only) or
      ``"recompute"``.
    block_rows, block_classes: the tile (default: from the shapes, about
      2**22 logits a tile; ``"forward"`` takes all classes of a block of rows).
    vocab_axis: inside ``jax.shard_map`` with ``weight`` (and ``bias``)
      split over the classes along this mesh axis: each device computes its
      classes' statistics and they are combined across the axis. ``labels``
      are global class indices; per-class options may be global or local.
    **loss_options: the loss's hyper-parameters (e.g. ``label_smoothing=0.1``,
      ``class_weights=w``, ``gamma=1.0``), overriding the registry's.

  Returns:
    ``[...]`` per-example losses in float32 (float64 for float64 inputs), or a
    scalar for ``"mean"``/``"sum"``.

  Example:
    >>> import jax, jax.numpy as jnp, lossjax
    >>> h = jax.random.normal(jax.random.key(0), (4, 8))
    >>> w = jax.random.normal(jax.random.key(1), (8, 100))
    >>> y = jnp.array([3, 14, 15, 92])
    >>> fused = lossjax.fused_linear_loss(h, w, y, label_smoothing=0.1)
    >>> ref = lossjax.softmax_cross_entropy_with_integer_labels(h @ w, y, label_smoothing=0.1)
    >>> bool(jnp.allclose(fused, ref, rtol=1e-5))
    True

  References: Wijmans et al., "Cut Your Losses in Large-Vocabulary Language
  Models" (Cut Cross-Entropy), 2024; Hsu et al., "Liger Kernel", 2024; z-loss:
  Chowdhery et al., "PaLM", 2022; soft-capping: Gemma Team, "Gemma 2", 2024.
  """
  hidden, weight, labels, bias, where = _check_inputs(hidden, weight, labels, bias, where)
  if weights is not None:
    weights = _checks.floating_array(weights, "weights")
    _checks.check_shape(weights, labels.shape, "weights", "one per example, the shape of `labels`")
    _checks.check_nonnegative(weights, "weights")
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
  if strategy not in STRATEGIES:
    raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}.")
  if strategy == "auto":
    strategy = default_strategy(reduction, weight.shape[1])
  if strategy == "forward" and reduction == "none":
    raise ValueError("`strategy='forward'` needs a scalar `reduction` ('mean' or 'sum'): "
                     "per-example outputs have per-example cotangents.")
  _checks.check_nonnegative(z_loss, "z_loss")
  if soft_cap is not None and not (_checks.is_traced(soft_cap) or soft_cap > 0):
    raise ValueError(f"`soft_cap` must be > 0 or None, got {soft_cap!r}.")
  local = weight.shape[1]
  total = local if vocab_axis is None else local * jax.lax.axis_size(vocab_axis)
  form = _row_form(loss, total, loss_options)
  columns = _local_columns(form, local, total, vocab_axis)

  batch_shape = hidden.shape[:-1]
  rows = math.prod(batch_shape)
  flat_hidden = hidden.reshape(rows, hidden.shape[-1])
  flat_labels = labels.reshape(rows)
  flat_where = None if where is None else where.reshape(rows)
  valid = _checks.label_validity(flat_labels, total, flat_where)
  if valid is not None:
    flat_labels = jnp.where(valid, flat_labels, 0)

  matmul_dtype = jnp.promote_types(hidden.dtype, weight.dtype)
  compute_dtype = _checks.compute_dtype(matmul_dtype)
  if jax.default_backend() == "cpu":
    # XLA:CPU converts bfloat16/float16 operands of every product to float32,
    # inside the loop a float32 copy of the weight per block of rows (4096 x
    # 512 x 32768 bfloat16: 5.1 s vs optax's 4.3 s); converted once, 3.x s.
    matmul_dtype = compute_dtype
  names = form.statistics + (("zmax", "sumexp") if not _checks.is_static_zero(z_loss) else ())
  block_rows, block_classes = _block_sizes(strategy, rows, local, block_rows, block_classes)
  plan = _Plan(form, _statistics.closure(names), total, local, block_rows, block_classes,
               compute_dtype, matmul_dtype, z_loss, soft_cap, vocab_axis)
  operands = (flat_hidden.astype(matmul_dtype), weight.astype(matmul_dtype), bias,
              flat_labels, columns)

  kept = jnp.ones(rows, compute_dtype) if flat_where is None else flat_where.astype(compute_dtype)
  example_weights = kept if weights is None else kept * weights.reshape(rows).astype(compute_dtype)
  if strategy == "recompute":
    per_example = _per_example_recompute(plan)(*operands)
    if valid is not None:
      per_example = jnp.where(valid, per_example, jnp.nan)
    if weights is not None:
      per_example = per_example * example_weights
    if flat_where is not None:
      per_example = jnp.where(flat_where, per_example, 0.0)
    if reduction == "none":
      return per_example.reshape(batch_shape)
    total_loss = jnp.sum(per_example)
    if reduction == "sum":
      return total_loss
    return total_loss / _total_weight(example_weights)

  scale = example_weights
  if reduction == "mean":
    scale = scale / _total_weight(scale)
  if valid is not None:
    # An invalid label's example gives NaN (the value), and no gradient.
    invalid = (kept > 0) & ~valid
    scale = jnp.where(invalid, 0.0, scale)
  value = _reduced_forward_gradients(plan)(*operands, scale)
  if valid is not None:
    value = jnp.where(jnp.any(invalid), jnp.nan, value)
  return value


def _total_weight(weights: Array) -> Array:
  # max(total, tiny): all-zero weights (every example masked) give 0, not NaN.
  total = jnp.sum(weights)
  return jnp.maximum(total, jnp.finfo(total.dtype).tiny)


def fused_linear_cross_entropy(hidden, weight, labels, **options) -> Array:
  """``fused_linear_loss`` with ``loss="cross_entropy"``: softmax cross-entropy of
  ``hidden @ weight (+ bias)`` against integer labels, without the logits.

  Takes every option of ``fused_linear_loss`` (``bias``, ``where``,
  ``reduction``, ``label_smoothing``, ``class_weights``, ``z_loss``,
  ``soft_cap``, ...).

  Example:
    >>> import jax, jax.numpy as jnp, lossjax
    >>> h = jax.random.normal(jax.random.key(0), (4, 8))
    >>> w = jax.random.normal(jax.random.key(1), (8, 100))
    >>> lossjax.fused_linear_cross_entropy(h, w, jnp.array([3, 14, 15, 92]), reduction="mean")
    Array(..., dtype=float32)
  """
  if "loss" in options:
    raise TypeError("fused_linear_cross_entropy takes no `loss`; use fused_linear_loss.")
  return fused_linear_loss(hidden, weight, labels, loss="cross_entropy", **options)
