"""Training: train state, jitted train/eval steps over a Mesh, and the training loop."""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterable, Optional

from absl import logging
from clu import metric_writers
import flax.linen as nn
from flax.training import train_state as train_state_lib
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import hf
from bpdjax import losses
from bpdjax import model as model_lib
from bpdjax import partitioning

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")


class TrainState(train_state_lib.TrainState):
  """step: [] int32; params and opt_state: pytrees sharded by the logical rules."""


def schedule_steps(config) -> int:
  return config.num_train_steps if config.schedule_steps <= 0 else config.schedule_steps


def make_schedule(config) -> optax.Schedule:
  """Linear warmup to the peak, then cosine decay over schedule_steps."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=max(schedule_steps(config), config.warmup_steps + 1),
      end_value=config.learning_rate * config.end_learning_rate_fraction)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with the schedule and global-norm clipping; no weight decay on vectors."""
  schedule = make_schedule(config)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                  weight_decay=config.weight_decay, mask=decay_mask))


def trained_heads(params) -> dict:
  """The entries of `params` that train_heads_only trains: heads 2..h (head 1, the LM head, and
  the base stay frozen)."""
  return {k: v for k, v in params.items() if k.startswith("head_") and k != "head_1"}


def _state_from_params(params, model, tx, heads_only: bool) -> TrainState:
  """A fresh TrainState; with heads_only the optimizer (and its state) covers only
  `trained_heads(params)`."""
  if not heads_only:
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  return TrainState(step=0, apply_fn=model.apply, params=params, tx=tx,
                    opt_state=tx.init(trained_heads(params)))


def _init_fn(rng, model: model_lib.Transformer, tx, seq_len: int, heads_only: bool = False):
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  params = model.init(rng, tokens, jnp.zeros_like(tokens))["params"]
  return _state_from_params(params, model, tx, heads_only)


def abstract_state(model, tx, config, mesh, rules):
  """(abstract TrainState with shardings, its NamedSharding tree). Allocates nothing."""
  init = functools.partial(_init_fn, model=model, tx=tx, seq_len=config.data.seq_len,
                           heads_only=bool(config.get("train_heads_only", False)))
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
  partitioning.check_divisible(boxed.params, mesh, rules)
  shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
  unboxed = partitioning.strip_boxes(boxed)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          unboxed, shardings)
  return abstract, shardings


def init_state(model, tx, config, shardings) -> TrainState:
  init = functools.partial(_init_fn, model=model, tx=tx, seq_len=config.data.seq_len,
                           heads_only=bool(config.get("train_heads_only", False)))
  return jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=shardings)(
      jax.random.PRNGKey(config.seed))


def init_state_from_params(params, model, tx, config, shardings) -> TrainState:
  """A fresh TrainState holding given (e.g. imported) parameters, sharded like `shardings`."""
  hf.check_params(model.config, params)
  params = jax.device_put(params, shardings.params)
  heads_only = bool(config.get("train_heads_only", False))
  return jax.jit(lambda p: _state_from_params(p, model, tx, heads_only),
                 out_shardings=shardings)(params)


def compute_loss(params, batch, model, head_weights):
  """Returns (loss, per-head sums) for a packed batch of [B, T] arrays."""
  logits, _ = model.apply({"params": params}, batch["decoder_input_tokens"],
                          batch["decoder_positions"], segment_ids=batch["decoder_segment_ids"])
  targets, weights = losses.head_targets(batch["decoder_target_tokens"],
                                         batch["decoder_loss_weights"],
                                         batch["decoder_segment_ids"], model.config.num_heads_bpd)
  return losses.multihead_loss(logits, targets, weights, head_weights)


def train_step(state: TrainState, batch, model, head_weights):
  (loss, sums), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params, batch, model, head_weights)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(sums, loss=loss, grad_norm=optax.global_norm(grads))


def train_step_heads_only(state: TrainState, batch, model, head_weights):
  """train_step for train_heads_only: gradients of heads 2..h only. The base and head 1 enter
  the loss through stop_gradient, so no gradient of theirs is computed (no backward pass through
  the trunk), and they are carried over untouched (bitwise) into the new state."""
  heads = trained_heads(state.params)
  frozen = {k: v for k, v in state.params.items() if k not in heads}
  frozen_const = jax.lax.stop_gradient(frozen)

  def loss_fn(trainable):
    return compute_loss({**frozen_const, **trainable}, batch, model, head_weights)

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(heads)
  updates, opt_state = state.tx.update(grads, state.opt_state, heads)
  params = {**frozen, **optax.apply_updates(heads, updates)}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, dict(sums, loss=loss, grad_norm=optax.global_norm(grads))


def eval_step(params, batch, model, head_weights):
  _, sums = compute_loss(params, batch, model, head_weights)
  return sums


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


def check_batch_size(batch_size: int, mesh, rules) -> None:
  """ValueError unless the global batch splits evenly over the batch mesh axes and processes."""
  spec = partitioning.batch_sharding(mesh, rules).spec
  axes = spec[0] if spec else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  num_batch_shards = math.prod(mesh.shape[a] for a in axes)
  if batch_size % num_batch_shards:
    raise ValueError(f"batch_size={batch_size} is not divisible by the size {num_batch_shards} of "
                     f"the batch mesh axes {axes} (mesh {dict(mesh.shape)}).")
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} is not divisible by the process count "
                     f"{jax.process_count()}.")


def _stop_agreed(requested: bool) -> bool:
  """Whether any process got SIGTERM; all processes agree, so they stop at the same step."""
  if jax.process_count() == 1:
    return requested
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(requested))))


def _progress_line(step, total, summary, tokens_per_s, seconds_left) -> str:
  acc = " ".join(f"{a:.3f}" for a in summary["accuracy"])
  eta = time.strftime("%H:%M:%S", time.gmtime(max(seconds_left, 0)))
  return (f"step {step}/{total} | loss {summary['loss']:.4f} | acc/head [{acc}] | "
          f"{tokens_per_s:,.0f} tok/s | ETA {eta}")


class MetricsLog:
  """TensorBoard (clu) scalars plus one JSON line per logged step in WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_main)
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.is_main else None

  def write(self, step: int, record: dict) -> None:
    scalars = {}
    for key, value in record.items():
      if isinstance(value, list):
        scalars.update({f"{key}/head_{i + 1}": v for i, v in enumerate(value)})
      elif isinstance(value, (int, float)):
        scalars[key] = value
    if scalars:
      self.writer.write_scalars(step, scalars)
    if self.jsonl:
      self.jsonl.write(json.dumps(dict(step=step, **record)) + "\n")
      self.jsonl.flush()

  def close(self):
    self.writer.flush()
    self.writer.close()
    if self.jsonl:
      self.jsonl.close()


def _to_global(batch: dict, sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
          for k in BATCH_KEYS}


def evaluate(params, eval_batches: Iterable[dict], eval_fn, sharding, head_weights) -> dict:
  sums = None
  for batch in eval_batches:
    out = eval_fn(params, _to_global(batch, sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return losses.summarize(jax.device_get(sums), head_weights)


BASE_CHECKSUM_FILE = "base_checksum.json"


def _check_base(workdir, log, step, pretrained, params, heads_only, checksums=None) -> dict:
  """Logs the sha256 of the base parameters (everything but the block heads, see
  `checkpoints.params_checksum`): of the import and of the state at the start (checksums=None)
  or at the end of this run; writes WORKDIR/base_checksum.json and a metrics.jsonl line. With
  train_heads_only a base that differs from the import's is an error (e.g. a resume from a
  checkpoint trained on another model)."""
  current = checkpoints.params_checksum(params, exclude_prefix="head_")
  if checksums is None:
    checksums = {"imported": checkpoints.params_checksum(pretrained, exclude_prefix="head_"),
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
    tmp = os.path.join(workdir, BASE_CHECKSUM_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(checksums, f, indent=2)
    os.replace(tmp, os.path.join(workdir, BASE_CHECKSUM_FILE))
  return checksums


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       train_iter_fn: Optional[Callable[..., Any]] = None,
                       eval_batches_fn: Optional[Callable[..., Any]] = None) -> dict:
  """Trains (resuming from the latest checkpoint in `workdir`) and returns the final metrics.

  train_iter_fn(config, vocab_path, start_step) and eval_batches_fn(config, vocab_path) default
  to the seqio pipeline in `bpdjax.data.pipeline`; they yield process-local batches.

  With config.init naming a pretrained model, the model config comes from the import (h, head
  type, head width and dtype from config.model), the first start begins from the imported
  weights plus fresh heads, and the workdir keeps the model's tokenizer. train_heads_only trains
  heads 2..h alone (see `train_step_heads_only`); the base's sha256 is logged at start and end.
  """
  from bpdjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from bpdjax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top

  pretrained = None
  if configuration.init_source(config):  # config.model becomes the imported model's.
    config, pretrained, _ = hf.import_for_config(config)
  heads_only = bool(config.get("train_heads_only", False))
  model_config = configuration.validate(config)
  mesh = partitioning.make_mesh(config.mesh)
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  check_batch_size(config.batch_size, mesh, rules)
  os.makedirs(workdir, exist_ok=True)
  manager = checkpoints.make_manager(workdir, config.checkpoint_every_steps,
                                     config.max_checkpoints_to_keep)
  if manager.latest_step() is not None:
    saved = checkpoints.load_config(workdir)
    checkpoints.check_compatible(saved.model, config.model, workdir)
    if bool(saved.get("train_heads_only", False)) != heads_only:
      raise ValueError(f"Checkpoint in {workdir!r} was trained with train_heads_only="
                       f"{bool(saved.get('train_heads_only', False))}; the config has "
                       f"{heads_only} (the optimizer states differ)")
  vocab_path = vocab_lib.ensure_vocabulary(config, workdir)
  if jax.process_index() == 0:
    checkpoints.save_config(workdir, config)

  model = model_lib.Transformer(model_config)
  tx = make_optimizer(config)
  schedule = make_schedule(config)
  head_weights = losses.head_loss_weights(model_config.num_heads_bpd, config.head_loss_decay)
  if heads_only:  # Head 1 is the frozen LM head: reported, not trained.
    head_weights = head_weights.at[0].set(0.0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = abstract_state(model, tx, config, mesh, rules)
    if manager.latest_step() is not None:
      state = checkpoints.restore(manager, abstract)
      logging.info("Resumed from step %d in %s", int(state.step), workdir)
    elif pretrained is not None:
      state = init_state_from_params(pretrained, model, tx, config, shardings)
    else:
      state = init_state(model, tx, config, shardings)
    data_sharding = partitioning.batch_sharding(mesh, rules)
    batch_shardings = {k: data_sharding for k in BATCH_KEYS}
    p_train_step = jax.jit(
        functools.partial(train_step_heads_only if heads_only else train_step, model=model,
                          head_weights=head_weights),
        in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None),
        donate_argnums=(0,))
    p_eval_step = jax.jit(functools.partial(eval_step, model=model, head_weights=head_weights),
                          in_shardings=(shardings.params, batch_shardings))

    start_step = int(state.step)
    num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
    logging.info("Model: %s parameters, h=%d; mesh %s", f"{num_params:,}",
                 model_config.num_heads_bpd, dict(mesh.shape))
    train_iter = (train_iter_fn or pipeline.make_train_iterator)(config, vocab_path, start_step)
    eval_batches = list((eval_batches_fn or functools.partial(
        pipeline.make_eval_iterator, num_batches=config.num_eval_batches))(config, vocab_path))

    log = MetricsLog(workdir)
    checksums = None
    if pretrained is not None:
      checksums = _check_base(workdir, log, start_step, pretrained, state.params, heads_only)
    pending, last = [], {"time": time.time(), "step": start_step}
    summary: dict = {}
    total = config.num_train_steps
    with _StopSignal() as stop:
      for step in range(start_step, total):
        state, metrics = p_train_step(state, _to_global(next(train_iter), data_sharding))
        pending.append(metrics)
        done = step + 1
        stopping = _stop_agreed(stop.requested)
        last_step = done == total or stopping
        if done % config.log_every_steps == 0 or last_step:
          host = jax.device_get(pending)
          sums = {k: sum(m[k] for m in host) for k in ("loss_sum", "correct", "count")}
          summary = losses.summarize(sums, head_weights)
          now = time.time()
          tokens_per_s = float(sum(m["count"][0] for m in host)) / max(now - last["time"], 1e-9)
          seconds_left = (now - last["time"]) / max(done - last["step"], 1) * (total - done)
          record = dict(summary, grad_norm=float(np.mean([m["grad_norm"] for m in host])),
                        learning_rate=float(schedule(done)),
                        tokens_per_second=tokens_per_s)
          log.write(done, record)
          logging.info(_progress_line(done, total, summary, tokens_per_s, seconds_left))
          pending, last = [], {"time": now, "step": done}
        if done % config.eval_every_steps == 0 or done == total:  # No eval when preempted.
          eval_summary = evaluate(state.params, eval_batches, p_eval_step, data_sharding,
                                  head_weights)
          log.write(done, {f"eval_{k}": v for k, v in eval_summary.items()})
          logging.info("eval at step %d: loss %.4f, acc/head %s", done, eval_summary["loss"],
                       [round(a, 4) for a in eval_summary["accuracy"]])
          summary = dict(summary, **{f"eval_{k}": v for k, v in eval_summary.items()})
          last["time"] = time.time()
        checkpoints.save(manager, done, state, force=last_step)
        if stopping:
          logging.warning("Stopped at step %d after SIGTERM; checkpoint saved.", done)
          break
    manager.wait_until_finished()
    manager.close()
    if checksums is not None:
      _check_base(workdir, log, int(state.step), pretrained, state.params, heads_only,
                  checksums)
    log.close()
  return dict(summary, step=int(state.step), params=state.params)

