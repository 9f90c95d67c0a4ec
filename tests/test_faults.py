"""Faults injected into tiny runs: divergence, damaged checkpoints (flipped bytes, truncation,
missing metadata, NaN parameters), a changed data stream on resume, a kill after the last
checkpoint, kill -9 during a save. Each asserts no data loss and a message that names the
problem. All start from copies of the shared 30-step `trained_tiny_workdir` (checkpoints at
steps 20 and 30, saved with their sha256 manifests)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import api
from bpdjax import checkpoints
from bpdjax import workdir as workdir_lib
from bpdjax.train import guard
from bpdjax.train import loop as train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATEST, OLDER = 30, 20  # The fixture's checkpoints.


def _copy(workdir, tmp_path) -> str:
  dst = str(tmp_path / "run")
  shutil.copytree(workdir, dst)
  return dst


def _config(workdir, **overrides):
  config = workdir_lib.load_config(workdir)
  config.update(overrides)
  return config


def _strict_lines(path):
  """Every line of a JSONL file through a strict parser (NaN / Infinity are errors)."""
  def refuse(name):
    raise ValueError(f"non-standard JSON constant {name}")
  with open(path) as f:
    return [json.loads(line, parse_constant=refuse) for line in f]


def _step_dir(workdir, step):
  return os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, str(step))


def _largest_file(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


def _flip(workdir, step):
  path = _largest_file(os.path.join(_step_dir(workdir, step), "state"))
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    n = min(4096, len(data) // 2)
    data[len(data) // 4:len(data) // 4 + n] = bytes(b ^ 0xFF for b in data[len(data) // 4:][:n])
    f.seek(0)
    f.write(data)


def _truncate(workdir, step):
  path = _largest_file(os.path.join(_step_dir(workdir, step), "state"))
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _drop_metadata(workdir, step):
  os.remove(os.path.join(_step_dir(workdir, step), "state", "_METADATA"))


DAMAGE = {"byte_flip": _flip, "truncation": _truncate, "missing_metadata": _drop_metadata}


def test_divergence_stops_keeps_finite_checkpoints_and_strict_metrics(trained_tiny_workdir,
                                                                      tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  config = _config(workdir, learning_rate=1e9, num_train_steps=LATEST + 30,
                   checkpoint_every_steps=2, max_checkpoints_to_keep=2, warmup_steps=0)
  with pytest.raises(guard.Diverged, match=r"diverged at step (\d+).*non-finite.*newest "
                                           r"checkpoint is step \d+") as e:
    train_loop.train_and_evaluate(config, workdir)
  manager = checkpoints.make_manager(workdir, read_only=True)
  assert manager.latest_step() is not None and manager.latest_step() < e.value.step
  loaded = api.load(workdir)  # The newest checkpoint: loads, finite (load refuses non-finite).
  assert loaded.step == manager.latest_step()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(loaded.params))
  lines = _strict_lines(os.path.join(workdir, "metrics.jsonl"))
  assert any("diverged" in r and r["step"] == e.value.step for r in lines)


def test_nonfinite_updates_can_be_skipped_a_bounded_number_of_times(trained_tiny_workdir,
                                                                    tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  config = _config(workdir, learning_rate=1e9, num_train_steps=LATEST + 30, warmup_steps=0,
                   max_nonfinite_skips=2, log_every_steps=1)
  with pytest.raises(guard.Diverged, match=r"2 such updates skipped already"):
    train_loop.train_and_evaluate(config, workdir)
  lines = _strict_lines(os.path.join(workdir, "metrics.jsonl"))
  assert sum(r.get("skipped_updates", 0) for r in lines) >= 2
  assert checkpoints.make_manager(workdir, read_only=True).latest_step() == LATEST


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint(damage, trained_tiny_workdir, tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  DAMAGE[damage](workdir, LATEST)
  with pytest.raises(checkpoints.DamagedCheckpoint,
                     match=rf"step {LATEST} .* damaged: .*Intact checkpoints .*\[{OLDER}\]"):
    api.load(workdir, step=LATEST)
  warnings = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpoints.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    loaded = api.load(workdir)
  assert loaded.step == OLDER
  assert any(f"step {LATEST}" in w and "damaged" in w for w in warnings), warnings


def test_load_survives_a_checkpoint_pruned_while_it_is_read(trained_tiny_workdir, tmp_path,
                                                           monkeypatch):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  restore = checkpoints.ocp.CheckpointManager.restore

  def prune_then_restore(self, step, *a, **k):
    if step == LATEST:  # A running training prunes the step between listing and reading.
      shutil.rmtree(_step_dir(workdir, LATEST))
    return restore(self, step, *a, **k)
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "restore", prune_then_restore)
  assert api.load(workdir).step == OLDER


def test_training_resumes_from_the_newest_intact_checkpoint(trained_tiny_workdir, tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  _flip(workdir, LATEST)
  warnings = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_loop.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    result = train_loop.train_and_evaluate(_config(workdir, num_train_steps=LATEST + 2), workdir)
  assert result["step"] == LATEST + 2
  assert any(f"Resuming from step {OLDER}" in w and f"damaged step(s) [{LATEST}]" in w
             for w in warnings), warnings
  assert os.path.isdir(os.path.join(workdir, workdir_lib.DAMAGED_CHECKPOINT_DIR, str(LATEST)))
  steps = [r["step"] for r in _strict_lines(os.path.join(workdir, "metrics.jsonl"))
           if "loss" in r]
  assert steps == sorted(set(steps)), "a step was logged twice"


def _nan_checkpoint(workdir, step):
  """Saves the latest state with all-NaN parameters as `step` (as a broken trainer would)."""
  manager = checkpoints.make_manager(workdir)
  state = dict(manager.restore(LATEST)["state"])
  state["params"] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state["params"])
  assert checkpoints.save(manager, step, state, force=True)  # With a valid manifest.
  manager.close()


def test_nan_parameters_are_refused(trained_tiny_workdir, tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  _nan_checkpoint(workdir, LATEST + 10)
  with pytest.raises(checkpoints.DamagedCheckpoint, match=rf"step {LATEST + 10} .*non-finite"):
    api.load(workdir, step=LATEST + 10)
  assert api.load(workdir).step == LATEST  # Latest skipped, with a warning.
  for step in (OLDER, LATEST):
    shutil.rmtree(_step_dir(workdir, step))
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "decode.py", f"--workdir={workdir}", f"--output={out}", "--tasks=jsonl",
       f"--jsonl={os.path.join(ROOT, 'benchmarks', 'story_openings.jsonl')}", "--methods=ar",
       "--num_examples=1", "--max_new_tokens=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert f"step {LATEST + 10}: non-finite parameters" in proc.stderr, proc.stderr[-3000:]
  assert not (out / "report.json").exists()


def test_resume_with_another_data_stream_is_refused(trained_tiny_workdir, tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  before = open(config_path, "rb").read()
  config = _config(workdir, num_train_steps=LATEST + 10)
  config.data.seq_len = 32
  config.batch_size = 4
  with pytest.raises(ValueError, match=r"another data stream.*batch_size: checkpoint has 8, "
                                       r"config has 4; data.seq_len: checkpoint has 64, config "
                                       r"has 32"):
    train_loop.train_and_evaluate(config, workdir)
  assert open(config_path, "rb").read() == before
  config.allow_data_stream_change = True
  config.num_train_steps = LATEST + 1
  assert train_loop.train_and_evaluate(config, workdir)["step"] == LATEST + 1


def test_no_step_logged_twice_after_a_kill(trained_tiny_workdir, tmp_path):
  workdir = _copy(trained_tiny_workdir, tmp_path)
  shutil.rmtree(_step_dir(workdir, LATEST))  # As if killed after logging steps 21..30.
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "grad_norm": NaN}\n')  # A line of an older version (not strict JSON),
    f.write('{"step": 31, "loss": 1')  # ... and a kill in the middle of a line.
  train_loop.train_and_evaluate(_config(workdir, num_train_steps=LATEST), workdir)
  lines = _strict_lines(os.path.join(workdir, "metrics.jsonl"))
  steps = [r["step"] for r in lines if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-1] == LATEST
  assert any(r.get("resumed_from") == OLDER for r in lines)


@pytest.mark.slow
def test_kill_9_during_a_save_loses_nothing(trained_tiny_workdir, tmp_path):
  """SIGKILL train.py while it saves (checkpoint every step): the next run resumes from the
  newest intact checkpoint and no step is logged twice."""
  workdir = _copy(trained_tiny_workdir, tmp_path)
  args = [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
          "--config.num_train_steps=400", "--config.checkpoint_every_steps=1",
          "--config.log_every_steps=1", "--config.eval_every_steps=1000",
          f"--config.data.vocab_path={_config(workdir).data.vocab_path}"]
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
  try:
    deadline = time.time() + 240
    while not any(n.startswith(str(LATEST + 3)) for n in os.listdir(ckpt)):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  config = _config(workdir)
  config.num_train_steps = checkpoints.make_manager(workdir, read_only=True).latest_step() + 2
  result = train_loop.train_and_evaluate(config, workdir)
  assert result["step"] == config.num_train_steps
  steps = [r["step"] for r in _strict_lines(os.path.join(workdir, "metrics.jsonl"))
           if "loss" in r]
  assert steps == sorted(set(steps))
  logging.info("killed at %s", steps)
