"""Progress bars on stderr for long jobs (rich): training steps, study experiments.

A job opens a :class:`Bar`. Inside :func:`session` (as ``lossjax study``
opens one) every bar is a line of one shared display, with the log lines
printed above it; outside, a bar is its own display. Where stderr is not a
terminal (a log file, CI), rich draws no live display: each bar prints one
line when it closes, and log lines print as they come.
"""

from __future__ import annotations

import contextlib
import sys

_SHARED = None  # the rich Progress of the open session, if any


def _columns():
  from rich import progress
  return (progress.TextColumn("{task.description}"), progress.BarColumn(),
          progress.MofNCompleteColumn(), progress.TextColumn("{task.fields[info]}"),
          progress.TextColumn("elapsed"), progress.TimeElapsedColumn(),
          progress.TextColumn("left"), progress.TimeRemainingColumn())


def _new_display():
  from rich import console, progress
  return progress.Progress(*_columns(), console=console.Console(file=sys.stderr),
                           transient=False)


@contextlib.contextmanager
def session(enabled: bool = True):
  """One display for the bars and log lines of a long job (a study).
  Yields a `log(message)` function that prints above the bars."""
  global _SHARED
  if not enabled or _SHARED is not None:
    yield log
    return
  _SHARED = _new_display()
  try:
    with _SHARED:
      yield log
  finally:
    _SHARED = None


def log(message: str) -> None:
  """A line on stderr, above the bars of an open session."""
  if _SHARED is not None:
    _SHARED.console.print(message, markup=False, highlight=False, soft_wrap=True)
  else:
    print(message, file=sys.stderr, flush=True)


class Bar:
  """`done` of `total` units of one job, its elapsed and remaining time.

  Disabled (``enabled=False``) it does nothing, unless a session is open:
  a study's trainings show their steps without asking."""

  def __init__(self, description: str, total: int, *, enabled: bool = True):
    self._display, self._own = _SHARED, False
    if self._display is None and enabled:
      self._display, self._own = _new_display(), True
      self._display.start()
    if self._display is not None:
      self._task = self._display.add_task(description, total=total, info="")

  def update(self, done: int, info: str = "") -> None:
    if self._display is not None:
      self._display.update(self._task, completed=done, info=info)

  def close(self) -> None:
    if self._display is None:
      return
    if self._own:
      self._display.stop()
    else:
      self._display.remove_task(self._task)
    self._display = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
