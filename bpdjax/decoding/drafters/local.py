"""Local neural rescoring (Kim et al. 2024, Algorithm 2): method `local`.

Left to right over heads 2..L, pick among head i's top-k the token v that maximises
  (1 - alpha) * log p_head_i(v) + alpha * log p_rescorer(v | context, draft so far),
where the rescorer is a small causal LM (any bpdjax checkpoint with the model's vocabulary).
Head 1's token is the model's own and never changes; alpha = 0 gives plain BPD's draft.

The rescorer keeps its own KV cache inside the jitted decode loop. Its committed length covers
the context except the last accepted token, which each proposal feeds again together with the
model's next token (two tokens in, one call), so a fully accepted block needs no extra call.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from bpdjax import cache as cache_lib
from bpdjax.decoding import lattice
from bpdjax.decoding import model_fns
from bpdjax.decoding import registry
from bpdjax.decoding import resources as resources_lib
from bpdjax.decoding import tree as tree_lib
from bpdjax.decoding.drafters import base


@flax.struct.dataclass
class RescorerState:
  """cache: the rescorer's KV cache (lengths = context tokens fed, minus one); last: [B] int32
  the last accepted token, not yet committed in the rescorer cache; proposed: [] bool whether
  a proposal fed the rescorer since the last commit (a policy may skip proposals)."""
  cache: cache_lib.KVCache
  last: jax.Array
  proposed: jax.Array


@dataclasses.dataclass(frozen=True)
class LocalRescoreDrafter(base.Stateless):
  """Local rescoring (Algorithm 2). draft_len: L heads used; k: candidates per head; alpha in
  [0, 1]; rescorer: the LM's model_fns.TransformerFns (its params are the drafter params)."""
  draft_len: int
  k: int
  alpha: float
  rescorer: model_fns.TransformerFns

  @property
  def topology(self) -> tree_lib.Tree:
    return tree_lib.chain(self.draft_len)

  @property
  def candidates(self) -> tuple[int, ...]:
    return base.chain_prefixes(self.draft_len)

  def start(self, params, prompts, prompt_lengths, cache_len):
    b, p = prompts.shape
    cache = cache_lib.init_for_model(self.rescorer.model.config, b, cache_len)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    _, cache = self.rescorer.forward(params, prompts, positions, cache)
    last = jnp.take_along_axis(prompts, jnp.maximum(prompt_lengths - 1, 0)[:, None], axis=1)[:, 0]
    cache = cache_lib.set_lengths(cache, jnp.maximum(prompt_lengths - 1, 0))
    return RescorerState(cache=cache, last=last, proposed=jnp.zeros((), bool))

  def step(self, params, state: RescorerState, tokens: jax.Array, offset: int):
    """Feeds tokens [B, n] at slots lengths + offset.. ; returns log-probs after the last one."""
    cache = state.cache
    shifted = cache_lib.set_lengths(cache, cache.lengths + offset)
    positions = shifted.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    hidden, shifted = self.rescorer.forward(params, tokens, positions, shifted)
    logits = self.rescorer.heads(params, hidden[:, -1:], 0, 1)[:, 0, 0]          # [B, V]
    return jax.nn.log_softmax(logits, axis=-1), state.replace(
        cache=cache_lib.set_lengths(shifted, cache.lengths))

  def rerank(self, params, state: RescorerState, head_logits, next_token):
    """Algorithm 2 with the full order kept: head i+2's top-k reranked by the interpolated
    score given next_token and the best candidates chosen before it.

    Returns (ids [B, L-1, k] int32, best first; ids[:, :, 0] is the refined draft, state).
    Equal scores keep the heads' order (lax.top_k prefers the lower index), so alpha = 0
    returns the heads' top-k unchanged.
    """
    cand_ids, cand_logp = lattice.head_lattice(head_logits, self.k)
    # Always fed (even for L = 1): commit counts `last` and next_token as written.
    rescorer_logp, state = self.step(params, state, jnp.stack([state.last, next_token], axis=1),
                                     0)
    ranked = [cand_ids[:, :0]]
    for i in range(self.draft_len - 1):
      if i > 0:
        rescorer_logp, state = self.step(params, state, ranked[-1][:, 0, :1], i + 1)
      score = ((1.0 - self.alpha) * cand_logp[:, i]
               + self.alpha * jnp.take_along_axis(rescorer_logp, cand_ids[:, i], axis=1))
      order = jax.lax.top_k(score, self.k)[1]
      ranked.append(jnp.take_along_axis(cand_ids[:, i], order, axis=1)[:, None])
    return jnp.concatenate(ranked, axis=1).astype(jnp.int32), state.replace(
        proposed=jnp.ones((), bool))

  def propose(self, params, state: RescorerState, heads, next_token):
    head_logits = heads.range(1, self.last_head)                               # [B, L-1, V]
    ranked, state = self.rerank(params, state, head_logits, next_token)
    draft = jnp.concatenate([next_token[:, None].astype(jnp.int32), ranked[:, :, 0]], axis=1)
    return draft, state

  def commit(self, params, state: RescorerState, tokens, num_kept):
    """Kept tokens tokens[:, :num_kept] were fed by the last proposal (after `last`); when no
    proposal ran since the last commit (a plain step), `last` and tokens[:, :num_kept - 1] are
    fed first."""
    def feed(st):
      fed = jnp.concatenate([st.last[:, None], tokens[:, :-1].astype(jnp.int32)], axis=1)
      return self.step(params, st, fed, 0)[1]

    state = jax.lax.cond(state.proposed, lambda st: st, feed, state)
    last = jnp.take_along_axis(tokens, jnp.maximum(num_kept - 1, 0)[:, None], axis=1)[:, 0]
    return state.replace(cache=cache_lib.commit(state.cache, num_kept),
                         last=jnp.where(num_kept > 0, last, state.last),
                         proposed=jnp.zeros((), bool))


@dataclasses.dataclass(frozen=True)
class LocalOptions(base.Lattice, base.Rescoring):
  pass


def _build(options: LocalOptions, model, resources):
  rescorer = resources.need(resources_lib.RESCORER, "local")
  drafter = LocalRescoreDrafter(model.num_heads_bpd, options.k, options.alpha, rescorer.fns)
  return drafter, rescorer.params


registry.register(registry.Method(
    name="local", summary="local neural rescoring of the lattice by a small LM (k, alpha; "
    "--rescorer_workdir)", options=LocalOptions, build=_build,
    resources=(resources_lib.RESCORER,)))
