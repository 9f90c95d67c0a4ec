"""Kneser-Ney n-gram estimation over token ids with KenLM's `lmplz`.

The corpus is one sequence per line, each token id written as a decimal word ("17 4 902"), i.e.
the text as the model's vocabulary tokenizes it. `lmplz` (modified Kneser-Ney, interpolated,
ARPA out) is built from the PyPI `kenlm` sdist by `build_kenlm.sh` (shipped beside this module;
`tools/build_kenlm.sh` runs it for a checkout) into `kenlm_prefix()/bin`.

Command line: the n-gram LM of a workdir, over its own vocabulary and training corpus:

  python -m bpdjax.ngram.estimate --workdir=W --order=4 --output=W/ngram4.arpa \
      [--max_documents=N] [--max_tokens=N] [--prune="0 0 1 1"] [--memory=20%] [--corpus=PATH]

It reads the training documents of the workdir's config (wiki / tiny_shakespeare: the train
split, so the documents training holds out for evaluation -- data.eval_fraction -- are held out
here too; token_file: the train shards; sft: the fine-tuning targets of its tasks, as the
paper's appendix estimates n-gram LMs on each task's fine-tuning data), tokenizes each document
whole with the workdir's vocabulary (as training does, without the EOS: lmplz's </s> ends each
line), writes one document per line, runs lmplz and prints the counts, times and the ARPA's size.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence

from bpdjax import fileio
from bpdjax import workdir as workdir_lib
from bpdjax import workdir_lock
from bpdjax.data import tasks
from bpdjax.data import token_files
from bpdjax.data import vocabulary as vocabulary_lib

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_SCRIPT = os.path.join(_PACKAGE_DIR, "build_kenlm.sh")


def kenlm_prefix() -> str:
  """Where KenLM is built and looked for: <checkout>/.kenlm when bpdjax runs from a checkout
  (editable install or the repository on the path), else $XDG_CACHE_HOME/bpdjax/kenlm
  (~/.cache/bpdjax/kenlm) for an installed package, whose site-packages is no place to build."""
  checkout = os.path.dirname(os.path.dirname(_PACKAGE_DIR))
  if os.path.isfile(os.path.join(checkout, "pyproject.toml")) and os.path.isfile(
      os.path.join(checkout, "tools", "build_kenlm.sh")):
    return os.path.join(checkout, ".kenlm")
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "bpdjax", "kenlm")


def find_lmplz(lmplz: Optional[str] = None, build: bool = False) -> str:
  """Returns a path to `lmplz`: the argument, $KENLM_BIN/lmplz, kenlm_prefix()/bin/lmplz, or PATH.

  Args:
    lmplz: explicit path (returned as is after an existence check).
    build: run build_kenlm.sh into kenlm_prefix() when no lmplz is found (a minute or two).

  Raises:
    FileNotFoundError: no lmplz and `build` is False (the message says how to build it).
    subprocess.CalledProcessError: `build` and the build failed.
  """
  if lmplz:
    if not os.path.exists(lmplz):
      raise FileNotFoundError(f"lmplz not found at {lmplz}")
    return lmplz
  candidates = []
  if os.environ.get("KENLM_BIN"):
    candidates.append(os.path.join(os.environ["KENLM_BIN"], "lmplz"))
  prefix = kenlm_prefix()
  candidates.append(os.path.join(prefix, "bin", "lmplz"))
  for c in candidates:
    if os.path.exists(c):
      return c
  on_path = shutil.which("lmplz")
  if on_path:
    return on_path
  if build:
    subprocess.run(["bash", BUILD_SCRIPT, prefix], check=True,
                   env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
    return find_lmplz(None, build=False)
  raise FileNotFoundError(
      f"KenLM lmplz not found (looked in $KENLM_BIN, {prefix}/bin, PATH); build it with "
      f"`bash {BUILD_SCRIPT} {prefix}` or pass --build_kenlm")


def write_token_corpus(token_sequences: Iterable[Sequence[int]], path: str) -> int:
  """Writes one sequence of token ids per line as decimal words; returns the number of lines.

  Empty sequences are skipped (lmplz would count them as a bare <s> </s>).
  """
  n = 0
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for seq in token_sequences:
      if len(seq) == 0:  # pylint: disable=g-explicit-length-test
        continue
      f.write(" ".join(str(int(t)) for t in seq))
      f.write("\n")
      n += 1
  return n


def estimate_arpa(corpus_path: str, order: int, arpa_path: str, lmplz: Optional[str] = None,
                  memory: str = "20%", prune: Optional[Sequence[int]] = None,
                  temp_dir: Optional[str] = None, extra_args: Sequence[str] = (),
                  build: bool = False) -> str:
  """Estimates an interpolated modified Kneser-Ney ARPA with `lmplz`; returns arpa_path.

  Args:
    corpus_path: a corpus written by `write_token_corpus`.
    order: n of the n-gram model (>= 2 with KenLM).
    arpa_path: output ARPA.
    lmplz: path to lmplz (default: see `find_lmplz`).
    memory: lmplz -S (sorting memory), e.g. "20%" or "1G".
    prune: optional --prune thresholds per order (e.g. [0, 0, 1, 1]).
    temp_dir: lmplz -T (defaults to the directory of arpa_path).
    extra_args: more lmplz flags.
    build: build KenLM (see find_lmplz) if lmplz is missing.

  Uses --discount_fallback so that tiny corpora (whose count-of-counts make the modified-KN
  discounts undefined) still estimate.

  Raises:
    ValueError: order < 2 (lmplz refuses 1-grams).
    RuntimeError: lmplz failed (its stderr is in the message).
  """
  if order < 2:
    raise ValueError(f"order must be >= 2 for lmplz, got {order}")
  exe = find_lmplz(lmplz, build=build)
  out_dir = os.path.dirname(os.path.abspath(arpa_path))
  os.makedirs(out_dir, exist_ok=True)
  cmd = [exe, "-o", str(order), "-S", memory, "-T", temp_dir or out_dir, "--discount_fallback",
         "--text", corpus_path, "--arpa", arpa_path]
  if prune:
    cmd += ["--prune"] + [str(int(x)) for x in prune]
  cmd += list(extra_args)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"lmplz failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
  return arpa_path


# ------------------------------------------------------------------ a workdir's n-gram LM
def parse_prune(value: Optional[str], order: int) -> Optional[list[int]]:
  """"0 0 1 1" or "0,0,1,1" -> [0, 0, 1, 1] (lmplz --prune: per order, minimum counts to keep;
  non-decreasing, at most `order` values, unigrams never pruned); None/"" -> None."""
  if not value:
    return None
  try:
    thresholds = [int(x) for x in value.replace(",", " ").split()]
  except ValueError:
    raise ValueError(f"--prune={value!r}: expected integers such as \"0 0 1 1\"") from None
  if len(thresholds) > order or any(t < 0 for t in thresholds) or thresholds[0] != 0 or any(
      b < a for a, b in zip(thresholds, thresholds[1:])):
    raise ValueError(f"--prune={value!r}: need at most {order} non-negative, non-decreasing "
                     "thresholds starting with 0 (lmplz never prunes unigrams)")
  return thresholds


def arpa_counts(path: str) -> dict[int, int]:
  """The n-gram counts of an ARPA's \\data\\ header, {order: count}, without reading the rest."""
  counts = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line.startswith("ngram ") and "=" in line:
        m, c = line[len("ngram "):].split("=")
        counts[int(m)] = int(c)
      elif line.endswith("-grams:"):
        break
  return counts


def training_token_documents(workdir: str) -> Iterator[Sequence[int]]:
  """The training documents of a workdir's run as token ids, in corpus order (see module doc).

  Raises:
    FileNotFoundError: no config.json or vocabulary in the workdir.
    ValueError: a task without local training text (c4).
  """
  config = workdir_lib.load_config(workdir)  # Checked now, not at the first document.
  if config.data.task == "token_file":
    return iter(token_files.read_token_split(config.data.token_dir, "train", config.model.vocab_size))
  vocabulary = vocabulary_lib.load_vocabulary(workdir_lib.vocab_path(workdir))
  if vocabulary.vocab_size != config.model.vocab_size:
    raise ValueError(f"The workdir's vocabulary has {vocabulary.vocab_size} ids, its model "
                     f"{config.model.vocab_size}")
  return (vocabulary_lib.drop_padding(vocabulary.encode(document))  # As the model trained.
          for document in tasks.iter_training_documents(config))


def _inside(path: str, folder: str) -> bool:
  path, folder = fileio.absolute(path).rstrip("/"), fileio.absolute(folder).rstrip("/")
  return path.startswith(folder + "/")


def estimate_workdir(workdir: str, order: int, output: str, **kwargs) -> dict:
  """`_estimate_workdir`; an output inside the workdir is written holding the workdir's writer
  lock (workdir_lock.py: refused while a training run writes there)."""
  if not _inside(output, workdir):
    return _estimate_workdir(workdir, order, output, **kwargs)
  with workdir_lock.hold(workdir, "n-gram estimation"):
    return _estimate_workdir(workdir, order, output, **kwargs)


def _estimate_workdir(workdir: str, order: int, output: str,
                      max_documents: Optional[int] = None, max_tokens: Optional[int] = None,
                      prune: Optional[Sequence[int]] = None, memory: str = "20%",
                      corpus_path: Optional[str] = None, lmplz: Optional[str] = None,
                      build: bool = False, log: Callable[[str], None] = print) -> dict:
  """Estimates an order-n ARPA over a workdir's training corpus, in its token ids.

  Args:
    workdir: a train.py workdir (config.json and its vocabulary).
    order: n (>= 2).
    output: the ARPA to write (local or in a bucket: lmplz writes a local file, which is then
      uploaded); its vocabulary is recorded in workdir.arpa_vocab_record_path(output).
    max_documents / max_tokens: stop after that many documents / tokens (the document that
      crosses max_tokens is cut), None = the whole train split.
    prune: lmplz --prune thresholds (see parse_prune), for large orders.
    memory: lmplz -S.
    corpus_path: keep the token corpus there (default: a temporary file next to `output`,
      deleted afterwards).
    lmplz, build: see find_lmplz.
    log: receives the progress and summary lines.
  Returns:
    {"documents", "tokens", "types", "ngrams" {order: count}, "tokenize_seconds",
     "lmplz_seconds", "arpa_bytes", "arpa", "corpus"}.
  """
  if order < 2:
    raise ValueError(f"order must be >= 2 for lmplz, got {order}")
  for name, value in (("max_documents", max_documents), ("max_tokens", max_tokens)):
    if value is not None and value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  token_documents = training_token_documents(workdir)  # A missing workdir is named first.
  exe = find_lmplz(lmplz, build=build)  # Fails before the long (lazy) tokenization.
  remote_output = output if fileio.is_remote(output) else None
  if remote_output:
    fileio.check_bucket(remote_output)
    output = os.path.join(tempfile.mkdtemp(prefix="ngram_"), os.path.basename(remote_output))
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  keep = corpus_path is not None
  if not keep:
    fd, corpus_path = tempfile.mkstemp(prefix="ngram_corpus_", suffix=".txt", dir=out_dir)
    os.close(fd)
  stats = {"documents": 0, "tokens": 0}
  types = set()

  def documents():
    for doc in token_documents:
      if max_documents is not None and stats["documents"] >= max_documents:
        return
      if max_tokens is not None:
        doc = list(doc)[:max_tokens - stats["tokens"]]
      if len(doc) == 0:  # pylint: disable=g-explicit-length-test
        if max_tokens is not None and stats["tokens"] >= max_tokens:
          return
        continue
      stats["documents"] += 1
      stats["tokens"] += len(doc)
      types.update(int(t) for t in doc)
      if stats["documents"] % 10000 == 0:
        log(f"  {stats['documents']} documents, {stats['tokens']} tokens")
      yield doc

  try:
    t0 = time.perf_counter()
    write_token_corpus(documents(), corpus_path)
    t1 = time.perf_counter()
    if stats["tokens"] == 0:
      raise ValueError(f"No training tokens in workdir {workdir!r}")
    log(f"tokenized {stats['documents']} training documents, {stats['tokens']} tokens "
        f"({len(types)} distinct ids) in {t1 - t0:.1f} s (held-out evaluation documents "
        "excluded, as in training)")
    estimate_arpa(corpus_path, order, output, lmplz=exe, memory=memory, prune=prune)
    t2 = time.perf_counter()
  finally:
    if not keep and os.path.exists(corpus_path):
      os.remove(corpus_path)
  counts = arpa_counts(output)
  size = os.path.getsize(output)
  if remote_output:
    fileio.copy_file(output, remote_output)
    os.remove(output)
    output = remote_output
  workdir_lib.write_arpa_vocab_record(output, workdir)
  log(f"lmplz order {order}{' prune ' + ' '.join(map(str, prune)) if prune else ''}: "
      f"{t2 - t1:.1f} s; n-grams " + ", ".join(f"{m}: {c}" for m, c in sorted(counts.items())))
  log(f"wrote {output} ({size / 2**20:.2f} MiB)" + (f"; token corpus {corpus_path}" if keep
                                                     else ""))
  return {"documents": stats["documents"], "tokens": stats["tokens"], "types": len(types),
          "ngrams": counts, "tokenize_seconds": t1 - t0, "lmplz_seconds": t2 - t1,
          "arpa_bytes": size, "arpa": output, "corpus": corpus_path if keep else None}


def main(argv: Optional[Sequence[str]] = None) -> dict:
  ap = argparse.ArgumentParser(
      prog="python -m bpdjax.ngram.estimate",
      description="Estimate a Kneser-Ney n-gram LM (ARPA) over a workdir's training corpus, in "
                  "the model's token ids, with KenLM lmplz.")
  ap.add_argument("--workdir", required=True, help="A train.py workdir.")
  ap.add_argument("--order", type=int, default=4, help="n of the n-gram LM (>= 2).")
  ap.add_argument("--output", default=None, help="ARPA to write (default WORKDIR/ngramN.arpa).")
  ap.add_argument("--max_documents", type=int, default=None, help="Use at most N documents.")
  ap.add_argument("--max_tokens", type=int, default=None, help="Use at most N tokens.")
  ap.add_argument("--prune", default=None,
                  help='lmplz --prune thresholds per order, e.g. "0 0 1 1" for order 4.')
  ap.add_argument("--memory", default="20%", help="lmplz -S sorting memory (e.g. 20%%, 1G).")
  ap.add_argument("--corpus", default=None, help="Keep the token-id corpus at this path.")
  ap.add_argument("--lmplz", default=None, help="Path to lmplz (default: $KENLM_BIN, the "
                  "checkout's .kenlm/bin or ~/.cache/bpdjax/kenlm/bin, PATH).")
  ap.add_argument("--build_kenlm", action="store_true",
                  help="Build KenLM (a minute or two) when lmplz is missing.")
  args = ap.parse_args(argv)
  try:
    prune = parse_prune(args.prune, args.order)
    return estimate_workdir(
        args.workdir, args.order, args.output or fileio.join(args.workdir,
                                                             f"ngram{args.order}.arpa"),
        max_documents=args.max_documents, max_tokens=args.max_tokens, prune=prune,
        memory=args.memory, corpus_path=args.corpus, lmplz=args.lmplz, build=args.build_kenlm)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    ap.exit(2, f"error: {e}\n")


def cli() -> None:
  """The `bpdjax-ngram` console script (exit status 0, not the summary dict)."""
  main(sys.argv[1:])


if __name__ == "__main__":
  cli()
