"""Multi-head next-token loss: head i at position t predicts target t+i-1 (token t+i).

A head's target is valid only inside the same packed segment and on a real (weighted) token, so
no head learns to predict across a document boundary or into padding.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax


def head_targets(targets: jax.Array, loss_weights: jax.Array, segment_ids: Optional[jax.Array],
                 num_heads: int) -> tuple[jax.Array, jax.Array]:
  """Targets and validity of every head at every position.

  Args:
    targets: [B, T] int, decoder_target_tokens (targets[t] is the token after input t).
    loss_weights: [B, T], > 0 on real target tokens.
    segment_ids: [B, T] packed-document ids, or None for unpacked batches.
    num_heads: h.
  Returns:
    (head_targets [B, T, h] int32, head_weights [B, T, h] float32): head i (0-based index i-1)
    at position t has target targets[t+i-1] and weight 1 when that token exists, is real, and
    lies in the same segment as position t.
  """
  b, t = targets.shape
  real = loss_weights > 0
  seg = segment_ids if segment_ids is not None else jnp.ones_like(targets)
  pad = num_heads - 1
  targets_p = jnp.pad(targets, ((0, 0), (0, pad)))
  real_p = jnp.pad(real, ((0, 0), (0, pad)))
  seg_p = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)
  all_targets, all_weights = [], []
  for i in range(num_heads):
    shifted_targets = jax.lax.dynamic_slice_in_dim(targets_p, i, t, axis=1)
    valid = (real & jax.lax.dynamic_slice_in_dim(real_p, i, t, axis=1)
             & (jax.lax.dynamic_slice_in_dim(seg_p, i, t, axis=1) == seg))
    all_targets.append(shifted_targets)
    all_weights.append(valid)
  return (jnp.stack(all_targets, -1).astype(jnp.int32),
          jnp.stack(all_weights, -1).astype(jnp.float32))


def head_loss_weights(num_heads: int, decay: float) -> jax.Array:
  """[h] loss weight of each head: decay**(i-1)."""
  return decay ** jnp.arange(num_heads, dtype=jnp.float32)


def multihead_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                   head_weights: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum over heads of each head's mean cross-entropy.

  Args:
    logits: [B, T, h, V] float32.
    targets: [B, T, h] int32 from `head_targets`.
    weights: [B, T, h] float32 from `head_targets`.
    head_weights: [h].
  Returns:
    (scalar loss, metrics) where metrics holds per-head sums that aggregate over batches and
    devices: `loss_sum` [h], `correct` [h] (top-1 hits), `count` [h] (valid targets).
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)         # [B, T, h]
  loss_sum = jnp.sum(ce * weights, axis=(0, 1))
  count = jnp.sum(weights, axis=(0, 1))
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights, axis=(0, 1))
  per_head = loss_sum / jnp.maximum(count, 1.0)
  loss = jnp.sum(per_head * head_weights)
  return loss, {"loss_sum": loss_sum, "correct": correct, "count": count}


def summarize(sums: dict[str, jax.Array], head_weights: jax.Array) -> dict[str, object]:
  """Turns accumulated per-head sums into loss, per-head loss and per-head accuracy lists."""
  count = jnp.maximum(sums["count"], 1.0)
  per_head_loss = sums["loss_sum"] / count
  return {
      "loss": float(jnp.sum(per_head_loss * head_weights)),
      "head_loss": [float(x) for x in per_head_loss],
      "accuracy": [float(x) for x in sums["correct"] / count],
  }
