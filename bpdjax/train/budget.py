"""config.max_train_seconds: a wall-clock budget for one train.py run.

The clock starts when the run starts (setup and compilation count: the budget is what the run
may take). At each step boundary the loop asks `spent()`; the first step that ends at or past the
budget is the last one, checkpointed like a SIGTERM stop, and the run exits cleanly (exit 0). A
later run resumes from that checkpoint with a budget of its own; the learning-rate schedule still
spans num_train_steps (or schedule_steps), so a budgeted run is a prefix of the full one.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

monotonic = time.monotonic  # The budget's clock (a test replaces it).


def check(seconds: Optional[float]) -> None:
  """ValueError unless `seconds` is None (no budget) or a positive number."""
  if seconds is not None and not seconds > 0:
    raise ValueError(f"config.max_train_seconds={seconds!r} must be > 0 (seconds of wall clock "
                     "for this run; leave it unset for no budget)")


class WallClockBudget:
  """Tracks one run's elapsed time against `seconds` (None: no budget, never spent)."""

  def __init__(self, seconds: Optional[float], clock: Optional[Callable[[], float]] = None):
    check(seconds)
    self.seconds = None if seconds is None else float(seconds)
    self._clock = clock or monotonic
    self._start = self._last = self._clock()
    self.elapsed = 0.0
    self.last_step_seconds = 0.0

  def spent(self) -> bool:
    """Call once per step boundary: whether the budget is used up (the step just ended is the
    last). Records the time since the previous call as that step's duration."""
    now = self._clock()
    self.last_step_seconds, self._last = now - self._last, now
    self.elapsed = now - self._start
    return self.seconds is not None and self.elapsed >= self.seconds

  def record(self) -> dict:
    """The metrics.jsonl record of a budget stop: the budget, the elapsed time at the stop and
    the last step's duration (the stop came within one step: elapsed - last_step < budget)."""
    return {"stopped_by_budget": {"max_train_seconds": self.seconds,
                                  "elapsed_seconds": round(self.elapsed, 3),
                                  "last_step_seconds": round(self.last_step_seconds, 3)}}
