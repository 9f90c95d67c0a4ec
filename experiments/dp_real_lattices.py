"""The exact n-gram DP on a trained model's own lattices, against brute-force enumeration.

  python -m experiments.dp_real_lattices --workdir=workdirs/small \
      --arpa=workdirs/small/ngram4.arpa

tests/test_ngram.py checks the DP against enumeration on random lattices of a toy LM; this runs
the same check where the refinement table's n-gram rows come from: per evaluation prompt, the
heads' top-k lattice (k = 3, so 3^(h-1) paths enumerate quickly) at two positions of the prompt,
the real n-gram history, alpha 0.25 and 0.5, the p best paths.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import api
from bpdjax import workdir as workdir_lib
from bpdjax.data import eval_tasks
from bpdjax.decoding import lattice
from bpdjax.ngram import arpa
from bpdjax.ngram import dp
from bpdjax.ngram import tables as ngram_tables
from bpdjax.ngram.reference import brute_force


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="workdirs/small")
  ap.add_argument("--arpa", default="workdirs/small/ngram4.arpa")
  ap.add_argument("--task", default="lambada")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--k", type=int, default=3)
  ap.add_argument("--p", type=int, default=4)
  args = ap.parse_args()
  m = api.load(args.workdir)
  h = m.model.config.num_heads_bpd
  examples = eval_tasks.load_prompts(args.task, m.config.data_dir,
                                     workdir_lib.vocab_path(args.workdir), args.prompts,
                                     max_prompt_tokens=64, seed=1)
  lm = arpa.parse_arpa(args.arpa, m.model.config.vocab_size)
  tables = ngram_tables.build_tables(lm)
  same = total = changed = 0
  for e in examples:
    tokens = np.asarray(e["prompt_tokens"], np.int32)[None]
    logits, _ = m.model.apply({"params": m.params}, tokens,
                              jnp.arange(tokens.shape[1])[None])               # [1, L, h, V]
    for cut in (tokens.shape[1] - 1, tokens.shape[1] - 5):
      head = logits[:, cut]                                                     # [1, h, V]
      root = int(jnp.argmax(head[0, 0]))
      ids, logp = jax.device_get(lattice.head_lattice(head[:, 1:], args.k))
      lat_ids = np.concatenate([np.full((1, args.k), root, np.int32), ids[0]], 0)
      lat_lp = np.concatenate([np.full((1, args.k), -np.inf, np.float32), logp[0]], 0)
      lat_lp[0, 0] = 0.0
      history = [int(x) for x in tokens[0, :cut + 1]][-(lm.order - 1):]
      for alpha in (0.25, 0.5):
        ref = brute_force(lm, lat_ids, lat_lp, history, alpha)
        paths, _ = dp.best_paths(tables, lat_ids, lat_lp, history, alpha, args.p)
        got = [tuple(x.tolist()) for x in paths]
        same += got == [r[2] for r in ref[:args.p]]
        total += 1
        changed += got[0] != tuple([root] + [int(x) for x in ids[0, :, 0]])
  print(f"{args.workdir} with {args.arpa} (order {lm.order}), k={args.k}, h={h}: the DP's "
        f"{args.p} best paths == brute-force enumeration on {same}/{total} lattices; its best "
        f"path differs from the vanilla (argmax) draft on {changed}/{total}")


if __name__ == "__main__":
  main()
