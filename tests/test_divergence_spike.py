"""Divergence caught before it is checkpointed (bpdjax/train/spike.py): a finite blow-up
(learning_rate = 1e9) stops training before any spiked step is saved, the checkpoints from
before it are kept, the message names the last step trusted, and --config.resume_step=N
continues from a named step with a sane learning rate."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from bpdjax import api
from bpdjax import checkpoints
from bpdjax import workdir as workdir_lib
from bpdjax.train import guard
from bpdjax.train import loop as train_loop
from bpdjax.train import spike

LATEST, OLDER = 30, 20  # The fixture's checkpoints.


def _metrics(loss, grad_norm=1.0):
  """One step's host metrics of a 1-head model whose loss is `loss`."""
  return {"loss_sum": np.array([loss]), "count": np.array([1.0]), "grad_norm": grad_norm,
          "finite": np.isfinite(loss) and np.isfinite(grad_norm)}


def test_spike_guard_unit():
  g = spike.SpikeGuard(10.0, window=4, min_history=3, head_weights=[1.0], learning_rate=1.0)
  g.check(1, [_metrics(5.0), _metrics(4.0)], None)           # Too little history to judge.
  g.check(3, [_metrics(4.5, grad_norm=30.0)], None)          # Still short: joins the history.
  with pytest.raises(guard.Diverged, match=r"at step 4: loss 60 is 13.3 times the median 4.5"):
    g.check(4, [_metrics(60.0)], 2)
  with pytest.raises(guard.Diverged, match=r"grad.* norm 500 .*resume_step=2"):
    g.check(4, [_metrics(4.0, grad_norm=500.0)], 2)
  g.check(4, [_metrics(44.0)], 2)                            # Under 10 x the median: fine.
  with pytest.raises(guard.Diverged, match=r"raised the loss of its own batch from 4 to 41"):
    g.check_state(5, 41.0, _metrics(4.0), 4)
  g.check(5, [_metrics(0.01)] * 4 + [_metrics(0.5, grad_norm=0.9)], 4)  # Near 0: no spike.
  off = spike.SpikeGuard(0.0, 4, 3, [1.0], 1.0)
  off.check(1, [_metrics(1.0)] * 3 + [_metrics(1e9)], None)  # Off: nothing stops.
  with pytest.raises(ValueError, match="divergence_spike_factor must be 0 .off. or > 1"):
    spike.SpikeGuard(0.5, 4, 3, [1.0], 1.0)


def _steps_logged(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, workdir_lib.METRICS_FILE))]


def test_a_finite_blow_up_is_never_checkpointed_and_resume_step_continues(trained_tiny_workdir,
                                                                         tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_tiny_workdir, workdir)
  config = workdir_lib.load_config(workdir)
  config.update(learning_rate=1e9, warmup_steps=0, num_train_steps=LATEST + 20,
                checkpoint_every_steps=1, max_checkpoints_to_keep=2, log_every_steps=1)
  with pytest.raises(guard.Diverged, match=rf"the last step trusted is step {LATEST} .*"
                                           rf"--config.resume_step={LATEST}") as e:
    train_loop.train_and_evaluate(config, workdir)
  assert e.value.step == LATEST + 1  # Its update wrecked the parameters: caught before saving.
  manager = checkpoints.make_manager(workdir, read_only=True)
  assert sorted(manager.all_steps()) == [OLDER, LATEST]  # Nothing pruned, nothing spiked saved.
  loaded = api.load(workdir)
  assert loaded.step == LATEST
  assert max(float(np.abs(np.asarray(x)).max()) for x in
             jax.tree.leaves(loaded.params)) < 100

  config.update(learning_rate=3e-3, num_train_steps=OLDER + 12, resume_step=OLDER)
  assert train_loop.train_and_evaluate(config, workdir)["step"] == OLDER + 12
  assert os.path.isdir(os.path.join(workdir, workdir_lib.SUPERSEDED_CHECKPOINT_DIR, str(LATEST)))
  lines = _steps_logged(workdir)
  steps = [r["step"] for r in lines if "loss" in r]
  assert steps == sorted(set(steps)) and steps[-12:] == list(range(OLDER + 1, OLDER + 13))
  losses = [r["loss"] for r in lines if "loss" in r][-12:]
  assert np.isfinite(losses).all() and np.mean(losses[-4:]) < np.mean(losses[:4]), losses

  config.resume_step = 999
  with pytest.raises(FileNotFoundError, match=r"resume_step=999: no such checkpoint"):
    train_loop.train_and_evaluate(config, workdir)


def test_a_manifest_less_checkpoint_is_verified_by_reading_it(trained_tiny_workdir, tmp_path):
  """A step without its sha256 manifest (a kill between orbax's files and the manifest) is not
  trusted as intact: with a file cut short a resume names it as damaged and goes on from the
  older one; a step that never existed "does not exist"."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_tiny_workdir, workdir)
  step_dir = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, str(LATEST))
  os.remove(os.path.join(step_dir, workdir_lib.CHECKPOINT_MANIFEST))
  data = max((os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
              for f in fs), key=os.path.getsize)
  # Cut short, as a kill mid-write leaves it: reading its second half fails. Overwriting bytes
  # in place is not a sure test, since damage inside a compressed chunk or an integer array can
  # read back as finite garbage, which no re-read can tell from data (it failed on CI that way).
  os.truncate(data, os.path.getsize(data) // 2)
  warnings = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_loop.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    mp.setattr(checkpoints.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    config = workdir_lib.load_config(workdir)
    config.num_train_steps = LATEST + 1
    assert train_loop.train_and_evaluate(config, workdir)["step"] == LATEST + 1
  assert any(f"step {LATEST}" in w and "damaged" in w and "no manifest" in w
             for w in warnings), warnings
  assert any(f"Resuming from step {OLDER}" in w for w in warnings), warnings
  assert os.path.isdir(os.path.join(workdir, workdir_lib.DAMAGED_CHECKPOINT_DIR, str(LATEST)))
  with pytest.raises(FileNotFoundError, match=r"step 999 does not exist .*steps \[20, 31\]"):
    api.load(workdir, step=999)
