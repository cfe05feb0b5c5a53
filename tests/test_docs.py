"""The README's loss table stays in step with the registry."""

import pathlib

from lossjax import losses

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_registered_loss_is_in_the_readme_table():
  for name in losses.names():
    assert f"| `{name}` |" in README, name
