"""The trivial step policy: verify the drafter's whole tree every step.

A drafter of one node (plain decoding) gets the whole decode as one plain stretch: the loop's
leanest iteration (no lax.switch, no proposal), the same one auto's plain steps run, so plain
decoding is the baseline every other method must beat.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

NEVER_ENDING = 2 ** 30     # A stretch longer than any decode.


@dataclasses.dataclass(frozen=True)
class Fixed:
  """protocol.StepPolicy verifying the whole topology; stateless."""

  def sizes(self, drafter) -> tuple[int, ...]:
    return (drafter.topology.size,)

  def start(self, drafter, batch: int):
    del drafter, batch
    return ()

  def propose(self, state, drafter, drafter_params, drafter_state, heads, next_token):
    nodes, drafter_state = drafter.propose(drafter_params, drafter_state, heads, next_token)
    return nodes, drafter_state, state

  def choice(self, state):
    del state
    return jnp.zeros((), jnp.int32)

  def force(self, state, index: int):
    if index != 0:
      raise ValueError(f"The fixed policy has one size; got index {index}")
    return state

  def commit(self, state, drafter, tokens, num_kept):
    del drafter, tokens, num_kept
    return state

  def stretches(self, drafter) -> bool:
    return drafter.topology.size == 1

  def stretch(self, state, drafter):
    del state, drafter
    return jnp.full((), NEVER_ENDING, jnp.int32)

  def after_stretch(self, state, counts):
    del counts
    return state

  def stats(self, state) -> dict:
    del state
    return {}


FIXED = Fixed()
