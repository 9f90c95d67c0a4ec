"""Batched generation with any decoding method, on one device or sharded over a Mesh.

`Generator` checks inputs, groups prompts into right-padded batches, compiles one decode per
(method, batch shape) ahead of time, and times execution apart from compilation.
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
from bpdjax.decoding import drafters
from bpdjax.decoding import loop
from bpdjax.decoding import medusa
from bpdjax.decoding import rescoring
from bpdjax.decoding import sampling



@dataclasses.dataclass(frozen=True)
class MethodOptions:
  """Settings of the drafting methods: k candidates per head, p drafts verified per call."""
  k: int = 16
  p: int = 16
  alpha: float = 0.5        # Rescorer weight of the local / n-gram methods.
  tree_size: int = 64       # Nodes of the Medusa sparse tree (root included), as Medusa's trees.
  ngram_backend: str = "dp"  # n-gram methods: "dp" (exact, on device) or "wfst" (pynini, host).


# Method name -> drafter factory(model_config, MethodOptions).
METHODS: dict[str, Callable[..., Any]] = {
    "ar": lambda cfg, opts: drafters.NoDraft(),
    "bpd": lambda cfg, opts: drafters.TopOneDrafter(cfg.num_heads_bpd),
    "pbest_0gram": lambda cfg, opts: drafters.PBestDrafter(cfg.num_heads_bpd, opts.k, opts.p),
    "medusa": lambda cfg, opts: medusa.MedusaTreeDrafter(cfg.num_heads_bpd, opts.k,
                                                         opts.tree_size),
    # Built by Generator.drafter: they need the rescoring LM or the n-gram tables.
    "local": None,
    "medusa_local": None,
    "ngram": None,
    "pbest_ngram": None,
}
_PROMPT_BUCKET = 32


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
  seconds: float
  tokens: int
  rows: int


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"Unknown decoding method {method!r}; known: {sorted(METHODS)}")


class Generator:
  """Generates with a bpdjax Transformer.

  Args:
    model: the flax module (its config gives h and max_len).
    params: parameters (host or device arrays).
    eos_id: end-of-sequence id (kept in the output), or None.
    options: k, p, alpha and tree_size of the lattice- and tree-based methods.
    rescorer: (model, params) of the small causal LM for methods "local" and "medusa_local".
    ngram: the n-gram LM of methods "ngram" and "pbest_ngram" (rescoring.load_ngram_lm), or
      None: ngram.dp.NgramTables for options.ngram_backend "dp", an ngram.fst.WfstRescorer
      (with alpha = options.alpha) for "wfst".
    mesh, rules: optional Mesh and logical axis rules; parameters are then sharded by the rules
      and the batch over the data axes, as in training.
  """

  def __init__(self, model, params, eos_id: Optional[int], mesh=None, rules=None,
               options: MethodOptions = MethodOptions(), rescorer=None, ngram=None):
    self.model = model
    self.options = options
    self.rescorer = rescorer
    self.ngram = ngram
    if rescorer is not None and rescorer[0].config.vocab_size != model.config.vocab_size:
      raise ValueError(f"Rescorer vocabulary size {rescorer[0].config.vocab_size} differs from "
                       f"the model's {model.config.vocab_size}")
    self.config = model.config
    self.eos_id = eos_id
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in rules) if rules is not None else None
    self._compiled: dict[Any, Any] = {}
    if mesh is not None:
      tokens = jnp.zeros((1, 1), jnp.int32)
      boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))["params"]
      self._param_sharding = partitioning.params_sharding(boxed, mesh, self.rules)
      self._batch_sharding = partitioning.logical_to_sharding(
          jax.sharding.PartitionSpec("batch"), mesh, self.rules)
      params = jax.device_put(params, self._param_sharding)
    self.params = params

  def _check(self, prompts: Sequence[np.ndarray], max_new_tokens: int, method: str) -> None:
    check_method(method)
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

  def drafter(self, method: str, cache_len: int = 0):
    """The drafter of `method`; cache_len sizes a rescorer's own cache."""
    check_method(method)
    if self.options.k > self.config.vocab_size:
      raise ValueError(f"k={self.options.k} exceeds the vocabulary size {self.config.vocab_size}")
    if self.options.tree_size < 1:
      raise ValueError(f"tree_size must be >= 1, got {self.options.tree_size}")
    if method in ("ngram", "pbest_ngram"):
      if self.ngram is None:
        raise ValueError(f"Method {method!r} needs an n-gram LM (decode.py --ngram_arpa)")
      if rescoring.check_ngram_backend(self.options.ngram_backend) == "wfst":
        return self._wfst_drafter(method)
      if not hasattr(self.ngram, "uni_logp"):
        raise ValueError(f"ngram_backend 'dp' needs ngram.dp.NgramTables, got "
                         f"{type(self.ngram).__name__}")
      return rescoring.NgramPBestDrafter(
          self.config.num_heads_bpd, k=self.options.k,
          p=1 if method == "ngram" else self.options.p, alpha=self.options.alpha,
          order=self.ngram.order)
    if method not in ("local", "medusa_local"):
      return METHODS[method](self.config, self.options)
    if self.rescorer is None:
      raise ValueError(f"Method {method!r} needs a rescoring LM (decode.py --rescorer_workdir)")
    rescorer_model = self.rescorer[0]
    if method == "medusa_local":
      return medusa.MedusaLocalDrafter(
          self.config.num_heads_bpd, self.options.k, self.options.tree_size,
          alpha=self.options.alpha, rescorer=loop.model_fns(rescorer_model),
          cache_init=functools.partial(cache_lib.init_for_model, rescorer_model.config),
          cache_len=cache_len)
    return rescoring.LocalRescoreDrafter(
        draft_len=self.config.num_heads_bpd, k=self.options.k, alpha=self.options.alpha,
        rescorer=loop.model_fns(rescorer_model),
        cache_init=functools.partial(cache_lib.init_for_model, rescorer_model.config),
        cache_len=cache_len)

  def _wfst_drafter(self, method: str):
    rescorer = self.ngram
    if not hasattr(rescorer, "best_paths"):
      raise ValueError(f"ngram_backend 'wfst' needs an ngram.fst.WfstRescorer, got "
                       f"{type(rescorer).__name__}")
    if rescorer.vocab_size != self.config.vocab_size:
      raise ValueError(f"The n-gram LM was read for vocab_size={rescorer.vocab_size}; the model "
                       f"has {self.config.vocab_size}")
    if abs(rescorer.alpha - self.options.alpha) > 1e-12:
      raise ValueError(f"The WFST rescorer was built with alpha={rescorer.alpha}, the options "
                       f"ask for alpha={self.options.alpha}")
    return rescoring.WfstPBestDrafter(
        self.config.num_heads_bpd, k=self.options.k,
        p=1 if method == "ngram" else self.options.p, rescorer=rescorer)

  def _decode_fn(self, method, max_new_tokens, sampling_config, record_topk, batch, width):
    cache_len = width + max_new_tokens + loop.block_size(self.drafter(method))
    drafter = self.drafter(method, cache_len)
    fn = functools.partial(
        loop.decode_with_new_cache, loop.model_fns(self.model), drafter=drafter,
        max_new_tokens=max_new_tokens, eos_id=self.eos_id, sampling_config=sampling_config,
        record_topk=record_topk, cache_len=cache_len,
        cache_init=functools.partial(cache_lib.init_for_model, self.config))
    args = (self.params, jax.ShapeDtypeStruct((batch, width), jnp.int32),
            jax.ShapeDtypeStruct((batch,), jnp.int32), jax.random.PRNGKey(0),
            self._drafter_params(method))
    if self.mesh is None:
      return jax.jit(fn).lower(*args).compile()
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      rows = self._batch_sharding
      return jax.jit(fn, in_shardings=(self._param_sharding, rows, rows, None, None)).lower(
          *args).compile()

  def _drafter_params(self, method):
    if method in ("local", "medusa_local"):
      return self.rescorer[1]
    if method in ("ngram", "pbest_ngram") and self.options.ngram_backend == "dp":
      return self.ngram
    return None  # The WFST backend's LM lives on the host, inside its drafter.

  def compiled(self, method, max_new_tokens, sampling_config, record_topk, batch, width):
    key = (method, max_new_tokens, sampling_config, record_topk, batch, width)
    if key not in self._compiled:
      self._compiled[key] = self._decode_fn(*key)
    return self._compiled[key]

  def generate(self, prompts: Sequence[np.ndarray], method: str = "bpd", max_new_tokens: int = 64,
               batch_size: int = 1,
               sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(),
               rng: Optional[jax.Array] = None, record_topk: int = 0,
               progress: Optional[Callable[[int], None]] = None,
               prompt_width: Optional[int] = None
               ) -> tuple[list[Generation], list[BatchTiming]]:
    """Decodes every prompt (lists of ids). Returns generations in prompt order and the timing
    of each batch (execution only; compilation happens before the clock starts).

    prompt_width: pad every batch to this many prompt slots (one compilation for all prompts,
    e.g. across tasks); None pads each batch to its longest prompt, rounded up to 32."""
    self._check(prompts, max_new_tokens, method)
    self.drafter(method)  # Bad method options fail here, before compiling.
    sampling_config.validate(self.config.vocab_size)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    results: list[Generation] = []
    timings: list[BatchTiming] = []
    for start in range(0, len(prompts), batch_size):
      chunk = [np.asarray(p, np.int32) for p in prompts[start:start + batch_size]]
      rows = len(chunk)
      longest = max(len(p) for p in chunk)
      if prompt_width is not None:
        if prompt_width < longest:
          raise ValueError(f"prompt_width={prompt_width} is shorter than a prompt of {longest} "
                           "tokens")
        width = prompt_width
      else:
        width = -(-longest // _PROMPT_BUCKET) * _PROMPT_BUCKET
      width = min(width, self.config.max_len - max_new_tokens)
      batch = np.zeros((batch_size, width), np.int32)
      lengths = np.zeros((batch_size,), np.int32)       # 0 marks filler rows: they decode nothing.
      for i, p in enumerate(chunk):
        batch[i, :len(p)] = p
        lengths[i] = len(p)
      fn = self.compiled(method, max_new_tokens, sampling_config, record_topk, batch_size, width)
      rng, sub = jax.random.split(rng)
      t0 = time.perf_counter()
      out = fn(self.params, jnp.asarray(batch), jnp.asarray(lengths), sub,
               self._drafter_params(method))
      out = jax.block_until_ready(out)
      seconds = time.perf_counter() - t0
      out = jax.device_get(out)
      for i in range(rows):
        records = None
        if out.records is not None:
          r = out.records
          records = {"kept": r.kept[:, i], "drafts": r.drafts[:, i], "topk": r.topk[i],
                     "entropy": r.entropy[i]}
        results.append(Generation(tokens=out.tokens[i, :out.lengths[i]],
                                  calls=int(out.calls[i]), records=records))
      timings.append(BatchTiming(seconds=seconds, tokens=int(np.sum(out.lengths[:rows])),
                                 rows=rows))
      if progress:
        progress(rows)
    return results, timings
