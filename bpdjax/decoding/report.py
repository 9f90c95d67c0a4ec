"""Evaluation report: per task and method metrics, the paper's analyses, JSON, markdown, plots."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from bpdjax.decoding import analysis
from bpdjax.decoding import generate

ORACLE_KS = (1, 2, 4, 8, 16)


def speed_metrics(generations: Sequence[generate.Generation],
                  timings: Sequence[generate.BatchTiming]) -> dict:
  """Speed of the timed run. loop_steps: serial steps of the batched decode loop (per batch, its
  prefill plus loop iterations = the most calls any of its rows took), each of which runs the
  drafter's propose once; ms_per_step = wall time / loop_steps."""
  lengths = np.array([len(g.tokens) for g in generations])
  calls = np.array([g.calls for g in generations])
  seconds = float(sum(t.seconds for t in timings))
  steps, start = 0, 0
  for t in timings:
    steps += max((g.calls for g in generations[start:start + t.rows]), default=0)
    start += t.rows
  return {
      "examples": len(generations),
      "tokens": int(lengths.sum()),
      "calls": int(calls.sum()),
      "block_efficiency": analysis.block_efficiency(lengths, calls),
      "accepted_tokens_per_call": analysis.accepted_draft_tokens_per_call(lengths, calls),
      "wall_seconds": seconds,
      "tokens_per_second": float(lengths.sum() / max(seconds, 1e-9)),
      "loop_steps": int(steps),
      "ms_per_step": seconds * 1e3 / steps if steps else None,
  }


def draft_analyses(generations: Sequence[generate.Generation], draft_len: int,
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


def _stack_records(generations: Sequence[generate.Generation]):
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


def refinement_analyses(generations: Sequence[generate.Generation], draft_len: int,
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


def compare_to_bpd(report_task: dict) -> None:
  """Adds be_gain_vs_bpd = BE(method) / BE(bpd) - 1 to every method of a task that ran "bpd"."""
  if "bpd" not in report_task:
    return
  base = report_task["bpd"]["block_efficiency"]
  for entry in report_task.values():
    entry["be_gain_vs_bpd"] = entry["block_efficiency"] / base - 1.0 if base else None


def rescoring_cost(generator: generate.Generator, method: str,
                   prompts: Sequence[np.ndarray], max_new_tokens: int, batch_size: int,
                   repetitions: int = 30) -> dict:
  """What the method's drafting costs per decode step beyond the vanilla top-1 draft.

  Measured, not modelled: the first batch of `prompts` is padded as Generator.generate pads it
  and prefilled by the model exactly as the decode loop does, giving the head logits
  [B, h, V] at each row's last prompt token, its greedy next token and the drafter's started
  state (e.g. n-gram history, a rescoring LM's cache). drafter.propose is jitted alone on these
  inputs and timed (block_until_ready) `repetitions` times after a warm-up, interleaved with
  the same for drafters.TopOneDrafter(L) (the vanilla draft: argmax per head); each median is
  taken. rescoring_ms_per_step = median(method) - median(vanilla): the refinement's own cost
  per propose call, i.e. per loop step (it can come out slightly negative from timing noise,
  and is reported as measured). The "vanilla" method "bpd" gets 0.0 without measuring; methods
  that do not draft from the heads (ar) get None. Pair it with `speed_metrics`'s ms_per_step
  (same batch size) through `add_rescoring_share`.

  Returns:
    {"propose_ms", "vanilla_propose_ms", "rescoring_ms_per_step"} (values may be None).
  """
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bpdjax import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from bpdjax.decoding import drafters  # pylint: disable=g-import-not-at-top
  from bpdjax.decoding import loop  # pylint: disable=g-import-not-at-top

  none = {"propose_ms": None, "vanilla_propose_ms": None, "rescoring_ms_per_step": None}
  probe = generator.drafter(method)
  if not probe.uses_heads:
    return none
  if isinstance(probe, drafters.TopOneDrafter):
    return dict(none, rescoring_ms_per_step=0.0)
  cfg = generator.config
  chunk = [np.asarray(p, np.int32) for p in prompts[:batch_size]]
  longest = max(len(p) for p in chunk)
  bucket = generate._PROMPT_BUCKET  # pylint: disable=protected-access
  width = min(-(-longest // bucket) * bucket, cfg.max_len - max_new_tokens)
  batch = np.zeros((batch_size, width), np.int32)
  lengths = np.zeros((batch_size,), np.int32)
  for i, p in enumerate(chunk):
    batch[i, :len(p)], lengths[i] = p, len(p)
  drafter = generator.drafter(method, width + max_new_tokens + loop.block_size(probe))
  vanilla = drafters.TopOneDrafter(drafter.draft_len)
  fns = loop.model_fns(generator.model)
  cache_len = width + max_new_tokens + loop.block_size(drafter)

  @jax.jit
  def prefill(params, prompts, prompt_lengths):
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), prompts.shape)
    cache = cache_lib.init_for_model(cfg, prompts.shape[0], cache_len)
    hidden, _ = fns.forward(params, prompts, positions, cache)
    last = jnp.take_along_axis(hidden, jnp.maximum(prompt_lengths - 1, 0)[:, None, None], 1)
    logits = fns.logits(params, last, 0, fns.num_heads)[:, 0]                   # [B, h, V]
    return logits, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)

  def measure():
    logits, next_token = prefill(generator.params, jnp.asarray(batch), jnp.asarray(lengths))
    drafter_params = generator._drafter_params(method)  # pylint: disable=protected-access
    state = jax.jit(drafter.start)(drafter_params, jnp.asarray(batch), jnp.asarray(lengths))
    fns_by_name = {"method": (jax.jit(drafter.propose), state),
                   "vanilla": (jax.jit(vanilla.propose), ())}
    times = {name: [] for name in fns_by_name}
    for name, (fn, st) in fns_by_name.items():
      jax.block_until_ready(fn(st, logits, next_token))                         # Compile.
    for _ in range(repetitions):
      for name, (fn, st) in fns_by_name.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(st, logits, next_token))
        times[name].append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times["method"])), float(np.median(times["vanilla"]))

  if generator.mesh is None:
    method_ms, vanilla_ms = measure()
  else:
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    with jax.set_mesh(generator.mesh), nn.logical_axis_rules(generator.rules):
      method_ms, vanilla_ms = measure()
  return {"propose_ms": method_ms, "vanilla_propose_ms": vanilla_ms,
          "rescoring_ms_per_step": method_ms - vanilla_ms}


def add_rescoring_share(entry: dict, cost: dict) -> None:
  """Puts a `rescoring_cost` result into a method's entry (in place), with rescoring_share =
  rescoring_ms_per_step / ms_per_step: the refinement's share of the measured wall time of one
  decode-loop step of that method (speed_metrics)."""
  entry.update(cost)
  ms, step = cost.get("rescoring_ms_per_step"), entry.get("ms_per_step")
  entry["rescoring_share"] = ms / step if ms is not None and step else None


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
      "# bpdjax decoding report\n",
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
  lines += _refinement_markdown(report)
  return "\n".join(lines) + "\n"


def _refinement_markdown(report: dict) -> list[str]:
  """The draft-refinement table: methods with a draft, against vanilla BPD."""
  rows = []
  for task, methods in report["tasks"].items():
    for method, e in methods.items():
      if e.get("vanilla_repetition_rate") is None:  # No draft (ar).
        continue
      st = e.get("steps_vs_vanilla")
      wtl = (f"{st['wins']} / {st['ties']} / {st['losses']} "
             f"({_fmt(st['win_fraction'], '.1%')} / {_fmt(st['tie_fraction'], '.1%')} / "
             f"{_fmt(st['loss_fraction'], '.1%')})" if st else "–")
      gain = e.get("be_gain_vs_bpd")
      rows.append(
          f"| {task} | {method} | {_fmt(gain, '+.1%')} | {wtl} | "
          f"{_fmt(e.get('repetition_repair_share'), '.1%')} | "
          f"{_fmt(e.get('vanilla_repetition_rate'))} → {_fmt(e.get('repetition_rate'))} | "
          f"{_fmt(e.get('rescoring_ms_per_step'), '.3f')} | "
          f"{_fmt(e.get('rescoring_share'), '.1%')} |")
  if not rows:
    return []
  return [
      "\nDraft refinement against vanilla BPD (heads' argmax). BE gain = BE / BE(bpd) - 1. "
      "Steps: per decode iteration, the kept length of the method's draft against the one the "
      "vanilla draft from the same context would have had (wins / ties / losses). Repairs: share "
      "of wins where the vanilla draft was rejected on a consecutive repetition. Repetition: "
      "consecutive repetition rate of the vanilla drafts → the method's drafts. Rescoring: "
      "jitted propose time beyond the vanilla draft's, per loop step, and its share of the "
      "measured step time.\n",
      "| task | method | BE gain vs bpd | steps W / T / L | repairs | draft repetition "
      "| rescoring ms/step | share of step |",
      "|---|---|---|---|---|---|---|---|",
  ] + rows


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
