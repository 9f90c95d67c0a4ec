"""Learned draft refinement against the heads and prompt lookup: one table on held-out story
openings (issue 32).

  python -m bpdjax.bench learned_drafts --ffn=workdirs/ts_ffn --sequential=workdirs/ts_seq \
      --markov=workdirs/ts_markov --output=out/learned_drafts     # WORKDIR@STEP: a checkpoint
      [--rescorer=workdirs/ts_rescorer --ngram_arpa=workdirs/ts_ffn/ngram4.arpa]  # the paper's

Three head sets on the same frozen TinyStories-656K (configs/tinystories_heads.py, h = 4 unless
trained with another): ffn heads (the paper's), sequential heads (Hydra) and ffn heads with a
Markov correction; the paper's local and global (n-gram DP) rescoring of the ffn heads' lattice
are rows too when their resources are given. The
prompts are benchmarks/story_openings.jsonl plus the first --num_heldout held-out openings of
the distillation data (its validation split, never trained on); --tune_offset.. are the
openings tuning may use, disjoint from these. Every row decodes them greedily (identical to ar
checked token by token) and at T = 1 (one seed); block efficiency (BE) is tokens per model call.
Drafting cost is counted: multiply-accumulates per drafting step of the head calls the drafter
makes, beside one plain step's (the layers' weights, head 1's FFN and its vocabulary
projection; attention over the context left out); and timed: after the BE runs, every row
decodes the prompts greedily at each --speed_batches size in --rounds alternating rounds (one
warm-up each; tokens/s median, ms per serial loop step, the ratio to ar's tokens/s), so all
rows of a run, head sets included, are timed side by side. Conditional
acceptance: share of verify calls keeping the i-th draft token among those that kept the ones
before it. Training time comes from the workdir's metrics.jsonl (tokens / tokens_per_second,
on whatever machine trained it). Writes OUTPUT/learned_drafts.{json,md} and appends the
table to --markdown (docs/results/learned_drafts.md).
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from benchmarks import common
from benchmarks import results as results_page
from benchmarks.pipelines import heldout_openings
from bpdjax import api
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib
from bpdjax.data import eval_tasks
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import resources as resources_lib
from bpdjax.decoding import sampling
from bpdjax.decoding.drafters import conditioned
from bpdjax.decoding.drafters import local
from bpdjax.decoding.drafters import medusa
from bpdjax.decoding.drafters import prompt_lookup

_HERE = os.path.dirname(os.path.abspath(__file__))

MAX_CONDITIONAL = 5   # Conditional acceptance reported for draft tokens 2..6 at most.

# (label, head set, method, options): the table's rows, in order (then rows()'s two).
ROWS = (
    ("ar", "ffn", "ar", {}),
    ("bpd", "ffn", "bpd", {}),
    ("pbest_0gram (k=16; p=16)", "ffn", "pbest_0gram", {}),
    ("medusa-64", "ffn", "medusa", dict(tree_size=64)),
    ("prompt_lookup (10 tokens; n<=2)", "ffn", "prompt_lookup", {}),
    ("prompt_lookup + medusa-64", "ffn", "prompt_lookup_tree", dict(tree_size=64)),
    ("local (--rescorer)", "ffn", "local", {}),
    ("ngram (--ngram_arpa; dp)", "ffn", "ngram", {}),
    ("sequential chain", "sequential", "sequential", {}),
    ("sequential tree-64", "sequential", "sequential_tree", dict(tree_size=64)),
    ("prompt_lookup + sequential tree-64", "sequential", "prompt_lookup_tree",
     dict(tree_size=64)),
    ("markov chain", "markov", "markov", {}),
    ("markov tree-64", "markov", "markov_tree", dict(tree_size=64)),
)


def rows(markov_candidates: int):
  """ROWS, then the Markov rows with the correction on each head's markov_candidates best."""
  scored = f"({markov_candidates} scored)"
  return ROWS + (
      (f"markov chain {scored}", "markov", "markov", dict(markov_candidates=markov_candidates)),
      (f"markov tree-64 {scored}", "markov", "markov_tree",
       dict(tree_size=64, markov_candidates=markov_candidates)))


def story_prompts(loaded, workdir: str, num_heldout: int, offset: int, max_prompt: int,
                  scratch: str, with_story_openings: bool = True) -> list[np.ndarray]:
  """Token ids of story_openings.jsonl (unless not with_story_openings) then held-out openings
  offset..offset+num_heldout-1."""
  records = []
  if with_story_openings:
    records = [json.loads(line) for line in open(os.path.join(_HERE, "story_openings.jsonl"))]
  held = heldout_openings.openings(workdir, 24)[offset:offset + num_heldout]
  if len(held) < num_heldout:
    raise ValueError(f"Only {len(held)} held-out openings from {offset} in {workdir}")
  path = os.path.join(scratch, "prompts.jsonl")
  with open(path, "w") as f:
    for i, r in enumerate(records + held):
      f.write(json.dumps({"id": str(i), "prompt": r["prompt"]}) + "\n")
  examples = eval_tasks.load_prompts("jsonl", loaded.config.data_dir,
                                     workdir_lib.vocab_path(workdir), None, max_prompt,
                                     jsonl_path=path)
  return [e["prompt_tokens"] for e in examples]


def conditional_acceptance(generations, positions: int) -> list[float]:
  """P(call keeps draft token i | it kept tokens 1..i-1), i = 2..positions+1 (token 1 is the
  model's own)."""
  kept = np.concatenate([g.records["kept"] for g in generations])
  kept = kept[kept > 0]
  return [float(np.sum(kept >= i) / max(np.sum(kept >= i - 1), 1))
          for i in range(2, positions + 2)]


def head_macs(cfg, i: int, markov_candidates: int = 0) -> int:
  """Multiply-accumulates of head i (1-based) at one position, its vocabulary term included
  (a Markov correction's: r x V, or r x markov_candidates when it scores that many tokens; the
  top-k selection's comparisons uncounted)."""
  d, hidden, v = cfg.emb_dim, cfg.head_hidden_dim, cfg.vocab_size
  if cfg.head_type == "sequential" and i > 1:
    body = i * d * hidden + hidden * d
  elif cfg.head_type == "medusa":
    body = d * d if i > 1 else 0
  else:
    body = 2 * d * hidden
  markov = cfg.markov_rank * (markov_candidates or v) if (i > 1 and cfg.markov_rank > 0) else 0
  return body + d * v + markov


def step_macs(cfg, params) -> int:
  """One plain decoding step: every layer weight once, then head 1."""
  layers = sum(int(np.size(x)) for k, p in params.items() if k.startswith("layer_")
               for x in jax.tree.leaves(p))
  return layers + head_macs(cfg, 1)


def drafting_macs(drafter, cfg, drafter_params=None) -> int:
  """Head MACs one propose spends (prompt lookup: none, only token comparisons; the n-gram DP:
  the heads' only, table look-ups uncounted; local rescoring: the heads' and one rescorer step
  per token it feeds, the draft's length)."""
  if isinstance(drafter, prompt_lookup.MergedDrafter):
    return drafting_macs(drafter.tree, cfg)
  if isinstance(drafter, local.LocalRescoreDrafter):
    rescorer = drafter.rescorer.model.config
    return (sum(head_macs(cfg, i) for i in range(2, drafter.draft_len + 1))
            + drafter.draft_len * step_macs(rescorer, drafter_params))
  if isinstance(drafter, prompt_lookup.PromptLookupDrafter):
    return 0
  if isinstance(drafter, conditioned.ConditionedTreeDrafter):
    topology = drafter.topology
    depth, parents = np.asarray(topology.depth), np.asarray(topology.parents)
    return sum(len(np.unique(parents[depth == d]))
               * head_macs(cfg, d + 1, drafter.markov_candidates)
               for d in range(1, topology.max_depth + 1))
  if isinstance(drafter, conditioned.ConditionedChainDrafter):
    return sum(head_macs(cfg, i, drafter.markov_candidates)
               for i in range(2, drafter.last_head + 1))
  last = drafter.last_head
  if isinstance(drafter, medusa.MedusaTreeDrafter):
    last = drafter.draft_len
  return sum(head_macs(cfg, i) for i in range(2, last + 1))


def trained_heads(loaded) -> tuple[int, float]:
  """(parameters of the trained heads 2..h and corrections, training seconds to its step)."""
  count = sum(int(np.size(x)) for k, p in loaded.params.items()
              if k.startswith("head_") and k != "head_1" for x in jax.tree.leaves(p))
  config = loaded.config
  tokens = config.log_every_steps * config.batch_size * config.data.seq_len
  seconds = 0.0
  path = os.path.join(config_workdir(loaded), "metrics.jsonl")
  with open(path) as f:
    for line in f:
      entry = json.loads(line)
      if "tokens_per_second" in entry and entry["step"] <= loaded.step:
        seconds += tokens / entry["tokens_per_second"]
  return count, seconds


def config_workdir(loaded) -> str:
  return loaded.config.get("_workdir", "")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--ffn", default="", help="Workdir[@step] of each head set.")
  ap.add_argument("--sequential", default="", help="(rows of a head set left out skip)")
  ap.add_argument("--markov", default="")
  ap.add_argument("--rescorer", default="", help="Workdir of local rescoring's LM (the local row).")
  ap.add_argument("--ngram_arpa", default="", help="ARPA n-gram LM of the ngram row.")
  ap.add_argument("--output", default="out/learned_drafts")
  ap.add_argument("--num_heldout", type=int, default=24)
  ap.add_argument("--heldout_offset", type=int, default=0,
                  help="First held-out opening reported (tuning used 100..131).")
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--batch_size", type=int, default=4)
  ap.add_argument("--heldout_only", action="store_true",
                  help="Held-out openings only, no story openings (tuning: --heldout_offset=100).")
  ap.add_argument("--markov_candidates", type=int, default=256,
                  help="Tokens per head the Markov correction scores in the '(K scored)' rows.")
  ap.add_argument("--rows", default="", help="Comma-separated labels (default: all).")
  ap.add_argument("--speed_batches", default="1,8",
                  help="Batch sizes at which every row is timed greedily ('': none).")
  ap.add_argument("--rounds", type=int, default=3,
                  help="Alternating timed rounds over the rows (median reported).")
  ap.add_argument("--merge", default="", help="Comma-separated OUTPUT folders of earlier runs: "
                  "one table of their rows (ar once), head sets named with step, h and rank.")
  ap.add_argument("--markdown", default=results_page.default_path("learned_drafts"),
                  help=results_page.HELP + " Default: %(default)s.")
  args = ap.parse_args()
  os.makedirs(args.output, exist_ok=True)
  if args.merge:
    merge(args.merge.split(","), args.output, args.markdown)
    return
  if not args.ffn:
    raise SystemExit("--ffn is required (the ar reference and the ffn rows)")
  workdirs = {n: w for n, w in (("ffn", args.ffn), ("sequential", args.sequential),
                                 ("markov", args.markov)) if w}
  loaded, generators = {}, {}
  for name, spec in workdirs.items():
    path, _, step = spec.partition("@")
    workdirs[name] = path
    loaded[name] = api.load(path, step=int(step) if step else None)
    loaded[name].config.unlock()
    loaded[name].config["_workdir"] = path
    generators[name] = generator_lib.Generator(loaded[name].model, loaded[name].params,
                                               eos_id=loaded[name].vocab.eos_id)
  base = {n: params_lib.params_checksum(l.params) for n, l in loaded.items()}
  if len(set(base.values())) != 1:
    raise ValueError(f"The head sets sit on different bases: {base}")
  resources = resources_lib.load(dict(rescorer_workdir=args.rescorer, ngram_arpa=args.ngram_arpa),
                                 workdirs["ffn"], loaded["ffn"].model.config.vocab_size)
  prompts = story_prompts(loaded["ffn"], workdirs["ffn"], args.num_heldout, args.heldout_offset,
                          loaded["ffn"].model.config.max_len - args.max_new_tokens, args.output,
                          with_story_openings=not args.heldout_only)
  wanted = set(args.rows.split(",")) if args.rows else None
  results, reference, timed = [], None, {}
  for label, head_set, method, options in rows(args.markov_candidates):
    if head_set not in loaded or (wanted is not None and label not in wanted and method != "ar"):
      continue
    if any(resources.get(kind) is None for kind in methods.get(method).resources):
      continue
    cfg = loaded[head_set].model.config
    built = methods.build(method, cfg, resources, **options)
    gen = generators[head_set]
    greedy, _ = gen.generate(prompts, built, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, record=1)
    sampled, _ = gen.generate(prompts, built, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size,
                              sampling_config=sampling.SamplingConfig(temperature=1.0),
                              rng=jax.random.PRNGKey(0))
    outputs = [list(map(int, g.tokens)) for g in greedy]
    if reference is None:
      reference = outputs
    be = lambda gs: sum(len(g.tokens) for g in gs) / sum(g.calls for g in gs)
    positions = min(built.drafter.topology.path_len - 1, MAX_CONDITIONAL)
    row = dict(label=label, heads=head_set, method=method, options=options,
               be_greedy=be(greedy), be_t1=be(sampled),
               identical=sum(o == r for o, r in zip(outputs, reference)),
               prompts=len(prompts), nodes=built.drafter.topology.size,
               drafting_macs=drafting_macs(built.drafter, cfg, built.params),
               step_macs=step_macs(cfg, loaded[head_set].params),
               conditional=conditional_acceptance(greedy, positions) if positions else [])
    results.append(row)
    print(json.dumps(row), flush=True)
    timed[label] = (gen, built)
  width = generator_lib.bucket_width(max(len(p) for p in prompts),
                                     loaded["ffn"].model.config.max_len, args.max_new_tokens)
  for batch in [int(b) for b in args.speed_batches.split(",") if b]:
    speeds = time_rows(timed, prompts, args.max_new_tokens, batch, width, args.rounds)
    for row in results:
      row.setdefault("speed", {})[str(batch)] = speeds[row["label"]]
      print(row["label"], batch, speeds[row["label"]], flush=True)
  heads = {}
  for name, l in loaded.items():
    count, seconds = trained_heads(l)
    heads[name] = dict(workdir=workdirs[name], params=count, train_seconds=seconds,
                       step=l.step, head_type=l.model.config.head_type,
                       markov_rank=l.model.config.markov_rank, h=l.model.config.num_heads_bpd)
  with open(os.path.join(args.output, "learned_drafts.json"), "w") as f:
    json.dump(dict(rows=results, heads=heads, args=vars(args)), f, indent=1)
  text = markdown(results, heads, len(prompts), args.max_new_tokens)
  with open(os.path.join(args.output, "learned_drafts.md"), "w") as f:
    f.write(text)
  print(text)
  results_page.append(args.markdown, "learned_drafts", text)


def time_rows(timed, prompts, max_new: int, batch: int, width: int, rounds: int) -> dict:
  """{label: tokens/s (median of alternating rounds, after one warm-up each), its ratio to ar's,
  and ms per serial loop step} of every row decoding the prompts greedily at this batch."""
  def measure(label):
    gen, built = timed[label]
    return gen.generate(prompts, built, max_new_tokens=max_new, batch_size=batch,
                        prompt_width=width)

  runs = common.alternating_rounds(list(timed), measure, rounds)
  ar = runs[next(label for label in timed if timed[label][1].drafter.topology.size == 1)][0]
  return {label: dict(tokens_per_second=tps, vs_ar=tps / ar, ms_per_call=entry["ms_per_step"])
          for label, (tps, entry, _) in runs.items()}


def merge(folders, output: str, page: str) -> None:
  rows, heads, prompts, max_new = [], {}, 0, 0
  for folder in folders:
    with open(os.path.join(folder, "learned_drafts.json")) as f:
      run = json.load(f)
    def name(n):   # Unique across runs: step, h and the Markov rank.
      hd = run["heads"][n]
      rank = f" r={hd['markov_rank']}" if hd["markov_rank"] else ""
      return f"{n}@{hd['step']} h={hd['h']}{rank}"
    for r in run["rows"]:
      if r["method"] != "ar" or not rows:
        rows.append(dict(r, heads=name(r["heads"])))
    heads.update({name(n): h for n, h in run["heads"].items()})
    prompts, max_new = rows[0]["prompts"], run["args"]["max_new_tokens"]
  text = markdown(rows, heads, prompts, max_new)
  with open(os.path.join(output, "learned_drafts.md"), "w") as f:
    f.write(text)
  print(text)
  results_page.append(page, "learned_drafts", text)


def markdown(rows, heads, num_prompts: int, max_new: int) -> str:
  width = max([3] + [len(r["conditional"]) for r in rows])
  given = " | ".join(f"P(tok {i} given {i - 1})" for i in range(3, width + 2))
  batches = sorted({int(b) for r in rows for b in r.get("speed", {})})
  timing = "".join(f"tok/s b={b} (x ar) | ms/call b={b} | " for b in batches)
  out = [f"{num_prompts} prompts, {max_new} new tokens. tok/s, ms/call: greedy, median of "
         "alternating rounds over the rows of one run, x ar against that run's ar (– : row not "
         "timed).",
         "", "| method | heads | nodes/call | BE greedy | BE T=1 | identical to ar | " + timing +
         f"drafting MACs/step (x plain step) | P(tok 2) | {given} |",
         "|---|---|---|---|---|---|---" + "|---" * (width + 2 * len(batches)) + "|"]
  for r in rows:
    cond = [f"{c:.3f}" for c in r["conditional"]] + [""] * (width - len(r["conditional"]))
    speed = ""
    for b in batches:
      t = r.get("speed", {}).get(str(b))
      speed += (f"{t['tokens_per_second']:.0f} ({t['vs_ar']:.2f}) | {t['ms_per_call']:.3f} | "
                if t else "– | – | ")
    out.append(f"| {r['label']} | {r['heads']} | {r['nodes']} | {r['be_greedy']:.3f} | "
               f"{r['be_t1']:.3f} | {r['identical']}/{r['prompts']} | " + speed +
               f"{r['drafting_macs']:,} ({r['drafting_macs'] / r['step_macs']:.2f}) | "
               + " | ".join(cond) + " |")
  out += ["", "| head set | workdir | h | steps | trained parameters (heads 2..h) | "
          "training time (wall clock where it trained) |", "|---|---|---|---|---|---|"]
  for name, hd in heads.items():
    kind = hd["head_type"] + (f" + markov r={hd['markov_rank']}" if hd["markov_rank"] else "")
    out.append(f"| {name} ({kind}) | {hd['workdir']} | {hd['h']} | {hd['step']} | "
               f"{hd['params']:,} | "
               f"{hd['train_seconds'] / 60:.1f} min |")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
