"""Cost-aware drafting as a step policy: `auto` verifies, at every step inside the jitted loop,
the candidate size of ANY drafter (its `candidates`: chain prefixes, Medusa or p-best trees...)
that maximises expected tokens per second; `auto_entropy` (an ablation) cuts the chain at the
first head whose entropy exceeds a threshold.

Expected tokens of a candidate, per row: 1 + the sum over its non-root nodes v of the product,
along v's root path, of a(u) = P(u's token is accepted | its parent was), the calibrated
acceptance at u's depth of u's confidence (Drafter.confidence: the probability of u's token
under its head; prompt lookup: its matched n-gram's length) (decoding/calibration.py: counts
per (depth, confidence bin) learned online from the loop's own outcomes on the drafter's
primary chain, state in the loop carry, shared by the batch).

Choice (`auto`): argmax over candidates c of (sum over active rows of E_row(c)) / cost(c), with
cost(c) the measured seconds of one loop iteration verifying c (decoding/timing.py); one choice
per step for the whole batch, since the cost is per call. Heads are computed one at a time and
the next only while a candidate could still beat the best one so far if every further head
were always right (a chain: E(L') <= E(j) + (L' - j) P_j, P_j = the chance of reaching node
j+1; a tree: every node accepted); when the cost table alone shows that no candidate can beat
plain decoding even with perfect heads, no head is computed at all. The drafter then proposes
from the heads computed (log-probabilities; zeros beyond them, never verified).

Computing head 2 costs a vocabulary projection, about half an AR step for a small model on a
CPU, so `auto` does not look at the heads on every step when drafting does not pay on average
(the heads' recent acceptance rates against the cost table): it then probes them with
back-off. After a look that led to no draft it waits long enough that looking costs at most
PROBE_BUDGET of the decode's time (a look costs about the smallest drafting candidate's call,
costs[1] / costs[0] plain steps), the wait growing x GROWTH up to MAX_WAIT while looks keep
failing; it keeps looking at every step while the look leads to a draft, and at every step while
the recent rates say drafting pays. The plain steps between two looks run as one stretch (an
inner loop of one-token calls inside the decode loop: no lax.switch, no proposal).
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import calibration
from bpdjax.decoding import protocol

RECENT = 0.9          # Decay per judged step of the outcomes behind "drafting pays on average".
PROBE_BUDGET = 0.02   # Most of the decode time that looks may cost while drafting does not pay.
GROWTH = 4            # Back-off factor between two looks that led to no draft.
MAX_WAIT = 256        # Longest run of plain steps between two looks at the heads.
NEVER = 2 ** 30       # The wait when the cost table shows drafting never pays.


@flax.struct.dataclass
class AutoState:
  """choice: [] int32 candidate to verify next; probs: [B, L] confidence of each of the L
  primary chain nodes (Drafter.confidence: root 1, 0 where unknown); chain: [B, L] the primary
  chain proposed; hits, tries: [L-1, BINS] accepted / tried chain nodes per position 2..L and
  confidence bin;
  chosen: [C] int32 steps per candidate; predicted, realized, verified: [] float32 sums over
  verified rows of expected and kept tokens, and their count; wait: [] int32 plain steps left
  before the heads are looked at again; backoff: [] int32 the wait set after a look that led to
  no draft; looks: [] int32 steps that computed heads; forced: [] int32 the candidate every
  step verifies, -1 (the default) to choose (StepPolicy.force); recent: [2, L-1] accepted and
  tried chain nodes per head, decayed by RECENT per judged step."""
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


class _Shape:
  """Static facts of a drafter's candidates (sizes C): path lengths, which are chains, the
  primary chain (length: its nodes, the calibrated chain), the heads computed lazily (heads
  2..last_head; none for a drafter that reads no head), and the cost of the chain candidate of
  each length."""

  def __init__(self, drafter, costs):
    topology = drafter.topology
    self.topology = topology
    self.sizes = tuple(drafter.candidates)
    self.length = len(topology.primary)
    self.heads = drafter.last_head - 1
    prefixes = [topology.prefix(s) for s in self.sizes]
    self.path_lens = np.asarray([p.path_len for p in prefixes])
    self.is_chain = np.asarray([p.is_chain for p in prefixes])
    self.primary = np.asarray(topology.primary)
    # chain_cost[j]: cost of the chain candidate of j + 2 nodes (inf: none).
    self.chain_cost = np.full((max(self.length - 1, 1),), np.inf)
    for i, (p, chain) in enumerate(zip(self.path_lens, self.is_chain)):
      if chain and p >= 2:
        self.chain_cost[p - 2] = min(self.chain_cost[p - 2], costs[i])


def check_drafter(drafter, costs) -> None:
  """Raises ValueError when auto cannot drive `drafter` with these costs."""
  sizes = tuple(drafter.candidates)
  if len(drafter.topology.primary) < 2:
    raise ValueError("auto chooses among drafts; this drafter drafts nothing (plain decoding: "
                     "method ar)")
  if sizes[0] != 1 or len(sizes) < 2:
    raise ValueError(f"auto needs candidate sizes starting with plain decoding (1) and at "
                     f"least one draft, got {sizes}")
  if drafter.last_head >= 2 and len(drafter.topology.primary) != drafter.last_head:
    raise ValueError(f"auto calibrates the drafter's primary chain, which must read every head "
                     f"2..{drafter.last_head}; it has {len(drafter.topology.primary)} nodes")
  if len(costs) != len(sizes):
    raise ValueError(f"{len(costs)} costs given for {len(sizes)} candidate sizes {sizes}")


@dataclasses.dataclass(frozen=True)
class AutoPolicy:
  """protocol.StepPolicy. costs: seconds (or relative) per iteration of each of the drafter's
  candidates; rule: "cost" (auto) or "entropy" (the longest chain before the first head of
  entropy > threshold, nats)."""
  costs: tuple[float, ...]
  rule: str = "cost"
  threshold: float = 0.0

  def sizes(self, drafter) -> tuple[int, ...]:
    return tuple(drafter.candidates)

  def _shape(self, drafter) -> _Shape:
    return _Shape(drafter, self.costs)

  def _never_drafts(self, shape: _Shape) -> bool:
    """The cost table alone shows plain decoding wins even with heads that are always right."""
    if self.rule != "cost":
      return False
    return max(p / c for p, c in zip(shape.path_lens, self.costs)) <= 1.0 / self.costs[0]

  def start(self, drafter, batch: int) -> AutoState:
    length, c = len(drafter.topology.primary), len(drafter.candidates)
    zeros = jnp.zeros((), jnp.float32)
    return AutoState(
        choice=jnp.zeros((), jnp.int32), probs=jnp.zeros((batch, length), jnp.float32),
        chain=jnp.zeros((batch, length), jnp.int32),
        hits=jnp.zeros((length - 1, calibration.BINS), jnp.float32),
        tries=jnp.zeros((length - 1, calibration.BINS), jnp.float32),
        chosen=jnp.zeros((c,), jnp.int32), predicted=zeros, realized=zeros, verified=zeros,
        wait=jnp.zeros((), jnp.int32), backoff=jnp.ones((), jnp.int32),
        looks=jnp.zeros((), jnp.int32), forced=jnp.full((), -1, jnp.int32),
        recent=jnp.zeros((2, length - 1), jnp.float32))

  def choice(self, state: AutoState) -> jax.Array:
    return state.choice

  def force(self, state: AutoState, index: int) -> AutoState:
    return state.replace(forced=jnp.asarray(index, jnp.int32))

  # ------------------------------------------------------------------------------- propose
  def _pays_on_average(self, state: AutoState, shape: _Shape) -> jax.Array:
    """Whether some chain beats plain decoding with every node accepted at its head's recent
    rate (outcomes decayed by RECENT per judged step, over all bins, from the prior 1/2)."""
    rates = (state.recent[0] + 1.0) / (state.recent[1] + 2.0)                       # [L-1]
    reach = jnp.concatenate([jnp.ones((1,)), jnp.cumprod(rates)])                    # [L]
    gains = [jnp.sum(reach[:p]) / self.costs[i]
             for i, (p, chain) in enumerate(zip(shape.path_lens, shape.is_chain)) if chain]
    return jnp.max(jnp.stack(gains)) > 1.0 / self.costs[0]

  def propose(self, state: AutoState, drafter, drafter_params, drafter_state, heads,
              next_token):
    shape = self._shape(drafter)
    if self._never_drafts(shape):   # Plain decoding to the end: one stretch.
      nodes, new = self._plain(state, shape, heads, next_token)
      return nodes, drafter_state, new.replace(wait=jnp.full((), NEVER, jnp.int32))
    if self.rule != "cost":
      nodes, drafter_state, new = self._look(state, shape, drafter, drafter_params,
                                             drafter_state, heads, next_token)
      return nodes, drafter_state, new.replace(looks=state.looks + 1)
    look = (state.wait <= 0) | self._pays_on_average(state, shape) | (state.forced >= 0)

    def plain(carry):
      st, ds = carry
      nodes, new = self._plain(st, shape, heads, next_token)
      return nodes, ds, new

    nodes, drafter_state, new = jax.lax.cond(
        look, lambda c: self._look(c[0], shape, drafter, drafter_params, c[1], heads,
                                   next_token),
        plain, (state, drafter_state))
    drafted = new.choice > 0
    grown = jnp.minimum(jnp.maximum(GROWTH * state.backoff, self._probe_wait()), MAX_WAIT)
    backoff = jnp.where(drafted, 1, jnp.where(look, grown, state.backoff))
    wait = jnp.where(drafted, 0, jnp.where(look, backoff, state.wait - 1))
    return nodes, drafter_state, new.replace(wait=wait, backoff=backoff,
                                             looks=state.looks + look.astype(jnp.int32))

  def _probe_wait(self) -> int:
    """Plain steps per look that keep looks within PROBE_BUDGET of the time."""
    return int(np.ceil(self.costs[1] / self.costs[0] / PROBE_BUDGET))

  def stretches(self, drafter) -> bool:
    return self.rule == "cost"

  def stretch(self, state: AutoState, drafter) -> jax.Array:
    """The plain steps to wait once propose has chosen plain decoding and drafting does not pay
    on average (the stretch's first step commits: head 2 is judged against it)."""
    plain = ((state.choice == 0) & (state.forced < 0)
             & ~self._pays_on_average(state, self._shape(drafter)))
    return jnp.where(plain, jnp.maximum(state.wait, 0), 0)

  def after_stretch(self, state: AutoState, counts: protocol.StretchCounts) -> AutoState:
    """What propose (_plain) and commit would have counted over the stretch's steps."""
    return state.replace(
        wait=state.wait - counts.iterations,
        chosen=state.chosen.at[0].add(counts.drafted_steps),
        predicted=state.predicted + counts.drafted_rows,
        realized=state.realized + counts.verified_rows,
        verified=state.verified + counts.verified_rows)

  def _plain(self, state: AutoState, shape: _Shape, heads, next_token):
    """Plain decoding without looking at the heads: candidate 0, one expected token per row."""
    b, t = next_token.shape[0], shape.topology.size
    nodes = jnp.zeros((b, t), jnp.int32).at[:, 0].set(next_token.astype(jnp.int32))
    return nodes, state.replace(
        choice=jnp.zeros((), jnp.int32), probs=jnp.zeros_like(state.probs),
        chain=nodes[:, shape.primary],
        chosen=state.chosen.at[0].add(jnp.any(heads.active).astype(jnp.int32)),
        predicted=state.predicted + jnp.sum(heads.active.astype(jnp.float32)))

  def _look(self, state: AutoState, shape: _Shape, drafter, drafter_params, drafter_state,
            heads, next_token):
    topo = shape.topology
    active = heads.active.astype(jnp.float32)
    logp, usable_heads = self._lazy_heads(state, shape, heads, active)            # [B, L-1, V]
    # The heads already computed, as the drafter's lattice; the hidden state stays, so that a
    # drafter whose heads read its own drafts (sequential, markov) can still compute them.
    lattice = dataclasses.replace(
        heads, logits=jnp.concatenate([jnp.zeros_like(logp[:, :1]), logp], axis=1))
    nodes, drafter_state = drafter.propose(drafter_params, drafter_state, lattice, next_token)
    node_probs = drafter.confidence(drafter_state, logp, usable_heads, nodes)      # [B, T]
    expected = calibration.expected(state.hits, state.tries, topo, shape.sizes, node_probs)
    totals = jnp.sum(expected * active[:, None], axis=0)                         # [C]
    usable = jnp.asarray(shape.path_lens) <= usable_heads + 1
    if self.rule == "cost":
      score = jnp.where(usable, totals / jnp.asarray(self.costs), -1.0)
      choice = jnp.argmax(score).astype(jnp.int32)
    else:                      # The longest candidate whose heads passed the entropy test.
      choice = jnp.max(jnp.where(usable, jnp.arange(len(shape.sizes)), 0)).astype(jnp.int32)
    choice = jnp.where(state.forced >= 0, state.forced, choice)
    choice = jnp.where(jnp.any(heads.active), choice, 0)
    any_active = jnp.any(heads.active)
    return nodes, drafter_state, state.replace(
        choice=choice, probs=node_probs[:, shape.primary], chain=nodes[:, shape.primary],
        chosen=state.chosen.at[choice].add(any_active.astype(jnp.int32)),
        predicted=state.predicted + jnp.sum(expected[:, choice] * active))

  def _lazy_heads(self, state, shape: _Shape, heads, active):
    """Heads 2, 3, ... one at a time while a longer candidate could still pay (rule "cost"), or
    while the batch's mean entropy stays within the threshold (rule "entropy"). Returns their
    log-probabilities [B, heads, V] (zeros where not computed) and how many may be used (a
    drafter that reads no head: every chain node)."""
    n = shape.heads
    vocab = jax.eval_shape(lambda: heads.range(1, 2)).shape[-1]
    if n == 0:
      return (jnp.zeros((active.shape[0], 0, vocab), jnp.float32),
              jnp.asarray(shape.length - 1, jnp.int32))
    costs = jnp.asarray(self.costs)
    chain_cost = jnp.asarray(shape.chain_cost, jnp.float32)
    path_lens = jnp.asarray(shape.path_lens, jnp.float32)
    is_chain = jnp.asarray(shape.is_chain)
    rows = jnp.maximum(jnp.sum(active), 1.0)
    b = active.shape[0]

    def compute(j):        # Head j + 2 (0-based j among heads 2..L).
      branches = [lambda i=i: heads.range(i + 1, i + 2)[:, 0] for i in range(n)]
      logits = jax.lax.switch(j, branches)                                      # [B, V]
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      top_logp = jnp.max(logp, axis=-1)
      entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
      return logp, jnp.exp(top_logp), entropy

    # carry: j (heads computed), log-probs, per-row E of the chain of j + 1 tokens, per-row
    # chance of reaching node j + 1, best score among evaluable chains, entropy stop.
    init = (jnp.zeros((), jnp.int32), jnp.zeros((b, n, vocab), jnp.float32),
            jnp.ones((b,), jnp.float32), jnp.ones((b,), jnp.float32), rows / costs[0],
            jnp.zeros((), bool))

    def go_on(carry):
      j, _, expected, reach, best, stop = carry
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
      j, logp, expected, reach, best, stop = carry
      head_logp, top_p, entropy = compute(j)
      logp = logp.at[:, j].set(head_logp)
      reach = reach * calibration.acceptance(state.hits, state.tries, jnp.full((b,), j), top_p)
      expected = expected + reach
      best = jnp.maximum(best, jnp.sum(expected * active) / chain_cost[j])
      if self.rule != "cost":
        mean_entropy = jnp.sum(entropy * active) / jnp.maximum(jnp.sum(active), 1.0)
        return j + 1, logp, expected, reach, best, mean_entropy > self.threshold
      return j + 1, logp, expected, reach, best, stop

    j, logp, _, _, _, stop = jax.lax.while_loop(go_on, body, init)
    return logp, j - stop.astype(jnp.int32)

  # -------------------------------------------------------------------------------- commit
  def commit(self, state: AutoState, drafter, tokens, num_kept):
    """Counts the call's kept tokens and judges the chain nodes whose true token is now known
    (calibration.judge), when the last proposal looked at the heads."""
    verified = (num_kept > 0).astype(jnp.float32)
    state = state.replace(realized=state.realized + jnp.sum(num_kept * verified),
                          verified=state.verified + jnp.sum(verified))

    def judge(st):
      hits, tries = calibration.judge(st.hits, st.tries, st.chain, st.probs, tokens, num_kept)
      outcomes = jnp.stack([jnp.sum(hits - st.hits, axis=1), jnp.sum(tries - st.tries, axis=1)])
      return st.replace(hits=hits, tries=tries, recent=RECENT * st.recent + outcomes)

    return jax.lax.cond(jnp.any(state.probs[:, 1:] > 0), judge, lambda st: st, state)

  def stats(self, state: AutoState) -> dict:
    return {"chosen": state.chosen, "predicted_tokens": state.predicted,
            "realized_tokens": state.realized, "verified_calls": state.verified,
            "head_looks": state.looks}
