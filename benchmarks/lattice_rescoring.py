"""Global n-gram lattice rescoring speed: WFST (pynini, host) vs exact DP (JAX), paper settings.

Usage:
  .venv/bin/python -m benchmarks.lattice_rescoring [--mb=3] [--order=4] [--h=9]
      [--k=16] [--p=16] [--lattices=200] [--batch=64] [--alpha=0.5]
      [--save_lattices=L.npz]                 # keep the lattices, LM path and DP paths
  # The DP alone on another machine (e.g. a GPU) over saved lattices, paths checked against the
  # saved ones (the ARPA travels beside the .npz):
  python -m benchmarks.lattice_rescoring --load_lattices=L.npz --arpa=o4.arpa \
      --backends=dp

LM: a KenLM (lmplz) modified-KN n-gram over the first --mb MB of text of the Wikipedia corpus in
DATA_DIR/wikipedia_en_2015 (DATA_DIR: configs/default.py's data_dir, i.e. ../shared/data or
$BPDJAX_DATA_DIR), tokenized with workdirs/small/vocab.model when it exists (else a
SentencePiece model trained on the fly into /tmp). Builds KenLM if needed.

Lattices are corpus-derived (held-out text after the LM's training text): at a random text
position, position 0 holds the true next token alone (k_0 = 1, as in decoding); position i >= 1
holds k candidates -- the true token t+i with probability 0.8^i, the rest sampled without
replacement from the corpus unigram distribution -- with head log-probs log_softmax(N(0, 2))
sorted descending and assigned in random order (the true token gets no special score). The
history is the n-1 true tokens before the position.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks import results as results_page


def _text_lines(max_bytes: int, skip_bytes: int = 0):
  from bpdjax.configs import default  # pylint: disable=g-import-not-at-top
  data_dir = default.get_config().data_dir
  files = sorted(glob.glob(os.path.join(data_dir, "wikipedia_en_2015", "*", "wiki_*")))
  if not files:
    raise FileNotFoundError(f"No Wikipedia corpus under {data_dir}/wikipedia_en_2015")
  seen = 0
  for path in files:
    with open(path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line or line.startswith("<doc") or line.startswith("</doc"):
          continue
        seen += len(line) + 1
        if seen <= skip_bytes:
          continue
        if seen > skip_bytes + max_bytes:
          return
        yield line


def _vocab(tmp: str):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  path = "workdirs/small/vocab.model"
  if not os.path.exists(path):
    text = os.path.join(tmp, "sp_train.txt")
    with open(text, "w") as f:
      f.write("\n".join(_text_lines(2_000_000)))
    spm.SentencePieceTrainer.train(input=text, model_prefix=os.path.join(tmp, "sp"),
                                   vocab_size=4096, model_type="unigram")
    path = os.path.join(tmp, "sp.model")
  return spm.SentencePieceProcessor(model_file=path), path


def _lattices(rng, corpus_ids, unigram, n_lat, h, k, n):
  vocab = unigram.shape[0]
  ids = np.zeros((n_lat, h, k), np.int32)
  logp = np.full((n_lat, h, k), -np.inf, np.float32)
  hist = np.zeros((n_lat, n - 1), np.int32)
  for b in range(n_lat):
    pos = int(rng.integers(n - 1, len(corpus_ids) - h))
    hist[b] = corpus_ids[pos - n + 1:pos]
    truth = corpus_ids[pos:pos + h]
    ids[b, 0, :] = truth[0]
    logp[b, 0, 0] = 0.0
    for i in range(1, h):
      cands = list(rng.choice(vocab, size=k + 8, replace=False, p=unigram))
      cands = [c for c in cands if c != truth[i]]
      if rng.random() < 0.8 ** i:
        cands = [truth[i]] + cands
      cands = np.array(cands[:k])
      rng.shuffle(cands)
      ids[b, i] = cands
      z = rng.normal(0, 2, size=k)
      lp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
      logp[b, i] = np.sort(lp)[::-1]
  return ids, logp, hist


def _pct(xs, q):
  xs = sorted(xs)
  return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--mb", type=float, default=3.0)
  ap.add_argument("--order", type=int, default=4)
  ap.add_argument("--h", type=int, default=9)
  ap.add_argument("--k", type=int, default=16)
  ap.add_argument("--p", type=int, default=16)
  ap.add_argument("--lattices", type=int, default=200)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--alpha", type=float, default=0.5)
  ap.add_argument("--workdir", default=None, help="keep corpus/ARPA here (default: a temp dir)")
  ap.add_argument("--backends", default="wfst,dp", help="comma list of wfst, dp")
  ap.add_argument("--save_lattices", default=None,
                  help=".npz to write the lattices, the ARPA path and the DP's p-best paths to")
  ap.add_argument("--load_lattices", default=None,
                  help=".npz from --save_lattices: skip the corpus and LM, time these lattices")
  ap.add_argument("--arpa", default=None, help="with --load_lattices: the ARPA LM to read")
  ap.add_argument("--markdown", default=results_page.default_path("lattice_rescoring"),
                  help=results_page.HELP + " Default: %(default)s.")
  args = ap.parse_args()
  backends = set(args.backends.split(","))
  if not backends or not backends <= {"wfst", "dp"}:
    ap.error(f"--backends={args.backends!r}: expected a comma list of wfst, dp")
  if args.load_lattices:
    _run_loaded(args, backends)
    return

  from bpdjax.ngram import arpa, estimate  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import tables as ngram_tables  # pylint: disable=g-import-not-at-top

  tmp = args.workdir or tempfile.mkdtemp(prefix="lattice_bench_")
  os.makedirs(tmp, exist_ok=True)
  t0 = time.time()
  sp, sp_path = _vocab(tmp)
  vocab = sp.get_piece_size()
  train = [sp.encode(line) for line in _text_lines(int(args.mb * 1e6))]
  heldout = [t for line in _text_lines(300_000, int(args.mb * 1e6)) for t in sp.encode(line)]
  corpus = os.path.join(tmp, "corpus.txt")
  estimate.write_token_corpus(train, corpus)
  arpa_path = os.path.join(tmp, f"o{args.order}.arpa")
  estimate.estimate_arpa(corpus, args.order, arpa_path, build=True)
  t1 = time.time()
  model = arpa.parse_arpa(arpa_path, vocab)
  t2 = time.time()
  rescorer = _wfst_rescorer(model, args.alpha, backends)
  t3 = time.time()
  tables = ngram_tables.build_tables(model)
  t4 = time.time()
  counts = np.bincount(np.concatenate([np.asarray(x) for x in train]), minlength=vocab) + 1.0
  rng = np.random.default_rng(0)
  ids, logp, hist = _lattices(rng, np.asarray(heldout), counts / counts.sum(), args.lattices,
                              args.h, args.k, args.order)
  print(f"vocab {sp_path} ({vocab}); LM {arpa_path}: {model.num_ngrams()}; max bucket "
        f"{tables.max_bucket}")
  print(f"setup: tokenize+lmplz {t1 - t0:.1f}s, parse ARPA {t2 - t1:.1f}s, build LM FST "
        f"{t3 - t2:.1f}s, DP tables {t4 - t3:.1f}s")
  rows, agree, dp_paths = _time_backends(args, backends, tables, rescorer, ids, logp, hist)
  _print_rows(args, rows)
  if rescorer is not None and "dp" in backends:
    print(f"best path: WFST == exact DP on {agree}/{len(dp_paths)} lattices (rest: epsilon "
          "routes)")
  if args.save_lattices:
    np.savez(args.save_lattices, ids=ids, logp=logp, hist=hist, dp_paths=dp_paths,
             arpa=os.path.abspath(arpa_path), vocab=vocab, alpha=args.alpha, p=args.p)
    print(f"saved {args.lattices} lattices and {len(dp_paths)} DP p-best lists to "
          f"{args.save_lattices}")


def _run_loaded(args, backends):
  """Times the saved lattices of --load_lattices; checks the DP's p-best paths against the saved
  ones (exact float ties may order differently on another backend: counted, not asserted)."""
  from bpdjax.ngram import arpa  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import tables as ngram_tables  # pylint: disable=g-import-not-at-top
  saved = np.load(args.load_lattices)
  ids, logp, hist = saved["ids"], saved["logp"], saved["hist"]
  args.lattices, args.h, args.k = ids.shape
  args.alpha, args.p, args.order = float(saved["alpha"]), int(saved["p"]), hist.shape[1] + 1
  model = arpa.parse_arpa(args.arpa or str(saved["arpa"]), int(saved["vocab"]))
  tables = ngram_tables.build_tables(model)
  rescorer = _wfst_rescorer(model, args.alpha, backends)
  rows, _, dp_paths = _time_backends(args, backends, tables, rescorer, ids, logp, hist)
  _print_rows(args, rows)
  if "dp" in backends:
    ref = saved["dp_paths"]
    same_best = sum(np.array_equal(a[0], b[0]) for a, b in zip(dp_paths, ref))
    same_all = sum(np.array_equal(a, b) for a, b in zip(dp_paths, ref))
    print(f"DP paths vs the saved ones: best path equal on {same_best}/{len(ref)}, all "
          f"{args.p} paths equal on {same_all}/{len(ref)}")


def _wfst_rescorer(model, alpha, backends):
  if "wfst" not in backends:
    return None  # pynini need not be installed for the DP alone.
  from bpdjax.ngram import fst  # pylint: disable=g-import-not-at-top
  return fst.WfstRescorer(model, alpha)


def _lattice(ids, logp, b):
  """Lattice b as the WFST wants it: position 0 holds one slot (the model's own token)."""
  h = ids.shape[1]
  return ([ids[b, 0, :1]] + [ids[b, i] for i in range(1, h)],
          [logp[b, 0, :1]] + [logp[b, i] for i in range(1, h)])


def _time_backends(args, backends, tables, rescorer, ids, logp, hist):
  """Times the requested backends. Returns (table rows, WFST == DP best-path count, the DP's
  p-best paths [N, p, h] from its batched run)."""
  import jax  # pylint: disable=g-import-not-at-top
  from bpdjax.ngram import dp  # pylint: disable=g-import-not-at-top
  rows = []
  if "wfst" in backends:  # One lattice per call: the host path.
    wf_ms = []
    for b in range(args.lattices):
      lat_ids, lat_lp = _lattice(ids, logp, b)
      t = time.perf_counter()
      rescorer.best_paths(lat_ids, lat_lp, hist[b].tolist(), args.p)
      wf_ms.append((time.perf_counter() - t) * 1e3)
    rows.append(("WFST (pynini), 1 lattice/call", statistics.median(wf_ms), _pct(wf_ms, 0.9),
                 "-"))
  agree = 0
  all_paths = []
  if "dp" not in backends:
    return rows, agree, np.zeros((0, args.p, args.h), np.int32)
  ks = (1,) + (args.k,) * (args.h - 1)
  f = jax.jit(dp.pbest_dp, static_argnames=("p", "ks"))
  for batch in (1, args.batch):
    nb = max(1, min(args.lattices // batch, 10 if batch > 1 else 30))
    t = time.perf_counter()
    jax.block_until_ready(f(tables, ids[:batch], logp[:batch], hist[:batch], args.alpha,
                            p=args.p, ks=ks))
    compile_s = time.perf_counter() - t
    per = []
    for i in range(nb):
      sl = slice(i * batch, (i + 1) * batch)
      t = time.perf_counter()
      paths, _ = jax.block_until_ready(f(tables, ids[sl], logp[sl], hist[sl], args.alpha,
                                         p=args.p, ks=ks))
      per.append((time.perf_counter() - t) * 1e3 / batch)
      if batch > 1:
        all_paths.append(np.asarray(paths))
        for j in range(batch if rescorer is not None else 0):
          lat_ids, lat_lp = _lattice(ids, logp, i * batch + j)
          best = rescorer.best_paths(lat_ids, lat_lp, hist[i * batch + j].tolist(), 1)[0][0]
          agree += tuple(np.asarray(paths[j, 0]).tolist()) == best
    rows.append((f"DP (JAX {jax.default_backend()}), batch {batch}", statistics.median(per),
                 _pct(per, 0.9), f"{compile_s:.1f}s"))
  return rows, agree, np.concatenate(all_paths)


def _print_rows(args, rows):
  """Prints the timing table and appends it to --markdown."""
  lines = [f"h={args.h} k={args.k} (k_0=1) order={args.order} p={args.p} alpha={args.alpha}, "
           f"{args.lattices} lattices; ms per lattice (DP: per call / batch)", "",
           f"| {'method':<34} | {'median ms':>9} | {'p90 ms':>8} | {'compile':>7} |",
           f"|{'-' * 36}|{'-' * 11}|{'-' * 10}|{'-' * 9}|"]
  lines += [f"| {name:<34} | {med:9.3f} | {p90:8.3f} | {comp:>7} |"
            for name, med, p90, comp in rows]
  print("\n" + "\n".join(lines))
  results_page.append(args.markdown, "lattice_rescoring", "\n".join(lines))


if __name__ == "__main__":
  main()
