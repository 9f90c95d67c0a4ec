"""What the draft analyses read about the heads, computed after decoding from the output itself:
each head's top-K and entropy at every output slot, on the correct context (slot s's head i
predicts output token s + i - 1).

One teacher-forced forward of prompt + output per batch replaces recording inside the loop, so
the timed decode computes no head it would not compute anyway and each (task, method) is decoded
once. Shapes: B rows, W prompt slots, M = max_new_tokens, h heads, V vocabulary, K top-k.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import lattice


def _entropy(logits: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _heads_program(model, k: int):
  h = model.config.num_heads_bpd

  def run(params, sequences, slots):
    """sequences [B, W + M] prompt then output; slots [B, M] the position of the token before
    each output slot -> (top-K [B, M, h, K] int32, entropy [B, M, h])."""
    positions = jnp.broadcast_to(jnp.arange(sequences.shape[1], dtype=jnp.int32),
                                 sequences.shape)
    hidden, _ = model.apply({"params": params}, sequences, positions,
                            method=model.hidden_states)
    at_slots = jnp.take_along_axis(hidden, slots[:, :, None], axis=1)             # [B, M, D]
    logits = model.apply({"params": params}, at_slots, 0, h, method=model.head_logits)
    b, m = slots.shape
    topk = lattice.head_topk(logits.reshape(b * m, h, -1), k).reshape(b, m, h, k)
    return topk, _entropy(logits)

  return jax.jit(run)


def head_records(generator, prompts: np.ndarray, prompt_lengths: np.ndarray,
                 tokens: np.ndarray, lengths: np.ndarray, k: int):
  """prompts [B, W] right-padded (lengths [B]; 0 = filler row), tokens [B, M] the decoded
  output (lengths [B]) -> numpy (top-K [B, M, h, K], entropy [B, M, h]); slots at or past a
  row's length hold what the heads say after its padding (the analyses mask them)."""
  b, w = prompts.shape
  m = tokens.shape[1]
  sequences = np.zeros((b, w + m), np.int32)
  for row in range(b):
    n = int(prompt_lengths[row])
    sequences[row, :n] = prompts[row, :n]
    sequences[row, n:n + int(lengths[row])] = tokens[row, :int(lengths[row])]
  slots = np.maximum(prompt_lengths[:, None] - 1, 0) + np.arange(m)[None, :]
  program = generator.program(("records", sequences.shape, k),
                              lambda: _heads_program(generator.model, k))
  with generator.sharded():
    topk, entropy = program(generator.params, jnp.asarray(sequences), jnp.asarray(slots))
  return np.asarray(topk), np.asarray(entropy)
