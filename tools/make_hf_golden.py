"""Writes tests/fixtures/hf/: reference outputs of TinyStories-656K computed by transformers.

Dev-only (needs torch + transformers, see requirements-bench.txt; not the project's venv):
  python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt
  .venv-bench/bin/python tools/make_hf_golden.py [--model_dir DIR] [--out_dir tests/fixtures/hf]

Outputs (small):
  tinystories656k_logits.npz  full float32 logits [2, L, V] of two fixed token sequences, and a
                              fingerprint (argmax, max, logsumexp per position) of a long one.
  tinystories656k_greedy.json 5 prompts: text, transformers' token ids, and 200 greedy new tokens
                              from LlamaForCausalLM.generate(do_sample=False) with EOS disabled
                              (so every row has exactly 200 tokens), plus their decoded text.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "..", "..", "shared", "data", "models", "TinyStories-656K")
PROMPTS = [
    "Once upon a time, ",
    "One day, a little girl named Lily",
    "Tom and his dog went to the park.",
    "There was a big red ball in the garden. The cat",
    "Sara was sad because",
]
NEW_TOKENS = 200
# Two fixed token sequences for the full-logit comparison (ids < 2048; position 0 is BOS).
LOGIT_SEQS = [[1, 80, 147, 201, 282, 215, 248, 197, 300, 45, 1000, 7],
              [1, 2047, 3, 512, 999, 1500, 20, 21, 22, 23, 1024, 2]]


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--model_dir", default=os.environ.get("BPDJAX_DATA_DIR") and os.path.join(
      os.environ["BPDJAX_DATA_DIR"], "models", "TinyStories-656K") or DEFAULT_MODEL)
  parser.add_argument("--out_dir", default=os.path.join(HERE, "..", "tests", "fixtures", "hf"))
  args = parser.parse_args(argv)
  torch.manual_seed(0)
  torch.set_num_threads(1)
  model = transformers.LlamaForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
  model.eval()
  # EOS off, so that every row has NEW_TOKENS tokens (generate() would otherwise fill unset
  # GenerationConfig fields, eos_token_id included, from the model's generation_config.json).
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  tok = transformers.AutoTokenizer.from_pretrained(args.model_dir)
  os.makedirs(args.out_dir, exist_ok=True)

  with torch.no_grad():
    logits = model(torch.tensor(LOGIT_SEQS)).logits.numpy().astype(np.float32)

    greedy = []
    for text in PROMPTS:
      ids = tok(text, return_tensors="pt").input_ids
      out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS,
                           attention_mask=torch.ones_like(ids))
      new = out[0, ids.shape[1]:].tolist()
      if len(new) != NEW_TOKENS:
        raise RuntimeError(f"generate gave {len(new)} tokens for {text!r}, expected {NEW_TOKENS}")
      # Cross-check generate against a plain argmax loop over full forward passes.
      seq = ids
      for _ in range(NEW_TOKENS):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
      if seq[0, ids.shape[1]:].tolist() != new:
        raise RuntimeError(f"generate() and the argmax loop disagree for {text!r}")
      greedy.append({"prompt": text, "prompt_ids": ids[0].tolist(), "new_ids": new,
                     "text": tok.decode(new, skip_special_tokens=True)})

    long_seq = torch.tensor([greedy[0]["prompt_ids"] + greedy[0]["new_ids"]])
    long_logits = model(long_seq).logits[0].numpy().astype(np.float64)

  np.savez_compressed(
      os.path.join(args.out_dir, "tinystories656k_logits.npz"),
      tokens=np.asarray(LOGIT_SEQS, np.int32), logits=logits,
      long_tokens=long_seq[0].numpy().astype(np.int32),
      long_argmax=long_logits.argmax(-1).astype(np.int32),
      long_max=long_logits.max(-1).astype(np.float32),
      long_logsumexp=np.log(np.exp(long_logits - long_logits.max(-1, keepdims=True)).sum(-1))
      .astype(np.float32) + long_logits.max(-1).astype(np.float32))
  meta = {"source": "tools/make_hf_golden.py", "model": "TinyStories-656K",
          "torch": torch.__version__, "transformers": transformers.__version__,
          "new_tokens": NEW_TOKENS, "eos_disabled": True, "eos_token_id": 2, "greedy": greedy}
  with open(os.path.join(args.out_dir, "tinystories656k_greedy.json"), "w") as f:
    json.dump(meta, f, indent=1)
  for g in greedy:
    print(repr(g["prompt"]), g["prompt_ids"], "->", repr(g["text"][:120]))
  print("EOS positions:", [[i for i, t in enumerate(g["new_ids"]) if t == 2] for g in greedy])


if __name__ == "__main__":
  main(sys.argv[1:])
