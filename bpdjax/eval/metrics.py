"""Per task and method metrics from decoded generations: speed, block efficiency, the paper's
analyses, refinement against the vanilla draft, comparisons with ar and bpd. numpy only.

`generations` are decoding.generator.Generation (tokens, calls, records) and `timings` its
BatchTiming (seconds, tokens, rows); both are read by attribute, so this module needs no jax.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from bpdjax.eval import analysis

ORACLE_KS = (1, 2, 4, 8, 16)


def speed_metrics(generations: Sequence, timings: Sequence) -> dict:
  """Speed of the timed run, and output_sha256 (of every output's int32 ids in order: equal
  digests mean identical outputs, across methods, runs or device counts). loop_steps: serial steps of the batched decode loop (per batch, its
  prefill plus loop iterations = the most calls any of its rows took), each of which runs the
  drafter's propose once; ms_per_step = wall time / loop_steps."""
  lengths = np.array([len(g.tokens) for g in generations])
  calls = np.array([g.calls for g in generations])
  seconds = float(sum(t.seconds for t in timings))
  steps, start = 0, 0
  for t in timings:
    steps += max((g.calls for g in generations[start:start + t.rows]), default=0)
    start += t.rows
  digest = hashlib.sha256()
  for g in generations:
    digest.update(np.asarray(g.tokens, np.int32).tobytes() + b"|")
  return {
      "examples": len(generations),
      "output_sha256": digest.hexdigest(),
      "tokens": int(lengths.sum()),
      "calls": int(calls.sum()),
      "block_efficiency": analysis.block_efficiency(lengths, calls),
      "accepted_tokens_per_call": analysis.accepted_draft_tokens_per_call(lengths, calls),
      "wall_seconds": seconds,
      "tokens_per_second": float(lengths.sum() / max(seconds, 1e-9)),
      "loop_steps": int(steps),
      "ms_per_step": seconds * 1e3 / steps if steps else None,
  }


def draft_analyses(generations: Sequence, draft_len: int,
                   num_heads: int) -> dict:
  """The paper's analyses from recorded generations (see analysis.py)."""
  lengths, tokens, kept, drafts, topk, entropy = _stack_records(generations)
  mean_entropy = analysis.head_entropy(entropy, lengths)
  out = {
      "head_entropy": mean_entropy,
      "h_max": analysis.h_max(mean_entropy),
      "oracle_topk": {str(k): analysis.oracle_block_efficiency(topk, tokens, lengths, k, num_heads)
                      for k in ORACLE_KS if k <= topk.shape[-1]},
      "output_repetition_rate": analysis.token_repetition(tokens, lengths),
      "accepted_length_histogram": analysis.kept_histogram(kept, draft_len),
      "head_acceptance": analysis.head_acceptance(kept, draft_len),
      "repetition_rate": None,
      "mean_longest_repeat": None,
  }
  if draft_len > 1:
    out["repetition_rate"], out["mean_longest_repeat"] = analysis.repetition(drafts, kept)
  return out


def _stack_records(generations: Sequence):
  """(lengths [B], tokens [B, S], kept [I, B], drafts [I, B, L], topk [B, S, h, K],
  entropy [B, S, h]) of recorded generations, padded to the longest record."""
  lengths = np.array([len(g.tokens) for g in generations])
  width = max(g.records["topk"].shape[0] for g in generations)
  topk = np.stack([_pad_to(g.records["topk"], width) for g in generations])
  entropy = np.stack([_pad_to(g.records["entropy"], width) for g in generations])
  tokens = np.stack([_pad_to(g.tokens, width) for g in generations])
  kept = np.stack([g.records["kept"] for g in generations], axis=1)              # [I, B]
  drafts = np.stack([g.records["drafts"] for g in generations], axis=1)          # [I, B, L]
  return lengths, tokens, kept, drafts, topk, entropy


def refinement_analyses(generations: Sequence, draft_len: int,
                        greedy: bool) -> dict:
  """Draft refinement against the vanilla BPD draft, from the same recorded generations.

  steps_vs_vanilla: wins / ties / losses of each iteration's kept length against the kept
  length the vanilla top-1 draft would have had from the same context, with their fractions
  (analysis.refinement_vs_vanilla; greedy only, else None); repetition_repair_share: repairs
  over wins (same place); vanilla_repetition_rate: the vanilla drafts' consecutive repetition
  rate, to set beside the method's own "repetition_rate" (before / after rescoring).
  A method without a draft (draft_len 1) gets None everywhere.
  """
  out = {"steps_vs_vanilla": None, "repetition_repair_share": None,
         "vanilla_repetition_rate": None}
  if draft_len < 2:
    return out
  lengths, tokens, kept, _, topk, _ = _stack_records(generations)
  if draft_len > topk.shape[2]:
    return out
  out["vanilla_repetition_rate"] = analysis.vanilla_repetition(kept, topk, tokens, draft_len)
  if greedy:
    steps = analysis.refinement_vs_vanilla(kept, topk, tokens, lengths, draft_len)
    out["steps_vs_vanilla"] = steps
    out["repetition_repair_share"] = steps["repetition_repair_share"]
  return out


def compare_to_vanilla(report_task: dict, vanilla: str) -> None:
  """Adds be_gain_vs_bpd = BE(method) / BE(vanilla) - 1 to every method of a task that ran the
  vanilla draft (methods.vanilla(), the heads' argmax chain)."""
  if vanilla not in report_task:
    return
  base = report_task[vanilla]["block_efficiency"]
  for entry in report_task.values():
    entry["be_gain_vs_bpd"] = entry["block_efficiency"] / base - 1.0 if base else None


def add_drafting_cost(entry: dict, propose_ms, vanilla_propose_ms) -> None:
  """Puts a method's drafting time per step into its entry (in place): drafting_ms_per_step,
  the median time of its proposal alone (decoding/timing.propose_ms; None when it reads no
  heads), drafting_share = drafting_ms_per_step / ms_per_step (its share of the measured wall
  time of one decode-loop step, speed_metrics), and vanilla_propose_ms, the same for the
  vanilla draft (what a refinement adds is the difference of these two positive times)."""
  step = entry.get("ms_per_step")
  entry["drafting_ms_per_step"] = propose_ms
  entry["vanilla_propose_ms"] = vanilla_propose_ms
  entry["drafting_share"] = propose_ms / step if propose_ms is not None and step else None


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
  return np.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def compare_to_reference(report_task: dict, outputs: dict, greedy: bool, reference: str) -> None:
  """Adds speedup_vs_ar and identical_to_ar (against `reference`, methods.reference(): plain
  decoding) to every method of one task that ran it (in place)."""
  if reference not in report_task:
    return
  ar_seconds = report_task[reference]["wall_seconds"]
  for method, entry in report_task.items():
    entry["speedup_vs_ar"] = ar_seconds / max(entry["wall_seconds"], 1e-9)
    entry["identical_to_ar"] = (
        all(np.array_equal(a, b) for a, b in zip(outputs[method], outputs[reference]))
        if greedy else None)


def drafter_stats(timings: Sequence) -> dict:
  """The drafter's statistics (protocol.Drafter.stats) summed over the batches, as lists; with
  "verified_calls" among them, every "*_tokens" sum also divided by it ("*_tokens_per_call")."""
  sums: dict = {}
  for t in timings:
    for key, value in (t.stats or {}).items():
      sums[key] = sums.get(key, 0) + np.asarray(value, np.float64)
  if not sums:
    return {}
  out = {k: (v.tolist() if np.ndim(v) else float(v)) for k, v in sums.items()}
  calls = out.get("verified_calls")
  if calls:
    for key in [k for k in out if k.endswith("_tokens")]:
      out[key + "_per_call"] = out[key] / calls
  return {"drafter_stats": out}


def compare_to_best_other(report_task: dict) -> None:
  """Adds vs_best_other = tokens/s over the fastest other method's, to every method."""
  for method, entry in report_task.items():
    others = [e["tokens_per_second"] for m, e in report_task.items() if m != method]
    entry["vs_best_other"] = entry["tokens_per_second"] / max(others) if others else None
