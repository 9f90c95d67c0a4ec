"""The accelerator check's own measurements (benchmarks/gpu_check.sh), in two modes:

  python benchmarks/gpu_floor.py --probe --json=OUT/probe.json [--probe_mib=1024] [--smoke]
  python benchmarks/gpu_floor.py --workdir=W --probe_json=OUT/probe.json --json=OUT/floor.json \
      [--batch_sizes=1,8] [--trees=16,64] [--prompt_width=64 --max_new_tokens=128]

--probe: the device (backend, kind, count) and its memory bandwidth: a jitted x + 1 over a
  --probe_mib buffer, bytes read + written / median time of 10 runs after a warm-up. Without
  --smoke a CPU backend is an error: the check must not pass silently on the host.

--workdir: for the trained model, at each batch size, with the cache the decode uses
  (prompt_width + max_new_tokens + tree):
  - its cost table (decoding/timing.cost_table: one loop iteration verifying 1..h chain tokens and
    the trees, relative to a plain step);
  - the loop-overhead share: an iteration's time minus a bare cached forward of the same tokens
    (the layers over the T fed tokens with the KV cache, head 1 on them and, when T > 1, heads
    1..h on the last one, argmax fed back; no acceptance, drafting or bookkeeping), over the
    iteration's time, for T = 1 (ar) and T = h (bpd's full chain);
  - the bandwidth floor of an AR step: bytes an AR step must read (every parameter but heads
    2..h, as stored, plus the valid K/V at mid-decode, prompt_width + max_new_tokens / 2
    entries per row) / the probe's bandwidth, and the measured AR step against it.
Prints markdown tables; --json writes every number.
"""
import functools
import json
import math
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import api
from bpdjax import cache as cache_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import model_fns
from bpdjax.decoding import timing

_PROBE = flags.DEFINE_bool("probe", False, "Measure the device and its bandwidth only.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Allow a CPU backend (the check's smoke mode).")
_PROBE_MIB = flags.DEFINE_integer("probe_mib", 1024, "Buffer of the bandwidth probe, MiB.")
_PROBE_JSON = flags.DEFINE_string("probe_json", "", "The probe's JSON (its bandwidth).")
_WORKDIR = flags.DEFINE_string("workdir", "", "The trained workdir.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes.")
_TREES = flags.DEFINE_list("trees", ["16", "64"], "Tree sizes beyond the chain.")
_PROMPT = flags.DEFINE_integer("prompt_width", 64, "Prompt length of the timed decode.")
_NEW = flags.DEFINE_integer("max_new_tokens", 128, "New tokens (sets the cache length).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating repeats (median kept).")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 0.2, "Shortest timed run of one verify size "
                                  "(iterations are repeated until it is reached).")
_JSON = flags.DEFINE_string("json", "", "Write the results here.")


def _median_seconds(fn, runs: int = 10) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def probe() -> dict:
  devices = jax.devices()
  backend = jax.default_backend()
  if backend == "cpu" and not _SMOKE.value:
    raise SystemExit("gpu_floor: JAX sees no accelerator (backend cpu, devices "
                     f"{devices}); install jax[cuda] / jax[tpu] or run the check with --smoke.")
  x = jnp.ones((_PROBE_MIB.value << 20) // 4, jnp.float32)
  add = jax.jit(lambda a: a + 1.0)
  seconds = _median_seconds(lambda: add(x))
  result = {"backend": backend, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "jax": jax.__version__,
            "probe_bytes": 2 * x.nbytes, "probe_seconds": seconds,
            "bandwidth_gb_s": 2 * x.nbytes / seconds / 1e9}
  print(f"| backend | device | devices | bandwidth (x + 1 over {_PROBE_MIB.value} MiB, read + "
        "write) |\n|---|---|---|---|\n"
        f"| {backend} | {result['device_kind']} | {len(devices)} | "
        f"{result['bandwidth_gb_s']:.1f} GB/s |")
  return result


def _bare_forward(model, params, batch, size, cache_len, prompt_width, mid):
  """Seconds of a bare cached forward of `size` tokens (see the module docstring)."""
  fns = model_fns.TransformerFns(model)
  h = model.config.num_heads_bpd

  @functools.partial(jax.jit, static_argnums=2)
  def run(params, cache, n):
    def body(_, carry):
      cache, tokens = carry
      positions = cache.lengths[:, None] + jnp.arange(size)[None, :]
      hidden, new_cache = fns.forward(params, tokens, positions, cache)
      logits = fns.heads(params, hidden, 0, 1)[:, :, 0]                   # [B, T, V]
      nxt = jnp.argmax(logits, -1).astype(jnp.int32)
      if size > 1:
        last = fns.heads(params, hidden[:, -1:], 0, h)[:, 0]               # [B, h, V]
        nxt = nxt.at[:, -1].set(jnp.argmax(last.sum(1), -1).astype(jnp.int32))
      # The cache keeps its lengths: every iteration writes at the same mid-decode slots.
      return new_cache.replace(lengths=cache.lengths), nxt
    return jax.lax.fori_loop(0, n, body, (cache, jnp.zeros((batch, size), jnp.int32)))[1]

  cache = cache_lib.init_for_model(model.config, batch, cache_len)
  cache = cache.replace(lengths=jnp.full((batch,), mid, jnp.int32))
  iterations = 64
  return _median_seconds(lambda: run(params, cache, iterations), _REPEATS.value) / iterations


def floor(probe_result: dict) -> dict:
  loaded = api.load(_WORKDIR.value)
  model, params, config = loaded.model, loaded.params, loaded.model.config
  h = config.num_heads_bpd
  # auto's own chain and trees: the candidates whose verify costs the table gives.
  options = methods.make_options("auto", tree_nodes=",".join(_TREES.value), k=16)
  drafter, _ = methods.registry.build_drafter("auto", config, None, options)
  sizes, topology = drafter.candidates, drafter.topology
  probe_policy = methods.registry.build_policy("auto", options, drafter,
                                               timing.flat_table(sizes))
  gen = generator_lib.Generator(model, params, eos_id=None)
  cache_len = _PROMPT.value + _NEW.value + topology.size
  mid = _PROMPT.value + _NEW.value // 2
  leaves = jax.tree_util.tree_leaves_with_path(params)
  later_heads = {f"head_{i}" for i in range(2, h + 1)}
  ar_param_bytes = sum(x.size * x.dtype.itemsize for path, x in leaves
                       if getattr(path[0], "key", None) not in later_heads)
  kv_item = np.dtype(config.jnp_dtype).itemsize
  bandwidth = probe_result["bandwidth_gb_s"] * 1e9
  out = {"workdir": _WORKDIR.value, "step": loaded.step, "cache_len": cache_len, "h": h,
         "parameters": int(sum(x.size for _, x in leaves)), "ar_param_bytes": int(ar_param_bytes),
         "sizes": list(sizes), "batches": {}}
  lines = [f"Trained model: {out['parameters'] / 1e6:.1f}M parameters, {config.num_layers} x "
           f"{config.emb_dim}, h = {h}, {config.dtype}, step {loaded.step}; cache {cache_len}; "
           f"bandwidth {probe_result['bandwidth_gb_s']:.1f} GB/s.", "",
           "| batch | verify sizes | cost, x AR step | loop overhead ar | loop overhead bpd "
           "(T = h) | AR step ms | floor ms | AR tok/s | floor tok/s | AR / floor |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for batch in map(int, _BATCHES.value):
    table = timing.cost_table(gen, drafter, None, probe_policy, batch, _PROMPT.value,
                              _NEW.value, repeats=_REPEATS.value,
                              min_seconds=_MIN_SECONDS.value)
    iteration = dict(zip(sizes, table.seconds))
    overhead = {}
    for t in (1, h):
      bare = _bare_forward(model, params, batch, t, cache_len, _PROMPT.value, mid)
      overhead[t] = {"iteration_s": iteration[t], "bare_forward_s": bare,
                     "share": (iteration[t] - bare) / iteration[t]}
    kv_bytes = 2 * config.num_layers * batch * mid * config.num_kv_heads * config.head_dim * (
        kv_item)
    floor_s = (ar_param_bytes + kv_bytes) / bandwidth
    ar_s = iteration[1]
    out["batches"][batch] = {
        "cost_seconds": list(table.seconds), "cost_relative": list(table.relative),
        "loop_overhead": {"ar": overhead[1], "bpd": overhead[h]},
        "ar_step_s": ar_s, "floor_s": floor_s, "kv_bytes": int(kv_bytes),
        "ar_tokens_per_s": batch / ar_s, "floor_tokens_per_s": batch / floor_s,
        "ar_over_floor": ar_s / floor_s}
    rel = ", ".join(f"{s}: {r:.2f}" for s, r in zip(sizes, table.relative))
    lines.append(f"| {batch} | {','.join(map(str, sizes))} | {rel} | "
                 f"{overhead[1]['share']:.1%} | {overhead[h]['share']:.1%} | {ar_s * 1e3:.3f} | "
                 f"{floor_s * 1e3:.3f} | {batch / ar_s:,.0f} | {batch / floor_s:,.0f} | "
                 f"{ar_s / floor_s:.2f}x |")
  print("\n".join(lines))
  return out


def main(argv):
  del argv
  if _PROBE.value:
    result = probe()
  else:
    if not _WORKDIR.value or not _PROBE_JSON.value:
      raise app.UsageError("--workdir and --probe_json are needed (or --probe)")
    with open(_PROBE_JSON.value) as f:
      result = floor(json.load(f))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1, default=lambda v: None if isinstance(v, float) and (
          not math.isfinite(v)) else str(v))


if __name__ == "__main__":
  app.run(main)
