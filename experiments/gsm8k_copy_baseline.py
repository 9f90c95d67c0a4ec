"""What GSM8K accuracy a model gets without solving anything: answer a number of the question.

  python -m experiments.gsm8k_copy_baseline [--data_dir=../shared/data]

Scores, with decode.py's metric (bpdjax/eval/quality.py: the output's final number against the
reference's after "####"), three outputs that copy from the question: its last number, its first
number, and an oracle that picks whichever of its numbers is right (an upper bound for copying).
A tiny model whose accuracy is at the first two has learnt the answer's form, not arithmetic.
"""
from absl import app
from absl import flags

from bpdjax.data import eval_sets
from bpdjax.eval import quality

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding gsm8k/.")


def main(argv):
  del argv
  records = eval_sets.read_records("gsm8k", _DATA_DIR.value)
  hits = {"last number of the question": 0, "first number of the question": 0,
          "any number of the question (oracle)": 0}
  for record in records:
    gold = quality.final_number(record["reference"])
    numbers = [quality.final_number(n) for n in quality.numbers(record["question"])]
    hits["last number of the question"] += bool(numbers) and numbers[-1] == gold
    hits["first number of the question"] += bool(numbers) and numbers[0] == gold
    hits["any number of the question (oracle)"] += gold in numbers
  print(f"GSM8K evaluation split, {len(records)} problems, accuracy of copying baselines:")
  for name, count in hits.items():
    print(f"  {name}: {count / len(records):.4f} ({count})")


if __name__ == "__main__":
  app.run(main)
