"""Whether a model copies from its context (has induction heads): its LM's loss and top-1
accuracy on the second copy of a repeated segment, against the first copy.

  python -m experiments.induction_probe --workdir=workdirs/ts_ffn9 [--workdir=...] \
      [--data_dir=../shared/data] [--num=16] [--segment=64]

Per workdir (head 1, the LM): rows of BOS + segment + the same segment, for `num` segments of
random token ids (ids 3.., seeded) and `num` of the first `segment` tokens of SQuAD evaluation
paragraphs (Wikipedia). A model with in-context copying (Olsson et al. 2022) predicts the second
copy almost perfectly: its loss there falls far below the first copy's and its copy accuracy
nears 1. SQuAD answers are spans of the paragraph, so a model without it cannot answer them
however it is fine-tuned (experiments/squad_copy_baseline.py gives what copying would score).
"""
import json

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import bpdjax
from bpdjax.data import eval_sets

_WORKDIRS = flags.DEFINE_multi_string("workdir", [], "Workdirs (or model folders) to probe.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding squad_v1.1/.")
_NUM = flags.DEFINE_integer("num", 16, "Segments of each kind.")
_SEGMENT = flags.DEFINE_integer("segment", 64, "Tokens per segment (each row holds it twice).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random segments and the paragraphs' choice.")


def repeat_stats(loaded, segments: np.ndarray) -> dict:
  """LM loss (nats/token) on the first and second copy and top-1 copy accuracy on the second.

  Args:
    segments: int32 [n, S] token ids; each row is decoded as [BOS, segment, segment] (without
      the BOS for a tokenizer that has none).
  """
  n, s = segments.shape
  p = int(loaded.vocab.bos_id is not None)
  bos = np.full((n, p), loaded.vocab.bos_id or 0, np.int32)
  tokens = jnp.asarray(np.concatenate([bos, segments, segments], 1), jnp.int32)   # [n, p+2S]
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  logits, _ = loaded.model.apply({"params": loaded.params}, tokens, positions)   # [n, L, h, V]
  logp = jax.nn.log_softmax(logits[:, :-1, 0].astype(jnp.float32), -1)         # [n, L-1, V]
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]            # [n, L-1]
  hit = jnp.argmax(logp, -1) == tokens[:, 1:]
  # Prediction t reads token t+1. The first copy is tokens p..p+S-1: its predictions are p..
  # p+S-2 (its first token has no context to predict it); the second copy's are p+S-1 on.
  return {"first_copy_nll": float(nll[:, p:p + s - 1].mean()),
          "second_copy_nll": float(nll[:, p + s - 1:].mean()),
          "copy_accuracy": float(hit[:, p + s - 1:].mean())}


def paragraph_segments(loaded, data_dir: str, num: int, segment: int,
                       rng: np.random.Generator) -> np.ndarray:
  """int32 [<= num, segment]: the first tokens of distinct SQuAD evaluation paragraphs."""
  contexts = sorted({r["context"] for r in eval_sets.read_records("squad", data_dir)})
  rows = []
  for i in rng.permutation(len(contexts)):
    ids = loaded.vocab.encode(contexts[i])
    if ids and ids[0] == loaded.vocab.bos_id:   # Tokenizers that add BOS themselves.
      ids = ids[1:]
    ids = ids[:segment]
    if len(ids) == segment:
      rows.append(ids)
    if len(rows) == num:
      break
  return np.asarray(rows, np.int32)


def main(argv):
  del argv
  if not _WORKDIRS.value:
    raise app.UsageError("--workdir: give at least one workdir to probe.")
  print("| model | segments | first copy nll | second copy nll | copy accuracy |")
  print("|---|---|---|---|---|")
  for path in _WORKDIRS.value:
    loaded = bpdjax.load(path)
    rng = np.random.default_rng(_SEED.value)
    kinds = {"random ids": rng.integers(3, loaded.vocab.vocab_size,
                                        size=(_NUM.value, _SEGMENT.value)),
             "squad paragraphs": paragraph_segments(loaded, _DATA_DIR.value, _NUM.value,
                                                    _SEGMENT.value, rng)}
    for kind, segments in kinds.items():
      r = repeat_stats(loaded, segments)
      print(f"| {path} | {kind} | {r['first_copy_nll']:.2f} | {r['second_copy_nll']:.2f} | "
            f"{r['copy_accuracy']:.3f} |")
      print(json.dumps({"workdir": path, "segments": kind, **r}), flush=True)


if __name__ == "__main__":
  app.run(main)
