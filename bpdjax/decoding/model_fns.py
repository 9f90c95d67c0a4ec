"""`ModelFns` of a bpdjax Transformer: the loop's view of the flax module."""
from __future__ import annotations

import dataclasses
from typing import Any

from bpdjax import model as model_lib


@dataclasses.dataclass(frozen=True)
class TransformerFns:
  """protocol.ModelFns for a Transformer; equal modules give equal (hashable) values."""
  model: model_lib.Transformer

  @property
  def num_heads(self) -> int:
    return self.model.config.num_heads_bpd

  def forward(self, params: Any, tokens, positions, cache, block_mask=None):
    return self.model.apply({"params": params}, tokens, positions, cache=cache,
                            block_mask=block_mask, method=self.model.hidden_states)

  def heads(self, params: Any, hidden, start: int, stop: int, following=None,
            markov_candidates: int = 0):
    return self.model.apply({"params": params}, hidden, start, stop, following,
                            markov_candidates, method=self.model.head_logits)
