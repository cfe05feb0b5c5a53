"""Bad labels are never silently wrong; shape/dtype slips fail at trace time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import lossjax
from lossjax import losses

MULTICLASS = losses.names("multiclass")


@pytest.fixture
def logits(rng):
  return jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)


@pytest.mark.parametrize("name", MULTICLASS)
@pytest.mark.parametrize("bad", [-1, 5, 1000])
def test_out_of_range_label_raises_outside_a_trace(name, bad, logits):
  labels = jnp.array([0, 1, bad, 2, 3, 4])
  with pytest.raises(ValueError, match=rf"`labels` must be integers in \[0, num_classes=5\).*\[{bad}\]"):
    losses.get(name)(logits, labels)


@pytest.mark.parametrize("name", MULTICLASS)
def test_out_of_range_label_is_nan_under_jit_and_vmap(name, logits):
  labels = jnp.array([0, -1, 2, 5, 3, 4])
  fn = losses.get(name)
  for transformed in (jax.jit(fn), jax.vmap(fn)):
    got = np.asarray(transformed(logits, labels))
    assert np.isnan(got[np.array([1, 3])]).all()
    good = np.array([0, 2, 4, 5])
    np.testing.assert_allclose(got[good], fn(logits[good], labels[good]), rtol=1e-6)


@pytest.mark.parametrize("name", MULTICLASS)
def test_gradient_of_valid_examples_survives_a_bad_label_under_jit(name, logits):
  labels = jnp.array([0, -1, 2, 1, 3, 4])

  def masked_loss(z, y):
    return lossjax.reduction.masked_mean(losses.get(name)(z, y), y >= 0)

  grad = jax.jit(jax.grad(masked_loss))(logits, labels)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[1], 0.0)


def test_checked_wrapper_raises_under_jit(logits):
  ce = lossjax.checked(lossjax.softmax_cross_entropy_with_integer_labels)
  np.testing.assert_allclose(ce(logits, jnp.arange(6) % 5),
                             lossjax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(6) % 5))
  with pytest.raises(checkify.JaxRuntimeError, match=r"num_classes=5.*offending value: 7"):
    ce(logits, jnp.array([0, 1, 7, 2, 3, 4]))
  # The ignore-index use case: masked labels are not checked.
  keep = jnp.array([True, True, False, True, True, True])
  ce(logits, jnp.array([0, 1, -100, 2, 3, 4]), where=keep)


def test_checked_registry_loss_with_hyperparameters(logits):
  focal = lossjax.checked(losses.get("focal", gamma=1.0))
  with pytest.raises(checkify.JaxRuntimeError, match="offending value: -3"):
    focal(logits, jnp.array([0, 1, -3, 2, 3, 4]))


def test_plain_jit_records_no_effect(logits):
  # An effect would push every jitted call onto the slow dispatch path.
  jaxpr = jax.make_jaxpr(lossjax.softmax_cross_entropy_with_integer_labels)(
      logits, jnp.arange(6) % 5)
  assert not jaxpr.effects


def test_label_checks_inside_a_user_step(logits):
  def step(z, y):
    return lossjax.reduction.mean(losses.get("brier")(z, y))

  with lossjax.label_checks():
    checked_step = jax.jit(checkify.checkify(step))
    error, _ = checked_step(logits, jnp.array([0, 1, 9, 2, 3, 4]))
  with pytest.raises(checkify.JaxRuntimeError, match="offending value: 9"):
    error.throw()


@pytest.mark.parametrize("name", MULTICLASS)
def test_label_shape_mismatch_names_the_argument(name, logits):
  with pytest.raises(ValueError, match=r"`labels` must have shape \(6,\).*got \(6, 1\)"):
    jax.jit(losses.get(name))(logits, jnp.zeros((6, 1), jnp.int32))


@pytest.mark.parametrize("name", MULTICLASS)
def test_float_labels_for_integer_losses_are_a_type_error(name, logits):
  with pytest.raises(TypeError, match="`labels` must be an integer array"):
    losses.get(name)(logits, jnp.zeros((6,), jnp.float32))


@pytest.mark.parametrize("name", losses.names())
def test_integer_logits_are_a_type_error(name):
  spec = losses.spec(name)
  shape = (6,) if spec.kind == "binary" else (6, 5)
  with pytest.raises(TypeError, match="`logits` must be a floating-point array"):
    spec.fn(jnp.zeros(shape, jnp.int32), jnp.zeros((6,), jnp.int32))


PER_LOGIT_MASKS = {"cross_entropy", "label_smoothing", "poly1"}


@pytest.mark.parametrize("name", losses.names())
def test_where_must_be_one_boolean_per_example(name, logits):
  spec = losses.spec(name)
  z = logits[:, 0] if spec.kind == "binary" else logits
  labels = jnp.zeros((6,), jnp.int32)
  with pytest.raises(ValueError, match=r"`where` must have shape \(6,\)"):
    losses.get(name)(z, labels, where=jnp.ones((5,), bool))
  if name in PER_LOGIT_MASKS:  # a mask of the rank of the logits masks logits (optax's)
    with pytest.raises(ValueError, match=r"`where` of shape \(6, 4\) must broadcast"):
      losses.get(name)(z, labels, where=jnp.ones((6, 4), bool))
  else:
    with pytest.raises(ValueError, match=r"`where` must have shape \(6,\)"):
      losses.get(name)(z, labels, where=jnp.ones((6, 1), bool))
  with pytest.raises(TypeError, match="`where` must be a boolean"):
    losses.get(name)(z, labels, where=jnp.ones((6,), jnp.int32))


def test_probability_labels_must_match_logits_shape(logits):
  with pytest.raises(ValueError, match=r"`labels` must have shape \(6, 5\)"):
    lossjax.softmax_cross_entropy(logits, jnp.ones((5,), jnp.float32) / 5)


def test_class_weights_must_have_one_entry_per_class(logits):
  with pytest.raises(ValueError, match=r"`class_weights` must have shape \(5,\)"):
    lossjax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(6, jnp.int32),
                                                      class_weights=jnp.ones(4))


@pytest.mark.parametrize("call, message", [
    (lambda z, y: lossjax.softmax_cross_entropy_with_integer_labels(z, y, label_smoothing=1.5), "`label_smoothing` must be in"),
    (lambda z, y: lossjax.softmax_focal_loss(z, y, gamma=-1.0), "`gamma` must be >= 0"),
    (lambda z, y: lossjax.generalized_cross_entropy(z, y, q=0.0), r"`q` must be in \(0"),
    (lambda z, y: lossjax.softmax_cross_entropy_with_integer_labels(z, y, axis=2), "`axis`=2 is out of range"),
    (lambda z, y: lossjax.sigmoid_binary_cross_entropy(z[:, 0], jnp.full((6,), 2.0)), "`labels` must be in"),
    (lambda z, y: lossjax.hinge_loss(z[:, 0], jnp.zeros((6,))), "`targets` must be -1 or"),
    (lambda z, y: lossjax.squared_error(z, z[:, :1]), r"`targets` must have shape \(6, 5\)"),
])
def test_bad_hyperparameters_are_named(call, message, logits):
  with pytest.raises(ValueError, match=message):
    call(logits, jnp.zeros((6,), jnp.int32))


@pytest.mark.parametrize("shape", [(), (3, 0)])
def test_sparsemax_without_classes_names_the_argument(shape):
  with pytest.raises(ValueError, match="`logits` need a last axis of at least one class"):
    lossjax.sparsemax(jnp.zeros(shape))
