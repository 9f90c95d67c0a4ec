"""Block efficiency of greedy BPD for each block size k (the paper's Table 1 shape), one run.

  python -m benchmarks.block_sizes --workdir=workdirs/ft_squad --tasks=squad \
      --num_examples=32 --max_new_tokens=64 [--config.max_prompt_tokens=192] \
      [--sizes=2,3,4,5,6,7,8,9] [--json=FILE]

Block size k decodes with the first k heads of the model (bpd with draft_len=k: head 1's token
and heads 2..k's draft), as the paper's Table 1 uses one h = 9 model for every k; every output
is checked against plain greedy decoding (an error if one differs). Prints BE per k and writes
{"workdir", "step", "task", "examples", "max_new_tokens", "block_efficiency": {k: BE}} to --json.
"""
import json

from absl import app
from absl import flags

from benchmarks import common
from benchmarks import results as results_page
from bpdjax import api
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.eval import metrics

_CONFIG = common.define_config(methods="ar", num_examples=32, max_new_tokens=64, record_topk=0)
_SIZES = flags.DEFINE_list("sizes", [str(k) for k in range(2, 10)], "Block sizes k.")
_JSON = flags.DEFINE_string("json", "", "Write the result here.")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("block_sizes"),
                                    results_page.HELP)


def main(argv):
  del argv
  s = common.settings(_CONFIG.value)
  loaded = api.load(s.workdir)
  config = loaded.model.config
  task = s.tasks[0]
  prompts = common.prompts(s, loaded, task, as_decode_py=True)     # decode.py's examples.
  generator = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  width = generator_lib.bucket_width(max(len(p) for p in prompts), config.max_len,
                                     s.max_new_tokens)

  def decode(built):
    return generator.generate(prompts, built, max_new_tokens=s.max_new_tokens,
                              batch_size=s.batch_size, prompt_width=width)

  reference, _ = decode(methods.build("ar", config))
  result = {"workdir": s.workdir, "step": loaded.step, "task": task, "examples": len(prompts),
            "max_new_tokens": s.max_new_tokens, "block_efficiency": {}}
  for k in map(int, _SIZES.value):
    gens, timings = decode(methods.build("bpd", config, draft_len=k))
    for i, (a, b) in enumerate(zip(reference, gens)):
      if a.tokens.tolist() != b.tokens.tolist():
        raise RuntimeError(f"{task} example {i}: bpd with k={k} differs from greedy decoding")
    be = metrics.speed_metrics(gens, timings)["block_efficiency"]
    result["block_efficiency"][k] = be
    print(f"{s.workdir} {task} k={k}: BE {be:.3f} (identical to greedy)")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  sizes = list(result["block_efficiency"])
  results_page.append(_MARKDOWN.value, "block_sizes", "\n".join([
      f"{s.workdir} (step {loaded.step}), {task}, {len(prompts)} examples, {s.max_new_tokens} "
      "new tokens, greedy bpd (every output identical to greedy decoding)", "",
      "| k | " + " | ".join(map(str, sizes)) + " |", "|---" * (len(sizes) + 1) + "|",
      "| BE | " + " | ".join(f"{result['block_efficiency'][k]:.3f}" for k in sizes) + " |"]))


if __name__ == "__main__":
  app.run(main)
