"""The evaluation report: report.json, report.md, one PNG per task, and the summary lines.
Formatting only (numpy and matplotlib, no jax)."""
from __future__ import annotations

import io
import json
import os
from typing import Optional, Sequence

import numpy as np

from bpdjax import fileio

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def report_files(output_dir: str, tasks: Sequence[str]) -> list[str]:
  """The files a report set of these tasks consists of."""
  return [fileio.join(output_dir, name)
          for name in [REPORT_JSON, REPORT_MD] + [f"{t}.png" for t in tasks]]


def _old_tasks(output_dir: str) -> Optional[list]:
  """The tasks an older report.json in `output_dir` covered; None when there is none or it is
  not one of decode.py's (unreadable, or no "tasks" mapping): then its set is not ours."""
  try:
    tasks = json.loads(fileio.read_text(fileio.join(output_dir, REPORT_JSON)))["tasks"]
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    return None
  return [str(t) for t in tasks] if isinstance(tasks, dict) else None


def _file_in(output_dir: str, name: str) -> str:
  """The path of file `name` directly in `output_dir`; ValueError when `name` is not a plain
  file name or (local) the path resolves outside `output_dir` (e.g. through a symlink)."""
  if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
    raise ValueError(f"Report file name {name!r} does not name a file inside --output "
                     f"{output_dir!r}")
  path = fileio.join(output_dir, name)
  if not fileio.is_remote(output_dir) and (os.path.dirname(os.path.realpath(path))
                                           != os.path.realpath(output_dir)):
    raise ValueError(f"{path} resolves to {os.path.realpath(path)}, outside --output "
                     f"{output_dir!r}: not touching it")
  return path


def _remove_file(path: str) -> None:
  """Removes a file (a symlink itself, not its target); a folder or a missing path is left."""
  if fileio.exists(path) and not fileio.isdir(path):
    fileio.as_path(path).unlink()


def clear(output_dir: str, tasks: Sequence[str]) -> None:
  """Removes the older report set a report.json of decode.py's in `output_dir` names, so that a
  failed or interrupted run leaves no report behind: report.json first (without it no set looks
  whole), then report.md and the PNG of each task it lists. Only those exact file names,
  directly in `output_dir`; a folder of such a name, and every file when there is no such
  report.json (a user's own report.md), are left alone. `tasks` (this run's, whose files
  `write` will write) and the older names are checked first: one that would resolve outside
  `output_dir` (a task name holding "../") is a ValueError, before anything is removed."""
  for task in tasks:
    _file_in(output_dir, f"{task}.png")
  old = _old_tasks(output_dir)
  if old is None:
    return
  paths = [_file_in(output_dir, name)
           for name in [REPORT_JSON, REPORT_MD] + [f"{t}.png" for t in old]]
  for path in paths:
    _remove_file(path)


def write(output_dir: str, report: dict) -> None:
  """Renders the whole set (one PNG of analyses per task, report.md, report.json) before
  writing any of it, then writes each file atomically, report.json last: its presence means
  the set is whole."""
  files = [(f"{task}.png", plot(task, methods)) for task, methods in report["tasks"].items()]
  files += [(REPORT_MD, markdown(report)), (REPORT_JSON, json.dumps(report, indent=2))]
  paths = [(_file_in(output_dir, name), data) for name, data in files]
  written = []
  try:
    for path, data in paths:
      if data is not None:
        fileio.write_atomic(path, data)
        written.append(path)
  except BaseException:  # Interrupted (SIGINT) or failed half-way: leave no partial set,
    for path in written:  # neither of what it wrote nor of an older set (our own) beside it.
      _remove_file(path)
    clear(output_dir, [])
    raise


def _fmt(x, spec=".3f"):
  if x is None:
    return "–"
  if isinstance(x, bool):
    return "yes" if x else "NO"
  return format(x, spec)


def _decoded(report: dict) -> str:
  """The examples each task decoded (the file may hold fewer than num_examples asked for)."""
  counts = report.get("examples_decoded", {})
  asked = report["settings"]["num_examples"]
  return ", ".join(f"{t} {n}" + (f" (of {asked} asked for)" if n < asked else "")
                   for t, n in counts.items()) or f"{asked} per task"


def _sampling_line(s: dict) -> str:
  """The sampling settings and whether the output is exact in distribution."""
  samp = s.get("sampling", {})
  if not s["temperature"]:
    return "Greedy decoding: every method's output must equal ar's.\n"
  exact = ("lossless (exact in distribution)" if s.get("lossless", True) else
           "LOSSY: typical acceptance does not sample from the model's distribution")
  return (f"Sampling: top_k={samp.get('top_k')}, top_p={samp.get('top_p')}, seed={s['seed']}, "
          f"acceptance={samp.get('acceptance')}: {exact}.\n")


def markdown(report: dict) -> str:
  s = report["settings"]
  lines = [
      "# bpdjax decoding report\n",
      f"Workdir `{s['workdir']}` (step {s['step']}), examples decoded: {_decoded(report)}, "
      f"max_new_tokens={s['max_new_tokens']}, batch_size={s['batch_size']}, "
      f"temperature={s['temperature']}, device: {s['device']}.\n",
      _sampling_line(s),
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
  lines += _quality_markdown(report)
  lines += _distribution_markdown(report)
  lines += _refinement_markdown(report)
  lines += _choice_markdown(report)
  return "\n".join(lines) + "\n"


def _quality_markdown(report: dict) -> list[str]:
  """Task quality beside block efficiency (the vanilla draft's, else the first method's)."""
  if not report.get("quality"):
    return []
  lines = ["\nTask quality of the outputs (computed once per task, on the named method's "
           "outputs; greedy outputs are identical across methods):\n",
           "| task | metric | value | examples | scored method | BE (vanilla draft) |", "|---|---|---|---|---|---|"]
  for task, q in report["quality"].items():
    methods = report["tasks"].get(task, {})
    vanilla = methods.get(report.get("vanilla", ""))
    be = (vanilla or next(iter(methods.values()), {})).get("block_efficiency")
    for metric, value in q.items():
      if metric in ("num_examples", "method", "identical_across_methods"):
        continue
      lines.append(f"| {task} | {metric} | {value:.4f} | {q['num_examples']} | {q['method']} | "
                   f"{_fmt(be)} |")
  return lines


def _distribution_markdown(report: dict) -> list[str]:
  """Sampling: each method's samples against the model (eval/distribution.py)."""
  rows = []
  for task, methods in report["tasks"].items():
    for method, e in methods.items():
      d = e.get("distribution_check")
      if d:
        rows.append(f"| {task} | {method} | {'yes' if e.get('lossless', True) else 'NO (lossy)'} "
                    f"| {_fmt(d['mean_logprob'])} ± {_fmt(d['logprob_se'])} | "
                    f"{_fmt(d.get('logprob_z_vs_ar'), '+.2f')} | {_fmt(d['second_token_tv'])} | "
                    f"{d['examples']} | {d['seed']} |")
  if not rows:
    return []
  return [
      "\nDistribution check of the samples: mean log q per generated token (q the processed "
      "sampling distribution; ± standard error over examples), the z-score of its paired "
      "difference from ar's (|z| > 3: not the model's distribution), and the total variation "
      "distance of the second generated tokens' histogram from the model's exact distribution "
      "of them (ar's value is the noise floor at this number of examples).\n",
      "| task | method | lossless | mean log q | z vs ar | 2nd-token TV | examples | seed |",
      "|---|---|---|---|---|---|---|---|"] + rows


def _choice_markdown(report: dict) -> list[str]:
  """Cost-aware methods: candidates chosen, predicted vs realized tokens per call, the cost
  tables used, and speed against the fastest other method of the same run."""
  rows = []
  for task, methods in report["tasks"].items():
    for method, e in methods.items():
      st = e.get("drafter_stats")
      if not st or "chosen" not in st:
        continue
      chosen = ", ".join(str(int(c)) for c in st["chosen"])
      rows.append(
          f"| {task} | {method} | {chosen} | {_fmt(st.get('predicted_tokens_per_call'))} | "
          f"{_fmt(st.get('realized_tokens_per_call'))} | {_fmt(e.get('vs_best_other'), '.2f')} |")
  if not rows:
    return []
  lines = [
      "\nCost-aware choice: steps per candidate (in the order of the cost table's sizes), "
      "expected tokens per verified call as predicted at choice time against those kept, and "
      "tokens/s over the fastest other method of this run.\n",
      "| task | method | steps per candidate | predicted tok/call | realized tok/call "
      "| vs best other |",
      "|---|---|---|---|---|---|"] + rows
  for table in report.get("cost_tables", []):
    rel = ", ".join(f"{n}: {r:.2f}" for n, r in zip(table["sizes"], table["relative"]))
    lines.append(f"\nCost table ({table['source']}, seconds of one iteration relative to "
                 f"size 1 = {table['seconds'][0] * 1e3:.3f} ms): {rel}")
  return lines


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
          f"{_fmt(e.get('drafting_ms_per_step'), '.3f')} | "
          f"{_fmt(e.get('vanilla_propose_ms'), '.3f')} | "
          f"{_fmt(e.get('drafting_share'), '.1%')} |")
  if not rows:
    return []
  return [
      "\nDraft refinement against vanilla BPD (heads' argmax). BE gain = BE / BE(bpd) - 1. "
      "Steps: per decode iteration, the kept length of the method's draft against the one the "
      "vanilla draft from the same context would have had (wins / ties / losses). Repairs: share "
      "of wins where the vanilla draft was rejected on a consecutive repetition. Repetition: "
      "consecutive repetition rate of the vanilla drafts → the method's drafts. Drafting: "
      "the jitted proposal's median time per loop step (the vanilla draft's beside it; a "
      "refinement adds the difference), and its share of the measured step time.\n",
      "| task | method | BE gain vs bpd | steps W / T / L | repairs | draft repetition "
      "| drafting ms/step | vanilla ms/step | share of step |",
      "|---|---|---|---|---|---|---|---|---|",
  ] + rows


def plot(task: str, methods: dict) -> Optional[bytes]:
  """PNG bytes of a task's analyses (entropy per head, oracle BE, accepted lengths), or None
  when no method recorded analyses."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (heavy; only when plotting)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  entry = next((e for e in methods.values() if e.get("head_entropy")), None)
  if entry is None:
    return None
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
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=90)
  plt.close(fig)
  return buffer.getvalue()


def summary_lines(result: dict) -> list[str]:
  """One line per task and method: BE, accepted tokens per call, speed, identity with ar."""
  lines = []
  baselines = (result.get("reference"), result.get("vanilla"))
  for task, methods in result["tasks"].items():
    for method, e in methods.items():
      speed = e.get("speedup_vs_ar")
      lines.append(
          f"{task:14s} {method:6s} BE {e['block_efficiency']:.3f}  acc/call "
          f"{e['accepted_tokens_per_call']:.3f}  {e['tokens_per_second']:8.1f} tok/s"
          + (f"  speedup {speed:.2f}" if speed is not None else "")
          + (f"  identical {e['identical_to_ar']}" if e.get("identical_to_ar") is not None else "")
          + (_refinement_summary(e) if method not in baselines else "")
          + _choice_summary(e))
  return lines


def _choice_summary(e: dict) -> str:
  """Predicted vs realized tokens per call of a cost-aware method."""
  st = e.get("drafter_stats") or {}
  if "predicted_tokens_per_call" not in st:
    return ""
  return (f"  predicted {st['predicted_tokens_per_call']:.3f} / realized "
          f"{st['realized_tokens_per_call']:.3f} tok/call")


def _refinement_summary(e: dict) -> str:
  """BE gain over bpd, steps won/tied/lost against the vanilla draft, rescoring cost."""
  out = ""
  if e.get("be_gain_vs_bpd") is not None:
    out += f"  vs bpd {e['be_gain_vs_bpd']:+.1%}"
  st = e.get("steps_vs_vanilla")
  if st and st["iterations"]:
    out += f"  W/T/L {st['win_fraction']:.0%}/{st['tie_fraction']:.0%}/{st['loss_fraction']:.0%}"
    if e.get("repetition_repair_share") is not None:
      out += f" (repairs {e['repetition_repair_share']:.0%} of wins)"
  if e.get("drafting_ms_per_step") is not None and e.get("drafting_share") is not None:
    out += f"  drafting {e['drafting_ms_per_step']:.2f} ms/step ({e['drafting_share']:.0%})"
  return out
