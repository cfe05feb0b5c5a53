"""Command line: ``lossjax train ...`` (also ``python -m lossjax train ...``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _add_cpu_devices(p) -> None:
  p.add_argument("--cpu-devices", type=_positive_int, default=None, metavar="N",
                 help="present the CPU to JAX as N devices, over which the runs are split "
                      "(default: one per core, or the count XLA_FLAGS sets with "
                      "--xla_force_host_platform_device_count)")


def _train_parser(sub) -> None:
  from lossjax import data, losses, models, train
  defaults = train.TrainConfig()
  p = sub.add_parser(
      "train", help="train seeds x learning rates of one config; write its history as JSON",
      description="Trains every (seed, learning rate) run of one config as one compiled "
                  "program and writes the evaluation history as JSON.")
  p.add_argument("--dataset", default=defaults.dataset,
                 help=f"dataset name: {', '.join(data.names())}, or tfds:NAME "
                      f"(default: %(default)s)")
  p.add_argument("--model", default=defaults.model.name, choices=models.MODEL_NAMES,
                 help="model family (default: %(default)s)")
  p.add_argument("--depth", type=int, default=defaults.model.depth,
                 help="MLP hidden layers (default: %(default)s)")
  p.add_argument("--width", type=int, default=defaults.model.width,
                 help="hidden units per layer (default: %(default)s)")
  p.add_argument("--activation", default=defaults.model.activation,
                 choices=sorted(models.ACTIVATIONS), help="hidden activation (default: %(default)s)")
  p.add_argument("--init-scale", type=float, default=defaults.model.init_scale,
                 help="multiplier of the initial weights (lecun, classical), or their absolute "
                      "std (normal) (default: %(default)s)")
  p.add_argument("--init", default=defaults.model.init, choices=models.INITS,
                 help="kernel initialisation: LeCun normal, classical U[-1/sqrt(n), 1/sqrt(n)], "
                      "or a normal of std --init-scale (default: %(default)s)")
  p.add_argument("--loss", default=defaults.loss,
                 help=f"registered loss: {', '.join(losses.names())} (default: %(default)s)")
  p.add_argument("--optimizer", default=defaults.optimizer,
                 help="any optax optimizer, e.g. sgd, adam, adamw (default: %(default)s)")
  p.add_argument("--momentum", type=float, default=0.9,
                 help="momentum for sgd (default: %(default)s; ignored by other optimizers)")
  p.add_argument("--schedule", default=defaults.schedule, choices=("constant", "cosine", "warmup_cosine"),
                 help="learning-rate schedule (default: %(default)s)")
  p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                 help="examples per step (default: %(default)s)")
  p.add_argument("--steps", type=int, default=defaults.steps,
                 help="training steps per run (default: %(default)s)")
  p.add_argument("--eval-interval", type=int, default=defaults.eval_interval,
                 help="steps between evaluations; must divide --steps (default: %(default)s)")
  p.add_argument("--seeds", type=int, default=len(defaults.seeds),
                 help="number of seeds, 0..N-1 (default: %(default)s)")
  p.add_argument("--lrs", type=_floats, default=defaults.learning_rates,
                 help="comma-separated learning rates (default: 0.01,0.1)")
  p.add_argument("--imbalance", type=float, default=None,
                 help="long-tail the training data with this imbalance factor")
  p.add_argument("--noise", type=float, default=None,
                 help="symmetric label-noise rate on the training labels")
  p.add_argument("--fused-head", action="store_true",
                 help="last layer and loss as one lossjax.fused head (no logits array; "
                      "for many classes)")
  p.add_argument("--json", default=None, metavar="PATH",
                 help="write the history here (default: print a summary only)")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  _add_cpu_devices(p)


def _train(args) -> int:
  from lossjax import data, losses, models, train
  if not args.dataset.startswith("tfds:") and args.dataset not in data.names():
    raise SystemExit(f"lossjax train: unknown dataset {args.dataset!r}; available: "
                     f"{', '.join(data.names())}, or tfds:NAME")
  if args.loss not in losses.names():
    raise SystemExit(f"lossjax train: unknown loss {args.loss!r}; available: "
                     f"{', '.join(losses.names())}")
  optimizer_options = {"momentum": args.momentum} if args.optimizer == "sgd" else {}
  try:
    config = train.TrainConfig(
        dataset=args.dataset, imbalance=args.imbalance, noise=args.noise,
        model=models.ModelConfig(args.model, args.depth, args.width, args.activation,
                                 args.init_scale, init=args.init),
        loss=args.loss, optimizer=args.optimizer, optimizer_options=optimizer_options,
        schedule=args.schedule, batch_size=args.batch_size, steps=args.steps,
        eval_interval=args.eval_interval, seeds=tuple(range(args.seeds)),
        learning_rates=args.lrs, fused_head=args.fused_head)
    history = train.train(config, progress=not args.quiet)
  except (ValueError, TypeError, data.DatasetUnavailableError) as error:
    raise SystemExit(f"lossjax train: {error}") from None
  final = history.metrics["test_accuracy"][:, -1]
  for lr in np.unique(history.learning_rates):
    runs = history.runs_at(lr)
    print(f"lr {lr:g}: final test accuracy {np.nanmean(final[runs]):.4f} "
          f"(min {np.nanmin(final[runs]):.4f}, max {np.nanmax(final[runs]):.4f}) over "
          f"{len(runs)} seeds; diverged {int(history.diverged[runs].sum())}")
  print(f"compile {history.compile_seconds:.1f}s, train {history.train_seconds:.1f}s, "
        f"{history.run_steps_per_second():.0f} run-steps/s")
  if args.json:
    train.save_json(history, args.json)
    print(f"history written to {args.json}")
  return 0


def _study_parsers(sub) -> None:
  from lossjax.study import EXPERIMENTS
  p = sub.add_parser(
      "study", help="run the claims study and write REPORT.md",
      description="Runs one experiment per claim of the article under one tuning protocol "
                  "(half-decade rate grids extended past their edges, nested-bootstrap "
                  "intervals, two replicates per verdict), writes one "
                  "result file per experiment under OUT/study/ and regenerates OUT/REPORT.md. "
                  "Experiments already on disk (same mode and dataset) are skipped, so an "
                  "interrupted study resumes.")
  p.add_argument("--out", default="results", help="output folder (default: %(default)s)")
  p.add_argument("--quick", action="store_true",
                 help="every experiment at reduced size, compiled cheaply (a pipeline check, "
                      "not evidence)")
  p.add_argument("--dataset", default="mnist5k",
                 help="image dataset for the MNIST experiments, e.g. tfds:mnist "
                      "(default: %(default)s)")
  p.add_argument("--only", default=None,
                 help=f"comma-separated experiments to run: {', '.join(EXPERIMENTS)}")
  p.add_argument("--quiet", action="store_true", help="no progress bars (log lines only)")
  _add_cpu_devices(p)
  r = sub.add_parser("report", help="regenerate REPORT.md and figures from the result files",
                     description="Regenerates OUT/REPORT.md and OUT/study/figures/ from "
                                 "OUT/study/*.json without training anything.")
  r.add_argument("--out", default="results", help="output folder (default: %(default)s)")


def _study(args) -> int:
  from lossjax import study
  only = [name.strip() for name in args.only.split(",")] if args.only else None
  try:
    path = study.run_study(args.out, quick=args.quick, dataset=args.dataset, only=only,
                           progress=not args.quiet)
  except ValueError as error:
    raise SystemExit(f"lossjax study: {error}") from None
  print(f"report written to {path}")
  return 0


def _report(args) -> int:
  from lossjax import study
  print(f"report written to {study.write_report(args.out)}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lossjax", description="lossjax command line")
  sub = parser.add_subparsers(dest="command", required=True)
  _train_parser(sub)
  _study_parsers(sub)
  return parser


# A quick study is a pipeline check of hundreds of small programs, each run
# a few steps: compiling is nearly all its time, and XLA's LLVM optimisation
# most of that (a study Trainer: 9.0 s compiling at the default level, 3.3 s
# at 0). Its numbers are no evidence, so it compiles cheaply.
QUICK_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def cheap_compilation(*extra: str) -> None:
  """Adds `QUICK_XLA_FLAGS` and `extra` to XLA_FLAGS, keeping any already
  set (read when JAX starts its backend; in a process where it has started,
  nothing changes). The test session compiles this way too."""
  flags = os.environ.get("XLA_FLAGS", "")
  for flag in QUICK_XLA_FLAGS + extra:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  os.environ["XLA_FLAGS"] = flags


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.command == "study" and args.quick:
    cheap_compilation()
  if hasattr(args, "cpu_devices"):
    from lossjax import train
    try:
      train.use_cpu_cores(args.cpu_devices)
    except RuntimeError as error:  # JAX already running (main() called in-process)
      if args.cpu_devices is not None:
        raise SystemExit(f"lossjax {args.command}: --cpu-devices: {error}") from None
  return {"train": _train, "study": _study, "report": _report}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
