"""Fine-tuning from a bpdjax workdir (config.init.workdir): the run starts from the parent's
weights, heads included, with its own optimizer and schedule; shape or vocabulary mismatches
are clear errors."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from bpdjax import api
from bpdjax import losses
from bpdjax.data import pipeline
from bpdjax.train import loop as train_loop
from bpdjax.train import state as train_state
from bpdjax.train import steps
from bpdjax.configs import tiny

QUICK = dict(log_every_steps=1, eval_every_steps=1000, num_eval_batches=1,
             checkpoint_every_steps=1000)


def _config(**overrides):
  config = tiny.get_config()
  config.update({**QUICK, **overrides})
  return config


@pytest.fixture(scope="module")
def parent(tiny_vocab_path, tmp_path_factory):
  """A tiny workdir trained 4 steps from scratch."""
  workdir = str(tmp_path_factory.mktemp("parent"))
  config = _config(num_train_steps=4, warmup_steps=2)
  config.data.vocab_path = tiny_vocab_path
  train_loop.train_and_evaluate(config, workdir)
  return workdir


def _child_config(parent_dir, **overrides):
  config = _config(num_train_steps=2, warmup_steps=1, learning_rate=1e-3, **overrides)
  config.init.workdir = parent_dir
  return config


def test_first_step_loss_is_the_parents_loss(parent, tmp_path):
  loaded = api.load(parent)
  batch = next(pipeline.make_train_iterator(loaded.config, os.path.join(parent, "vocab.model"),
                                            start_step=123))
  head_weights = losses.head_loss_weights(loaded.model.config.num_heads_bpd, 1.0)
  parent_loss, _ = jax.jit(lambda p, b: steps.compute_loss(p, b, loaded.model, head_weights))(
      loaded.params, batch)
  child = str(tmp_path / "child")
  result = train_loop.train_and_evaluate(_child_config(parent), child,
                                         train_iter_fn=lambda *_: iter([batch, batch]))
  with open(os.path.join(child, "metrics.jsonl")) as f:
    record = [r for r in map(json.loads, f) if "loss" in r][0]
  assert record["step"] == 1
  print(f"first-step loss {record['loss']:.7f}, parent's loss on the batch "
        f"{float(parent_loss):.7f}, difference {abs(record['loss'] - float(parent_loss)):.2e}")
  assert abs(record["loss"] - float(parent_loss)) <= 1e-5
  # Fresh optimizer and schedule: the child counts its own steps from 0 and logs its own
  # learning rate (warmup 1 step to 1e-3), not the parent's.
  assert result["step"] == 2
  schedule = train_state.make_schedule(_child_config(parent))
  assert record["learning_rate"] == pytest.approx(float(schedule(1)))
  # The child has its parent's vocabulary and model, and its parameters moved off the parent's.
  assert open(os.path.join(child, "vocab.model"), "rb").read() == open(
      os.path.join(parent, "vocab.model"), "rb").read()
  trained = api.load(child)
  assert trained.config.model.to_dict() == loaded.config.model.to_dict()
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
           zip(jax.tree.leaves(trained.params), jax.tree.leaves(loaded.params))]
  assert max(moved) > 0


def test_a_child_resumes_after_its_parent_is_deleted(parent, tmp_path):
  """The parent is read at step 0 only: a fine-tuned run resumes from its own checkpoints."""
  parent_copy = str(tmp_path / "parent")
  shutil.copytree(parent, parent_copy)
  child = str(tmp_path / "child")
  config = _child_config(parent_copy)
  assert train_loop.train_and_evaluate(config, child)["step"] == 2
  shutil.rmtree(parent_copy)
  config.num_train_steps = 4
  resumed = train_loop.train_and_evaluate(config, child)
  assert resumed["step"] == 4
  assert api.load(child).step == 4
  steps = [json.loads(l)["step"] for l in open(os.path.join(child, "metrics.jsonl"))
           if "loss" in json.loads(l)]
  assert steps == [1, 2, 3, 4]


def test_init_step_picks_the_checkpoint(parent, tmp_path):
  config = _child_config(parent)
  config.init.step = 3  # The parent saved steps 4 only (checkpoint_every_steps=1000, forced end).
  with pytest.raises(FileNotFoundError, match=r"init.step=3: .* steps \[4\] only"):
    train_loop.train_and_evaluate(config, str(tmp_path / "child"))


@pytest.mark.parametrize("key,value,field", [("num_heads_bpd", 3, "num_heads_bpd"),
                                             ("vocab_size", 256, "vocab_size"),
                                             ("head_type", "medusa", "head_type")])
def test_shape_mismatch_is_an_error(parent, tmp_path, key, value, field):
  config = _child_config(parent)
  config.model[key] = value
  with pytest.raises(ValueError, match=rf"init.workdir=.* holds another model .*model.{field}: "
                     rf"init.workdir has .*, the config asks for {value!r}"):
    train_loop.train_and_evaluate(config, str(tmp_path / "child"))
  assert not os.path.exists(tmp_path / "child" / "checkpoints")


def test_other_vocabulary_is_an_error(parent, tmp_path):
  other = tmp_path / "other.model"
  other.write_bytes(b"not the parent's vocabulary")
  config = _child_config(parent)
  config.data.vocab_path = str(other)
  with pytest.raises(ValueError, match=r"is another vocabulary than init.workdir's"):
    train_loop.train_and_evaluate(config, str(tmp_path / "child"))


def test_workdir_and_hf_model_together_is_an_error(parent, tmp_path):
  config = _child_config(parent)
  config.init.hf_model = "/some/model"
  with pytest.raises(ValueError, match=r"either init.workdir .* or init.hf_model"):
    train_loop.train_and_evaluate(config, str(tmp_path / "child"))


def test_not_a_workdir_is_an_error(tmp_path):
  config = _child_config(str(tmp_path / "nothing"))
  with pytest.raises(FileNotFoundError, match=r"config.init.workdir=.*nothing.*No config.json "
                                              r"in workdir"):
    train_loop.train_and_evaluate(config, str(tmp_path / "child"))
