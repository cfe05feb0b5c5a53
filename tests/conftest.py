"""Test-session settings: strict JAX promotion, so that a (B,) vs (B, 1) slip
fails loudly; hypothesis's profile; XLA's quick compilation, into one
compilation cache for the session; and the quick study that several tests
read."""

import os
import shutil
import tempfile

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
  _scheduled_by_file(config)
  # The tests compile hundreds of small programs and run each a few steps:
  # compilation is most of their time, and XLA's LLVM optimisation most of
  # that (a study Trainer: 9.0 s compiling at the default level, 3.3 s at 0,
  # same numbers), and LLVM's expensive passes off (optax's classification
  # suite, ~110 tests of small eager programs: 43 s -> 31 s). Timed benchmarks
  # (`--benchmark-only`) keep the defaults. Set before JAX starts its backend;
  # subprocesses inherit it.
  if config.getoption("benchmark_only", default=False):
    return
  from lossjax import cli
  extra = []
  if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # One xdist worker per core already: each worker's XLA runs single-threaded
    # instead of every worker spinning up a thread per core.
    extra.append("--xla_cpu_multi_thread_eigen=false")
  cli.cheap_compilation(*extra)
  _session_compilation_cache(config)


def _session_compilation_cache(config) -> None:
  # Every process of the session (xdist's workers, the subprocesses that tests
  # start, the notebook's kernel) compiles into one persistent cache, made
  # afresh for the session and removed after it: a program that several of
  # them build (the quick study's Trainers, the engine's reference runs) is
  # compiled once. It also keeps the study's own cache (`lossjax study` turns
  # one on, in ~/.cache/lossjax unless one is set) out of the user's home.
  # The workers and subprocesses find the folder in the environment.
  folder = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if not folder:
    folder = tempfile.mkdtemp(prefix="lossjax-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
  # As the study's cache: every program, however small or quick to compile.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  # This process imported JAX before reading the environment.
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def _scheduled_by_file(config) -> None:
  # `pytest -n auto` sends whole files to a worker (xdist's `loadfile`), unless
  # `--dist` is given: a file's tests share shapes, so a worker compiles each
  # program once instead of both workers compiling it (the test command: 303 s
  # -> 262 s here, 555 -> 483 s of CPU).
  args = config.invocation_params.args
  if getattr(config.option, "dist", "no") == "load" and not any(
      str(a).startswith("--dist") or str(a) == "-d" for a in args):
    config.option.dist = "loadfile"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
  """`-n auto`: a worker per core, as many as memory holds (a worker's JAX
  runtime peaks at ~4 GiB in this suite)."""
  from lossjax import train
  memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  return max(1, min(train.cpu_cores(), memory // 4 // 2**30))


def pytest_collection_modifyitems(items):
  """The `slow` tests first, so that under xdist they start at once on every
  worker and the many short tests fill in behind them, instead of one long
  test starting last and running alone."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
