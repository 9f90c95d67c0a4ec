"""The one decode loop: prefill, then draft -> verify -> accept -> commit under lax.while_loop.

Autoregressive decoding is this loop with a one-token draft; blockwise parallel decoding uses the
heads' draft. One model call per iteration both verifies the current block and, from the heads
at the last kept position, proposes the next one (Stern et al. 2018, combined scoring and
proposal). The loop sees the model only through `ModelFns` and a cache pytree:

  forward(params, tokens [B, L], positions [B, L], cache, block_mask [B, L, L] | None)
      -> (hidden [B, L, D], cache)
  heads(params, hidden [B, n, D], start, stop) -> logits [B, n, stop - start, V]

A drafter with a `tree` (tree.py) proposes T tokens arranged as a tree instead of a chain; they
are verified in the same one call under a tree attention mask, and the cache keeps only the
accepted path (moved into place by cache.gather_block).

The forward writes the L tokens after each row's committed `cache.lengths` and leaves `lengths`
alone; the loop commits the kept prefix per row, so rejected tokens are rolled back. The logits
callback is split in two because the h vocabulary projections cost more than the layers of a
small model: verification needs head 1 at every fed position, drafting needs all heads at one.

Token accounting: a call that keeps n draft tokens also reveals the model's next token, so each
call yields n tokens beyond the ones known before it, and plain decoding gets exactly 1.0
tokens per call (prefill included as a call, since it yields the first token).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from bpdjax import cache as cache_lib
from bpdjax.decoding import drafters as drafters_lib
from bpdjax.decoding import sampling
from bpdjax.decoding import verify



@dataclasses.dataclass(frozen=True)
class ModelFns:
  """The model as the loop sees it (see module docstring). Hashable, so it can be static."""
  forward: Callable[..., tuple[jax.Array, cache_lib.KVCache]]
  heads: Callable[[Any, jax.Array, int, int], jax.Array]
  num_heads: int

  def logits(self, params, hidden, start=0, stop=None):
    return self.heads(params, hidden, start, self.num_heads if stop is None else stop)


@flax.struct.dataclass
class Records:
  """What the analyses read (B rows, I = max iterations, L = draft length, S = M + L slots).

  kept: [I, B] int32 tokens yielded per iteration (0 once a row is done).
  drafts: [I, B, L] int32 the block verified at each iteration.
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
  """Loop carry (B rows, M = max_new_tokens, L = draft length).

  cache: the KV cache; lengths = prompt + tokens committed so far.
  draft: [B, L] int32 the next block to verify; draft[:, 0] is the model's own next token.
  tokens: [B, M + L] int32 output buffer; tokens[:, :num_tokens] are decided.
  num_tokens: [B] int32 decided tokens (the last of them is draft[:, 0], not yet in the cache).
  done: [B] bool rows that hit EOS or M tokens.
  calls: [B] int32 model calls that served each row (prefill included).
  step: [] int32 loop iterations so far.
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
  iterations: [] loop iterations after prefill; records: see Records (None if not recorded)."""
  tokens: jax.Array
  lengths: jax.Array
  calls: jax.Array
  iterations: jax.Array
  records: Optional[Records]


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
  topk = drafters_lib.head_topk(head_logits.reshape(b * n, h, -1), k).reshape(b, n, h, k)
  idx = jnp.where(valid, first_slot[:, None] + jnp.arange(n)[None, :], records.topk.shape[1])
  rows = jnp.arange(b)[:, None]
  return records.replace(
      topk=records.topk.at[rows, idx].set(topk, mode="drop"),
      entropy=records.entropy.at[rows, idx].set(_entropy(head_logits), mode="drop"))


def block_size(drafter) -> int:
  """Tokens one verify call writes into the cache: the tree's size, or the chain's length."""
  topology = getattr(drafter, "tree", None)
  return drafter.draft_len if topology is None else topology.size


def decode(fns: ModelFns, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
           cache: cache_lib.KVCache, drafter, *, max_new_tokens: int, eos_id: Optional[int],
           sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(),
           rng: Optional[jax.Array] = None, record_topk: int = 0,
           drafter_params: Any = None) -> DecodeResult:
  """Decodes every row of a batch; jit-compatible (wrap it in jax.jit with static settings).

  Args:
    fns: the model callbacks (see module docstring).
    params: model parameters, passed through to the callbacks.
    prompts: [B, P] int32, right-padded.
    prompt_lengths: [B] int32 in [1, P]; 0 marks a filler row (batch padding), which is done
      from the start and yields nothing.
    cache: an empty KVCache with at least P + max_new_tokens + block_size(drafter) slots.
    drafter: see drafters.py; draft_len 1 is plain autoregressive decoding.
    max_new_tokens: M, tokens to generate per row (fewer if EOS comes first).
    eos_id: token that ends a row (kept in the output), or None.
    sampling_config: greedy (temperature 0) or the sampling distribution.
    rng: PRNG key for sampling.
    record_topk: K > 0 records each head's top-K and entropy at every output slot, plus drafts
      and kept lengths per iteration, for the analyses; 0 records nothing.
    drafter_params: weights of the drafter's own model (e.g. a rescoring LM), or None.
  Returns:
    DecodeResult.
  """
  b, p = prompts.shape
  topology = getattr(drafter, "tree", None)
  l = drafter.draft_len                       # Longest path a call can keep.
  if topology is not None:
    if not sampling_config.greedy:
      raise ValueError("Tree drafts are verified greedily only; use temperature 0")
    if topology.max_depth + 1 != l:
      raise ValueError(f"Drafter tree depth {topology.max_depth + 1} != draft_len {l}")
    tree_depth = jnp.asarray(topology.depth)
    tree_mask = jnp.asarray(topology.ancestor_mask)
  primary = topology.primary if topology is not None else tuple(range(l))
  m = max_new_tokens
  if cache.max_len < p + m + block_size(drafter):
    raise ValueError(f"Cache of {cache.max_len} slots is too small: prompts of {p} + "
                     f"{m} new tokens + a block of {block_size(drafter)} need "
                     f"{p + m + block_size(drafter)}")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  h = fns.num_heads
  # Drafters that ignore the heads (plain decoding) get head 1 only, like a plain LM.
  draft_heads = h if drafter.uses_heads else 1
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  hidden, cache = fns.forward(params, prompts, positions, cache)
  cache = cache_lib.set_lengths(cache, prompt_lengths)
  filler = prompt_lengths == 0
  last_hidden = jnp.take_along_axis(
      hidden, jnp.maximum(prompt_lengths - 1, 0)[:, None, None], axis=1)        # [B, 1, D]
  last = fns.logits(params, last_hidden, 0, max(draft_heads, h if record_topk else 1))[:, 0]
  rng, sub = jax.random.split(rng)
  first = _first_token(last[:, 0], sampling_config, sub)                         # [B]
  drafter_state = drafter.start(drafter_params, prompts, prompt_lengths)
  draft, drafter_state = drafter.propose(drafter_state, last[:, :draft_heads], first)

  records = None
  if record_topk:
    records = Records(kept=jnp.zeros((m, b), jnp.int32),
                      drafts=jnp.zeros((m, b, len(primary)), jnp.int32),
                      topk=jnp.zeros((b, m + l, h, record_topk), jnp.int32),
                      entropy=jnp.zeros((b, m + l, h), jnp.float32))
    records = _record_slots(records, last[:, None], jnp.zeros((b,), jnp.int32),
                            jnp.ones((b, 1), bool), record_topk)
  done = filler | (m <= 1)
  if eos_id is not None:
    done |= first == eos_id
  state = DecodeState(
      cache=cache, drafter_state=drafter_state, draft=draft,
      tokens=jnp.zeros((b, m + l), jnp.int32).at[:, 0].set(first),
      num_tokens=jnp.where(filler, 0, 1), done=done, calls=jnp.where(filler, 0, 1),
      step=jnp.zeros((), jnp.int32), rng=rng, records=records)

  def cond(state: DecodeState):
    return jnp.any(~state.done) & (state.step < m)

  def body(state: DecodeState) -> DecodeState:
    active = ~state.done
    rng, sub = jax.random.split(state.rng)
    if topology is None:
      positions = state.cache.lengths[:, None] + jnp.arange(l, dtype=jnp.int32)[None, :]
      hidden, cache = fns.forward(params, state.draft, positions, state.cache)   # [B, L, D]
    else:
      positions = state.cache.lengths[:, None] + tree_depth[None, :]
      hidden, cache = fns.forward(params, state.draft, positions, state.cache,
                                  jnp.broadcast_to(tree_mask, (b,) + tree_mask.shape))
    # With records every head is needed at every position; otherwise head 1 only.
    logits = fns.logits(params, hidden, 0, h if record_topk else 1)              # [B, T, h|1, V]
    if topology is None:
      num_kept, next_token = verify.accept(state.draft, logits[:, :, 0], sampling_config, sub)
      path = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
      path_tokens = state.draft
    else:
      num_kept, next_token, path = verify.accept_tree(state.draft, logits[:, :, 0], topology)
      path_tokens = jnp.take_along_axis(state.draft, path, axis=1)               # [B, L]
      cache = cache_lib.gather_block(cache, path)
      hidden = jnp.take_along_axis(hidden, path[:, :, None], axis=1)
      logits = jnp.take_along_axis(logits, path[:, :, None, None], axis=1)
    num_kept = jnp.where(active, num_kept, 0)
    j = jnp.arange(l + 1)[None, :]
    # The kept block followed by the model's next token: tokens[num_tokens - 1 + j], j <= kept.
    appended = jnp.where(j < num_kept[:, None], jnp.pad(path_tokens, ((0, 0), (0, 1))),
                         next_token[:, None])
    valid = (j <= num_kept[:, None]) & active[:, None]
    tokens = _write_rows(state.tokens, state.num_tokens - 1, appended, valid)
    num_tokens = state.num_tokens + num_kept
    done = state.done | (num_tokens >= m)
    if eos_id is not None:
      done |= jnp.any((appended == eos_id) & valid & (j >= 1), axis=1)
    cache = cache_lib.commit(cache, num_kept)
    drafter_state = drafter.commit(state.drafter_state, appended, num_kept)
    last_index = jnp.maximum(num_kept - 1, 0)
    if record_topk or draft_heads == 1:
      last = jnp.take_along_axis(logits, last_index[:, None, None, None], axis=1)[:, 0]
    else:
      last_hidden = jnp.take_along_axis(hidden, last_index[:, None, None], axis=1)
      last = fns.logits(params, last_hidden, 0, draft_heads)[:, 0]               # [B, h, V]
    draft, drafter_state = drafter.propose(drafter_state, last[:, :draft_heads], next_token)
    draft = jnp.where(active[:, None], draft, state.draft)
    records = state.records
    if records is not None:
      records = records.replace(kept=records.kept.at[state.step].set(num_kept),
                                drafts=records.drafts.at[state.step].set(
                                    state.draft[:, jnp.asarray(primary)]))
      records = _record_slots(records, logits, state.num_tokens,
                              jnp.arange(l)[None, :] < num_kept[:, None], record_topk)
    return state.replace(cache=cache, drafter_state=drafter_state, draft=draft, tokens=tokens,
                         num_tokens=num_tokens, done=done, calls=state.calls + active,
                         step=state.step + 1, rng=rng, records=records)

  state = jax.lax.while_loop(cond, body, state)
  lengths = jnp.minimum(state.num_tokens, m)
  out = state.tokens[:, :m]
  if eos_id is not None:
    is_eos = (out == eos_id) & (jnp.arange(m)[None, :] < lengths[:, None])
    first_eos = jnp.argmax(is_eos, axis=1)
    lengths = jnp.where(jnp.any(is_eos, axis=1), first_eos + 1, lengths)
  out = jnp.where(jnp.arange(m)[None, :] < lengths[:, None], out, 0)
  return DecodeResult(tokens=out, lengths=lengths, calls=state.calls, iterations=state.step,
                      records=state.records)


@dataclasses.dataclass(frozen=True)
class _TransformerFns:
  model: Any

  def forward(self, params, tokens, positions, cache, block_mask=None):
    return self.model.apply({"params": params}, tokens, positions, cache=cache,
                            block_mask=block_mask, method=self.model.hidden_states)

  def heads(self, params, hidden, start, stop):
    return self.model.apply({"params": params}, hidden, start, stop,
                            method=self.model.head_logits)


def model_fns(model) -> ModelFns:
  """The callbacks for a bpdjax Transformer (flax module); equal models give equal ModelFns."""
  fns = _TransformerFns(model)
  return ModelFns(forward=fns.forward, heads=fns.heads, num_heads=model.config.num_heads_bpd)


def decode_with_new_cache(fns, params, prompts, prompt_lengths, rng, drafter_params=None, *,
                          drafter, max_new_tokens, eos_id, sampling_config, record_topk,
                          cache_len, cache_init):
  """decode() with the cache allocated inside (cache_init(batch, cache_len)), for jit."""
  cache = cache_init(prompts.shape[0], cache_len)
  return decode(fns, params, prompts, prompt_lengths, cache, drafter,
                max_new_tokens=max_new_tokens, eos_id=eos_id, sampling_config=sampling_config,
                rng=rng, record_topk=record_topk, drafter_params=drafter_params)


jit_decode = jax.jit(decode_with_new_cache, static_argnames=(
    "fns", "drafter", "max_new_tokens", "eos_id", "sampling_config", "record_topk",
    "cache_len", "cache_init"))
