"""Result files are written once, atomically: a temporary file, then a rename."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_text_atomically(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes `text` to `path` so that readers see the old file or the new one,
  never a half-written one (an interrupted run loses nothing already there)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
    f.write(text)
    temporary = f.name
  # mkstemp makes the file private (0600); a result file gets the permissions
  # an ordinary open() would give it.
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(temporary, 0o666 & ~umask)
  os.replace(temporary, path)
  return path
