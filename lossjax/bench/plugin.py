"""The lossjax benchmark suite as a pytest plugin (pytest11 entry point ``lossjax``).

Installed with ``lossjax[bench]``, it is active in any folder:

- ``pytest --benchmark-only --lossjax-loss MODULE:FUNCTION`` (repeatable)
  benchmarks ``FUNCTION`` -- any ``fn(logits [B, C], labels [B]) -> [B]`` --
  beside the registered losses and optax (throughput, forward and
  ``value_and_grad``) and runs steps-to-accuracy for it on mnist5k.
- ``--lossjax-full`` times the complete grid of shapes, dtypes and cases
  instead of the headline one.

Three modes: plain ``pytest`` runs every benchmark once at reduced size (a
smoke test); ``--benchmark-only`` times the headline grid; adding
``--lossjax-full`` times everything. A timed run writes pytest-benchmark's
JSON and the Markdown tables made from it. A whole full run writes them to
``results/benchmarks/STAMP.json`` and ``results/BENCHMARKS.md``; any other
timed run writes ``.benchmarks/lossjax/STAMP.json`` and ``STAMP.md`` beside it
(``--benchmark-json PATH`` puts the pair at ``PATH`` and ``PATH.md``), so a
quick run never overwrites the published tables.

The suite itself is :mod:`lossjax.bench.suite_losses`,
:mod:`lossjax.bench.suite_training` and :mod:`lossjax.bench.suite_fused_head`.
A project runs it as its own by re-exporting them from test modules and
setting ``lossjax_suite = true`` in its pytest configuration (this
repository's ``benchmarks/`` does); elsewhere ``--lossjax-loss`` or
``--lossjax-full`` adds the suite to the collected tests.
"""

from __future__ import annotations

import datetime
import importlib
import pathlib
import sys

import pytest

SUITE = ("lossjax.bench.suite_losses", "lossjax.bench.suite_training",
         "lossjax.bench.suite_fused_head")


def pytest_addoption(parser):
  group = parser.getgroup("lossjax", "lossjax benchmarks")
  group.addoption(
      "--lossjax-loss", action="append", default=[], metavar="MODULE:FUNCTION",
      help="benchmark FUNCTION(logits [B, C], labels [B]) -> [B] from MODULE (importable, "
           "or a .py file in the current folder) beside the built-in losses; repeatable.")
  group.addoption(
      "--lossjax-full", action="store_true", default=False,
      help="with --benchmark-only: the complete grid of shapes, dtypes and cases "
           "(what results/BENCHMARKS.md is made from) instead of the headline grid.")
  group.addoption(
      "--lossjax-results", default=None, metavar="DIR",
      help="where a whole --lossjax-full run writes benchmarks/STAMP.json and "
           "BENCHMARKS.md (default: results/ under the rootdir).")
  parser.addini("lossjax_suite", type="bool", default=False,
                help="this project runs the lossjax benchmark suite as its own tests.")


def active(config) -> bool:
  """Whether this session runs the lossjax benchmark suite."""
  return bool(config.getini("lossjax_suite") or config.getoption("lossjax_loss")
              or config.getoption("lossjax_full"))


def is_timed(config) -> bool:
  """`--benchmark-only`: benchmarks are timed (else each runs once, small)."""
  return bool(config.getoption("benchmark_only", default=False))


def grid(config) -> str:
  """'smoke' (plain pytest), 'headline' (--benchmark-only) or 'full'
  (--benchmark-only --lossjax-full)."""
  if not is_timed(config):
    return "smoke"
  return "full" if config.getoption("lossjax_full") else "headline"


def user_losses(config) -> dict[str, str]:
  """Registry name -> 'MODULE:FUNCTION' of the losses given with --lossjax-loss."""
  return getattr(config, "_lossjax_user_losses", {})


def _whole_suite(config) -> bool:
  """No -k/-m selection and no test paths on the command line."""
  return (not config.option.keyword and not config.option.markexpr
          and config.args_source != pytest.Config.ArgsSource.ARGS)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
  if not hasattr(config.option, "benchmark_only") or not active(config):
    return  # pytest-benchmark missing, or not a lossjax benchmark session
  if config.getoption("lossjax_full") and not is_timed(config):
    raise pytest.UsageError("--lossjax-full times the complete grid: it needs --benchmark-only.")
  if is_timed(config):
    # As `lossjax train` does: one CPU device per core, so that the engine
    # splits its runs over all cores (before anything starts JAX).
    from lossjax import train
    from lossjax.bench import _timing
    train.use_cpu_cores()
    config._lossjax_mmap_threshold = _timing.fresh_pages_for_large_buffers()
    _choose_outputs(config)
  else:
    config.option.benchmark_disable = True
  config._lossjax_user_losses = _register_user_losses(config)


def _choose_outputs(config):
  """Sets the run's JSON path (unless --benchmark-json gave one) and where its
  Markdown goes."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  published = grid(config) == "full" and _whole_suite(config)
  results = pathlib.Path(config.getoption("lossjax_results") or config.rootpath / "results")
  if config.option.benchmark_json is not None:
    json_path = pathlib.Path(config.option.benchmark_json)
    markdown = json_path.with_suffix(".md")
  elif published:
    json_path = results / "benchmarks" / f"{stamp}.json"
    markdown = results / "BENCHMARKS.md"
  else:
    json_path = config.rootpath / ".benchmarks" / "lossjax" / f"{stamp}.json"
    markdown = json_path.with_suffix(".md")
  json_path.parent.mkdir(parents=True, exist_ok=True)
  config.option.benchmark_json = json_path
  config._lossjax_outputs = (json_path, markdown, published)


def _load_user_loss(text: str, folder: pathlib.Path):
  module_name, sep, function_name = text.partition(":")
  if not sep or not module_name or not function_name:
    raise pytest.UsageError(f"--lossjax-loss {text!r}: expected MODULE:FUNCTION, "
                            "e.g. --lossjax-loss mylosses:my_loss.")
  if str(folder) not in sys.path:
    sys.path.insert(0, str(folder))  # a module file in the folder pytest runs in
  try:
    module = importlib.import_module(module_name)
  except ImportError as error:
    raise pytest.UsageError(f"--lossjax-loss {text!r}: cannot import {module_name!r} "
                            f"({error}).") from error
  fn = getattr(module, function_name, None)
  if not callable(fn):
    raise pytest.UsageError(f"--lossjax-loss {text!r}: module {module_name!r} has no "
                            f"function {function_name!r}.")
  return function_name, fn


def _check_user_loss(text: str, fn) -> None:
  """Traces `fn` on a [4, 3] batch (no computation): it must give [4] floats."""
  import jax
  import jax.numpy as jnp
  try:
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct((4, 3), jnp.float32),
                         jax.ShapeDtypeStruct((4,), jnp.int32))
  except Exception as error:  # the user's code: any failure is theirs to see
    raise pytest.UsageError(f"--lossjax-loss {text!r}: calling it as fn(logits [4, 3] float32, "
                            f"labels [4] int32) failed: {type(error).__name__}: {error}") from error
  if not hasattr(out, "shape") or out.shape != (4,) or not jnp.issubdtype(out.dtype, jnp.floating):
    raise pytest.UsageError(f"--lossjax-loss {text!r}: fn(logits [4, 3], labels [4]) must return "
                            f"per-example losses of shape (4,) in a float dtype, got {out}.")


def _register_one(text: str, name: str, fn) -> None:
  """Registers the user's loss `fn` as `name` (`text`: its MODULE:FUNCTION)."""
  from lossjax import losses
  if name in losses.names():
    raise pytest.UsageError(f"--lossjax-loss {text!r}: {name!r} is already a registered loss "
                            f"name ({', '.join(losses.names())}); rename the function.")
  _check_user_loss(text, fn)
  losses.register(losses.LossSpec(name, fn, {}, f"{text} (yours)", "-", None))


def _register_user_losses(config) -> dict[str, str]:
  registered = {}
  for text in config.getoption("lossjax_loss"):
    name, fn = _load_user_loss(text, config.invocation_params.dir)
    if registered.get(name) != text:  # the same flag twice registers once
      _register_one(text, name, fn)
      registered[name] = text
  return registered


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
  """Outside a project that re-exports the suite, --lossjax-loss and
  --lossjax-full bring it in (before -k and -m select from it)."""
  if not (config.getoption("lossjax_loss") or config.getoption("lossjax_full")):
    return
  if any(getattr(getattr(item, "obj", None), "__module__", None) in SUITE for item in items):
    return
  for name in SUITE:
    path = pathlib.Path(importlib.import_module(name).__file__)
    module = pytest.Module.from_parent(session, path=path, nodeid=f"lossjax/bench/{path.name}")
    items.extend(session.genitems(module))


def pytest_unconfigure(config):
  outputs = getattr(config, "_lossjax_outputs", None)
  if outputs is None or not outputs[0].exists():
    return
  json_path, markdown, published = outputs
  from lossjax.bench import report
  report.write_report(json_path, markdown)
  if not published:
    print("\n" + markdown.read_text())
  print(f"benchmark JSON: {json_path}\nbenchmark tables: {markdown}")
  if grid(config) == "full" and not published:
    print("(a partial run: results/BENCHMARKS.md is made from whole --lossjax-full runs only)")


_SESSION_CACHE: dict = {}


@pytest.fixture(scope="session")
def session_cache() -> dict:
  """Measurements later benchmarks of the same run refer to (optax times,
  stream bandwidth, matmul rate)."""
  return _SESSION_CACHE


@pytest.fixture(scope="session", name="timed")
def timed_fixture(request) -> bool:
  """Whether benchmarks are timed (`--benchmark-only`) or run once as a smoke test."""
  return is_timed(request.config)
