"""Block efficiency when sampling against greedy decoding, every method in one run, with each
method's distribution check (bpdjax/eval/distribution.py).

  python -m benchmarks.sampling_be --workdir=workdirs/ts_ffn --tasks=jsonl \
      --jsonl=benchmarks/story_openings.jsonl --num_examples=12 [--repeats=8] \
      [--methods=ar,bpd,pbest_0gram,medusa] [--temperature=1.0] [--markdown=FILE]

Each prompt is decoded `repeats` times (batch rows with their own randomness); every method and
acceptance rule sees the same prompts and seed, so all share each row's first sampled token
(it comes from the prefill) and the log-probability check against ar is paired. Rows: greedy,
then at the temperature the lossless rules (tokenwise; block, which differs from tokenwise on
chains only) and Medusa's typical acceptance (lossy, for bpd and medusa). Tokens/s is one timed
run after a compiling one, for orientation; python -m bpdjax.bench decode_speed measures speed.
"""
import dataclasses

import jax
from absl import app
from absl import flags

from benchmarks import common
from benchmarks import results as results_page
from bpdjax import api
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import sampling
from bpdjax.eval import distribution
from bpdjax.eval import metrics

_CONFIG = common.define_config(methods="ar,bpd,pbest_0gram,medusa", num_examples=12,
                               max_new_tokens=128, record_topk=0)
_REPEATS = flags.DEFINE_integer("repeats", 8, "Samples per prompt.")
_TEMPERATURE = flags.DEFINE_float("sample_temperature", 1.0, "Sampling temperature.")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("sampling_be"),
                                    results_page.HELP)
LOSSY_FOR = ("bpd", "medusa")        # Medusa's rule, on a chain and on Medusa's own tree.


def _rules(method: str, topology) -> list:
  rules = [(0.0, sampling.TOKENWISE)]
  if method == "ar":
    return rules + [(_TEMPERATURE.value, sampling.TOKENWISE)]
  rules.append((_TEMPERATURE.value, sampling.TOKENWISE))
  if topology.is_chain and topology.path_len > 1:
    rules.append((_TEMPERATURE.value, sampling.BLOCK))
  if method in LOSSY_FOR:
    rules.append((_TEMPERATURE.value, sampling.TYPICAL_LOSSY))
  return rules


def main(argv):
  del argv
  s = common.settings(_CONFIG.value)
  loaded = api.load(s.workdir)
  config = loaded.model.config
  prompts = [p for p in common.prompts(s, loaded, s.tasks[0]) for _ in range(_REPEATS.value)]
  generator = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  width = generator_lib.bucket_width(max(len(p) for p in prompts), config.max_len,
                                     s.max_new_tokens)
  built = common.build_methods(s, generator, prompt_width=width, batch_size=s.batch_size)
  base = dataclasses.replace(s.sampling, temperature=0.0, acceptance=sampling.TOKENWISE)
  header = (f"workdir {s.workdir} (step {loaded.step}), h={config.num_heads_bpd}, "
            f"{len(prompts) // _REPEATS.value} {s.tasks[0]} prompts x {_REPEATS.value} samples, "
            f"max_new_tokens={s.max_new_tokens}, batch {s.batch_size}, top_k={s.sampling.top_k}, "
            f"top_p={s.sampling.top_p}, seed {s.seed}")
  print(header)
  table = [header, "", "| method | temperature | acceptance | lossless | BE | tokens/s "
           "| mean log q | z vs ar | 2nd-token TV |", "|---|---|---|---|---|---|---|---|---|"]
  scores, rows = {}, []
  for name, b in built.items():
    for temperature, rule in _rules(name, b.drafter.topology):
      config_t = dataclasses.replace(base, temperature=temperature, acceptance=rule)
      run = lambda: generator.generate(  # noqa: E731
          prompts, b, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
          sampling_config=config_t,
          rng=jax.random.PRNGKey(s.seed), prompt_width=width)
      run()                                                                      # Compile.
      gens, timings = run()
      entry = metrics.speed_metrics(gens, timings)
      check = None
      if temperature > 0:
        scores[(name, rule)] = distribution.score(loaded.model, loaded.params, prompts,
                                                  [g.tokens for g in gens], config_t)
        check = scores[(name, rule)]
      rows.append((name, temperature, rule, config_t.lossless, entry, check))
  reference = scores.get(("ar", sampling.TOKENWISE))
  for name, temperature, rule, lossless, entry, check in rows:
    d = (distribution.summarize(check, None if name == "ar" else reference) if check else {})
    fmt = lambda key, spec=".3f": format(d[key], spec) if d.get(key) is not None else "–"  # noqa: E731
    line = (f"| {name} | {temperature:g} | {rule if temperature else 'greedy'} | "
            f"{'yes' if lossless else 'NO'} | {entry['block_efficiency']:.3f} | "
            f"{entry['tokens_per_second']:.1f} | {fmt('mean_logprob')} | "
            f"{fmt('logprob_z_vs_ar', '+.2f')} | {fmt('second_token_tv')} |")
    print(line)
    table.append(line)
  results_page.append(_MARKDOWN.value, "sampling_be", "\n".join(table))


if __name__ == "__main__":
  app.run(main)
