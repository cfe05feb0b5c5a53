import re

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


@pytest.mark.parametrize("init, scale, low, high", [
    ("lecun", 1.0, 0.9 / 20, 1.1 / 20),  # std 1/sqrt(fan_in), fan_in 400
    ("classical", 1.0, 0.9 / (20 * 3**0.5), 1.1 / (20 * 3**0.5)),  # U[-1/20, 1/20]
    ("normal", 4.0, 3.6, 4.4),  # an absolute std, whatever the fan-in
])
def test_initialisations_have_their_stated_spread(init, scale, low, high):
  params = models.build(models.ModelConfig(depth=0, init=init, init_scale=scale), (400,),
                        300).init(jax.random.key(2))
  kernel = np.asarray(params["out"]["kernel"][...])
  assert low < kernel.std() < high
  if init == "classical":
    assert np.abs(kernel).max() <= 1 / 20


def test_unknown_model_and_activation_are_named():
  with pytest.raises(ValueError, match="unknown init 'he'; available: lecun, classical, normal"):
    models.build(models.ModelConfig(init="he"), (4,), 3)
  with pytest.raises(ValueError, match="`init_scale` must be > 0"):
    models.build(models.ModelConfig(init_scale=0.0), (4,), 3)
  with pytest.raises(ValueError, match="unknown model 'rnn'; available: mlp, cnn"):
    models.build(models.ModelConfig("rnn"), (4,), 3)
  with pytest.raises(ValueError, match="unknown activation 'gelu'"):
    models.build(models.ModelConfig(activation="gelu"), (4,), 3)


def test_explicit_hidden_widths_and_flop_count():
  fns = models.build(models.ModelConfig(hidden=(64, 32)), (8, 8, 1), 10)
  params = fns.init(jax.random.key(0))
  assert [params["hidden"][i]["kernel"][...].shape for i in range(2)] == [(64, 64), (64, 32)]
  assert fns.flops_per_example == 2 * (64 * 64 + 64 * 32 + 32 * 10)
  assert fns.train_flops_per_example == 3 * fns.flops_per_example - 2 * 64 * 64


@pytest.mark.parametrize("hidden, input_shape", [((256,), (28, 28, 1)), ((32,), (8, 8, 1)),
                                                 ((64, 64), (8, 8, 1))])
def test_mlp_training_flop_count_matches_xla_cost_analysis(hidden, input_shape):
  # XLA's own count of a gradient step also has the elementwise work and the
  # optimizer: a few percent above the matrix products. (The CNN's count is
  # nominal, padded taps included, where XLA counts only the real ones.)
  fns = models.build(models.ModelConfig(hidden=hidden), input_shape, 10)
  params = fns.init(jax.random.key(0))
  x = jnp.zeros((32, *input_shape), jnp.float32)
  loss = lambda p: jnp.sum(fns.apply(p, x) ** 2)
  step = lambda p: jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p))
  analysis = jax.jit(step).lower(params).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  ratio = analysis["flops"] / 32 / fns.train_flops_per_example
  assert 1.0 <= ratio < 1.1, ratio


def _correlate_same(x, kernel):
  """float64 reference: out[b,h,w,o] = sum x[b,h+i-pi,w+j-pj,c] k[i,j,c,o]."""
  kh, kw = kernel.shape[:2]
  top, left = (kh - 1) // 2, (kw - 1) // 2
  padded = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[3],))
  for i in range(kh):
    for j in range(kw):
      window = padded[:, i:i + x.shape[1], j:j + x.shape[2], :]
      out += np.einsum("bhwc,co->bhwo", window, kernel[i, j])
  return out


@pytest.mark.parametrize("platform", ["cpu", "default", None])
@pytest.mark.parametrize("kernel_shape", [(5, 5, 3, 4), (4, 2, 2, 3), (1, 1, 2, 2)])
def test_conv2d_same_matches_a_reference_and_nnx_conv(platform, kernel_shape, rng):
  from flax import nnx
  x = rng.normal(size=(2, 7, 6, kernel_shape[2])).astype(np.float32)
  layer = nnx.Conv(kernel_shape[2], kernel_shape[3], kernel_shape[:2], padding="SAME",
                   rngs=nnx.Rngs(0))
  kernel, bias = layer.kernel[...], layer.bias[...]
  got = jax.jit(lambda x, k, b: models.conv2d_same(x, k, b, platform=platform))(x, kernel, bias)
  np.testing.assert_allclose(got, _correlate_same(x.astype(np.float64), np.asarray(kernel,
                             np.float64)) + np.asarray(bias), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, layer(x), rtol=1e-5, atol=1e-5)


def test_conv2d_same_gradients_agree_across_formulations(rng):
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 2)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 5, 2, 3)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
  grads = {p: jax.grad(lambda *a: jnp.sum(jnp.sin(models.conv2d_same(*a, platform=p))),
                       argnums=(0, 1, 2))(x, kernel, bias) for p in ("cpu", "default")}
  for got, want in zip(grads["cpu"], grads["default"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="`platform` must be"):
    models.conv2d_same(x, kernel, bias, platform="tpu")


def test_cnn_gradient_on_cpu_uses_only_the_fast_convolution_layout():
  """Inside a scanned training step of the 28x28 LeNet, every convolution
  XLA:CPU runs is in the canonical NHWC x HWIO layout (the others are slow
  there, see conv2d_same). (On 8x8 inputs XLA swaps the operands of the
  4x4 convolutions; that net is fast either way.)"""
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU lowering")
  fns = models.build(models.ModelConfig("cnn", width=8), (28, 28, 1), 3)
  params = fns.init(jax.random.key(0))
  grad = jax.grad(lambda p, x: jnp.sum(fns.apply(p, x)))

  def steps(params, x):
    update = lambda p, _: (jax.tree.map(lambda a, g: a - 0.1 * g, p, grad(p, x)), None)
    return jax.lax.scan(update, params, None, length=3)[0]

  text = jax.jit(steps).lower(params, jnp.ones((4, 28, 28, 1))).compile().as_text()
  layouts = set(re.findall(r"dim_labels=([^,\s]+)", text))
  assert layouts == {"b01f_01io->b01f"}


def test_cnn_on_cpu_is_reverse_mode_only():
  x = jnp.ones((1, 6, 6, 1))
  kernel, bias = jnp.ones((3, 3, 1, 2)), jnp.zeros(2)
  conv = lambda k: models.conv2d_same(x, k, bias, platform="cpu")
  assert jax.grad(lambda k: jnp.sum(conv(k)))(kernel).shape == kernel.shape
  with pytest.raises(TypeError, match="jvp"):
    jax.jvp(conv, (kernel,), (kernel,))
  default = lambda k: models.conv2d_same(x, k, bias, platform="default")
  assert jax.jvp(default, (kernel,), (kernel,))[1].shape == (1, 6, 6, 2)
