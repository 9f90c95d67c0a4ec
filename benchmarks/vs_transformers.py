"""bpdjax vs Hugging Face transformers on TinyStories-656K at batch 1, in one process.

  .venv-bench/bin/python -m benchmarks.vs_transformers --workdir=workdirs/ts_ffn \
      --rescorer_workdir=workdirs/ts_rescorer

(.venv-bench: requirements.txt + requirements-bench.txt, i.e. the project plus the CPU torch
wheel and transformers.) Rows, all on the same story openings (benchmarks/story_openings.jsonl)
and the same machine, measured in one run:

  bpdjax <method>        each of --methods (default ar, bpd, local, medusa, medusa_local; the
                         first is the "vs bpdjax" reference), knobs from the decode config
  transformers greedy    model.generate(do_sample=False)
  transformers PLD       model.generate(do_sample=False, prompt_lookup_num_tokens=N)

tokens/s is generated tokens over execution time (bpdjax compiles before the clock starts; each
row's first round is a warm-up for both libraries), median over --rounds. Block efficiency is
generated tokens per serial model call; for transformers the calls are counted with a forward
hook. Every row's text must equal transformers' greedy output (asserted).
"""
from __future__ import annotations

import json
import os
import statistics
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common
from benchmarks import results as results_page
from bpdjax import api
from bpdjax.data import eval_sets
from bpdjax.decoding import generator as generator_lib

# The bpdjax rows and their knobs (--k, --alpha, --tree_size, --config.options...) come from the
# decode configuration; --workdir is the heads workdir.
_CONFIG = common.define_config(
    workdir="workdirs/ts_ffn", rescorer_workdir="workdirs/ts_rescorer", tasks="jsonl",
    jsonl=os.path.join(os.path.dirname(__file__), "story_openings.jsonl"),
    methods="ar,bpd,local,medusa,medusa_local", max_new_tokens=200, record_topk=0)
_HF_MODEL = flags.DEFINE_string("hf_model", "", "HF Llama folder (default: data_dir/models/"
                                "TinyStories-656K).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per row (median reported).")
_PLD = flags.DEFINE_integer("prompt_lookup_num_tokens", 10, "transformers PLD draft length.")
_JSON = flags.DEFINE_string("json_output", "", "Optional JSON output path.")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("vs_transformers"),
                                    results_page.HELP)


def _bpdjax_rows(settings, loaded, prompts, max_new):
  generator = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  built = common.build_methods(settings, generator)
  rows = {}
  for name, b in built.items():
    generator.generate(prompts[:1], b, max_new_tokens=max_new)        # Compile (+ warm-up).
    seconds, outputs = [], None
    for _ in range(_ROUNDS.value):
      gens, timings = generator.generate(prompts, b, max_new_tokens=max_new)
      seconds.append(sum(t.seconds for t in timings))
      outputs = gens
    tokens = sum(len(g.tokens) for g in outputs)
    rows[f"bpdjax {name}"] = {"tokens": tokens, "calls": sum(g.calls for g in outputs),
                              "seconds": statistics.median(seconds),
                              "outputs": [g.tokens.tolist() for g in outputs]}
    print(f"  bpdjax {name}: done", flush=True)
  return rows


def _transformers_rows(folder, prompts, max_new):
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  model.eval()
  calls = [0]
  model.model.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
  rows = {}
  for label, extra in (("transformers greedy", {}),
                       ("transformers PLD", {"prompt_lookup_num_tokens": _PLD.value})):
    seconds, outputs, total_calls = [], None, 0
    for r in range(_ROUNDS.value + 1):                                # Round 0: warm-up.
      outs, n_calls = [], 0
      t0 = time.perf_counter()
      for p in prompts:
        calls[0] = 0
        with torch.no_grad():
          out = model.generate(torch.tensor([p]), max_new_tokens=max_new, do_sample=False,
                               **extra)
        outs.append(out[0, len(p):].tolist())
        n_calls += calls[0]
      if r:
        seconds.append(time.perf_counter() - t0)
        outputs, total_calls = outs, n_calls
    rows[label] = {"tokens": sum(len(o) for o in outputs), "calls": total_calls,
                   "seconds": statistics.median(seconds), "outputs": outputs}
    print(f"  {label}: done", flush=True)
  return rows


def main(argv):
  del argv
  settings = common.settings(_CONFIG.value)
  loaded = api.load(settings.workdir)
  tokenizer = loaded.vocab                      # The imported model's HFTokenizer.
  folder = _HF_MODEL.value or os.path.join(loaded.config.data_dir, "models", "TinyStories-656K")
  texts = [r["prompt"] for r in eval_sets.read_jsonl_prompts(settings.jsonl)]
  prompts = [np.asarray(tokenizer.encode(t), np.int32) for t in texts]
  max_new = settings.max_new_tokens
  print(f"{len(prompts)} prompts, {max_new} new tokens, batch 1, {_ROUNDS.value} rounds; "
        f"heads {settings.workdir} (h={loaded.model.config.num_heads_bpd}, "
        f"{loaded.model.config.head_type}), rescorer {settings.rescorer_workdir}", flush=True)
  rows = _bpdjax_rows(settings, loaded, prompts, max_new)
  rows.update(_transformers_rows(folder, [p.tolist() for p in prompts], max_new))
  reference = rows["transformers greedy"]["outputs"]
  base = rows["transformers greedy"]["tokens"] / rows["transformers greedy"]["seconds"]
  first = rows[f"bpdjax {settings.methods[0]}"]
  ours = first["tokens"] / first["seconds"]
  table = ["| row | tokens/s | block efficiency | vs transformers greedy | vs bpdjax ar | "
           "identical |", "|---|---|---|---|---|---|"]
  for label, r in rows.items():
    tps = r["tokens"] / r["seconds"]
    r.update(tokens_per_second=tps, block_efficiency=r["tokens"] / max(r["calls"], 1),
             identical=r["outputs"] == reference)
    table.append(f"| {label} | {tps:.1f} | {r['block_efficiency']:.3f} | {tps / base:.2f}x | "
                 f"{tps / ours:.2f}x | {r['identical']} |")
  print("\n" + "\n".join(table))
  results_page.append(_MARKDOWN.value, "vs_transformers", f"{len(prompts)} prompts, {max_new} new "
                 f"tokens, batch 1, median of {_ROUNDS.value} rounds, heads {settings.workdir}\n\n"
                 + "\n".join(table))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({k: {kk: vv for kk, vv in v.items() if kk != "outputs"} for k, v in rows.items()},
                f, indent=2)
  if not all(r["identical"] for r in rows.values()):
    raise SystemExit("Some row's output differs from transformers' greedy output")


if __name__ == "__main__":
  app.run(main)
