"""The paper's analyses, computed from what the decode loop recorded (numpy, on the host).

Inputs are numpy views of a DecodeResult: tokens [B, M], lengths [B], calls [B] and Records
(kept [I, B], drafts [I, B, L], topk [B, S, h, K], entropy [B, S, h]). Nothing here re-decodes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def block_efficiency(lengths: np.ndarray, calls: np.ndarray) -> float:
  """Generated tokens per serial model call, over all rows (plain decoding gives 1.0)."""
  return float(np.sum(lengths) / max(np.sum(calls), 1))


def accepted_draft_tokens_per_call(lengths: np.ndarray, calls: np.ndarray) -> float:
  """Draft tokens accepted per call, i.e. block efficiency without the model's own token."""
  return float((np.sum(lengths) - np.sum(calls)) / max(np.sum(calls), 1))


def kept_histogram(kept: np.ndarray, draft_len: int) -> list[int]:
  """[I, B] tokens yielded per verify call -> counts of 1..draft_len (index 0 is 1 token)."""
  active = kept[kept > 0]
  return [int(np.sum(active == n)) for n in range(1, draft_len + 1)]


def head_acceptance(kept: np.ndarray, draft_len: int) -> list[float]:
  """Share of verify calls in which head i's draft token was accepted (head 1: always)."""
  active = kept[kept > 0]
  if active.size == 0:
    return [float("nan")] * draft_len
  return [float(np.mean(active >= i)) for i in range(1, draft_len + 1)]


def _active_drafts(drafts: np.ndarray, kept: np.ndarray) -> np.ndarray:
  """[I, B, L] drafts of the iterations that served a row -> [N, L]."""
  return drafts[kept > 0]


def repetition(drafts: np.ndarray, kept: np.ndarray) -> tuple[float, float]:
  """(consecutive repetition rate, mean longest repeated run) of the verified drafts.

  The rate is the share of neighbouring draft positions (i, i+1) holding the same token; the
  longest run counts tokens (a draft with no repeat has run 1).
  """
  d = _active_drafts(drafts, kept)
  if d.shape[0] == 0 or d.shape[1] < 2:
    return 0.0, 1.0
  same = d[:, 1:] == d[:, :-1]
  runs = []
  for row in same:
    best = cur = 1
    for s in row:
      cur = cur + 1 if s else 1
      best = max(best, cur)
    runs.append(best)
  return float(np.mean(same)), float(np.mean(runs))


def token_repetition(tokens: np.ndarray, lengths: np.ndarray) -> float:
  """Share of neighbouring output tokens that are identical (for comparison with drafts)."""
  pairs = same = 0
  for row, n in zip(tokens, lengths):
    row = row[:n]
    pairs += max(len(row) - 1, 0)
    same += int(np.sum(row[1:] == row[:-1]))
  return same / max(pairs, 1)


def head_entropy(entropy: np.ndarray, lengths: np.ndarray) -> list[float]:
  """[B, S, h] per-slot entropies -> [h] mean entropy of each head over the decided slots."""
  slots = np.arange(entropy.shape[1])[None, :] < lengths[:, None]
  return [float(x) for x in entropy[slots].mean(axis=0)]


def h_max(mean_entropy: Sequence[float]) -> int:
  """Largest head index (1-based) up to which mean entropy rises monotonically."""
  h = 1
  while h < len(mean_entropy) and mean_entropy[h] > mean_entropy[h - 1]:
    h += 1
  return h


def oracle_block_efficiency(topk: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
                            k: int, draft_len: int) -> float:
  """Block efficiency of an oracle that picks the best path through each head's top-k.

  With greedy verification the best path accepts while the model's own token at t+i lies in
  head i's top-k, so it replays the decode with that acceptance test. With k = 1 it reproduces
  the measured BPD block efficiency exactly (a check that the records are right).
  """
  if k > topk.shape[-1]:
    raise ValueError(f"oracle k={k} exceeds the recorded top-{topk.shape[-1]}")
  total_tokens = total_calls = 0
  for b in range(tokens.shape[0]):
    n = int(lengths[b])
    calls, s = 1, 0                          # Prefill yields token 0 and the draft at slot 0.
    while s + 1 < n:
      kept = 1
      while (kept < draft_len and s + kept < n
             and tokens[b, s + kept] in topk[b, s, kept, :k]):
        kept += 1
      calls += 1
      s += kept
    total_tokens += n
    total_calls += calls
  return total_tokens / max(total_calls, 1)
