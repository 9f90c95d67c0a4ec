"""A gs:// workdir whose endpoint cannot be reached fails fast: train.py, decode.py and
`bpdjax.load` exit non-zero within 60 s of starting (default settings: a 25 s deadline) with a
message naming the bucket and the endpoint, for a port on 127.0.0.1 that refuses connections and
for one that accepts and never answers. The 60 s are counted from when each command has imported
its modules (it prints the time), so that a loaded machine's slow imports cannot fail the test,
and the six commands run side by side. Nothing leaves 127.0.0.1: the endpoint is
STORAGE_EMULATOR_HOST and gcsfs is told to use no credentials (FSSPEC_GS_TOKEN=anon, so it asks
no metadata server)."""
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bpdjax-unreachable"
WORKDIR = f"gs://{BUCKET}/run"


def _refusing_port() -> int:
  with socket.socket() as s:  # Bound, then closed: nothing listens there.
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def silent_port():
  """A port that accepts connections (the kernel's backlog) and never answers."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]


def _env(port):
  url = f"http://127.0.0.1:{port}"
  env = {k: v for k, v in os.environ.items() if not k.startswith("BPDJAX_REMOTE")}
  return dict(env, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
              GOOGLE_AUTH_TOKEN_FOR_TESTING="none", FSSPEC_GS_TOKEN="anon",
              GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", EPATH_USE_TF="false",
              JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))


def _after_imports(imports: str, run: str) -> list:
  """python -c: `imports`, then print the time, then `run` (the seconds that count are those
  after the imports)."""
  return [sys.executable, "-c", f"import time; {imports}; "
          f"print(f'IMPORTED {{time.time()}}', flush=True); {run}"]


def _commands(output):
  train = ["train.py", "--config=configs/tiny.py", f"--workdir={WORKDIR}",
           "--config.num_train_steps=2", "--config.tensorboard=False"]
  decode = ["decode.py", f"--workdir={WORKDIR}", f"--output={output}", "--tasks=lambada",
            "--methods=ar", "--num_examples=1", "--max_new_tokens=4"]
  return {   # The entry points as train.py and decode.py call them, with the same argv.
      "train.py": _after_imports("import sys; from bpdjax.train import cli",
                                 f"sys.argv = {train!r}; cli.main()"),
      "decode.py": _after_imports("import sys; from bpdjax.eval import cli",
                                  f"sys.argv = {decode!r}; cli.main()"),
      "bpdjax.load": _after_imports("import bpdjax; from bpdjax import api",
                                    f"bpdjax.load({WORKDIR!r})"),
  }


def _run_all(commands: dict) -> dict:
  """{key: (returncode, seconds from the end of its imports to exit, output)} of commands run
  side by side."""
  procs = {key: subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
           for key, (args, env) in commands.items()}
  outputs = {key: [] for key in procs}
  readers = {key: threading.Thread(target=lambda p=p, o=outputs[key]: o.append(p.stdout.read()))
             for key, p in procs.items()}
  for reader in readers.values():
    reader.start()
  ended, deadline = {}, time.time() + 240
  try:
    while len(ended) < len(procs) and time.time() < deadline:
      for key, proc in procs.items():
        if key not in ended and proc.poll() is not None:
          ended[key] = time.time()
      time.sleep(0.1)
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  for reader in readers.values():
    reader.join(timeout=30)
  results = {}
  for key, proc in procs.items():
    out = "".join(outputs[key])
    imported = re.search(r"^IMPORTED ([0-9.]+)$", out, re.M)
    seconds = (ended[key] - float(imported.group(1))
               if key in ended and imported else float("inf"))
    results[key] = (proc.returncode, seconds, out)
  return results


@pytest.mark.slow
def test_unreachable_endpoints_fail_fast(silent_port, tmp_path):
  ports = {"refuses": _refusing_port(), "never answers": silent_port}
  results = _run_all({(kind, name): (args, _env(port))
                      for kind, port in ports.items()
                      for name, args in _commands(str(tmp_path / kind.replace(" ", "_"))).items()})
  report, failures = [], []
  for (kind, name), (returncode, seconds, out) in results.items():
    message = (f"Cannot reach bucket '{BUCKET}' of '{WORKDIR}' at endpoint "
               f"http://127.0.0.1:{ports[kind]}")
    report.append(f"{name} ({kind}): rc {returncode}, {seconds:.1f} s after its imports")
    if returncode == 0 or seconds >= 60 or message not in out:
      failures.append(f"{report[-1]}\n{out[-2000:]}")
  print("\n".join(report))
  assert len(results) == 6 and not failures, "\n\n".join(failures)
