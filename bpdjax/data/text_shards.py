"""Token shards of a local text corpus, for data.task "token_file" on machines without
TensorFlow (`data.token_batches` reads them with numpy alone):

  python -m bpdjax.data.text_shards --config=configs/gpu_base.py --output=DIR \\
      [--task=wiki] [--max_train_tokens=N] [--config.data.vocab_path=...]

--task ("wiki" or "tiny_shakespeare"; it replaces the config's data.task) gives the corpus,
the document split (data.eval_fraction: the text pipeline's own train / validation split of
documents) and the vocabulary (`vocab.ensure_vocabulary`: data.vocab_path, else one trained on
the train split and cached under data.vocab_dir), copied to DIR/vocab.model. Each document is encoded as the text
pipeline encodes it (the seqio vocabulary, EOS appended) and stored whole, so a run on the
shards reads the same pieces as a run on the text. Tokens are stored as uint16 (vocabularies of
at most 65,536 ids), zip-compressed. With --max_train_tokens the train split stops after the
first documents (in corpus order) that reach N tokens; the validation split is always whole.

Output: train-NNNNN-of-MMMMM.npz, validation-NNNNN-of-MMMMM.npz, vocab.model and manifest.json
(format, vocab_size, eos_id, bos_id null, model_format "sentencepiece", tokenizer "vocab.model",
vocab_sha256, the corpus, the split rule, per-split documents and tokens, seconds).
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Iterator

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from bpdjax import configuration
from bpdjax import workdir as workdir_lib
from bpdjax.data import tasks
from bpdjax.data import token_files
from bpdjax.data import vocab as vocab_lib
from bpdjax.data import vocabulary

SHARD_TOKENS = 4_000_000  # Tokens per shard file (a shard is read whole).


def _documents(config: ml_collections.ConfigDict, split: str) -> Iterator[str]:
  """The documents of one split of a local task, in corpus order, as the text pipeline reads
  them (the same split of documents)."""
  if config.data.task == "wiki":
    files = tasks.list_wiki_files(tasks.corpus_path(config))
    for example in tasks.wiki_dataset(files, split, config.data.eval_fraction).as_numpy_iterator():
      yield example["text"].decode("utf-8")
  elif config.data.task == "tiny_shakespeare":
    yield from tasks.shakespeare_chunks(tasks.corpus_path(config),
                                        config.data.eval_fraction)[split]
  else:
    raise ValueError(f"config.data.task={config.data.task!r} has no local corpus to shard "
                     "(tasks with one: wiki, tiny_shakespeare).")


def write_text_shards(config: ml_collections.ConfigDict, output: str, max_train_tokens: int = 0,
                      shard_tokens: int = SHARD_TOKENS, overwrite: bool = False,
                      log=print) -> dict:
  """Writes the token shards, vocab.model and manifest.json of `config`'s corpus to `output`;
  returns the manifest. ValueError on bad settings (before anything is written)."""
  if max_train_tokens < 0:
    raise ValueError(f"--max_train_tokens={max_train_tokens} must be >= 0 (0: the whole split)")
  if shard_tokens < 1:
    raise ValueError(f"--shard_tokens={shard_tokens} must be >= 1")
  if config.model.vocab_size > 65536:
    raise ValueError(f"model.vocab_size={config.model.vocab_size}: uint16 shards hold at most "
                     "65,536 ids")
  if not 0.0 < config.data.eval_fraction < 1.0:
    raise ValueError(f"data.eval_fraction={config.data.eval_fraction} must be in (0, 1)")
  manifest_path = os.path.join(output, token_files.TOKEN_MANIFEST)
  if os.path.exists(manifest_path) and not overwrite:
    raise ValueError(f"{output} already holds token shards (manifest.json); pass --overwrite to "
                     "replace them")
  t0 = time.time()
  os.makedirs(output, exist_ok=True)
  for old in glob.glob(os.path.join(glob.escape(output), "*.npz")) + [
      os.path.join(output, workdir_lib.VOCAB_FILE)]:
    if os.path.exists(old):
      os.remove(old)
  vocab_path = vocab_lib.ensure_vocabulary(config, output)  # -> output/vocab.model
  vocab = vocabulary.load_vocabulary(vocab_path)
  splits = {}
  for split in tasks.SPLITS:
    cap = max_train_tokens if split == "train" else 0
    shards, current, count, docs, tokens = [], [], 0, 0, 0
    for text in _documents(config, split):
      ids = np.asarray(list(vocab.encode(text)) + [vocab.eos_id], np.int64)
      current.append(ids)
      count += ids.size
      docs += 1
      tokens += ids.size
      if count >= shard_tokens:
        shards.append(current)
        current, count = [], 0
      if cap and tokens >= cap:
        break
    if current or not shards:
      shards.append(current)
    files = []
    for s, sequences in enumerate(shards):
      name = f"{split}-{s:05d}-of-{len(shards):05d}.npz"
      token_files.write_token_shard(os.path.join(output, name), sequences, dtype=np.uint16,
                                    compress=True)
      files.append(name)
    splits[split] = {"files": files, "documents": docs, "tokens": tokens}
    log(f"  {split}: {docs:,} documents, {tokens:,} tokens in {len(files)} shard(s), "
        f"{time.time() - t0:.1f} s")
  manifest = dict(
      format=token_files.FORMAT, source="bpdjax.data.text_shards", task=config.data.task,
      corpus=os.path.abspath(tasks.corpus_path(config)), eval_fraction=config.data.eval_fraction,
      split_rule=(f"the {config.data.task} task's own document split at data.eval_fraction "
                  "(bpdjax.data.tasks)"),
      vocab_size=config.model.vocab_size, bos_id=None, eos_id=int(vocab.eos_id),
      model_format="sentencepiece", tokenizer=os.path.basename(vocab_path),
      vocab_sha256=token_files.file_sha256(vocab_path), dtype="uint16",
      max_train_tokens=max_train_tokens, splits=splits,
      tokens=sum(s["tokens"] for s in splits.values()),
      bytes=sum(os.path.getsize(os.path.join(output, f)) for s in splits.values()
                for f in s["files"]),
      seconds=round(time.time() - t0, 1))
  tmp = manifest_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, manifest_path)
  log(f"Wrote {manifest['tokens']:,} tokens ({manifest['bytes'] / 2**20:.1f} MiB) to {output} "
      f"in {manifest['seconds']} s")
  return manifest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  f.config.data.task = f.task
  write_text_shards(f.config, f.output, max_train_tokens=f.max_train_tokens,
                    shard_tokens=f.shard_tokens, overwrite=f.overwrite)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Run config (task, vocabulary, split).",
                                  lock_config=True)
  flags.DEFINE_string("output", None, "Output folder (shards, vocab.model, manifest.json).")
  flags.DEFINE_string("task", "wiki", "The local text task to shard (replaces data.task).")
  flags.DEFINE_integer("max_train_tokens", 0, "Stop the train split at N tokens (0: whole).")
  flags.DEFINE_integer("shard_tokens", SHARD_TOKENS, "Tokens per shard file.")
  flags.DEFINE_bool("overwrite", False, "Replace existing shards in --output.")
  flags.mark_flags_as_required(["config", "output"])
  configuration.run_app(main)
