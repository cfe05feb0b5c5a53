import os
import stat

from lossjax import _io


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "deeper" / "result.json"
  _io.write_text_atomically(path, "first")
  _io.write_text_atomically(path, "second")
  assert path.read_text() == "second"
  assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_atomic_write_gives_ordinary_file_permissions(tmp_path):
  umask = os.umask(0o022)
  try:
    path = _io.write_text_atomically(tmp_path / "result.json", "{}")
  finally:
    os.umask(umask)
  assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
