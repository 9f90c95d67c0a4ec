"""ARPA back-off n-gram models over token ids: parsing, vocabulary checks and exact queries.

The ARPA's words are the model vocabulary's token ids written as decimal integers (what
`estimate.write_token_corpus` writes), plus the specials `<s>`, `</s>` and `<unk>`.

Conventions shared by `arpa`, `fst` and `dp`:
* Natural logs everywhere. ARPA stores log10; `ArpaModel` keeps both (`log10` tables as read,
  `logprob` answers in natural log: log10 * ln(10)).
* No `<s>`: rescoring continues mid-text, so the n-gram history is just the (up to n-1) tokens
  already decoded, most recent last; a shorter history at the start of a text simply means a
  shorter context (the LM backs off as for any unseen longer context). N-grams containing `<s>` or
  `</s>` are kept in the parsed model but can never be reached by a query made of token ids.
* A token id that is not a word of the ARPA (in the model vocabulary but absent from the LM
  corpus) is `<unk>`, both as the predicted token and inside a context (KenLM does the same).
* Standard back-off: P(w | c_1..c_j) = P*(c_1..c_j w) if that n-gram is listed, else
  bo(c_1..c_j) + P(w | c_2..c_j), with bo = 0 for contexts that are not listed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

from bpdjax import fileio

LN10 = math.log(10.0)
# Internal ids of the special words (negative, so they never collide with token ids; -1 is kept
# free for "missing history" padding in dp.py).
BOS, EOS, UNK = -2, -3, -4
SPECIALS = {"<s>": BOS, "</s>": EOS, "<unk>": UNK}
SPECIAL_NAMES = {v: k for k, v in SPECIALS.items()}

NGram = Tuple[int, ...]


@dataclasses.dataclass
class ArpaModel:
  """A parsed ARPA model.

  Attributes:
    order: the n of the n-gram model.
    vocab_size: the model vocabulary size the token ids were checked against.
    ngrams: ngrams[m] (m = 1..order) maps an m-gram (tuple of ids; specials are BOS/EOS/UNK) to
      (log10 prob, log10 backoff); the backoff is 0.0 when the ARPA lists none.
    words: the set of token ids (>= 0) that are unigrams of the ARPA.
  """
  order: int
  vocab_size: int
  ngrams: Dict[int, Dict[NGram, Tuple[float, float]]]
  words: frozenset

  def word_id(self, token: int) -> int:
    """Maps a token id to the id used in the tables: itself if it is an ARPA word, else UNK."""
    return token if token in self.words else UNK

  def logprob(self, history: Sequence[int], token: int) -> float:
    """Natural-log P(token | history) with standard back-off semantics.

    Args:
      history: token ids already decoded, most recent last (any length; only the last order-1
        are used; no <s> is assumed).
      token: the predicted token id.
    """
    ctx = tuple(self.word_id(t) for t in list(history)[max(0, len(history) - self.order + 1):])
    w = self.word_id(token)
    backoff = 0.0
    for j in range(len(ctx), -1, -1):  # context length j, longest first
      c = ctx[len(ctx) - j:]
      entry = self.ngrams[j + 1].get(c + (w,))
      if entry is not None:
        return (entry[0] + backoff) * LN10
      if j > 0:
        bo = self.ngrams[j].get(c)
        if bo is not None:
          backoff += bo[1]
    # Not even a unigram: only possible when the ARPA lacks <unk>.
    raise KeyError(f"token {token} is not in the ARPA and the ARPA has no <unk>")

  def score_sequence(self, history: Sequence[int], tokens: Sequence[int]) -> float:
    """Sum of natural-log P(tokens[i] | history + tokens[:i])."""
    hist = list(history)
    total = 0.0
    for t in tokens:
      total += self.logprob(hist, t)
      hist.append(int(t))
    return total

  def num_ngrams(self) -> Dict[int, int]:
    return {m: len(d) for m, d in self.ngrams.items()}


def _parse_word(word: str, vocab_size: int, path: str, lineno: int) -> int:
  special = SPECIALS.get(word)
  if special is not None:
    return special
  try:
    token = int(word)
  except ValueError:
    raise ValueError(
        f"{path}:{lineno}: ARPA word {word!r} is not an integer token id: this ARPA was not built "
        "over token ids of this vocabulary (expected decimal ids, <s>, </s> or <unk>)") from None
  if token < 0 or token >= vocab_size or str(token) != word:
    raise ValueError(
        f"{path}:{lineno}: ARPA word {word!r} is out of range for vocab_size={vocab_size}: this "
        "ARPA was built with another vocabulary")
  return token


def parse_arpa(path_or_lines: Union[str, Iterable[str]], vocab_size: int,
               path_name: Optional[str] = None) -> ArpaModel:
  """Parses an ARPA file (or an iterable of its lines) into an `ArpaModel`.

  Args:
    path_or_lines: file path, or lines (for tests).
    vocab_size: the model vocabulary size; every ARPA word must be an integer id in
      [0, vocab_size) or one of <s>, </s>, <unk>.
    path_name: name used in error messages when lines are given.

  Raises:
    ValueError: malformed ARPA, counts that do not match the header, or a vocabulary mismatch
      (a word that is not an integer, or an id >= vocab_size).
  """
  if isinstance(path_or_lines, str):
    name = path_or_lines
    lines = fileio.read_text(path_or_lines).splitlines()  # Local or gs://; non-UTF-8 names file and line.
  else:
    name = path_name or "<arpa>"
    lines = list(path_or_lines)
  counts: Dict[int, int] = {}
  ngrams: Dict[int, Dict[NGram, Tuple[float, float]]] = {}
  section = None  # None, "data" or an order m
  for lineno, raw in enumerate(lines, 1):
    line = raw.strip()
    if not line:
      continue
    if line == "\\data\\":
      section = "data"
      continue
    if line == "\\end\\":
      break
    if line.startswith("\\") and line.endswith("-grams:"):
      try:
        section = int(line[1:-len("-grams:")])
      except ValueError:
        raise ValueError(f"{name}:{lineno}: bad section header {line!r}") from None
      ngrams[section] = {}
      continue
    if section == "data":
      if line.startswith("ngram "):
        m, c = line[len("ngram "):].split("=")
        counts[int(m)] = int(c)
      continue
    if not isinstance(section, int):
      continue
    fields = line.split()
    m = section
    if len(fields) not in (m + 1, m + 2):
      raise ValueError(f"{name}:{lineno}: expected {m} words in a {m}-gram line: {line!r}")
    key = tuple(_parse_word(w, vocab_size, name, lineno) for w in fields[1:m + 1])
    bo = float(fields[m + 1]) if len(fields) == m + 2 else 0.0
    ngrams[m][key] = (float(fields[0]), bo)
  if not counts:
    raise ValueError(f"{name}: no \\data\\ section: not an ARPA file")
  order = max(counts)
  for m in range(1, order + 1):
    got = len(ngrams.get(m, {}))
    if got != counts.get(m, -1):
      raise ValueError(f"{name}: header says ngram {m}={counts.get(m)} but {got} were read")
  words = frozenset(w for (w,) in ngrams[1] if w >= 0)
  if words and max(words) < vocab_size // 64 and vocab_size > 4096:
    # Every id is tiny compared with the vocabulary: almost surely another (smaller) vocabulary.
    raise ValueError(
        f"{name}: the largest token id in the ARPA is {max(words)} but vocab_size={vocab_size}: "
        "this ARPA looks built with another (smaller) vocabulary")
  return ArpaModel(order=order, vocab_size=vocab_size, ngrams=ngrams, words=words)


def as_model(arpa: Union[str, ArpaModel], vocab_size: Optional[int]) -> ArpaModel:
  """Returns `arpa` if already parsed (checking vocab_size if given), else parses the path."""
  if isinstance(arpa, ArpaModel):
    if vocab_size is not None and vocab_size != arpa.vocab_size:
      raise ValueError(f"ArpaModel was parsed for vocab_size={arpa.vocab_size}, not {vocab_size}")
    return arpa
  if vocab_size is None:
    raise ValueError("vocab_size is required to parse an ARPA path")
  return parse_arpa(arpa, vocab_size)
