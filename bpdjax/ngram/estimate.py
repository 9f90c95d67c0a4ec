"""Kneser-Ney n-gram estimation over token ids with KenLM's `lmplz`.

The corpus is one sequence per line, each token id written as a decimal word ("17 4 902"), i.e.
the text as the model's vocabulary tokenizes it. `lmplz` (modified Kneser-Ney, interpolated,
ARPA out) is built from the PyPI `kenlm` sdist by `tools/build_kenlm.sh` into `<repo>/.kenlm/bin`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Iterable, Optional, Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_KENLM_BIN = os.path.join(_REPO, ".kenlm", "bin")
BUILD_SCRIPT = os.path.join(_REPO, "tools", "build_kenlm.sh")


def find_lmplz(lmplz: Optional[str] = None, build: bool = False) -> str:
  """Returns a path to `lmplz`: the argument, $KENLM_BIN/lmplz, <repo>/.kenlm/bin/lmplz, or PATH.

  Args:
    lmplz: explicit path (returned as is after an existence check).
    build: run tools/build_kenlm.sh when no lmplz is found (takes about a minute).

  Raises:
    FileNotFoundError: no lmplz and `build` is False (the message says how to build it).
  """
  if lmplz:
    if not os.path.exists(lmplz):
      raise FileNotFoundError(f"lmplz not found at {lmplz}")
    return lmplz
  candidates = []
  if os.environ.get("KENLM_BIN"):
    candidates.append(os.path.join(os.environ["KENLM_BIN"], "lmplz"))
  candidates.append(os.path.join(DEFAULT_KENLM_BIN, "lmplz"))
  for c in candidates:
    if os.path.exists(c):
      return c
  on_path = shutil.which("lmplz")
  if on_path:
    return on_path
  if build:
    subprocess.run(["bash", BUILD_SCRIPT], check=True)
    return find_lmplz(None, build=False)
  raise FileNotFoundError(
      f"KenLM lmplz not found (looked in $KENLM_BIN, {DEFAULT_KENLM_BIN}, PATH); build it with "
      f"`bash {BUILD_SCRIPT}`")


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
    build: build KenLM with tools/build_kenlm.sh if lmplz is missing.

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
