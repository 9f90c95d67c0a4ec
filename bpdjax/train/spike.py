"""Divergence that is still finite: a loss or gradient norm far above its recent history.

`guard.DivergenceGuard` stops at the first non-finite value, but a run can blow up while every
number stays finite (learning_rate = 1e9: the loss reached 8e23, the parameters 1e8, and the
guard saved them as "the newest checkpoint"). `SpikeGuard` keeps the running median of the last
config.divergence_window steps' loss and gradient norm (seeded on resume from metrics.jsonl)
and stops training with `guard.Diverged` when a step's value exceeds
config.divergence_spike_factor times it (0 turns the check off); before a checkpoint is saved,
the loss of the very state being saved (on the step's batch) must pass the same test, because
an update can wreck the parameters without its own loss (computed before the update) showing
it. So no checkpoint is ever written from a step the guard would call diverged, and the
checkpoints from before the spike are never pruned by the run that spiked; the message names
the newest checkpoint, the last step it trusts, and how to resume from it
(--config.resume_step).
"""
from __future__ import annotations

import collections
import json
from typing import Optional, Sequence

import numpy as np

from bpdjax import fileio
from bpdjax import workdir as workdir_lib
from bpdjax.train import guard

# A reference (median, or the batch's loss before the update) below this counts as this when
# judging a spike: a loss or gradient norm near 0 (an easy fine-tuning task, a converged run)
# jumps by large factors harmlessly, while a blow-up is far above it (1e29 at lr = 1e9).
REFERENCE_FLOOR = 1.0


def step_loss(metrics: dict, head_weights: np.ndarray) -> float:
  """The loss of one step's metrics (per-head sums), as `losses.summarize` computes it."""
  per_head = np.asarray(metrics["loss_sum"]) / np.maximum(np.asarray(metrics["count"]), 1.0)
  return float(np.sum(per_head * np.asarray(head_weights)))


def logged_history(workdir: str, up_to_step: int) -> list[dict]:
  """{"loss", "grad_norm"} of the metrics.jsonl lines at steps <= `up_to_step` (a resumed run's
  history), oldest first; lines that do not parse are skipped."""
  path = workdir_lib.path(workdir, workdir_lib.METRICS_FILE)
  if not fileio.exists(path):
    return []
  out = []
  for line in fileio.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if (isinstance(record, dict) and record.get("step", 0) <= up_to_step
        and isinstance(record.get("loss"), (int, float))
        and isinstance(record.get("grad_norm"), (int, float))):
      out.append({"loss": float(record["loss"]), "grad_norm": float(record["grad_norm"])})
  return out


class SpikeGuard:
  """Host side: the running medians and the checks (module docstring)."""

  def __init__(self, factor: float, window: int, min_history: int, head_weights,
               learning_rate: float):
    if factor < 0 or (0 < factor <= 1):
      raise ValueError(f"divergence_spike_factor must be 0 (off) or > 1, got {factor}")
    if factor and (window < 1 or min_history < 1):
      raise ValueError(f"divergence_window ({window}) and divergence_min_history "
                       f"({min_history}) must be >= 1")
    self.factor = factor
    self.min_history = min_history
    self.head_weights = np.asarray(head_weights)
    self.learning_rate = learning_rate
    self.history = {k: collections.deque(maxlen=max(window, 1)) for k in ("loss", "grad_norm")}

  @classmethod
  def from_config(cls, config, head_weights) -> "SpikeGuard":
    return cls(float(config.get("divergence_spike_factor", 10.0)),
               int(config.get("divergence_window", 100)),
               int(config.get("divergence_min_history", 5)), head_weights,
               config.learning_rate)

  @property
  def enabled(self) -> bool:
    return self.factor > 0

  def seed(self, records: Sequence[dict]) -> None:
    """Adds earlier values (e.g. `logged_history`) to the history."""
    for r in records:
      for key, values in self.history.items():
        values.append(r[key])

  def _spike(self, key: str, value: float) -> Optional[str]:
    values = self.history[key]
    if not self.enabled or len(values) < self.min_history:
      return None
    median = float(np.median(values))
    if value > self.factor * max(median, REFERENCE_FLOOR):
      return (f"{key.replace('_', ' ')} {value:.4g} is {value / median:.3g} times the median "
              f"{median:.4g} of the last {len(values)} steps")
    return None

  def _diverged(self, step: int, what: str, newest_checkpoint) -> guard.Diverged:
    trusted = ("none" if newest_checkpoint is None else
               f"step {newest_checkpoint} (the newest checkpoint); resume from it with "
               f"--config.resume_step={newest_checkpoint}")
    return guard.Diverged(
        f"Training diverged at step {step}: {what} (divergence_spike_factor={self.factor:g}; "
        f"0 turns this check off). No checkpoint was written for it; the last step trusted is "
        f"{trusted} and a lower learning_rate (now {self.learning_rate:g}).", step)

  def check(self, first_step: int, host_metrics: Sequence[dict], newest_checkpoint) -> None:
    """host_metrics[i]: step first_step + i's metrics (numpy). Finite steps that pass join the
    history; non-finite ones are DivergenceGuard's."""
    for i, m in enumerate(host_metrics):
      if not bool(m["finite"]):
        continue
      values = {"loss": step_loss(m, self.head_weights), "grad_norm": float(m["grad_norm"])}
      for key, value in values.items():
        problem = self._spike(key, value)
        if problem:
          raise self._diverged(first_step + i, problem, newest_checkpoint)
      for key, value in values.items():
        self.history[key].append(value)

  def check_state(self, step: int, state_loss: float, step_metrics: dict,
                  newest_checkpoint) -> None:
    """Before saving step `step`: `state_loss`, the loss of the state to be saved on its
    step's batch, must be finite and no spike, against the history and against the loss of
    the same batch before the step's update (`step_metrics`: known even without a history)."""
    if not self.enabled:
      return
    before = step_loss(step_metrics, self.head_weights)
    problem = (f"the loss of its parameters is {state_loss}" if not np.isfinite(state_loss)
               else self._spike("loss", state_loss))
    if not problem and state_loss > self.factor * max(before, REFERENCE_FLOOR):
      problem = (f"its update raised the loss of its own batch from {before:.4g} to "
                 f"{state_loss:.4g}")
    if problem:
      raise self._diverged(step, f"{problem} (the state about to be saved)", newest_checkpoint)
