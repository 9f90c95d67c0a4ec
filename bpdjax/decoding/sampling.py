"""Turning next-token logits into the distribution that decoding draws from or maximises."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature == 0 means greedy; top_k == 0 and top_p == 1 disable those filters."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  def validate(self, vocab_size: int) -> None:
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 <= self.top_k <= vocab_size:
      raise ValueError(f"top_k must be in [0, vocab_size={vocab_size}], got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def processed_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus) filtering. logits: [..., V] -> [..., V].

  Filtered-out entries get NEG_INF, so softmax of the result is the sampling distribution.
  """
  logits = logits.astype(jnp.float32) / config.temperature
  if config.top_k:
    kth = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if config.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    keep = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < config.top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits
