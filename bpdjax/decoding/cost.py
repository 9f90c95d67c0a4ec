"""What one decode-loop iteration costs, for each verify size a policy can choose: the
denominator of cost-aware drafting (policies/auto.py). This module holds the values and their
cache; decoding/timing.py measures them through the driver (Generator).

A `CostTable` gives seconds per loop iteration for each candidate size (sizes[0] = 1 is plain
decoding, the unit every other size is compared with). Measured tables are cached per (model
shape, batch, cache length, backend, device kind, dtype, sizes, tree, drafter, policy) in memory
and, when given one, in a JSON file (e.g. the workdir's cost_tables.json): an entry whose key
differs in anything is never reused. A cache file is only a cache: an unreadable, wrongly
shaped or implausible entry (non-finite, non-positive, or a size cheaper than half a plain
step) is dropped with a warning naming the file, and the table is measured again.

`analytic` is the fallback when measuring is not wanted (e.g. a model too large to time at
start-up): per iteration, max(FLOPs / peak FLOP/s, bytes / peak bytes/s) + a fixed overhead,
with FLOPs of the layers over the T fed tokens, head 1 at every node and heads 2..depth at the
last kept one, and bytes of every weight read once plus the KV cache read by attention.
`measure_peaks` gives the machine's peaks from one large matmul and one large copy; both are
rough (a roofline model), which is why measured tables are the default.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import fileio
from bpdjax import model as model_lib
from bpdjax.decoding import tree as tree_lib


TIMING = 3            # How tables are timed; tables cached by an older way are measured anew.


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


def _plausible(entry, sizes: tuple[int, ...]) -> bool:
  """A cached entry whose seconds are one positive, finite value per size, none below half the
  plain step's (verifying more nodes cannot cost less than that; measured tables of an
  accelerator may be flat, so exact monotonicity is not asked for)."""
  seconds = entry.get("seconds") if isinstance(entry, dict) else None
  if entry.get("sizes") != list(sizes) or not isinstance(seconds, list):
    return False
  if len(seconds) != len(sizes) or not all(isinstance(x, (int, float)) for x in seconds):
    return False
  if not all(math.isfinite(x) and x > 0 for x in seconds):
    return False
  return all(x >= 0.5 * seconds[0] for x in seconds)


def read_cache(path: str) -> list:
  """The entries of a cost cache file ([] when there is none, or it is unreadable: warned)."""
  if not path or not fileio.exists(path):
    return []
  try:
    stored = json.loads(fileio.read_text(path))
  except (ValueError, UnicodeDecodeError) as e:
    logging.warning("Cost cache %s is unreadable (%s); measuring anew", path, e)
    return []
  if not isinstance(stored, list) or not all(isinstance(e, dict) for e in stored):
    logging.warning("Cost cache %s is not a list of tables; measuring anew", path)
    return []
  return stored


def cached(key: tuple, sizes: Sequence[int], path: str = "") -> Optional[CostTable]:
  """The table measured for `key` earlier in this process or stored in `path`, if plausible."""
  with _LOCK:
    if key in _MEMORY:
      return _MEMORY[key]
  as_json = json.loads(json.dumps(key))                   # Tuples as lists, as stored.
  for entry in read_cache(path):
    if entry.get("key") != as_json:
      continue
    if not _plausible(entry, tuple(sizes)):
      logging.warning("Cost cache %s holds an implausible table for this setting (%s); "
                      "measuring anew", path, entry.get("seconds"))
      return None
    table = CostTable(tuple(entry["sizes"]), tuple(float(x) for x in entry["seconds"]),
                      "measured", key)
    with _LOCK:
      _MEMORY[key] = table
    return table
  return None


def store(table: CostTable, path: str = "") -> None:
  """Keeps a measured table in memory and, with `path`, in that file (atomically), replacing
  any entry of the same key and dropping entries that are not tables."""
  with _LOCK:
    _MEMORY[table.key] = table
  if not path:
    return
  as_json = json.loads(json.dumps(table.key))
  stored = [e for e in read_cache(path) if e.get("key") != as_json and "seconds" in e]
  stored.append({"key": as_json, "sizes": list(table.sizes), "seconds": list(table.seconds)})
  fileio.write_atomic(path, json.dumps(stored, indent=1))


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
