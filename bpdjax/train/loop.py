"""The training loop: resume (from the newest intact checkpoint, same data stream), train and
evaluate, checkpoint (finite states only), stop cleanly on SIGTERM or with `guard.Diverged`."""
from __future__ import annotations

import functools
import math
import signal
import time
from typing import Any, Callable, Optional

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import fileio
from bpdjax import losses
from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import partitioning
from bpdjax import workdir as workdir_lib
from bpdjax import workdir_lock
from bpdjax.importers import pretrained as pretrained_lib
from bpdjax.train import budget as budget_lib
from bpdjax.train import guard
from bpdjax.train import inputs
from bpdjax.train import metrics as metrics_lib
from bpdjax.train import resume
from bpdjax.train import spike
from bpdjax.train import state as state_lib
from bpdjax.train import steps


class _StopSignal:
  """Turns SIGTERM into a request to checkpoint and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: will checkpoint and stop after this step.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _stop_agreed(requested: bool) -> bool:
  """Whether any process got SIGTERM; all processes agree, so they stop at the same step."""
  if jax.process_count() == 1:
    return requested
  return bool(np.any(multihost_utils.process_allgather(np.int32(requested))))


def _check_base(workdir, log, step, pretrained, params, heads_only, checksums=None) -> dict:
  """Logs the sha256 of the base parameters (everything but the block heads, see
  `params_lib.params_checksum`): of the import and of the state at the start (checksums=None)
  or at the end of this run; writes WORKDIR/base_checksum.json and a metrics.jsonl line. With
  train_heads_only a base that differs from the import's is an error (e.g. a resume from a
  checkpoint trained on another model)."""
  current = params_lib.params_checksum(params, exclude_prefix="head_")
  if checksums is None:
    checksums = {"imported": params_lib.params_checksum(pretrained, exclude_prefix="head_"),
                 "start": current, "start_step": step}
    record = {"base_checksum_imported": checksums["imported"], "base_checksum_start": current}
    logging.info("Base parameters sha256: imported %s, start (step %d) %s",
                 checksums["imported"], step, current)
  else:
    checksums = dict(checksums, end=current, end_step=step)
    record = {"base_checksum_end": current}
    logging.info("Base parameters sha256 at the end (step %d): %s", step, current)
  if heads_only and current != checksums["imported"]:
    raise ValueError(f"train_heads_only: the base parameters in {workdir!r} (sha256 {current}) "
                     f"differ from the imported model's ({checksums['imported']}): was the "
                     f"checkpoint trained on another base?")
  log.write(step, record)
  if jax.process_index() == 0:
    workdir_lib.write_base_checksum(workdir, checksums)
  return checksums


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       train_iter_fn: Optional[Callable[..., Any]] = None,
                       eval_batches_fn: Optional[Callable[..., Any]] = None) -> dict:
  """`_train_and_evaluate` holding the workdir's writer lock (workdir_lock.py): a second run on
  the same workdir is refused at once with `workdir_lock.WorkdirLocked` naming the first. A bad
  budget is refused before the workdir is touched."""
  budget_lib.check(config.get("max_train_seconds"))
  fileio.makedirs(workdir)  # For a bucket URL: FileNotFoundError unless the bucket exists.
  with workdir_lock.hold(workdir, "training"):
    return _train_and_evaluate(config, workdir, train_iter_fn, eval_batches_fn)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        train_iter_fn: Optional[Callable[..., Any]] = None,
                        eval_batches_fn: Optional[Callable[..., Any]] = None) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`) and returns the final metrics.

  train_iter_fn(config, vocab_path, start_step) and eval_batches_fn(config, vocab_path) default
  to `inputs` (token shards, or the seqio pipeline for text); they yield process-local batches.

  With config.init naming a pretrained model, the model config comes from the import (h, head
  type, head width and dtype from config.model), the first start begins from the imported
  weights plus fresh heads, and the workdir keeps the model's tokenizer. train_heads_only trains
  heads 2..h alone (see `train_step_heads_only`); the base's sha256 is logged at start and end.
  """
  budget = budget_lib.WallClockBudget(config.get("max_train_seconds"))  # Setup counts too.
  pretrained = None
  if resume.is_finetune_resume(config, workdir):  # Its own checkpoints: no parent needed.
    config = resume.finetuned_config(config, workdir)
  elif configuration.init_source(config):  # config.model becomes the imported model's.
    config, pretrained, _ = pretrained_lib.import_for_config(config)
  heads_only = bool(config.get("train_heads_only", False))
  model_config = configuration.validate(config)
  mesh = partitioning.make_mesh(config.mesh)
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  state_lib.check_batch_size(config.batch_size, mesh, rules)
  fileio.makedirs(workdir)  # For a bucket URL: FileNotFoundError unless the bucket exists.
  manager = checkpoints.make_manager(workdir, config.checkpoint_every_steps,
                                     config.max_checkpoints_to_keep)
  if manager.latest_step() is not None:
    saved = workdir_lib.load_config(workdir)
    checkpoints.check_compatible(saved.model, config.model, workdir)
    if bool(saved.get("train_heads_only", False)) != heads_only:
      raise ValueError(f"Checkpoint in {workdir!r} was trained with train_heads_only="
                       f"{bool(saved.get('train_heads_only', False))}; the config has "
                       f"{heads_only} (the optimizer states differ)")
    guard.check_resume(saved, config, workdir)  # Before config.json is written.
  vocab_path = inputs.ensure_vocabulary(config, workdir)
  if jax.process_index() == 0:
    workdir_lib.save_config(workdir, config)

  model = model_lib.Transformer(model_config)
  tx = state_lib.make_optimizer(config)
  schedule = state_lib.make_schedule(config)
  head_weights = losses.head_loss_weights(model_config.num_heads_bpd, config.head_loss_decay)
  if heads_only:  # Head 1 is the frozen LM head: reported, not trained.
    head_weights = head_weights.at[0].set(0.0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = state_lib.abstract_state(model, tx, config, mesh, rules)
    if manager.latest_step() is not None:
      state = resume.restore(workdir, manager, abstract, config.get("resume_step", -1))
    elif pretrained is not None:
      state = state_lib.init_state_from_params(pretrained, model, tx, config, shardings)
    else:
      state = state_lib.init_state(model, tx, config, shardings)
    data_sharding = partitioning.batch_sharding(mesh, rules)
    batch_shardings = {k: data_sharding for k in steps.BATCH_KEYS}
    divergence = guard.DivergenceGuard(config.get("max_nonfinite_skips", 0), config.learning_rate)
    spikes = spike.SpikeGuard.from_config(config, np.asarray(head_weights))
    p_train_step = jax.jit(
        guard.guarded_step(functools.partial(
            steps.train_step_heads_only if heads_only else steps.train_step, model=model,
            head_weights=head_weights), skip_nonfinite=divergence.max_skips > 0),
        in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None),
        donate_argnums=(0,))
    p_eval_step = jax.jit(functools.partial(steps.eval_step, model=model, head_weights=head_weights),
                          in_shardings=(shardings.params, batch_shardings))

    start_step = int(state.step)
    spikes.seed(spike.logged_history(workdir, start_step))
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
    logging.info("Model: %s parameters, h=%d; mesh %s", f"{num_params:,}",
                 model_config.num_heads_bpd, dict(mesh.shape))
    train_iter = (train_iter_fn or inputs.train_iterator_fn(config))(config, vocab_path,
                                                                    start_step)
    eval_batches = list((eval_batches_fn or functools.partial(
        inputs.eval_batches_fn(config), num_batches=config.num_eval_batches))(config, vocab_path))

    log = metrics_lib.MetricsLog(workdir, tensorboard=bool(config.get("tensorboard", True)),
                                 resume_step=start_step)
    checksums = None
    if pretrained is not None:
      checksums = _check_base(workdir, log, start_step, pretrained, state.params, heads_only)
    pending, checked, last = [], 0, {"time": time.time(), "step": start_step}
    summary: dict = {}
    total = config.num_train_steps
    with _StopSignal() as stop:
      for step in range(start_step, total):
        batch = steps.to_global(next(train_iter), data_sharding)
        state, metrics = p_train_step(state, batch)
        pending.append(metrics)
        done = step + 1
        over_budget = budget.spent()
        stopping = _stop_agreed(stop.requested or over_budget)
        last_step = done == total or stopping
        logging_now = done % config.log_every_steps == 0 or last_step
        saving_now = last_step or manager.should_save(done)
        if logging_now or saving_now:  # Every step is checked before anything is written.
          host = jax.device_get(pending)
          try:
            divergence.check(done - len(pending) + 1 + checked, host[checked:],
                             manager.latest_step())
            spikes.check(done - len(pending) + 1 + checked, host[checked:], manager.latest_step())
            if saving_now:
              divergence.check_params(done, params_lib.nonfinite_leaves(state.params),
                                      manager.latest_step())
              if spikes.enabled:  # The state to be saved, not only the step that made it.
                spikes.check_state(done, spike.step_loss(jax.device_get(
                    p_eval_step(state.params, batch)), head_weights), host[-1],
                                   manager.latest_step())
          except guard.Diverged as e:
            log.write(e.step, {"diverged": str(e)})
            manager.close()
            log.close()
            raise
          checked = len(pending)
        if logging_now:
          finite = [m for m in host if bool(m["finite"])]  # Skipped updates stay out.
          record = {"skipped_updates": len(host) - len(finite)} if len(finite) < len(host) else {}
          now = time.time()
          tokens_per_s = float(sum(m["count"][0] for m in host)) / max(now - last["time"], 1e-9)
          seconds_left = (now - last["time"]) / max(done - last["step"], 1) * (total - done)
          if finite:
            sums = {k: sum(m[k] for m in finite) for k in ("loss_sum", "correct", "count")}
            summary = losses.summarize(sums, head_weights)
            record.update(summary, grad_norm=float(np.mean([m["grad_norm"] for m in finite])))
            logging.info(metrics_lib.progress_line(done, total, summary, tokens_per_s,
                                                   seconds_left))
          record.update(learning_rate=float(schedule(done)), tokens_per_second=tokens_per_s)
          log.write(done, record)
          pending, checked, last = [], 0, {"time": now, "step": done}
        if done % config.eval_every_steps == 0 or done == total:  # No eval when preempted.
          eval_summary = steps.evaluate(state.params, eval_batches, p_eval_step, data_sharding,
                                  head_weights)
          log.write(done, {f"eval_{k}": v for k, v in eval_summary.items()})
          logging.info("eval at step %d: loss %.4f, acc/head %s", done, eval_summary["loss"],
                       [round(a, 4) for a in eval_summary["accuracy"]])
          summary = dict(summary, **{f"eval_{k}": v for k, v in eval_summary.items()})
          last["time"] = time.time()
        checkpoints.save(manager, done, state, force=last_step,
                         write_manifest=config.get("checkpoint_manifests", True))
        if stopping:
          if over_budget:
            log.write(done, budget.record())
            logging.warning("Stopped at step %d: config.max_train_seconds spent; checkpoint "
                            "saved.", done)
          else:
            logging.warning("Stopped at step %d after SIGTERM; checkpoint saved.", done)
          break
    manager.wait_until_finished()
    manager.close()
    if checksums is not None:
      _check_base(workdir, log, int(state.step), pretrained, state.params, heads_only,
                  checksums)
    log.close()
  return dict(summary, step=int(state.step), params=state.params)
