import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossjax import models


@pytest.mark.parametrize("config, shape", [
    (models.ModelConfig("mlp", depth=2, width=32, activation="tanh"), (8, 8, 1)),
    (models.ModelConfig("mlp", depth=4, width=16, activation="sigmoid"), (2,)),
    (models.ModelConfig("mlp", hidden=(64, 32), activation="tanh"), (8, 8, 1)),
    (models.ModelConfig("cnn", width=32), (8, 8, 1)),
    (models.ModelConfig("cnn", width=32), (28, 28, 1)),
])
def test_vmapped_init_builds_distinct_models_with_the_right_outputs(config, shape):
  fns = models.build(config, shape, 10)
  params = jax.vmap(fns.init)(jax.random.split(jax.random.key(0), 3))
  logits = jax.vmap(fns.apply, in_axes=(0, None))(params, jnp.ones((5,) + shape))
  assert logits.shape == (3, 5, 10)
  assert not np.allclose(logits[0], logits[1])
  single = fns.apply(jax.tree.map(lambda leaf: leaf[1], params), jnp.ones((5,) + shape))
  np.testing.assert_allclose(single, logits[1], rtol=1e-5, atol=1e-6)


def test_init_scale_scales_the_weights():
  small = models.build(models.ModelConfig(init_scale=0.1), (4,), 3).init(jax.random.key(1))
  large = models.build(models.ModelConfig(init_scale=10.0), (4,), 3).init(jax.random.key(1))
  ratio = np.abs(large["out"]["kernel"][...]).sum() / np.abs(small["out"]["kernel"][...]).sum()
  assert ratio == pytest.approx(100.0, rel=1e-4)


def test_unknown_model_and_activation_are_named():
  with pytest.raises(ValueError, match="unknown model 'rnn'; available: mlp, cnn"):
    models.build(models.ModelConfig("rnn"), (4,), 3)
  with pytest.raises(ValueError, match="unknown activation 'gelu'"):
    models.build(models.ModelConfig(activation="gelu"), (4,), 3)


def test_explicit_hidden_widths_and_flop_count():
  fns = models.build(models.ModelConfig(hidden=(64, 32)), (8, 8, 1), 10)
  params = fns.init(jax.random.key(0))
  assert [params["hidden"][i]["kernel"][...].shape for i in range(2)] == [(64, 64), (64, 32)]
  assert fns.flops_per_example == 2 * (64 * 64 + 64 * 32 + 32 * 10)
