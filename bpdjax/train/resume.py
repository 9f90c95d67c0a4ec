"""Where a resumed run starts: the newest intact checkpoint, or the step config.resume_step
names (e.g. the last one before a divergence, which `spike.SpikeGuard`'s message names).

Damaged steps met on the way are moved to WORKDIR/damaged_checkpoints/. With resume_step = N,
the steps after N are moved to WORKDIR/superseded_checkpoints/ (kept, out of orbax's way: the
run saves its own steps after N, and the next plain resume must not pick the abandoned ones),
and metrics.jsonl loses its lines after N as after any resume (metrics.MetricsLog).
"""
from __future__ import annotations

from typing import Any

from absl import logging
import ml_collections
import orbax.checkpoint as ocp

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import workdir as workdir_lib


def is_finetune_resume(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Whether this is a fine-tuning run (config.init.workdir) resuming its own checkpoints: it
  then reads its parent no more (the parent is read at step 0 only, and may be gone)."""
  return (configuration.init_source(config) == "workdir"
          and workdir_lib.is_workdir(workdir)
          and checkpoints.make_manager(workdir, read_only=True).latest_step() is not None)


def finetuned_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose model section is the one the run saved in `workdir` (its
  parent's, as `from_workdir.import_workdir` made it; dtype kept from `config`)."""
  saved = workdir_lib.load_config(workdir)
  config = config.copy_and_resolve_references()
  dtype = config.model.dtype
  for key, value in saved.model.items():
    if key in config.model:
      config.model[key] = value
  config.model.dtype = dtype
  return config


def restore(workdir: str, manager: ocp.CheckpointManager, abstract_state: Any,
            resume_step: int = -1) -> Any:
  """The state to resume from (resume_step < 0: the newest intact checkpoint).

  Raises:
    FileNotFoundError: resume_step names a step that does not exist;
    checkpoints.DamagedCheckpoint: it, or every checkpoint, is damaged.
  """
  step = None if resume_step is None or int(resume_step) < 0 else int(resume_step)
  if step is not None and step not in manager.all_steps():
    raise FileNotFoundError(f"config.resume_step={step}: no such checkpoint in {workdir!r} "
                            f"(steps {sorted(manager.all_steps())})")
  state, damaged = checkpoints.restore(manager, abstract_state, step)
  if damaged:
    moved = checkpoints.quarantine(workdir, manager, damaged)
    logging.warning("Resuming from step %d, the newest intact checkpoint: damaged step(s) %s "
                    "moved to %s (%s)", int(state.step), sorted(damaged), moved,
                    "; ".join(f"step {k}: {v}" for k, v in damaged.items()))
  if step is not None:
    newer = [s for s in manager.all_steps() if s > step]
    if newer:
      moved = checkpoints.quarantine(workdir, manager, newer,
                                     workdir_lib.SUPERSEDED_CHECKPOINT_DIR)
      logging.warning("config.resume_step=%d: the newer checkpoints %s were moved to %s", step,
                      sorted(newer), moved)
  logging.info("Resumed from step %d in %s", int(state.step), workdir)
  return state
