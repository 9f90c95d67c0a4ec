"""The one driver: batched generation with any method, on one device or sharded over a Mesh.

  gen = Generator(model, params, eos_id=tokenizer.eos_id)
  built = gen.build("auto", batch_size=1, prompt_width=64, max_new_tokens=64)  # costs measured
  results, timings = gen.generate(prompts, built, max_new_tokens=64)

`Generator` alone compiles and runs the decode loop (decoding/loop.py). It checks inputs, groups
prompts into right-padded batches, compiles one decode per (drafter, policy, settings, batch
shape) ahead of time and keeps it, and times execution apart from compilation (`compilations`
counts the programs it compiled). Its hooks serve everything else that runs the loop: `stepper`
(jitted prefill and one iteration: streaming, cost tables), `prefill_heads` (the heads at the
last prompt token: drafting-cost timing), `build` (a method with its cost table measured at the
batch and cache length in use) and recording (decoding/recording.py: each head's top-k after
decoding, from the output itself).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import cache as cache_lib
from bpdjax import partitioning
from bpdjax.decoding import loop
from bpdjax.decoding import methods
from bpdjax.decoding import model_fns
from bpdjax.decoding import recording
from bpdjax.decoding import registry
from bpdjax.decoding import sampling
from bpdjax.decoding import timing
from bpdjax.decoding.policies import fixed

PROMPT_BUCKET = 32
AR = methods.build(methods.reference(), None)        # Plain decoding: no model shape needed.


@dataclasses.dataclass
class Generation:
  """One prompt's result. tokens: [n] int32 generated ids; calls: serial model calls it took.

  records: per-row numpy views when recording was asked for, else None: kept [I], drafts
  [I, L] (loop.Records), topk [n, h, K] and entropy [n, h] (recording.py).
  """
  tokens: np.ndarray
  calls: int
  records: Optional[dict] = None


@dataclasses.dataclass
class BatchTiming:
  """seconds: execution time of one batch; tokens: generated; rows: prompts in it; stats: the
  drafter's and policy's statistics of the batch (numpy; see protocol)."""
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


def check_prompts(prompts: Sequence[np.ndarray], max_new_tokens: int, config) -> None:
  """Raises ValueError naming the first prompt that the model (config: its TransformerConfig)
  cannot decode max_new_tokens after: empty, too long for max_len, or ids out of range."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"Prompt {i} is empty: decoding needs at least one prompt token")
    if len(p) + max_new_tokens > config.max_len:
      raise ValueError(
          f"Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that exceeds "
          f"the model's max_len={config.max_len}")
    if np.any((np.asarray(p) < 0) | (np.asarray(p) >= config.vocab_size)):
      raise ValueError(f"Prompt {i} has token ids outside [0, {config.vocab_size})")


def _as_built(method: Union[registry.Built, Any], drafter_params: Any,
              policy: Any) -> registry.Built:
  """A registry.Built, or a bare drafter with its params and policy (tests, benchmarks)."""
  if isinstance(method, registry.Built):
    return method
  return registry.Built(type(method).__name__, None, method, drafter_params,
                        fixed.FIXED if policy is None else policy)


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
    self.cost_tables: list = []       # Every cost table `build` measured or read (reports).
    self._compiled: dict[Any, Any] = {}
    if mesh is not None:
      tokens = jnp.zeros((1, 1), jnp.int32)
      boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))["params"]
      self._param_sharding = partitioning.params_sharding(boxed, mesh, self.rules)
      self._batch_sharding = partitioning.logical_to_sharding(
          jax.sharding.PartitionSpec("batch"), mesh, self.rules)
      params = jax.device_put(params, self._param_sharding)
    self.params = params

  # ---------------------------------------------------------------------------- checks
  def check_prompts(self, prompts: Sequence[np.ndarray], max_new_tokens: int) -> None:
    check_prompts(prompts, max_new_tokens, self.config)

  def width(self, prompts: Sequence[np.ndarray], max_new_tokens: int) -> int:
    """The prompt slots `generate` pads these prompts to (one program for all of them)."""
    return bucket_width(max(len(p) for p in prompts), self.config.max_len, max_new_tokens)

  # --------------------------------------------------------------------------- programs
  def sharded(self) -> contextlib.AbstractContextManager:
    """A context that traces under the mesh and its rules (a no-op without a mesh)."""
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _compile(self, settings: loop.Settings, drafter_params, batch, width):
    cache_len = width + settings.max_new_tokens + loop.block_size(settings.drafter)
    init = functools.partial(cache_lib.init_for_model, self.config)

    def decode(params, prompts, lengths, rng, dparams):
      cache = init(prompts.shape[0], cache_len)
      return loop.run(self.fns, params, prompts, lengths, cache, dparams, settings, rng)

    args = (self.params, jax.ShapeDtypeStruct((batch, width), jnp.int32),
            jax.ShapeDtypeStruct((batch,), jnp.int32), jax.random.PRNGKey(0), drafter_params)
    self.compilations += 1
    if self.mesh is None:
      return jax.jit(decode).lower(*args).compile()
    with self.sharded():
      rows = self._batch_sharding
      return jax.jit(decode, in_shardings=(self._param_sharding, rows, rows, None, None)).lower(
          *args).compile()

  def clear_compiled(self) -> None:
    """Forgets the compiled decodes (each holds its drafter's constants, e.g. n-gram tables)."""
    self._compiled.clear()

  def compiled(self, settings: loop.Settings, drafter_params, batch, width):
    """The compiled decode for these settings (compiled once, then reused). Drafter params are
    keyed by their shapes: equal drafters with same-shaped params share a program."""
    leaves, structure = jax.tree.flatten(drafter_params)
    shapes = (structure, tuple((np.shape(x), np.dtype(x.dtype)) for x in leaves))
    key = (settings, shapes, batch, width)
    if key not in self._compiled:
      self._compiled[key] = self._compile(settings, drafter_params, batch, width)
    return self._compiled[key]

  def program(self, key, make: Callable[[], Any]):
    """The program kept under `key`, made by make() the first time (jitted helpers of the
    hooks: each compiles once per shape and is reused)."""
    if key not in self._compiled:
      self._compiled[key] = make()
    return self._compiled[key]

  def stepper(self, settings: loop.Settings, cache_len: int):
    """Jitted (start(params, prompts, lengths, rng, drafter_params) -> loop state,
    step(params, state, drafter_params) -> loop state, steps(params, state, drafter_params, n)
    -> the state after n steps): the loop's prefill and iterations, run from the host
    (streaming, one call per block; cost tables)."""
    key = ("stepper", settings, cache_len)
    if key not in self._compiled:
      init = functools.partial(cache_lib.init_for_model, self.config)

      def start(params, prompts, lengths, rng, dparams):
        cache = init(prompts.shape[0], cache_len)
        return loop.start(self.fns, params, prompts, lengths, cache, dparams, settings, rng)

      def step(params, state, dparams):
        return loop.step(self.fns, params, state, dparams, settings)

      def steps(params, state, dparams, n):
        return jax.lax.fori_loop(0, n, lambda _, s: step(params, s, dparams), state)

      self._compiled[key] = (jax.jit(start), jax.jit(step), jax.jit(steps))
    return self._compiled[key]

  def prefill_heads(self, prompts: jax.Array, lengths: jax.Array, last_head: int):
    """prompts [B, P], lengths [B] -> (logits [B, last_head, V] of heads 1..last_head at each
    row's last prompt token, the greedy next token [B], the final hidden state there
    [B, 1, D]): what the loop's first proposal sees."""
    cfg, fns, width = self.config, self.fns, prompts.shape[1]

    def make():
      def prefill(params, prompts, lengths):
        positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), prompts.shape)
        cache = cache_lib.init_for_model(cfg, prompts.shape[0], width + 1)
        hidden, _ = fns.forward(params, prompts, positions, cache)
        final = jnp.take_along_axis(hidden, jnp.maximum(lengths - 1, 0)[:, None, None], 1)
        logits = fns.heads(params, final, 0, last_head)[:, 0]                    # [B, L, V]
        return logits, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32), final

      return jax.jit(prefill)

    program = self.program(("prefill", prompts.shape, last_head), make)
    with self.sharded():
      return program(self.params, prompts, lengths)

  # ------------------------------------------------------------------------------ build
  def build(self, name: str, resources: Any = None, options: Optional[Any] = None,
            method_options: Optional[dict] = None, *, batch_size: int, prompt_width: int,
            max_new_tokens: int, cost_cache: str = "", log: Optional[Callable] = None,
            **values) -> registry.Built:
    """The method `name` ready to decode: its drafter and its policy, with the cost table a
    cost-aware policy needs measured here for this batch size and cache length (timing.py),
    or read from `cost_cache`."""
    options = registry.make_options(name, **values) if options is None else options
    drafter, params = registry.build_drafter(name, self.config, resources, options,
                                             method_options)
    costs = None
    if registry.get(name).needs_costs(options):
      probe = registry.build_policy(name, options, drafter,
                                    timing.flat_table(drafter.candidates))
      costs = timing.cost_table(self, drafter, params, probe, batch_size, prompt_width,
                                max_new_tokens, cache_path=cost_cache, log=log)
      self.cost_tables.append(costs)
    return registry.Built(name, options, drafter, params,
                          registry.build_policy(name, options, drafter, costs))

  # --------------------------------------------------------------------------- generate
  def generate(self, prompts: Sequence[np.ndarray],
               method: Union[registry.Built, Any] = AR, drafter_params: Any = None,
               max_new_tokens: int = 64, batch_size: int = 1,
               sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(),
               rng: Optional[jax.Array] = None, record: int = 0,
               progress: Optional[Callable[[int], None]] = None,
               prompt_width: Optional[int] = None, policy: Any = None
               ) -> tuple[list[Generation], list[BatchTiming]]:
    """Decodes every prompt (lists of ids) with `method` (a registry.Built, or a bare
    protocol.Drafter with `drafter_params` and `policy`; plain decoding by default). Returns
    generations in prompt order and the timing of each batch (execution only; compilation
    happens before the clock starts).

    record: K > 0 records, for the analyses, each iteration's kept length and draft (in the
    timed program: a few integer writes per call) and, after the timed run, each head's top-K
    and entropy at every output slot (recording.py; no extra decode).
    prompt_width: pad every batch to this many prompt slots (one program for all batches, e.g.
    a whole task); None pads each batch to its longest prompt (see `bucket_width`)."""
    built = _as_built(method, drafter_params, policy)
    self.check_prompts(prompts, max_new_tokens)
    sampling_config.validate(self.config.vocab_size)
    if record < 0 or record > self.config.vocab_size:
      raise ValueError(f"record (top-K) must be in [0, {self.config.vocab_size}], got {record}")
    settings = loop.Settings(built.drafter, max_new_tokens, self.eos_id, sampling_config,
                             record_steps=record > 0, policy=built.policy)
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
      fn = self.compiled(settings, built.params, batch_size, width)
      rng, sub = jax.random.split(rng)
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(self.params, jnp.asarray(batch), jnp.asarray(lengths), sub,
                                     built.params))
      seconds = time.perf_counter() - t0
      out = jax.device_get(out)
      heads = None
      if record:
        heads = recording.head_records(self, batch, lengths, out.tokens, out.lengths, record)
      for i in range(len(chunk)):
        records = None
        if record:
          records = {"kept": out.records.kept[:, i], "drafts": out.records.drafts[:, i],
                     "topk": heads[0][i], "entropy": heads[1][i]}
        results.append(Generation(tokens=out.tokens[i, :out.lengths[i]],
                                  calls=int(out.calls[i]), records=records))
      timings.append(BatchTiming(seconds=seconds, tokens=int(np.sum(out.lengths[:len(chunk)])),
                                 rows=len(chunk), stats=dict(out.stats)))
      if progress:
        progress(len(chunk))
    return results, timings

