"""Front door of the benchmark suite.

``pytest --benchmark-only``: full sizes, on one JAX CPU device per core (as
``lossjax train``); the run's JSON goes to ``results/benchmarks/`` and
``results/BENCHMARKS.md`` is regenerated from it.
Plain ``pytest``: every benchmark runs once at reduced size (a smoke test), so
CI catches a broken benchmark without spending minutes timing it.
"""

import datetime
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def full_benchmarks(config) -> bool:
  return bool(config.getoption("benchmark_only", default=False))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
  if not hasattr(config.option, "benchmark_only"):
    return  # pytest-benchmark not installed
  if full_benchmarks(config):
    # As `lossjax train` does: one CPU device per core, so that the engine
    # splits its runs over all cores (before anything starts JAX).
    from lossjax import train
    train.use_cpu_cores()
    if config.option.benchmark_json is None:
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
      (RESULTS / "benchmarks").mkdir(parents=True, exist_ok=True)
      config.option.benchmark_json = RESULTS / "benchmarks" / f"{stamp}.json"
      config._lossjax_benchmark_json = config.option.benchmark_json
  else:
    config.option.benchmark_disable = True


def _whole_suite(config) -> bool:
  """No -k/-m selection and no test paths on the command line."""
  return (not config.option.keyword and not config.option.markexpr
          and config.args_source != pytest.Config.ArgsSource.ARGS)


def pytest_unconfigure(config):
  path = getattr(config, "_lossjax_benchmark_json", None)
  if path is None or not pathlib.Path(path).exists():
    return
  if not _whole_suite(config):
    print(f"\nbenchmark JSON: {path}\n(a partial run: results/BENCHMARKS.md left as it was; "
          f"`python -m benchmarks.report {path}` renders this run)")
    return
  from benchmarks import report
  out = report.write_report(pathlib.Path(path), RESULTS / "BENCHMARKS.md")
  print(f"\nbenchmark JSON: {path}\nbenchmark tables: {out}")
