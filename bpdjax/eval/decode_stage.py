"""Stage 3 of an evaluation run: decode each (task, method) once, through the session's
driver, recording what the analyses read (an observer: each iteration's kept length and draft in
the timed program, the heads' top-k after decoding from the output; recording.py), and measure
each method's drafting time per step once (decoding/timing.py).
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import tqdm

from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import timing
from bpdjax.eval import metrics
from bpdjax.eval import session as session_lib


@dataclasses.dataclass
class TaskRun:
  """entries: {method: report entry}; outputs: {method: [token arrays]} in prompt order;
  generations: {method: [generator.Generation]} (with records when recorded)."""
  entries: dict
  outputs: dict
  generations: dict


def drafting_ms(session: session_lib.Session, prompts: list) -> dict:
  """{method: (its drafter's propose ms per step, the vanilla draft's)} on the first batch of
  `prompts` (None for a method that reads no heads)."""
  s, gen = session.plan.settings, session.generator
  chunk = [np.asarray(p, np.int32) for p in prompts[:s.batch_size]]
  batch, lengths = generator_lib.pad_batch(chunk, s.batch_size,
                                           gen.width(chunk, s.max_new_tokens))
  vanilla = methods.build(methods.vanilla(), session.loaded.model.config)
  vanilla_ms = timing.propose_ms(gen, vanilla.drafter, None, batch, lengths)
  return {name: (timing.propose_ms(gen, b.drafter, b.params, batch, lengths), vanilla_ms)
          for name, b in session.built.items()}


def decode_task(session: session_lib.Session, task: str, costs: dict) -> TaskRun:
  """Decodes every method on the task's prompts (costs: drafting_ms, filled on first use)."""
  s, gen = session.plan.settings, session.generator
  examples = session.plan.examples[task]
  prompts = [e["prompt_tokens"] for e in examples]
  run = TaskRun({}, {}, {})
  progress = tqdm.tqdm(total=len(prompts) * len(s.methods), desc=task, unit="ex")
  for name, built in session.built.items():
    generations, timings = gen.generate(
        prompts, built, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
        sampling_config=s.sampling, rng=jax.random.PRNGKey(s.seed), record=s.record_topk,
        progress=progress.update, prompt_width=session.plan.widths[task])
    entry = metrics.speed_metrics(generations, timings)
    entry["lossless"] = s.sampling.lossless
    entry.update(metrics.drafter_stats(timings))
    if s.record_topk:
      path_len = built.drafter.topology.path_len
      entry.update(metrics.draft_analyses(generations, path_len, gen.config.num_heads_bpd))
      entry.update(metrics.refinement_analyses(generations, path_len, s.sampling.greedy))
    if not costs:   # Once per run: propose's cost does not depend on the task.
      costs.update(drafting_ms(session, prompts))
    metrics.add_drafting_cost(entry, *costs[name])
    run.entries[name] = entry
    run.outputs[name] = [g.tokens for g in generations]
    run.generations[name] = generations
  progress.close()
  return run
