"""AR vs BPD decoding speed, side by side in one process, at batch 1 and batch 8.

  python benchmarks/decode_speed.py --workdir=workdirs/small

Both methods run the same prompts through the same jitted loop (compiled before timing); the
rounds alternate methods so that machine noise hits both. Prints tokens/s, block efficiency and
the wall-clock ratio, and checks BPD's speedup against 0.8 x its block efficiency at batch 1.
"""
import os
import statistics
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bpdjax import api  # pylint: disable=g-import-not-at-top,wrong-import-position
from bpdjax.data import eval_tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from bpdjax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from bpdjax.decoding import generate  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/small", "Trained workdir.")
_TASK = flags.DEFINE_string("task", "lambada", "Evaluation task whose prompts are decoded.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 16, "Prompts per round.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens generated per prompt.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds per method (median reported).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")


def measure(generator, prompts, method, batch_size, max_new_tokens):
  generations, timings = generator.generate(prompts, method, max_new_tokens, batch_size)
  tokens = sum(len(g.tokens) for g in generations)
  calls = sum(g.calls for g in generations)
  return tokens / sum(t.seconds for t in timings), tokens / calls, generations


def main(argv):
  del argv
  loaded = api.load(_WORKDIR.value)
  config = loaded.model.config
  examples = eval_tasks.load_prompts(
      _TASK.value, loaded.config.data_dir, vocab_lib.workdir_vocab_path(_WORKDIR.value),
      _NUM_PROMPTS.value, max_prompt_tokens=config.max_len - _MAX_NEW.value)
  prompts = [e["prompt_tokens"] for e in examples]
  generator = generate.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  print(f"workdir {_WORKDIR.value} (step {loaded.step}), h={config.num_heads_bpd}, "
        f"{len(prompts)} {_TASK.value} prompts, max_new_tokens={_MAX_NEW.value}")
  for batch_size in map(int, _BATCHES.value):
    for method in ("ar", "bpd"):   # Compile (and warm up) outside the timed rounds.
      measure(generator, prompts[:batch_size], method, batch_size, _MAX_NEW.value)
    speed = {"ar": [], "bpd": []}
    outputs = {}
    for _ in range(_ROUNDS.value):
      for method in ("ar", "bpd"):
        tps, be, gens = measure(generator, prompts, method, batch_size, _MAX_NEW.value)
        speed[method].append(tps)
        outputs[method] = gens
        if method == "bpd":
          bpd_be = be
    identical = all((a.tokens == b.tokens).all() and len(a.tokens) == len(b.tokens)
                    for a, b in zip(outputs["ar"], outputs["bpd"]))
    ar, bpd = statistics.median(speed["ar"]), statistics.median(speed["bpd"])
    ratio = bpd / ar
    print(f"batch {batch_size}: AR {ar:8.1f} tok/s | BPD {bpd:8.1f} tok/s | speedup {ratio:.2f}x "
          f"| BPD block efficiency {bpd_be:.3f} | speedup / BE {ratio / bpd_be:.2f} "
          f"| identical outputs {identical}")
    if batch_size == 1:
      print(f"  target speedup >= 0.8 x BE = {0.8 * bpd_be:.2f}: "
            f"{'met' if ratio >= 0.8 * bpd_be else 'NOT met'}")


if __name__ == "__main__":
  app.run(main)
