"""The README and the API docs stay in step with the code."""

import importlib
import inspect
import os
import pathlib
import subprocess
import sys

import pytest

from lossjax import losses

README_PATH = pathlib.Path(__file__).resolve().parents[1] / "README.md"
README = README_PATH.read_text()


def test_every_registered_loss_is_in_the_readme_table():
  for name in losses.names():
    assert f"| `{name}` |" in README, name


def test_readme_commands_match_ci():
  ci = (README_PATH.parent / ".ci" / "run").read_text()
  assert 'pip install -e ".[all,torch]" && pytest -n auto\n' in README
  assert 'pip install -q -e ".[all,torch]" && pytest -n auto\n' in ci


def test_import_lossjax_brings_in_no_tensorflow_tfds_or_pytest():
  import subprocess
  import sys
  code = ("import sys, lossjax, lossjax.losses, lossjax.reduction; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'pytest', 'sklearn', 'mlxtend', 'matplotlib', 'torch'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_readme_is_read_in_five_minutes():
  assert len(README.splitlines()) <= 200


# Modules whose public functions and classes the API reference must cover.
DOCUMENTED_MODULES = ["lossjax", "lossjax.losses", "lossjax.reduction", "lossjax.checking",
                      "lossjax.fused", "lossjax.train", "lossjax.models", "lossjax.data",
                      "lossjax.metrics", "lossjax.study"]


def _public_api() -> dict[str, object]:
  """'module.name' -> object for every public function and class defined in lossjax."""
  api = {}
  for module_name in DOCUMENTED_MODULES:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
      obj = getattr(module, name)
      if ((inspect.isfunction(obj) or inspect.isclass(obj))
          and getattr(obj, "__module__", "").startswith("lossjax")):
        api[f"{module_name}.{name}"] = obj
  return api


def _documented_names(path: pathlib.Path) -> set[str]:
  """Python functions, classes and exceptions in a Sphinx objects.inv (version 2:
  four header lines, then zlib-compressed 'name domain:role priority uri display' lines)."""
  import zlib
  header, _, body = path.read_bytes().partition(b"zlib.\n")
  assert header.startswith(b"# Sphinx inventory version 2"), header[:40]
  names = set()
  for line in zlib.decompress(body).decode().splitlines():
    name, role = line.split(" ", 2)[:2]
    if role in ("py:function", "py:class", "py:exception"):
      names.add(name)
  return names


@pytest.mark.slow
def test_api_docs_build_without_warnings_and_cover_the_public_api(tmp_path):
  pytest.importorskip("sphinx")
  docs = README_PATH.parent / "docs"
  out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        str(docs), str(tmp_path / "html")], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr
  documented = _documented_names(tmp_path / "html" / "objects.inv")
  # An object re-exported by several modules is covered where any of them documents it.
  documented_objects = set()
  for name in documented:
    module_name, _, attribute = name.rpartition(".")
    try:
      documented_objects.add(id(getattr(importlib.import_module(module_name), attribute)))
    except (ImportError, AttributeError):
      continue
  missing = sorted(name for name, obj in _public_api().items() if id(obj) not in documented_objects)
  assert not missing, f"public API missing from docs/api.rst: {missing}"
  assert "lossjax.losses.names" in documented and "lossjax.losses.LossSpec" in documented


@pytest.mark.slow
def test_the_notebook_runs_end_to_end(quick_study):
  """The Colab notebook, every cell, on this CPU in its tiny setting. Its
  study cell runs `lossjax study --quick --only threshold` on the session's
  quick study, so it resumes from the experiment on disk and rewrites the report."""
  tmp_path = quick_study
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  path = README_PATH.parent / "notebooks" / "colab.ipynb"
  notebook = nbformat.read(path, as_version=4)
  env = {"LOSSJAX_NOTEBOOK_TINY": "1", "LOSSJAX_NOTEBOOK_OUT": str(tmp_path),
         # The notebook's shell cells call `lossjax` and `python` from this environment.
         "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
  old = {name: os.environ.get(name) for name in env}
  os.environ.update(env)  # the kernel inherits this process's environment
  try:
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
  finally:
    for name, value in old.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.get("outputs", [])]
  text = "\n".join(output.get("text", "") for output in outputs)
  assert "cross_entropy: test accuracy" in text and "mse: test accuracy" in text
  assert any("image/png" in output.get("data", {}) for output in outputs)  # the plot
  assert (tmp_path / "train.json").exists()
  assert "already done" in text and (tmp_path / "REPORT.md").exists()
