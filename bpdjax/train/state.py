"""The train state: optimizer and schedule, initialisation (random, from given parameters), the
abstract state with its shardings, and the batch-size check against the mesh."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
from flax.training import train_state as train_state_lib
import jax
import jax.numpy as jnp
import optax

from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import partitioning


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
  params_lib.check_params(model.config, params)
  params = jax.device_put(params, shardings.params)
  heads_only = bool(config.get("train_heads_only", False))
  return jax.jit(lambda p: _state_from_params(p, model, tx, heads_only),
                 out_shardings=shardings)(params)


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
