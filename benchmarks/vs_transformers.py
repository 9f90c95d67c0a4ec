"""bpdjax vs Hugging Face transformers on TinyStories-656K at batch 1, in one process.

  .venv-bench/bin/python benchmarks/vs_transformers.py --heads_workdir=workdirs/ts_ffn \
      --rescorer_workdir=workdirs/ts_rescorer

(.venv-bench: requirements.txt + requirements-bench.txt, i.e. the project plus the CPU torch
wheel and transformers.) Rows, all on the same story openings (benchmarks/story_openings.jsonl)
and the same machine, measured in one run:

  bpdjax ar              plain greedy decoding on the imported model (head 1 only)
  bpdjax bpd             blockwise parallel decoding with the trained heads
  bpdjax bpd+local       ... with local neural rescoring of the draft (Kim et al. 2024, Alg. 2)
  bpdjax medusa          Medusa sparse-tree drafts verified with a tree attention mask
  bpdjax medusa+local    ... with the tree's candidates reranked by local rescoring
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
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from bpdjax import api
from bpdjax.decoding import evaluate
from bpdjax.decoding import generate

_HF_MODEL = flags.DEFINE_string("hf_model", "", "HF Llama folder (default: data_dir/models/"
                                "TinyStories-656K).")
_HEADS = flags.DEFINE_string("heads_workdir", "workdirs/ts_ffn",
                             "Workdir of heads trained on the frozen base (train.py).")
_RESCORER = flags.DEFINE_string("rescorer_workdir", "workdirs/ts_rescorer",
                                "Rescoring LM with the same tokenizer (rows with local).")
_PROMPTS = flags.DEFINE_string("prompts", os.path.join(os.path.dirname(__file__),
                                                       "story_openings.jsonl"), "JSONL prompts.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 200, "Tokens generated per prompt.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per row (median reported).")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Local rescoring weight.")
_K = flags.DEFINE_integer("k", 16, "Candidates per head.")
_TREE = flags.DEFINE_integer("tree_size", 0, "Medusa tree nodes (0: the default).")
_PLD = flags.DEFINE_integer("prompt_lookup_num_tokens", 10, "transformers PLD draft length.")
_OUTPUT = flags.DEFINE_string("output", "", "Optional JSON output path.")


def _bpdjax_rows(loaded, rescorer, prompts, max_new):
  options = generate.MethodOptions(k=_K.value, alpha=_ALPHA.value)
  if _TREE.value:
    options = generate.MethodOptions(k=_K.value, alpha=_ALPHA.value, tree_size=_TREE.value)
  generator = generate.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id,
                                 options=options, rescorer=rescorer)
  rows = {}
  for label, method in (("bpdjax ar", "ar"), ("bpdjax bpd", "bpd"),
                        ("bpdjax bpd+local", "local"), ("bpdjax medusa", "medusa"),
                        ("bpdjax medusa+local", "medusa_local")):
    generator.generate(prompts[:1], method, max_new)                  # Compile (+ warm-up).
    seconds, outputs = [], None
    for _ in range(_ROUNDS.value):
      gens, timings = generator.generate(prompts, method, max_new)
      seconds.append(sum(t.seconds for t in timings))
      outputs = gens
    tokens = sum(len(g.tokens) for g in outputs)
    rows[label] = {"tokens": tokens, "calls": sum(g.calls for g in outputs),
                   "seconds": statistics.median(seconds),
                   "outputs": [g.tokens.tolist() for g in outputs]}
    print(f"  {label}: done", flush=True)
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
  loaded = api.load(_HEADS.value)
  tokenizer = loaded.vocab                      # The imported model's HFTokenizer.
  folder = _HF_MODEL.value or os.path.join(loaded.config.data_dir, "models", "TinyStories-656K")
  with open(_PROMPTS.value) as f:
    texts = [json.loads(line)["prompt"] for line in f if line.strip()]
  prompts = [np.asarray(tokenizer.encode(t), np.int32) for t in texts]
  rescorer = evaluate.load_rescorer(_RESCORER.value, _HEADS.value)
  max_new = _MAX_NEW.value
  print(f"{len(prompts)} prompts, {max_new} new tokens, batch 1, {_ROUNDS.value} rounds; "
        f"heads {_HEADS.value} (h={loaded.model.config.num_heads_bpd}, "
        f"{loaded.model.config.head_type}), rescorer {_RESCORER.value}", flush=True)
  rows = _bpdjax_rows(loaded, rescorer, prompts, max_new)
  rows.update(_transformers_rows(folder, [p.tolist() for p in prompts], max_new))
  reference = rows["transformers greedy"]["outputs"]
  base = rows["transformers greedy"]["tokens"] / rows["transformers greedy"]["seconds"]
  ours = rows["bpdjax ar"]["tokens"] / rows["bpdjax ar"]["seconds"]
  print("\n| row | tokens/s | block efficiency | vs transformers greedy | vs bpdjax ar | "
        "identical |\n|---|---|---|---|---|---|")
  for label, r in rows.items():
    tps = r["tokens"] / r["seconds"]
    r.update(tokens_per_second=tps, block_efficiency=r["tokens"] / max(r["calls"], 1),
             identical=r["outputs"] == reference)
    print(f"| {label} | {tps:.1f} | {r['block_efficiency']:.3f} | {tps / base:.2f}x | "
          f"{tps / ours:.2f}x | {r['identical']} |")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({k: {kk: vv for kk, vv in v.items() if kk != "outputs"} for k, v in rows.items()},
                f, indent=2)
  if not all(r["identical"] for r in rows.values()):
    raise SystemExit("Some row's output differs from transformers' greedy output")


if __name__ == "__main__":
  app.run(main)
