"""Never train on bad state: the divergence guard and the resume contract.

Divergence: every train step reports `finite` (loss and gradient norm both finite). By default
the first non-finite step stops training with `Diverged` (no checkpoint is written for it, so
the checkpoints on disk, and what pruning keeps, stay finite). With config.max_nonfinite_skips
= N > 0 a non-finite step's update is not applied (parameters and optimizer state carried over,
the step counter advances so the data stream stays aligned) up to N times in a run; the next one
stops. Before every save the parameters themselves are checked too.

Resume contract: a resume must read the same data stream as the run it continues, or batches
would repeat or be skipped; `check_resume` refuses one whose data-stream settings differ, naming
them, unless config.allow_data_stream_change is set.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# Settings that decide which batch comes at which step (pipeline.make_train_iterator).
DATA_STREAM_FIELDS = ("batch_size", "seed", "data.task", "data.seq_len", "data.num_input_shards",
                      "data.token_dir", "data.corpus_dir", "data.eval_fraction",
                      "data.shuffle_buffer")


class Diverged(RuntimeError):
  """Training met a non-finite loss, gradient norm or parameter; the message names the step."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def guarded_step(step_fn: Callable, skip_nonfinite: bool) -> Callable:
  """step_fn(state, batch) -> (state, metrics) plus metrics["finite"] ([] bool). With
  `skip_nonfinite` a non-finite step keeps the old params and opt_state (step still + 1)."""
  def fn(state, batch):
    new_state, metrics = step_fn(state, batch)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      new_state = new_state.replace(params=keep(new_state.params, state.params),
                                    opt_state=keep(new_state.opt_state, state.opt_state))
    return new_state, dict(metrics, finite=finite)
  return fn


class DivergenceGuard:
  """Host side: counts non-finite steps and raises `Diverged` once past the allowance."""

  def __init__(self, max_skips: int, learning_rate: float):
    self.max_skips = max_skips
    self.learning_rate = learning_rate
    self.skipped: list[int] = []

  def check(self, first_step: int, host_metrics: Sequence[dict], newest_checkpoint) -> None:
    """host_metrics[i] are step first_step + i's metrics (numpy, with "finite")."""
    for i, m in enumerate(host_metrics):
      if bool(m["finite"]):
        continue
      step = first_step + i
      self.skipped.append(step)
      if len(self.skipped) > self.max_skips:
        raise Diverged(
            f"Training diverged at step {step}: loss {float(m['loss'])}, gradient norm "
            f"{float(m['grad_norm'])} (non-finite"
            + (f"; {self.max_skips} such updates skipped already, steps {self.skipped[:-1]}"
               if self.max_skips else "")
            + f"). No checkpoint was written for it; the newest checkpoint is "
            f"{_describe(newest_checkpoint)}. Lower learning_rate (now {self.learning_rate:g}) "
            f"or set max_nonfinite_skips to skip such updates.", step)

  @staticmethod
  def check_params(step: int, bad_leaves: Sequence[str], newest_checkpoint) -> None:
    if bad_leaves:
      raise Diverged(f"Parameters are non-finite at step {step} ({len(bad_leaves)} arrays, e.g. "
                     f"{', '.join(bad_leaves[:3])}); not saved. The newest checkpoint is "
                     f"{_describe(newest_checkpoint)}.", step)


def _describe(step) -> str:
  return ("none" if step is None else
          f"step {step} (the last one trusted: --config.resume_step={step} resumes from it)")


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value.get(part) if hasattr(value, "get") else None
  return value


def check_resume(saved_config, config, workdir: str) -> None:
  """ValueError naming every data-stream setting (DATA_STREAM_FIELDS) of `config` that differs
  from the saved run's, unless config.allow_data_stream_change."""
  if config.get("allow_data_stream_change", False):
    return
  diffs = [f"{k}: checkpoint has {_get(saved_config, k)!r}, config has {_get(config, k)!r}"
           for k in DATA_STREAM_FIELDS
           if _get(saved_config, k) is not None and _get(saved_config, k) != _get(config, k)]
  if diffs:
    raise ValueError(
        f"Resuming {workdir!r} with another data stream would repeat or skip batches: "
        + "; ".join(diffs) + ". Use the run's settings, a new workdir, or "
        "--config.allow_data_stream_change=True to resume anyway (config.json is left as it is).")
