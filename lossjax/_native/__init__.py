"""lossjax's own XLA:CPU kernels, in C++ through JAX's FFI, for row statistics
that XLA:CPU's library kernel cannot compute in one pass over the logits.

- `margin.cc`: the margin losses' rival (the max over the classes other than
  the label's) and the label's logit together, and for the derivative the
  count of the classes at the rival. XLA's own form of the rival reads the
  logits about three times (block maxima, then the label's own block
  gathered; docs/measurement.md), and counts in a pass of its own.
- `softmax.cc`: the softmax losses' row max, sum of exponentials and label's
  logit (and Brier's sum of squared exponentials, or label smoothing's row
  sum): XLA:CPU takes each row sum in a pass of its own, and its
  exponential is the slower (docs/measurement.md); and their gradient, the
  transpose of `lossjax._softmax_functionals`' primitive, in one pass.
- `sparsemax.cc`: sparsemax's threshold, support size and ||p||^2 (and the
  label's logit, for the loss). XLA's own form takes block maxima, an
  insertion network over them and a count.
- `squares.cc`: logit MSE's sum of squares and the label's logit: XLA's
  own form gathers the label's logit in a loop of its own.
- `binary.cc`: binary focal loss's slope in each logit, for its gradient,
  with exponential, logarithm and division 16 lanes at a time, where
  XLA:CPU's loop of the same arithmetic runs 8 (docs/measurement.md).

Each reads a row of logits once from memory, on XLA's intra-op threads.

The kernels are compiled on first use with the machine's C++ compiler
(``$CXX``, else ``c++``) for the machine's own processor (``-march=native``;
``$LOSSJAX_NATIVE_ARCH`` names another, e.g. ``x86-64-v3``),
into ``$LOSSJAX_CACHE/native`` (default ``~/.cache/lossjax/native``), one
library per source, jaxlib and processor, and then loaded from there. Where
they cannot be built (no compiler, no JAX FFI headers), lossjax warns once and
computes the same numbers with XLA's own operations (the softmax statistics,
the sums of squares and binary focal's slopes to float32 rounding);
``LOSSJAX_NATIVE=0`` chooses that without trying. Built without AVX-512 (another x86-64 processor,
ARM), their portable paths are slower than XLA's own operations, so lossjax
takes those there too, unless ``LOSSJAX_NATIVE=1`` (the default is ``auto``).
Other platforms (GPU, TPU) always take XLA's operations
(``jax.lax.platform_dependent``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

Array = jax.Array

_FOLDER = pathlib.Path(__file__).parent
_SOURCES = ("margin.cc", "softmax.cc", "sparsemax.cc", "squares.cc", "binary.cc")
_HEADERS = ("rows.h",)
# FFI target names and the symbols of their handlers.
_TARGETS = {"lossjax_rival_and_true_logit": "LossjaxRivalAndTrueLogit",
            "lossjax_rival_true_logit_and_ties": "LossjaxRivalTrueLogitAndTies",
            "lossjax_softmax_statistics": "LossjaxSoftmaxStatistics",
            "lossjax_softmax_statistics_and_squares": "LossjaxSoftmaxStatisticsAndSquares",
            "lossjax_softmax_statistics_and_row_sum": "LossjaxSoftmaxStatisticsAndRowSum",
            "lossjax_softmax_cotangent": "LossjaxSoftmaxCotangent",
            "lossjax_sparsemax_threshold": "LossjaxSparsemaxThreshold",
            "lossjax_sparsemax_loss_statistics": "LossjaxSparsemaxLossStatistics",
            "lossjax_true_logit_and_squares": "LossjaxTrueLogitAndSquares",
            "lossjax_binary_focal_slope": "LossjaxBinaryFocalSlope"}
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
_BUILD_SECONDS = 300


class BuildError(RuntimeError):
  """The native kernels could not be compiled or loaded."""


def _mode() -> str:
  """``$LOSSJAX_NATIVE``: ``auto`` (the default), ``1`` or ``0``."""
  value = os.environ.get("LOSSJAX_NATIVE", "auto").strip().lower() or "auto"
  if value not in ("auto", "1", "0"):
    raise ValueError(f"LOSSJAX_NATIVE must be auto, 1 or 0, got {value!r}.")
  return value


def enabled() -> bool:
  """Whether ``LOSSJAX_NATIVE`` allows the native kernels (``auto`` or ``1``)."""
  return _mode() != "0"


def cache_folder() -> pathlib.Path:
  root = pathlib.Path(os.environ.get("LOSSJAX_CACHE", pathlib.Path.home() / ".cache" / "lossjax"))
  return root / "native"


def _processor() -> str:
  """What `-march=native` compiles for: the processor's model and features."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.processor() or platform.machine()
  keys = ("model name", "flags", "Features", "CPU part")
  return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _architecture() -> str:
  """What `-march` compiles for: ``$LOSSJAX_NATIVE_ARCH``, else the machine's
  own processor (``native``)."""
  return os.environ.get("LOSSJAX_NATIVE_ARCH", "native")


def _compiler() -> str:
  compiler = os.environ.get("CXX", "c++")
  found = shutil.which(compiler)
  if found is None:
    raise BuildError(f"no C++ compiler: `{compiler}` is not on PATH (set CXX to one)")
  return found


def build() -> pathlib.Path:
  """Compiles the kernels into one library unless the cache holds it
  already; returns its path. Raises `BuildError` with the compiler's message."""
  compiler = _compiler()
  include = jax.ffi.include_dir()
  flags = (*_FLAGS, f"-march={_architecture()}")
  texts = [(_FOLDER / name).read_text() for name in _SOURCES + _HEADERS]
  key = hashlib.sha256("\0".join([
      *texts, jaxlib.__version__, compiler, " ".join(flags),
      platform.machine(), _processor()]).encode()).hexdigest()[:16]
  library = cache_folder() / f"kernels-{key}.so"
  if library.exists():
    return library
  library.parent.mkdir(parents=True, exist_ok=True)
  # Built under a temporary name and renamed: processes that build at once
  # (pytest's workers) each leave a whole library.
  fd, partial = tempfile.mkstemp(dir=library.parent, suffix=".so.partial")
  os.close(fd)
  command = [compiler, *flags, "-I", include, *(str(_FOLDER / name) for name in _SOURCES),
             "-o", partial]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=_BUILD_SECONDS)
    if done.returncode != 0:
      raise BuildError(f"`{' '.join(command)}` failed:\n{done.stderr.strip()}")
    os.replace(partial, library)
  except (OSError, subprocess.TimeoutExpired) as error:
    raise BuildError(f"`{' '.join(command)}` failed: {error}") from error
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return library


@functools.cache
def _library() -> ctypes.CDLL | None:
  """Builds, loads and registers the kernels once a process: their library,
  or None (after one warning) where that fails."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    for target, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
  except (BuildError, OSError, AttributeError) as error:
    warnings.warn(f"lossjax: its CPU kernels could not be built, so the softmax, margin, "
                  f"sparsemax and logit MSE losses and binary focal's gradient use XLA's slower "
                  f"operations (same numbers). {error}",
                  RuntimeWarning,
                  stacklevel=4)
    return None
  return library


@functools.cache
def vectorized() -> bool:
  """Whether the kernels were built with their AVX-512 paths (call it where
  they loaded, `_library()`). Their portable paths (GCC's vector extensions:
  AVX2, NEON) measured several times slower than XLA's own operations
  limited to AVX2 (docs/measurement.md)."""
  return bool(_library().LossjaxNativeVectorized())


def runs() -> bool:
  """Whether the native kernels run on CPU: ``LOSSJAX_NATIVE`` allows them,
  they built and, unless ``LOSSJAX_NATIVE=1``, with AVX-512 (`vectorized`)."""
  return enabled() and _library() is not None and (_mode() == "1" or vectorized())


def takes(values: Array) -> bool:
  """Whether the functions below run a native kernel for these logits on
  CPU: float32 or bfloat16, where the kernels run (`runs`)."""
  return values.dtype in (jnp.float32, jnp.bfloat16) and values.ndim >= 1 and runs()


def _by_kernel(target: str, outputs: int, xla_form, values: Array, *labels: Array,
               finish=None) -> tuple:
  """`outputs` float32 `[...]` row statistics of `values` `[..., C]` (and
  int32 `labels` `[...]`), by the FFI `target` on CPU, passed through
  ``finish(*statistics)`` where given, and by ``xla_form(values, *labels)``
  elsewhere."""
  result = jax.ShapeDtypeStruct(values.shape[:-1], jnp.float32)
  kernel = jax.ffi.ffi_call(target, (result,) * outputs, vmap_method="broadcast_all")
  on_cpu = kernel if finish is None else lambda *args: finish(*kernel(*args))
  return jax.lax.platform_dependent(
      values, *(y.astype(jnp.int32) for y in labels), cpu=on_cpu, default=xla_form)


def rival_and_true_logit(values: Array, labels: Array, xla_form) -> tuple:
  """``(max over the classes other than the label's, the label's logit)``,
  float32 `[...]` each, from `[..., C]` float32 or bfloat16 logits and
  `[...]` labels in ``[0, C)``, by the native kernel on CPU and by
  ``xla_form(values, labels)`` elsewhere. Call it only where `takes(values)`.

  The rival is NaN in a row where a class other than the label's is NaN and
  -inf where C = 1; both are NaN for a label outside ``[0, C)``."""
  return _by_kernel("lossjax_rival_and_true_logit", 2, xla_form, values, labels)


def rival_true_logit_and_ties(values: Array, labels: Array, xla_form) -> tuple:
  """`rival_and_true_logit`'s two and the count of the classes other than
  the label's at the rival (0 where the rival is -inf, NaN where it is NaN),
  float32 `[...]` each, for the derivative: from the same pass, the count
  from the row in cache (`xla_form(values, labels)` off CPU)."""
  return _by_kernel("lossjax_rival_true_logit_and_ties", 3, xla_form, values, labels)


def softmax_statistics(values: Array, labels: Array, xla_form, extra: str | None = None,
                       finish=None) -> tuple:
  """``(the label's logit, the row max m, sum_c exp(z_c - m))``, float32
  `[...]` each, from `[..., C]` float32 or bfloat16 logits and `[...]`
  labels, in one pass over the logits from memory, and after them
  ``sum_c exp(2 (z_c - m))`` where `extra` is ``"squares"`` or ``sum_c z_c``
  where it is ``"row_sum"``; passed through ``finish(*statistics)`` where
  given. By the native kernel on CPU and by ``xla_form(values, labels)``
  elsewhere (which returns what `finish` does). Call it only where
  `takes(values)`.

  A NaN in a row makes its max and sums NaN; a row holding +inf, or only
  -inf, has a NaN sum of exponentials (inf - inf), as ``m + log sum exp(z -
  m)`` in XLA's operations. The label's logit is NaN for a label outside
  ``[0, C)``."""
  targets = {None: ("lossjax_softmax_statistics", 3),
             "squares": ("lossjax_softmax_statistics_and_squares", 4),
             "row_sum": ("lossjax_softmax_statistics_and_row_sum", 4)}
  if extra not in targets:
    raise ValueError(f"`extra` must be None, 'squares' or 'row_sum', got {extra!r}.")
  return _by_kernel(*targets[extra], xla_form, values, labels, finish=finish)


def sparsemax_threshold(values: Array, xla_form) -> tuple:
  """``(tau, |S|, ||p||^2)`` of sparsemax for each row, float32 `[...]` each,
  from `[..., C]` float32 or bfloat16 logits, by the native kernel on CPU and
  by ``xla_form(values)`` elsewhere. Call it only where `takes(values)`.

  tau solves sum_c relu(z_c - tau) = 1, S = {c : z_c > tau} and p =
  relu(z - tau); all three are NaN in a row with a NaN or an infinite max."""
  return _by_kernel("lossjax_sparsemax_threshold", 3, xla_form, values)


def sparsemax_loss_statistics(values: Array, labels: Array, xla_form) -> tuple:
  """`sparsemax_threshold`'s three and the label's logit, float32 `[...]`
  each, from one pass (`xla_form(values, labels)` off CPU). The label's
  logit is NaN for a label outside ``[0, C)``."""
  return _by_kernel("lossjax_sparsemax_loss_statistics", 4, xla_form, values, labels)


def true_logit_and_squares(values: Array, labels: Array, xla_form) -> tuple:
  """``(the label's logit, sum_c z_c^2)``, float32 `[...]` each, from
  `[..., C]` float32 or bfloat16 logits and `[...]` labels, in one pass over
  the logits, by the native kernel on CPU and by ``xla_form(values, labels)``
  elsewhere. Call it only where `takes(values)`. The label's logit is NaN for
  a label outside ``[0, C)``."""
  return _by_kernel("lossjax_true_logit_and_squares", 2, xla_form, values, labels)


# Label types the binary kernel reads as they are; others go through int32.
_BINARY_LABEL_TYPES = (jnp.int32, jnp.int8, jnp.uint8, jnp.bool_)


def binary_focal_slope(logits: Array, labels: Array, alpha: Array, gamma: Array, weighted: bool,
                       power: int | None, xla_form) -> Array:
  """Binary focal loss's ``alpha_t d loss / dz`` for each logit, for hard
  `labels` (0 and 1; any other integer reads as 2), in the dtype of the
  float32 or bfloat16 `logits`: computed in float32 and rounded once, by the
  native kernel on CPU and by ``xla_form(logits, labels, alpha, gamma)``
  (which returns that dtype) elsewhere. `alpha` and `gamma` are scalars;
  `weighted` says whether alpha_t is alpha's weight or 1, `power` is gamma
  where it is a known whole number up to 8 (then (1 - p_t)^gamma is products,
  as `jax.lax.integer_pow`'s), else None. Call it only where `takes(logits)`."""
  if labels.dtype not in _BINARY_LABEL_TYPES:
    labels = labels.astype(jnp.int32)
  result = jax.ShapeDtypeStruct(logits.shape, logits.dtype)
  kernel = jax.ffi.ffi_call("lossjax_binary_focal_slope", result, vmap_method="broadcast_all")
  attributes = {"weighted": np.int32(weighted), "power": np.int32(-1 if power is None else power)}
  return jax.lax.platform_dependent(
      logits, labels, jnp.asarray(alpha, jnp.float32), jnp.asarray(gamma, jnp.float32),
      cpu=lambda *args: kernel(*args, **attributes), default=xla_form)
