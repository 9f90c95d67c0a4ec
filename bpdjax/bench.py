"""The benchmark runner: `python -m bpdjax.bench NAME [flags]` runs one named benchmark.

  python -m bpdjax.bench --help                      # every benchmark, one line each
  python -m bpdjax.bench decode_speed --workdir=workdirs/small --batch_sizes=1,8
  python -m bpdjax.bench decode_speed --help         # that benchmark's own flags

The benchmarks are the checkout's `benchmarks/` (Python modules and shell pipelines; they are
not installed with the package), so run it from the repository root, as `python -m` puts the
current directory first on the module path. A Python benchmark runs exactly as
`python -m benchmarks.NAME [flags]` would (its own command line, its own defaults); a shell one
as `bash benchmarks/....sh [args]`. To add a benchmark, add one line to BENCHMARKS.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import runpy
import subprocess
import sys


@dataclasses.dataclass(frozen=True)
class Benchmark:
  target: str        # a module ("benchmarks.decode_speed") or a script path ending in ".sh"
  description: str   # one line for --help


BENCHMARKS: dict[str, Benchmark] = {
    "decode_speed": Benchmark("benchmarks.decode_speed", "tokens/s, block efficiency and speedup of several methods side by side, per batch size"),
    "cost_tables": Benchmark("benchmarks.cost_tables", "verify cost of chains 1..9 and trees, relative to one plain step, per model shape (random weights)"),
    "sampling_be": Benchmark("benchmarks.sampling_be", "block efficiency when sampling vs greedy, every method, with its distribution check"),
    "block_sizes": Benchmark("benchmarks.block_sizes", "greedy BPD block efficiency for each block size k (the paper's Table 1 shape)"),
    "refinement_table": Benchmark("benchmarks.refinement_table", "draft refinement: alpha tuned per task and rescorer, then one BE table"),
    "lattice_rescoring": Benchmark("benchmarks.lattice_rescoring", "n-gram lattice rescoring speed: OpenFST/pynini vs the exact JAX DP"),
    "profile_iteration": Benchmark("benchmarks.profile_iteration", "where one decode-loop iteration spends its time (JAX profiler trace)"),
    "learned_drafts": Benchmark("benchmarks.learned_drafts", "sequential heads, Markov correction and prompt lookup against the heads: BE, acceptance, drafting MACs"),
    "vs_transformers": Benchmark("benchmarks.vs_transformers", "bpdjax vs Hugging Face transformers on TinyStories-656K (needs requirements-bench.txt)"),
    "gpu_check": Benchmark("benchmarks/gpu_check.sh", "the accelerator check: the paper's setting at ~130M trained, decoded and held against the bandwidth floor on one GPU/TPU (OUT [--prepare | --smoke])"),
    "finetune_pipeline": Benchmark("benchmarks/pipelines/finetune_pipeline.sh", "pipeline: pretrain, fine-tune per task, quality / block sizes / refinement tables"),
    "refinement_pipeline": Benchmark("benchmarks/pipelines/refinement_pipeline.sh", "pipeline: rescorers and n-gram LMs for workdirs/small, then the refinement table"),
    "tinystories_track": Benchmark("benchmarks/pipelines/tinystories_track.sh", "pipeline: TinyStories-656K with h = 9 heads, rescorer, n-gram LMs, refinement table"),
}


def usage() -> str:
  width = max(map(len, BENCHMARKS))
  lines = [__doc__.split("\n")[0], "", "usage: python -m bpdjax.bench NAME [flags]   "
           "(from the repository root; NAME --help gives its flags)", "", "benchmarks:"]
  lines += [f"  {name:<{width}}  {b.description}" for name, b in BENCHMARKS.items()]
  return "\n".join(lines)


def _root_error(what: str) -> str:
  return (f"{what} is not here: run `python -m bpdjax.bench` from the repository root "
          f"(benchmarks/ is not installed with the package; current directory {os.getcwd()})")


def run(name: str, args: list[str]) -> int:
  """Runs benchmark `name` with command-line `args`; returns its exit status."""
  if name not in BENCHMARKS:
    print(f"unknown benchmark {name!r}; one of: {', '.join(BENCHMARKS)}", file=sys.stderr)
    return 2
  target = BENCHMARKS[name].target
  if target.endswith(".sh"):
    if not os.path.isfile(target):
      print(_root_error(target), file=sys.stderr)
      return 2
    return subprocess.call(["bash", target, *args])
  if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, os.getcwd())   # `-m` has put it there; an embedding caller may not have
  if importlib.util.find_spec("benchmarks") is None:
    print(_root_error("benchmarks/"), file=sys.stderr)
    return 2
  sys.argv = [target, *args]
  try:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
  except SystemExit as exit_:   # absl's app.run and argparse end with sys.exit
    code = exit_.code
    return code if isinstance(code, int) else (0 if code is None else 1)
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0 if argv else 2
  return run(argv[0], argv[1:])


if __name__ == "__main__":
  sys.exit(main())
