"""Fused linear + loss heads against the registry losses on materialised logits."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lossjax
from lossjax import losses
from lossjax.fused import fused_linear_loss

MULTICLASS = losses.names("multiclass")
# Sparsemax's threshold is a fixed point over the whole row (lossjax.sparsemax),
# not a statistic that blocks of classes combine: it has no fused form yet.
WITHOUT_FUSED_FORM = ["sparsemax"]
FUSED = [n for n in MULTICLASS if n not in WITHOUT_FUSED_FORM]
# Tiles that divide neither the rows (37) nor the classes (101): padded edges,
# several blocks each way.
TILES = {"block_rows": 8, "block_classes": 32}


def _problem(rng, rows=37, features=16, classes=101, dtype=jnp.float32, scale=0.5):
  hidden = jnp.asarray(rng.normal(size=(rows, features)), dtype)
  weight = jnp.asarray(scale * rng.normal(size=(features, classes)), dtype)
  bias = jnp.asarray(rng.normal(size=(classes,)), dtype)
  labels = jnp.asarray(rng.integers(0, classes, rows), jnp.int32)
  return hidden, weight, bias, labels


def _materialised(name, hidden, weight, bias, labels, **options):
  logits = jnp.dot(hidden.astype(jnp.float32), weight.astype(jnp.float32)) + bias.astype(jnp.float32)[None, :]
  return losses.get(name, **options)(logits, labels)


def _close(got, want, rtol=1e-5):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.max(np.abs(want)) + 1e-12)


def test_every_multiclass_registry_loss_but_sparsemax_has_a_fused_form():
  assert lossjax.fused.fused_losses() == FUSED
  with pytest.raises(ValueError, match="'sparsemax' has no fused form"):
    fused_linear_loss(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(2, jnp.int32), loss="sparsemax")


def _value_and_grads(fn, reduction, cotangent, *args):
  """The value of `fn` and the gradients of `sum(cotangent * fn)` (per-example
  outputs) or of `fn` (scalars), in one program."""
  scalar = (lambda *a: jnp.sum(cotangent * fn(*a))) if reduction == "none" else fn
  return fn(*args), jax.grad(scalar, argnums=tuple(range(len(args))))(*args)


def _check_against_materialised(name, strategy, reduction, rng, *, options=None,
                                reference=None, tiles=None, problem=None):
  hidden, weight, bias, labels = problem or _problem(rng)
  options = options or {}
  tiles = tiles or (TILES if strategy == "recompute" else {"block_rows": 8})
  cotangent = jnp.asarray(rng.normal(size=labels.shape), jnp.float32)
  fused = lambda h, w, b: fused_linear_loss(h, w, labels, loss=name, bias=b, reduction=reduction,
                                            strategy=strategy, **tiles, **options)
  per_example = reference or (lambda h, w, b: _materialised(name, h, w, b, labels, **options))
  want = {"none": per_example, "mean": lambda *a: jnp.mean(per_example(*a)),
          "sum": lambda *a: jnp.sum(per_example(*a))}[reduction]
  got_value, got_grads = jax.jit(lambda *a: _value_and_grads(fused, reduction, cotangent, *a))(
      hidden, weight, bias)
  want_value, want_grads = _value_and_grads(want, reduction, cotangent, hidden, weight, bias)
  assert got_value.shape == want_value.shape and got_value.dtype == jnp.float32
  _close(got_value, want_value)
  for got, expected in zip(got_grads, want_grads):
    _close(got, expected)


@pytest.mark.parametrize("strategy, reduction", [("recompute", "none"), ("forward", "mean")])
@pytest.mark.parametrize("name", FUSED)
def test_values_and_gradients_match_the_materialised_loss(name, strategy, reduction, rng):
  """Per-example values with uneven cotangents (recomputed tiles), and the
  mean with gradients from the forward pass."""
  _check_against_materialised(name, strategy, reduction, rng)


def test_ties_in_the_hinge_margin_split_the_gradient_as_jnp_max(rng):
  hidden, _, _, labels = _problem(rng, classes=40)
  weight = jnp.zeros((16, 40), jnp.float32)  # every margin candidate ties
  for strategy, tiles in (("recompute", {"block_rows": 8, "block_classes": 16}),
                          ("forward", {"block_rows": 8})):
    fused = lambda w: fused_linear_loss(hidden, w, labels, loss="hinge", reduction="mean",
                                        strategy=strategy, **tiles)
    reference = lambda w: jnp.mean(losses.get("hinge")(hidden @ w, labels))
    _close(jax.jit(jax.grad(fused))(weight), jax.grad(reference)(weight))


@pytest.mark.parametrize("name, options, strategy, reduction", [
    ("cross_entropy", {"class_weights": "per_class", "label_smoothing": 0.2}, "recompute", "none"),
    ("cross_entropy", {"class_weights": "per_class", "label_smoothing": 0.2}, "forward", "sum"),
    ("label_smoothing", {"class_weights": "per_class"}, "forward", "mean"),
    ("focal", {"gamma": 1.5, "alpha": "per_class"}, "recompute", "none"),
    ("focal", {"alpha": 0.25}, "forward", "sum"),
    ("mse", {"k": 3.0, "m": 2.0}, "recompute", "sum"),
    ("gce", {"q": 0.3}, "forward", "mean"),
])
def test_loss_options_match_the_materialised_loss(name, options, strategy, reduction, rng):
  per_class = jnp.asarray(rng.uniform(0.2, 2.0, size=101), jnp.float32)
  options = {k: per_class if v == "per_class" else v for k, v in options.items()}
  _check_against_materialised(name, strategy, reduction, rng, options=options)


@pytest.mark.parametrize("strategy, reduction", [("recompute", "none"), ("forward", "mean")])
@pytest.mark.parametrize("name", ["cross_entropy", "brier", "hinge"])
def test_z_loss_and_soft_cap(name, strategy, reduction, rng):
  problem = _problem(rng, scale=3.0)
  labels = problem[3]
  cap, z_weight = 5.0, 1e-2

  def reference(h, w, b):
    logits = cap * jnp.tanh((h @ w + b[None, :]) / cap)
    return (losses.get(name)(logits, labels)
            + z_weight * jnp.square(jax.nn.logsumexp(logits, axis=-1)))

  _check_against_materialised(name, strategy, reduction, rng, problem=problem,
                              options={"z_loss": z_weight, "soft_cap": cap}, reference=reference)


@pytest.mark.parametrize("strategy, reduction", [("recompute", "none"), ("recompute", "mean"),
                                                 ("forward", "mean"), ("forward", "sum")])
def test_masked_examples_give_zero_and_no_gradient(strategy, reduction, rng):
  hidden, weight, bias, labels = _problem(rng)
  where = jnp.asarray(rng.uniform(size=labels.shape) < 0.6)
  labels = jnp.where(where, labels, -100)  # ignored examples' labels are not checked
  tiles = TILES if strategy == "recompute" else {"block_rows": 8}
  fused = lambda h, w: fused_linear_loss(h, w, labels, bias=bias, where=where, reduction=reduction,
                                         strategy=strategy, **tiles)
  kept = jnp.flatnonzero(where)
  reference = lambda h, w: _materialised("cross_entropy", h[kept], w, bias, labels[kept])
  scalar = lambda f: lambda *a: jnp.sum(f(*a)) if reduction == "none" else f(*a)
  (value, (d_hidden, d_weight)) = jax.jit(lambda *a: (fused(*a), jax.grad(
      scalar(fused), argnums=(0, 1))(*a)))(hidden, weight)
  want = reference(hidden, weight)
  if reduction == "none":
    _close(value[kept], want)
    assert np.all(np.asarray(value)[~np.asarray(where)] == 0)
  else:
    _close(value, jnp.mean(want) if reduction == "mean" else jnp.sum(want))
  assert np.all(np.asarray(d_hidden)[~np.asarray(where)] == 0)
  if reduction != "mean":
    _close(d_weight, jax.grad(lambda w: jnp.sum(reference(hidden, w)))(weight))


@pytest.mark.parametrize("strategy, reduction", [("recompute", "none"), ("recompute", "mean"),
                                                 ("forward", "mean")])
def test_every_example_masked_gives_zero_not_nan(strategy, reduction, rng):
  hidden, weight, bias, labels = _problem(rng)
  where = jnp.zeros(labels.shape, jnp.bool_)
  fused = lambda h, w: jnp.sum(fused_linear_loss(h, w, labels, where=where, reduction=reduction,
                                                 strategy=strategy, block_rows=8))
  value, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(hidden, weight)
  assert float(value) == 0.0
  for grad in grads:
    assert np.all(np.asarray(grad) == 0)


def test_example_weights_give_a_weighted_mean(rng):
  hidden, weight, bias, labels = _problem(rng)
  weights = jnp.asarray(rng.uniform(0, 2, size=labels.shape), jnp.float32)
  reference = lambda h: lossjax.reduction.weighted_mean(
      _materialised("focal", h, weight, bias, labels), weights)
  want, want_grad = jax.value_and_grad(reference)(hidden)
  for strategy in ("forward", "recompute"):
    fused = lambda h: fused_linear_loss(h, weight, labels, loss="focal", bias=bias, weights=weights,
                                        reduction="mean", strategy=strategy, block_rows=8)
    value, grad = jax.jit(jax.value_and_grad(fused))(hidden)
    _close(value, want)
    _close(grad, want_grad)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("strategy", ["recompute", "forward"])
def test_low_precision_inputs_accumulate_in_float32(dtype, strategy, rng):
  hidden, weight, bias, labels = _problem(rng, dtype=dtype)
  tiles = TILES if strategy == "recompute" else {"block_rows": 8}
  fused = lambda h, w, b: fused_linear_loss(h, w, labels, loss="label_smoothing", bias=b,
                                            reduction="mean", strategy=strategy, **tiles)
  value, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(hidden, weight, bias)
  assert value.dtype == jnp.float32
  assert [g.dtype for g in grads] == [dtype] * 3
  # The same inputs in float32: statistics accumulate in float32, so the
  # value agrees to float32 rounding; gradients to the input dtype's.
  wide = [x.astype(jnp.float32) for x in (hidden, weight, bias)]
  want, want_grads = jax.value_and_grad(
      lambda h, w, b: jnp.mean(_materialised("label_smoothing", h, w, b, labels)),
      argnums=(0, 1, 2))(*wide)
  _close(value, want)
  for got, expected in zip(grads, want_grads):
    _close(got, expected, rtol=2e-2)


def test_batch_axes_jit_and_vmap(rng):
  hidden, weight, bias, labels = _problem(rng, rows=24)
  fused = lambda h, y: fused_linear_loss(h, weight, y, loss="brier", bias=bias, block_rows=5,
                                         block_classes=40)
  flat = jax.jit(fused)(hidden, labels)
  np.testing.assert_allclose(jax.jit(fused)(hidden.reshape(4, 6, -1), labels.reshape(4, 6)),
                             flat.reshape(4, 6), rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(fused)(hidden.reshape(4, 6, -1), labels.reshape(4, 6)),
                             flat.reshape(4, 6), rtol=1e-6)
  # vmap of a gradient: one problem's weight gradient per slice.
  per_slice = jax.jit(jax.vmap(jax.grad(lambda w, h, y: fused_linear_loss(
      h, w, y, reduction="sum", block_rows=4)), in_axes=(None, 0, 0)))(
          weight, hidden.reshape(4, 6, -1), labels.reshape(4, 6))
  _close(jnp.sum(per_slice, axis=0), jax.jit(jax.grad(lambda w: fused_linear_loss(
      hidden, w, labels, reduction="sum")))(weight))


def test_bad_labels_raise_eagerly_and_give_nan_under_jit(rng):
  hidden, weight, _, labels = _problem(rng)
  bad = labels.at[3].set(101)
  with pytest.raises(ValueError, match=r"`labels` must be integers in \[0, num_classes=101\)"):
    fused_linear_loss(hidden, weight, bad)
  per_example = jax.jit(lambda h, y: fused_linear_loss(h, weight, y, **TILES))(hidden, bad)
  assert np.isnan(per_example[3]) and np.all(np.isfinite(np.delete(np.asarray(per_example), 3)))
  for strategy in ("forward", "recompute"):
    mean = jax.jit(jax.value_and_grad(lambda h, y: fused_linear_loss(
        h, weight, y, reduction="mean", strategy=strategy, block_rows=8)))
    value, grad = mean(hidden, bad.at[5].set(-1))
    assert np.isnan(value)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[[3, 5]] == 0)


def test_bad_arguments_name_themselves(rng):
  hidden, weight, bias, labels = _problem(rng)
  with pytest.raises(ValueError, match=r"`hidden` \(37, 16\) and `weight` \(15, 101\) do not match"):
    fused_linear_loss(hidden, weight[:15], labels)
  with pytest.raises(ValueError, match="`bias` must have shape"):
    fused_linear_loss(hidden, weight, labels, bias=bias[:5])
  with pytest.raises(ValueError, match="`labels` must have shape"):
    fused_linear_loss(hidden, weight, labels[:, None])
  with pytest.raises(ValueError, match="multiclass loss"):
    fused_linear_loss(hidden, weight, labels, loss="binary_cross_entropy")
  with pytest.raises(ValueError, match="unknown loss"):
    fused_linear_loss(hidden, weight, labels, loss="nope")
  with pytest.raises(ValueError, match="no hyper-parameter"):
    fused_linear_loss(hidden, weight, labels, loss="mse", gamma=2.0)
  with pytest.raises(ValueError, match="scalar `reduction`"):
    fused_linear_loss(hidden, weight, labels, strategy="forward")
  with pytest.raises(ValueError, match="`block_classes` must be all 101"):
    fused_linear_loss(hidden, weight, labels, reduction="mean", strategy="forward",
                      block_classes=50)
  with pytest.raises(ValueError, match="`class_weights` must have shape"):
    fused_linear_loss(hidden, weight, labels, class_weights=jnp.ones(100))
  with pytest.raises(ValueError, match="`soft_cap` must be > 0"):
    fused_linear_loss(hidden, weight, labels, soft_cap=0.0)
  with pytest.raises(ValueError, match="`reduction` must be one of"):
    fused_linear_loss(hidden, weight, labels, reduction="avg")
  with pytest.raises(TypeError, match="`labels` must be an integer array"):
    fused_linear_loss(hidden, weight, labels.astype(jnp.float32))


def test_no_logits_sized_temporary(rng):
  """The compiled value_and_grad's temporaries stay at a tile's size while
  the materialised program's hold the [N, V] logits and their gradient."""
  rows, features, classes = 512, 32, 8192
  hidden = jnp.zeros((rows, features), jnp.float32)
  weight = jnp.zeros((features, classes), jnp.float32)
  labels = jnp.zeros((rows,), jnp.int32)
  logits_bytes = rows * classes * 4

  def temporaries(fn):
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(hidden, weight).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  materialised = temporaries(lambda h, w: jnp.mean(losses.get("cross_entropy")(h @ w, labels)))
  assert materialised >= logits_bytes
  for strategy in ("forward", "recompute"):
    fused = temporaries(lambda h, w: fused_linear_loss(
        h, w, labels, reduction="mean", strategy=strategy, block_rows=64, block_classes=(
            None if strategy == "forward" else 1024)))
    assert fused < logits_bytes / 2, (strategy, fused, logits_bytes)


_SHARDED_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from lossjax.fused import fused_linear_loss
mesh = Mesh(np.asarray(jax.devices()), ("vocab",))
rng = np.random.default_rng(0)
N, D, V = 24, 16, 8 * 13
h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
b = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
y = jnp.asarray(rng.integers(0, V, N), jnp.int32)
per_class = jnp.asarray(rng.uniform(0.5, 2, size=(V,)), jnp.float32)
cases = [("label_smoothing", {"class_weights": per_class}, "none"),
         ("focal", {"alpha": per_class}, "mean"), ("brier", {}, "none"),
         ("mse_rescaled", {}, "mean"), ("hinge", {}, "none"),
         ("cross_entropy", {"z_loss": 1e-2, "soft_cap": 3.0}, "mean")]
errors = {}
for loss, options, reduction in cases:
  kw = dict(loss=loss, reduction=reduction, block_rows=7,
            block_classes=5 if reduction == "none" else None, **options)
  single = lambda h, w, b: fused_linear_loss(h, w, y, bias=b, **kw)
  sharded = jax.shard_map(lambda h, w, b: fused_linear_loss(h, w, y, bias=b, vocab_axis="vocab", **kw),
                          mesh=mesh, in_specs=(P(), P(None, "vocab"), P("vocab")), out_specs=P())
  scalar = lambda f: (lambda *a: jnp.sum(f(*a) * jnp.arange(1, N + 1))) if reduction == "none" else f
  v1, g1 = jax.jit(jax.value_and_grad(scalar(single), argnums=(0, 1, 2)))(h, w, b)
  v2, g2 = jax.jit(jax.value_and_grad(scalar(sharded), argnums=(0, 1, 2)))(h, w, b)
  errors[f"{loss}{sorted(options)}-{reduction}"] = [float(abs(v1 - v2) / abs(v1))] + [
      float(jnp.max(jnp.abs(a - c)) / jnp.max(jnp.abs(a))) for a, c in zip(g1, g2)]
print(json.dumps({"devices": jax.device_count(), "errors": errors}))
"""


@pytest.mark.slow
def test_vocabulary_sharded_over_8_devices_matches_one():
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
  env = dict(os.environ, XLA_FLAGS=flags.strip(),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True, text=True,
                       env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  assert len(result["errors"]) == 6
  for case, errors in result["errors"].items():
    assert max(errors) < 1e-5, (case, errors)


def test_nnx_head_matches_the_layer_and_reaches_its_parameters(rng):
  layer = nnx.Linear(16, 101, rngs=nnx.Rngs(0))
  hidden = jnp.asarray(rng.normal(size=(12, 16)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 101, 12), jnp.int32)
  head = lossjax.fused.nnx_head(layer, loss="focal", gamma=1.0)
  fused = lambda layer: lossjax.fused.nnx_head(layer, loss="focal", gamma=1.0)(
      hidden, labels, reduction="mean")
  reference = lambda layer: jnp.mean(losses.get("focal", gamma=1.0)(layer(hidden), labels))
  _close(head(hidden, labels), losses.get("focal", gamma=1.0)(layer(hidden), labels))
  got, want = nnx.grad(fused)(layer), nnx.grad(reference)(layer)
  _close(got.kernel[...], want.kernel[...])
  _close(got.bias[...], want.bias[...])
  with pytest.raises(TypeError, match="must be an nnx.Linear"):
    lossjax.fused.nnx_head(lambda x: x)


def test_docstring_examples_run():
  import doctest

  from lossjax.fused import _head, _nnx
  for module in (_head, _nnx):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried and not failures, module.__name__


def test_auto_strategy_recomputes_where_row_blocks_would_be_thin():
  from lossjax.fused import _head
  assert lossjax.fused.default_strategy("none", 10) == "recompute"
  assert lossjax.fused.default_strategy("mean", 32768) == "forward"
  assert lossjax.fused.default_strategy("sum", 131072) == "recompute"
  assert _head.TILE_ELEMENTS // 32768 == _head.FORWARD_MIN_ROWS
