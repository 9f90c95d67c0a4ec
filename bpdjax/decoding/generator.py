"""Batched generation with any drafter, on one device or sharded over a Mesh.

  built = methods.build("bpd", model.config)
  gen = Generator(model, params, eos_id=tokenizer.eos_id)
  results, timings = gen.generate(prompts, built.drafter, built.params, max_new_tokens=64)

`Generator` checks inputs, groups prompts into right-padded batches, compiles one decode per
(drafter, settings, batch shape) ahead of time and keeps it, and times execution apart from
compilation. `compilations` counts the programs it compiled.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import cache as cache_lib
from bpdjax import partitioning
from bpdjax.decoding import loop
from bpdjax.decoding import model_fns
from bpdjax.decoding import protocol
from bpdjax.decoding import sampling
from bpdjax.decoding.drafters import heads

PROMPT_BUCKET = 32
AR = heads.NoDraft()


@dataclasses.dataclass
class Generation:
  """One prompt's result. tokens: [n] int32 generated ids; calls: serial model calls it took.

  records: per-row numpy views of loop.Records (kept [I], drafts [I, L], topk [S, h, K],
  entropy [S, h]) when recording was asked for, else None.
  """
  tokens: np.ndarray
  calls: int
  records: Optional[dict] = None


@dataclasses.dataclass
class BatchTiming:
  """seconds: execution time of one batch; tokens: generated; rows: prompts in it; stats: the
  drafter's statistics of the batch (numpy; see protocol.Drafter.stats)."""
  seconds: float
  tokens: int
  rows: int
  stats: dict = dataclasses.field(default_factory=dict)


def bucket_width(longest: int, max_len: int, max_new_tokens: int) -> int:
  """Prompt slots of a batch whose longest prompt has `longest` tokens: rounded up to a
  multiple of PROMPT_BUCKET (fewer programs), within the model's max_len."""
  return min(-(-longest // PROMPT_BUCKET) * PROMPT_BUCKET, max_len - max_new_tokens)


def pad_batch(prompts: Sequence[np.ndarray], batch_size: int, width: int):
  """(tokens [batch_size, width] int32 right-padded, lengths [batch_size]; 0 = filler row)."""
  batch = np.zeros((batch_size, width), np.int32)
  lengths = np.zeros((batch_size,), np.int32)
  for i, p in enumerate(prompts):
    batch[i, :len(p)] = p
    lengths[i] = len(p)
  return batch, lengths


class Generator:
  """Generates with a bpdjax Transformer.

  Args:
    model: the flax module (its config gives h and max_len).
    params: parameters (host or device arrays).
    eos_id: end-of-sequence id (kept in the output), or None.
    mesh, rules: optional Mesh and logical axis rules; parameters are then sharded by the rules
      and the batch over the data axes, as in training.
  """

  def __init__(self, model, params, eos_id: Optional[int], mesh=None, rules=None):
    self.model = model
    self.config = model.config
    self.fns = model_fns.TransformerFns(model)
    self.eos_id = eos_id
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in rules) if rules is not None else None
    self.compilations = 0
    self._compiled: dict[Any, Any] = {}
    if mesh is not None:
      tokens = jnp.zeros((1, 1), jnp.int32)
      boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))["params"]
      self._param_sharding = partitioning.params_sharding(boxed, mesh, self.rules)
      self._batch_sharding = partitioning.logical_to_sharding(
          jax.sharding.PartitionSpec("batch"), mesh, self.rules)
      params = jax.device_put(params, self._param_sharding)
    self.params = params

  def check_prompts(self, prompts: Sequence[np.ndarray], max_new_tokens: int) -> None:
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"Prompt {i} is empty: decoding needs at least one prompt token")
      if len(p) + max_new_tokens > self.config.max_len:
        raise ValueError(
            f"Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that exceeds "
            f"the model's max_len={self.config.max_len}")
      if np.any((np.asarray(p) < 0) | (np.asarray(p) >= self.config.vocab_size)):
        raise ValueError(f"Prompt {i} has token ids outside [0, {self.config.vocab_size})")

  def _compile(self, drafter, drafter_params, max_new_tokens, sampling_config, record_topk,
               batch, width):
    cache_len = width + max_new_tokens + loop.block_size(drafter)
    fn = functools.partial(
        loop.decode_with_new_cache, self.fns, drafter=drafter, max_new_tokens=max_new_tokens,
        eos_id=self.eos_id, sampling_config=sampling_config, record_topk=record_topk,
        cache_len=cache_len, cache_init=functools.partial(cache_lib.init_for_model, self.config))
    args = (self.params, jax.ShapeDtypeStruct((batch, width), jnp.int32),
            jax.ShapeDtypeStruct((batch,), jnp.int32), jax.random.PRNGKey(0), drafter_params)
    self.compilations += 1
    if self.mesh is None:
      return jax.jit(fn).lower(*args).compile()
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      rows = self._batch_sharding
      return jax.jit(fn, in_shardings=(self._param_sharding, rows, rows, None, None)).lower(
          *args).compile()

  def clear_compiled(self) -> None:
    """Forgets the compiled decodes (each holds its drafter's constants, e.g. n-gram tables)."""
    self._compiled.clear()

  def compiled(self, drafter, drafter_params, max_new_tokens, sampling_config, record_topk,
               batch, width):
    """The compiled decode for these settings (compiled once, then reused). Drafter params are
    keyed by their shapes: equal drafters with same-shaped params share a program."""
    leaves, structure = jax.tree.flatten(drafter_params)
    shapes = (structure, tuple((np.shape(x), np.dtype(x.dtype)) for x in leaves))
    key = (drafter, shapes, max_new_tokens, sampling_config, record_topk, batch, width)
    if key not in self._compiled:
      self._compiled[key] = self._compile(drafter, drafter_params, max_new_tokens,
                                          sampling_config, record_topk, batch, width)
    return self._compiled[key]

  def generate(self, prompts: Sequence[np.ndarray], drafter: protocol.Drafter = AR,
               drafter_params: Any = None, max_new_tokens: int = 64, batch_size: int = 1,
               sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(),
               rng: Optional[jax.Array] = None, record_topk: int = 0,
               progress: Optional[Callable[[int], None]] = None,
               prompt_width: Optional[int] = None
               ) -> tuple[list[Generation], list[BatchTiming]]:
    """Decodes every prompt (lists of ids) with `drafter` (protocol.Drafter; plain decoding by
    default) and its params. Returns generations in prompt order and the timing of each batch
    (execution only; compilation happens before the clock starts).

    prompt_width: pad every batch to this many prompt slots (one program for all batches, e.g.
    a whole task); None pads each batch to its longest prompt (see `bucket_width`)."""
    self.check_prompts(prompts, max_new_tokens)
    sampling_config.validate(self.config.vocab_size)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    results: list[Generation] = []
    timings: list[BatchTiming] = []
    for start in range(0, len(prompts), batch_size):
      chunk = [np.asarray(p, np.int32) for p in prompts[start:start + batch_size]]
      longest = max(len(p) for p in chunk)
      if prompt_width is not None and prompt_width < longest:
        raise ValueError(f"prompt_width={prompt_width} is shorter than a prompt of {longest} "
                         "tokens")
      width = min(prompt_width or bucket_width(longest, self.config.max_len, max_new_tokens),
                  self.config.max_len - max_new_tokens)
      batch, lengths = pad_batch(chunk, batch_size, width)
      fn = self.compiled(drafter, drafter_params, max_new_tokens, sampling_config, record_topk,
                         batch_size, width)
      rng, sub = jax.random.split(rng)
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(self.params, jnp.asarray(batch), jnp.asarray(lengths), sub,
                                     drafter_params))
      seconds = time.perf_counter() - t0
      out = jax.device_get(out)
      for i in range(len(chunk)):
        records = None
        if out.records is not None:
          r = out.records
          records = {"kept": r.kept[:, i], "drafts": r.drafts[:, i], "topk": r.topk[i],
                     "entropy": r.entropy[i]}
        results.append(Generation(tokens=out.tokens[i, :out.lengths[i]],
                                  calls=int(out.calls[i]), records=records))
      timings.append(BatchTiming(seconds=seconds, tokens=int(np.sum(out.lengths[:len(chunk)])),
                                 rows=len(chunk), stats=dict(out.stats)))
      if progress:
        progress(len(chunk))
    return results, timings
