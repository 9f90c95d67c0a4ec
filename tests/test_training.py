"""End-to-end training of configs/tiny.py: learning, exact resume, SIGTERM, and the invariance of
the per-step losses to the device mesh and to the number of processes.

One straight 8-step run (module fixture, in-process, one CPU device) is the reference of every
test. All runs share the learning-rate schedule (schedule_steps=400), so a run of any length
follows the reference's schedule. Multi-device and multi-process runs go through train.py in
subprocesses, since the CPU device count is fixed when JAX starts.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import api
from bpdjax import checkpoints
from bpdjax.train import loop as train_loop
from bpdjax.train import state as train_state
from bpdjax.configs import tiny
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 8  # Steps of the reference run.
SCHEDULE = dict(schedule_steps=400)
OVERRIDES = dict(num_train_steps=N, log_every_steps=1, eval_every_steps=1000, num_eval_batches=1,
                 checkpoint_every_steps=1000, **SCHEDULE)
LOSS_ATOL = 1e-5  # float32; the loss is O(25), a sum of h=4 per-head means.


def _config(vocab_path, data=None, mesh=None, **overrides):
  config = tiny.get_config()
  config.data.vocab_path = vocab_path
  config.data.update(data or {})
  config.mesh.update(mesh or {})
  config.update({**OVERRIDES, **overrides})
  return config


def _flags(workdir, vocab_path, data=None, mesh=None, **overrides):
  """train.py arguments for the same config as `_config`."""
  values = {**OVERRIDES, **overrides, "data.vocab_path": vocab_path}
  values.update({f"data.{k}": v for k, v in (data or {}).items()})
  values.update({f"mesh.{k}": v for k, v in (mesh or {}).items()})
  return (["train.py", "--config=configs/tiny.py", f"--workdir={workdir}"] +
          [f"--config.{k}={v}" for k, v in values.items()])


def _env(num_devices=1):
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
              JAX_PLATFORMS="cpu",
              XLA_FLAGS=helpers.xla_flags(num_devices))


def _run_train_py(args, num_devices=1, timeout=300):
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=_env(num_devices),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc


def _train_metrics(workdir):
  """The training lines of metrics.jsonl (eval lines dropped), in order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "loss" in r]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in _train_metrics(workdir)}


def _assert_params_close(a, b, rtol=1e-6, atol=1e-7):
  flat_a, tree_a = jax.tree.flatten(jax.device_get(a))
  flat_b, tree_b = jax.tree.flatten(jax.device_get(b))
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(flat_a, flat_b))


def _assert_losses_match(losses, reference, steps):
  diffs = [abs(losses[s] - reference[s]) for s in steps]
  assert max(diffs) <= LOSS_ATOL, (losses, reference)
  return max(diffs)


@pytest.fixture(scope="module")
def straight(tiny_vocab_path, tmp_path_factory):
  """(workdir, result) of the reference run: N steps from scratch."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  result = train_loop.train_and_evaluate(_config(tiny_vocab_path), workdir)
  return workdir, result


def test_trains_from_scratch_and_loads(straight):
  workdir, result = straight
  records = _train_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, N + 1))
  for r in records:
    assert len(r["accuracy"]) == 4 and all(isinstance(a, float) for a in r["accuracy"])
  assert records[-1]["loss"] < records[0]["loss"] - 1.0, [r["loss"] for r in records]
  for name in ("config.json", "vocab.model"):
    assert os.path.isfile(os.path.join(workdir, name))
  assert checkpoints.make_manager(workdir, read_only=True).all_steps() == [N]
  assert result["step"] == N

  loaded = api.load(workdir)
  assert loaded.step == N
  # As the workdir stores it: JSON, where a tuple (model.sliding_window_layers) is a list.
  assert loaded.config.model.to_dict() == json.loads(json.dumps(tiny.get_config().model.to_dict()))
  _assert_params_close(loaded.params, result["params"], rtol=0, atol=0)
  tokens = jnp.asarray([loaded.vocab.encode("First Citizen:\nBefore we proceed")])
  logits, _ = loaded.model.apply({"params": loaded.params}, tokens,
                                 jnp.arange(tokens.shape[1])[None])
  assert logits.shape == (1, tokens.shape[1], 4, 512)
  assert np.isfinite(np.asarray(logits)).all()


def test_load_errors(straight, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json.*" + str(tmp_path)):
    api.load(str(tmp_path))
  for name in ("config.json", "vocab.model"):
    with open(os.path.join(straight[0], name), "rb") as src:
      (tmp_path / name).write_bytes(src.read())
  with pytest.raises(FileNotFoundError, match="No checkpoint in workdir.*" + str(tmp_path)):
    api.load(str(tmp_path))


def test_batch_size_must_divide_mesh_and_processes():
  rules = tuple(tuple(r) for r in tiny.get_config().logical_axis_rules)
  mesh = jax.sharding.AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
  train_state.check_batch_size(8, mesh, rules)
  with pytest.raises(ValueError, match=r"batch_size=6 .* size 4 of the batch mesh axes"):
    train_state.check_batch_size(6, mesh, rules)


def test_resume_is_exact(straight, tiny_vocab_path, tmp_path):
  workdir = str(tmp_path)
  train_loop.train_and_evaluate(_config(tiny_vocab_path, num_train_steps=N // 2), workdir)
  assert checkpoints.make_manager(workdir, read_only=True).latest_step() == N // 2
  result = train_loop.train_and_evaluate(_config(tiny_vocab_path), workdir)
  assert result["step"] == N
  params_diff = _assert_params_close(result["params"], straight[1]["params"])
  resumed, reference = _train_metrics(workdir), _train_metrics(straight[0])
  assert [r["step"] for r in resumed] == list(range(1, N + 1))
  # Same losses and accuracies at every step, after the resume included: the data continued.
  for r, ref in zip(resumed, reference):
    np.testing.assert_allclose(r["loss"], ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(r["accuracy"], ref["accuracy"], rtol=1e-6)
  print(f"straight loss at step {N}: {reference[-1]['loss']!r}, resumed: {resumed[-1]['loss']!r}; "
        f"max |param difference| {params_diff:.3g}")


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes(straight, tiny_vocab_path, tmp_path):
  workdir = str(tmp_path)
  metrics = os.path.join(workdir, "metrics.jsonl")
  args = _flags(workdir, tiny_vocab_path, num_train_steps=400)
  proc = subprocess.Popen([sys.executable] + args, cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and os.path.getsize(metrics)):
      assert proc.poll() is None, proc.communicate()[1][-5000:]
      assert time.time() < deadline, "no training step logged"
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-5000:]
  stopped = checkpoints.make_manager(workdir, read_only=True).latest_step()
  assert 1 <= stopped < 400
  assert f"Stopped at step {stopped} after SIGTERM" in stderr
  assert _train_metrics(workdir)[-1]["step"] == stopped
  if stopped >= N:
    pytest.skip(f"stopped at step {stopped} >= {N}: nothing left to resume against the reference")
  result = train_loop.train_and_evaluate(_config(tiny_vocab_path), workdir)
  params_diff = _assert_params_close(result["params"], straight[1]["params"])
  print(f"SIGTERM stopped at step {stopped}; resumed to {N}: max |param difference| "
        f"{params_diff:.3g}")


@pytest.mark.slow
def test_losses_do_not_depend_on_the_mesh(straight, tiny_vocab_path, tmp_path):
  """8 CPU devices, mesh data=2 x fsdp=2 x tensor=2, vs the 1-device reference."""
  steps = 3
  _run_train_py(_flags(str(tmp_path), tiny_vocab_path, num_train_steps=steps,
                       mesh=dict(data=2, fsdp=2, tensor=2)), num_devices=8)
  diff = _assert_losses_match(_losses(str(tmp_path)), _losses(straight[0]), range(1, steps + 1))
  print(f"8 devices vs 1: max |loss difference| {diff:.3g}")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_losses_do_not_depend_on_the_process_count(tiny_vocab_path, tmp_path):
  """2 processes x 2 CPU devices vs 1 process with 4 devices, the same mesh (data=2 x tensor=2)
  and 2 input shards (the same global batches). Then SIGTERM to process 1 alone stops both
  processes at the same step, with a checkpoint."""
  steps = 3
  data = dict(num_input_shards=2)
  single = str(tmp_path / "single")
  _run_train_py(_flags(single, tiny_vocab_path, data=data, num_train_steps=steps,
                       mesh=dict(data=2, tensor=2)), num_devices=4)

  multi = str(tmp_path / "multi")
  args = _flags(multi, tiny_vocab_path, data=data, num_train_steps=400,
                mesh=dict(data=2, tensor=2))
  args += [f"--coordinator_address=127.0.0.1:{_free_port()}", "--num_processes=2"]
  procs = [subprocess.Popen([sys.executable] + args + [f"--process_id={i}"], cwd=ROOT,
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    deadline = time.time() + 240
    while len(_train_metrics(multi) if os.path.exists(os.path.join(multi, "metrics.jsonl"))
               else []) < steps:
      assert all(p.poll() is None for p in procs), [p.poll() for p in procs]
      assert time.time() < deadline, f"fewer than {steps} training steps logged"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, stderr in zip(procs, outputs):
    assert p.returncode == 0, stderr[-5000:]
  assert "JAX process 1/2, 2 local / 4 global devices" in outputs[1]
  stopped = checkpoints.make_manager(multi, read_only=True).latest_step()
  assert steps <= stopped < 400
  for stderr in outputs:
    assert f"Stopped at step {stopped} after SIGTERM" in stderr
  diff = _assert_losses_match(_losses(multi), _losses(single), range(1, steps + 1))
  print(f"2 processes vs 1: max |loss difference| {diff:.3g}; stopped at step {stopped}")
