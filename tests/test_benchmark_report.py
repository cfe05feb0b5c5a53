"""The report turns a pytest-benchmark JSON into tables, from data only."""

import json

from lossjax.bench import report


def _bench(name, median, **extra):
  return {"name": name, "stats": {"median": median}, "extra_info": extra}


def test_report_pairs_lossjax_with_optax_and_reports_ratios(tmp_path):
  facts = dict(backend="cpu", device_kind="cpu", device_count=1, jax_version="x")
  run = {"datetime": "2026-11-29T00:00:00", "machine_info": {"cpu": {"brand_raw": "TestCPU", "count": 2}},
         "commit_info": {"id": "abc"}, "benchmarks": [
             _bench("test_stream_read_bandwidth", 0.01, measure="stream_read", gb_per_s=20.0, **facts),
             _bench("test_fresh_output_write", 0.07, measure="fresh_output_write", batch=65536,
                    classes=1000, milliseconds=70.0, gb_per_s=7.5, **facts),
             _bench("test_exp_sum_floor[0]", 0.0036, measure="exp_sum_floor", batch=256,
                    classes=32000, milliseconds=3.6, **facts),
             _bench("test_loss_throughput[a]", 0.004, loss="cross_entropy", impl="optax", mode="forward",
                    batch=4096, classes=1000, dtype="float32", gb_per_s=4.0, **facts),
             _bench("test_loss_throughput[b]", 0.002, loss="cross_entropy", impl="lossjax", mode="forward",
                    batch=4096, classes=1000, dtype="float32", gb_per_s=8.0, **facts),
         ]}
  source = tmp_path / "run.json"
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "TestCPU" in text
  assert "| `cross_entropy` | 2 / 4 (2.00x); 8.0 GB/s (40%) |" in text
  assert "fresh memory on every call" not in text  # the run did not fix malloc's threshold
  run["benchmarks"][0]["extra_info"]["malloc_mmap_threshold"] = 2**20
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "- every buffer of 1 MiB or more is fresh memory on every call" in text
  # The interleaved measurement, when the run has it, is the one shown.
  run["benchmarks"][-1]["extra_info"].update(interleaved_ms=2.5, optax_interleaved_ms=5.0,
                                             ratio_to_optax=2.0, bytes_touched=20_000_000)
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "| `cross_entropy` | 2.5 / 5 (2.00x); 8.0 GB/s (40%) |" in text
  assert "‡" not in text
  # One side's calls faulted in fresh pages, the other's did not: flagged and explained.
  run["benchmarks"][-1]["extra_info"].update(page_faults_per_call=3.0,
                                             optax_page_faults_per_call=4001.0)
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "| `cross_entropy` | 2.5 / 5 (2.00x); ‡ page faults 3 / 4001; 8.0 GB/s (40%) |" in text
  assert text.count(report.FAULT_NOTE) == 1
  # Both faulting alike is no flag.
  run["benchmarks"][-1]["extra_info"]["page_faults_per_call"] = 4001.0
  source.write_text(json.dumps(run))
  assert "‡" not in report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "fresh output, z float32 65536x1000: 70 ms (7.5 GB/s read + written)" in text
  machine_section = text[:text.index("### Loss")]
  assert "cross-entropy forward), float32 256x32000: 3.6 ms" in machine_section
  assert "fresh output" in machine_section


def test_training_table_gives_the_engine_its_ratio_to_every_reference(tmp_path):
  case = dict(case="digits-mlp", steps=500)
  run = {"datetime": "2026-11-29T00:00:00", "machine_info": {"cpu": {"brand_raw": "TestCPU"}},
         "commit_info": {"id": "abc"}, "benchmarks": [
             _bench("test_python_loop_throughput[d]", 1.0, impl="python_loop_device", runs=1,
                    run_steps_per_s=8000.0, **case),
             _bench("test_python_loop_throughput[n]", 1.0, impl="python_loop_numpy", runs=1,
                    run_steps_per_s=2000.0, **case),
             _bench("test_pytorch_eager_throughput[p]", 1.0, impl="pytorch_eager", runs=1,
                    run_steps_per_s=4000.0, **case),
             _bench("test_engine_throughput[e]", 1.0, impl="engine", runs=16, devices=2,
                    run_steps_per_s=40000.0, gflop_per_s=50.0, fraction_of_matmul_rate=0.25,
                    compile_seconds=4.0, **case),
             _bench("test_engine_one_device_throughput[e]", 1.0, impl="engine", runs=16,
                    devices=1, run_steps_per_s=24000.0, **case),
         ]}
  source = tmp_path / "run.json"

  def render() -> str:
    source.write_text(json.dumps(run))
    return report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()

  text = render()
  assert ("| digits-mlp | engine | 16 | 1 | 500 | 24000 | 3.0x | 12.0x | 6.0x | — | — | — |\n"
          "| digits-mlp | engine | 16 | 2 | 500 | 40000 | 5.0x | 20.0x | 10.0x | 50.0 | 25% | 4.0 |"
          in text)
  # Entries from before the devices column: "—".
  assert "| digits-mlp | pytorch_eager | 1 | — | 500 | 4000 | — | — | — | — | — | — |" in text
  assert "called alternately" not in text
  # With the engine timed beside PyTorch in one test, that ratio is stated too.
  run["benchmarks"][2]["extra_info"].update(alternating_engine_runs=16,
                                            alternating_engine_run_steps_per_s=36000.0,
                                            alternating_engine_speedup=9.0)
  text = render()
  assert ("- digits-mlp: engine (16 runs) 36000 run-steps/s vs PyTorch eager 4000: **9.00x**"
          in text)
  run["benchmarks"][2]["extra_info"].update(alternating_engine_devices=2,
                                            best_run_steps_per_s=6000.0,
                                            alternating_engine_speedup_vs_best=6.0)
  text = render()
  assert ("- digits-mlp: engine (16 runs, 2 devices) 36000 run-steps/s vs PyTorch eager 4000: "
          "**9.00x** (its fastest round 6000: 6.00x)" in text)
  # The matmul ceiling is the larger of one matmul and one per device at once.
  run["benchmarks"] += [
      _bench("test_matmul_rate", 1.0, measure="matmul", gflop_per_s=200.0),
      _bench("test_matmul_rate_all_devices", 1.0, measure="matmul_all_devices", devices=2,
             gflop_per_s=250.0)]
  text = render()
  assert ("float32 matmul 2048x2048: 200 GFLOP/s; one per device on 2 devices at once: "
          "250 GFLOP/s" in text)
  assert "(the larger matmul rate above): 250 GFLOP/s." in text


def test_parts_of_a_run_render_as_one_and_an_interrupted_test_is_left_out(tmp_path):
  facts = dict(backend="gpu", device_kind="NVIDIA H200", device_count=1, jax_version="x")
  head = {"datetime": "2026-11-29T00:00:00", "machine_info": {"cpu": {"brand_raw": "HostCPU"}},
          "commit_info": {"id": "abc"}}
  loss = {**head, "benchmarks": [
      _bench("test_loss_throughput[a]", 0.004, loss="cross_entropy", impl="lossjax",
             mode="forward", batch=128, classes=10, dtype="float32", gb_per_s=1.0, **facts),
      # Timed, then interrupted before its facts were recorded: no row, no crash.
      _bench("test_loss_throughput[b]", 0.002),
  ]}
  training = {**head, "benchmarks": [
      _bench("test_matmul_rate", 0.001, measure="matmul", gflop_per_s=50000.0, **facts),
      _bench("test_engine_throughput[e]", 1.0, impl="engine", runs=16, case="digits-mlp",
             steps=500, run_steps_per_s=40000.0, **facts),
  ]}
  parts = [tmp_path / "loss.json", tmp_path / "train.json"]
  for path, run in zip(parts, (loss, training)):
    path.write_text(json.dumps(run))
  destination = tmp_path / "GPU.md"
  assert report.main([str(parts[0]), str(parts[1]), str(destination)]) == 0
  text = destination.read_text()
  assert "backend `gpu` (NVIDIA H200" in text
  assert "| `cross_entropy` | 4 |" in text
  assert "float32 matmul 2048x2048: 50000 GFLOP/s" in text
  assert "| digits-mlp | engine | 16 | — | 500 | 40000 |" in text
  assert "### Steps to test accuracy" not in text  # no such entries: no empty table
  assert report.main([str(parts[0]), "a.md", "b.md"]) == 2


def test_each_loss_is_divided_by_the_floor_of_its_kind(tmp_path):
  facts = dict(backend="cpu", device_kind="cpu", device_count=1, jax_version="x")
  shape = dict(batch=256, classes=32000, dtype="float32")
  run = {"datetime": "2026-12-02T00:00:00", "machine_info": {"cpu": {"brand_raw": "TestCPU"}},
         "commit_info": {"id": "abc"}, "benchmarks": [
             _bench("test_loss_floor[s]", 0.004, measure="loss_floor", kind="softmax",
                    milliseconds=4.0, **shape, **facts),
             _bench("test_loss_floor[r]", 0.001, measure="loss_floor", kind="read",
                    milliseconds=1.0, **shape, **facts),
             _bench("test_gradient_write_floor[w]", 0.002, measure="gradient_write_floor",
                    milliseconds=2.0, **shape, **facts),
             _bench("test_loss_throughput[a]", 0.006, loss="cross_entropy", impl="lossjax",
                    mode="forward", floor_kind="softmax", **shape, **facts),
             _bench("test_loss_throughput[b]", 0.009, loss="cross_entropy", impl="lossjax",
                    mode="value_and_grad", floor_kind="softmax", **shape, **facts),
             _bench("test_loss_throughput[c]", 0.005, loss="mse", impl="lossjax",
                    mode="forward", floor_kind="read", **shape, **facts),
         ]}
  source = tmp_path / "run.json"
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  # 6 ms over the 4 ms softmax floor; value_and_grad: 9 ms over 4 + 2 ms.
  assert "| `cross_entropy` | softmax | 1.50x | 1.50x |" in text
  assert "| `mse` | read | 5.00x | — |" in text
  assert "| `cross_entropy` | 6; 1.50x softmax floor |" in text
  assert text.count(report.FLOOR_NOTE) == 1  # under the summary table
  # The ratio measured with the floor called alternately in the loss's test wins.
  run["benchmarks"][3]["extra_info"].update(ratio_to_floor=1.25, floor_ms=4.4)
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "| `cross_entropy` | softmax | 1.25x | 1.50x |" in text
  assert "| `cross_entropy` | 6; 1.25x softmax floor |" in text


def test_steps_table_gives_each_losss_chosen_rate_and_median_with_its_interval(tmp_path):
  facts = dict(backend="cpu", device_kind="cpu", device_count=1, jax_version="x")
  steps = dict(target=0.9, grid=[0.03162, 0.1, 0.3162, 1.0, 3.162], seeds=5, steps_budget=300,
               eval_interval=5, never_reached=1, reached_fraction=0.8, **facts)
  run = {"datetime": "2026-12-02T00:00:00", "machine_info": {"cpu": {"brand_raw": "TestCPU"}},
         "commit_info": {"id": "abc"}, "benchmarks": [
             _bench("test_steps_to_accuracy[cross_entropy]", 12.0, loss="cross_entropy",
                    chosen_learning_rate=0.3162, position="interior",
                    choices={"0.3162": 0.7, "1": 0.3},
                    median_steps_to_target={"mean": 45.0, "low": 40.0, "high": 55.0},
                    final_test_accuracy={"mean": 0.93}, **steps)]}
  source = tmp_path / "run.json"
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert ("| `cross_entropy` | 0.3162 | interior | 0.3162 70%, 1 30% | 45 [40, 55] | 1/5 | "
          "0.930 | 12.0 |") in text
  assert "extended past an edge" in text


def test_a_case_optax_cannot_build_is_marked(tmp_path):
  facts = dict(backend="cpu", device_kind="cpu", device_count=1, jax_version="x")
  shape = dict(batch=128, classes=10, dtype="bfloat16", mode="value_and_grad")
  run = {"datetime": "2026-12-02T00:00:00", "machine_info": {"cpu": {"brand_raw": "TestCPU"}},
         "commit_info": {"id": "abc"}, "benchmarks": [
             _bench("test_loss_throughput[s]", 0.001, loss="sparsemax", impl="lossjax",
                    optax_fails="TypeError: Custom JVP rule", floor_kind="read", **shape,
                    **facts)]}
  source = tmp_path / "run.json"
  source.write_text(json.dumps(run))
  text = report.write_report(source, tmp_path / "BENCHMARKS.md").read_text()
  assert "optax fails¶" in text and report.OPTAX_FAILS_NOTE in text


def test_interleaved_medians_take_more_rounds_of_fast_calls_within_a_budget():
  import time

  import jax.numpy as jnp

  from lossjax.bench import _timing
  calls = {"fast": 0, "slow": 0}

  def counted(name, seconds):
    def call():
      calls[name] += 1
      time.sleep(seconds)
      return jnp.zeros(())
    return call

  # Calls of microseconds: every round the budget allows, up to the most.
  _timing.interleaved_medians({"fast": counted("fast", 0.0)}, (), rounds=5, warmup=1,
                              budget_s=30.0, most_rounds=12)
  assert calls["fast"] == 1 + 12
  # Calls longer than the budget: the minimum only; no budget: the minimum too.
  _timing.interleaved_medians({"slow": counted("slow", 0.02)}, (), rounds=3, warmup=1,
                              budget_s=0.01, most_rounds=12)
  assert calls["slow"] == 1 + 3
  calls["fast"] = 0
  _timing.interleaved_medians({"fast": counted("fast", 0.0)}, (), rounds=3)
  assert calls["fast"] == 3


def test_round_ratio_is_the_median_of_each_rounds_ratio():
  import numpy as np

  from lossjax.bench import _timing
  # A burst of load from the third round on: it slows the loss's calls a round
  # before the floor's. Each call's median sees the burst (3 over 0.5: 6x);
  # the ratios within rounds do not.
  loss, floor, write = [1, 1, 3, 3, 3], [0.5, 0.5, 0.5, 1.5, 1.5], [0.5, 0.5, 0.5, 1.5, 1.5]
  assert np.median(loss) / np.median(floor) == 6.0
  assert _timing.round_ratio(loss, floor) == 2.0
  assert _timing.round_ratio(loss, floor, write) == 1.0  # over the floor plus the write
