"""The lossjax benchmark suite's `suite_training`, run as this repository's own tests
(the pytest plugin `lossjax.bench.plugin` sets the grid: see its docstring)."""

from lossjax.bench.suite_training import *  # noqa: F401,F403
