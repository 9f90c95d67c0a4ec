"""Decoding speed of several methods side by side in one process, at each batch size.

  python benchmarks/decode_speed.py --workdir=workdirs/small [--methods=ar,bpd] \
      [--batch_sizes=1,8] [--rounds=3] [--config.options.pbest_0gram.p=8 ...]

Every method decodes the same prompts (the first --num_examples of --tasks' first task, default
16 lambada prompts, 128 new tokens) through the same jitted loop, compiled before timing; the
rounds alternate methods so that machine noise hits all of them. Prints tokens/s (median of the
rounds), block efficiency, the ratio to the first method and whether outputs are identical.
Method knobs come from the decode configuration (configs/decode.py).
"""
from absl import app
from absl import flags

import common  # pylint: disable=g-import-not-at-top  (benchmarks/common.py; puts bpdjax on the path)
from bpdjax import api
from bpdjax.decoding import generator as generator_lib

_CONFIG = common.define_config(methods="ar,bpd", num_examples=16, max_new_tokens=128,
                               record_topk=0)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per method (median reported).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")


def main(argv):
  del argv
  s = common.settings(_CONFIG.value)
  loaded = api.load(s.workdir)
  config = loaded.model.config
  prompts = common.prompts(s, loaded, s.tasks[0])
  built = common.build_methods(s, loaded)
  generator = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  width = generator_lib.bucket_width(max(len(p) for p in prompts), config.max_len,
                                     s.max_new_tokens)
  print(f"workdir {s.workdir} (step {loaded.step}), h={config.num_heads_bpd}, {len(prompts)} "
        f"{s.tasks[0]} prompts, max_new_tokens={s.max_new_tokens}, methods {list(built)}")
  for batch_size in map(int, _BATCHES.value):
    def measure(name, batch_size=batch_size):
      b = built[name]
      return generator.generate(prompts, b.drafter, b.params, s.max_new_tokens, batch_size,
                                prompt_width=width)
    results = common.alternating_rounds(list(built), measure, _ROUNDS.value)
    first = s.methods[0]
    base_tps, _, base_gens = results[first]
    for name, (tps, entry, gens) in results.items():
      identical = all(len(a.tokens) == len(b.tokens) and (a.tokens == b.tokens).all()
                      for a, b in zip(base_gens, gens))
      print(f"batch {batch_size}: {name:12s} {tps:8.1f} tok/s | {tps / base_tps:5.2f}x {first} | "
            f"BE {entry['block_efficiency']:.3f} | identical to {first} {identical}")


if __name__ == "__main__":
  app.run(main)
