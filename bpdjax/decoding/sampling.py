"""Turning next-token logits into the distribution that decoding draws from or maximises."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -1e30
# Scaled logits sit in [LOGIT_FLOOR, 0] (max subtracted first): exp(-1000) is 0 in float32, so
# the floor changes no probability, and no temperature can overflow them (1e-9 did: logits of
# +-17 became +-1.7e10 and log_softmax returned inf inside the jitted loop).
LOGIT_FLOOR = -1e3


TOKENWISE = "tokenwise"
BLOCK = "block"
TYPICAL_LOSSY = "typical_lossy"
ACCEPTANCE_RULES = (TOKENWISE, BLOCK, TYPICAL_LOSSY)
LOSSLESS_RULES = (TOKENWISE, BLOCK)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature == 0 means greedy; top_k == 0 and top_p == 1 disable those filters.

  acceptance: the rule that verifies drafts at temperature > 0 (decoding/verify.py):
    "tokenwise" (default, lossless): speculative sampling token by token on chains, the
      recursive rejection rule on trees;
    "block" (lossless): block verification (Sun et al., ICLR 2025) on chains, the recursive
      rule on trees;
    "typical_lossy" (Medusa's typical acceptance, NOT lossless: the output distribution is not
      the model's): a draft token passes when its probability exceeds
      min(typical_epsilon, typical_delta * exp(-entropy)).
  At temperature 0 every rule is greedy verification (output equals greedy decoding).
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  acceptance: str = TOKENWISE
  typical_epsilon: float = 0.09
  typical_delta: float = 0.3

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  @property
  def lossless(self) -> bool:
    """Whether decoding is exact: greedy, or sampling with a lossless acceptance rule."""
    return self.greedy or self.acceptance in LOSSLESS_RULES

  def validate(self, vocab_size: int) -> None:
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.acceptance not in ACCEPTANCE_RULES:
      raise ValueError(f"acceptance must be one of {ACCEPTANCE_RULES}, got {self.acceptance!r}")
    if self.acceptance == TYPICAL_LOSSY:
      if self.greedy:
        raise ValueError("acceptance='typical_lossy' (Medusa's typical acceptance) needs "
                         "temperature > 0; at temperature 0 decoding is greedy")
      if not 0.0 < self.typical_epsilon <= 1.0 or self.typical_delta <= 0.0:
        raise ValueError("typical acceptance needs typical_epsilon in (0, 1] and "
                         f"typical_delta > 0, got {self.typical_epsilon}, {self.typical_delta}")
    if not 0 <= self.top_k <= vocab_size:
      raise ValueError(f"top_k must be in [0, vocab_size={vocab_size}], got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def processed_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus) filtering. logits: [..., V] -> [..., V].

  Filtered-out entries get NEG_INF, so softmax of the result is the sampling distribution. The
  rest are shifted so their max is 0 and floored at LOGIT_FLOOR (a probability of 0 either way):
  finite at every temperature > 0, so a tiny temperature samples the argmax, as greedy does.
  """
  logits = logits.astype(jnp.float32)
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  logits = jnp.maximum(shifted / config.temperature, LOGIT_FLOOR)
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
