"""Training throughput of the engine vs a per-step Python loop and PyTorch
eager, and steps-to-accuracy of every multiclass loss on mnist5k.

The references run first, so that the engine's entries carry their ratios."""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lossjax import data, losses, models, train
from lossjax.bench._timing import device_facts, full_grid_only, median_seconds, pedantic
from lossjax.bench.cases import THROUGHPUT_CASES, throughput_config
from lossjax.bench.plugin import grid, user_losses

__all__ = ["pytest_generate_tests", "test_matmul_rate", "test_matmul_rate_all_devices",
           "test_python_loop_throughput", "test_pytorch_eager_throughput",
           "test_minimal_program_throughput", "test_engine_throughput",
           "test_engine_one_device_throughput", "test_steps_to_accuracy"]


@functools.lru_cache(maxsize=None)
def _dataset(name):
  return data.load(name)


def test_matmul_rate(benchmark, timed, session_cache):
  """The machine's large float32 matmul rate, the ceiling for compute-bound training."""
  size = 2048 if timed else 256
  a = jax.device_put(np.ones((size, size), np.float32))
  rate = _time_matmul(benchmark, a, timed, session_cache)
  benchmark.extra_info.update({"measure": "matmul", "size": size, "gflop_per_s": rate,
                               **device_facts()})


def test_matmul_rate_all_devices(benchmark, timed, session_cache):
  """One large matmul per device, all at once, as the engine's devices each
  run their own products. With one CPU device per core this may beat one
  matmul threaded over the cores (on 2 cores it did not: 184-189 vs 208-216
  GFLOP/s), so the ceiling is the larger of the two."""
  size, devices = (2048 if timed else 256), jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  a = jax.device_put(np.ones((len(devices), size, size), np.float32),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  rate = _time_matmul(benchmark, a, timed, session_cache)
  benchmark.extra_info.update({"measure": "matmul_all_devices", "size": size,
                               "devices": len(devices), "gflop_per_s": rate, **device_facts()})


def _time_matmul(benchmark, a, timed, session_cache) -> float:
  """GFLOP/s of `a @ a` (square matrices, batched over a leading axis if any);
  the session's matmul ceiling keeps the larger of the rates measured."""
  compiled = jax.jit(jnp.matmul).lower(a, a).compile()
  benchmark.group = "machine"
  pedantic(benchmark, compiled, (a, a), timed=timed, rounds=10)
  size = a.shape[-1]
  rate = 2 * (a.size // size**2) * size**3 / median_seconds(benchmark) / 1e9
  session_cache["matmul_gflops"] = max(rate, session_cache.get("matmul_gflops", 0.0))
  return rate


# Steps-to-accuracy in the headline grid (~20 s a loss here): the article's
# two losses, Hui & Belkin's rescaled MSE and the focal loss; the full grid
# trains every multiclass loss.
HEADLINE_STEPS_LOSSES = ("cross_entropy", "mse", "mse_rescaled", "focal")

# The training cases of each grid: the headline grid leaves out the CNN (a
# minute a case on 2 CPU cores), the one-run and the one-device variants; a smoke run takes
# the smallest case through every benchmark (compilation is most of its time;
# tests/ trains the CNN through the engine).
SMALLEST = "digits-mlp-64-32-10-tanh"
CASES = {"smoke": [SMALLEST], "headline": [c for c in THROUGHPUT_CASES if "mlp" in c],
         "full": list(THROUGHPUT_CASES)}


def pytest_generate_tests(metafunc):
  # The smoke grid compiles fewer programs: each takes ~5 s here.
  which = grid(metafunc.config)
  if "runs" in metafunc.fixturenames:
    metafunc.parametrize("runs", {"smoke": [4], "headline": [16], "full": [1, 16]}[which])
  if "case" in metafunc.fixturenames:
    cases = CASES[which]
    name = metafunc.function.__name__
    if name in ("test_pytorch_eager_throughput", "test_minimal_program_throughput"):
      cases = [c for c in cases if "mlp" in c]  # they have the MLPs only
    if name == "test_engine_one_device_throughput" and which == "headline":
      cases = full_grid_only("the engine on one device is timed with --lossjax-full")
    metafunc.parametrize("case", cases)
  if "loss" in metafunc.fixturenames:
    builtin = {"smoke": ["cross_entropy"], "headline": list(HEADLINE_STEPS_LOSSES),
               "full": losses.names("multiclass")}[which]
    yours = list(user_losses(metafunc.config))
    metafunc.parametrize("loss", builtin + [n for n in yours if n not in builtin])


def _engine(case, runs, steps, session_cache, devices=None) -> train.Trainer:
  """The engine's compiled trainer for a case, built once per session: the
  PyTorch test times it beside PyTorch, the engine test on its own.
  `devices`: the engine's default (all) unless given."""
  key = ("engine", case, runs, steps, None if devices is None else len(devices))
  if key not in session_cache:
    config = throughput_config(case, runs, steps, eval_interval=steps)
    session_cache[key] = train.Trainer(config, dataset=_dataset(config.dataset), devices=devices)
  return session_cache[key]


def _steps(case, timed):
  """The case's steps in a timed run; 10 in a smoke run."""
  return THROUGHPUT_CASES[case][3] if timed else 10


def _loop_inputs(case, steps):
  """Config, dataset, program and each step's batch indices (the engine's)."""
  config = throughput_config(case, 1, steps, eval_interval=steps)
  dataset = _dataset(config.dataset)
  program = train._Program(config, dataset)
  data_key = jax.random.fold_in(jax.random.key(0), 1)
  indices = np.asarray(program.batch_indices(data_key, jnp.arange(steps)))
  return config, dataset, program, indices


# How the Python loop gets its batches: "device" slices them on the device
# before the timed loop (the strongest loop: nothing but the step per
# iteration); "numpy" indexes host arrays every step and passes them to the
# jitted step, as a typical training loop does.
LOOP_BATCHES = ("device", "numpy")


@pytest.mark.parametrize("batches", LOOP_BATCHES)
def test_python_loop_throughput(benchmark, case, batches, timed, session_cache):
  """One run at a time: a jitted step (the engine's, bookkeeping included)
  called from a Python loop."""
  steps = _steps(case, timed)
  config, dataset, program, indices = _loop_inputs(case, steps)
  if batches == "device":
    x_train, y_train = jax.device_put(dataset.x_train), jax.device_put(dataset.y_train)
    batch_list = [(x_train[i], y_train[i]) for i in jax.device_put(indices)]
    next_batch = lambda index: batch_list[index]
  else:
    next_batch = lambda index: (dataset.x_train[indices[index]], dataset.y_train[indices[index]])
  step = jax.jit(program.train_step)
  learning_rate = jnp.float32(0.05)
  key = jax.random.key(0)

  def loop():
    state = program.init(key)
    for index in range(steps):
      state, loss = step(state, learning_rate, jnp.int32(index), *next_batch(index))
    return state

  benchmark.group = f"training {case}"
  pedantic(benchmark, loop, (), timed=timed, rounds=3)
  rate = steps / median_seconds(benchmark)
  session_cache[(f"loop_{batches}", case)] = rate
  benchmark.extra_info.update({"impl": f"python_loop_{batches}", "case": case, "runs": 1,
                               "devices": 1, "steps": steps, "run_steps_per_s": rate, **device_facts()})


def test_pytorch_eager_throughput(benchmark, case, timed, session_cache):
  """The same MLP, loss, optimizer and batches in PyTorch eager on the CPU,
  one run at a time (its threads: PyTorch's default, all cores).

  Each timed round is preceded (untimed, as pytest-benchmark's `setup`) by a
  round of the engine with 16 runs, so that the two are compared in the same
  machine state: PyTorch's rate moved between 603 and 1,005 run-steps/s
  across runs of this suite, more than the ratio being measured."""
  torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -e '.[torch]')")
  if jax.default_backend() != "cpu":
    pytest.skip("the PyTorch comparison is CPU to CPU")
  steps = _steps(case, timed)
  config, dataset, _, indices = _loop_inputs(case, steps)
  sizes = models.mlp_layer_sizes(config.model, dataset.input_shape, dataset.num_classes)
  activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[config.model.activation]
  x_train = torch.from_numpy(dataset.x_train.reshape(len(dataset.x_train), -1))
  y_train = torch.from_numpy(dataset.y_train.astype(np.int64))
  batch_list = [(x_train[i], y_train[i]) for i in torch.from_numpy(indices.astype(np.int64))]

  def loop():
    torch.manual_seed(0)  # a fresh model each round, as the JAX loop's program.init
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
      layers += [torch.nn.Linear(a, b), activation()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-2], sizes[-1]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for x, y in batch_list:
      optimizer.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), y)
      loss.backward()
      optimizer.step()
    return loss.item()

  torch_seconds = []

  def timed_loop():
    started = time.perf_counter()
    loop()
    torch_seconds.append(time.perf_counter() - started)

  engine_runs = 16 if timed else 4
  trainer = _engine(case, engine_runs, steps, session_cache)
  engine_seconds = []

  def engine_round():  # untimed by the fixture: timed here, right before PyTorch's round
    started = time.perf_counter()
    trainer.run()  # returns once its results are on the host
    engine_seconds.append(time.perf_counter() - started)

  benchmark.group = f"training {case}"
  benchmark.extra_info.update({"impl": "pytorch_eager", "case": case, "runs": 1, "steps": steps,
                               "torch_version": torch.__version__,
                               "torch_threads": torch.get_num_threads(), **device_facts()})
  if timed:
    engine_round(), loop()  # warm-up: first-call allocations
    engine_seconds.clear()
  benchmark.pedantic(timed_loop, setup=engine_round, rounds=9 if timed else 1, iterations=1)
  rate = steps / median_seconds(benchmark)
  # PyTorch's rate on this machine is bimodal (~1,000 and ~610 run-steps/s for
  # the mnist5k MLP, in stretches of many rounds, with or without JAX in the
  # process), so its fastest round is kept beside the median.
  best_rate = steps / min(torch_seconds)
  engine_rate = engine_runs * steps / float(np.median(engine_seconds))
  benchmark.extra_info.update({
      "run_steps_per_s": rate, "best_run_steps_per_s": best_rate,
      "alternating_engine_runs": engine_runs,
      "alternating_engine_run_steps_per_s": engine_rate,
      "alternating_engine_devices": len(trainer.devices),
      "alternating_engine_speedup": engine_rate / rate,
      "alternating_engine_speedup_vs_best": engine_rate / best_rate})
  session_cache[("pytorch_eager", case)] = rate


def test_minimal_program_throughput(benchmark, case, runs, timed):
  """The floor under the engine's bookkeeping: the same MLP, cross-entropy and
  SGD in plain JAX (no Flax, no shuffling, no evaluation, no divergence
  checks), runs vmapped and steps scanned over the batches of seed 0 (the
  issue's "vmap over runs + scan over steps" reference)."""
  steps = _steps(case, timed)
  config, dataset, _, indices = _loop_inputs(case, steps)
  sizes = models.mlp_layer_sizes(config.model, dataset.input_shape, dataset.num_classes)
  activation = models.ACTIVATIONS[config.model.activation]
  x_train = jax.device_put(dataset.x_train.reshape(len(dataset.x_train), -1))
  y_train = jax.device_put(dataset.y_train)

  def mean_loss(params, x, y):
    for kernel, bias in params[:-1]:
      x = activation(x @ kernel + bias)
    logits = x @ params[-1][0] + params[-1][1]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1)
                    - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])

  def one_run(key):
    params = [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
              for k, a, b in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:])]

    def step(params, batch):
      grads = jax.grad(mean_loss)(params, x_train[batch], y_train[batch])
      return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads), None

    return jax.lax.scan(step, params, jax.device_put(indices))[0]

  keys = jax.random.split(jax.random.key(0), runs)
  compiled = jax.jit(jax.vmap(one_run)).lower(keys).compile()
  benchmark.group = f"training {case}"
  pedantic(benchmark, compiled, (keys,), timed=timed, rounds=3)
  rate = runs * steps / median_seconds(benchmark)
  benchmark.extra_info.update({"impl": "minimal_vmap_scan", "case": case, "runs": runs,
                               "devices": 1, "steps": steps, "run_steps_per_s": rate, **device_facts()})


def test_engine_throughput(benchmark, case, runs, timed, session_cache):
  """The engine as `lossjax train` runs it: the runs split over every device
  (on a CPU, one device per core: see the root conftest)."""
  _measure_engine(benchmark, case, _engine(case, runs, _steps(case, timed), session_cache),
                  timed, session_cache)


def test_engine_one_device_throughput(benchmark, case, timed, session_cache):
  """The engine with 16 runs (smoke: 4) on one device: the per-device
  efficiency, to set beside the minimal vmap+scan program (also one device)."""
  runs = 16 if timed else 4
  trainer = _engine(case, runs, _steps(case, timed), session_cache, devices=jax.devices()[:1])
  _measure_engine(benchmark, case, trainer, timed, session_cache)


def _measure_engine(benchmark, case, trainer, timed, session_cache):
  config = trainer.config
  runs, steps = len(trainer.seeds), config.steps  # runs: seeds x learning rates
  benchmark.group = f"training {case}"
  history = pedantic(benchmark, trainer.run, (), timed=timed, rounds=3, warmup=False)
  seconds = median_seconds(benchmark)
  rate = runs * steps / seconds
  flops = trainer.program.model.train_flops_per_example * config.batch_size * rate
  info = {"impl": "engine", "case": case, "runs": runs, "steps": steps,
          "devices": len(trainer.devices), "run_steps_per_s": rate, "gflop_per_s": flops / 1e9,
          "compile_seconds": trainer.compile_seconds,
          "final_test_accuracy": float(np.nanmean(history.metrics["test_accuracy"][:, -1])),
          **device_facts()}
  if "matmul_gflops" in session_cache:
    info["fraction_of_matmul_rate"] = flops / 1e9 / session_cache["matmul_gflops"]
  for reference in [f"loop_{batches}" for batches in LOOP_BATCHES] + ["pytorch_eager"]:
    reference_rate = session_cache.get((reference, case))
    if reference_rate:
      info[f"speedup_vs_{reference}"] = rate / reference_rate
  benchmark.extra_info.update(info)


# The study's protocol (lossjax.study): half-decade rates, extended past an
# edge, each loss's rate chosen for speed to the target on validation.
STEPS_TO_ACCURACY_GRID = (0.03162, 0.1, 0.3162, 1.0, 3.162)
TARGET = 0.9
VALIDATION_SUBSET = 500  # examples evaluated every `interval` steps to choose the rate


def test_steps_to_accuracy(benchmark, loss, timed):
  """Steps to test accuracy 0.90 on mnist5k, each loss at the rate that gets
  there fastest on validation: the study's protocol (half-decade grid,
  extended past an edge, a nested bootstrap putting the choice of rate in the
  interval of the median). Evaluated every 5 steps, on a fixed 500-example
  validation subset and the whole test split. The one round times the whole
  tuning (every job, their compilation and evaluations included); the
  measurement is the steps."""
  from lossjax.study import _experiments, _protocol

  steps, interval, seeds, width = (300, 5, 5, 256) if timed else (20, 5, 2, 32)
  full = _dataset("mnist5k")
  dataset = full.replace(x_val=full.x_val[:VALIDATION_SUBSET], y_val=full.y_val[:VALIDATION_SUBSET])
  config = train.TrainConfig(dataset="mnist5k", loss=loss, steps=steps, eval_interval=interval,
                             seeds=(0,), learning_rates=(0.1,), targets=(),
                             model=models.ModelConfig(width=width))
  budget = _experiments.Budget(seeds=seeds, learning_rates=STEPS_TO_ACCURACY_GRID,
                               max_extensions=2)
  variant = _experiments.Variant(loss, config, select="val_speed")
  setting = _experiments.Setting("mnist5k MLP", (variant,), target=TARGET, posthoc=False,
                                 replicates=("A",), dataset=dataset)
  runner = _experiments.Runner(budget, log=lambda message: None)
  benchmark.group = "steps to accuracy (mnist5k MLP)"
  tune = lambda: runner.variant(setting, variant, "A")
  if timed:
    runs = benchmark.pedantic(tune, rounds=1, iterations=1, warmup_rounds=0)
  else:
    runs = benchmark(tune)
  options = dict(select="val_speed")
  median = _protocol.summary(runs, metric="test_steps_to_target", statistic="median", **options)
  reached = _protocol.summary(runs, metric="test_reached_target", **options)
  accuracy = _protocol.summary(runs, metric="test_accuracy", **options)
  chosen = [r for r in runs if _protocol.cell_key(r) == tuple(median["chosen"])]
  benchmark.extra_info.update({
      "loss": loss, "chosen_learning_rate": median["chosen"][1], "position": median["position"],
      "choices": median["choices"], "grid": sorted({r["learning_rate"] for r in runs}),
      "seeds": seeds, "steps_budget": steps, "eval_interval": interval, "target": TARGET,
      "median_steps_to_target": median, "reached_fraction": reached["mean"],
      "never_reached": int(sum(not r["metrics"]["test_reached_target"] for r in chosen)),
      "final_test_accuracy": accuracy, "diverged_runs": int(sum(r["diverged"] for r in runs)),
      **device_facts()})
