"""The one decode loop: prefill, then draft -> verify -> accept -> commit under lax.while_loop.

Autoregressive decoding is this loop with a one-token draft; blockwise parallel decoding uses the
heads' draft. One model call per iteration both verifies the current block and, from the heads
at the last kept position, proposes the next one (Stern et al. 2018, combined scoring and
proposal). The loop sees the model only through `protocol.ModelFns` and a cache pytree, and the drafter
only through `protocol.Drafter`.

Every drafter proposes the nodes of a static tree (a chain is a tree of one path); they are
verified in one call, under the tree attention mask when the tree branches, and the cache keeps
only the accepted path (moved into place by cache.gather_block when it is not the first slots).

The forward writes the L tokens after each row's committed `cache.lengths` and leaves `lengths`
alone; the loop commits the kept prefix per row, so rejected tokens are rolled back. The logits
callback is split in two because the h vocabulary projections cost more than the layers of a
small model: verification needs head 1 at every fed position, drafting needs heads
2..drafter.last_head at one, and each is computed exactly once.

A drafter that decides on a run of plain decoding (protocol.PlainStretches: `auto` between two
looks at its heads) gets it within the same step as an inner while_loop of one-token calls, so
those calls cost what plain decoding's do: no lax.switch over candidate sizes, no drafter call.

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
from bpdjax.decoding import lattice
from bpdjax.decoding import protocol
from bpdjax.decoding import sampling
from bpdjax.decoding import verify


@flax.struct.dataclass
class Records:
  """What the analyses read (B rows, I = max iterations, L = draft length, S = M + L slots).

  kept: [I, B] int32 tokens yielded per iteration (0 once a row is done).
  drafts: [I, B, L] int32 the primary chain verified at each iteration (-1 past the verified
    candidate's part of it, for drafters with several candidate sizes).
  topk: [B, S, h, K] int32 each head's K best tokens at output slot s, computed on the
    correct context (slot s's head i predicts output token s + i - 1).
  entropy: [B, S, h] float32 entropy (nats) of each head's distribution at slot s.
  """
  kept: jax.Array
  drafts: jax.Array
  topk: jax.Array
  entropy: jax.Array


@flax.struct.dataclass
class DecodeState:
  """Loop carry (B rows, M = max_new_tokens, T = tree nodes, L = its longest path).

  cache: the KV cache; lengths = prompt + tokens committed so far.
  drafter_state: the drafter's own per-row state (see protocol.Drafter.start).
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
  stats: the drafter's named statistics (protocol.Drafter.stats), summed over the batch."""
  tokens: jax.Array
  lengths: jax.Array
  calls: jax.Array
  iterations: jax.Array
  records: Optional[Records]
  stats: dict


def _entropy(logits: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


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


def _record_slots(records: Records, head_logits: jax.Array, first_slot: jax.Array,
                  valid: jax.Array, k: int) -> Records:
  """Stores top-k and entropy of head_logits [B, n, h, V] at slots first_slot + j where valid."""
  b, n, h = head_logits.shape[:3]
  topk = lattice.head_topk(head_logits.reshape(b * n, h, -1), k).reshape(b, n, h, k)
  idx = jnp.where(valid, first_slot[:, None] + jnp.arange(n)[None, :], records.topk.shape[1])
  rows = jnp.arange(b)[:, None]
  return records.replace(
      topk=records.topk.at[rows, idx].set(topk, mode="drop"),
      entropy=records.entropy.at[rows, idx].set(_entropy(head_logits), mode="drop"))


def block_size(drafter: protocol.Drafter) -> int:
  """Tokens one verify call writes into the cache: the drafter's tree size."""
  return drafter.topology.size


@dataclasses.dataclass(frozen=True)
class Settings:
  """The loop's static settings (hashable): the drafter, M = max_new_tokens, the EOS id (or
  None), greedy or the sampling distribution, K > 0 to record the analyses (see Records), and
  whether a step may run a drafter's plain stretch (False: one model call per step, for
  streaming; the tokens are the same)."""
  drafter: protocol.Drafter
  max_new_tokens: int
  eos_id: Optional[int] = None
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig()
  record_topk: int = 0
  plain_stretches: bool = True


def start(fns: protocol.ModelFns, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
          cache: cache_lib.KVCache, drafter_params: Any, settings: Settings,
          rng: Optional[jax.Array] = None) -> DecodeState:
  """Prefill: the prompts [B, P] (lengths [B]; 0 marks a filler row) through the model, the
  first token and the first draft. Returns the loop carry before the first iteration."""
  b, p = prompts.shape
  drafter, m = settings.drafter, settings.max_new_tokens
  topology = drafter.topology
  l = topology.path_len                      # Longest path a call can keep.
  h = fns.num_heads
  last_head = drafter.last_head
  if not 1 <= last_head <= h:
    raise ValueError(f"The drafter reads heads 2..{last_head}; the model has {h}")
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
  # Head 1 gives the first token; the others only when recording (the drafter asks for its own).
  last = fns.heads(params, last_hidden, 0, h if settings.record_topk else 1)[:, 0]  # [B, h|1, V]
  rng, sub = jax.random.split(rng)
  first = _first_token(last[:, 0], settings.sampling_config, sub)                # [B]
  drafter_state = drafter.start(drafter_params, prompts, prompt_lengths, cache.max_len)
  heads = protocol.LastHeads(fns, params, last_hidden, last if settings.record_topk else None,
                             ~filler)
  draft, drafter_state = drafter.propose(drafter_params, drafter_state, heads, first)
  records = None
  if settings.record_topk:
    records = Records(kept=jnp.zeros((m, b), jnp.int32),
                      drafts=jnp.zeros((m, b, len(topology.primary)), jnp.int32),
                      topk=jnp.zeros((b, m + l, h, settings.record_topk), jnp.int32),
                      entropy=jnp.zeros((b, m + l, h), jnp.float32))
    records = _record_slots(records, last[:, None], jnp.zeros((b,), jnp.int32),
                            jnp.ones((b, 1), bool), settings.record_topk)
  done = filler | (m <= 1)
  if settings.eos_id is not None:
    done |= first == settings.eos_id
  return DecodeState(
      cache=cache, drafter_state=drafter_state, draft=draft,
      tokens=jnp.zeros((b, m + l), jnp.int32).at[:, 0].set(first),
      num_tokens=jnp.where(filler, 0, 1), done=done, calls=jnp.where(filler, 0, 1),
      step=jnp.zeros((), jnp.int32), rng=rng, records=records)


def running(state: DecodeState, settings: Settings) -> jax.Array:
  """[] bool: some row still decodes (and the iteration bound M is not reached)."""
  return jnp.any(~state.done) & (state.step < settings.max_new_tokens)


def step(fns: protocol.ModelFns, params: Any, state: DecodeState, drafter_params: Any,
         settings: Settings) -> DecodeState:
  """One iteration: verify the draft (the drafter's chosen candidate size of it) in one model
  call, keep the accepted path and the model's next token, commit them, and propose the next
  draft. Finished rows are left unchanged. A drafter with protocol.PlainStretches that then
  asks for a run of plain decoding gets it here too, as an inner loop of one-token calls."""
  new = _drafting_step(fns, params, state, drafter_params, settings)
  drafter = settings.drafter
  if not settings.plain_stretches or not isinstance(drafter, protocol.PlainStretches):
    return new
  return jax.lax.cond(drafter.stretch(new.drafter_state) > 0,
                      lambda s: _plain_stretch(fns, params, s, drafter_params, settings),
                      lambda s: s, new)


def _plain_stretch(fns, params, state: DecodeState, drafter_params, settings) -> DecodeState:
  """Runs drafter.stretch(state) plain decoding iterations (fewer when decoding ends first):
  verify the one-token draft, commit it, the model's next token becomes the draft. The drafter's
  commit runs on the first (it may judge what its last propose looked at), no drafter call on
  the others (protocol.PlainStretches)."""
  drafter = settings.drafter
  steps = drafter.stretch(state.drafter_state)
  zero = jnp.zeros((), jnp.float32)
  counts = protocol.StretchCounts(jnp.zeros((), jnp.int32), zero, jnp.zeros((), jnp.int32), zero)

  def body(carry, first=False):
    s, c = carry
    new, _, _, next_token = verify_size(fns, params, s, drafter_params, settings, 1,
                                        commit_drafter=first)
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
  return state.replace(drafter_state=drafter.after_stretch(state.drafter_state, counts))


def _drafting_step(fns, params, state: DecodeState, drafter_params, settings) -> DecodeState:
  sizes = settings.drafter.candidates
  if len(sizes) == 1:
    verified = verify_size(fns, params, state, drafter_params, settings, sizes[0])
  else:   # Only the verification differs per size; propose is traced once, below.
    branches = [functools.partial(verify_size, fns, params, drafter_params=drafter_params,
                                  settings=settings, size=size) for size in sizes]
    verified = jax.lax.switch(settings.drafter.candidate(state.drafter_state), branches, state)
  new, last_hidden, last_logits, next_token = verified
  heads = protocol.LastHeads(fns, params, last_hidden,
                             last_logits if settings.record_topk else None, ~new.done)
  draft, drafter_state = settings.drafter.propose(drafter_params, new.drafter_state, heads,
                                                  next_token)
  draft = jnp.where(~state.done[:, None], draft, state.draft)
  return new.replace(draft=draft, drafter_state=drafter_state)


def verify_size(fns: protocol.ModelFns, params: Any, state: DecodeState, drafter_params: Any,
                settings: Settings, size: int, commit_drafter: bool = True):
  """Verifies the first `size` nodes of the draft (a prefix of the drafter's tree), keeps the
  accepted path and the model's next token, and commits them (cache, output, and the drafter
  unless commit_drafter is False: inside a plain stretch).

  Returns (state (its draft not yet replaced), hidden [B, 1, D] and, when recording, every
  head's logits [B, h, V] at each row's last kept node (else zeros [B, 1, 1]), next_token [B]).
  """
  drafter, m, eos_id = settings.drafter, settings.max_new_tokens, settings.eos_id
  topology = drafter.topology.prefix(size)
  l = topology.path_len
  h = fns.num_heads
  record_topk = settings.record_topk
  b = state.draft.shape[0]
  active = ~state.done
  rng, sub = jax.random.split(state.rng)
  nodes = state.draft[:, :size]                                                  # [B, T']
  positions = state.cache.lengths[:, None] + jnp.asarray(topology.depth)[None, :]
  tree_mask = None
  if not topology.is_chain:
    tree_mask = jnp.broadcast_to(jnp.asarray(topology.ancestor_mask), (b, size, size))
  hidden, cache = fns.forward(params, nodes, positions, state.cache, tree_mask)
  # With records every head is needed at every node; otherwise head 1 only.
  logits = fns.heads(params, hidden, 0, h if record_topk else 1)                 # [B, T', h|1, V]
  num_kept, next_token, path = verify.accept(topology, nodes, logits[:, :, 0],
                                             settings.sampling_config, sub)
  path_tokens = jnp.take_along_axis(nodes, path, axis=1)                         # [B, L']
  if not topology.is_chain:  # Move the kept path into the first slots of the block.
    cache = cache_lib.gather_block(cache, path)
    hidden = jnp.take_along_axis(hidden, path[:, :, None], axis=1)
    logits = jnp.take_along_axis(logits, path[:, :, None, None], axis=1)
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
  drafter_state = state.drafter_state
  if commit_drafter:
    drafter_state = drafter.commit(drafter_params, drafter_state, appended, num_kept)
  last = jnp.maximum(num_kept - 1, 0)
  last_hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)          # [B, 1, D]
  last_logits = jnp.zeros((b, 1, 1), jnp.float32)
  if record_topk:
    last_logits = jnp.take_along_axis(logits, last[:, None, None, None], axis=1)[:, 0]
  records = state.records
  if records is not None:
    verified = jnp.pad(nodes[:, jnp.asarray(topology.primary)],
                       ((0, 0), (0, records.drafts.shape[2] - len(topology.primary))),
                       constant_values=-1)
    records = records.replace(kept=records.kept.at[state.step].set(num_kept),
                              drafts=records.drafts.at[state.step].set(verified))
    records = _record_slots(records, logits, state.num_tokens,
                            jnp.arange(l)[None, :] < num_kept[:, None], record_topk)
  new = state.replace(cache=cache, drafter_state=drafter_state, tokens=tokens,
                      num_tokens=num_tokens, done=done, calls=state.calls + active,
                      step=state.step + 1, rng=rng, records=records)
  return new, last_hidden, last_logits, next_token


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
  return DecodeResult(tokens=out, lengths=lengths, calls=state.calls, iterations=state.step,
                      records=state.records, stats=settings.drafter.stats(state.drafter_state))


def decode(fns: protocol.ModelFns, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
           cache: cache_lib.KVCache, drafter: protocol.Drafter, drafter_params: Any = None, *,
           max_new_tokens: int, eos_id: Optional[int],
           sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(),
           rng: Optional[jax.Array] = None, record_topk: int = 0) -> DecodeResult:
  """Decodes every row of a batch: start, then step under lax.while_loop, then finish;
  jit-compatible (wrap it in jax.jit with static settings).

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
    record_topk: K > 0 records each head's top-K and entropy at every output slot, plus drafts
      and kept lengths per iteration, for the analyses; 0 records nothing.
  Returns:
    DecodeResult.
  """
  settings = Settings(drafter, max_new_tokens, eos_id, sampling_config, record_topk)
  state = start(fns, params, prompts, prompt_lengths, cache, drafter_params, settings, rng)
  state = jax.lax.while_loop(lambda s: running(s, settings),
                             lambda s: step(fns, params, s, drafter_params, settings), state)
  return finish(state, settings)


def decode_with_new_cache(fns, params, prompts, prompt_lengths, rng, drafter_params=None, *,
                          drafter, max_new_tokens, eos_id, sampling_config, record_topk,
                          cache_len, cache_init):
  """decode() with the cache allocated inside (cache_init(batch, cache_len)), for jit."""
  cache = cache_init(prompts.shape[0], cache_len)
  return decode(fns, params, prompts, prompt_lengths, cache, drafter, drafter_params,
                max_new_tokens=max_new_tokens, eos_id=eos_id, sampling_config=sampling_config,
                rng=rng, record_topk=record_topk)


jit_decode = jax.jit(decode_with_new_cache, static_argnames=(
    "fns", "drafter", "max_new_tokens", "eos_id", "sampling_config", "record_topk",
    "cache_len", "cache_init"))
