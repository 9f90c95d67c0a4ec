"""What one decode-loop iteration costs, for each verify size a drafter can choose, on the
machine at hand: the denominator of cost-aware drafting (drafters/auto.py).

`measure` times real loop iterations (loop.step: verify the first T nodes of a tree, accept,
commit, compute the heads a draft of that depth reads, propose) at the batch size and cache
length in use, compile excluded, median over alternating repeats. One program serves every
size: a proxy drafter verifies the size its state forces and drafts every node with its head's
argmax (the drafting work of that depth, no more), through the lax.switch over sizes that a
drafter with several candidates pays. Size 1 is timed as plain decoding (one candidate, no
switch, no head beyond head 1): what a step costs in the plain stretches between two drafts
(loop.py), and the unit every other size is compared with. The result is
cached per (model shape, batch, cache length, backend, device kind, dtype, sizes, tree) in
memory, and in a JSON file when given one (e.g. the workdir's cost_tables.json): an entry whose
key differs in anything (another model shape, batch, backend...) is never reused; it is
measured again and the file updated.

`analytic` is the fallback when measuring is not wanted (e.g. a model too large to time at
start-up): per iteration, max(FLOPs / peak FLOP/s, bytes / peak bytes/s) + a fixed overhead,
with FLOPs of the layers over the T fed tokens, head 1 at every node and heads 2..depth at the
last kept one, and bytes of every weight read once plus the KV cache read by attention.
`measure_peaks` gives the machine's peaks from one large matmul and one large copy; both are
rough (a roofline model), which is why measured tables are the default.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import threading
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import cache as cache_lib
from bpdjax import fileio
from bpdjax import model as model_lib
from bpdjax.decoding import loop
from bpdjax.decoding import model_fns
from bpdjax.decoding import tree as tree_lib


TIMING = 2            # How `measure` times; tables cached by an older way are measured anew.


@dataclasses.dataclass(frozen=True)
class CostTable:
  """seconds[i]: wall time of one loop iteration verifying sizes[i] nodes (sizes[0] = 1 is
  plain decoding); source: "measured", "analytic" or "given"; key: what it was measured for."""
  sizes: tuple[int, ...]
  seconds: tuple[float, ...]
  source: str
  key: tuple = ()

  @property
  def relative(self) -> tuple[float, ...]:
    """Each size's cost in units of the first (one plain decoding step when sizes[0] == 1)."""
    return tuple(s / self.seconds[0] for s in self.seconds)

  def as_dict(self) -> dict:
    return {"sizes": list(self.sizes), "seconds": list(self.seconds),
            "relative": [round(r, 4) for r in self.relative], "source": self.source,
            "key": dict(self.key)}


def given(sizes: Sequence[int], relative: Sequence[float]) -> CostTable:
  """A table from relative costs (tests and what-if runs: e.g. all 1.0 = an accelerator where
  every verify size costs one step)."""
  if len(sizes) != len(relative):
    raise ValueError(f"{len(relative)} costs given for {len(sizes)} candidate sizes {sizes}")
  if any(not np.isfinite(c) or c <= 0 for c in relative):
    raise ValueError(f"Costs must be positive and finite, got {list(relative)}")
  return CostTable(tuple(sizes), tuple(float(c) for c in relative), "given")


@dataclasses.dataclass(frozen=True)
class _ArgmaxDrafter:
  """Proxy for timing: verifies the forced candidate size (its state), then drafts every node
  of that size with its head's argmax (the drafting work of that depth, no more)."""
  topology: tree_lib.Tree
  sizes: tuple[int, ...]

  @property
  def last_head(self) -> int:
    return self.topology.path_len

  @property
  def candidates(self) -> tuple[int, ...]:
    return self.sizes

  def candidate(self, state):
    return state

  def stats(self, state):
    return {}

  def start(self, params, prompts, prompt_lengths, cache_len):
    return jnp.zeros((), jnp.int32)

  def propose(self, params, state, heads, next_token):
    depth = np.asarray(self.topology.depth)

    def draft(size):
      last = self.topology.prefix(size).path_len
      if last == 1:
        return jnp.zeros(next_token.shape + (self.topology.size,), jnp.int32)
      best = jnp.argmax(heads.range(1, last), axis=-1).astype(jnp.int32)        # [B, d]
      return best[:, np.clip(depth - 1, 0, last - 2)]

    nodes = jax.lax.switch(state, [functools.partial(draft, s) for s in self.sizes])
    return nodes.at[:, 0].set(next_token.astype(jnp.int32)), state

  def commit(self, params, state, tokens, num_kept):
    return state

  def force(self, state, index: int):
    del state
    return jnp.asarray(index, jnp.int32)


def table_key(config: model_lib.TransformerConfig, topology: tree_lib.Tree,
              sizes: Sequence[int], batch: int, cache_len: int) -> tuple:
  """What a measured table depends on; a cached table is reused only for an equal key."""
  device = jax.devices()[0]
  return (("model", json.dumps(dataclasses.asdict(config), sort_keys=True)),
          ("batch", batch), ("cache_len", cache_len), ("backend", device.platform),
          ("device_kind", device.device_kind), ("dtype", config.dtype),
          ("sizes", tuple(sizes)), ("tree", tuple(topology.parents)), ("timing", TIMING))


_MEMORY: dict[tuple, CostTable] = {}
_LOCK = threading.Lock()


def _read_file(path: str) -> list:
  if not path or not fileio.exists(path):
    return []
  return json.loads(fileio.read_text(path))


def measure(model: model_lib.Transformer, params: Any, topology: tree_lib.Tree,
            sizes: Sequence[int], batch: int, prompt_width: int, max_new_tokens: int,
            repeats: int = 5, min_seconds: float = 0.02, cache_path: str = "",
            log=None, drafter: Optional[Any] = None) -> CostTable:
  """Seconds per loop iteration for each verify size (prefixes of `topology`), at this batch
  size and cache length (prompt_width + max_new_tokens + topology.size), compile excluded.

  drafter: time sizes > 1 with this drafter's own propose and commit rather than the argmax
  proxy's (what a cost-aware drafter pays per drafting step: its head-by-head look, its
  calibration); it must have `force(state, i) -> state`, making every step verify candidate i.

  Each repeat runs every size in turn (alternating, so machine noise hits all sizes alike), as
  many steps as last at least `min_seconds` (counted once, on plain decoding); the median over
  repeats is kept. Random parameters are fine for timing.
  Cached in memory and, with `cache_path`, in that JSON file (see module docstring).
  """
  sizes = tuple(int(s) for s in sizes)
  if not sizes or sizes[0] < 1 or list(sizes) != sorted(set(sizes)) or sizes[-1] > topology.size:
    raise ValueError(f"Candidate sizes must increase within 1..{topology.size}, got {sizes}")
  cache_len = prompt_width + max_new_tokens + topology.size
  key = table_key(model.config, topology, sizes, batch, cache_len) + (
      ("drafter", type(drafter).__name__ if drafter is not None else "argmax proxy"),)
  with _LOCK:
    if key in _MEMORY:
      return _MEMORY[key]
  stored = _read_file(cache_path)
  as_json = json.loads(json.dumps(key))                   # Tuples as lists, as stored.
  for entry in stored:
    if entry.get("key") == as_json:
      table = CostTable(tuple(entry["sizes"]), tuple(entry["seconds"]), "measured", key)
      with _LOCK:
        _MEMORY[key] = table
      return table
  if stored and log:
    log(f"cost tables in {cache_path} were measured for other settings; measuring anew")
  t0 = time.perf_counter()
  fns = model_fns.TransformerFns(model)
  rng = np.random.default_rng(0)
  prompts = jnp.asarray(rng.integers(0, model.config.vocab_size, (batch, prompt_width)),
                        jnp.int32)
  lengths = jnp.full((batch,), prompt_width, jnp.int32)
  timed = drafter if drafter is not None else _ArgmaxDrafter(topology, sizes)
  force = timed.force
  settings = loop.Settings(timed, max_new_tokens)
  run, state = _compiled_steps(fns, settings, cache_len, params, prompts, lengths)
  # Plain decoding as a plain stretch runs it: one candidate, no switch, no drafting.
  plain = loop.Settings(_ArgmaxDrafter(tree_lib.chain(1), (1,)), max_new_tokens)
  run_plain, state_plain = _compiled_steps(fns, plain, cache_len, params, prompts, lengths)
  t = time.perf_counter()
  jax.block_until_ready(run_plain(params, state_plain, 8))
  iterations = int(np.clip(min_seconds / max((time.perf_counter() - t) / 8, 1e-9), 8, 4096))
  times = [[] for _ in sizes]
  for _ in range(repeats):
    for i, size in enumerate(sizes):
      if size == 1:
        program, start = run_plain, state_plain.replace(drafter_state=jnp.zeros((), jnp.int32))
      else:
        program, start = run, state.replace(drafter_state=force(state.drafter_state, i))
      t = time.perf_counter()
      jax.block_until_ready(program(params, start, iterations))
      times[i].append((time.perf_counter() - t) / iterations)
  table = CostTable(sizes, tuple(statistics.median(t) for t in times), "measured", key)
  if log:
    log(f"cost table measured in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{s}: {r:.2f}x" for s, r in zip(sizes, table.relative)))
  with _LOCK:
    _MEMORY[key] = table
  if cache_path:
    stored.append({"key": as_json, "sizes": list(sizes), "seconds": list(table.seconds)})
    fileio.write_atomic(cache_path, json.dumps(stored, indent=1))
  return table


def _compiled_steps(fns, settings, cache_len, params, prompts, lengths):
  """(compiled fn(params, state, n) running n steps of the state's forced candidate, a started
  state)."""
  config = fns.model.config

  @jax.jit
  def begin(params, prompts, lengths):
    cache = cache_lib.init_for_model(config, prompts.shape[0], cache_len)
    return loop.start(fns, params, prompts, lengths, cache, None, settings)

  @jax.jit
  def run(params, state, n):
    body = functools.partial(loop.step, fns, params, drafter_params=None, settings=settings)
    return jax.lax.fori_loop(0, n, lambda _, s: body(s), state)

  state = jax.block_until_ready(begin(params, prompts, lengths))
  jax.block_until_ready(run(params, state, 1))                                    # Compile.
  return run, state


# --------------------------------------------------------------------- analytic fallback --
def _flops_and_bytes(config: model_lib.TransformerConfig, size: int, depth: int, batch: int,
                     cache_len: int) -> tuple[float, float]:
  d, v, layers = config.emb_dim, config.vocab_size, config.num_layers
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  mlp = config.mlp_dim * (3 if config.mlp_activation == "swiglu" else 2)
  layer_weights = d * (2 * q + 2 * kv) + d * mlp
  head_ffn = 2 * d * config.head_hidden_dim if config.head_type == "ffn" else d * d
  attention = 2 * cache_len * q                           # Scores and values, per token.
  tokens = batch * size
  flops = 2 * tokens * layers * (layer_weights + attention)
  flops += 2 * tokens * (d * v + head_ffn)                # Head 1 at every node.
  flops += 2 * batch * (depth - 1) * (d * v + head_ffn)   # Heads 2..depth at the last node.
  item = np.dtype(config.dtype).itemsize
  weights = layers * layer_weights + max(depth, 1) * (d * v + head_ffn)
  cache_bytes = 2 * layers * batch * cache_len * kv
  return float(flops), float((weights + cache_bytes) * item)


def measure_peaks(size: int = 1024) -> tuple[float, float]:
  """(FLOP/s of a float32 matmul of size x size, bytes/s of a large copy) on the default
  device: the roofline's two ceilings."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  copy = jax.jit(lambda x: x + 1.0)
  big = jnp.ones((64 << 20) // 4, jnp.float32)
  jax.block_until_ready((matmul(a), copy(big)))
  t = time.perf_counter()
  jax.block_until_ready(matmul(a))
  flops = 2 * size ** 3 / (time.perf_counter() - t)
  t = time.perf_counter()
  jax.block_until_ready(copy(big))
  bandwidth = 2 * big.nbytes / (time.perf_counter() - t)
  return flops, bandwidth


def analytic(config: model_lib.TransformerConfig, topology: tree_lib.Tree,
             sizes: Sequence[int], batch: int, cache_len: int, peak_flops: float,
             peak_bytes: float, overhead_s: float = 0.0) -> CostTable:
  """The roofline estimate of each verify size (see module docstring)."""
  seconds = []
  for size in sizes:
    flops, nbytes = _flops_and_bytes(config, size, topology.prefix(size).path_len, batch,
                                     cache_len)
    seconds.append(max(flops / peak_flops, nbytes / peak_bytes) + overhead_s)
  key = table_key(config, topology, sizes, batch, cache_len)
  return CostTable(tuple(sizes), tuple(seconds), "analytic", key)


@dataclasses.dataclass(eq=False)
class CostModel:
  """The resource cost-aware methods need: the model and settings to measure tables for.

  model, params: the decoded model; batch, prompt_width, max_new_tokens: the decode's shapes;
  cache_path: optional JSON file of measured tables (see `measure`); log: progress lines.
  """
  model: model_lib.Transformer
  params: Any
  batch: int
  prompt_width: int
  max_new_tokens: int
  cache_path: str = ""
  log: Optional[Any] = None
  tables: list = dataclasses.field(default_factory=list)   # Every table handed out (report).

  def table(self, topology: tree_lib.Tree, sizes: Sequence[int],
            drafter: Optional[Any] = None) -> CostTable:
    table = measure(self.model, self.params, topology, sizes, self.batch, self.prompt_width,
                    self.max_new_tokens, cache_path=self.cache_path, log=self.log,
                    drafter=drafter)
    self.tables.append(table)
    return table
