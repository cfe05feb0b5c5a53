"""The README's loss table stays in step with the registry."""

import pathlib

from lossjax import losses

README_PATH = pathlib.Path(__file__).resolve().parents[1] / "README.md"
README = README_PATH.read_text()


def test_every_registered_loss_is_in_the_readme_table():
  for name in losses.names():
    assert f"| `{name}` |" in README, name


def test_the_colab_notebook_calls_the_cli_with_flags_that_exist():
  import json
  import shlex

  from lossjax import cli
  notebook = json.loads((README_PATH.parent / "notebooks" / "colab.ipynb").read_text())
  commands = [line for cell in notebook["cells"] if cell["cell_type"] == "code"
              for line in "".join(cell["source"]).splitlines() if line.startswith("!lossjax ")]
  assert commands
  for command in commands:
    cli.build_parser().parse_args(shlex.split(command)[1:])  # exits on an unknown flag


def test_readme_commands_match_ci():
  ci = (README_PATH.parent / ".ci" / "run").read_text()
  assert 'pip install -e ".[all,torch]" && pytest\n' in README
  assert 'pip install -q -e ".[all,torch]" && pytest' in ci


def test_import_lossjax_brings_in_no_tensorflow_tfds_or_pytest():
  import subprocess
  import sys
  code = ("import sys, lossjax, lossjax.losses, lossjax.reduction; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'pytest', 'sklearn', 'mlxtend', 'matplotlib', 'torch'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
