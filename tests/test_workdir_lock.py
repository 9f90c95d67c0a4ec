"""One writer per workdir (bpdjax/workdir_lock.py): a second train.py on a workdir is refused at
once naming the first, which finishes with every step logged once; a kill -9'd holder's lock is
taken over with a warning; readers take no lock."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bpdjax import api
from bpdjax import workdir as workdir_lib
from bpdjax import workdir_lock
from bpdjax.train import loop as train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; from bpdjax import workdir_lock; "
        "lock = workdir_lock.WorkdirLock(sys.argv[1], 'holder'); lock.acquire(); "
        "print('held', flush=True); time.sleep(600)")


def _holder(workdir):
  """A process holding the lock of `workdir` (until killed)."""
  proc = subprocess.Popen([sys.executable, "-c", HOLD, workdir], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  first = workdir_lock.WorkdirLock(workdir, "training")
  first.acquire()
  with pytest.raises(workdir_lock.WorkdirLocked,
                     match=rf"being written by pid {os.getpid()} on host .*training"):
    workdir_lock.WorkdirLock(workdir, "training").acquire()
  first.release()
  with workdir_lock.WorkdirLock(workdir, "training"):  # Free again after a release.
    pass
  assert open(os.path.join(workdir, workdir_lib.WRITER_LOCK_FILE)).read() == ""


def test_a_killed_holder_s_lock_is_taken_over_with_a_warning(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  proc = _holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked, match=rf"pid {proc.pid} .*holder"):
      workdir_lock.WorkdirLock(workdir, "training").acquire()
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  warnings = []
  monkeypatch.setattr(workdir_lock.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  with workdir_lock.WorkdirLock(workdir, "training"):
    pass
  assert any("Taking over" in w and f"pid {proc.pid}" in w and "is gone" in w
             for w in warnings), warnings


def test_training_on_a_held_workdir_is_refused_and_readers_need_no_lock(trained_tiny_workdir,
                                                                        tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_tiny_workdir, workdir)
  metrics = open(os.path.join(workdir, workdir_lib.METRICS_FILE)).read()
  config = workdir_lib.load_config(workdir)
  config.num_train_steps = 32
  proc = _holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked, match=rf"pid {proc.pid}"):
      train_loop.train_and_evaluate(config, workdir)
    assert open(os.path.join(workdir, workdir_lib.METRICS_FILE)).read() == metrics
    assert api.load(workdir).step == 30  # A reader beside the writer.
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  assert train_loop.train_and_evaluate(config, workdir)["step"] == 32  # Taken over.


def _train(workdir, vocab_path, steps):
  return [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.num_train_steps={steps}", f"--config.data.vocab_path={vocab_path}",
          "--config.log_every_steps=1", "--config.eval_every_steps=1000",
          "--config.checkpoint_every_steps=10", "--config.tensorboard=False"]


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True])
def test_two_train_py_on_one_workdir(resume, trained_tiny_workdir, tiny_vocab_path, tmp_path):
  """Two train.py on a fresh workdir, or two resumes of one: the second exits non-zero at once
  naming the first; the first (stopped by SIGTERM once the second is refused, so that the two
  overlap whatever the machine's speed) finishes cleanly; metrics.jsonl holds each step once."""
  workdir = str(tmp_path / "run")
  start = 0
  if resume:
    shutil.copytree(trained_tiny_workdir, workdir)
    start = 30
  first = subprocess.Popen(_train(workdir, tiny_vocab_path, 4000), cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    lock = os.path.join(workdir, workdir_lib.WRITER_LOCK_FILE)
    deadline = time.time() + 240
    while not (os.path.exists(lock) and os.path.getsize(lock)):
      assert first.poll() is None, first.communicate()[1][-3000:]
      assert time.time() < deadline, "the first run never took the lock"
      time.sleep(0.05)
    began = time.time()
    second = subprocess.run(_train(workdir, tiny_vocab_path, 4000)  # Another learning rate.
                            + ["--config.learning_rate=0.001"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    refused_after = time.time() - began
    assert first.poll() is None, "the first run ended before the second started"
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
  assert second.returncode != 0
  assert f"is being written by pid {first.pid} on host" in second.stderr, second.stderr[-3000:]
  assert first.returncode == 0, stderr[-3000:]
  stopped = int(stderr.split("Stopped at step ")[1].split()[0])
  lines = [json.loads(l) for l in open(os.path.join(workdir, workdir_lib.METRICS_FILE))]
  steps = [r["step"] for r in lines if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == stopped > start
  assert [s for s in steps if s > start] == list(range(start + 1, stopped + 1))
  saved = json.load(open(os.path.join(workdir, workdir_lib.CONFIG_FILE)))
  assert saved["learning_rate"] == 0.003  # The first run's config.json, untouched.
  print(f"second run refused after {refused_after:.1f} s (python and jax start-up included); "
        f"first stopped at step {stopped}")
