"""Test-session settings: strict JAX promotion, so that a (B,) vs (B, 1) slip
fails loudly; hypothesis's profile; XLA's quick compilation; and the quick
study that several tests read."""

import os

import hypothesis
import jax
import numpy as np
import pytest

# Hypothesis: a fixed, derandomized set of examples by default (the test command's
# profile, a few seconds a property); HYPOTHESIS_PROFILE=thorough searches far more.
hypothesis.settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True)
hypothesis.settings.register_profile("thorough", max_examples=500, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The experiments of the session's quick study (the `quick_study` fixture).
QUICK_STUDY = "threshold,local_minima"


def pytest_configure(config):
  # The tests compile hundreds of small programs and run each a few steps:
  # compilation is most of their time, and XLA's LLVM optimisation most of
  # that (a study Trainer: 9.0 s compiling at the default level, 3.3 s at 0,
  # same numbers). Timed benchmarks (`--benchmark-only`) keep the default.
  # Set before JAX starts its backend; subprocesses inherit it.
  if config.getoption("benchmark_only", default=False):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
  """`-n auto`: a worker per core, as many as memory holds (a worker's JAX
  runtime peaks at ~4 GiB in this suite)."""
  from lossjax import train
  memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  return max(1, min(train.cpu_cores(), memory // 4 // 2**30))


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory):
  """Two experiments of `lossjax study --quick`, trained once for the session
  (under xdist, by the first worker that asks; the others find them on disk):
  the study's end-to-end test and the notebook's study cell read them."""
  from filelock import FileLock

  from lossjax import cli
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's folder, above the workers' own
  out = root / "quick-study"
  with FileLock(str(root / "quick-study.lock")):
    assert cli.main(["study", "--quick", "--out", str(out), "--only", QUICK_STUDY]) == 0
  return out


@pytest.fixture(autouse=True)
def strict_promotion():
  # A fixture, not a global config update: the benchmarks in the same session
  # call optax, which mixes dtypes on purpose.
  with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
    yield


@pytest.fixture
def rng():
  """A seeded NumPy generator; every test's randomness starts here."""
  return np.random.default_rng(20261129)
