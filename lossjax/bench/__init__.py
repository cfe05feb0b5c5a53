"""lossjax's benchmark suite (needs the ``bench`` extra).

- :mod:`lossjax.bench.plugin`: the pytest plugin (``--lossjax-loss``, ``--lossjax-full``).
- :mod:`lossjax.bench.suite_losses`, :mod:`lossjax.bench.suite_training`,
  :mod:`lossjax.bench.suite_fused_head`: the benchmarks.
- :mod:`lossjax.bench.report`: a run's JSON to Markdown tables.
"""
