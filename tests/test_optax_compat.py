"""Same names, same positional arguments, same numbers as optax 0.2.x."""

import ast
import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lossjax
from lossjax import losses


@pytest.fixture
def batch(rng):
  logits = jnp.asarray(rng.normal(scale=3.0, size=(32, 11)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 11, size=(32,)), jnp.int32)
  probabilities = jax.nn.softmax(jnp.asarray(rng.normal(size=(32, 11)), jnp.float32))
  binary_logits = jnp.asarray(rng.normal(scale=3.0, size=(32,)), jnp.float32)
  binary_labels = jnp.asarray(rng.integers(0, 2, size=(32,)), jnp.float32)
  return logits, labels, probabilities, binary_logits, binary_labels


def test_every_registered_optax_equivalent_gives_the_same_numbers(batch):
  logits, labels, _, binary_logits, binary_labels = batch
  for name in losses.names():
    spec = losses.spec(name)
    if spec.optax_equivalent is None:
      continue
    optax_fn = getattr(optax.losses, spec.optax_equivalent)
    if spec.kind == "binary":
      args = (binary_logits, binary_labels)
    elif spec.optax_equivalent == "poly_loss_cross_entropy":
      args = (logits, jax.nn.one_hot(labels, logits.shape[-1]))
    else:
      args = (logits, labels)
    with jax.numpy_dtype_promotion("standard"):  # optax's sparsemax mixes int and float
      expected = optax_fn(*args, **spec.hyperparameters)
    np.testing.assert_allclose(spec.fn(*args, **spec.hyperparameters), expected,
                               rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fn_name", [
    "softmax_cross_entropy", "poly_loss_cross_entropy",
])
def test_probability_label_losses_match_optax(fn_name, batch):
  logits, _, probabilities, _, _ = batch
  np.testing.assert_allclose(getattr(lossjax, fn_name)(logits, probabilities),
                             getattr(optax.losses, fn_name)(logits, probabilities),
                             rtol=1e-5, atol=1e-6)


def test_integer_label_cross_entropy_matches_optax_with_where(batch):
  logits, labels, _, _, _ = batch
  keep = jnp.arange(32) % 3 != 0
  np.testing.assert_allclose(
      lossjax.softmax_cross_entropy_with_integer_labels(logits, labels, -1, keep),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels, -1, keep),
      rtol=1e-6)


def test_elementwise_losses_match_optax(batch, rng):
  _, _, _, binary_logits, binary_labels = batch
  signs = 2.0 * binary_labels - 1.0
  for gamma, alpha in [(2.0, 0.25), (0.5, None), (0.0, 0.7)]:
    np.testing.assert_allclose(
        lossjax.sigmoid_focal_loss(binary_logits, binary_labels, alpha=alpha, gamma=gamma),
        optax.sigmoid_focal_loss(binary_logits, binary_labels, alpha=alpha, gamma=gamma),
        rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(lossjax.hinge_loss(binary_logits, signs),
                             optax.hinge_loss(binary_logits, signs))
  targets = jnp.asarray(rng.normal(size=binary_logits.shape), jnp.float32)
  np.testing.assert_allclose(lossjax.squared_error(binary_logits, targets),
                             optax.squared_error(binary_logits, targets))
  np.testing.assert_allclose(lossjax.squared_error(binary_logits),
                             optax.squared_error(binary_logits))


def test_bfloat16_is_not_quantised_like_optax(batch):
  logits, labels, _, _, _ = batch
  ours = lossjax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.bfloat16), labels)
  theirs = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.bfloat16), labels)
  assert ours.dtype == jnp.float32 and theirs.dtype == jnp.bfloat16
  exact = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.bfloat16).astype(jnp.float32), labels)
  ours_error = np.max(np.abs(np.asarray(ours) - np.asarray(exact)))
  optax_error = np.max(np.abs(np.asarray(theirs, np.float32) - np.asarray(exact)))
  assert ours_error < 1e-5 < optax_error


OPTAX_IMPORT = "from optax.losses import _classification\n"
OPTAX_SUITE = Path(optax.__file__).parent / "losses" / "_classification_test.py"
# Its test classes, read without importing it: one test each, so that xdist spreads them.
OPTAX_CASES = [node.name for node in ast.parse(OPTAX_SUITE.read_text()).body
               if isinstance(node, ast.ClassDef) and node.name.endswith("Test")]


@pytest.fixture(scope="module")
def optax_suite_on_lossjax(tmp_path_factory):
  """The installed optax's own `_classification_test.py`, copied with its one
  import of `_classification` pointed at `lossjax.losses`."""
  import importlib.util
  source = OPTAX_SUITE.read_text()
  assert source.count(OPTAX_IMPORT) == 1, "optax's test no longer imports _classification this way"
  path = tmp_path_factory.mktemp("optax") / "optax_classification_test_on_lossjax.py"
  path.write_text(source.replace(OPTAX_IMPORT, "from lossjax import losses as _classification\n"))
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module._classification is losses
  return module


def test_the_classes_run_below_hold_every_test_of_optax_suite(optax_suite_on_lossjax):
  import unittest
  loader = unittest.defaultTestLoader
  whole = loader.loadTestsFromModule(optax_suite_on_lossjax).countTestCases()
  assert whole == sum(loader.loadTestsFromTestCase(getattr(optax_suite_on_lossjax, case))
                      .countTestCases() for case in OPTAX_CASES) > 100


@pytest.mark.parametrize("case", OPTAX_CASES)
def test_optax_classification_suite_passes_unchanged_against_lossjax(case, optax_suite_on_lossjax):
  """Every test of the class runs and passes, none skipped or expected to fail."""
  import unittest
  suite = unittest.defaultTestLoader.loadTestsFromTestCase(getattr(optax_suite_on_lossjax, case))
  # optax's tests run under JAX's default promotion rules, not this suite's strict ones.
  with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
  problems = [(str(test), trace[-1500:]) for test, trace in result.failures + result.errors]
  assert not problems, "\n\n".join(f"{test}\n{trace}" for test, trace in problems)
  assert not result.skipped and not result.expectedFailures and not result.unexpectedSuccesses
  assert result.testsRun == suite.countTestCases() > 0
