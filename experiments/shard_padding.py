"""Whether the token shards pack training rows as full as the text pipeline does: the share of
non-padding tokens and the segments per row in the first batches of each stream, same config,
same vocabulary.

  python -m experiments.shard_padding --config=configs/small.py \
      --token_dir=gpu_inputs/shards [--batches=200]

The text stream is seqio's (data.pipeline: the task's documents cut by split_tokens, shuffled,
packed by seqio's DecoderFeatureConverter); the shard stream is data.token_batches (pieces of at
most seq_len shuffled per epoch, a row takes pieces while they fit). Both read the shards'
vocabulary (vocab.model beside manifest.json). Asked because configs/small.py trained on the
shards ran a little above the text pipeline's loss (docs/gpu-check.md).
"""
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from bpdjax import configuration
from bpdjax.data import pipeline
from bpdjax.data import token_batches

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config (task, seq_len, batch).")
_TOKEN_DIR = flags.DEFINE_string("token_dir", None, "Token shards of the same task.")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches read from each stream.")


def stream_stats(batches, count: int) -> dict:
  """Share of non-padding tokens, segments per row and mean segment length over `count`
  batches (segment ids: 0 on padding, 1, 2, ... per packed piece)."""
  filled, segments, rows, cells = 0, 0, 0, 0
  for _ in range(count):
    seg = next(batches)["decoder_segment_ids"]
    filled += int((seg > 0).sum())
    segments += int(seg.max(axis=1).sum())
    rows += seg.shape[0]
    cells += seg.size
  return {"filled": filled / cells, "segments_per_row": segments / rows,
          "tokens_per_segment": filled / max(segments, 1)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  text = _CONFIG.value
  vocab_path = os.path.join(_TOKEN_DIR.value, "vocab.model")
  shards = text.copy_and_resolve_references()
  shards.data.task, shards.data.token_dir = "token_file", _TOKEN_DIR.value
  n = _BATCHES.value
  rows = {"text pipeline (seqio)": stream_stats(
              pipeline.make_train_iterator(text, vocab_path), n),
          "token shards (numpy)": stream_stats(
              token_batches.make_train_iterator(shards, vocab_path), n)}
  print(f"task {text.data.task}, seq_len {text.data.seq_len}, batch {text.batch_size}, "
        f"first {n} batches")
  print("| stream | non-padding share | segments per row | tokens per segment |")
  print("|---|---|---|---|")
  for name, s in rows.items():
    print(f"| {name} | {s['filled']:.4f} | {s['segments_per_row']:.3f} | "
          f"{s['tokens_per_segment']:.1f} |")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "token_dir"])
  configuration.run_app(main)
