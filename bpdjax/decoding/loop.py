"""The one decode loop: prefill, then draft -> verify -> accept -> commit under lax.while_loop.

Autoregressive decoding is this loop with a one-token draft; blockwise parallel decoding uses the
heads' draft. One model call per iteration both verifies the current block and, from the heads
at the last kept position, proposes the next one (Stern et al. 2018, combined scoring and
proposal). The loop sees the model only through `protocol.ModelFns` and a cache pytree, the
drafter only through `protocol.Drafter` and how much of its draft to verify only through
`protocol.StepPolicy`.

Every drafter proposes the nodes of a static tree (a chain is a tree of one path); the policy's
chosen prefix of it is verified in one call (lax.switch over the policy's static sizes when it
has several), under the tree attention mask when the tree branches, and the cache keeps only the
accepted path (moved into place by cache.gather_block when it is not the first slots).

The forward writes the L tokens after each row's committed `cache.lengths` and leaves `lengths`
alone; the loop commits the kept prefix per row, so rejected tokens are rolled back. The logits
callback is split in two because the h vocabulary projections cost more than the layers of a
small model: verification needs head 1 at every fed position, drafting needs heads
2..drafter.last_head at one, and each is computed exactly once.

A policy that decides on a run of plain decoding (auto between two looks at its heads; the fixed
policy of a one-node drafter: plain decoding) gets it within the same step as an inner
while_loop of one-token calls, so those calls cost what plain decoding's do.

Token accounting: a call that keeps n draft tokens also reveals the model's next token, so each
call yields n tokens beyond the ones known before it, and plain decoding gets exactly 1.0
tokens per call (prefill included as a call, since it yields the first token).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from bpdjax import cache as cache_lib
from bpdjax.decoding import protocol
from bpdjax.decoding import sampling
from bpdjax.decoding import verify
from bpdjax.decoding.policies import fixed


@flax.struct.dataclass
class Records:
  """What the step analyses read (B rows, I = max iterations, L = the primary chain's length).
  Each head's top-k at every output slot is computed after decoding from the output itself
  (decoding/recording.py), so recording leaves the timed loop's model calls unchanged.

  kept: [I, B] int32 tokens yielded per iteration (0 once a row is done).
  drafts: [I, B, L] int32 the primary chain verified at each iteration (-1 past the verified
    candidate's part of it, for policies that verify prefixes).
  """
  kept: jax.Array
  drafts: jax.Array


@flax.struct.dataclass
class DecodeState:
  """Loop carry (B rows, M = max_new_tokens, T = tree nodes, L = its longest path).

  cache: the KV cache; lengths = prompt + tokens committed so far.
  drafter_state: the drafter's own per-row state (see protocol.Drafter.start).
  policy_state: the step policy's state (see protocol.StepPolicy.start).
  draft: [B, T] int32 the next nodes to verify; draft[:, 0] is the model's own next token.
  tokens: [B, M + L] int32 output buffer; tokens[:, :num_tokens] are decided.
  num_tokens: [B] int32 decided tokens (the last of them is draft[:, 0], not yet in the cache).
  done: [B] bool rows that hit EOS or M tokens.
  calls: [B] int32 model calls that served each row (prefill included).
  step: [] int32 loop iterations so far.
  rng: PRNG key of the sampling rule; records: see Records (None when not recorded).
  """
  cache: cache_lib.KVCache
  drafter_state: Any
  policy_state: Any
  draft: jax.Array
  tokens: jax.Array
  num_tokens: jax.Array
  done: jax.Array
  calls: jax.Array
  step: jax.Array
  rng: jax.Array
  records: Optional[Records]


@flax.struct.dataclass
class DecodeResult:
  """tokens: [B, M] int32 (pad_id after each row's end); lengths: [B]; calls: [B];
  iterations: [] loop iterations after prefill; records: see Records (None if not recorded);
  stats: the drafter's and the policy's named statistics (protocol.Drafter.stats,
  protocol.StepPolicy.stats), summed over the batch."""
  tokens: jax.Array
  lengths: jax.Array
  calls: jax.Array
  iterations: jax.Array
  records: Optional[Records]
  stats: dict


def _first_token(logits: jax.Array, config: sampling.SamplingConfig, rng) -> jax.Array:
  """[B, V] -> [B] the model's first generated token."""
  if config.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, sampling.processed_logits(logits, config)).astype(jnp.int32)


def _write_rows(buffer: jax.Array, start: jax.Array, values: jax.Array, valid: jax.Array):
  """buffer[b, start[b] + j] = values[b, j] where valid[b, j]; out-of-range writes are dropped."""
  b, n = values.shape
  idx = start[:, None] + jnp.arange(n)[None, :]
  idx = jnp.where(valid, idx, buffer.shape[1])                                   # Dropped.
  return buffer.at[jnp.arange(b)[:, None], idx].set(values.astype(buffer.dtype), mode="drop")


def block_size(drafter: protocol.Drafter) -> int:
  """Tokens one verify call writes into the cache: the drafter's tree size."""
  return drafter.topology.size


@dataclasses.dataclass(frozen=True)
class Settings:
  """The loop's static settings (hashable): the drafter and the step policy, M =
  max_new_tokens, the EOS id (or None), greedy or the sampling distribution, whether to record
  each iteration's kept length and draft (see Records), and whether a step may run the policy's
  plain stretch (False: one model call per step, for streaming; the tokens are the same)."""
  drafter: protocol.Drafter
  max_new_tokens: int
  eos_id: Optional[int] = None
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig()
  record_steps: bool = False
  plain_stretches: bool = True
  policy: protocol.StepPolicy = fixed.FIXED


def start(fns: protocol.ModelFns, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
          cache: cache_lib.KVCache, drafter_params: Any, settings: Settings,
          rng: Optional[jax.Array] = None) -> DecodeState:
  """Prefill: the prompts [B, P] (lengths [B]; 0 marks a filler row) through the model, the
  first token and the first draft. Returns the loop carry before the first iteration."""
  b, p = prompts.shape
  drafter, policy, m = settings.drafter, settings.policy, settings.max_new_tokens
  topology = drafter.topology
  l = topology.path_len                      # Longest path a call can keep.
  h = fns.num_heads
  if not 1 <= drafter.last_head <= h:
    raise ValueError(f"The drafter reads heads 2..{drafter.last_head}; the model has {h}")
  if cache.max_len < p + m + block_size(drafter):
    raise ValueError(f"Cache of {cache.max_len} slots is too small: prompts of {p} + "
                     f"{m} new tokens + a block of {block_size(drafter)} need "
                     f"{p + m + block_size(drafter)}")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  hidden, cache = fns.forward(params, prompts, positions, cache)
  cache = cache_lib.set_lengths(cache, prompt_lengths)
  filler = prompt_lengths == 0
  last_hidden = jnp.take_along_axis(
      hidden, jnp.maximum(prompt_lengths - 1, 0)[:, None, None], axis=1)        # [B, 1, D]
  # Head 1 gives the first token; the drafter asks for its own heads.
  last = fns.heads(params, last_hidden, 0, 1)[:, 0, 0]                           # [B, V]
  rng, sub = jax.random.split(rng)
  first = _first_token(last, settings.sampling_config, sub)                      # [B]
  drafter_state = drafter.start(drafter_params, prompts, prompt_lengths, cache.max_len)
  heads = protocol.LastHeads(fns, params, last_hidden, None, ~filler)
  draft, drafter_state, policy_state = policy.propose(
      policy.start(drafter, b), drafter, drafter_params, drafter_state, heads, first)
  records = None
  if settings.record_steps:
    records = Records(kept=jnp.zeros((m, b), jnp.int32),
                      drafts=jnp.zeros((m, b, len(topology.primary)), jnp.int32))
  done = filler | (m <= 1)
  if settings.eos_id is not None:
    done |= first == settings.eos_id
  return DecodeState(
      cache=cache, drafter_state=drafter_state, policy_state=policy_state, draft=draft,
      tokens=jnp.zeros((b, m + l), jnp.int32).at[:, 0].set(first),
      num_tokens=jnp.where(filler, 0, 1), done=done, calls=jnp.where(filler, 0, 1),
      step=jnp.zeros((), jnp.int32), rng=rng, records=records)


def running(state: DecodeState, settings: Settings) -> jax.Array:
  """[] bool: some row still decodes (and the iteration bound M is not reached)."""
  return jnp.any(~state.done) & (state.step < settings.max_new_tokens)


def step(fns: protocol.ModelFns, params: Any, state: DecodeState, drafter_params: Any,
         settings: Settings) -> DecodeState:
  """One iteration: verify the draft (the policy's chosen size of it) in one model call, keep
  the accepted path and the model's next token, commit them, and obtain the next draft from the
  policy. Finished rows are left unchanged. A policy that then asks for a run of plain decoding
  gets it here too, as an inner loop of one-token calls."""
  new = _drafting_step(fns, params, state, drafter_params, settings)
  policy = settings.policy
  if not settings.plain_stretches or not policy.stretches(settings.drafter):
    return new
  return jax.lax.cond(policy.stretch(new.policy_state, settings.drafter) > 0,
                      lambda s: _plain_stretch(fns, params, s, drafter_params, settings),
                      lambda s: s, new)


def _plain_stretch(fns, params, state: DecodeState, drafter_params, settings) -> DecodeState:
  """Runs policy.stretch(state) plain decoding iterations (fewer when decoding ends first):
  verify the one-token draft, commit it, the model's next token becomes the draft. The drafter
  commits every one; the policy the first (it may judge what its last proposal looked at)."""
  policy = settings.policy
  steps = policy.stretch(state.policy_state, settings.drafter)
  zero = jnp.zeros((), jnp.float32)
  counts = protocol.StretchCounts(jnp.zeros((), jnp.int32), zero, jnp.zeros((), jnp.int32), zero)

  def body(carry, first=False):
    s, c = carry
    new, _, next_token = verify_size(fns, params, s, drafter_params, settings, 1,
                                     commit_policy=first)
    draft = s.draft.at[:, 0].set(jnp.where(s.done, s.draft[:, 0], next_token))
    left = ~new.done
    verified = jnp.zeros((), jnp.float32) if first else jnp.sum(~s.done).astype(jnp.float32)
    c = protocol.StretchCounts(
        iterations=c.iterations + 1, verified_rows=c.verified_rows + verified,
        drafted_steps=c.drafted_steps + jnp.any(left).astype(jnp.int32),
        drafted_rows=c.drafted_rows + jnp.sum(left).astype(jnp.float32))
    return new.replace(draft=draft), c

  carry = jax.lax.cond(running(state, settings), lambda c: body(c, first=True), lambda c: c,
                       (state, counts))
  state, counts = jax.lax.while_loop(
      lambda c: (c[1].iterations < steps) & running(c[0], settings), body, carry)
  return state.replace(policy_state=policy.after_stretch(state.policy_state, counts))


def _drafting_step(fns, params, state: DecodeState, drafter_params, settings) -> DecodeState:
  sizes = settings.policy.sizes(settings.drafter)
  if len(sizes) == 1:
    verified = verify_size(fns, params, state, drafter_params, settings, sizes[0])
  else:   # Only the verification differs per size; the proposal is traced once, below.
    branches = [functools.partial(verify_size, fns, params, drafter_params=drafter_params,
                                  settings=settings, size=size) for size in sizes]
    verified = jax.lax.switch(settings.policy.choice(state.policy_state), branches, state)
  new, last_hidden, next_token = verified
  heads = protocol.LastHeads(fns, params, last_hidden, None, ~new.done)
  draft, drafter_state, policy_state = settings.policy.propose(
      new.policy_state, settings.drafter, drafter_params, new.drafter_state, heads, next_token)
  draft = jnp.where(~state.done[:, None], draft, state.draft)
  return new.replace(draft=draft, drafter_state=drafter_state, policy_state=policy_state)


def verify_size(fns: protocol.ModelFns, params: Any, state: DecodeState, drafter_params: Any,
                settings: Settings, size: int, commit_policy: bool = True):
  """Verifies the first `size` nodes of the draft (a prefix of the drafter's tree), keeps the
  accepted path and the model's next token, and commits them (cache, output, the drafter, and
  the policy unless commit_policy is False: inside a plain stretch).

  Returns (state (its draft not yet replaced), hidden [B, 1, D] at each row's last kept node,
  next_token [B]).
  """
  drafter, m, eos_id = settings.drafter, settings.max_new_tokens, settings.eos_id
  topology = drafter.topology.prefix(size)
  l = topology.path_len
  b = state.draft.shape[0]
  active = ~state.done
  rng, sub = jax.random.split(state.rng)
  nodes = state.draft[:, :size]                                                  # [B, T']
  positions = state.cache.lengths[:, None] + jnp.asarray(topology.depth)[None, :]
  tree_mask = None
  if not topology.is_chain:
    tree_mask = jnp.broadcast_to(jnp.asarray(topology.ancestor_mask), (b, size, size))
  hidden, cache = fns.forward(params, nodes, positions, state.cache, tree_mask)
  logits = fns.heads(params, hidden, 0, 1)[:, :, 0]                              # [B, T', V]
  num_kept, next_token, path = verify.accept(topology, nodes, logits, settings.sampling_config,
                                             sub)
  path_tokens = jnp.take_along_axis(nodes, path, axis=1)                         # [B, L']
  if not topology.is_chain:  # Move the kept path into the first slots of the block.
    cache = cache_lib.gather_block(cache, path)
    hidden = jnp.take_along_axis(hidden, path[:, :, None], axis=1)
  num_kept = jnp.where(active, num_kept, 0)
  j = jnp.arange(l + 1)[None, :]
  # The kept path followed by the model's next token: tokens[num_tokens - 1 + j], j <= kept.
  appended = jnp.where(j < num_kept[:, None], jnp.pad(path_tokens, ((0, 0), (0, 1))),
                       next_token[:, None])
  valid = (j <= num_kept[:, None]) & active[:, None]
  tokens = _write_rows(state.tokens, state.num_tokens - 1, appended, valid)
  num_tokens = state.num_tokens + num_kept
  done = state.done | (num_tokens >= m)
  if eos_id is not None:
    done |= jnp.any((appended == eos_id) & valid & (j >= 1), axis=1)
  cache = cache_lib.commit(cache, num_kept)
  drafter_state = drafter.commit(drafter_params, state.drafter_state, appended, num_kept)
  policy_state = state.policy_state
  if commit_policy:
    policy_state = settings.policy.commit(policy_state, drafter, appended, num_kept)
  last = jnp.maximum(num_kept - 1, 0)
  last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)          # [B, 1, D]
  records = state.records
  if records is not None:
    verified = jnp.pad(nodes[:, jnp.asarray(topology.primary)],
                       ((0, 0), (0, records.drafts.shape[2] - len(topology.primary))),
                       constant_values=-1)
    records = records.replace(kept=records.kept.at[state.step].set(num_kept),
                              drafts=records.drafts.at[state.step].set(verified))
  new = state.replace(cache=cache, drafter_state=drafter_state, policy_state=policy_state,
                      tokens=tokens, num_tokens=num_tokens, done=done,
                      calls=state.calls + active, step=state.step + 1, rng=rng, records=records)
  return new, last_hidden, next_token


def finish(state: DecodeState, settings: Settings) -> DecodeResult:
  """The outputs: each row's tokens up to M, or through its first EOS."""
  m, eos_id = settings.max_new_tokens, settings.eos_id
  lengths = jnp.minimum(state.num_tokens, m)
  out = state.tokens[:, :m]
  if eos_id is not None:
    is_eos = (out == eos_id) & (jnp.arange(m)[None, :] < lengths[:, None])
    first_eos = jnp.argmax(is_eos, axis=1)
    lengths = jnp.where(jnp.any(is_eos, axis=1), first_eos + 1, lengths)
  out = jnp.where(jnp.arange(m)[None, :] < lengths[:, None], out, 0)
  stats = dict(settings.drafter.stats(state.drafter_state))
  stats.update(settings.policy.stats(state.policy_state))
  return DecodeResult(tokens=out, lengths=lengths, calls=state.calls, iterations=state.step,
                      records=state.records, stats=stats)


def decode(fns: protocol.ModelFns, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
           cache: cache_lib.KVCache, drafter: protocol.Drafter, drafter_params: Any = None, *,
           max_new_tokens: int, eos_id: Optional[int],
           sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(),
           rng: Optional[jax.Array] = None, record_steps: bool = False,
           policy: protocol.StepPolicy = fixed.FIXED) -> DecodeResult:
  """Decodes every row of a batch: start, then step under lax.while_loop, then finish;
  jit-compatible (wrap it in jax.jit with static settings; decoding.generator.Generator does).

  Args:
    fns: the model callbacks (protocol.ModelFns).
    params: model parameters, passed through to the callbacks.
    prompts: [B, P] int32, right-padded.
    prompt_lengths: [B] int32 in [1, P]; 0 marks a filler row (batch padding), which is done
      from the start and yields nothing.
    cache: an empty KVCache with at least P + max_new_tokens + block_size(drafter) slots.
    drafter: a protocol.Drafter; a chain of one token is plain autoregressive decoding.
    drafter_params: the drafter's own weights (e.g. a rescoring LM), passed to its methods.
    max_new_tokens: M, tokens to generate per row (fewer if EOS comes first).
    eos_id: token that ends a row (kept in the output), or None.
    sampling_config: greedy (temperature 0) or the sampling distribution.
    rng: PRNG key for sampling.
    record_steps: record kept lengths and drafts per iteration (Records) for the analyses.
    policy: the protocol.StepPolicy (default: verify the drafter's whole tree).
  Returns:
    DecodeResult.
  """
  settings = Settings(drafter, max_new_tokens, eos_id, sampling_config, record_steps,
                      policy=policy)
  return run(fns, params, prompts, prompt_lengths, cache, drafter_params, settings, rng)


def run(fns: protocol.ModelFns, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
        cache: cache_lib.KVCache, drafter_params: Any, settings: Settings,
        rng: Optional[jax.Array] = None) -> DecodeResult:
  """decode() with its static settings as one Settings value."""
  state = start(fns, params, prompts, prompt_lengths, cache, drafter_params, settings, rng)
  state = jax.lax.while_loop(lambda s: running(s, settings),
                             lambda s: step(fns, params, s, drafter_params, settings), state)
  return finish(state, settings)
