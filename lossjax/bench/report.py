"""Turns a pytest-benchmark JSON into ``results/BENCHMARKS.md``.

Usage: ``python -m lossjax.bench.report [RUN.json ...] [OUT.md]`` (default: the newest file
in ``results/benchmarks/`` under the current folder, written to ``results/BENCHMARKS.md``).
Several JSONs render as one run: the parts of one session on one machine
(``benchmarks/device_check.sh`` writes two). Every number comes from the JSON.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections import defaultdict

from lossjax._io import write_text_atomically

RESULTS = pathlib.Path("results")


def _ms(seconds) -> str:
  return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def _num(value, fmt="{:.3g}") -> str:
  return "—" if value is None else fmt.format(value)


def _by_test(benchmarks, prefix, needs):
  """The entries of one test function; a test interrupted (Ctrl-C, a time
  limit) after its timing but before it recorded `needs` is left out."""
  return [b for b in benchmarks if b["name"].startswith(prefix) and needs in b["extra_info"]]


def _machine(run) -> list[str]:
  info, commit = run.get("machine_info", {}), run.get("commit_info", {})
  cpu = info.get("cpu", {})
  facts = next((b["extra_info"] for b in run["benchmarks"] if "backend" in b["extra_info"]), {})
  return [
      f"- Run: {run.get('datetime', '?')} (UTC), commit `{str(commit.get('id', '?'))[:10]}`"
      f"{' (dirty tree)' if commit.get('dirty') else ''}",
      f"- Machine: {cpu.get('brand_raw', info.get('processor', '?'))}, "
      f"{cpu.get('count', '?')} logical CPUs, {info.get('system', '?')} {info.get('release', '')}",
      f"- Python {info.get('python_version', '?')}, JAX {facts.get('jax_version', '?')}, "
      f"backend `{facts.get('backend', '?')}` ({facts.get('device_kind', '?')}, "
      f"{facts.get('device_count', '?')} device(s))",
      "- Times are medians over fixed rounds (`benchmark.pedantic`), compilation excluded, "
      "every round ends with `block_until_ready`.",
  ]


# A cell is flagged when one side's median call faulted at least this many
# pages (1 MiB) and the other side's fewer than half as many.
FAULT_GAP_PAGES = 256


def _fault_gap(info) -> str:
  """'; ‡ page faults A / B' where one program's calls took fresh pages from
  the OS and the other's mostly did not, else ''."""
  ours, theirs = info.get("page_faults_per_call"), info.get("optax_page_faults_per_call")
  if ours is None or theirs is None:
    return ""
  high, low = max(ours, theirs), min(ours, theirs)
  if high < FAULT_GAP_PAGES or low > high / 2:
    return ""
  return f"; ‡ page faults {ours:.0f} / {theirs:.0f}"


OPTAX_FAILS_NOTE = ("¶: optax's program for this case does not build (its "
                    "multiclass_sparsemax_loss cannot be differentiated in bfloat16: its custom "
                    "JVP returns a bfloat16 tangent for a float32 output); lossjax is timed alone.")
FAULT_NOTE = ("‡: the median call of one of the two faulted in fresh memory pages from the OS "
              "and the other's did not (minor page faults per call, lossjax / optax; a 4 KiB "
              "page each, ~1 µs each on the 2-core CPU). Where the run fixed malloc's mmap "
              "threshold (see above) every large buffer is fresh on every call, so the faults "
              "belong to the program: optax's forward at 65536x1000 is one fused kernel with a "
              "logits-sized scratch buffer, 262 MB and 64,002 faults a call, where lossjax's "
              "needs none. Without it (older runs), a buffer below 32 MiB came fresh or reused "
              "by the allocator's state, and there the cell's ratio measured the allocator as "
              "much as the loss.")


def _floors(benchmarks) -> tuple[dict, dict]:
  """(kind, batch, classes, dtype) -> forward floor ms, and
  (batch, classes, dtype) -> gradient-write ms, from this run's floor tests."""
  forward, write = {}, {}
  for b in benchmarks:
    e = b["extra_info"]
    if e.get("measure") == "loss_floor":
      forward[(e["kind"], e["batch"], e["classes"], e["dtype"])] = e["milliseconds"]
    elif e.get("measure") == "gradient_write_floor":
      write[(e["batch"], e["classes"], e["dtype"])] = e["milliseconds"]
  return forward, write


def floor_ms(info, floors) -> float | None:
  """The floor a loss entry is held to: its kind's forward floor at its shape
  and dtype, plus the fresh gradient write for value_and_grad."""
  forward, write = floors
  key = (info["batch"], info["classes"], info["dtype"])
  base = forward.get((info.get("floor_kind"), *key))
  if base is None or info["mode"] == "forward":
    return base
  return None if key not in write else base + write[key]


def _loss_ms(median, info) -> float:
  return info["interleaved_ms"] if "interleaved_ms" in info else median * 1e3


def floor_ratio(median, info, floors) -> float | None:
  """A loss entry's time over its floor: the ratio measured with the floor
  called alternately in the loss's own test where the run has it (older result
  files do not), else its median over the floor tests' times."""
  if info.get("ratio_to_floor") is not None:
    return info["ratio_to_floor"]
  floor = floor_ms(info, floors)
  return _loss_ms(median, info) / floor if floor else None


FLOOR_NOTE = ("÷ floor: lossjax's time over the least arithmetic its formula needs at that "
              "shape and dtype, the loss and its floor called alternately in the loss's own test "
              "(each floor is also timed alone, `test_loss_floor`, in the JSON): a read of the "
              "logits and "
              "labels for losses without transcendental functions (`read`; for the binary "
              "ones, whose labels are as many as their logits, `binary_read`: the logits "
              "signed by their labels, (1 - 2y) z, and summed), exponentials "
              "relative to a per-row shift and row sums for softmax losses (the fastest of a "
              "plain program shifted by the row max, one shifted by the true class's logit, "
              "lossjax's log-normaliser and, since 2026-12-07, lossjax's CPU kernel of the "
              "softmax statistics, whose exponential runs faster than XLA's), an elementwise "
              "softplus of the signed logits for "
              "sigmoid losses (`sigmoid`; `sigmoid_focal` adds the exponential of focal's "
              "(1 - p_t)^gamma; the binary floors pair each label with its logit since "
              "2026-12-07, and summed the two apart before), "
              "and for sparsemax (`threshold`) the faster of the read and XLA's row max and "
              "one pass of relu(z - tau)^2 at a per-row threshold (lossjax's CPU kernel beats "
              "the latter since 2026-12-07); for "
              "value_and_grad "
              "plus the write of a fresh logits-sized gradient (`test_gradient_write_floor`), "
              "page faults included: every call's gradient is a fresh buffer.")


def _floor_table(benchmarks) -> list[str]:
  """Every loss's time over its floor, forward and value_and_grad, at every
  shape and dtype that has a floor in this run."""
  floors = _floors(benchmarks)
  ratios = defaultdict(dict)  # loss -> (dtype, shape, mode) -> ratio
  for b in _by_test(benchmarks, "test_loss_throughput", "loss"):
    e = b["extra_info"]
    ratio = (floor_ratio(b["stats"]["median"], e, floors)
             if e["impl"] in ("lossjax", "user") else None)
    if ratio:
      ratios[e["loss"]][(e["dtype"], e["batch"], e["classes"], e["mode"])] = (
          ratio, e["floor_kind"])
  columns = sorted({key for by in ratios.values() for key in by},
                   key=lambda k: (k[0] != "float32", k[0], k[1] * k[2], k[3] != "forward"))
  if not columns:
    return []
  head = [f"{'fwd' if m == 'forward' else 'v&g'} {b}x{c} {d}" for d, b, c, m in columns]
  lines = ["### Loss time ÷ its floor", "",
           "Each loss's time over the floor of its kind (below the table), the two called "
           "alternately in the loss's test (the median over rounds of each round's ratio); "
           "1.00x would be the floor itself.", "",
           "| loss | floor | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(columns)]
  for loss, by in ratios.items():
    kind = next(iter(by.values()))[1]
    lines.append(f"| `{loss}` | {kind} | "
                 + " | ".join(f"{by[c][0]:.2f}x" if c in by else "—" for c in columns) + " |")
  return lines + ["", FLOOR_NOTE, ""]


def _loss_tables(benchmarks, stream) -> list[str]:
  floors = _floors(benchmarks)
  rows = defaultdict(dict)  # (mode, dtype) -> loss -> shape -> impl -> info
  shapes = set()
  for b in _by_test(benchmarks, "test_loss_throughput", "loss"):
    e = b["extra_info"]
    shape = (e["batch"], e["classes"])
    shapes.add(shape)
    rows[(e["mode"], e["dtype"])].setdefault(e["loss"], {}).setdefault(shape, {})[e["impl"]] = (
        b["stats"]["median"], e)
  shapes = sorted(shapes, key=lambda s: s[0] * s[1])
  lines = []
  for (mode, dtype), by_loss in sorted(rows.items()):
    table_start = len(lines)
    lines += [f"### Loss {mode}, {dtype}", "",
              "Median ms per call, lossjax / optax, the two called alternately in one test "
              "(speedup = optax time ÷ lossjax time, the median over rounds of each round's "
              "ratio; > 1 means lossjax is faster); lossjax "
              "alone where optax has no such loss. GB/s = bytes touched ÷ lossjax's time shown"
              + (f"; % = share of the measured {stream:.1f} GB/s streaming read." if stream else "."),
              "",
              "| loss | " + " | ".join(f"{b}x{c}" for b, c in shapes) + " |",
              "|---|" + "---|" * len(shapes)]
    for loss, by_shape in by_loss.items():
      cells = []
      for shape in shapes:
        impls = by_shape.get(shape, {})
        mine = next((impls[impl] for impl in ("lossjax", "user") if impl in impls), None)
        if mine is None:
          cells.append("skipped")
          continue
        ours, info = mine
        cell = f"{_ms(ours)}"
        if "ratio_to_optax" in info:  # both called alternately in one test
          cell = (f"{_num(info['interleaved_ms'])} / {_num(info['optax_interleaved_ms'])} "
                  f"({info['ratio_to_optax']:.2f}x){_fault_gap(info)}")
        elif "optax" in impls:
          theirs, _ = impls["optax"]
          cell += f" / {_ms(theirs)} ({theirs / ours:.2f}x)"
        elif "optax_fails" in info:
          cell += " / optax fails¶"
        gbs = info.get("gb_per_s")
        if "interleaved_ms" in info:
          gbs = info["bytes_touched"] / info["interleaved_ms"] / 1e6
        if gbs and shape[0] * shape[1] >= 4_000_000:
          cell += f"; {gbs:.1f} GB/s" + (f" ({100 * gbs / stream:.0f}%)" if stream else "")
        ratio = floor_ratio(ours, info, floors)
        if ratio:
          cell += f"; {ratio:.2f}x {info['floor_kind']} floor"
        cells.append(cell)
      yours = any("user" in impls for impls in by_shape.values())
      lines.append(f"| `{loss}`{' (yours)' if yours else ''} | " + " | ".join(cells) + " |")
    if any("‡" in line for line in lines[table_start:]):
      lines += ["", FAULT_NOTE]
    if any("¶" in line for line in lines[table_start:]):
      lines += ["", OPTAX_FAILS_NOTE]
    lines.append("")
  return lines


def _training_table(benchmarks, ceiling) -> list[str]:
  entries = [b["extra_info"] for b in _by_test(benchmarks, "test_engine_", "run_steps_per_s")
             + _by_test(benchmarks, "test_minimal_program", "run_steps_per_s")
             + _by_test(benchmarks, "test_python_loop", "run_steps_per_s")
             + _by_test(benchmarks, "test_pytorch_eager", "run_steps_per_s")]
  if not entries:
    return []
  lines = ["### Training throughput (run-steps per second)", "",
           "Engine: all runs vmapped (CNN on CPU: looped inside the program), steps scanned, "
           "evaluation inside the program; the runs are split over `devices` (on a CPU, one "
           "device per core unless one is asked for). Python loop: one run, the engine's jitted step per "
           "Python iteration, batches sliced on the device beforehand (`device`) or indexed from "
           "NumPy arrays every step (`numpy`). PyTorch eager: the same MLP, loss, SGD and "
           "batches, one run at a time; runs one after another go at the same rate." +
           (" Minimal vmap+scan (MLPs): the same MLP, cross-entropy and SGD in plain JAX, runs "
            "vmapped and steps scanned with no shuffling, evaluation or divergence checks: the "
            "floor under the engine's bookkeeping."
            if any(e["impl"] == "minimal_vmap_scan" for e in entries) else "") +
           (f" Matmul ceiling measured in this run (the larger matmul rate above): "
            f"{ceiling:.0f} GFLOP/s." if ceiling else ""), "",
           "| case | impl | runs | devices | steps | run-steps/s | vs loop (device) | "
           "vs loop (numpy) | vs PyTorch | GFLOP/s | of matmul rate | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  programs = ("engine", "minimal_vmap_scan")  # many runs in one program
  references = {(e["impl"], e["case"]): e["run_steps_per_s"] for e in entries
                if e["impl"] not in programs}
  for e in sorted(entries, key=lambda e: (e["case"], e["impl"], e["runs"], e.get("devices", 0))):
    ratios = [e["run_steps_per_s"] / references[(impl, e["case"])]
              if e["impl"] in programs and (impl, e["case"]) in references else None
              for impl in ("python_loop_device", "python_loop_numpy", "pytorch_eager")]
    lines.append(
        f"| {e['case']} | {e['impl']} | {e['runs']} | {_num(e.get('devices'), '{}')} | "
        f"{e['steps']} | {e['run_steps_per_s']:.0f} | "
        + " | ".join(_num(r, "{:.1f}x") for r in ratios) + " | "
        f"{_num(e.get('gflop_per_s'), '{:.1f}')} | "
        f"{_num(e.get('fraction_of_matmul_rate'), '{:.0%}')} | {_num(e.get('compile_seconds'), '{:.1f}')} |")
  alternating = [e for e in entries if "alternating_engine_speedup" in e]
  if alternating:
    lines += ["", "Engine vs PyTorch eager called alternately in one test (an engine round right "
              "before each PyTorch round, so both see the same machine state; the table's "
              "`vs PyTorch` divides rates measured minutes apart):", ""]
    lines += [f"- {e['case']}: engine ({e['alternating_engine_runs']} runs"
              + (f", {e['alternating_engine_devices']} devices"
                 if e.get("alternating_engine_devices", 1) > 1 else "") + ") "
              f"{e['alternating_engine_run_steps_per_s']:.0f} run-steps/s vs PyTorch eager "
              f"{e['run_steps_per_s']:.0f}: **{e['alternating_engine_speedup']:.2f}x**"
              + (f" (its fastest round {e['best_run_steps_per_s']:.0f}: "
                 f"{e['alternating_engine_speedup_vs_best']:.2f}x)"
                 if "best_run_steps_per_s" in e else "")
              for e in sorted(alternating, key=lambda e: e["case"])]
  return lines + [""]


FUSED_IMPLS = ("lossjax_forward", "lossjax_recompute", "optax_materialised", "torch_chunked",
               "torch_reference")


def _mib(value) -> str:
  return "—" if value is None else f"{value / 2**20:,.0f} MiB"


def _fused_head_table(benchmarks, ceiling) -> list[str]:
  entries = [b["extra_info"] for b in _by_test(benchmarks, "test_fused_head", "milliseconds")]
  if not entries:
    return []
  lines = ["### Fused linear + cross-entropy heads (value_and_grad of the mean w.r.t. hidden "
           "and weight)", "",
           "All implementations called alternately in one test, after an untimed call each "
           "(median of the rounds). `fused_linear_loss(..., reduction=\"mean\")` with "
           "`lossjax_forward`: gradients computed in the forward pass (three products); "
           "`lossjax_recompute`: logits recomputed in the backward pass (four products, the "
           "per-example path); *(auto)* marks the one `strategy=\"auto\"` takes there, which "
           "`vs lossjax` compares with; "
           "`optax_materialised`: optax's cross-entropy on `h @ W` under `jit`; PyTorch 2.13's "
           "`linear_cross_entropy` with `LinearCrossEntropyOptions()` (chunked) and without "
           "(reference). Memory: XLA's temporary bytes (`compiled.memory_analysis()`); for "
           "PyTorch, the peak RSS growth of one call in a fresh process. Floor: three "
           "products of 2 N D V flops"
           + (f", as a share of the {ceiling:.0f} GFLOP/s matmul rate measured in this run."
              if ceiling else "."), "",
           "| N x D x V | dtype | impl | ms | vs optax | vs lossjax | memory | of matmul rate |",
           "|---|---|---|---|---|---|---|---|"]
  for e in sorted(entries, key=lambda e: (e["classes"], e["dtype"] != "float32")):
    ms = e["milliseconds"]
    shape = f"{e['rows']}x{e['features']}x{e['classes']}"
    auto = e["auto"]
    for impl in FUSED_IMPLS:
      memory = (e["xla_temp_bytes"].get(impl) if impl in e["xla_temp_bytes"]
                else e.get("torch_peak_rss_growth_bytes", {}).get(impl))
      if impl not in ms and memory is None:
        continue
      mine = ms.get(impl)
      rate = (e["floor_flops"] / (mine / 1e3) / 1e9) if mine else None
      cells = [shape, e["dtype"], f"`{impl}`" + (" *(auto)*" if impl == auto else ""),
               _num(mine, "{:,.0f}") if mine else "not timed",
               _num(ms["optax_materialised"] / mine, "{:.2f}x") if mine and "optax_materialised" in ms else "—",
               _num(mine / ms[auto], "{:.2f}x") if mine and impl != auto else "—",
               _mib(memory) + (" (RSS)" if impl.startswith("torch") and memory is not None else ""),
               _num(rate / ceiling, "{:.0%}") if rate and ceiling else "—"]
      lines.append("| " + " | ".join(cells) + " |")
  for e in entries:
    if "torch_not_timed" in e:
      lines += ["", f"PyTorch not timed at {e['rows']}x{e['features']}x{e['classes']} "
                f"{e['dtype']}: {e['torch_not_timed']}."]
  lines += ["", "`vs optax` = optax's time ÷ this one's (> 1: faster than optax); `vs lossjax` = "
            "this one's time ÷ lossjax's (> 1: lossjax is faster). Where the materialised program "
            "is not timed, its memory is from compiling it."]
  return lines + [""]


def _steps_table(benchmarks) -> list[str]:
  entries = _by_test(benchmarks, "test_steps_to_accuracy", "loss")
  earlier = [b for b in entries if "median_steps_to_target" not in b["extra_info"]]
  entries = [b for b in entries if b not in earlier]
  if not entries:
    return ([f"(Steps to accuracy: {len(earlier)} entries of the first protocol, a fixed "
             "3-rate grid, not shown; rerun the benchmark.)", ""] if earlier else [])
  first = entries[0]["extra_info"]
  lines = [f"### Steps to test accuracy {first['target']:g} on mnist5k (MLP 784-256-10, SGD "
           "momentum 0.9, batch 128)", "",
           f"Each loss's rate is the one that reaches {first['target']:g} soonest on validation, "
           f"from half-decades {first['grid'][0]:g} to {first['grid'][-1]:g}, extended past an "
           f"edge (the study's protocol); {first['seeds']} seeds; budget "
           f"{first['steps_budget']} steps, evaluated every {first['eval_interval']} steps. "
           "Medians with a nested-bootstrap 95% interval (the choice of rate inside it); a seed "
           "that misses the target counts at one interval past the budget.", "",
           "| loss | lr | position | rate chosen in (bootstrap) | median steps | seeds missing "
           "the target | final test acc | tuning s |", "|---|---|---|---|---|---|---|---|"]
  for b in entries:
    e = b["extra_info"]
    median, accuracy = e["median_steps_to_target"], e["final_test_accuracy"]
    interval = (f" [{median['low']:.0f}, {median['high']:.0f}]" if median.get("low") is not None
                else "")
    choices = ", ".join(f"{k} {v:.0%}" for k, v in sorted(e["choices"].items(),
                                                            key=lambda kv: -kv[1])[:3])
    lines.append(
        f"| `{e['loss']}` | {e['chosen_learning_rate']:g} | {e['position']} | {choices} | "
        f"{median['mean']:.0f}{interval} | {e['never_reached']}/{e['seeds']} | "
        f"{accuracy['mean']:.3f} | {b['stats']['median']:.1f} |")
  return lines + [""]


def _shown(path: pathlib.Path) -> str:
  here, path = pathlib.Path.cwd(), pathlib.Path(path).resolve()
  return f"`{path.relative_to(here) if path.is_relative_to(here) else path}`"


def render(run: dict, sources: list[pathlib.Path]) -> str:
  benchmarks = run["benchmarks"]
  stream = next((b["extra_info"]["gb_per_s"] for b in benchmarks
                 if b["extra_info"].get("measure") == "stream_read"), None)
  matmul = next((b["extra_info"]["gflop_per_s"] for b in benchmarks
                 if b["extra_info"].get("measure") == "matmul"), None)
  per_device = next((b["extra_info"] for b in benchmarks
                     if b["extra_info"].get("measure") == "matmul_all_devices"), None)
  ceiling = max([rate for rate in (matmul, per_device and per_device["gflop_per_s"]) if rate],
                default=None)
  lines = ["# lossjax benchmarks", "",
           f"Generated by `python -m lossjax.bench.report` from {', '.join(map(_shown, sources))}, "
           "written by `pytest --benchmark-only` (the lossjax plugin). Do not edit by hand.", "", *_machine(run), ""]
  fresh = next((b["extra_info"] for b in benchmarks
                if b["extra_info"].get("measure") == "fresh_output_write"), None)
  if stream or matmul:
    lines += ["### Machine limits measured in this run", "",
              f"- streaming read (sum of a 256 MiB float32 array): {_num(stream, '{:.1f}')} GB/s",
              f"- float32 matmul 2048x2048: {_num(matmul, '{:.0f}')} GFLOP/s"
              + (f"; one per device on {per_device['devices']} devices at once: "
                 f"{per_device['gflop_per_s']:.0f} GFLOP/s" if per_device else "")]
    if fresh:
      lines.append(f"- `2 * z` into a fresh output, z float32 {fresh['batch']}x{fresh['classes']}: "
                   f"{fresh['milliseconds']:.3g} ms ({fresh['gb_per_s']:.1f} GB/s read + written), "
                   "the floor of any `value_and_grad` at that shape: its gradient is such an output")
    threshold = next((b["extra_info"].get("malloc_mmap_threshold") for b in benchmarks
                      if b["extra_info"].get("measure") == "stream_read"), None)
    if threshold:
      lines.append(f"- every buffer of {threshold / 2**20:g} MiB or more is fresh memory on every "
                   "call (glibc's mmap threshold, set by the plugin), page faults included: a "
                   "cell does not depend on what the allocator had left over")
    for floor in (b["extra_info"] for b in benchmarks
                  if b["extra_info"].get("measure") == "exp_sum_floor"):
      lines.append(f"- row max, `exp(z - max)` and row sums alone (the arithmetic of every softmax "
                   f"cross-entropy forward), float32 {floor['batch']}x{floor['classes']}: "
                   f"{floor['milliseconds']:.3g} ms")
    lines.append("")
  lines += _floor_table(benchmarks)
  lines += _loss_tables(benchmarks, stream)
  lines += _fused_head_table(benchmarks, ceiling)
  lines += _training_table(benchmarks, ceiling)
  lines += _steps_table(benchmarks)
  return "\n".join(lines) + "\n"


def load_runs(sources: list[pathlib.Path]) -> dict:
  """One run from the JSONs of one session on one machine (a run split into
  parts): the first file's machine and commit facts, every file's entries."""
  runs = [json.loads(path.read_text()) for path in sources]
  return {**runs[0], "benchmarks": [b for run in runs for b in run["benchmarks"]]}


def write_report(source, destination: pathlib.Path) -> pathlib.Path:
  """`source`: one JSON path, or a list of them (rendered as one run)."""
  sources = [source] if isinstance(source, pathlib.Path) else list(source)
  return write_text_atomically(destination, render(load_runs(sources), sources))


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  sources = [pathlib.Path(a) for a in argv if not a.endswith(".md")]
  targets = [pathlib.Path(a) for a in argv if a.endswith(".md")]
  if len(targets) > 1:
    print(f"one output .md at most, got {len(targets)}: {', '.join(map(str, targets))}",
          file=sys.stderr)
    return 2
  if not sources:
    candidates = sorted((RESULTS / "benchmarks").glob("*.json"))
    if not candidates:
      print(f"no benchmark JSON in {RESULTS / 'benchmarks'}; run "
            "`pytest --benchmark-only --lossjax-full` first", file=sys.stderr)
      return 1
    sources = candidates[-1:]
  destination = targets[0] if targets else RESULTS / "BENCHMARKS.md"
  print(write_report(sources, destination))
  return 0


if __name__ == "__main__":
  sys.exit(main())
