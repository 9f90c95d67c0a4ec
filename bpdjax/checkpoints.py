"""Orbax checkpoints of a workdir (see workdir.py for the layout): save, restore, compatibility."""
from __future__ import annotations

from typing import Any, Optional

import orbax.checkpoint as ocp

from bpdjax import workdir as workdir_lib

# Fields whose change makes saved parameters unusable; a restore into a differing config fails.
SHAPE_FIELDS = ("vocab_size", "num_heads_bpd", "head_type", "num_layers", "emb_dim", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim", "head_hidden_dim", "tie_embeddings",
                 "mlp_activation")


def check_compatible(saved_model_config, model_config, workdir: str) -> None:
  """Raises ValueError naming every shape-relevant model field that differs from the saved run."""
  diffs = [f"model.{k}: checkpoint has {saved_model_config[k]!r}, config has {model_config[k]!r}"
           for k in SHAPE_FIELDS
           if k in saved_model_config and saved_model_config[k] != model_config[k]]
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


def save(manager: ocp.CheckpointManager, step: int, state: Any, force: bool = False) -> bool:
  """Saves if the policy (interval or preemption) or `force` says so; returns whether it saved."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: Optional[int] = None) -> Any:
  """Restores into the shapes and shardings of `abstract_state` (jax.ShapeDtypeStruct leaves)."""
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint under {manager.directory}")
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  return restored.state


def restore_params(workdir: str, abstract_params: Any, step: Optional[int] = None) -> tuple[Any, int]:
  """Restores only the parameters of a training checkpoint (no optimizer state).

  Returns (params, step).
  """
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in workdir {workdir!r} (looked in {manager.directory}); train first")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={"params": abstract_params},
      restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
      partial_restore=True)))
  return restored.state["params"], step
