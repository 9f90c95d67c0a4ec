"""Evaluation report: per task and method metrics, the paper's analyses, JSON, markdown, plots."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from bpdjax.decoding import analysis
from bpdjax.decoding import generate

ORACLE_KS = (1, 2, 4, 8, 16)


def speed_metrics(generations: Sequence[generate.Generation],
                  timings: Sequence[generate.BatchTiming]) -> dict:
  lengths = np.array([len(g.tokens) for g in generations])
  calls = np.array([g.calls for g in generations])
  seconds = float(sum(t.seconds for t in timings))
  return {
      "examples": len(generations),
      "tokens": int(lengths.sum()),
      "calls": int(calls.sum()),
      "block_efficiency": analysis.block_efficiency(lengths, calls),
      "accepted_tokens_per_call": analysis.accepted_draft_tokens_per_call(lengths, calls),
      "wall_seconds": seconds,
      "tokens_per_second": float(lengths.sum() / max(seconds, 1e-9)),
  }


def draft_analyses(generations: Sequence[generate.Generation], draft_len: int,
                   num_heads: int) -> dict:
  """The paper's analyses from recorded generations (see analysis.py)."""
  lengths = np.array([len(g.tokens) for g in generations])
  width = max(g.records["topk"].shape[0] for g in generations)
  topk = np.stack([_pad_to(g.records["topk"], width) for g in generations])
  entropy = np.stack([_pad_to(g.records["entropy"], width) for g in generations])
  tokens = np.stack([_pad_to(g.tokens, width) for g in generations])
  kept = np.stack([g.records["kept"] for g in generations], axis=1)              # [I, B]
  drafts = np.stack([g.records["drafts"] for g in generations], axis=1)          # [I, B, L]
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


def _pad_to(x: np.ndarray, n: int) -> np.ndarray:
  return np.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def compare_to_ar(report_task: dict, outputs: dict, greedy: bool) -> None:
  """Adds speedup_vs_ar and identical_to_ar to every method of one task (in place)."""
  if "ar" not in report_task:
    return
  ar_seconds = report_task["ar"]["wall_seconds"]
  for method, entry in report_task.items():
    entry["speedup_vs_ar"] = ar_seconds / max(entry["wall_seconds"], 1e-9)
    entry["identical_to_ar"] = (
        all(np.array_equal(a, b) for a, b in zip(outputs[method], outputs["ar"]))
        if greedy else None)


def write(output_dir: str, report: dict) -> None:
  """Writes report.json (atomically), report.md and one PNG of analyses per task."""
  os.makedirs(output_dir, exist_ok=True)
  tmp = os.path.join(output_dir, "report.json.tmp")
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(output_dir, "report.md"), "w") as f:
    f.write(markdown(report))
  for task, methods in report["tasks"].items():
    plot(os.path.join(output_dir, f"{task}.png"), task, methods)
  os.replace(tmp, os.path.join(output_dir, "report.json"))


def _fmt(x, spec=".3f"):
  if x is None:
    return "–"
  if isinstance(x, bool):
    return "yes" if x else "NO"
  return format(x, spec)


def markdown(report: dict) -> str:
  s = report["settings"]
  lines = [
      f"# bpdjax decoding report\n",
      f"Workdir `{s['workdir']}` (step {s['step']}), {s['num_examples']} examples per task, "
      f"max_new_tokens={s['max_new_tokens']}, batch_size={s['batch_size']}, "
      f"temperature={s['temperature']}, device: {s['device']}.\n",
      "Block efficiency (BE) = generated tokens / serial model calls (prefill counted); "
      "acc/call = accepted draft tokens per call (BE without the model's own token). "
      "Speedup is wall-clock against `ar` in the same run.\n",
      "| task | method | BE | acc/call | tokens/s | speedup | identical to AR | draft repetition "
      "| h_max | oracle BE k=16 |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for task, methods in report["tasks"].items():
    for method, e in methods.items():
      oracle = e.get("oracle_topk", {}).get("16")
      lines.append(
          f"| {task} | {method} | {_fmt(e['block_efficiency'])} | "
          f"{_fmt(e['accepted_tokens_per_call'])} | {_fmt(e['tokens_per_second'], '.1f')} | "
          f"{_fmt(e.get('speedup_vs_ar'), '.2f')} | {_fmt(e.get('identical_to_ar'))} | "
          f"{_fmt(e.get('repetition_rate'))} | {e.get('h_max', '–')} | {_fmt(oracle)} |")
  lines.append("\nPer-head mean entropy (nats) and oracle top-k BE, from each task's first method "
               "with analyses:\n")
  for task, methods in report["tasks"].items():
    e = next((e for e in methods.values() if e.get("head_entropy")), None)
    if e:
      ent = ", ".join(f"{x:.2f}" for x in e["head_entropy"])
      orc = ", ".join(f"k={k}: {v:.3f}" for k, v in e["oracle_topk"].items())
      lines.append(f"- **{task}**: entropy [{ent}]; oracle {orc}")
  return "\n".join(lines) + "\n"


def plot(path: str, task: str, methods: dict) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  entry = next((e for e in methods.values() if e.get("head_entropy")), None)
  if entry is None:
    return
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  heads = np.arange(1, len(entry["head_entropy"]) + 1)
  axes[0].plot(heads, entry["head_entropy"], "o-")
  axes[0].axvline(entry["h_max"], color="gray", ls="--", label=f"h_max={entry['h_max']}")
  axes[0].set(xlabel="head", ylabel="mean entropy (nats)", title="Per-head entropy")
  axes[0].legend()
  ks = [int(k) for k in entry["oracle_topk"]]
  axes[1].plot(ks, list(entry["oracle_topk"].values()), "o-", label="oracle top-k")
  for method, e in methods.items():
    axes[1].axhline(e["block_efficiency"], ls=":", label=method, color=f"C{len(axes[1].lines)}")
  axes[1].set(xscale="log", xlabel="k", ylabel="block efficiency", title="Oracle top-k BE")
  axes[1].set_xticks(ks, [str(k) for k in ks])
  axes[1].legend(fontsize=8)
  for method, e in methods.items():
    hist = e.get("accepted_length_histogram")
    if hist and len(hist) > 1:
      axes[2].bar(np.arange(1, len(hist) + 1), hist, alpha=0.6, label=method)
  axes[2].set(xlabel="tokens per call", ylabel="calls", title="Accepted length")
  axes[2].legend(fontsize=8)
  fig.suptitle(task)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
