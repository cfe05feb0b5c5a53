"""The softmax losses' derivative as linear row functionals of the logits'
tangent, whose transpose, the gradient, is one pass over the logits.

Every softmax loss with integer labels is a function of a few row
statistics of its logits z (`lossjax._softmax.class_statistics`, Brier's
terms), and their tangents are four linear functionals of the logits'
tangent d, with e_c = exp(z_c - shift) for a per-row `shift`:

    (d_y,  sum_c e_c d_c,  sum_c e_c^2 d_c,  sum_c d_c).

Reverse mode transposes them into the gradient
``g_c = a [c = y] + b e_c + q e_c^2 + s`` for per-row cotangents (a, b, q, s).
Written as JAX operations, that transpose is XLA's loop with XLA's
exponential; here it is a primitive of its own (`functionals`) whose
transpose (`cotangent`) runs lossjax's CPU kernel (`lossjax._native`,
`softmax.cc`), which writes the gradient in the logits' dtype in one pass,
with the kernel's faster exponential. Other platforms, forward mode and
higher derivatives take the same formulas in JAX operations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

# `_softmax` imports this module too; each uses the other only when called.
from lossjax import _softmax

Array = jax.Array

_F32 = jnp.float32
# The functionals, in order: the label's entry, the sum weighted by e, by
# e^2, and the plain sum.
COUNT = 4


def _exponentials(z: Array, shift: Array) -> Array:
  return jnp.exp(_softmax.compute(z) - shift[..., None])


def _xla_functionals(d: Array, z: Array, shift: Array, labels: Array) -> list:
  # The label's entry as a masked row sum: 0 for a label outside the row
  # (the kernel writes nothing there either).
  e = _exponentials(z, shift)
  wide = _softmax.compute(d)
  return [_softmax._true_class_tangent(labels, wide), jnp.sum(e * wide, axis=-1),
          jnp.sum(e * e * wide, axis=-1), jnp.sum(wide, axis=-1)]


def _xla_cotangent(z: Array, labels: Array, shift: Array, coefficients: Array) -> Array:
  """The gradient from `coefficients` [..., 4] (a, b, q, s); [..., 3] means
  q = 0: (a, b, s)."""
  e = _exponentials(z, shift)
  k = lambda i: coefficients[..., i, None]
  squares = coefficients.shape[-1] == COUNT
  g = k(1) * e + (k(2) * e * e if squares else 0.0) + k(-1)
  return (g + jnp.where(_softmax._is_class(z.shape, labels), k(0), 0.0)).astype(z.dtype)


functionals_p = Primitive("lossjax_softmax_functionals")
functionals_p.multiple_results = True
cotangent_p = Primitive("lossjax_softmax_cotangent")


def functionals(d: Array, z: Array, shift: Array, labels: Array) -> list:
  """The four functionals of the tangent `d` `[..., C]` (module docstring),
  float32 `[...]` each, at logits `z` and float32 `shift` `[...]`."""
  return functionals_p.bind(d, z, shift.astype(_F32), labels.astype(jnp.int32))


@functionals_p.def_abstract_eval
def _functionals_shapes(d, z, shift, labels):
  return [jax.core.ShapedArray(z.shape[:-1], _F32)] * COUNT


@cotangent_p.def_abstract_eval
def _cotangent_shape(z, labels, shift, coefficients):
  return jax.core.ShapedArray(z.shape, z.dtype)


mlir.register_lowering(functionals_p, mlir.lower_fun(_xla_functionals, multiple_results=True))
mlir.register_lowering(cotangent_p, mlir.lower_fun(_xla_cotangent, multiple_results=False))
# On CPU the kernel (its operands in this order); the primitive is bound
# only where it is built (`lossjax._softmax.native_statistics_pay`).
mlir.register_lowering(cotangent_p, jax.ffi.ffi_lowering("lossjax_softmax_cotangent"),
                       platform="cpu")


def _instantiate(tangent, like):
  return jnp.zeros(like.shape, like.dtype) if type(tangent) is ad.Zero else tangent


def _jvp_by(xla_form, primitive, label_index):
  """A jvp rule: the value by `primitive`, the tangent from `xla_form`'s own
  (the labels, operand `label_index`, integers, have none)."""
  def rule(primals, tangents):
    labels = primals[label_index]
    floats = [p for i, p in enumerate(primals) if i != label_index]
    wide = [_instantiate(t, p) for i, (t, p) in enumerate(zip(tangents, primals))
            if i != label_index]
    def with_labels(*args):
      args = list(args)
      args.insert(label_index, labels)
      return xla_form(*args)
    _, tangent = jax.jvp(with_labels, tuple(floats), tuple(wide))
    return primitive.bind(*primals), tangent
  return rule


ad.primitive_jvps[functionals_p] = _jvp_by(_xla_functionals, functionals_p, 3)
ad.primitive_jvps[cotangent_p] = _jvp_by(_xla_cotangent, cotangent_p, 1)


def _functionals_transpose(cotangents, d, z, shift, labels):
  assert ad.is_undefined_primal(d) and not ad.is_undefined_primal(z)
  rows = z.shape[:-1]
  a, b, q, s = (jnp.zeros(rows, _F32) if type(c) is ad.Zero else c for c in cotangents)
  coefficients = jnp.stack([a, b, s] if type(cotangents[2]) is ad.Zero else [a, b, q, s], -1)
  return cotangent_p.bind(z, labels, shift, coefficients), None, None, None


def _cotangent_transpose(cotangent, z, labels, shift, coefficients):
  assert ad.is_undefined_primal(coefficients) and not ad.is_undefined_primal(z)
  count = coefficients.aval.shape[-1]
  if type(cotangent) is ad.Zero:
    return None, None, None, jnp.zeros(coefficients.aval.shape, _F32)
  a, b, q, s = functionals_p.bind(cotangent, z, shift, labels)
  return None, None, None, jnp.stack([a, b, q, s] if count == COUNT else [a, b, s], -1)


ad.primitive_transposes[functionals_p] = _functionals_transpose
ad.primitive_transposes[cotangent_p] = _cotangent_transpose


def _batched(primitive):
  """vmap: the mapped axis moved to the front of every operand (an unmapped
  one broadcast along it): the kernels take any leading axes as rows."""
  def rule(args, axes):
    size = next(a.shape[i] for a, i in zip(args, axes) if i is not None)
    front = [jnp.broadcast_to(a, (size, *a.shape)) if i is None
             else jnp.moveaxis(a, i, 0) for a, i in zip(args, axes)]
    out = primitive.bind(*front)
    return out, ([0] * COUNT if primitive.multiple_results else 0)
  return rule


batching.primitive_batchers[functionals_p] = _batched(functionals_p)
batching.primitive_batchers[cotangent_p] = _batched(cotangent_p)
