"""Orbax checkpoints of a workdir (see workdir.py for the layout): save (with an integrity
manifest), restore from the newest intact checkpoint, compatibility.

A restore verifies the step's manifest (checkpoint_integrity.py), reads it, and checks that its
parameters are finite. A step without a manifest (a save cut short between orbax's files and
the manifest, or a checkpoint from before manifests) is not trusted as intact: it is read and
checked whole (every array of what is restored finite) and used with a warning naming it, or
else it is damaged. Without an explicit step a damaged latest checkpoint is skipped with a
warning naming it, for the newest intact one; with an explicit step it is a `DamagedCheckpoint`
error naming the step and the intact ones, and a step that never existed is a
FileNotFoundError saying so.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from bpdjax import checkpoint_integrity as integrity
from bpdjax import fileio
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib

_RELISTS = 5  # Times a restore re-lists the steps when one vanishes (a running training prunes).


class DamagedCheckpoint(ValueError):
  """A checkpoint that fails verification, cannot be read, or holds non-finite parameters."""

# Fields whose change makes saved parameters unusable; a restore into a differing config fails.
SHAPE_FIELDS = ("vocab_size", "num_heads_bpd", "head_type", "num_layers", "emb_dim", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim", "head_hidden_dim", "tie_embeddings",
                 "mlp_activation", "qkv_bias", "qk_norm", "post_norms")


def check_compatible(saved_model_config, model_config, workdir: str) -> None:
  """Raises ValueError naming every shape-relevant model field that differs from the saved run."""
  diffs = [f"model.{k}: checkpoint has {saved_model_config[k]!r}, config has {model_config[k]!r}"
           for k in SHAPE_FIELDS
           if k in saved_model_config and k in model_config
           and saved_model_config[k] != model_config[k]]
  if diffs:
    raise ValueError(f"Checkpoint in {workdir!r} does not match the config: " + "; ".join(diffs))


def make_manager(workdir: str, save_every_steps: int = 1, max_to_keep: int = 3,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A manager that saves every `save_every_steps` steps (and at preemption) and keeps the latest N."""
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every_steps),
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      create=not read_only, read_only=read_only,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(workdir_lib.checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, force: bool = False,
         write_manifest: bool = True) -> bool:
  """Saves if the policy (interval or preemption) or `force` says so, then (process 0) records
  the step's sha256 manifest; returns whether it saved. Saving is synchronous (make_manager), so
  the files are final when the manifest is written."""
  saved = manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                       force=force)
  if saved and write_manifest and jax.process_index() == 0:
    integrity.write_manifest(integrity.step_dir(manager.directory, step))
  return saved


def _short(e: Exception, limit: int = 300) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


_NO_MANIFEST = "it has no manifest (unverified: a save cut short?)"


def _nonfinite_problem(tree: Any, what: str = "parameters") -> Optional[str]:
  bad = params_lib.nonfinite_leaves(tree)
  if not bad:
    return None
  return f"non-finite {what} (NaN or inf) in {len(bad)} arrays, e.g. {', '.join(bad[:3])}"


def _attempt(manager, step: int, read: Callable[[int], Any],
             check: Callable[[Any], Optional[str]]) -> tuple[Any, Optional[str], bool]:
  """(value, problem or None, vanished) of reading one step (see the module docstring for a
  step without a manifest)."""
  directory = integrity.step_dir(manager.directory, step)
  if not fileio.isdir(directory):
    return None, "removed while loading", True
  problem = integrity.verify(directory)
  if problem:
    return None, problem, False
  unverified = not integrity.has_manifest(directory)
  try:
    value = read(step)
  except Exception as e:  # pylint: disable=broad-except  # Any read failure is damage.
    if not fileio.isdir(directory):
      return None, "removed while loading", True
    return None, (f"{_NO_MANIFEST}, and " if unverified else "") + f"unreadable ({_short(e)})", False
  problem = check(value) or (_nonfinite_problem(value, "values") if unverified else None)
  if problem:
    return None, (f"{_NO_MANIFEST}, and " if unverified else "") + problem, False
  if unverified:
    logging.warning("Checkpoint step %d in %s has no manifest (%s): re-read, what was read is "
                    "complete and finite; using it.", step, manager.directory,
                    workdir_lib.CHECKPOINT_MANIFEST)
  return value, None, False


def intact_steps(manager: ocp.CheckpointManager) -> list[int]:
  """Steps whose files match their manifest (or that have none), newest first."""
  return [s for s in sorted(manager.all_steps(), reverse=True)
          if integrity.verify(integrity.step_dir(manager.directory, s)) is None]


def restore_intact(manager: ocp.CheckpointManager, read: Callable[[int], Any],
                   check: Callable[[Any], Optional[str]], step: Optional[int] = None
                   ) -> tuple[Any, int, dict[int, str]]:
  """read(step) of `step`, or of the newest intact step when None (see module docstring).

  Returns (value, step, {damaged step: what is wrong}) (the damaged ones newer than `step`).
  Raises FileNotFoundError (no checkpoint), DamagedCheckpoint (the step asked for, or all, damaged).
  """
  where = manager.directory
  if step is not None:
    if step not in manager.all_steps():
      raise FileNotFoundError(f"Checkpoint step {step} does not exist in {where}; its "
                              f"checkpoints are at steps {sorted(manager.all_steps()) or 'none'}")
    value, problem, _ = _attempt(manager, step, read, check)
    if problem is None:
      return value, step, {}
    others = [s for s in intact_steps(manager) if s != step]
    raise DamagedCheckpoint(f"Checkpoint step {step} in {where} is damaged: {problem}. Intact "
                            f"checkpoints (by their manifests): {others or 'none'}")
  damaged: dict[int, str] = {}
  for _ in range(_RELISTS):
    manager.reload()
    steps = [s for s in sorted(manager.all_steps(), reverse=True) if s not in damaged]
    if not steps and not damaged:
      raise FileNotFoundError(f"No checkpoint under {where}")
    vanished = False
    for s in steps:
      value, problem, vanished = _attempt(manager, s, read, check)
      if vanished:
        break  # Re-list: newer steps may have appeared.
      if problem is None:
        return value, s, damaged
      damaged[s] = problem
      logging.warning("Checkpoint step %d in %s is damaged (%s); trying an older one.", s, where,
                      problem)
    if not vanished:
      break
  raise DamagedCheckpoint(f"No intact checkpoint in {where}: " + "; ".join(
      f"step {s}: {p}" for s, p in damaged.items()))


def quarantine(workdir: str, manager: ocp.CheckpointManager, steps,
               folder: str = workdir_lib.DAMAGED_CHECKPOINT_DIR) -> list[str]:
  """Moves step folders to WORKDIR/`folder`/ (damaged ones by default; kept for inspection, out
  of orbax's way so that training can save those steps again); returns where they went."""
  moved = []
  if jax.process_index() == 0:
    for s in sorted(steps):
      target = fileio.join(workdir, folder, str(s))
      n = 1
      while fileio.exists(target):
        target = fileio.join(workdir, folder, f"{s}.{n}")
        n += 1
      fileio.makedirs(fileio.join(workdir, folder))
      fileio.as_path(integrity.step_dir(manager.directory, s)).rename(target)
      moved.append(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("bpdjax_quarantine")
  manager.reload()
  return moved


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: Optional[int] = None
            ) -> tuple[Any, dict[int, str]]:
  """Restores into the shapes and shardings of `abstract_state` (jax.ShapeDtypeStruct leaves),
  from the newest intact checkpoint when `step` is None. Returns (state, {damaged step: why})."""
  def read(s):
    return manager.restore(
        s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))).state
  state, _, damaged = restore_intact(
      manager, read, lambda st: _nonfinite_problem(st.params) or _nonfinite_problem(st, "values"),
      step)
  return state, damaged


def restore_params(workdir: str, abstract_params: Any, step: Optional[int] = None) -> tuple[Any, int]:
  """Restores only the parameters of a training checkpoint (no optimizer state).

  Returns (params, step).
  Without `step`, a damaged latest checkpoint is skipped (warning) for the newest intact one;
  a damaged `step` is a DamagedCheckpoint error naming it and the intact ones. Parameters
  holding NaN or inf count as damage (they are never returned).
  """
  manager = make_manager(workdir, read_only=True)
  if step is None and manager.latest_step() is None:
    raise FileNotFoundError(
        f"No checkpoint in workdir {workdir!r} (looked in {manager.directory}); train first")

  def read(s):
    restored = manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params},
        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
        partial_restore=True)))
    return restored.state["params"]
  params, step, _ = restore_intact(manager, read, _nonfinite_problem, step)
  return params, step
