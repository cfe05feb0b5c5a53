"""Flax NNX models built from a key, so N models come from vmapping N keys.

``build(...)`` returns a ``ModelFns``: ``init(key) -> params`` (a pure pytree,
vmappable over keys) and ``apply(params, x) -> logits``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def hidden_widths(hidden: tuple[int, ...], depth: int, width: int) -> list[int]:
  """The MLP's hidden layer widths: `hidden` when given, else `depth` x `width`."""
  return list(hidden) or [width] * depth


INITS = ("lecun", "classical", "normal")


def _kernel_init(init_scale: float, init: str = "lecun"):
  """The kernels' initialiser: `init_scale` times LeCun's normal (std
  1/sqrt(fan_in); LeCun et al. 1998), times the classical uniform
  U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (Glorot & Bengio 2010's "standard"
  initialisation, std 1/sqrt(3 fan_in)), or, for ``"normal"``, a normal of
  absolute std `init_scale` whatever the fan-in."""
  if init == "lecun":
    base = nnx.initializers.lecun_normal()
  elif init == "classical":
    base = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  elif init == "normal":
    base = nnx.initializers.normal(1.0)
  else:
    raise ValueError(f"unknown init {init!r}; available: {', '.join(INITS)}.")
  return lambda key, shape, dtype=jnp.float32: init_scale * base(key, shape, dtype)


class MLP(nnx.Module):
  """Fully connected net: `depth` hidden layers of `width` units, C logits."""

  def __init__(self, in_features: int, num_classes: int, *, depth: int = 1,
               width: int = 256, hidden: tuple[int, ...] = (), activation: str = "relu",
               init_scale: float = 1.0, init: str = "lecun", rngs: nnx.Rngs):
    init = _kernel_init(init_scale, init)
    sizes = [in_features] + hidden_widths(hidden, depth, width)
    self.hidden = nnx.List([nnx.Linear(a, b, kernel_init=init, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.out = nnx.Linear(sizes[-1], num_classes, kernel_init=init, rngs=rngs)
    self.activation = activation

  def features(self, x: jax.Array) -> jax.Array:
    """The last hidden layer's activations, the input of `out`."""
    x = x.reshape(x.shape[0], -1)
    act = ACTIVATIONS[self.activation]
    for layer in self.hidden:
      x = act(layer(x))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.features(x))


class CNN(nnx.Module):
  """LeNet-style: two 5x5 conv + 2x2 average-pool stages, two dense layers."""

  def __init__(self, input_shape: tuple[int, ...], num_classes: int, *,
               channels: tuple[int, int] = (6, 16), width: int = 120,
               activation: str = "relu", init_scale: float = 1.0, init: str = "lecun",
               rngs: nnx.Rngs):
    if len(input_shape) != 3:
      raise ValueError(f"the CNN needs (height, width, channels) inputs, got {input_shape}.")
    init = _kernel_init(init_scale, init)
    height, wide, depth = input_shape
    self.conv1 = nnx.Conv(depth, channels[0], (5, 5), padding="SAME", kernel_init=init, rngs=rngs)
    self.conv2 = nnx.Conv(channels[0], channels[1], (5, 5), padding="SAME", kernel_init=init, rngs=rngs)
    flat = math.ceil(height / 4) * math.ceil(wide / 4) * channels[1]
    self.dense = nnx.Linear(flat, width, kernel_init=init, rngs=rngs)
    self.out = nnx.Linear(width, num_classes, kernel_init=init, rngs=rngs)
    self.activation = activation

  def features(self, x: jax.Array) -> jax.Array:
    """The dense layer's activations, the input of `out`."""
    act = ACTIVATIONS[self.activation]
    pool = _average_pool_2x2
    conv = lambda layer, x: conv2d_same(x, layer.kernel[...], layer.bias[...])
    x = pool(act(conv(self.conv1, x)))
    x = pool(act(conv(self.conv2, x)))
    return act(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.features(x))


def conv2d_same(x: jax.Array, kernel: jax.Array, bias: jax.Array, *,
                platform: str | None = None) -> jax.Array:
  """Stride-1 "SAME" convolution of NHWC `x` with an HWIO `kernel`, plus `bias`:
  what ``nnx.Conv(..., padding="SAME")`` computes.

  On CPU its gradient is written out as two convolutions in the one layout
  XLA:CPU runs fast (`_conv_cpu`). Autodiff's own backward convolutions come
  out in other layouts, which XLA:CPU leaves as they are inside ``lax.scan``
  and runs slowly there: a LeNet step (batch 128) took 80 ms inside a scan vs
  18 ms outside; with the written-out gradient, 14 ms inside. Elsewhere it is
  XLA's convolution with autodiff's gradient.

  The formulation is chosen from the default backend when traced ('cpu' or
  'default' in `platform` forces one): the CPU one has a custom VJP, so it
  supports reverse-mode differentiation (``jax.grad``) but not forward-mode
  (``jax.jvp``), and choosing at lowering would trace it on every backend.
  """
  if platform is None:
    platform = "cpu" if jax.default_backend() == "cpu" else "default"
  if platform == "cpu":
    out = _conv_cpu(x, kernel)
  elif platform == "default":
    out = _conv(x, kernel)
  else:
    raise ValueError(f"`platform` must be 'cpu', 'default' or None, got {platform!r}.")
  return out + bias.reshape((1,) * (out.ndim - 1) + (-1,))


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, padding="SAME") -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@jax.custom_vjp
def _conv_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _conv(x, kernel)


def _conv_cpu_forward(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _conv_cpu_backward(residuals, grad_out):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  # "SAME" pads (k - 1) // 2 before and k // 2 after; the gradient with
  # respect to x correlates grad_out with the flipped kernel, padded the
  # other way round, its in and out channels swapped.
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  grad_x = _conv(grad_out, flipped, ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2)))
  # The kernel gradient sums x * grad_out over the batch and positions: a
  # convolution with x's channels as its batch and the batch as its features.
  grad_kernel = _conv(x.transpose(3, 1, 2, 0), grad_out.transpose(1, 2, 0, 3),
                      (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)))
  return grad_x, grad_kernel.transpose(1, 2, 0, 3)


_conv_cpu.defvjp(_conv_cpu_forward, _conv_cpu_backward)


def _average_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2; odd sizes are zero-padded ("SAME")."""
  # Reshape-and-mean rather than flax's avg_pool, which divides by an int
  # (rejected under strict dtype promotion).
  batch, height, width, channels = x.shape
  x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
  x = x.reshape(batch, x.shape[1] // 2, 2, x.shape[2] // 2, 2, channels)
  return jnp.mean(x, axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which model, and its shape. Defaults: a 256-unit ReLU MLP.

  `hidden` (e.g. ``(64, 32)``) gives the MLP's layer widths explicitly and
  overrides `depth` x `width`. `init` picks the kernels' initialisation
  (``"lecun"``, ``"classical"`` or ``"normal"``, see `INITS`); `init_scale`
  multiplies the first two and is the absolute std of the third.
  """
  name: str = "mlp"
  depth: int = 1
  width: int = 256
  activation: str = "relu"
  init_scale: float = 1.0
  hidden: tuple[int, ...] = ()
  init: str = "lecun"


@dataclasses.dataclass(frozen=True)
class ModelFns:
  init: Callable[[jax.Array], Any]
  apply: Callable[[Any, jax.Array], jax.Array]
  # For a fused head (`lossjax.fused`): the input of the last layer, and that
  # layer's kernel [D, C] and bias [C]; `apply` is `features @ kernel + bias`.
  features: Callable[[Any, jax.Array], jax.Array]
  head: Callable[[Any], tuple[jax.Array, jax.Array]]
  flops_per_example: int  # forward multiply-adds x 2
  # A training step's: the forward pass, the weight gradients (as many again)
  # and the input gradients of every layer but the first (nothing needs the
  # gradient of the data). Not 3x the forward: for the 784-256-10 MLP, 2.0x.
  train_flops_per_example: int


MODEL_NAMES = ("mlp", "cnn")


def build(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFns:
  """The pure init/apply pair for `config` on inputs of `input_shape`."""
  if config.name not in MODEL_NAMES:
    raise ValueError(f"unknown model {config.name!r}; available: {', '.join(MODEL_NAMES)}.")
  if config.activation not in ACTIVATIONS:
    raise ValueError(f"unknown activation {config.activation!r}; available: "
                     f"{', '.join(ACTIVATIONS)}.")
  if config.init not in INITS:
    raise ValueError(f"unknown init {config.init!r}; available: {', '.join(INITS)}.")
  if not config.init_scale > 0:
    raise ValueError(f"`init_scale` must be > 0, got {config.init_scale}.")

  def create(key: jax.Array) -> nnx.Module:
    rngs = nnx.Rngs(params=key)
    if config.name == "mlp":
      return MLP(math.prod(input_shape), num_classes, depth=config.depth, width=config.width,
                 hidden=config.hidden, activation=config.activation,
                 init_scale=config.init_scale, init=config.init, rngs=rngs)
    return CNN(tuple(input_shape), num_classes, width=config.width,
               activation=config.activation, init_scale=config.init_scale, init=config.init,
               rngs=rngs)

  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: create(jax.random.key(0))))

  def init(key: jax.Array):
    return nnx.split(create(key))[1]

  def apply(params, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params)(x)

  def features(params, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, params).features(x)

  def head(params) -> tuple[jax.Array, jax.Array]:
    out = nnx.merge(graphdef, params).out
    return out.kernel[...], out.bias[...]

  forward, first_layer = _forward_flops(config, input_shape, num_classes)
  return ModelFns(init, apply, features, head, forward, 3 * forward - first_layer)


def mlp_layer_sizes(config: ModelConfig, input_shape, num_classes: int) -> list[int]:
  """An MLP config's layer sizes, flattened input to logits: `[in, *hidden, C]`."""
  return ([math.prod(input_shape)] + hidden_widths(config.hidden, config.depth, config.width)
          + [num_classes])


def _forward_flops(config: ModelConfig, input_shape, num_classes: int) -> tuple[int, int]:
  """2 x multiply-adds of one forward pass (dense and conv layers only), and
  of its first layer alone. Convolutions count every output position times
  the whole kernel, padded taps included (XLA's cost analysis leaves those
  out: 12% less for LeNet on 28x28 inputs, 40% less on 8x8)."""
  if config.name == "mlp":
    sizes = mlp_layer_sizes(config, input_shape, num_classes)
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])), 2 * sizes[0] * sizes[1]
  height, wide, depth = input_shape
  c1, c2 = 6, 16
  conv1 = height * wide * 25 * depth * c1
  conv2 = math.ceil(height / 2) * math.ceil(wide / 2) * 25 * c1 * c2
  flat = math.ceil(height / 4) * math.ceil(wide / 4) * c2
  return 2 * (conv1 + conv2 + flat * config.width + config.width * num_classes), 2 * conv1
