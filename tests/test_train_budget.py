"""config.max_train_seconds (bpdjax/train/budget.py): a budgeted run stops at the first step
boundary past its wall-clock budget with a checkpoint of that step, and a later run resumes from
it; a budget <= 0 is refused before anything is written."""
import json
import os

import pytest

from bpdjax import checkpoints
from bpdjax.train import budget as budget_lib
from bpdjax.train import loop as train_loop
from bpdjax.configs import tiny

BUDGET = 5.5  # Seconds of the fake clock below: one second per step, setup included.


def _one_second_per_call():
  """A clock that advances 1 s per reading: the budget reads it at the start and once per step,
  so step k ends at t = k and a 5.5 s budget is spent at step 6."""
  t = [-1.0]

  def clock():
    t[0] += 1.0
    return t[0]
  return clock


def _config(vocab_path, **overrides):
  config = tiny.get_config()
  config.data.vocab_path = vocab_path
  config.update(dict(num_train_steps=100_000, schedule_steps=400, log_every_steps=1,
                     eval_every_steps=100_000, num_eval_batches=1, checkpoint_every_steps=100_000,
                     tensorboard=False))
  config.update(overrides)
  return config


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_budget_stops_within_one_step_with_a_checkpoint_and_resumes(tiny_vocab_path, tmp_path,
                                                                    monkeypatch):
  workdir = str(tmp_path)
  monkeypatch.setattr(budget_lib, "monotonic", _one_second_per_call())
  result = train_loop.train_and_evaluate(_config(tiny_vocab_path, max_train_seconds=BUDGET),
                                         workdir)
  stopped = result["step"]
  assert stopped == 6  # The first step boundary at or past 5.5 s.
  assert checkpoints.make_manager(workdir, read_only=True).latest_step() == stopped
  records = _records(workdir)
  stop = [r for r in records if "stopped_by_budget" in r]
  assert len(stop) == 1 and stop[0]["step"] == stopped
  info = stop[0]["stopped_by_budget"]
  # The stop came at the first step boundary past the budget: the step before ended inside it.
  assert info == {"max_train_seconds": BUDGET, "elapsed_seconds": 6.0, "last_step_seconds": 1.0}
  assert [r["step"] for r in records if "loss" in r][-1] == stopped

  monkeypatch.setattr(budget_lib, "monotonic", _one_second_per_call())
  more = 3  # No budget now: the resumed run ends at num_train_steps.
  resumed = train_loop.train_and_evaluate(
      _config(tiny_vocab_path, num_train_steps=stopped + more), workdir)
  assert resumed["step"] == stopped + more
  records = _records(workdir)
  assert {"step": stopped, "resumed_from": stopped, "dropped_lines": 0}.items() <= next(
      r for r in records if "resumed_from" in r).items()
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == list(range(1, stopped + more + 1))  # Each step once, none lost or repeated.


@pytest.mark.parametrize("seconds", [0, -5.0])
def test_budget_must_be_positive(seconds, tiny_vocab_path, tmp_path):
  with pytest.raises(ValueError, match=r"config.max_train_seconds=.* must be > 0"):
    train_loop.train_and_evaluate(_config(tiny_vocab_path, max_train_seconds=seconds),
                                  str(tmp_path))
  assert os.listdir(tmp_path) == []  # Refused before the workdir was touched.


def test_no_budget_is_never_spent():
  clock = iter([0.0, 1e9]).__next__
  assert not budget_lib.WallClockBudget(None, clock=clock).spent()
