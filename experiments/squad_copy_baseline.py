"""What SQuAD F1 a model gets by copying words of the paragraph, without reading the question or
with the crudest look at it: the floor a fine-tuned model's F1 is measured against.

  python -m experiments.squad_copy_baseline [--data_dir=../shared/data]

Scores, with decode.py's metric (bpdjax/eval/quality.py: official normalisation, F1 the
maximum over the question's answers), outputs copied from the paragraph of each question of
the evaluation part: its first word, its first 4 words, a random word and a random capitalised
word (seeded), and the 3 words after the 4-word window of the paragraph that holds the most
of the question's words. A model below the first rows does not copy from its context.
"""
import random

from absl import app
from absl import flags

from bpdjax.data import eval_sets
from bpdjax.eval import quality

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding squad_v1.1/.")
_WINDOW = 4
_SPAN = 3


def after_best_match(context: str, question: str) -> str:
  """The _SPAN words after the _WINDOW-word window of `context` holding the most distinct
  normalised words of `question` (the first such window; the first words when none holds any)."""
  words = context.split()
  asked = set(quality.normalize_answer(question).split())
  best, best_end = 0, 0
  for end in range(_WINDOW, len(words) - _SPAN + 1):
    window = {quality.normalize_answer(w) for w in words[end - _WINDOW:end]}
    hits = len(window & asked)
    if hits > best:
      best, best_end = hits, end
  return " ".join(words[best_end:best_end + _SPAN])


def _capitalised(words: list[str]) -> list[str]:
  return [w for w in words if w[:1].isupper()] or words


# name -> (words of the paragraph, question, seeded rng) -> the copied output.
BASELINES = {
    "first word of the paragraph": lambda words, question, rng: words[0],
    "first 4 words of the paragraph": lambda words, question, rng: " ".join(words[:4]),
    "a random word of the paragraph": lambda words, question, rng: rng.choice(words),
    "a random capitalised word of the paragraph":
        lambda words, question, rng: rng.choice(_capitalised(words)),
    "3 words after the window that best matches the question":
        lambda words, question, rng: after_best_match(" ".join(words), question),
}


def main(argv):
  del argv
  records = eval_sets.read_records("squad", _DATA_DIR.value)
  print(f"SQuAD v1.1 evaluation part, {len(records)} questions, F1 of copying baselines:")
  for name, baseline in BASELINES.items():
    rng = random.Random(0)
    texts = [baseline(r["context"].split(), r["question"], rng) for r in records]
    f1 = quality.score_examples("squad", records, texts)["f1"]
    print(f"  {name}: {quality.summarize({'f1': f1})['f1']:.4f} "
          f"({sum(v > 0 for v in f1)} with any overlap)")


if __name__ == "__main__":
  app.run(main)
