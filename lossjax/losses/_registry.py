"""The loss registry: one entry per loss, driving tests, benchmarks and study.

Every entry is called as ``fn(logits, labels, **hyperparameters)``:
``multiclass`` entries take ``[B, C]`` logits and ``[B]`` integer labels,
``binary`` entries take ``[B]`` logits (one per example) and ``[B]`` labels in
``{0, 1}``. Both return ``[B]`` per-example losses.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

from lossjax.losses import _binary
from lossjax.losses import _cross_entropy
from lossjax.losses import _margin
from lossjax.losses import _sparsemax
from lossjax.losses import _squared


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the registry knows about one loss."""
  name: str
  fn: Callable[..., Any]
  hyperparameters: dict[str, Any]
  formula: str
  reference: str
  optax_equivalent: str | None = None
  kind: str = "multiclass"  # or "binary"
  twice_differentiable: bool = True
  log_normalizer: bool = False  # built on softmax's logsumexp

  def keyword_options(self) -> list[str]:
    """Keyword-only options of the function (hyper-parameters, weights)."""
    return [name for name, p in inspect.signature(self.fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]

  def bind(self, **overrides) -> Callable[..., Any]:
    unknown = set(overrides) - set(self.keyword_options())
    if unknown:
      raise ValueError(
          f"loss {self.name!r} has no hyper-parameter(s) {sorted(unknown)}; "
          f"it takes {self.keyword_options()}.")
    bound = functools.partial(self.fn, **{**self.hyperparameters, **overrides})
    functools.update_wrapper(bound, self.fn)
    return bound


_REGISTRY: dict[str, LossSpec] = {}


def register(spec: LossSpec) -> LossSpec:
  if spec.name in _REGISTRY:
    raise ValueError(f"a loss named {spec.name!r} is already registered.")
  if spec.kind not in ("multiclass", "binary"):
    raise ValueError(f"`kind` must be 'multiclass' or 'binary', got {spec.kind!r}.")
  _REGISTRY[spec.name] = spec
  return spec


def spec(name: str) -> LossSpec:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"unknown loss {name!r}; registered losses: {', '.join(names())}."
    ) from None


def get(name: str, **overrides) -> Callable[..., Any]:
  """The loss `name` as ``fn(logits, labels, *, axis, where)``.

  Hyper-parameters take the registry's defaults; keyword ``overrides``
  replace them (e.g. ``get("focal", gamma=1.0)``,
  ``get("cross_entropy", class_weights=w)``).
  """
  return spec(name).bind(**overrides)


def names(kind: str | None = None) -> list[str]:
  """Registered loss names, optionally only those of one `kind`."""
  return [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]


_CE = "-log softmax(z)_y"
register(LossSpec(
    "cross_entropy", _cross_entropy.softmax_cross_entropy_with_integer_labels,
    {}, _CE, "-", "softmax_cross_entropy_with_integer_labels",
    log_normalizer=True))
register(LossSpec(
    "label_smoothing", _cross_entropy.softmax_cross_entropy_with_integer_labels,
    {"label_smoothing": 0.1}, "-sum_c ((1-e) onehot_c + e/C) log softmax(z)_c",
    "Szegedy et al. 2016", None, log_normalizer=True))
register(LossSpec(
    "focal", _cross_entropy.softmax_focal_loss, {"gamma": 2.0},
    "-alpha_y (1 - p_y)^gamma log p_y", "Lin et al. 2017", None,
    log_normalizer=True))
register(LossSpec(
    "poly1", _cross_entropy.poly_loss_cross_entropy, {"epsilon": 2.0},
    "-log p_y + epsilon (1 - p_y)", "Leng et al. 2022",
    "poly_loss_cross_entropy", log_normalizer=True))
register(LossSpec(
    "gce", _cross_entropy.generalized_cross_entropy, {"q": 0.7},
    "(1 - p_y^q) / q", "Zhang & Sabuncu 2018", None, log_normalizer=True))
register(LossSpec(
    "mse", _squared.mean_squared_error_logits, {},
    "mean_c (z_c - onehot_c)^2", "Hui & Belkin 2021", None))
register(LossSpec(
    "mse_rescaled", _squared.mean_squared_error_logits, {"k": 5.0, "m": 30.0},
    "(1/C) [k (z_y - M)^2 + sum_{c != y} z_c^2]", "Hui & Belkin 2021", None))
register(LossSpec(
    "brier", _squared.brier_loss, {}, "sum_c (softmax(z)_c - onehot_c)^2",
    "Brier 1950; Mukhoti et al. 2020", None))
register(LossSpec(
    "mae", _squared.mean_absolute_error_probs, {},
    "sum_c |softmax(z)_c - onehot_c| = 2 (1 - p_y)", "Ghosh et al. 2017", None,
    log_normalizer=True))
register(LossSpec(
    "hinge", _margin.multiclass_hinge_loss, {},
    "max_c (z_c + 1 - [c = y]) - z_y", "Crammer & Singer 2001",
    "multiclass_hinge_loss", twice_differentiable=False))
register(LossSpec(
    "squared_hinge", _margin.multiclass_squared_hinge_loss, {},
    "(max_c (z_c + 1 - [c = y]) - z_y)^2", "Crammer & Singer 2001 (squared)",
    None, twice_differentiable=False))
register(LossSpec(
    "perceptron", _margin.multiclass_perceptron_loss, {}, "max_c z_c - z_y",
    "Collins 2002", "multiclass_perceptron_loss", twice_differentiable=False))
register(LossSpec(
    "sparsemax", _sparsemax.multiclass_sparsemax_loss, {},
    "sum_c p_c (z_c - z_y) + (1 - |p|^2) / 2, p = sparsemax(z)",
    "Martins & Astudillo 2016", "multiclass_sparsemax_loss"))
register(LossSpec(
    "binary_cross_entropy", _binary.sigmoid_binary_cross_entropy, {},
    "-y log sigma(z) - (1 - y) log(1 - sigma(z))", "-",
    "sigmoid_binary_cross_entropy", kind="binary"))
register(LossSpec(
    "binary_focal", _binary.sigmoid_focal_loss, {"gamma": 2.0, "alpha": 0.25},
    "-alpha_t (1 - p_t)^gamma log p_t", "Lin et al. 2017", "sigmoid_focal_loss",
    kind="binary"))
register(LossSpec(
    "binary_sparsemax", _sparsemax.sparsemax_loss, {},
    "sparseplus(-(2y - 1) z)", "Blondel et al. 2020", "sparsemax_loss", kind="binary"))
register(LossSpec(
    "binary_mse", _binary.sigmoid_squared_error, {},
    "(sigma(z) - y)^2", "-", None, kind="binary"))
