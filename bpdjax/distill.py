"""Self-distillation data: sequences sampled from a pretrained model by bpdjax's own decoder.

  python -m bpdjax.distill --hf_model=../shared/data/models/TinyStories-656K \
      --output=workdirs/ts_distill --num_sequences=5000 --seq_len=256 --temperature=0.3 --seed=0

(or --llama2c_bin=... --llama2c_tokenizer=... for a llama2.c checkpoint). Every sequence starts
from BOS (or from an opening of --openings, one text per line, used in turn) and is sampled with
`generator.Generator` with plain decoding until EOS or --seq_len tokens. Stored per sequence: the
tokens after BOS (opening tokens, then generated ones, EOS included when sampled), at most
--seq_len of them.

Output (the "token_file" data task reads it: data.task="token_file", data.token_dir=OUTPUT):
  train-NNNNN-of-MMMMM.npz, validation-NNNNN-of-MMMMM.npz   arrays tokens [sum n] int32 and
                                                             lengths [sequences] int32
  manifest.json   model, tokenizer, vocab_size, bos_id, eos_id, the settings, counts, timing and
                  base_checksum (sha256 of the base parameters, `params.params_checksum`,
                  the same value a train_heads_only run logs as base_checksum_imported).

Split rule (deterministic, independent of the batch size): sequence i (0-based, in generation
order) is held out iff floor((i + 1) * eval_fraction) > floor(i * eval_fraction), i.e. evenly
spread, round-down(num_sequences * eval_fraction) of them. With the same flags (batch size
included) the output is identical.
"""
from __future__ import annotations

import glob
import json
import math
import os
import time
from typing import Optional, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax.data import token_files
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import sampling
from bpdjax.importers import hf
from bpdjax.importers import llama2c

FORMAT = token_files.FORMAT


def is_held_out(index: int, eval_fraction: float) -> bool:
  """The split rule: whether sequence `index` goes to the validation split."""
  return math.floor((index + 1) * eval_fraction) > math.floor(index * eval_fraction)


def _import(hf_model: str, llama2c_bin: str, llama2c_tokenizer: str):
  if bool(hf_model) == bool(llama2c_bin):
    raise ValueError("Give exactly one model: --hf_model, or --llama2c_bin with "
                     "--llama2c_tokenizer")
  if hf_model:
    cfg, params, tok = hf.import_hf(hf_model, num_heads_bpd=1)
    return cfg, params, tok, {"model": os.path.abspath(hf_model), "model_format": "hf",
                              "tokenizer": os.path.abspath(tok.path)}
  if not llama2c_tokenizer:
    raise ValueError("--llama2c_bin needs --llama2c_tokenizer (its tokenizer .bin)")
  cfg, params, tok = llama2c.import_llama2c(llama2c_bin, llama2c_tokenizer, num_heads_bpd=1)
  return cfg, params, tok, {"model": os.path.abspath(llama2c_bin), "model_format": "llama2c",
                            "tokenizer": os.path.abspath(llama2c_tokenizer)}


def distill(output: str, num_sequences: int, seq_len: int, hf_model: str = "",
            llama2c_bin: str = "", llama2c_tokenizer: str = "", temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
            eval_fraction: float = 0.05, shard_size: int = 1000,
            openings: Optional[Sequence[str]] = None, overwrite: bool = False,
            log=print) -> dict:
  """Samples `num_sequences` sequences and writes the shards and manifest.json to `output`.

  Returns the manifest. Raises ValueError on bad settings (before the model is loaded, except
  for checks that need it) and FileNotFoundError for a missing model file.
  """
  if num_sequences < 1:
    raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  if batch_size < 1 or shard_size < 1:
    raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
  if os.path.exists(os.path.join(output, token_files.TOKEN_MANIFEST)) and not overwrite:
    raise ValueError(f"{output} already holds self-distillation data (manifest.json); pass "
                     f"--overwrite to replace it")
  sampling_config = sampling.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)

  cfg, params, tok, source = _import(hf_model, llama2c_bin, llama2c_tokenizer)
  sampling_config.validate(cfg.vocab_size)
  if tok.bos_id is None and not openings:
    raise ValueError("The tokenizer has no BOS token: give --openings to start sequences from")
  prefixes = [list(tok.encode(text)) for text in (openings or [""])]
  if tok.bos_id is None:
    prefixes = [[int(t) for t in p] for p in prefixes]
    if any(not p for p in prefixes):
      raise ValueError("An opening encodes to no tokens (the tokenizer has no BOS)")
  elif any(not p or p[0] != tok.bos_id for p in prefixes):
    prefixes = [[tok.bos_id] + [t for t in p if t != tok.bos_id] for p in prefixes]
  # Tokens stored before the generated ones: the opening without its BOS.
  stored_prefix = [p[1:] if tok.bos_id is not None else p for p in prefixes]
  longest = max(len(p) for p in stored_prefix)
  max_new = seq_len - longest
  if max_new < 1:
    raise ValueError(f"seq_len={seq_len} leaves no room to generate after the longest opening "
                     f"({longest} tokens)")
  if max(len(p) for p in prefixes) + max_new > cfg.max_len:
    raise ValueError(f"seq_len={seq_len} (+ BOS) exceeds the model's max_len={cfg.max_len}")

  base_checksum = params_lib.params_checksum(params, exclude_prefix="head_")
  generator = generator_lib.Generator(model_lib.Transformer(cfg), params, eos_id=tok.eos_id)
  prompts = [np.asarray(prefixes[i % len(prefixes)], np.int32) for i in range(num_sequences)]
  log(f"Sampling {num_sequences} sequences of up to {seq_len} tokens (T={temperature}, "
      f"top_k={top_k}, top_p={top_p}, seed={seed}, batch {batch_size}) from {source['model']}")
  done = [0, 0]                                  # Sequences, batches.
  every = max(1, -(-num_sequences // batch_size) // 10)
  t0 = time.time()

  def progress(rows):
    done[0] += rows
    done[1] += 1
    if done[1] % every == 0 or done[0] == num_sequences:
      log(f"  {done[0]}/{num_sequences} sequences, {time.time() - t0:.1f} s")

  out, timings = generator.generate(prompts, max_new_tokens=max_new,
                                    batch_size=batch_size, sampling_config=sampling_config,
                                    rng=jax.random.PRNGKey(seed), progress=progress)
  wall = time.time() - t0
  sequences = []
  for i, g in enumerate(out):
    seq = np.concatenate([np.asarray(stored_prefix[i % len(prefixes)], np.int32),
                          np.asarray(g.tokens, np.int32)])[:seq_len]
    sequences.append(seq)
  splits = {"train": [], "validation": []}
  for i, seq in enumerate(sequences):
    splits["validation" if is_held_out(i, eval_fraction) else "train"].append(seq)

  os.makedirs(output, exist_ok=True)
  for old in glob.glob(os.path.join(glob.escape(output), "*.npz")):
    os.remove(old)
  split_info = {}
  for split, seqs in splits.items():
    num_shards = max(1, -(-len(seqs) // shard_size))
    files = []
    for s in range(num_shards):
      name = f"{split}-{s:05d}-of-{num_shards:05d}.npz"
      token_files.write_token_shard(os.path.join(output, name),
                              seqs[s * shard_size:(s + 1) * shard_size])
      files.append(name)
    split_info[split] = {"files": files, "sequences": len(seqs),
                         "tokens": int(sum(len(x) for x in seqs))}
  total_tokens = int(sum(len(x) for x in sequences))
  generated = int(sum(len(g.tokens) for g in out))
  manifest = dict(
      format=FORMAT, **source, vocab_size=cfg.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id,
      base_checksum=base_checksum, method=methods.reference(), num_sequences=num_sequences, seq_len=seq_len,
      temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size,
      openings=list(openings or []), eval_fraction=eval_fraction,
      split_rule="sequence i is held out iff floor((i+1)*eval_fraction) > floor(i*eval_fraction)",
      splits=split_info, tokens=total_tokens, generated_tokens=generated,
      ended_with_eos=int(sum(1 for g in out if len(g.tokens) and tok.eos_id is not None
                             and int(g.tokens[-1]) == tok.eos_id)),
      mean_length=total_tokens / num_sequences, wall_seconds=round(wall, 2),
      decode_seconds=round(sum(t.seconds for t in timings), 2),
      generated_tokens_per_second=round(generated / max(wall, 1e-9), 1),
      device=f"{jax.device_count()} x {jax.devices()[0].device_kind}")
  tmp = os.path.join(output, token_files.TOKEN_MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, os.path.join(output, token_files.TOKEN_MANIFEST))
  log(f"Wrote {split_info['train']['sequences']} train / "
      f"{split_info['validation']['sequences']} validation sequences ({total_tokens:,} tokens, "
      f"mean length {manifest['mean_length']:.1f}, {manifest['ended_with_eos']} ended with EOS) "
      f"to {output} in {wall:.1f} s ({manifest['generated_tokens_per_second']:,.0f} generated "
      f"tok/s, compilation included)")
  log(f"base_checksum {base_checksum}")
  return manifest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  openings = None
  if f.openings:
    with open(f.openings, encoding="utf-8") as fh:
      openings = [line.rstrip("\n") for line in fh if line.strip()]
    if not openings:
      raise ValueError(f"--openings file {f.openings} holds no text")
  distill(f.output, f.num_sequences, f.seq_len, hf_model=f.hf_model, llama2c_bin=f.llama2c_bin,
          llama2c_tokenizer=f.llama2c_tokenizer, temperature=f.temperature, top_k=f.top_k,
          top_p=f.top_p, seed=f.seed, batch_size=f.batch_size, eval_fraction=f.eval_fraction,
          shard_size=f.shard_size, openings=openings, overwrite=f.overwrite)


def _define_flags():
  flags.DEFINE_string("hf_model", "", "Hugging Face Llama folder.")
  flags.DEFINE_string("llama2c_bin", "", "llama2.c checkpoint .bin (instead of --hf_model).")
  flags.DEFINE_string("llama2c_tokenizer", "", "Its tokenizer .bin.")
  flags.DEFINE_string("output", None, "Output folder (token shards + manifest.json).")
  flags.DEFINE_integer("num_sequences", 1000, "Sequences to sample.")
  flags.DEFINE_integer("seq_len", 256, "Most tokens stored per sequence (BOS not counted).")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0 = greedy).")
  flags.DEFINE_integer("top_k", 0, "Top-k filter (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus filter (1 = off).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("batch_size", 32, "Sequences sampled together.")
  flags.DEFINE_float("eval_fraction", 0.05, "Share of sequences held out (validation split).")
  flags.DEFINE_integer("shard_size", 1000, "Sequences per .npz shard.")
  flags.DEFINE_string("openings", "", "Optional text file: one opening per line, used in turn.")
  flags.DEFINE_bool("overwrite", False, "Replace existing data in --output.")
  flags.mark_flags_as_required(["output"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
