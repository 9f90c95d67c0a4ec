"""Pure jitted steps: the multi-head loss, a train step (all parameters, or heads 2..h only),
an eval step, and evaluation over a fixed list of batches."""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bpdjax import losses
from bpdjax.train import state as state_lib

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")


def compute_loss(params, batch, model, head_weights):
  """Returns (loss, per-head sums) for a packed batch of [B, T] arrays."""
  logits, _ = model.apply({"params": params}, batch["decoder_input_tokens"],
                          batch["decoder_positions"], segment_ids=batch["decoder_segment_ids"])
  targets, weights = losses.head_targets(batch["decoder_target_tokens"],
                                         batch["decoder_loss_weights"],
                                         batch["decoder_segment_ids"], model.config.num_heads_bpd)
  return losses.multihead_loss(logits, targets, weights, head_weights)


def train_step(state: state_lib.TrainState, batch, model, head_weights):
  (loss, sums), grads = jax.value_and_grad(compute_loss, has_aux=True)(
      state.params, batch, model, head_weights)
  new_state = state.apply_gradients(grads=grads)
  return new_state, dict(sums, loss=loss, grad_norm=optax.global_norm(grads))


def train_step_heads_only(state: state_lib.TrainState, batch, model, head_weights):
  """train_step for train_heads_only: gradients of heads 2..h only. The base and head 1 enter
  the loss through stop_gradient, so no gradient of theirs is computed (no backward pass through
  the trunk), and they are carried over untouched (bitwise) into the new state."""
  heads = state_lib.trained_heads(state.params)
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


def to_global(batch: dict, sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
          for k in BATCH_KEYS}


def evaluate(params, eval_batches: Iterable[dict], eval_fn, sharding, head_weights) -> dict:
  sums = None
  for batch in eval_batches:
    out = eval_fn(params, to_global(batch, sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return losses.summarize(jax.device_get(sums), head_weights)
