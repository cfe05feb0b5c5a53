"""The claims study: one experiment per claim of the article, and its report.

``run_study`` writes one result file per experiment (atomically, when the
experiment completes) under ``OUT/study/``; an interrupted study resumes from
the files already there. ``write_report`` regenerates ``OUT/REPORT.md`` and
the figures from those files alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import time

import jax

from lossjax import _io, _progress
from lossjax.study._experiments import EXPERIMENTS, Budget
from lossjax.study._report import write_report

__all__ = ["Budget", "EXPERIMENTS", "compilation_cache", "run_study", "write_report"]


def _environment() -> dict:
  import flax
  import numpy
  import optax
  return {"python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
          "flax": flax.__version__, "numpy": numpy.__version__, "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
          "machine": platform.machine(),
          "cpu_count": os.cpu_count()}


def compilation_cache() -> str:
  """Turns on JAX's persistent compilation cache (unless one is set) and
  returns its folder: ``$LOSSJAX_CACHE`` or ``~/.cache/lossjax``, then
  ``jax-compilation``.

  The study trains hundreds of small programs that differ only in their
  data, seeds and rates (replicates, edge extensions, initial scales), and
  for such models compiling costs more than training (a digits MLP grid:
  3.4 s to compile, 0.5 s to train). JAX's in-memory cache keys on the
  Python function, which every `Trainer` builds afresh; the persistent cache
  keys on the compiled program itself, so each shape compiles once per
  machine (measured: 5.9 s, then 0.4 s for the same program with other
  seeds, rates and data).
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  root = pathlib.Path(os.environ.get("LOSSJAX_CACHE", pathlib.Path.home() / ".cache" / "lossjax"))
  folder = root / "jax-compilation"
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return str(folder)


def run_study(out: str | os.PathLike = "results", *, quick: bool = False,
              dataset: str = "mnist5k", only: list[str] | None = None,
              log=None, progress: bool = True) -> pathlib.Path:
  """Runs the experiments not yet on disk, then regenerates the report.

  `log(message)` receives a line per experiment and per trained setting
  (default: stderr, above the progress bars). With `progress`, stderr shows
  a bar of the experiments (k of n, elapsed, remaining) and one of the
  training in progress (its runs, steps, remaining). Returns the path of the
  report.
  """
  out = pathlib.Path(out)
  budget = Budget.quick_budget() if quick else Budget()
  mode = "quick" if quick else "full"
  names = only or list(EXPERIMENTS)
  unknown = set(names) - set(EXPERIMENTS)
  if unknown:
    raise ValueError(f"unknown experiment(s) {sorted(unknown)}; available: {', '.join(EXPERIMENTS)}.")
  compilation_cache()
  started = time.perf_counter()
  with _progress.session(progress) as shared_log, \
       _progress.Bar("study: experiments", len(names), enabled=progress) as bar:
    log = log or shared_log
    for index, name in enumerate(names, 1):
      bar.update(index - 1, name)
      path = out / "study" / f"{name}.json"
      if path.exists():
        meta = json.loads(path.read_text()).get("meta", {})
        if meta.get("mode") == mode and meta.get("dataset") == dataset:
          log(f"[{index}/{len(names)}] {name}: already done ({path}), skipped")
          continue
      log(f"[{index}/{len(names)}] {name} ({mode}, {dataset}) ...")
      experiment_started = time.perf_counter()
      result = EXPERIMENTS[name](budget, dataset, log)
      seconds = time.perf_counter() - experiment_started
      result["meta"] = {"experiment": name, "mode": mode, "dataset": dataset,
                        "budget": dataclasses.asdict(budget), "seconds": seconds,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "environment": _environment()}
      _io.write_text_atomically(path, json.dumps(result, separators=(",", ":")))
      log(f"[{index}/{len(names)}] {name} done in {seconds:.0f}s "
          f"(study so far {time.perf_counter() - started:.0f}s)")
    bar.update(len(names), "")
  return write_report(out)
