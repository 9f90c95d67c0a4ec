"""Decoding speed of several methods side by side in one process, at each batch size.

  python -m benchmarks.decode_speed --workdir=workdirs/small \
      [--methods=ar,bpd,medusa,pbest_0gram,auto] [--batch_sizes=1,8] [--rounds=3] \
      [--config.options.pbest_0gram.p=8 ...] [--markdown=FILE]

Every method decodes the same prompts (the first --num_examples of --tasks' first task, default
16 lambada prompts, 128 new tokens) through the same jitted loop, compiled before timing; the
rounds alternate methods so that machine noise hits all of them. Prints tokens/s (median of the
rounds), block efficiency, the ratio to the first method and to the fastest other method, and
whether outputs are identical; ms/call is the last round's wall time per serial loop step (a
batch's prefill plus its iterations: one model call each); for cost-aware methods (auto) also
the cost table they measured at that batch size, the candidates they chose and predicted vs
realized tokens per call.
Method knobs come from the decode configuration (configs/decode.py).
"""
from absl import app
from absl import flags

from benchmarks import common
from benchmarks import results as results_page
from bpdjax import api
from bpdjax.decoding import generator as generator_lib

_CONFIG = common.define_config(methods="ar,bpd,medusa,pbest_0gram,auto", num_examples=16,
                               max_new_tokens=128, record_topk=0)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per method (median reported).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("decode_speed"),
                                    results_page.HELP)


def _identical(a_gens, b_gens) -> bool:
  return all(len(a.tokens) == len(b.tokens) and (a.tokens == b.tokens).all()
             for a, b in zip(a_gens, b_gens))


def _drafting_steps(stats: dict, batch_size: int) -> str:
  """Predicted / realized tokens per call over the steps that drafted (candidate > 0): at
  batch 1 every step is one row, so removing the plain steps (1 predicted, 1 kept) is exact."""
  if batch_size != 1 or "chosen" not in stats:
    return "–"
  plain, calls = stats["chosen"][0], stats["verified_calls"]
  if calls <= plain:
    return "–"
  return (f"{(stats['predicted_tokens'] - plain) / (calls - plain):.3f} / "
          f"{(stats['realized_tokens'] - plain) / (calls - plain):.3f}")


def main(argv):
  del argv
  s = common.settings(_CONFIG.value)
  loaded = api.load(s.workdir)
  config = loaded.model.config
  prompts = common.prompts(s, loaded, s.tasks[0])
  generator = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  width = generator_lib.bucket_width(max(len(p) for p in prompts), config.max_len,
                                     s.max_new_tokens)
  res, cost_lines = common.load_resources(s, loaded), []
  header = (f"workdir {s.workdir} (step {loaded.step}), h={config.num_heads_bpd}, {len(prompts)} "
            f"{s.tasks[0]} prompts, max_new_tokens={s.max_new_tokens}, methods {s.methods}, "
            f"median of {_ROUNDS.value} alternating rounds")
  print(header)
  table = [header, "", "| batch | method | tokens/s | ms/call | vs " + s.methods[0] +
           " | vs best other | BE | identical | chosen (steps per candidate) | predicted / realized tok/call "
           "| same, drafting steps only | steps that looked at heads |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for batch_size in map(int, _BATCHES.value):
    tables_before = len(generator.cost_tables)
    built = common.build_methods(s, generator, prompt_width=width, batch_size=batch_size,
                                 res=res)

    def measure(name, batch_size=batch_size, built=built):
      return generator.generate(prompts, built[name], max_new_tokens=s.max_new_tokens,
                                batch_size=batch_size, prompt_width=width)

    results = common.alternating_rounds(list(built), measure, _ROUNDS.value)
    first = s.methods[0]
    base_tps, _, base_gens = results[first]
    for name, (tps, entry, gens) in results.items():
      best_other = max(r[0] for m, r in results.items() if m != name) if len(results) > 1 else tps
      st = entry.get("drafter_stats") or {}
      chosen = ",".join(str(int(c)) for c in st.get("chosen", [])) or "–"
      pred = (f"{st['predicted_tokens_per_call']:.3f} / {st['realized_tokens_per_call']:.3f}"
              if "predicted_tokens_per_call" in st else "–")
      drafting, looks = _drafting_steps(st, batch_size), st.get("head_looks")
      looks = "–" if looks is None else f"{looks / max(st['verified_calls'], 1):.1%}"
      line = (f"batch {batch_size}: {name:12s} {tps:8.1f} tok/s | {entry['ms_per_step']:.3f} "
              f"ms/call | {tps / base_tps:5.2f}x {first} "
              f"| {tps / best_other:5.2f}x best other | BE {entry['block_efficiency']:.3f} | "
              f"identical to {first} {_identical(base_gens, gens)}")
      if st:
        line += (f" | chosen {chosen} | predicted/realized {pred} (drafting steps {drafting})"
                 f" | looked at heads {looks}")
      print(line)
      table.append(f"| {batch_size} | {name} | {tps:.1f} | {entry['ms_per_step']:.3f} | "
                   f"{tps / base_tps:.2f} | "
                   f"{tps / best_other:.2f} | {entry['block_efficiency']:.3f} | "
                   f"{_identical(base_gens, gens)} | {chosen} | {pred} | {drafting} | {looks} |")
    for t in generator.cost_tables[tables_before:]:   # Cost-aware methods, this batch size.
      rel = ", ".join(f"{n}: {r:.2f}" for n, r in zip(t.sizes, t.relative))
      line = (f"batch {batch_size}: cost table ({t.source}; one iteration relative to size 1 = "
              f"{t.seconds[0] * 1e3:.3f} ms): {rel}")
      print(line)
      cost_lines.append(f"- {line}")
  results_page.append(_MARKDOWN.value, "decode_speed", "\n".join(table + [""] + cost_lines))


if __name__ == "__main__":
  app.run(main)
