"""A workdir in a Cloud Storage bucket, served by a local emulator (gcp-storage-emulator on
127.0.0.1): tiny training to a SIGTERM, resume, decode.py and `bpdjax.load` on gs://, then the
bucket's objects listed; and the errors for a missing bucket or an unknown URL scheme.

How each layer is pointed at the emulator (all documented settings, no code patched):
  gcsfs (epath's backend for gs://, all workdir files)  STORAGE_EMULATOR_HOST, and
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (the emulator has no storage-control API to ask
      a bucket's layout; gcsfs would warn at every call and fall back anyway)
  tensorstore (orbax's array writes)  TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING
  tf.io.gfile (clu's TensorBoard writer)  none: TensorFlow's GCS filesystem has its endpoint
      compiled in (gcs_file_system.cc, kGcsUriBase), so these runs set config.tensorboard=False.
The emulator runs in its own process (tests/gcs_emulator.py, which also fills one gap of it).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bpdjax import api
from bpdjax import checkpoints
from bpdjax import fileio
from bpdjax import workdir as workdir_lib
from tests import helpers

pytest.importorskip("gcp_storage_emulator.server")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bpdjax-test"
WORKDIR = f"gs://{BUCKET}/runs/tiny"
TRAIN_FLAGS = ["--config.log_every_steps=1", "--config.eval_every_steps=1000",
               "--config.num_eval_batches=1", "--config.checkpoint_every_steps=1000",
               "--config.schedule_steps=400", "--config.tensorboard=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """An in-memory Cloud Storage emulator with one bucket; this process and its subprocesses
  reach it through the environment (see the module docstring)."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
         "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
         "EPATH_USE_TF": "false"}
  saved = {k: os.environ.get(k) for k in env}
  server = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", str(port), BUCKET],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
  try:
    assert server.stdout.readline().strip() == "serving", "the emulator did not start"
    os.environ.update(env)
    yield env
  finally:
    server.kill()
    server.wait()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _env(emulator_env):
  return dict(os.environ, **emulator_env, JAX_PLATFORMS="cpu",
              PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
              XLA_FLAGS=helpers.xla_flags(1))


def _train_args(vocab_path, steps):
  return [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={WORKDIR}",
          f"--config.num_train_steps={steps}", f"--config.data.vocab_path={vocab_path}",
          *TRAIN_FLAGS]


def _objects(prefix):
  """Every object under a gs:// prefix, relative to it (the emulator's bucket listing)."""
  found, todo = [], [fileio.as_path(prefix)]
  while todo:
    for child in todo.pop().iterdir():
      if child.is_dir():
        todo.append(child)
      else:
        found.append(os.fspath(child)[len(prefix) + 1:])
  return sorted(found)


@pytest.mark.slow
def test_train_sigterm_resume_decode_and_load_in_a_bucket(emulator, tiny_vocab_path):
  env = _env(emulator)
  metrics = workdir_lib.path(WORKDIR, workdir_lib.METRICS_FILE)
  proc = subprocess.Popen(_train_args(tiny_vocab_path, 400), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not fileio.exists(metrics):
      assert proc.poll() is None, proc.communicate()[1][-5000:]
      assert time.time() < deadline, "no training step logged in the bucket"
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-5000:]
  stopped = checkpoints.make_manager(WORKDIR, read_only=True).latest_step()
  assert stopped is not None and 1 <= stopped < 400
  assert f"Stopped at step {stopped} after SIGTERM" in stderr
  logged = [json.loads(line) for line in fileio.read_text(metrics).splitlines()]
  assert [r["step"] for r in logged if "loss" in r] == list(range(1, stopped + 1))

  final = stopped + 3
  proc = subprocess.run(_train_args(tiny_vocab_path, final), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert f"Resumed from step {stopped} in {WORKDIR}" in proc.stderr
  logged = [json.loads(line) for line in fileio.read_text(metrics).splitlines()]
  assert [r["step"] for r in logged if "loss" in r] == list(range(1, final + 1))

  output = f"gs://{BUCKET}/reports/tiny"
  proc = subprocess.run(
      [sys.executable, "decode.py", f"--workdir={WORKDIR}", "--tasks=lambada",
       "--methods=ar,bpd", "--num_examples=2", "--max_new_tokens=8", f"--output={output}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert f"Report: {output}/report.json" in proc.stdout
  report = json.loads(fileio.read_text(f"{output}/report.json"))
  bpd = report["tasks"]["lambada"]["bpd"]
  assert bpd["identical_to_ar"] is True

  m = api.load(WORKDIR)
  assert m.step == final
  assert m.config.model.vocab_size == m.vocab.vocab_size == 512

  print(f"SIGTERM stopped training at step {stopped}; resumed to step {final}; decode.py on "
        f"gs://: bpd block efficiency {bpd['block_efficiency']:.3f}, identical to ar; "
        f"load: step {m.step}")
  objects = _objects(f"gs://{BUCKET}")
  print(f"objects in gs://{BUCKET} ({len(objects)}):\n  " + "\n  ".join(objects))
  for name in ("runs/tiny/config.json", "runs/tiny/vocab.model", "runs/tiny/metrics.jsonl",
               "reports/tiny/report.json", "reports/tiny/report.md", "reports/tiny/lambada.png"):
    assert name in objects
  steps = {o.split("/")[3] for o in objects if o.startswith("runs/tiny/checkpoints/")}
  assert {str(stopped), str(final)} <= steps


def test_ngram_estimate_on_a_bucket_workdir(emulator, trained_tiny_workdir, lmplz):
  """bpdjax.ngram.estimate on a gs:// workdir writes the ARPA and its vocabulary record into
  the bucket, and decode.py's loader reads both from there."""
  from bpdjax.decoding import resources  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import estimate  # pylint: disable=g-import-not-at-top
  workdir = f"gs://{BUCKET}/runs/for_ngram"
  for name in (workdir_lib.CONFIG_FILE, workdir_lib.VOCAB_FILE):
    fileio.copy_file(os.path.join(trained_tiny_workdir, name), workdir_lib.path(workdir, name))
  arpa = f"{workdir}/ngram2.arpa"
  stats = estimate.estimate_workdir(workdir, 2, arpa, max_documents=20, lmplz=lmplz,
                                    memory=helpers.LMPLZ_MEMORY, log=lambda _: None)
  assert stats["arpa"] == arpa and stats["ngrams"][1] > 1
  assert fileio.exists(workdir_lib.arpa_vocab_record_path(arpa))
  lm = resources.load_ngram_lm(arpa, 512, workdir)
  assert lm.order == 2


def test_missing_bucket_is_named(emulator):
  with pytest.raises(FileNotFoundError, match="Bucket 'no-such-bucket' of 'gs://no-such-bucket/r"):
    fileio.makedirs("gs://no-such-bucket/run")
  with pytest.raises(FileNotFoundError, match="Bucket 'no-such-bucket'"):
    api.load("gs://no-such-bucket/run")
  with pytest.raises(FileNotFoundError, match="No config.json in 'gs://bpdjax-test/none': it is neither"):
    api.load(f"gs://{BUCKET}/none")


def test_unknown_scheme_is_refused():
  with pytest.raises(ValueError, match="Unsupported path scheme 'ftp' in 'ftp://host/run'"):
    fileio.makedirs("ftp://host/run")
  with pytest.raises(ValueError, match="Unsupported path scheme 'ftp'"):
    api.load("ftp://host/run")


def test_writer_lock_in_a_bucket(emulator, monkeypatch):
  """The bucket form of the workdir lock: an object created only if absent, refused while its
  heartbeat is fresh, taken over once its lease has expired, deleted on release."""
  from bpdjax import workdir_lock  # pylint: disable=g-import-not-at-top
  workdir = f"gs://{BUCKET}/runs/locked"
  path = workdir_lib.path(workdir, workdir_lib.WRITER_LOCK_FILE)
  with workdir_lock.WorkdirLock(workdir, "training") as held:
    assert json.loads(fileio.read_text(path))["token"] == held.record["token"]
    with pytest.raises(workdir_lock.WorkdirLocked, match=rf"pid {os.getpid()} on host"):
      workdir_lock.WorkdirLock(workdir, "training").acquire()
  assert not fileio.exists(path)
  stale = dict(workdir_lock._record("training"), heartbeat=time.time() - 1000, lease=600)  # pylint: disable=protected-access
  fileio.write_atomic(path, json.dumps(stale))
  warnings = []
  monkeypatch.setattr(workdir_lock.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  with workdir_lock.WorkdirLock(workdir, "training"):
    pass
  assert any("Taking over" in w and "sent no heartbeat" in w for w in warnings), warnings
