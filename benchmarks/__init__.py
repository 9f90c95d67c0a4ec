"""Product benchmarks, run from the repository root: `python -m bpdjax.bench NAME` (bpdjax/bench.py
lists them) or `python -m benchmarks.NAME`. Not installed with the package."""
