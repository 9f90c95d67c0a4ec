"""Held-out story openings: prompts from the validation split of self-distillation data.

  python -m benchmarks.pipelines.heldout_openings --workdir=workdirs/ts_ffn9 --tokens=24 \
      --output=out/ts_openings.jsonl

The workdir is one trained on `python -m bpdjax.distill` output (data.task "token_file"); its
validation sequences are never trained on (the distill split rule), so their first --tokens
tokens, decoded with the workdir's tokenizer and cut back to the last whole word, are openings
the heads have not seen. Writes one {"id", "prompt"} per line (decode.py --tasks=jsonl).
"""
from __future__ import annotations

import argparse
import json
import os

from bpdjax import workdir as workdir_lib
from bpdjax.data import token_files
from bpdjax.data import tokenizers


def openings(workdir: str, num_tokens: int) -> list[dict]:
  """[{"id": "heldout-i", "prompt": text}] of each validation sequence with a whole word."""
  config = workdir_lib.load_config(workdir)
  if config.data.task != "token_file":
    raise ValueError(f"{workdir}: data.task is {config.data.task!r}; held-out openings need a "
                     "workdir trained on distillation data (data.task='token_file').")
  tokenizer = tokenizers.load_tokenizer(workdir_lib.vocab_path(workdir))
  eos = tokenizer.eos_id
  out = []
  for i, seq in enumerate(token_files.read_token_split(config.data.token_dir, "validation",
                                                       config.model.vocab_size)):
    ids = [int(t) for t in seq[:num_tokens] if int(t) != eos]
    text = tokenizer.decode(ids)
    if len(ids) == num_tokens and " " in text.strip():  # The last word may be cut: drop it.
      text = text.rstrip().rsplit(" ", 1)[0]
    if text.strip():
      out.append({"id": f"heldout-{i}", "prompt": text})
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--tokens", type=int, default=24, help="Tokens taken from each sequence.")
  ap.add_argument("--output", required=True)
  args = ap.parse_args()
  if args.tokens < 2:
    raise SystemExit(f"--tokens={args.tokens} must be >= 2")
  records = openings(args.workdir, args.tokens)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  print(f"wrote {len(records)} held-out openings to {args.output}")


if __name__ == "__main__":
  main()
