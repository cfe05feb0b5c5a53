"""Registry-driven checks of every loss: values, transforms, gradients, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lossjax
from lossjax import _softmax, losses
from tests import reference

MULTICLASS = losses.names("multiclass")
BINARY = losses.names("binary")
ALL = losses.names()
LOW_PRECISION = [jnp.bfloat16, jnp.float16]


def make_inputs(name, rng, batch=16, classes=7, scale=2.0, dtype=np.float32):
  """Logits and integer labels shaped for the registered loss `name`."""
  if losses.spec(name).kind == "binary":
    logits = rng.normal(scale=scale, size=(batch,))
    labels = rng.integers(0, 2, size=(batch,))
  else:
    logits = rng.normal(scale=scale, size=(batch, classes))
    labels = rng.integers(0, classes, size=(batch,))
  return jnp.asarray(logits, dtype), jnp.asarray(labels, jnp.int32)


def test_registry_holds_the_required_losses():
  required = {"cross_entropy", "mse", "brier", "focal", "poly1",
              "label_smoothing", "hinge", "squared_hinge", "mae", "gce"}
  assert required <= set(losses.names())
  for name in losses.names():
    spec = losses.spec(name)
    assert spec.fn.__doc__, f"{name} is undocumented"
    assert spec.formula and spec.reference


def test_unknown_loss_lists_the_valid_names():
  with pytest.raises(ValueError, match="unknown loss 'nope'.*cross_entropy"):
    losses.get("nope")
  with pytest.raises(ValueError, match="no hyper-parameter"):
    losses.get("focal", gama=1.0)
  with pytest.raises(ValueError, match=r"'mse' has no hyper-parameter\(s\) \['class_weights'\]"):
    losses.get("mse", class_weights=jnp.ones(3))
  assert "class_weights" in losses.spec("cross_entropy").keyword_options()


@pytest.mark.parametrize("name", ALL)
def test_matches_float64_reference(name, rng):
  logits, labels = make_inputs(name, rng)
  hyper = losses.spec(name).hyperparameters
  expected = reference.REFERENCES[name](np.asarray(logits, np.float64),
                                        np.asarray(labels), **hyper)
  got = losses.get(name)(logits, labels)
  assert got.shape == labels.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_jit_matches_eager(name, rng):
  logits, labels = make_inputs(name, rng)
  fn = losses.get(name)
  np.testing.assert_allclose(jax.jit(fn)(logits, labels), fn(logits, labels),
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_vmap_of_per_example_matches_batched(name, rng):
  logits, labels = make_inputs(name, rng)
  fn = losses.get(name)
  np.testing.assert_allclose(jax.vmap(fn)(logits, labels), fn(logits, labels),
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_gradients_match_finite_differences(name, rng):
  with jax.enable_x64(True):
    logits, labels = make_inputs(name, rng, batch=4, classes=5, dtype=np.float64)
    fn = losses.get(name)
    order = 2 if losses.spec(name).twice_differentiable else 1
    check_grads(jax.jit(lambda z: jnp.sum(fn(z, labels))), (logits,), order=order,
                modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("name", [n for n in ALL if losses.spec(n).twice_differentiable])
def test_hessian_is_finite_and_symmetric(name, rng):
  logits, labels = make_inputs(name, rng, batch=1, classes=5)
  hessian = jax.jit(jax.hessian(lambda z: jnp.sum(losses.get(name)(z, labels))))(logits)
  flat = np.asarray(hessian).reshape(logits.size, logits.size)
  assert np.all(np.isfinite(flat))
  np.testing.assert_allclose(flat, flat.T, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, *LOW_PRECISION], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", ALL)
def test_extreme_logits_give_finite_loss_and_gradient(name, dtype, rng):
  logits, labels = make_inputs(name, rng, batch=32, classes=10)
  extreme = rng.uniform(-1e4, 1e4, size=logits.shape)
  extreme.flat[::3] = 1e4
  extreme.flat[1::3] = -1e4
  logits = jnp.asarray(extreme, dtype)
  fn = losses.get(name)
  value, grad = jax.value_and_grad(lambda z: jnp.sum(fn(z, labels)))(logits)
  assert np.isfinite(float(value))
  assert grad.dtype == logits.dtype
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))


# The losses whose forward alone takes a row max on XLA:CPU, where a float32 or
# float64 max drops a NaN (`lossjax._softmax.with_nan_of`).
ROW_MAX_FORWARD = {"hinge", "squared_hinge", "perceptron"}


@pytest.mark.parametrize("dtype", [jnp.float32, *LOW_PRECISION], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", ALL)
def test_a_nan_logit_makes_its_example_nan(name, dtype, rng):
  """A NaN logit makes its example's loss and gradient NaN and leaves the
  others finite: at the label's class, at the class beside it (the label's
  own block of the rival max) and far from it, over 1000 classes (the
  library-kernel paths). The loss from value_and_grad or a vjp always; the
  forward alone too, but for a row max's losses in float32 on CPU, where
  only the label's own NaN reaches it (docs/guide.md); and so their mean."""
  classes = 1000
  binary = losses.spec(name).kind == "binary"
  rows = 256  # XLA:CPU takes its library kernels at this size
  logits = rng.normal(scale=2.0, size=(rows, classes))
  labels = rng.integers(0, 2 if binary else classes, size=(rows, classes) if binary else (rows,))
  label = labels[:, 0] if binary else labels
  nan_at = {1: label[1], 2: label[2] ^ 1, 3: (label[3] + classes // 2) % classes,
            4: 0 if binary else (label[4] + 1) % classes}
  for row, column in nan_at.items():
    logits[row, column] = np.nan
  z, y = jnp.asarray(logits, dtype), jnp.asarray(labels, jnp.int32)
  fn = losses.get(name)

  # And a mean over one NaN far from the label: a mean takes an elementwise
  # loss into XLA:CPU's library kernel, where a max or min drops a NaN. One
  # program for the derivatives, one for the forwards.
  one_nan = np.where(np.isnan(logits), 0.0, logits)
  one_nan[3, nan_at[3]] = np.nan
  one_nan = jnp.asarray(one_nan, dtype)
  mean = lambda z: jnp.mean(fn(z, y))

  def derivatives(z, one_nan):
    values, pullback = jax.vjp(lambda z: fn(z, y), z)
    return values, pullback(jnp.ones_like(values))[0], jax.value_and_grad(mean)(one_nan)

  values, grad, (mean_value, mean_grad) = jax.jit(derivatives)(z, one_nan)
  forward, forward_mean = jax.jit(lambda z, one_nan: (fn(z, y), mean(one_nan)))(z, one_nan)
  forward = np.asarray(forward)
  grad = np.asarray(grad, np.float32)
  nan_rows = sorted(nan_at)
  clean = [0, *range(5, rows)]
  if binary:  # one loss per logit
    nan_rows = (np.array(nan_rows), np.array([nan_at[r] for r in nan_rows]))
  assert np.isnan(np.asarray(values)[nan_rows]).all()
  assert np.isfinite(np.asarray(values)[clean]).all()
  assert np.isfinite(grad[clean]).all()
  if binary:
    assert np.isnan(grad[nan_rows]).all()
  else:
    assert all(np.isnan(grad[row]).any() for row in nan_at)
  assert np.isnan(float(mean_value)) and np.isnan(np.asarray(mean_grad, np.float32)).any()
  dropped = (name in ROW_MAX_FORWARD and jnp.dtype(dtype).itemsize >= 4
             and jax.default_backend() == "cpu")
  shown = [1] if dropped else nan_rows
  assert np.isnan(forward[shown]).all()
  assert np.isfinite(forward[clean]).all()
  assert dropped or np.isnan(float(forward_mean))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("name", ALL)
def test_low_precision_inputs_are_computed_in_float32(name, dtype, rng):
  logits, labels = make_inputs(name, rng)
  fn = losses.get(name)
  got = fn(logits.astype(dtype), labels)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, fn(logits, labels), rtol=1e-2, atol=1e-2)
  # Computed from the rounded inputs in float32, not quantised afterwards.
  np.testing.assert_allclose(got, fn(logits.astype(dtype).astype(jnp.float32), labels),
                             rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_masking_equals_slicing(name, rng):
  logits, labels = make_inputs(name, rng)
  keep = jnp.asarray(rng.random(labels.shape) < 0.6)
  fn = losses.get(name)
  masked = fn(logits, labels, where=keep)
  np.testing.assert_allclose(masked[keep], fn(logits[keep], labels[keep]), rtol=1e-6)
  assert np.all(np.asarray(masked)[~np.asarray(keep)] == 0)


@pytest.mark.parametrize("name", MULTICLASS)
def test_masked_examples_may_carry_ignore_index_labels(name, rng):
  logits, labels = make_inputs(name, rng)
  keep = np.ones(labels.shape, bool)
  keep[::4] = False
  ignored = jnp.where(jnp.asarray(keep), labels, -100)
  fn = losses.get(name)
  got = fn(logits, ignored, where=jnp.asarray(keep))
  np.testing.assert_allclose(got, fn(logits, labels, where=jnp.asarray(keep)))
  jitted = jax.jit(fn)(logits, ignored, where=jnp.asarray(keep))
  np.testing.assert_allclose(jitted, got, rtol=1e-6)


@pytest.mark.parametrize("name", MULTICLASS)
def test_class_axis_can_be_moved(name, rng):
  logits, labels = make_inputs(name, rng)
  fn = losses.get(name)
  np.testing.assert_allclose(fn(logits.T, labels, axis=0), fn(logits, labels), rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in MULTICLASS if n not in ("hinge", "squared_hinge", "mse", "mse_rescaled")])
def test_softmax_losses_ignore_a_shift_of_the_logits(name, rng):
  logits, labels = make_inputs(name, rng)
  fn = losses.get(name)
  np.testing.assert_allclose(fn(logits + 100.0, labels), fn(logits, labels), rtol=2e-4, atol=1e-5)


# Identities between losses.

def test_focal_with_gamma_zero_is_cross_entropy(rng):
  logits, labels = make_inputs("focal", rng)
  np.testing.assert_allclose(
      lossjax.softmax_focal_loss(logits, labels, gamma=0.0),
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)


def test_focal_gamma_zero_gradient_is_cross_entropy_gradient_at_certainty():
  logits = jnp.array([[50.0, -50.0, -50.0]])
  labels = jnp.array([0])
  grad = jax.grad(lambda z: lossjax.softmax_focal_loss(z, labels, gamma=0.0).sum())(logits)
  assert np.all(np.isfinite(grad))


def test_poly_with_epsilon_zero_is_cross_entropy(rng):
  logits, labels = make_inputs("poly1", rng)
  np.testing.assert_allclose(
      lossjax.poly_loss_cross_entropy(logits, labels, epsilon=0.0),
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)


def test_label_smoothing_zero_is_cross_entropy(rng):
  logits, labels = make_inputs("cross_entropy", rng)
  np.testing.assert_allclose(
      losses.get("label_smoothing", label_smoothing=0.0)(logits, labels),
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)


def test_rescaled_mse_with_k_and_m_one_is_plain_mse(rng):
  logits, labels = make_inputs("mse", rng)
  plain = jnp.mean(jnp.square(logits - jax.nn.one_hot(labels, logits.shape[-1])), axis=-1)
  np.testing.assert_allclose(
      losses.get("mse_rescaled", k=1.0, m=1.0)(logits, labels), plain, rtol=1e-6)


def test_integer_and_one_hot_labels_agree_with_all_options(rng):
  logits, labels = make_inputs("cross_entropy", rng)
  weights = jnp.asarray(rng.uniform(0.5, 2.0, size=logits.shape[-1]), jnp.float32)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  options = dict(class_weights=weights, label_smoothing=0.2)
  np.testing.assert_allclose(
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels, **options),
      lossjax.softmax_cross_entropy(logits, one_hot, **options), rtol=1e-5)
  np.testing.assert_allclose(
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels, **options),
      reference.cross_entropy(np.asarray(logits), np.asarray(labels),
                              class_weights=np.asarray(weights), label_smoothing=0.2),
      rtol=1e-5)


def test_class_weights_scale_by_the_true_class_weight(rng):
  logits, labels = make_inputs("cross_entropy", rng)
  weights = jnp.asarray(rng.uniform(0.5, 2.0, size=logits.shape[-1]), jnp.float32)
  np.testing.assert_allclose(
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels, class_weights=weights),
      weights[labels] * lossjax.softmax_cross_entropy_with_integer_labels(logits, labels),
      rtol=1e-6)


def test_focal_per_class_alpha_matches_reference(rng):
  logits, labels = make_inputs("focal", rng)
  alpha = rng.uniform(0.1, 0.9, size=logits.shape[-1])
  np.testing.assert_allclose(
      lossjax.softmax_focal_loss(logits, labels, gamma=1.5, alpha=jnp.asarray(alpha, jnp.float32)),
      reference.focal(np.asarray(logits), np.asarray(labels), gamma=1.5, alpha=alpha),
      rtol=1e-5, atol=1e-7)


def test_focal_gradient_is_finite_for_fractional_gamma_at_certainty():
  logits = jnp.array([[80.0, 0.0, 0.0]])
  for gamma in (0.0, 0.5, 2.0):
    grad = jax.grad(lambda z: lossjax.softmax_focal_loss(z, jnp.array([0]), gamma=gamma).sum())(logits)
    assert np.all(np.isfinite(grad)), gamma


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_sigmoid_focal_derivatives_to_third_order_at_and_around_zero(alpha):
  """Hard labels: the first three derivatives in the logit, and the Hessian in
  (logit, gamma) with gamma traced, against autodiff of the textbook formula
  in float64. At z = 0 exactly (a zero-initialised head) the loss's own
  derivative formula has kinks that cancel in value only; its second
  derivative was 0.08 where the true one is 0.40 (gamma = 2, y = 1)."""
  def textbook(z, y, gamma):
    p_t = y * jax.nn.sigmoid(z) + (1 - y) * jax.nn.sigmoid(-z)
    loss = -(1 - p_t) ** gamma * jnp.log(p_t)
    return loss if alpha is None else (alpha * y + (1 - alpha) * (1 - y)) * loss
  with jax.enable_x64(True):
    # Every (z, y) of z in {0, -1e-3, 2} and y in {0, 1}, as one vmapped call.
    z, y = jnp.array([0.0, -1e-3, 2.0] * 2), jnp.array([0] * 3 + [1] * 3)
    for gamma in (2.0, 1.5):
      ours = lambda v, y: lossjax.sigmoid_focal_loss(v, y, gamma=gamma, alpha=alpha)
      theirs = lambda v, y: textbook(v, y.astype(v.dtype), gamma)
      for order in range(4):  # the value, then each derivative in turn
        np.testing.assert_allclose(jax.jit(jax.vmap(ours))(z, y), jax.jit(jax.vmap(theirs))(z, y),
                                   rtol=1e-9, atol=1e-12, err_msg=f"gamma {gamma}, order {order}")
        ours, theirs = jax.grad(ours), jax.grad(theirs)
      both = lambda f: jax.hessian(f, argnums=(0, 1))(jnp.float64(0.0), jnp.float64(gamma))
      got = both(jax.jit(lambda v, g: lossjax.sigmoid_focal_loss(v, jnp.asarray(1), gamma=g,
                                                                 alpha=alpha)))
      np.testing.assert_allclose(np.asarray(got), np.asarray(both(lambda v, g: textbook(v, 1, g))),
                                 rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.0, 2.5])
def test_sigmoid_focal_float32_gradient_matches_float64_over_wide_logits(gamma):
  """Hard labels, float32: the gradient in the logits (a whole gamma's
  modulating factor as products of sigmoid(-w), 2.5's as an exponential; the
  cross-entropy's log1p from a log, `_sigmoid.log1p_by_log`) against autodiff
  of the textbook formula in float64, to float32 rounding over logits where
  it is 1 to 1e-26 in size. The exponential exp(-gamma softplus(w)) is off by
  its argument's rounding, up to ~75 ulp here (3.1e-6 relative at gamma 2.5);
  the products of a whole gamma are within a few ulp."""
  z = np.concatenate([np.linspace(-30.0, 30.0, 6001), [0.0, 1e-6, -1e-6, 1e-3, -1e-3]])
  logits = jnp.asarray(np.tile(z, 2), jnp.float32)
  labels = jnp.asarray(np.repeat([0, 1], len(z)), jnp.int32)
  ours = jax.jit(jax.grad(lambda v: jnp.sum(lossjax.sigmoid_focal_loss(
      v, labels, gamma=gamma, alpha=0.25))))(logits)
  with jax.enable_x64(True):
    def textbook(v):
      y = labels.astype(jnp.float64)
      w = (2.0 * y - 1.0) * v
      loss = -jax.nn.sigmoid(-w) ** gamma * jax.nn.log_sigmoid(w)
      return jnp.sum((0.25 * y + 0.75 * (1.0 - y)) * loss)
    theirs = np.asarray(jax.grad(textbook)(jnp.asarray(logits, jnp.float64)))
  rtol = 2e-6 if float(gamma).is_integer() else 1e-5
  np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=rtol, atol=1e-37)


def test_log1p_by_log_is_within_two_ulp_where_a_literal_one_is_not():
  """log1p(x) for x in [0, 1] from a log: within 2 ulp of float64's in float32,
  given two ones XLA cannot fold; with literal ones XLA rewrites the rounding
  correction to 0 and what is left is log(1 + x), millions of ulp off for
  small x."""
  from lossjax import _sigmoid
  x = np.exp(-np.linspace(0.0, 80.0, 200001)).astype(np.float32)
  exact = np.log1p(x.astype(np.float64))
  ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)

  def folded_ones(v):
    return _sigmoid.log1p_by_log(v, 1.0, 1.0)

  def barrier_ones(v):
    v, (one, one_again) = jax.lax.optimization_barrier((v, (jnp.float32(1), jnp.float32(1))))
    return _sigmoid.log1p_by_log(v, one, one_again)

  error = lambda f: np.max(np.abs(np.asarray(jax.jit(f)(x), np.float64) - exact) / ulp)
  assert error(barrier_ones) <= 2.0
  assert error(folded_ones) > 1e6


def test_pos_weight_matches_reference(rng):
  logits, labels = make_inputs("binary_cross_entropy", rng)
  np.testing.assert_allclose(
      lossjax.sigmoid_binary_cross_entropy(logits, labels, pos_weight=3.0),
      reference.binary_cross_entropy(np.asarray(logits), np.asarray(labels), pos_weight=3.0),
      rtol=1e-5, atol=1e-7)


def test_class_balanced_weights_match_the_formula():
  counts = np.array([500, 100, 20, 5])
  beta = 0.99
  raw = (1 - beta) / (1 - beta ** counts)
  np.testing.assert_allclose(lossjax.class_balanced_weights(counts, beta=beta),
                             raw * len(counts) / raw.sum(), rtol=1e-5)
  np.testing.assert_allclose(lossjax.class_balanced_weights(counts, beta=0.0), np.ones(4))
  near_one = lossjax.class_balanced_weights(counts, beta=0.999999)
  inverse_frequency = (1 / counts) * 4 / (1 / counts).sum()
  np.testing.assert_allclose(near_one, inverse_frequency, rtol=1e-3)


@pytest.mark.parametrize("counts, beta, message", [
    ([10, 0, 3], 0.9, "`counts` must all be > 0"),
    ([10, 3], 1.0, "`beta` must be in"),
    ([[10, 3]], 0.9, "1-D"),
])
def test_class_balanced_weights_reject_bad_input(counts, beta, message):
  with pytest.raises(ValueError, match=message):
    lossjax.class_balanced_weights(counts, beta=beta)


@pytest.mark.parametrize("offset", [0.0, 60.0])
def test_brier_derivatives_match_the_elementwise_form(offset):
  """Brier's own derivative (one tangent expression, sums relative to the row
  max) against autodiff of softmax-minus-one-hot squared, to second order, in
  float64 on confident and unsure rows, logits near 0 and near `offset`."""
  elementwise = lambda z, y: jnp.sum(
      jnp.square(jax.nn.softmax(z, axis=-1) - jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)), -1)
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    labels = jnp.array([0, 3, 5, 5])
    logits = jnp.asarray(rng.normal(size=(4, 6)) + offset)
    logits = logits.at[jnp.arange(4), labels].add(jnp.array([0.0, 4.0, 12.0, -3.0]))
    ours = lambda z: jnp.sum(losses.brier_loss(z, labels) * jnp.arange(1.0, 5.0))
    theirs = lambda z: jnp.sum(elementwise(z, labels) * jnp.arange(1.0, 5.0))
    np.testing.assert_allclose(jax.jit(ours)(logits), jax.jit(theirs)(logits), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.grad(ours))(logits), jax.jit(jax.grad(theirs))(logits),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(jax.jit(jax.hessian(ours))(logits),
                               jax.jit(jax.hessian(theirs))(logits), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("spread", [10.0, 50.0, 100.0])  # 50, 100: past exp(2 (z - z_y))'s range
def test_brier_shifted_by_the_true_logit_or_the_max_matches_float64(spread, monkeypatch):
  """Brier's sums are taken relative to the true class's logit; where a row's
  squares overflow that way (a logit more than ~44 above it, float32) the
  batch takes the row max: both give the float64 numbers and gradients."""
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)  # small logits take the shift too
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  logits[2, 4] += spread  # row 2's label (0) lies `spread` below its max
  labels = jnp.array([0, 1, 0, 6, 3])
  elementwise = lambda z: jnp.sum(
      jnp.square(jax.nn.softmax(z, axis=-1) - jax.nn.one_hot(labels, 7, dtype=z.dtype)), -1)
  # A function of its own to jit: its trace depends on the patched constant.
  got = jax.jit(lambda z: losses.brier_loss(z, labels))(jnp.asarray(logits))
  grad = jax.jit(jax.grad(lambda z: losses.brier_loss(z, labels).sum()))(jnp.asarray(logits))
  with jax.enable_x64(True):
    wide = jnp.asarray(logits, jnp.float64)
    np.testing.assert_allclose(got, elementwise(wide), rtol=1e-6, atol=1e-7)
    # The max's entry, 2 p (p - (sum p^2 - p_y)) with p and sum p^2 near 1,
    # cancels: a few float32 ulps of 1 (the row max as shift: 1.0e-7, the
    # true logit 10 below it: 2.2e-7).
    np.testing.assert_allclose(grad, jax.grad(lambda z: elementwise(z).sum())(wide),
                               rtol=1e-5, atol=4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("shape", [(300, 1000), (263, 1000)])
def test_brier_sums_on_chunks_of_rows_match_float64(shape, monkeypatch):
  """float32 Brier on CPU takes both of its sums from one exponential per
  logit, on chunks of rows: 300 rows as two chunks of 150, 263 (a prime) as
  a chunk of 262 and the one row left. Each row's loss, and the gradient,
  against the float64 formula."""
  monkeypatch.setattr(_softmax, "SHIFT_FROM_LOGITS", 0)  # the true logit's shift
  assert _softmax.rows_per_chunk(*shape) == {(300, 1000): 150, (263, 1000): 262}[shape]
  rng = np.random.default_rng(5)
  logits = (rng.normal(size=shape) * 3).astype(np.float32)
  labels = rng.integers(0, shape[1], size=shape[0])
  got = jax.jit(lambda z: losses.brier_loss(z, labels))(logits)
  np.testing.assert_allclose(got, reference.brier(logits.astype(np.float64), labels),
                             rtol=2e-6, atol=1e-7)
  grad = jax.jit(jax.grad(lambda z: losses.brier_loss(z, labels).sum()))(logits)
  # d/dz_c sum_k (p_k - [k = y])^2 = 2 p_c (p_c - [c = y] - (sum_k p_k^2 - p_y)).
  p = np.exp(reference._log_softmax(logits.astype(np.float64)))
  hot = reference._one_hot(labels, shape[1])
  rivals = (p * p).sum(-1, keepdims=True) - (p * hot).sum(-1, keepdims=True)
  np.testing.assert_allclose(grad, 2 * p * (p - hot - rivals), rtol=1e-4,
                             atol=4 * np.finfo(np.float32).eps)
