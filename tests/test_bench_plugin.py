"""The benchmark plugin in a folder outside the checkout: a user's loss beside the built-ins."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from lossjax.bench import plugin

MY_LOSSES = textwrap.dedent('''
    import jax, jax.numpy as jnp

    def my_loss(logits, labels):
      z = logits.astype(jnp.float32) - 0.5 * jax.nn.one_hot(labels, logits.shape[-1])
      return jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]

    def not_per_example(logits, labels):
      return jnp.mean(logits)
''')


def _pytest(folder, *args):
  # Not this session's pytest settings (xdist's, a PYTEST_ADDOPTS): a fresh run.
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                        cwd=folder, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_a_users_loss_is_timed_beside_the_builtins_and_tabled(tmp_path):
  (tmp_path / "mylosses.py").write_text(MY_LOSSES)
  out = _pytest(tmp_path, "--benchmark-only", "--lossjax-loss", "mylosses:my_loss",
                "-k", "test_loss_throughput and forward and 256x32000 "
                      "and (my_loss or cross_entropy) and not binary")
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  runs = list((tmp_path / ".benchmarks" / "lossjax").glob("*.json"))
  assert len(runs) == 1
  entries = json.loads(runs[0].read_text())["benchmarks"]
  timed = {(e["extra_info"]["loss"], e["extra_info"]["impl"]) for e in entries}
  assert timed == {("my_loss", "user"), ("cross_entropy", "lossjax"), ("cross_entropy", "optax")}
  table = runs[0].with_suffix(".md").read_text()
  assert "| `my_loss` (yours) |" in table and "| `cross_entropy` |" in table
  assert "benchmark tables:" in out.stdout
  assert not (tmp_path / "results").exists()  # a partial run publishes nothing


@pytest.mark.slow
def test_the_plugin_brings_the_suite_into_a_foreign_folder(tmp_path):
  (tmp_path / "mylosses.py").write_text(MY_LOSSES)
  collected = _pytest(tmp_path, "--collect-only", "--lossjax-loss", "mylosses:my_loss")
  assert collected.returncode == 0, collected.stdout[-3000:]
  for test in ("test_loss_throughput[my_loss-value_and_grad-128x10-float32-user]",
               "test_steps_to_accuracy[my_loss]", "test_steps_to_accuracy[cross_entropy]",
               "test_engine_throughput"):
    assert test in collected.stdout, test


@pytest.mark.parametrize("spec, message", [
    ("mylosses", "expected MODULE:FUNCTION"),
    ("nomodule:f", "cannot import 'nomodule'"),
    ("mylosses:nope", "has no function 'nope'"),
    ("mylosses:not_per_example", "must return per-example losses of shape (4,)")])
def test_a_bad_loss_is_named(tmp_path, monkeypatch, spec, message):
  (tmp_path / "mylosses.py").write_text(MY_LOSSES)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "mylosses", raising=False)
  with pytest.raises(pytest.UsageError, match=re.escape(message)):
    _, fn = plugin._load_user_loss(spec, tmp_path)
    plugin._check_user_loss(spec, fn)


def test_a_registered_name_is_refused():
  with pytest.raises(pytest.UsageError, match="'mse' is already a registered loss name"):
    plugin._register_one("mylosses:mse", "mse", lambda logits, labels: logits[:, 0])
