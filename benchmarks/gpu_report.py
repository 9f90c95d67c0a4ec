"""The accelerator check's inputs and report (benchmarks/gpu_check.sh); no JAX.

  python benchmarks/gpu_report.py --prompts=INPUTS --config=bpdjax/configs/gpu_base.py[:smoke]
  python benchmarks/gpu_report.py --report=OUT [--smoke]

--prompts: checks INPUTS/shards against the run's config (the vocabulary size and the
  tokenizer's sha256 in its manifest; shards of another vocabulary are an error) and writes the
  decode prompts beside them: INPUTS/heldout.jsonl, the first --prompt_tokens tokens of each
  held-out document (the shards' validation split, decoded to text), and INPUTS/lambada.jsonl,
  the first --num_prompts LAMBADA contexts (copied from data_dir once, then carried with INPUTS).
--report: OUT/gpu_check.md (the summary table, the targets, then each stage's table) and
  OUT/gpu_check.json (every number) from what the stages wrote.
"""
import json
import os
import re
import runpy

from absl import app
from absl import flags

from bpdjax.data import token_files
from bpdjax.data import tokenizers

_PROMPTS = flags.DEFINE_string("prompts", "", "Inputs folder: check shards, write prompts.")
_CONFIG = flags.DEFINE_string("config", "bpdjax/configs/gpu_base.py", "The run config (path[:variant]).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 64, "Tokens of each held-out prompt.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 64, "Prompts per task.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where lambada/ is ('' = the config's).")
_REPORT = flags.DEFINE_string("report", "", "Output folder of the check: write the report.")
_SMOKE = flags.DEFINE_bool("smoke", False, "The report is of a smoke run.")
_TRAIN = flags.DEFINE_string("train_summary", "", "A workdir: print its training table.")

DECODE_STAGES = ("decode_heldout", "decode_lambada")


def _config(spec: str):
  path, _, variant = spec.partition(":")
  return runpy.run_path(path)["get_config"](*([variant] if variant else []))


def write_prompts(inputs: str) -> None:
  config = _config(_CONFIG.value)
  shards = os.path.join(inputs, "shards")
  manifest = token_files.check_manifest(shards, config.model.vocab_size)
  model_format, vocab_path = token_files.manifest_tokenizer(shards)
  if model_format != "sentencepiece" or manifest.get("vocab_sha256") != token_files.file_sha256(
      vocab_path):
    raise ValueError(f"{shards}: its vocabulary {vocab_path!r} is not the one its manifest names "
                     f"(vocab_sha256 {manifest.get('vocab_sha256')})")
  tok = tokenizers.load_tokenizer(vocab_path)
  docs = token_files.read_token_split(shards, "validation", config.model.vocab_size)
  n = _PROMPT_TOKENS.value
  heldout = [tok.decode([int(t) for t in d[:n]]) for d in docs if len(d) > n][:_NUM_PROMPTS.value]
  _write_jsonl(os.path.join(inputs, "heldout.jsonl"), heldout)
  lambada = os.path.join(inputs, "lambada.jsonl")
  if not os.path.exists(lambada):
    source = os.path.join(_DATA_DIR.value or config.data_dir, "lambada", "lambada_test.jsonl")
    with open(source, encoding="utf-8") as f:
      texts = [json.loads(line)["text"] for line in f if line.strip()][:_NUM_PROMPTS.value]
    # The context: the passage minus its last word (the LAMBADA target).
    _write_jsonl(lambada, [t.rsplit(" ", 1)[0] for t in texts])
  print(f"| shards | vocabulary | train tokens | validation tokens | MiB | held-out prompts | "
        f"lambada prompts |\n|---|---|---|---|---|---|---|\n| {shards} | {manifest['vocab_size']} "
        f"(sha256 {manifest['vocab_sha256'][:12]}) | {manifest['splits']['train']['tokens']:,} | "
        f"{manifest['splits']['validation']['tokens']:,} | {manifest['bytes'] / 2**20:.1f} | "
        f"{len(heldout)} x {n} tokens | {sum(1 for _ in open(lambada))} |")


def _write_jsonl(path, prompts):
  if not prompts:
    raise ValueError(f"no prompts for {path}")
  with open(path, "w", encoding="utf-8") as f:
    for i, p in enumerate(prompts):
      f.write(json.dumps({"id": i, "prompt": p}) + "\n")


def _markdown_rows(path: str) -> list[dict]:
  """The rows of the markdown tables in a file, as dicts keyed by their header."""
  rows, header = [], None
  if not os.path.exists(path):
    return rows
  for line in open(path, encoding="utf-8"):
    cells = ([c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|")
             else None)
    if cells is None:
      header = None
    elif header is None:
      header = cells
    elif not set("".join(cells)) <= set("-: "):
      rows.append(dict(zip(header, cells)))
  return rows


def _read(path):
  return json.load(open(path)) if os.path.exists(path) else None


def report(out: str) -> None:
  stages = [dict(zip(("stage", "seconds", "exit", "timeout"), l.rstrip("\n").split("\t")))
            for l in open(os.path.join(out, "stages.tsv"))]
  probe, floor = _read(os.path.join(out, "probe.json")), _read(os.path.join(out, "floor.json"))
  decode = {s: _markdown_rows(os.path.join(out, f"{s}.md")) for s in DECODE_STAGES}
  targets = _targets(floor, decode) if floor else []
  result = {"smoke": _SMOKE.value, "stages": stages, "probe": probe, "floor": floor,
            "decode": decode, "targets": targets}
  with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(result, f, indent=1)
  device = f"{probe['device_kind']} ({probe['backend']})" if probe else "?"
  lines = [f"# gpu_check{' --smoke' if _SMOKE.value else ''}: {device}", "",
           "| stage | seconds | timeout | exit |", "|---|---|---|---|"]
  lines += [f"| {s['stage']} | {s['seconds']} | {s['timeout']} | {s['exit']} |" for s in stages]
  if targets:
    lines += ["", "| target | measured | held |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['held']} |" for t in targets]
  for s in stages:
    path = os.path.join(out, f"{s['stage']}.md")
    if os.path.exists(path):
      lines += ["", f"## {s['stage']}", "", open(path, encoding="utf-8").read().strip()]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "gpu_check.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)


def _targets(floor: dict, decode: dict) -> list[dict]:
  """The issue's targets, each with what was measured and whether it held."""
  out = []
  b1 = floor["batches"].get("1")
  if b1:
    out.append({"target": "AR at batch 1 within 1.5x of the bandwidth floor",
                "measured": f"{b1['ar_over_floor']:.2f}x", "held": b1["ar_over_floor"] <= 1.5})
  for batch, b in floor["batches"].items():
    for method in ("ar", "bpd"):
      share = b["loop_overhead"][method]["share"]
      out.append({"target": f"loop overhead < 15% of an iteration of {method}, batch {batch}",
                  "measured": f"{share:.1%}", "held": share < 0.15})
  h = floor["sizes"].index(floor["h"])  # The full chain: bpd's verify size.
  for stage, rows in decode.items():
    for batch in sorted({r["batch"] for r in rows}):
      by = {r["method"]: r for r in rows if r["batch"] == batch}
      if "bpd" in by and "ar" in by and batch in floor["batches"]:
        verify = floor["batches"][batch]["cost_relative"][h]
        want = 0.85 * float(by["bpd"]["BE"]) / verify
        got = float(by["bpd"]["vs ar"])
        out.append({"target": f"{stage} batch {batch}: bpd speedup >= 0.85 x BE x t_AR / "
                              f"t_verify", "measured": f"{got:.2f} vs {want:.2f}",
                    "held": got >= want})
      if "auto" in by:
        fixed = [float(r["tokens/s"]) for m, r in by.items() if m not in ("auto", "ar")]
        auto = float(by["auto"]["tokens/s"])
        out.append({"target": f"{stage} batch {batch}: auto >= 1.0x ar and >= the best fixed "
                              "method", "measured": f"{float(by['auto']['vs ar']):.2f}x ar, "
                              f"{auto / max(fixed + [1e-9]):.2f}x best fixed",
                    "held": float(by["auto"]["vs ar"]) >= 1.0 and auto >= max(fixed + [0.0])})
  return out


def train_summary(workdir: str) -> None:
  """One row: the run's steps, its budget stop, last logged loss and speed, its checkpoint."""
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [r for r in records if "loss" in r]
  if not logged:
    raise ValueError(f"{workdir}: no training step logged")
  last = logged[-1]
  stop = next((r["stopped_by_budget"] for r in records if "stopped_by_budget" in r), None)
  folder = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
  config = json.load(open(os.path.join(workdir, "config.json")))
  budget = (f"{stop['elapsed_seconds']:.0f} s of {stop['max_train_seconds']:.0f} s (last step "
            f"{stop['last_step_seconds']:.3f} s)" if stop else "not reached")
  print("| steps | of | budget stop | loss (last log) | accuracy head 1 / h | tokens/s | "
        "checkpoint |\n|---|---|---|---|---|---|---|\n"
        f"| {last['step']} | {config['num_train_steps']} | {budget} | {last['loss']:.4f} | "
        f"{last['accuracy'][0]:.3f} / {last['accuracy'][-1]:.3f} | "
        f"{last.get('tokens_per_second', 0):,.0f} | {steps[-1] if steps else 'none'} |")


def main(argv):
  del argv
  if _TRAIN.value:
    train_summary(_TRAIN.value)
  elif _PROMPTS.value:
    write_prompts(_PROMPTS.value)
  elif _REPORT.value:
    report(_REPORT.value)
  else:
    raise app.UsageError("--prompts=INPUTS or --report=OUT")


if __name__ == "__main__":
  app.run(main)
