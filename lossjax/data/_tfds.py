"""Any TFDS dataset through ``tfds.data_source`` (ArrayRecord; no TensorFlow)."""

from __future__ import annotations

import socket

import numpy as np

from lossjax.data._dataset import Dataset, split

# Where TFDS fetches prepared data from; reachable means a download can work.
_TFDS_HOST = ("storage.googleapis.com", 443)


class DatasetUnavailableError(RuntimeError):
  """The dataset is neither on disk nor downloadable from here."""


def _can_reach_tfds(timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection(_TFDS_HOST, timeout=timeout):
      return True
  except OSError:
    return False


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
  records = [source[i] for i in range(len(source))]
  image_key = "image" if "image" in records[0] else next(
      k for k, v in records[0].items() if np.ndim(v) >= 2)
  x = np.stack([np.asarray(r[image_key]) for r in records])
  y = np.asarray([r["label"] for r in records], np.int32)
  return x, y


def load_tfds(name: str, *, seed: int = 0, data_dir: str | None = None,
              offline_names=()) -> Dataset:
  """Loads `name`'s train and test splits; validation is 20% of train.

  Looks on disk first; downloads only when the TFDS host is reachable, so an
  offline machine gets a clear error within seconds instead of minutes of
  retries.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise ImportError("TFDS datasets need `pip install 'lossjax[data]'`.") from error
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir,
                               download=False)
  except Exception as not_on_disk:  # TFDS raises several types for "not prepared"
    if builder.is_prepared():
      raise
    if not _can_reach_tfds():
      raise DatasetUnavailableError(
          f"TFDS dataset {name!r} is not prepared under {builder.data_dir!r} and the "
          f"TFDS host is unreachable from this machine. Datasets that work offline: "
          f"{', '.join(offline_names)}.") from not_on_disk
    builder.download_and_prepare(file_format="array_record")
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir,
                               download=False)
  num_classes = builder.info.features["label"].num_classes
  (x_train, y_train), (x_test, y_test) = (_read_split(s) for s in sources)
  x_train = x_train.astype(np.float32) / 255.0
  x_test = x_test.astype(np.float32) / 255.0
  train_part = split(f"tfds:{name}", x_train, y_train, num_classes, seed=seed,
                     fractions=(0.8, 0.2, 0.0))
  return train_part.replace(x_test=x_test, y_test=y_test)
