"""lossjax's native CPU kernels (`lossjax._native`): the margin losses' rival
and true logit, the softmax losses' row statistics, sparsemax's threshold,
logit MSE's sum of squares and binary focal loss's slope, against NumPy, in
the shapes that take each of their paths (and again built without AVX-512),
and their build: cached, and a clear warning with XLA's numbers where it
fails."""

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import lossjax
from lossjax import _native, _softmax
from lossjax.losses import _binary, _sparsemax

# Classes that take each path of the kernel: rows narrower than a vector (1,
# 2, 15), ranges shorter than a vector beside the label, whole vectors with
# and without a remainder, the bulk loop (64 a step) and rows of many steps.
CLASSES = (1, 2, 15, 16, 17, 31, 33, 64, 65, 127, 130, 1000, 1001)
DTYPES = (jnp.float32, jnp.bfloat16)


@pytest.fixture(autouse=True)
def _kernels_asked_for(monkeypatch):
  # The kernels run here on any build: without AVX-512 lossjax would leave
  # them for XLA's operations (`_native.takes`), and these tests would not
  # test them. Tests of LOSSJAX_NATIVE itself set it again.
  monkeypatch.setenv("LOSSJAX_NATIVE", "1")


def _native_statistics(values, labels):
  assert _native.takes(values), "the native kernel did not build (see the warning)"
  return jax.jit(lambda v, y: _native.rival_and_true_logit(v, y, None))(values, labels)


def _reference(values, labels):
  """The rival (NaN where another class is NaN, -inf where there is none)
  and the true logit, in float64."""
  z = np.asarray(values.astype(jnp.float32), np.float64)
  y = np.asarray(labels)
  rows = np.arange(z.shape[0])
  others = z.copy()
  others[rows, y] = -np.inf
  # np.max propagates NaN; the label's own NaN must not count.
  return others.max(axis=-1), z[rows, y]


def _under_both_forms(compute, monkeypatch):
  """`compute()` with the kernels and with XLA's operations (LOSSJAX_NATIVE=0)."""
  native = compute()
  monkeypatch.setenv("LOSSJAX_NATIVE", "0")
  xla = compute()
  monkeypatch.setenv("LOSSJAX_NATIVE", "1")
  return native, xla


def _logits(rng, rows, classes, dtype):
  # Small integers: many exact ties with the label and between rivals.
  return jnp.asarray(rng.integers(-3, 4, (rows, classes)).astype(np.float32)
                     + rng.standard_normal((rows, classes)).astype(np.float32)
                     * (rng.random((rows, 1)) < 0.5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", CLASSES)
def test_rival_and_true_logit_match_numpy(classes, dtype):
  rng = np.random.default_rng(classes)
  rows = 3 * classes + 7
  values = _logits(rng, rows, classes, dtype)
  # Every label position, the ends included, in turn.
  labels = jnp.asarray(np.arange(rows) % classes, jnp.int32)
  rival, true_logit = _native_statistics(values, labels)
  want_rival, want_true = _reference(values, labels)
  np.testing.assert_array_equal(np.asarray(rival), want_rival.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(true_logit), want_true.astype(np.float32))
  xla_rival, xla_true = jax.jit(_softmax._xla_rival_and_true_logit)(values, labels)
  np.testing.assert_array_equal(np.asarray(rival), np.asarray(xla_rival))
  np.testing.assert_array_equal(np.asarray(true_logit), np.asarray(xla_true))
  # The derivative's kernel: the same two and the other classes at the rival.
  *both, ties = jax.jit(lambda v, y: _native.rival_true_logit_and_ties(v, y, None))(values, labels)
  np.testing.assert_array_equal(np.asarray(both[0]), np.asarray(rival))
  z = np.asarray(values.astype(jnp.float32))
  at_rival = z == want_rival.astype(np.float32)[:, None]
  at_rival[np.arange(rows), np.asarray(labels)] = False
  want_ties = np.where(want_rival == -np.inf, 0, at_rival.sum(axis=-1))
  np.testing.assert_array_equal(np.asarray(ties), want_ties)
  xla_ties = jax.jit(_softmax._xla_rival_true_logit_and_ties)(values, labels)[2]
  np.testing.assert_array_equal(np.asarray(ties), np.asarray(xla_ties))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", (17, 130, 1000))
def test_nan_and_infinities(classes, dtype):
  rng = np.random.default_rng(0)
  values = np.array(_logits(rng, 8, classes, jnp.float32))
  labels = np.array([0, 5, classes - 1, 3, 7, 2, 9, 11]) % classes
  values[0, classes - 1] = np.nan       # NaN in another class: NaN rival
  values[1, labels[1]] = np.nan         # the label's own NaN: a finite rival
  values[2, :] = -np.inf                # no finite rival: -inf
  values[3, 1] = np.inf                 # +inf rival
  values[4, labels[4]] = np.inf         # +inf true logit
  values[5, :] = np.float32(np.finfo(np.float32).max if dtype == jnp.float32 else 1e38)
  values[6, :] = -1e4
  values[6, labels[6]] = 1e4
  values[7, :] = 0.0
  values, labels = jnp.asarray(values, dtype), jnp.asarray(labels, jnp.int32)
  rival, true_logit = _native_statistics(values, labels)
  want_rival, want_true = _reference(values, labels)
  np.testing.assert_array_equal(np.asarray(rival), want_rival.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(true_logit), want_true.astype(np.float32))
  assert np.isnan(rival[0]) and not np.isnan(rival[1]) and rival[2] == -np.inf


def test_one_class_and_labels_out_of_range():
  rival, true_logit = _native_statistics(jnp.ones((2, 1)), jnp.zeros(2, jnp.int32))
  np.testing.assert_array_equal(np.asarray(rival), [-np.inf, -np.inf])
  np.testing.assert_array_equal(np.asarray(true_logit), [1.0, 1.0])
  # Never a read outside the row: NaN for both.
  rival, true_logit = _native_statistics(jnp.ones((3, 40)), jnp.array([-1, 40, 2**30], jnp.int32))
  assert np.isnan(np.asarray(rival)).all() and np.isnan(np.asarray(true_logit)).all()


def test_many_rows_across_threads_and_leading_axes():
  # Rows in many chunks (the kernel's threads take chunks of ~256 KiB), and
  # two leading axes, under jit and vmap.
  rng = np.random.default_rng(1)
  values = jnp.asarray(rng.standard_normal((3, 700, 300)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 300, (3, 700)), jnp.int32)
  rival, true_logit = _native_statistics(values, labels)
  want_rival, want_true = _reference(values.reshape(-1, 300), labels.reshape(-1))
  np.testing.assert_array_equal(np.asarray(rival).ravel(), want_rival.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(true_logit).ravel(), want_true.astype(np.float32))
  per_slice = jax.vmap(lambda v, y: _native.rival_and_true_logit(v, y, None))(values, labels)
  np.testing.assert_array_equal(np.asarray(per_slice[0]), np.asarray(rival))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ("multiclass_hinge_loss", "multiclass_squared_hinge_loss",
                                  "multiclass_perceptron_loss"))
def test_losses_and_gradients_as_xla_computes_them(name, dtype, monkeypatch):
  # The margin losses through the kernel and through XLA's own operations
  # (LOSSJAX_NATIVE=0): the same values and gradients, bit for bit (the
  # perceptron's max is the larger of the rival and the label's logit).
  loss = getattr(lossjax, name)
  rng = np.random.default_rng(2)
  values = _logits(rng, 257, 1000, dtype)
  labels = jnp.asarray(rng.integers(0, 1000, 257), jnp.int32)
  def value_and_grad():
    fn = jax.jit(jax.value_and_grad(lambda v: jnp.sum(loss(v, labels).astype(jnp.float32))))
    # The derivative's kernel counts the ties too (XLA's form: a pass of its own).
    text = fn.lower(values).as_text()
    return fn(values), "lossjax_rival_true_logit_and_ties" in text
  forward = jax.jit(lambda v: loss(v, labels)).lower(values).as_text()
  assert "lossjax_rival_and_true_logit" in forward and "_and_ties" not in forward
  ((native_value, native_grad), native_used), ((xla_value, xla_grad), xla_used) = (
      _under_both_forms(value_and_grad, monkeypatch))
  assert native_used and not xla_used
  assert float(native_value) == float(xla_value)
  np.testing.assert_array_equal(np.asarray(native_grad.astype(jnp.float32)),
                                np.asarray(xla_grad.astype(jnp.float32)))


def _softmax_reference(values, labels):
  """The true logit, row max, sum exp(z - max), sum exp(2 (z - max)) and
  sum z of each row, in float64 (NaN for a label outside the row)."""
  z = np.asarray(values.astype(jnp.float32), np.float64)
  y = np.asarray(labels)
  inside = (y >= 0) & (y < z.shape[-1])
  true_logit = np.where(inside, z[np.arange(z.shape[0]), np.clip(y, 0, z.shape[-1] - 1)], np.nan)
  top = z.max(axis=-1)
  with np.errstate(invalid="ignore"):
    exps = np.exp(z - top[:, None])
  return true_logit, top, exps.sum(-1), np.square(exps).sum(-1), z.sum(-1)


def _softmax_kernel(values, labels, extra):
  assert _native.takes(values), "the native kernel did not build (see the warning)"
  return jax.jit(lambda v, y: _native.softmax_statistics(v, y, None, extra=extra))(values, labels)


def _assert_softmax_statistics(values, labels, rtol=2e-6):
  true_logit, top, sums, squares, row_sums = _softmax_reference(values, labels)
  got = _softmax_kernel(values, labels, None)
  np.testing.assert_array_equal(np.asarray(got[0]), true_logit.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(got[1]), top.astype(np.float32))
  np.testing.assert_allclose(np.asarray(got[2]), sums, rtol=rtol)
  with_squares = _softmax_kernel(values, labels, "squares")
  for a, b in zip(with_squares[:3], got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(with_squares[3]), squares, rtol=rtol)
  with_row_sum = _softmax_kernel(values, labels, "row_sum")
  for a, b in zip(with_row_sum[:3], got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A sum of values of both signs: its error is relative to the sum of
  # magnitudes (and an infinite sum exact).
  got, finite = np.asarray(with_row_sum[3]), np.isfinite(row_sums)
  np.testing.assert_array_equal(got[~finite], row_sums[~finite])
  scale = np.abs(np.asarray(values.astype(jnp.float32), np.float64)[finite]).sum(-1)
  np.testing.assert_array_less(np.abs(got[finite] - row_sums[finite]), 1e-6 * scale + 1e-30)


# The softmax kernel's paths: rows narrower than a vector, a masked tail,
# single vectors, the bulk loop, long rows.
SOFTMAX_CLASSES = (1, 15, 16, 17, 65, 1000, 1001, 32000)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", SOFTMAX_CLASSES)
def test_softmax_statistics_match_numpy(classes, dtype):
  rng = np.random.default_rng(classes + 7)
  rows = max(3, min(3 * classes + 7, 2 ** 20 // classes))
  # Spreads from ties to logits 40 apart, where most exponentials underflow
  # the least normal float32 (the kernel's exponential stops there).
  values = jnp.asarray(rng.standard_normal((rows, classes)) * rng.choice([0.0, 1.0, 8.0, 40.0],
                                                                         (rows, 1)), dtype)
  labels = jnp.asarray(np.arange(rows) % classes, jnp.int32)
  _assert_softmax_statistics(values, labels)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", (5, 17, 1000))
def test_softmax_statistics_of_non_finite_rows(classes, dtype):
  rng = np.random.default_rng(3)
  values = np.array(rng.standard_normal((8, classes)), np.float32)
  labels = np.array([0, 1, 2, 3, 4, 0, 1, 2]) % classes
  values[0, classes - 1] = np.nan       # NaN: max and sums NaN
  values[1, :] = -np.inf                # only -inf: a NaN sum (inf - inf)
  values[2, 0] = np.inf                 # +inf: a NaN sum
  values[3, :] = -np.inf                # -inf beside finite logits: exp 0
  values[3, labels[3]] = 2.0
  values[4, :] = 3e34                   # large logits, one near float32's largest:
  values[4, 1] = 3e38                   # no exponential overflows
  values[5, :] = -3e34
  values[6, :] = 0.0                    # all tied
  values[7, 0] = -100.0                 # an exponential below the least normal
  values, labels = jnp.asarray(values, dtype), jnp.asarray(labels, jnp.int32)
  for extra in (None, "squares", "row_sum"):
    true_logit, top, sums, *rest = (np.asarray(v) for v in _softmax_kernel(values, labels, extra))
    assert np.isnan([top[0], sums[0], *(r[0] for r in rest)]).all()
    assert np.isfinite(true_logit[0])
    assert top[1] == -np.inf and top[2] == np.inf and np.isnan(sums[1:3]).all()
    if extra == "squares":
      assert np.isnan(rest[0][1:3]).all()
    if extra == "row_sum":
      np.testing.assert_array_equal(rest[0][1:3], [-np.inf, np.inf])
  _assert_softmax_statistics(values[3:], labels[3:])
  true_logit, *_ = _softmax_kernel(values[:1], jnp.array([classes], jnp.int32), None)
  assert np.isnan(np.asarray(true_logit)).all()  # a label outside the row


# The registry's softmax losses (label smoothing: the kernel's row sum; Brier:
# its squares).
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("squares", (False, True))
@pytest.mark.parametrize("classes", (1, 15, 17, 1001))
def test_softmax_gradient_kernel_matches_numpy(classes, squares, dtype):
  # g_c = b e_c + q e_c^2 + s + a [c = y], e_c = exp(z_c - shift), in the
  # logits' dtype, rounded once; a label outside the row adds nothing.
  rng = np.random.default_rng(classes + 11)
  rows = 3 * classes + 7
  values = jnp.asarray(rng.standard_normal((rows, classes)) * 3, dtype)
  labels = jnp.asarray(np.arange(rows) % classes, jnp.int32).at[-1].set(classes)
  z = np.asarray(values.astype(jnp.float32), np.float64)
  shift = z.max(axis=-1) + rng.random(rows)
  coefficients = rng.standard_normal((rows, 4 if squares else 3))
  a, b = coefficients[:, 0, None], coefficients[:, 1, None]
  q = coefficients[:, 2, None] if squares else 0.0
  e = np.exp(z - shift[:, None])
  want = b * e + q * e * e + coefficients[:, -1, None]
  inside = np.asarray(labels) < classes
  want[np.arange(rows)[inside], np.asarray(labels)[inside]] += a[inside, 0]
  kernel = jax.ffi.ffi_call("lossjax_softmax_cotangent",
                            jax.ShapeDtypeStruct(values.shape, values.dtype))
  assert _native.takes(values), "the native kernel did not build (see the warning)"
  got = jax.jit(kernel)(values, labels, jnp.asarray(shift, jnp.float32),
                        jnp.asarray(coefficients, jnp.float32))
  assert got.dtype == values.dtype
  got = np.asarray(got.astype(jnp.float32), np.float64)
  # float32: a few roundings of values of magnitude ~|coefficients|;
  # bfloat16: one rounding of the float32 result (2^-8 relative).
  scale = np.abs(b) + np.abs(q) + np.abs(coefficients[:, -1, None]) + np.abs(a)
  tolerance = 2 ** -8 * np.abs(want) + 1e-6 * scale if dtype == jnp.bfloat16 else 1e-6 * scale
  np.testing.assert_array_less(np.abs(got - want), np.broadcast_to(tolerance, want.shape))


SOFTMAX_LOSSES = ("cross_entropy", "label_smoothing", "focal", "poly1", "gce", "mae", "brier")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
def test_softmax_losses_and_gradients_as_xla_computes_them(name, dtype, monkeypatch):
  # Through the kernel and through XLA's own operations (LOSSJAX_NATIVE=0):
  # the same values and gradients, to the exponentials' rounding.
  loss = lossjax.losses.spec(name).bind()
  rng = np.random.default_rng(4)
  values = jnp.asarray(rng.standard_normal((257, 1000)) * 4, dtype)
  labels = jnp.asarray(rng.integers(0, 1000, 257), jnp.int32)
  def value_and_grad():
    fn = jax.jit(jax.value_and_grad(lambda v: jnp.sum(loss(v, labels).astype(jnp.float32))))
    return fn(values), "lossjax_softmax_statistics" in fn.lower(values).as_text()
  ((native_value, native_grad), native_used), ((xla_value, xla_grad), xla_used) = (
      _under_both_forms(value_and_grad, monkeypatch))
  assert native_used and not xla_used
  np.testing.assert_allclose(float(native_value), float(xla_value), rtol=2e-6)
  np.testing.assert_allclose(np.asarray(native_grad.astype(jnp.float32)),
                             np.asarray(xla_grad.astype(jnp.float32)),
                             rtol=1e-2 if dtype == jnp.bfloat16 else 2e-5, atol=1e-7)


@pytest.mark.parametrize("name", ("cross_entropy", "label_smoothing", "brier"))
def test_softmax_losses_second_derivatives_as_xla_computes_them(name, monkeypatch):
  # Hessian-vector products through the kernel's derivative rules (Brier's
  # terms have one of their own) and through XLA's operations.
  loss = lossjax.losses.spec(name).bind()
  rng = np.random.default_rng(5)
  values = jnp.asarray(rng.standard_normal((33, 300)) * 3, jnp.float32)
  direction = jnp.asarray(rng.standard_normal((33, 300)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 300, 33), jnp.int32)
  def hessian_times_direction():
    grad = jax.grad(lambda v: jnp.sum(loss(v, labels)))
    fn = jax.jit(lambda v: jax.jvp(grad, (v,), (direction,))[1])
    return fn(values), "lossjax_softmax_statistics" in fn.lower(values).as_text()
  (native, native_used), (xla, xla_used) = _under_both_forms(hessian_times_direction, monkeypatch)
  assert native_used and not xla_used
  np.testing.assert_allclose(np.asarray(native), np.asarray(xla), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, classes", (("cross_entropy", 256), ("label_smoothing", 1001),
                                           ("brier", 1001)))
def test_softmax_gradient_kernel_in_every_mode_of_differentiation(name, classes, dtype,
                                                                 monkeypatch):
  # The gradient's kernel (the transpose of `_softmax_functionals`' primitive)
  # on rows with a tail shorter than a vector and labels at both ends, under
  # vmap; forward mode and reverse over reverse through the primitives' rules.
  loss = lossjax.losses.spec(name).bind()
  rng = np.random.default_rng(classes)
  values = jnp.asarray(rng.standard_normal((2, 9, classes)) * 3, dtype)
  labels = jnp.asarray(rng.integers(0, classes, (2, 9)), jnp.int32).at[:, 0].set(0)
  labels = labels.at[:, 1].set(classes - 1)
  direction = jnp.asarray(rng.standard_normal(values.shape), dtype)
  def compute():
    total = lambda v, y: jnp.sum(loss(v, y).astype(jnp.float32))
    grad = jax.jit(jax.vmap(jax.grad(total)))(values, labels)
    tangent = jax.jit(lambda v: jax.jvp(lambda u: total(u, labels), (v,), (direction,))[1])(values)
    wide = lambda v: v.astype(jnp.float32)
    twice = jax.jit(jax.grad(lambda v: jnp.vdot(wide(jax.grad(total)(v, labels)), wide(direction))))
    return grad, tangent, twice(values)
  native, xla = _under_both_forms(compute, monkeypatch)
  rtol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
  for got, want in zip(native, xla):
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)),
                               np.asarray(want.astype(jnp.float32)), rtol=rtol, atol=1e-5)


def test_short_rows_take_xla_operations():
  # Below NATIVE_FROM_CLASSES the kernel's fixed cost a row outweighs it.
  short = jnp.zeros((8, _softmax.NATIVE_FROM_CLASSES - 1))
  labels = jnp.zeros(8, jnp.int32)
  loss = lossjax.losses.spec("cross_entropy").bind()
  assert "lossjax_softmax" not in jax.jit(loss).lower(short, labels).as_text()
  wide = jnp.zeros((8, _softmax.NATIVE_FROM_CLASSES))
  assert "lossjax_softmax_statistics" in jax.jit(loss).lower(wide, labels).as_text()


def test_build_is_cached(tmp_path, monkeypatch):
  # A compiler that records its runs and writes an empty library: the
  # cache's logic without a real compile (every process's first kernel call
  # and the portable test compile for real).
  compiler = tmp_path / "recording-c++"
  compiler.write_text('#!/bin/sh\necho run >> "$(dirname "$0")/runs"\n'
                      'while [ "$#" -gt 0 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n')
  compiler.chmod(0o755)
  monkeypatch.setenv("CXX", str(compiler))
  monkeypatch.setenv("LOSSJAX_CACHE", str(tmp_path))
  first = _native.build()
  stamp = first.stat().st_mtime_ns
  assert first.parent == tmp_path / "native" and _native.build() == first
  assert first.stat().st_mtime_ns == stamp
  assert (tmp_path / "runs").read_text().split() == ["run"]
  assert not list(first.parent.glob("*.partial"))


def test_a_failed_build_names_the_compiler_and_falls_back(tmp_path, monkeypatch):
  monkeypatch.setenv("LOSSJAX_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "no-such-compiler")
  with pytest.raises(_native.BuildError, match="no-such-compiler.*CXX"):
    _native.build()
  with pytest.warns(RuntimeWarning, match="could not be built.*same numbers"):
    assert _native._library.__wrapped__() is None
  fake = tmp_path / "broken-c++"
  fake.write_text("#!/bin/sh\necho 'margin.cc: error: something broke' >&2\nexit 1\n")
  fake.chmod(0o755)
  monkeypatch.setenv("CXX", str(fake))
  with pytest.raises(_native.BuildError, match="something broke"):
    _native.build()
  assert not list((tmp_path / "native").glob("*"))


def _sparsemax_reference(values):
  """tau, |S| and ||p||^2 of each row in float64, by sorting."""
  z = np.asarray(values.astype(jnp.float32), np.float64)
  ranked = -np.sort(-z, axis=-1)
  k = np.arange(1, z.shape[-1] + 1)
  size = np.sum(1 + k * ranked > np.cumsum(ranked, axis=-1), axis=-1)
  top_sum = np.take_along_axis(np.cumsum(ranked, axis=-1), size[:, None] - 1, axis=-1)[:, 0]
  tau = (top_sum - 1) / size
  squares = np.sum(np.maximum(z - tau[:, None], 0.0) ** 2, axis=-1)
  return tau, size, squares


def _native_threshold(values):
  assert _native.takes(values), "the native kernel did not build (see the warning)"
  return jax.jit(lambda v: _native.sparsemax_threshold(v, None))(values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", CLASSES)
def test_sparsemax_threshold_matches_numpy(classes, dtype):
  rng = np.random.default_rng(classes)
  rows = 2 * classes + 5
  # Scales from nearly uniform rows (support: every class) to one-hot ones.
  scale = np.exp(rng.uniform(-4, 3, (rows, 1)))
  values = jnp.asarray(rng.standard_normal((rows, classes)) * scale, dtype)
  tau, size, squares = _native_threshold(values)
  want_tau, want_size, want_squares = _sparsemax_reference(values)
  np.testing.assert_array_equal(np.asarray(size), want_size)
  np.testing.assert_allclose(np.asarray(tau), want_tau, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(squares), want_squares, rtol=1e-5, atol=1e-7)
  # XLA's own form, whose float32 sums over up to 1001 classes stray further
  # from float64 (1.6e-5 relative in ||p||^2 at 1000 classes) than the
  # kernel's float64 sums of the candidates.
  xla_tau, xla_size, xla_squares = jax.jit(_sparsemax._solve_xla)(values)
  np.testing.assert_array_equal(np.asarray(size), np.asarray(xla_size))
  np.testing.assert_allclose(np.asarray(tau), np.asarray(xla_tau), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(squares), np.asarray(xla_squares), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparsemax_threshold_of_ties_and_non_finite_rows(dtype):
  values = np.zeros((6, 40), np.float32)
  values[1, :3] = 5.0                   # three tied maxima share the support
  values[2, 7] = np.nan                 # NaN: NaN
  values[3, 0] = np.inf                 # an infinite max: NaN
  values[4, :] = -np.inf                # no finite logit: NaN
  values[5, :] = -np.inf
  values[5, 9] = 2.0                    # -inf beside one finite logit: one-hot
  tau, size, squares = _native_threshold(jnp.asarray(values, dtype))
  np.testing.assert_allclose(np.asarray(tau[:2]), [-1 / 40, 5 - 1 / 3], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(size[:2]), [40, 3])
  assert np.isnan(np.asarray(tau[2:5])).all() and np.isnan(np.asarray(squares[2:5])).all()
  np.testing.assert_array_equal([tau[5], size[5], squares[5]], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparsemax_loss_as_xla_computes_it(dtype, monkeypatch):
  rng = np.random.default_rng(3)
  values = jnp.asarray(rng.standard_normal((513, 1000)) * 2, dtype)
  labels = jnp.asarray(rng.integers(0, 1000, 513), jnp.int32)
  def value_and_grad():
    loss = lambda v: jnp.sum(lossjax.multiclass_sparsemax_loss(v, labels).astype(jnp.float32))
    fn = jax.jit(jax.value_and_grad(loss))
    return fn(values), "lossjax_sparsemax_threshold" in fn.lower(values).as_text()
  ((native_value, native_grad), native_used), ((xla_value, xla_grad), xla_used) = (
      _under_both_forms(value_and_grad, monkeypatch))
  assert native_used and not xla_used
  np.testing.assert_allclose(float(native_value), float(xla_value), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(native_grad.astype(jnp.float32)),
                             np.asarray(xla_grad.astype(jnp.float32)), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", (4096, 4133, 4325, 32000))
def test_sparsemax_threshold_of_long_rows(classes, dtype):
  # Rows this long take their max and candidates in one pass in float32, the
  # level following the running max: rows in ascending order keep raising it
  # (most logits are candidates for a while); in bfloat16 through the maxima
  # of spans of 256 logits, the groups and vectors past the whole spans
  # (4133, 4325 classes) read again one vector at a time. A NaN or an
  # infinity anywhere in a row must still show.
  rng = np.random.default_rng(classes)
  scale = np.exp(rng.uniform(-4, 3, (12, 1)))
  values = rng.standard_normal((12, classes)) * scale
  values[1] = np.sort(values[1])
  values[2] = np.linspace(-3, 3, classes)
  values[3, :] = -np.inf
  values[3, classes // 2] = 0.5
  values = jnp.asarray(values, dtype)
  tau, size, squares = _native_threshold(values)
  want_tau, want_size, want_squares = _sparsemax_reference(values)
  np.testing.assert_array_equal(np.asarray(size), want_size)
  np.testing.assert_allclose(np.asarray(tau), want_tau, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(squares), want_squares, rtol=1e-5, atol=1e-7)
  for position in (0, 100, classes - 1):
    for bad in (np.nan, np.inf):
      broken = np.array(values.astype(jnp.float32))
      broken[5, position] = bad
      tau, size, squares = _native_threshold(jnp.asarray(broken, dtype))
      assert np.isnan([tau[5], size[5], squares[5]]).all()
      np.testing.assert_array_equal(np.asarray(size)[6:], want_size[6:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", (16, 100, 1000))
def test_sparsemax_threshold_of_rows_in_any_order(classes, dtype):
  # Rows under 4096 classes go through a pipeline (a row's second pass
  # beside the next row's first, its search two rows later, rows of at most
  # 8 candidates searched 16 at a time, a row in each lane): every kind of
  # row, shuffled, each row's numbers the same wherever it stands, and equal
  # to the reference. Kinds: few candidates; 9 to 16; every class (past 16,
  # Michelot's rounds); two candidates in one cell of four logits (the row read again);
  # NaN, infinite and all -inf rows, which have no second pass and leave the
  # pipeline empty, some of them one after another.
  rng = np.random.default_rng(classes)
  kinds = np.repeat(np.arange(8), 9)
  values = rng.standard_normal((kinds.size, classes)) * 2
  twelve = rng.choice(classes, 12, replace=False)
  values[kinds == 1] = rng.standard_normal(((kinds == 1).sum(), classes)) * 0.5
  values[np.ix_(kinds == 1, twelve)] = 5 + rng.uniform(0, 0.5, ((kinds == 1).sum(), 12))
  values[kinds == 2] *= 0.005
  # Lane 0 of the last whole group of 64 logits (float32: of its first and
  # third vectors; bfloat16: the low halves of its two vectors of words).
  start = 64 * (classes // 64 - 1)
  cell = [start, start + 32] if classes >= 64 else [0, 1]
  values[np.ix_(kinds == 3, cell)] = [20.0, 19.75]
  values[kinds == 4, classes // 3] = np.nan
  values[kinds == 5, classes - 1] = np.inf
  values[kinds == 6] = -np.inf
  values[kinds == 7] *= 8  # one candidate, mostly
  values = np.asarray(jnp.asarray(values, dtype).astype(jnp.float32))
  finite = kinds[:, None] != np.array([4, 5, 6])
  finite = finite.all(-1)
  # The kinds in two orders: shuffled, and runs of one kind after another.
  for order in (rng.permutation(kinds.size), np.arange(kinds.size)):
    tau, size, squares = map(np.asarray, _native_threshold(jnp.asarray(values[order], dtype)))
    back = np.argsort(order)
    tau, size, squares = tau[back], size[back], squares[back]
    if order[0] != 0:
      first = (tau, size, squares)
    else:
      for got, want in zip((tau, size, squares), first):
        np.testing.assert_array_equal(got, want)
  assert np.isnan(tau[~finite]).all() and np.isnan(size[~finite]).all()
  want_tau, want_size, want_squares = _sparsemax_reference(jnp.asarray(values[finite]))
  np.testing.assert_array_equal(size[finite], want_size)
  np.testing.assert_allclose(tau[finite], want_tau, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(squares[finite], want_squares, rtol=1e-5, atol=1e-7)
  # The kinds gave what they are for: the counts of candidates above max - 1.
  top = values[finite].max(-1, keepdims=True)
  candidates = (values[finite] > top - 1).sum(-1)
  kept = kinds[finite]
  assert (candidates[kept == 1] >= 9).all() and (candidates[kept == 1] <= 16).all()
  assert (candidates[kept == 2] == classes).all() and (candidates[kept == 3] == 2).all()
  assert (candidates[kept == 0] <= 8).all()


def _true_logit_and_squares(values, labels):
  assert _native.takes(values), "the native kernel did not build (see the warning)"
  return jax.jit(lambda v, y: _native.true_logit_and_squares(v, y, None))(values, labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_true_logit_and_squares_match_numpy(dtype):
  # Rows of every path of the kernel (SOFTMAX_CLASSES): narrower than a
  # vector, a masked tail, the bulk loop, long rows; then non-finite rows and
  # labels outside the row.
  for classes in SOFTMAX_CLASSES:
    rng = np.random.default_rng(classes + 11)
    rows = max(3, min(3 * classes + 7, 2 ** 20 // classes))
    values = jnp.asarray(rng.standard_normal((rows, classes)) * 4, dtype)
    labels = jnp.asarray(np.arange(rows) % classes, jnp.int32)
    true_logit, squares = (np.asarray(v) for v in _true_logit_and_squares(values, labels))
    z = np.asarray(values.astype(jnp.float32), np.float64)
    np.testing.assert_array_equal(true_logit, z[np.arange(rows), np.asarray(labels)])
    # A sum of squares: float32's rounding of each term and of the sum.
    np.testing.assert_allclose(squares, (z ** 2).sum(-1), rtol=2e-6 * np.log2(classes + 1))
  values = np.array(np.random.default_rng(12).standard_normal((5, 1001)), np.float32)
  values[0, 700], values[1, 3], values[2, 1000], values[3, :] = np.nan, np.inf, -np.inf, 1e20
  labels = jnp.asarray([0, 1, 2, 1001, -1], jnp.int32)
  true_logit, squares = (np.asarray(v) for v in _true_logit_and_squares(jnp.asarray(values, dtype),
                                                                        labels))
  assert np.isnan(squares[0]) and squares[1] == squares[2] == squares[3] == np.inf
  assert np.isfinite(squares[4]) and np.isfinite(true_logit[:3]).all()
  assert np.isnan(true_logit[3:]).all()  # labels outside the row


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ("mse", "mse_rescaled"))
def test_logit_mse_and_its_derivatives_as_xla_computes_them(name, dtype, monkeypatch):
  # Through the kernel and through XLA's operations: the values and a
  # Hessian-vector product; the gradient, to one rounding of the float64
  # one (the XLA form's bfloat16 gradient at the label rounds its two terms
  # apart before they cancel: 2 ulp off there).
  spec = lossjax.losses.spec(name)
  loss = spec.bind()
  rng = np.random.default_rng(13)
  values = jnp.asarray(rng.standard_normal((65, 1000)) * 4, dtype)
  direction = jnp.asarray(rng.standard_normal((65, 1000)), dtype)
  labels = jnp.asarray(rng.integers(0, 1000, 65), jnp.int32)
  mean = lambda v: jnp.mean(loss(v, labels))
  def derivatives():
    value_and_grad = jax.jit(jax.value_and_grad(mean))
    uses = "lossjax_true_logit_and_squares" in value_and_grad.lower(values).as_text()
    value, grad = value_and_grad(values)
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(mean), (v,), (direction,))[1])(values)
    return uses, value, grad, hvp
  native, xla = _under_both_forms(derivatives, monkeypatch)
  assert native[0] and not xla[0]
  np.testing.assert_allclose(float(native[1]), float(xla[1]), rtol=2e-6)
  np.testing.assert_allclose(np.asarray(native[3], np.float32), np.asarray(xla[3], np.float32),
                             rtol=2 ** -7 if dtype == jnp.bfloat16 else 1e-6, atol=1e-12)
  # d/dz_c = 2 z_c / (C N), and 2 k (z_y - M) / (C N) at the label.
  k, m = (spec.hyperparameters.get(key, 1.0) for key in ("k", "m"))
  z = np.asarray(values.astype(jnp.float32), np.float64)
  want = 2.0 * z
  rows, picked = np.arange(65), np.asarray(labels)
  want[rows, picked] = 2.0 * k * (z[rows, picked] - m)
  want /= 1000 * 65
  np.testing.assert_allclose(np.asarray(native[2], np.float64), want,
                             rtol=2 ** -8 if dtype == jnp.bfloat16 else 2e-6, atol=1e-12)


# Logits that take each branch of the binary kernel's arithmetic: both signs,
# zero and near it, e^-|z| at and under float32's least normal, infinities, NaN.
SPECIAL_LOGITS = (0.0, 1e-6, -1e-6, 30.0, -30.0, 87.0, -88.0, 100.0, -100.0,
                  np.inf, -np.inf, np.nan)


def _binary_focal_slope(values, labels, alpha, gamma):
  """The kernel's alpha_t dl/dz (weighted unless alpha is None)."""
  assert _native.takes(values), "the native kernel did not build (see the warning)"
  weighted, power = alpha is not None, _binary._whole_power(gamma)
  return jax.jit(lambda v, y: _native.binary_focal_slope(
      v, y, jnp.float32(0.5 if alpha is None else alpha), jnp.float32(gamma), weighted, power,
      None))(values, labels)


def _binary_focal_slope_reference(values, labels, alpha, gamma):
  """alpha_t dl/dz in float64 from the textbook derivative: with s = 1 - 2y,
  q = sigmoid(s z) = 1 - p_t and ce = softplus(s z) = -log p_t,
  s q^gamma (q + gamma ce (1 - q))."""
  z = np.asarray(values.astype(jnp.float32), np.float64)
  y = np.asarray(labels).astype(np.float64)
  s = 1.0 - 2.0 * y
  with np.errstate(invalid="ignore"):
    q, p, ce = special.expit(s * z), special.expit(-s * z), np.logaddexp(0.0, s * z)
    slope = s * q ** gamma * (q + gamma * ce * p)
  return slope if alpha is None else np.where(y == 1, alpha, 1 - alpha) * slope


def _binary_focal_slope_xla(values, labels, alpha, gamma):
  """XLA's own form of the same (`_hard_focal_slopes`), rounded to the logits' dtype."""
  weighted = alpha is not None
  d_logits, _, alpha_t, _ = _binary._hard_focal_slopes(
      values, labels, jnp.float32(0.5 if alpha is None else alpha), jnp.float32(gamma), weighted,
      _binary._whole_power(gamma))
  return (d_logits if alpha_t is None else alpha_t * d_logits).astype(values.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha, gamma", ((None, 2.0), (0.25, 2.0), (0.25, 0.0), (0.25, 3.0),
                                          (0.4, 1.5)))
def test_binary_focal_slope_matches_numpy(alpha, gamma, dtype):
  # Lengths below a vector, at it, past it, and across the kernel's blocks of
  # 4096 logits and its threads; a whole gamma takes products, 1.5 an exp.
  rng = np.random.default_rng(6)
  for size in (1, 15, 16, 17, 4097, 70001):
    z = rng.standard_normal(size) * 8
    z[:len(SPECIAL_LOGITS)] = SPECIAL_LOGITS[:size]
    values = jnp.asarray(z, dtype)
    labels = jnp.asarray(rng.integers(0, 2, size), jnp.int32)
    slope = _binary_focal_slope(values, labels, alpha, gamma)
    assert slope.dtype == values.dtype and slope.shape == (size,)
    got = np.asarray(slope.astype(jnp.float32), np.float64)
    # As XLA's form, non-finite entries included: a few float32 roundings
    # apart (its log1p and exponential are others), or an ulp of bfloat16.
    xla = np.asarray(_binary_focal_slope_xla(values, labels, alpha, gamma).astype(jnp.float32))
    np.testing.assert_allclose(got, xla, rtol=2 ** -7 if dtype == jnp.bfloat16 else 1e-5,
                               atol=1e-37, equal_nan=True)
    # And, where finite, the float64 derivative to float32's rounding (a
    # fractional gamma's exponential is off by its argument's rounding) or
    # one rounding to bfloat16.
    want = _binary_focal_slope_reference(values, labels, alpha, gamma)
    finite = np.isfinite(want)
    rtol = 2e-6 if float(gamma).is_integer() else 1e-5
    tolerance = (2 ** -8 if dtype == jnp.bfloat16 else rtol) * np.abs(want[finite]) + 1e-37
    assert np.all(np.abs(got[finite] - want[finite]) <= tolerance), size


def test_binary_focal_slope_label_types_and_labels_other_than_zero_and_one():
  # int8, uint8 and bool labels are read as they are, int64 through int32;
  # any integer but 0 and 1 reads as 2, as `_binary.label_signs`' (s = -3).
  rng = np.random.default_rng(7)
  values = jnp.asarray(rng.standard_normal(1000) * 4, jnp.float32)
  labels = rng.integers(0, 2, 1000)
  want = _binary_focal_slope(values, jnp.asarray(labels, jnp.int32), 0.25, 2.0)
  for dtype in (jnp.int8, jnp.uint8, jnp.bool_, jnp.int16):
    np.testing.assert_array_equal(_binary_focal_slope(values, jnp.asarray(labels, dtype), 0.25, 2.0),
                                  want)
  bad = labels.copy()
  bad[::7] = 2
  bad[3::7] = -1
  for alpha, gamma in ((0.25, 2.0), (None, 1.5)):
    got = _binary_focal_slope(values, jnp.asarray(bad, jnp.int32), alpha, gamma)
    np.testing.assert_allclose(got, _binary_focal_slope_xla(values, jnp.asarray(bad), alpha, gamma),
                               rtol=1e-5, atol=1e-37)


def test_binary_focal_slope_under_vmap_with_alpha_and_gamma_batched():
  # vmap gives the kernel one alpha and gamma for each batch element's share
  # of the logits.
  rng = np.random.default_rng(8)
  values = jnp.asarray(rng.standard_normal((3, 1001)) * 4, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, (3, 1001)), jnp.int32)
  alphas, gammas = jnp.array([0.1, 0.5, 0.9]), jnp.array([0.5, 2.0, 3.5])
  kernel = lambda v, y, a, g: _native.binary_focal_slope(v, y, a, g, True, None, None)
  got = jax.jit(jax.vmap(kernel))(values, labels, alphas, gammas)
  for row in range(3):
    np.testing.assert_array_equal(
        got[row], jax.jit(kernel)(values[row], labels[row], alphas[row], gammas[row]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_focal_loss_derivatives_as_xla_computes_them(dtype, monkeypatch):
  # Through the kernel and through XLA's own operations: value_and_grad of
  # the mean, forward mode in the logits, a Hessian-vector product (the
  # kernel's slope differentiated by the smooth form), and gamma traced.
  rng = np.random.default_rng(9)
  values = jnp.asarray(rng.standard_normal((64, 33)) * 4, dtype)
  direction = jnp.asarray(rng.standard_normal((64, 33)), dtype)
  labels = jnp.asarray(rng.integers(0, 2, (64, 33)), jnp.int32)
  mean = lambda v, gamma=2.0: jnp.mean(lossjax.sigmoid_focal_loss(v, labels, alpha=0.25, gamma=gamma))
  def derivatives():
    value_and_grad = jax.jit(jax.value_and_grad(mean))
    uses = "lossjax_binary_focal_slope" in value_and_grad.lower(values).as_text()
    (value, grad) = value_and_grad(values)
    forward = jax.jit(lambda v: jax.jvp(mean, (v,), (direction,))[1])(values)
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(mean), (v,), (direction,))[1])(values)
    in_gamma = jax.jit(jax.grad(mean, argnums=(0, 1)))(values, jnp.float32(1.5))
    return uses, value, grad, forward, hvp, *in_gamma
  native, xla = _under_both_forms(derivatives, monkeypatch)
  assert native[0] and not xla[0]
  rtol = 2 ** -7 if dtype == jnp.bfloat16 else 1e-5
  for got, want in zip(native[1:], xla[1:]):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=rtol, atol=1e-9)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64's portable build")
def test_the_portable_build_computes_the_same(tmp_path):
  # Built for x86-64-v3 (AVX2, no AVX-512) the kernels take their portable
  # paths (GCC's vector extensions, Michelot's rounds for every row): this
  # file's kernel tests against NumPy again, in a process with that build
  # (the losses' comparisons with XLA's form left to the native build: they
  # run the kernels tested here).
  # LOSSJAX_NATIVE=1: such a build runs only when asked for (its paths are
  # slower than XLA's operations), which the second process checks.
  env = {**os.environ, "LOSSJAX_NATIVE_ARCH": "x86-64-v3", "LOSSJAX_CACHE": str(tmp_path),
         "LOSSJAX_NATIVE": "1"}
  env.pop("PYTEST_XDIST_WORKER", None)
  done = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__,
       "-k", "not portable and not build and not as_xla_computes and not every_mode "
             "and not second_derivatives and not modes"],
      env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert list((tmp_path / "native").glob("kernels-*.so"))
  check = ("import jax.numpy as jnp; from lossjax import _native; "
           "print(_native.vectorized(), _native.takes(jnp.zeros((2, 300))))")
  for mode, want in (("auto", "False False"), ("1", "False True")):
    done = subprocess.run([sys.executable, "-c", check], env={**env, "LOSSJAX_NATIVE": mode},
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == want.split(), done.stdout + done.stderr[-3000:]


@pytest.mark.parametrize("mode, uses", [("auto", True), ("", True), ("1", True), ("0", False)])
def test_native_modes(mode, uses, monkeypatch):
  # This machine's build has the AVX-512 paths (the suite's kernel tests
  # need them); `auto`, the default, takes them, `0` never.
  monkeypatch.setenv("LOSSJAX_NATIVE", mode)
  assert _native.takes(jnp.zeros((2, 300))) == (uses and _native.vectorized())
  monkeypatch.setenv("LOSSJAX_NATIVE", "yes")
  with pytest.raises(ValueError, match="LOSSJAX_NATIVE must be auto, 1 or 0, got 'yes'"):
    _native.takes(jnp.zeros((2, 300)))


def test_export_for_cpu_takes_xla_operations(monkeypatch):
  # jax.export refuses custom calls without a compatibility guarantee: the
  # guide's way out, LOSSJAX_NATIVE=0, exports the same numbers.
  values, labels = jnp.arange(40.0).reshape(4, 10) % 7, jnp.arange(4, dtype=jnp.int32)
  def losses(v, y):
    return (lossjax.multiclass_hinge_loss(v, y), lossjax.multiclass_sparsemax_loss(v, y),
            lossjax.softmax_cross_entropy_with_integer_labels(v, y))
  with pytest.raises(ValueError, match="custom calls"):
    jax.export.export(jax.jit(losses))(values, labels)
  native = jax.jit(losses)(values, labels)
  monkeypatch.setenv("LOSSJAX_NATIVE", "0")
  # A new function: jit's cache would give back the trace with the kernels.
  exported = jax.export.export(jax.jit(lambda v, y: losses(v, y)))
  for got, want in zip(exported(values, labels).call(values, labels), native):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
