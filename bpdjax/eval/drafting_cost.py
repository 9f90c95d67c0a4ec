"""What a method's drafting costs per decode step beyond the vanilla top-1 draft (measured)."""
from __future__ import annotations

import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import cache as cache_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import loop
from bpdjax.decoding import protocol
from bpdjax.decoding.drafters import heads

NONE = {"propose_ms": None, "vanilla_propose_ms": None, "rescoring_ms_per_step": None}


def rescoring_cost(generator: generator_lib.Generator, drafter: Any, drafter_params: Any,
                   prompts: Sequence[np.ndarray], max_new_tokens: int, batch_size: int,
                   repetitions: int = 30) -> dict:
  """The drafter's propose time beyond the vanilla draft's, per loop step.

  Measured, not modelled: the first batch of `prompts` is padded as Generator.generate pads it
  and prefilled by the model exactly as the decode loop does, giving heads 2..L at each row's
  last prompt token, its greedy next token and the drafter's started state (e.g. n-gram
  history, a rescoring LM's cache). drafter.propose is jitted alone on these inputs and timed
  (block_until_ready) `repetitions` times after a warm-up, interleaved with the same for the
  vanilla draft heads.TopOneDrafter(L) (argmax per head); each median is taken.
  rescoring_ms_per_step = median(method) - median(vanilla): the refinement's own cost per
  propose call, i.e. per loop step (it can come out slightly negative from timing noise, and is
  reported as measured). The vanilla draft itself gets 0.0 without measuring; a drafter that
  reads no heads (ar) gets None. Pair it with metrics.speed_metrics's ms_per_step (same batch
  size) through metrics.add_rescoring_share.

  Returns:
    {"propose_ms", "vanilla_propose_ms", "rescoring_ms_per_step"} (values may be None).
  """
  last = drafter.last_head
  if last <= 1:
    return dict(NONE)
  vanilla = heads.TopOneDrafter(last)
  if drafter == vanilla:
    return dict(NONE, rescoring_ms_per_step=0.0)
  cfg = generator.config
  chunk = [np.asarray(p, np.int32) for p in prompts[:batch_size]]
  width = generator_lib.bucket_width(max(len(p) for p in chunk), cfg.max_len, max_new_tokens)
  batch, lengths = generator_lib.pad_batch(chunk, batch_size, width)
  fns = generator.fns
  cache_len = width + max_new_tokens + loop.block_size(drafter)

  @jax.jit
  def prefill(params, prompts, prompt_lengths):
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), prompts.shape)
    cache = cache_lib.init_for_model(cfg, prompts.shape[0], cache_len)
    hidden, _ = fns.forward(params, prompts, positions, cache)
    final = jnp.take_along_axis(hidden, jnp.maximum(prompt_lengths - 1, 0)[:, None, None], 1)
    logits = fns.heads(params, final, 0, last)[:, 0]                             # [B, L, V]
    return logits, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)

  def measure():
    logits, next_token = prefill(generator.params, jnp.asarray(batch), jnp.asarray(lengths))
    state = jax.jit(drafter.start, static_argnums=3)(drafter_params, jnp.asarray(batch),
                                                     jnp.asarray(lengths), cache_len)
    def jit_propose(d):   # Heads computed by prefill: propose times the drafting alone.
      return jax.jit(lambda p, s, lg, nt: d.propose(p, s, protocol.LastHeads.from_logits(lg), nt))

    runs = {"method": (jit_propose(drafter), drafter_params, state),
            "vanilla": (jit_propose(vanilla), None, ())}
    times = {name: [] for name in runs}
    for fn, params, st in runs.values():
      jax.block_until_ready(fn(params, st, logits, next_token))                  # Compile.
    for _ in range(repetitions):
      for name, (fn, params, st) in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, st, logits, next_token))
        times[name].append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times["method"])), float(np.median(times["vanilla"]))

  if generator.mesh is None:
    method_ms, vanilla_ms = measure()
  else:
    with jax.set_mesh(generator.mesh), nn.logical_axis_rules(generator.rules):
      method_ms, vanilla_ms = measure()
  return {"propose_ms": method_ms, "vanilla_propose_ms": vanilla_ms,
          "rescoring_ms_per_step": method_ms - vanilla_ms}
