"""Verify-cost tables: wall time of one decode-loop iteration verifying a chain of L tokens (and
Medusa-style trees of n nodes), relative to one plain decoding step, for model shapes with random
weights (the cost does not depend on the weights). Where the relative cost of L exceeds the
tokens a call of L can keep, drafting L cannot pay on this machine.

  python -m benchmarks.cost_tables [--shapes=small,base_130m,c4_1p5b] [--batch_sizes=1] \
      [--dtype=float32] [--trees=16,64] [--markdown=FILE]

Each table is decoding/timing.cost_table (the table method auto uses: its own steps, median
of alternating repeats, compile excluded) beside decoding/cost.analytic (roofline from the
measured matmul and copy peaks).
"""
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import results as results_page
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax.decoding import cost
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import timing
from bpdjax.configs import c4_1p5b
from bpdjax.configs import small

_SHAPES = flags.DEFINE_list("shapes", ["small", "base_130m", "c4_1p5b"], "Model shapes.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1"], "Batch sizes.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation dtype ('' = the config's).")
_TREES = flags.DEFINE_list("trees", [], "Tree candidate sizes beyond the chain (e.g. 16,64).")
_PROMPT = flags.DEFINE_integer("prompt_width", 64, "Prompt length (cache = prompt + new + tree).")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "New tokens (sets the cache length).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Alternating repeats (median kept).")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("cost_tables"),
                                    results_page.HELP)


def _model_section(name: str):
  """The `model` section of a shape: a config's, or the ~130M GPT-2-small-like one."""
  if name == "small":
    return small.get_config().model
  if name == "c4_1p5b":
    return c4_1p5b.get_config().model
  if name == "base_130m":   # 12 x 768 (~85M in layers), 32k tied vocabulary, h = 9 FFN heads.
    m = c4_1p5b.get_config().model
    m.update(num_layers=12, emb_dim=768, num_heads=12, num_kv_heads=12, head_dim=64,
             mlp_dim=2048, head_hidden_dim=1536)
    return m
  raise ValueError(f"Unknown shape {name!r}: small, base_130m or c4_1p5b")


def main(argv):
  del argv
  peak_flops, peak_bytes = cost.measure_peaks()
  out = [f"Device {jax.devices()[0].device_kind} ({jax.default_backend()}); roofline peaks "
         f"{peak_flops / 1e9:.1f} GFLOP/s (float32 matmul), {peak_bytes / 1e9:.1f} GB/s (copy)."]
  print(out[0])
  for name in _SHAPES.value:
    m = _model_section(name)
    if _DTYPE.value:
      m.dtype = _DTYPE.value
    config = configuration.validate_model(m)
    model = model_lib.Transformer(config)
    t = time.perf_counter()
    tok = jnp.zeros((1, 4), jnp.int32)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, tok, tok)["params"]))(
        jax.random.PRNGKey(0))
    count = sum(x.size for x in jax.tree.leaves(params))
    h = config.num_heads_bpd
    gen = generator_lib.Generator(model, params, eos_id=None)
    options = methods.make_options("auto", tree_nodes=",".join(_TREES.value))
    drafter, _ = methods.registry.build_drafter("auto", config, None, options)
    sizes = drafter.candidates
    topology = drafter.topology
    probe = methods.registry.build_policy("auto", options, drafter, timing.flat_table(sizes))
    for batch in map(int, _BATCHES.value):
      measured = timing.cost_table(gen, drafter, None, probe, batch, _PROMPT.value, _NEW.value,
                                   repeats=_REPEATS.value, min_seconds=0.2)
      cache_len = _PROMPT.value + _NEW.value + topology.size
      roof = cost.analytic(config, topology, sizes, batch, cache_len, peak_flops, peak_bytes)
      head = (f"\n**{name}** ({count / 1e6:.1f}M parameters, {config.num_layers} layers x "
              f"{config.emb_dim}, vocabulary {config.vocab_size}, h = {h}, {config.dtype}), "
              f"batch {batch}, cache {cache_len}: one AR step = {measured.seconds[0] * 1e3:.2f} "
              f"ms (set-up {time.perf_counter() - t:.0f} s)\n")
      rows = ["| verify size | " + " | ".join(map(str, sizes)) + " |",
              "|---" * (len(sizes) + 1) + "|",
              "| measured, x AR step | " + " | ".join(f"{r:.2f}" for r in measured.relative)
              + " |",
              "| analytic (roofline), x AR step | "
              + " | ".join(f"{r:.2f}" for r in roof.relative) + " |"]
      print(head + "\n".join(rows))
      out += [head] + rows
  results_page.append(_MARKDOWN.value, "cost_tables", "\n".join(out))


if __name__ == "__main__":
  app.run(main)
