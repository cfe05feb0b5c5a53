"""Datasets by name: ``load(name, ...)`` returns a ``Dataset``.

Offline (shipped in packages or generated): ``mnist5k``, ``digits``,
``breast_cancer``, ``blobs``, ``spirals``, ``xor``, ``rare_positive``.
Any TFDS name as ``tfds:NAME`` (e.g. ``tfds:mnist``, ``tfds:cifar10``).
"""

from __future__ import annotations

from typing import Callable

from lossjax.data import _packaged, _synthetic
from lossjax.data._dataset import Dataset, split, standardize
from lossjax.data._tfds import DatasetUnavailableError
from lossjax.data._transforms import label_noise, long_tail, long_tail_counts

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": _packaged.mnist5k,
    "digits": _packaged.digits,
    "breast_cancer": _packaged.breast_cancer,
    "blobs": _synthetic.blobs,
    "spirals": _synthetic.spirals,
    "xor": _synthetic.xor,
    "rare_positive": _synthetic.rare_positive,
}


def names() -> list[str]:
  """The datasets available without a network (TFDS names come on top)."""
  return list(_LOADERS)


def load(name: str, *, seed: int = 0, imbalance: float | None = None,
         noise: float | None = None, data_dir: str | None = None,
         **options) -> Dataset:
  """Loads dataset `name`, then applies the optional transforms.

  Args:
    name: one of ``names()``, or ``tfds:NAME``.
    seed: seeds the split, synthetic generation and the transforms.
    imbalance: long-tail the train/validation splits with this imbalance factor.
    noise: symmetric label noise rate on the training labels.
    data_dir: TFDS data directory.
    **options: passed to the loader (e.g. ``num_classes`` for ``blobs``).
  """
  if name.startswith("tfds:"):
    from lossjax.data._tfds import load_tfds
    dataset = load_tfds(name[len("tfds:"):], seed=seed, data_dir=data_dir,
                        offline_names=names(), **options)
  elif name in _LOADERS:
    try:
      dataset = _LOADERS[name](seed=seed, **options)
    except TypeError as error:
      raise TypeError(f"dataset {name!r}: {error}") from None
  else:
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(names())}, "
                     "or tfds:NAME for any TFDS dataset.")
  if imbalance is not None:
    dataset = long_tail(dataset, imbalance, seed=seed)
  if noise is not None:
    dataset = label_noise(dataset, noise, seed=seed)
  return dataset


__all__ = ["Dataset", "DatasetUnavailableError", "label_noise", "load", "long_tail",
           "long_tail_counts", "names", "split", "standardize"]
