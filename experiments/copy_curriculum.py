"""A pure-copying fine-tuning set from the SQuAD fine-tune part's paragraphs (never its
evaluation part): can fine-tuning teach a model to copy from its context?

  python -m experiments.copy_curriculum --output=out/copy.jsonl [--data_dir=../shared/data]
  python train.py --config=configs/finetune_tinystories.py:squad --workdir=workdirs/ts_copy \
      --config.data.sft_tasks=jsonl --config.data.sft_jsonl=out/copy.jsonl \
      --config.num_train_steps=300 --config.warmup_steps=30
  python -m experiments.induction_probe --workdir=workdirs/ts_ffn9 --workdir=workdirs/ts_copy

Per paragraph of at least 40 words, up to `per_paragraph` examples (seeded): prompt = the
paragraph, a blank line and `cue_words` consecutive words of it that occur once in it (starting
past 30% of its words), reference = the `target_words` words that follow them there. Every
target token is in the prompt right after the cue's tokens, so a model with induction heads
predicts it by copying. JSONL lines {"id", "prompt", "reference"} (supervised task "jsonl").
"""
import json
import os

from absl import app
from absl import flags
import numpy as np

from bpdjax.data import eval_sets

_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding squad_v1.1/.")
_PER_PARAGRAPH = flags.DEFINE_integer("per_paragraph", 4, "Examples per paragraph at most.")
_CUE_WORDS = flags.DEFINE_integer("cue_words", 4, "Words of the paragraph ending the prompt.")
_TARGET_WORDS = flags.DEFINE_integer("target_words", 10, "Words to copy after the cue.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the cue positions.")


def copy_examples(context: str, cue_words: int, target_words: int, limit: int,
                  rng: np.random.Generator) -> list[tuple[str, str]]:
  """(prompt, reference) pairs of one paragraph (see the module docstring); [] when short."""
  words = context.split()
  if len(words) < 40:
    return []
  counts = {}
  for i in range(len(words) - cue_words + 1):
    key = tuple(words[i:i + cue_words])
    counts[key] = counts.get(key, 0) + 1
  starts = [i for i in range(int(0.3 * len(words)), len(words) - cue_words - target_words)
            if counts[tuple(words[i:i + cue_words])] == 1]
  return [(f"{context}\n\n{' '.join(words[i:i + cue_words])}",
           " ".join(words[i + cue_words:i + cue_words + target_words]))
          for i in rng.permutation(starts)[:limit]]


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  records = eval_sets.read_finetune_records("squad", _DATA_DIR.value)
  contexts = sorted({r["context"] for r in records})
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  written = 0
  with open(_OUTPUT.value, "w", encoding="utf-8") as f:
    for c, context in enumerate(contexts):
      pairs = copy_examples(context, _CUE_WORDS.value, _TARGET_WORDS.value,
                            _PER_PARAGRAPH.value, rng)
      for j, (prompt, reference) in enumerate(pairs):
        f.write(json.dumps({"id": f"copy-{c}-{j}", "prompt": prompt,
                            "reference": reference}) + "\n")
        written += 1
  print(f"{_OUTPUT.value}: {written} copy examples from {len(contexts)} fine-tune paragraphs")


if __name__ == "__main__":
  app.run(main)
