"""The benchmark runner: every Python benchmark it lists imports and answers --help (a stale
import in one of them is caught here, not by the user who runs it), and each benchmark that makes
a table offers --markdown, whose default is its page under docs/results/."""
import os
import subprocess
import sys

from bpdjax import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_BENCHMARKS = [n for n, b in bench.BENCHMARKS.items() if not b.target.endswith(".sh")]


def test_runner_lists_every_benchmark():
  proc = subprocess.run([sys.executable, "-m", "bpdjax.bench", "--help"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  for name in bench.BENCHMARKS:
    assert f"  {name} " in proc.stdout, name
  assert sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "benchmarks"))
                if f.endswith(".py") and f not in ("__init__.py", "common.py", "results.py")
                and not f.startswith("gpu_")) == sorted(PYTHON_BENCHMARKS)


def test_every_python_benchmark_imports_and_writes_its_table_to_docs_results():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = {name: subprocess.Popen([sys.executable, "-m", "bpdjax.bench", name, "--help"],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name in PYTHON_BENCHMARKS}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    # absl's --help exits 1, argparse's 0; a failed import exits 1 with a traceback.
    assert proc.returncode in (0, 1) and "Traceback" not in err, (name, err[-2000:])
    assert "--markdown" in out + err, name
    assert f"docs/results/{name}.md" in out + err, name
