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
  longest run counts tokens (a draft with no repeat has run 1). Positions holding -1 (past the
  verified part of a draft, for drafters that verify a shorter candidate) are left out.
  """
  d = _active_drafts(drafts, kept)
  if d.shape[0] == 0 or d.shape[1] < 2:
    return 0.0, 1.0
  pairs = (d[:, 1:] >= 0) & (d[:, :-1] >= 0)
  same = (d[:, 1:] == d[:, :-1]) & pairs
  runs = []
  for row in same:
    best = cur = 1
    for s in row:
      cur = cur + 1 if s else 1
      best = max(best, cur)
    runs.append(best)
  rate = float(np.sum(same) / np.sum(pairs)) if np.sum(pairs) else 0.0
  return rate, float(np.mean(runs))


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


# ------------------------------------------------------------------ refinement vs vanilla drafts
def vanilla_drafts(kept: np.ndarray, topk: np.ndarray, tokens: np.ndarray,
                   draft_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The vanilla BPD draft at every decode iteration, rebuilt from the records.

  Iteration t of row b verified a block rooted at output slot s = sum(kept[:t, b]) (the model's
  own token there, already decided); the vanilla draft from that context is
  [tokens[b, s], topk[b, s, 1, 0], ..., topk[b, s, L-1, 0]]: head i's argmax at slot s, which
  the records hold computed on the correct context.

  Args:
    kept: [I, B] tokens yielded per iteration (0 once a row is done).
    topk: [B, S, h, K] recorded top-K per slot and head.
    tokens: [B, S'] output tokens (S' <= S is fine: missing slots read as token 0).
    draft_len: L, the length of the chains compared (<= h).
  Returns:
    (slots [I, B] int root slot of each iteration, vanilla [I, B, L] int32).
  """
  if draft_len > topk.shape[2]:
    raise ValueError(f"draft_len {draft_len} exceeds the {topk.shape[2]} recorded heads")
  slots = np.cumsum(kept, axis=0) - kept                                          # [I, B]
  safe = np.minimum(slots, topk.shape[1] - 1)
  rows = np.arange(kept.shape[1])[None, :]
  padded = np.pad(tokens, [(0, 0), (0, max(0, topk.shape[1] - tokens.shape[1]))])
  root = padded[rows, safe]                                                      # [I, B]
  heads = topk[rows, safe, 1:draft_len, 0]                                       # [I, B, L-1]
  return slots, np.concatenate([root[..., None], heads], axis=-1).astype(np.int32)


def refinement_vs_vanilla(kept: np.ndarray, topk: np.ndarray, tokens: np.ndarray,
                          lengths: np.ndarray, draft_len: int) -> dict:
  """Per decode iteration, the kept length of the method's draft against the vanilla draft's.

  For every iteration t of row b that served the row (kept > 0), rooted at slot s (see
  `vanilla_drafts`), with n = lengths[b] output tokens and R = n - s of them from s on:
  * refined = min(kept[t, b], R): the recorded kept length (any chain of a tree counts), cut
    at the end of the output, since tokens past it were never recorded;
  * vanilla = the kept length the vanilla draft v would have had under greedy verification:
    1 + the longest prefix of v[1:] equal to tokens[s + 1:], also at most R;
  * a win when refined > vanilla, a tie when equal, a loss when smaller.
  Repetition repair: a win is a repair when the vanilla draft has a consecutive repetition
  v[j] == v[j + 1] at or right before its first rejected position r = vanilla (j + 1 = r: the
  rejected token copies the one before it; or j + 1 = r - 1, the pair right before it) and the
  refined path does not repeat at that pair. In a win the refined path holds the output tokens
  at positions <= r, so "does not repeat" reads tokens[s + j] != tokens[s + j + 1]. (Under greedy
  verification the pair (r - 2, r - 1) can never count -- both drafts hold the output there -- and
  the pair (r - 1, r) always does once v repeats there, since v[r] = tokens[s + r - 1] is not the
  model's token tokens[s + r]; so a repair is a win whose vanilla draft failed by repeating the
  token before it.)

  Only meaningful for greedy decoding (sampled acceptance is not a prefix match).

  Returns:
    {"iterations", "wins", "ties", "losses", "win_fraction", "tie_fraction", "loss_fraction",
     "repetition_repairs", "repetition_repair_share" (repairs / wins; None without wins)}.
  """
  slots, vanilla = vanilla_drafts(kept, topk, tokens, draft_len)
  wins = ties = losses = repairs = 0
  for t, b in zip(*np.nonzero(kept > 0)):
    s, remaining = int(slots[t, b]), int(lengths[b]) - int(slots[t, b])
    if remaining < 1:
      raise ValueError(f"iteration {t} of row {b} starts at slot {s}, past its {lengths[b]} "
                       "tokens: records and outputs do not belong together")
    v = vanilla[t, b]
    refined = min(int(kept[t, b]), remaining)
    van = 1
    while van < min(draft_len, remaining) and v[van] == tokens[b, s + van]:
      van += 1
    if refined > van:
      wins += 1
      r = van
      repairs += any(v[j] == v[j + 1] and tokens[b, s + j] != tokens[b, s + j + 1]
                     for j in (r - 2, r - 1) if j >= 0)
    elif refined == van:
      ties += 1
    else:
      losses += 1
  n = wins + ties + losses
  frac = lambda x: x / n if n else None  # noqa: E731
  return {"iterations": n, "wins": wins, "ties": ties, "losses": losses,
          "win_fraction": frac(wins), "tie_fraction": frac(ties), "loss_fraction": frac(losses),
          "repetition_repairs": repairs,
          "repetition_repair_share": repairs / wins if wins else None}


def vanilla_repetition(kept: np.ndarray, topk: np.ndarray, tokens: np.ndarray,
                       draft_len: int) -> float:
  """`repetition` rate of the vanilla drafts rebuilt from the same records (see vanilla_drafts):
  repetition before rescoring, to set beside the method's own drafts' rate (after)."""
  _, vanilla = vanilla_drafts(kept, topk, tokens, draft_len)
  return repetition(vanilla, kept)[0]
