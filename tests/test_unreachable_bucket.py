"""A gs:// workdir whose endpoint cannot be reached fails fast: train.py, decode.py and
`bpdjax.load` exit non-zero within 60 s (default settings) with a message naming the bucket
and the endpoint, for a port on 127.0.0.1 that refuses connections and for one that accepts
and never answers. Nothing leaves 127.0.0.1: the endpoint is STORAGE_EMULATOR_HOST and gcsfs
is told to use no credentials (FSSPEC_GS_TOKEN=anon, so it asks no metadata server)."""
import os
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


def _commands(output):
  return {
      "train.py": [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={WORKDIR}",
                   "--config.num_train_steps=2", "--config.tensorboard=False"],
      "decode.py": [sys.executable, "decode.py", f"--workdir={WORKDIR}", f"--output={output}",
                    "--tasks=lambada", "--methods=ar", "--num_examples=1",
                    "--max_new_tokens=4"],
      "bpdjax.load": [sys.executable, "-c", f"import bpdjax; bpdjax.load({WORKDIR!r})"],
  }


def _run_all(commands: dict) -> dict:
  """{key: (returncode, seconds from start to exit, output)} of commands run side by side."""
  procs = {key: (time.time(), subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True))
           for key, (args, env) in commands.items()}
  outputs = {key: [] for key in procs}
  readers = {key: threading.Thread(target=lambda p=p, o=outputs[key]: o.append(p.stdout.read()))
             for key, (_, p) in procs.items()}
  for reader in readers.values():
    reader.start()
  done, deadline = {}, time.time() + 180
  try:
    while len(done) < len(procs) and time.time() < deadline:
      for key, (began, proc) in procs.items():
        if key not in done and proc.poll() is not None:
          done[key] = time.time() - began
      time.sleep(0.1)
  finally:
    for _, proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  for reader in readers.values():
    reader.join(timeout=30)
  return {key: (proc.returncode, done.get(key, float("inf")), "".join(outputs[key]))
          for key, (_, proc) in procs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["refuses", "never answers"])
def test_unreachable_endpoints_fail_fast(kind, request, tmp_path):
  port = _refusing_port() if kind == "refuses" else request.getfixturevalue("silent_port")
  results = _run_all({name: (args, _env(port))
                      for name, args in _commands(str(tmp_path / "out")).items()})
  message = f"Cannot reach bucket '{BUCKET}' of '{WORKDIR}' at endpoint http://127.0.0.1:{port}"
  report, failures = [], []
  for name, (returncode, seconds, out) in results.items():
    report.append(f"{name} ({kind}): rc {returncode} after {seconds:.1f} s")
    if returncode == 0 or seconds >= 60 or message not in out:
      failures.append(f"{report[-1]}\n{out[-2000:]}")
  print("\n".join(report))
  assert not failures, "\n\n".join(failures)
