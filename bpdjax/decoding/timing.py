"""Measured costs through the driver: the cost table of a method's candidate sizes (what auto
divides by) and the per-step time of a drafter's proposal (decode.py's drafting-cost column).

`cost_table` times real loop iterations (loop.step: verify the policy's candidate, accept,
commit, propose) at the batch size and cache length in use, compile excluded, median over
alternating repeats: the policy's own program with every step forced to one candidate
(StepPolicy.force), so each size pays what a step of the real decode pays (its proposal, its
calibration, the lax.switch over sizes). Size 1 is timed as plain decoding (the fixed policy of
a one-node drafter, one call per step): what a step costs in the plain stretches between two
drafts, and the unit every other size is compared with. Tables are cached (decoding/cost.py).

`propose_ms` times a drafter's propose alone on the heads of a real prefill: a positive time
per step, reported beside the step time as its share (never a difference of two noisy medians).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import cost as cost_lib
from bpdjax.decoding import loop
from bpdjax.decoding import protocol
from bpdjax.decoding.drafters import heads
from bpdjax.decoding.policies import fixed


def flat_table(sizes: Sequence[int]) -> cost_lib.CostTable:
  """Every size costing one step: the placeholder a policy is built with to time its steps."""
  return cost_lib.given(tuple(sizes), (1.0,) * len(sizes))


def cost_table(generator, drafter: protocol.Drafter, drafter_params: Any,
               policy: protocol.StepPolicy, batch: int, prompt_width: int, max_new_tokens: int,
               repeats: int = 5, min_seconds: float = 0.02, cache_path: str = "",
               log: Optional[Callable[[str], None]] = None) -> cost_lib.CostTable:
  """Seconds per loop iteration for each of the policy's sizes over `drafter`, at this batch
  size and cache length (prompt_width + max_new_tokens + the drafter's tree), compile excluded.

  Each repeat runs every size in turn (alternating, so machine noise hits all sizes alike), as
  many steps as last at least `min_seconds` (counted once, on plain decoding); the median over
  repeats is kept. Random prompts are fine for timing. Cached in memory and, with `cache_path`,
  in that JSON file (cost.cached / cost.store).
  """
  sizes = tuple(policy.sizes(drafter))
  if not sizes or sizes[0] != 1 or list(sizes) != sorted(set(sizes)):
    raise ValueError(f"Candidate sizes must increase from 1 (plain decoding), got {sizes}")
  config = generator.config
  cache_len = prompt_width + max_new_tokens + loop.block_size(drafter)
  key = cost_lib.table_key(config, drafter.topology, sizes, batch, cache_len) + (
      ("drafter", type(drafter).__name__), ("policy", type(policy).__name__))
  table = cost_lib.cached(key, sizes, cache_path)
  if table is not None:
    return table
  t0 = time.perf_counter()
  rng = np.random.default_rng(0)
  prompts = jnp.asarray(rng.integers(0, config.vocab_size, (batch, prompt_width)), jnp.int32)
  lengths = jnp.full((batch,), prompt_width, jnp.int32)
  programs = {}
  for name, settings, params in (
      ("plain", loop.Settings(heads.NoDraft(), max_new_tokens, plain_stretches=False,
                              policy=fixed.FIXED), None),
      ("drafting", loop.Settings(drafter, max_new_tokens, policy=policy), drafter_params)):
    start, step, steps = generator.stepper(settings, cache_len)
    with generator.sharded():
      state = jax.block_until_ready(start(generator.params, prompts, lengths,
                                          jax.random.PRNGKey(0), params))
      jax.block_until_ready(steps(generator.params, state, params, 1))          # Compile.
    programs[name] = (steps, state, params)

  # Under jit, the forced leaf is placed (committed or not) as the state it joins; made outside
  # jit it could differ and compile the drafting program again (4 s of README's 28 s decode).
  force = jax.jit(policy.force, static_argnums=1)

  def run(name, n, index=None):
    steps, state, params = programs[name]
    if index is not None:
      state = state.replace(policy_state=force(state.policy_state, index))
    t = time.perf_counter()
    with generator.sharded():
      jax.block_until_ready(steps(generator.params, state, params, n))
    return time.perf_counter() - t

  once = run("plain", 8) / 8
  iterations = int(np.clip(min_seconds / max(once, 1e-9), 8, 4096))
  times = [[] for _ in sizes]
  for _ in range(repeats):
    for i, size in enumerate(sizes):
      seconds = run("plain", iterations) if size == 1 else run("drafting", iterations, i)
      times[i].append(seconds / iterations)
  table = cost_lib.CostTable(sizes, tuple(statistics.median(t) for t in times), "measured",
                             key)
  if log:
    log(f"cost table measured in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{s}: {r:.2f}x" for s, r in zip(sizes, table.relative)))
  cost_lib.store(table, cache_path)
  return table


def propose_ms(generator, drafter: protocol.Drafter, drafter_params: Any,
               prompts: np.ndarray, lengths: np.ndarray, repetitions: int = 30) -> Optional[float]:
  """Median milliseconds of one drafter.propose on the heads 2..last_head of a real prefill
  (prompts [B, W] right-padded, lengths [B]; the drafter's own started state), heads computed
  beforehand, so only the drafting is timed (heads that read the drafted tokens are called
  inside propose, as in the loop: those calls are the drafting); None for a drafter that reads
  no heads."""
  if drafter.last_head <= 1:
    return None
  logits, next_token, hidden = generator.prefill_heads(
      jnp.asarray(prompts), jnp.asarray(lengths), drafter.last_head)
  cache_len = prompts.shape[1] + 1 + loop.block_size(drafter)
  active = jnp.ones(next_token.shape, bool)
  with generator.sharded():
    state = jax.jit(drafter.start, static_argnums=3)(drafter_params, jnp.asarray(prompts),
                                                     jnp.asarray(lengths), cache_len)
    fn = jax.jit(lambda p, params, s, lg, h, nt: drafter.propose(
        p, s, protocol.LastHeads(generator.fns, params, h, lg, active), nt))
    args = (drafter_params, generator.params, state, logits, hidden, next_token)
    jax.block_until_ready(fn(*args))                                            # Compile.
    times = []
    for _ in range(repetitions):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append((time.perf_counter() - t0) * 1e3)
  return float(np.median(times))
