"""Methods `auto` (cost-aware verification of a drafter's candidates) and `auto_entropy` (the
entropy-cut ablation): their options and how each builds its drafter and policy.

`auto` drives its own chain (the heads' argmax chain of max_len, plus Medusa tree candidates
with tree_nodes), or with `drafter=NAME` the drafter of any other method (medusa, pbest_0gram,
...; that method's options apply) over that drafter's candidate sizes.
"""
from __future__ import annotations

import dataclasses

from bpdjax.decoding import cost as cost_lib
from bpdjax.decoding import registry
from bpdjax.decoding.drafters import base
from bpdjax.decoding.drafters import heads
from bpdjax.decoding.policies import auto


def _parse_ints(text: str, name: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None


def _parse_floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ValueError(f"costs must be 'measured' or comma-separated numbers, got {text!r}") from None


def candidate_sizes(length: int, tree_nodes: tuple[int, ...]) -> tuple[int, ...]:
  """Chains 1..length, then each tree size (> length, increasing)."""
  trees = tuple(sorted(set(tree_nodes)))
  if trees and trees[0] <= length:
    raise ValueError(f"tree_nodes {trees} must exceed the chain length {length}")
  return tuple(range(1, length + 1)) + trees


@dataclasses.dataclass(frozen=True)
class AutoOptions(base.Lattice):
  drafter: str = ""           # "" (its own chain and trees), or a method whose drafter it drives.
  max_len: int = 0            # Own chain: longest, head 1 included (0: all h heads).
  tree_nodes: str = ""        # Own chain: tree candidate sizes beyond it, e.g. "16,64" ("": none).
  costs: str = "measured"     # "measured", or relative costs per candidate ("1,1.1,...").

  def validate(self, model=None) -> None:
    base.check_draft_len(self.max_len, model)
    trees = _parse_ints(self.tree_nodes, "tree_nodes")
    if trees:
      super().validate(model)
    if self.drafter and (self.max_len or trees):
      raise ValueError(f"auto's max_len and tree_nodes shape its own chain; with "
                       f"drafter={self.drafter!r} set that method's options instead")
    if self.drafter in ("auto", "auto_entropy", registry.with_role(registry.REFERENCE)):
      raise ValueError(f"auto cannot drive the drafter of {self.drafter!r}: name a method that "
                       "drafts from the heads (bpd, medusa, pbest_0gram, ...)")
    if self.costs != "measured":
      _parse_floats(self.costs)
    base.check_lattice_heads(model, "auto")
    if model is not None and not self.drafter:
      candidate_sizes(base.check_draft_len(self.max_len, model), trees)


@dataclasses.dataclass(frozen=True)
class EntropyOptions(base.Options):
  max_len: int = 0            # Longest chain, head 1 included (0: all h heads).
  threshold: float = 2.0      # Cut before the first head of mean entropy above this (nats).

  def validate(self, model=None) -> None:
    base.check_draft_len(self.max_len, model)
    if not self.threshold >= 0.0:
      raise ValueError(f"threshold (nats) must be >= 0, got {self.threshold}")
    base.check_lattice_heads(model, "auto_entropy")


def _own_chain(options: AutoOptions, model, resources):
  del resources
  length = base.check_draft_len(options.max_len, model)
  trees = _parse_ints(options.tree_nodes, "tree_nodes")
  candidate_sizes(length, trees)
  return heads.ChainTreeDrafter(length, options.k if trees else 1, trees), None


def _auto_policy(options: AutoOptions, drafter, costs):
  if costs is None:
    costs = cost_lib.given(drafter.candidates, _parse_floats(options.costs))
  auto.check_drafter(drafter, costs.seconds)
  return auto.AutoPolicy(tuple(costs.seconds))


def _entropy_drafter(options: EntropyOptions, model, resources):
  del resources
  return heads.ChainTreeDrafter(base.check_draft_len(options.max_len, model)), None


def _entropy_policy(options: EntropyOptions, drafter, costs):
  del costs
  sizes = drafter.candidates
  auto.check_drafter(drafter, (1.0,) * len(sizes))
  return auto.AutoPolicy((1.0,) * len(sizes), rule="entropy", threshold=float(options.threshold))


registry.register(registry.Method(
    name="auto", summary="cost-aware drafting: per step, the candidate (chain, tree) of most "
    "expected tokens per second, from calibrated head confidence and measured verify costs "
    "(drafter=NAME drives another method's drafter)",
    options=AutoOptions, build=_own_chain, policy=_auto_policy,
    needs_costs=lambda o: o.costs == "measured", drafter_method=lambda o: o.drafter))
registry.register(registry.Method(
    name="auto_entropy", summary="ablation: the heads' chain cut before the first head whose "
    "entropy exceeds a threshold (nats)", options=EntropyOptions, build=_entropy_drafter,
    policy=_entropy_policy))
