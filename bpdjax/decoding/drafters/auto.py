"""Cost-aware drafting: `auto` picks, at every step inside the jitted loop, the draft that
maximises expected tokens per second; `auto_entropy` (an ablation) cuts the chain at the first
head whose entropy exceeds a threshold.

Candidates are prefixes of one topology: the chain of 1..L tokens (1 is plain decoding), then,
with `tree_nodes`, trees made of that chain plus Medusa's extra nodes (sparse_tree.py), so the
loop verifies any of them with lax.switch over static sizes (loop.step).

Expected tokens of a candidate, per row: 1 + the sum over its non-root nodes v of the product,
along v's root path, of a(u) = P(u's token is accepted | its parent was), the calibrated
acceptance of u's head at the head's probability of u's token (decoding/calibration.py: counts
per (head, probability bin) learned online from the loop's own outcomes, state in the loop
carry, shared by the batch).

Choice (`auto`): argmax over candidates c of (sum over active rows of E_row(c)) / cost(c), with
cost(c) the measured seconds of one loop iteration verifying c (decoding/cost.py); one choice
per step for the whole batch, since the cost is per call. Heads are computed one at a time and
the next only while a longer chain could still beat the best candidate so far if every further
head were always right (E(L') <= E(j) + (L' - j) P_j, P_j = the chance of reaching node j+1),
or while a tree candidate needs it; when the cost table alone shows that no candidate can beat
plain decoding even with perfect heads, no head is computed at all.

Computing head 2 costs a vocabulary projection, about half an AR step for a small model on a
CPU, so `auto` does not look at the heads on every step when drafting does not pay on average
(the heads' recent acceptance rates against the cost table): it then probes them with
back-off. After a look that led to no draft it waits long enough that looking costs at most
PROBE_BUDGET of the decode's time (a look costs about a 2-token call, costs[1] / costs[0]
plain steps), the wait growing x GROWTH up to MAX_WAIT while looks keep failing; it keeps
looking at every step while the look leads to a draft, since predictable stretches of text
come in runs, and at every step while the recent rates say drafting pays. The plain steps
between two looks run as one stretch (protocol.PlainStretches): an inner loop of one-token
calls inside the decode loop, costing what plain decoding costs (no lax.switch, no drafter
call per step).
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import calibration
from bpdjax.decoding import cost as cost_lib
from bpdjax.decoding import protocol
from bpdjax.decoding import registry
from bpdjax.decoding import resources as resources_lib
from bpdjax.decoding import sparse_tree
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import heads as heads_lib

RECENT = 0.9          # Decay per judged step of the outcomes behind "drafting pays on average".
PROBE_BUDGET = 0.02   # Most of the decode time that looks may cost while drafting does not pay.
GROWTH = 4            # Back-off factor between two looks that led to no draft.
MAX_WAIT = 256        # Longest run of plain steps between two looks at the heads.
NEVER = 2 ** 30       # The wait when the cost table shows drafting never pays.


@flax.struct.dataclass
class AutoState:
  """choice: [] int32 candidate to verify next; probs: [B, T] head probability of each node's
  token (root 1, 0 where not drafted); hits, tries: [L-1, BINS] accepted / tried chain nodes per
  head 2..L and probability bin; chosen: [C] int32 steps per candidate; predicted, realized,
  verified: [] float32 sums over verified rows of expected and kept tokens, and their count;
  wait: [] int32 plain steps left before the heads are looked at again; backoff: [] int32 the
  wait set after a look that led to no draft (see propose); looks: [] int32 steps
  that computed heads; forced: [] int32 the candidate every step verifies, -1 (the default)
  to choose (set by `force`, for timing the drafter's own steps in decoding/cost.py); recent:
  [2, L-1] accepted and tried chain nodes per head, decayed by RECENT per judged step."""
  choice: jax.Array
  probs: jax.Array
  chain: jax.Array
  hits: jax.Array
  tries: jax.Array
  chosen: jax.Array
  predicted: jax.Array
  realized: jax.Array
  verified: jax.Array
  wait: jax.Array
  backoff: jax.Array
  looks: jax.Array
  forced: jax.Array
  recent: jax.Array


@dataclasses.dataclass(frozen=True)
class AutoDrafter:
  """length: L, the longest chain (heads 2..L); sizes: candidate node counts (chains 1..L, then
  tree sizes); costs: seconds (or relative) per iteration of each; rule: "cost" (auto) or
  "entropy" (cut at the first head of entropy > threshold, nats); k: top-k of tree nodes."""
  length: int
  sizes: tuple[int, ...]
  costs: tuple[float, ...]
  tree_nodes: int = 0
  k: int = 1
  rule: str = "cost"
  threshold: float = 0.0

  @property
  def topology(self) -> tree_lib.Tree:
    return sparse_tree.chain_then_tree(self.length, self.k, self.tree_nodes)[0]

  @property
  def ranks(self) -> np.ndarray:
    return np.asarray(sparse_tree.chain_then_tree(self.length, self.k, self.tree_nodes)[1])

  @property
  def last_head(self) -> int:
    return self.length

  @property
  def candidates(self) -> tuple[int, ...]:
    return self.sizes

  def candidate(self, state: AutoState) -> jax.Array:
    return state.choice

  def _never_drafts(self) -> bool:
    """The cost table alone shows plain decoding wins even with heads that are always right."""
    if self.rule != "cost":
      return False
    paths = [self.topology.prefix(s).path_len for s in self.sizes]
    return max(p / c for p, c in zip(paths, self.costs)) <= 1.0 / self.costs[0]

  def start(self, params, prompts, prompt_lengths, cache_len):
    b, c, t = prompts.shape[0], len(self.sizes), self.topology.size
    zeros = jnp.zeros((), jnp.float32)
    return AutoState(
        choice=jnp.zeros((), jnp.int32), probs=jnp.zeros((b, t), jnp.float32),
        chain=jnp.zeros((b, self.length), jnp.int32),
        hits=jnp.zeros((self.length - 1, calibration.BINS), jnp.float32),
        tries=jnp.zeros((self.length - 1, calibration.BINS), jnp.float32),
        chosen=jnp.zeros((c,), jnp.int32), predicted=zeros, realized=zeros, verified=zeros,
        wait=jnp.zeros((), jnp.int32), backoff=jnp.ones((), jnp.int32),
        looks=jnp.zeros((), jnp.int32), forced=jnp.full((), -1, jnp.int32),
        recent=jnp.zeros((2, self.length - 1), jnp.float32))

  def force(self, state: AutoState, index: int) -> AutoState:
    """Every step looks at the heads a draft of candidate `index` needs and verifies it."""
    return state.replace(forced=jnp.asarray(index, jnp.int32))

  # ------------------------------------------------------------------------------- propose
  def _pays_on_average(self, state: AutoState) -> jax.Array:
    """Whether some chain beats plain decoding with every node accepted at its head's recent
    rate (outcomes decayed by RECENT per judged step, over all bins, from the prior 1/2): recent,
    so that a predictable passage does not keep auto looking at every step after it ends."""
    rates = (state.recent[0] + 1.0) / (state.recent[1] + 2.0)                       # [L-1]
    reach = jnp.concatenate([jnp.ones((1,)), jnp.cumprod(rates)])                    # [L]
    chains = [(i, s) for i, s in enumerate(self.sizes) if s <= self.length]
    gain = jnp.max(jnp.stack([jnp.sum(reach[:s]) / self.costs[i] for i, s in chains]))
    return gain > 1.0 / self.costs[0]

  def propose(self, params, state: AutoState, heads: protocol.LastHeads, next_token):
    if self.length < 2 or self._never_drafts():   # Plain decoding to the end: one stretch.
      nodes, new = self._plain(state, heads, next_token)
      return nodes, new.replace(wait=jnp.full((), NEVER, jnp.int32))
    if self.rule != "cost":
      nodes, new = self._look(params, state, heads, next_token)
      return nodes, new.replace(looks=state.looks + 1)
    look = (state.wait <= 0) | self._pays_on_average(state) | (state.forced >= 0)
    nodes, new = jax.lax.cond(look, lambda st: self._look(params, st, heads, next_token),
                              lambda st: self._plain(st, heads, next_token), state)
    drafted = new.choice > 0
    grown = jnp.minimum(jnp.maximum(GROWTH * state.backoff, self._probe_wait()), MAX_WAIT)
    backoff = jnp.where(drafted, 1, jnp.where(look, grown, state.backoff))
    wait = jnp.where(drafted, 0, jnp.where(look, backoff, state.wait - 1))
    return nodes, new.replace(wait=wait, backoff=backoff,
                              looks=state.looks + look.astype(jnp.int32))

  def _probe_wait(self) -> int:
    """Plain steps per look that keep looks within PROBE_BUDGET of the time."""
    return int(np.ceil(self.costs[1] / self.costs[0] / PROBE_BUDGET))    # Needs L >= 2.

  def stretch(self, state: AutoState) -> jax.Array:
    """The plain steps to wait once propose has chosen plain decoding and drafting does not pay
    on average (the stretch's first step commits: head 2 is judged against it)."""
    plain = (state.choice == 0) & (state.forced < 0) & ~self._pays_on_average(state)
    return jnp.where(plain, jnp.maximum(state.wait, 0), 0)

  def after_stretch(self, state: AutoState, counts: protocol.StretchCounts) -> AutoState:
    """What propose (_plain) and commit would have counted over the stretch's steps."""
    return state.replace(
        wait=state.wait - counts.iterations,
        chosen=state.chosen.at[0].add(counts.drafted_steps),
        predicted=state.predicted + counts.drafted_rows,
        realized=state.realized + counts.verified_rows,
        verified=state.verified + counts.verified_rows)

  def _plain(self, state: AutoState, heads: protocol.LastHeads, next_token):
    """Plain decoding without looking at the heads: candidate 0, one expected token per row."""
    b, t = next_token.shape[0], self.topology.size
    nodes = jnp.zeros((b, t), jnp.int32).at[:, 0].set(next_token.astype(jnp.int32))
    return nodes, state.replace(
        choice=jnp.zeros((), jnp.int32), probs=jnp.zeros_like(state.probs),
        chain=nodes[:, :self.length],
        chosen=state.chosen.at[0].add(jnp.any(heads.active).astype(jnp.int32)),
        predicted=state.predicted + jnp.sum(heads.active.astype(jnp.float32)))

  def _look(self, params, state: AutoState, heads: protocol.LastHeads, next_token):
    b, topo, k = next_token.shape[0], self.topology, self.k
    n = self.length - 1                                       # Heads 2..L.
    active = heads.active.astype(jnp.float32)
    ids = jnp.zeros((b, max(n, 1), k), jnp.int32)
    probs = jnp.zeros((b, max(n, 1), k), jnp.float32)
    if not self._never_drafts() and n > 0:
      ids, probs = self._lazy_heads(state, heads, active, ids, probs)
    depth, ranks = np.asarray(topo.depth), self.ranks
    node_ids = ids[:, np.maximum(depth - 1, 0), ranks].at[:, 0].set(next_token.astype(jnp.int32))
    node_probs = probs[:, np.maximum(depth - 1, 0), ranks].at[:, 0].set(1.0)
    expected = calibration.expected(
        state.hits, state.tries, self.topology, self.sizes, node_probs)                                # [B, C]
    totals = jnp.sum(expected * active[:, None], axis=0)                        # [C]
    drafted = np.asarray([topo.prefix(s).path_len for s in self.sizes])
    computed = jnp.sum(jnp.any(probs[:, :, 0] > 0, axis=0)) + 1                 # Heads + 1.
    usable = jnp.asarray(drafted) <= computed
    if self.rule == "cost":
      score = jnp.where(usable, totals / jnp.asarray(self.costs), -1.0)
      choice = jnp.argmax(score).astype(jnp.int32)
    else:                      # The longest chain whose heads passed the entropy test.
      choice = jnp.max(jnp.where(usable, jnp.arange(len(self.sizes)), 0)).astype(jnp.int32)
    choice = jnp.where(state.forced >= 0, state.forced, choice)
    choice = jnp.where(jnp.any(heads.active), choice, 0)
    any_active = jnp.any(heads.active)
    state = state.replace(
        choice=choice, probs=node_probs, chain=node_ids[:, :self.length],
        chosen=state.chosen.at[choice].add(any_active.astype(jnp.int32)),
        predicted=state.predicted + jnp.sum(expected[:, choice] * active))
    return node_ids, state

  def _lazy_heads(self, state, heads, active, ids, probs):
    """Heads 2, 3, ... one at a time while a longer draft could still pay (rule "cost"), or
    while the batch's mean entropy stays within the threshold (rule "entropy"); returns top-k
    ids and probabilities [B, L-1, k] (0 where not computed)."""
    n, k = self.length - 1, self.k
    costs = jnp.asarray(self.costs)
    prefixes = [self.topology.prefix(s) for s in self.sizes]
    path_lens = jnp.asarray([p.path_len for p in prefixes], jnp.float32)
    is_chain = jnp.asarray([p.is_chain for p in prefixes])
    rows = jnp.maximum(jnp.sum(active), 1.0)

    def compute(j):        # Head j + 2 (0-based j among heads 2..L).
      branches = [lambda i=i: heads.range(i + 1, i + 2)[:, 0] for i in range(n)]
      logits = jax.lax.switch(j, branches)                                      # [B, V]
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      top_logp, top_ids = jax.lax.top_k(logp, k)
      entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
      return top_ids.astype(jnp.int32), jnp.exp(top_logp), entropy

    return self._heads_loop(state, active, ids, probs, compute, costs, path_lens, is_chain,
                            rows)

  def _heads_loop(self, state, active, ids, probs, compute, costs, path_lens, is_chain, rows):
    n = self.length - 1
    b = active.shape[0]
    # carry: j (heads computed), ids, probs, per-row E of the chain of j + 1 tokens, per-row
    # chance of reaching node j + 1, best score among evaluable candidates, entropy stop.
    init = (jnp.zeros((), jnp.int32), ids, probs, jnp.ones((b,), jnp.float32),
            jnp.ones((b,), jnp.float32), rows / costs[0], jnp.zeros((), bool))

    def go_on(carry):
      j, _, _, expected, reach, best, stop = carry
      if self.rule != "cost":
        return (j < n) & ~stop
      sum_e, sum_r = jnp.sum(expected * active), jnp.sum(reach * active)
      chain_bound = (sum_e + jnp.maximum(path_lens - (j + 1), 0) * sum_r) / costs
      tree_bound = rows * path_lens / costs
      bound = jnp.where(is_chain, chain_bound, tree_bound)
      needed = path_lens[jnp.maximum(state.forced, 0)] > j + 1
      return (j < n) & jnp.where(state.forced >= 0, needed,
                                 jnp.any((path_lens > j + 1) & (bound > best)))

    def body(carry):
      j, ids, probs, expected, reach, best, stop = carry
      top_ids, top_p, entropy = compute(j)
      ids, probs = ids.at[:, j].set(top_ids), probs.at[:, j].set(top_p)
      reach = reach * calibration.acceptance(
          state.hits, state.tries, jnp.full((b,), j), top_p[:, 0])
      expected = expected + reach
      best = jnp.maximum(best, jnp.sum(expected * active) / costs[j + 1])
      mean_entropy = jnp.sum(entropy * active) / jnp.maximum(jnp.sum(active), 1.0)
      if self.rule != "cost":
        over = mean_entropy > self.threshold
        probs = probs.at[:, j].set(jnp.where(over, 0.0, top_p))  # A rejected head is unused.
        return j + 1, ids, probs, expected, reach, best, over
      return j + 1, ids, probs, expected, reach, best, stop

    _, ids, probs, _, _, _, _ = jax.lax.while_loop(go_on, body, init)
    return ids, probs

  # -------------------------------------------------------------------------------- commit
  def commit(self, params, state: AutoState, tokens, num_kept):
    """Counts the call's kept tokens and judges the chain nodes whose true token is now known
    (calibration.judge), when the last propose looked at the heads."""
    verified = (num_kept > 0).astype(jnp.float32)
    state = state.replace(realized=state.realized + jnp.sum(num_kept * verified),
                          verified=state.verified + jnp.sum(verified))
    if self.length < 2:
      return state

    def judge(st):
      hits, tries = calibration.judge(st.hits, st.tries, st.chain, st.probs, tokens, num_kept)
      outcomes = jnp.stack([jnp.sum(hits - st.hits, axis=1), jnp.sum(tries - st.tries, axis=1)])
      return st.replace(hits=hits, tries=tries, recent=RECENT * st.recent + outcomes)

    return jax.lax.cond(jnp.any(state.probs[:, 1:self.length] > 0), judge, lambda st: st, state)

  def stats(self, state: AutoState) -> dict:
    return {"chosen": state.chosen, "predicted_tokens": state.predicted,
            "realized_tokens": state.realized, "verified_calls": state.verified,
            "head_looks": state.looks}


@dataclasses.dataclass(frozen=True)
class AutoOptions:
  max_len: int = 0            # Longest chain, head 1 included (0: all h heads).
  tree_nodes: str = ""        # Tree candidate sizes beyond the chain, e.g. "16,64" ("": none).
  k: int = 16                 # Candidates per head for the tree nodes.
  costs: str = "measured"     # "measured", or relative costs per candidate ("1,1.1,...").

  def validate(self, model=None) -> None:
    heads_lib.check_draft_len(self.max_len, model)
    if _parse_ints(self.tree_nodes, "tree_nodes"):
      heads_lib.check_k(self.k, model)
    if self.costs != "measured":
      _parse_floats(self.costs)
    if model is not None and model.num_heads_bpd < 2:
      raise ValueError(f"auto drafts from heads 2..h; the model has h = {model.num_heads_bpd} "
                       "(plain decoding: method ar)")


@dataclasses.dataclass(frozen=True)
class EntropyOptions:
  max_len: int = 0            # Longest chain, head 1 included (0: all h heads).
  threshold: float = 2.0      # Cut before the first head of mean entropy above this (nats).

  def validate(self, model=None) -> None:
    heads_lib.check_draft_len(self.max_len, model)
    if not self.threshold >= 0.0:
      raise ValueError(f"threshold (nats) must be >= 0, got {self.threshold}")
    if model is not None and model.num_heads_bpd < 2:
      raise ValueError(f"auto_entropy drafts from heads 2..h; the model has h = "
                       f"{model.num_heads_bpd} (plain decoding: method ar)")


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


def _build_auto(options: AutoOptions, model, resources):
  options.validate(model)
  length = heads_lib.check_draft_len(options.max_len, model)
  trees = _parse_ints(options.tree_nodes, "tree_nodes")
  sizes = candidate_sizes(length, trees)
  largest = max(trees) if trees else 0
  k = options.k if trees else 1
  topology = sparse_tree.chain_then_tree(length, k, largest)[0]
  if options.costs == "measured":   # Timed with auto's own drafting steps (any costs do).
    timed = AutoDrafter(length, sizes, (1.0,) * len(sizes), tree_nodes=largest, k=k)
    table = resources.need(resources_lib.COST_MODEL, "auto").table(topology, sizes, timed)
  else:
    table = cost_lib.given(sizes, _parse_floats(options.costs))
  return AutoDrafter(length, sizes, table.seconds, tree_nodes=largest, k=k), None


def _build_entropy(options: EntropyOptions, model, resources):
  options.validate(model)
  length = heads_lib.check_draft_len(options.max_len, model)
  sizes = candidate_sizes(length, ())
  return AutoDrafter(length, sizes, (1.0,) * len(sizes), rule="entropy",
                     threshold=float(options.threshold)), None


registry.register(registry.Method(
    name="auto", summary="cost-aware drafting: per step, the chain (or tree) of most expected "
    "tokens per second, from calibrated head confidence and measured verify costs",
    options=AutoOptions, build=_build_auto, resources=(resources_lib.COST_MODEL,),
    exact_sampling=True))
registry.register(registry.Method(
    name="auto_entropy", summary="ablation: the heads' chain cut before the first head whose "
    "entropy exceeds a threshold (nats)", options=EntropyOptions, build=_build_entropy,
    exact_sampling=True))
