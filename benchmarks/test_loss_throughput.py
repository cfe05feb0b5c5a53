"""The lossjax benchmark suite's `suite_losses`, run as this repository's own tests
(the pytest plugin `lossjax.bench.plugin` sets the grid: see its docstring)."""

from lossjax.bench.suite_losses import *  # noqa: F401,F403
