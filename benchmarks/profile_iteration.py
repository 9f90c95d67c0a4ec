"""Where one decode-loop iteration spends its time: a JAX profiler trace of a timed decode, each
XLA thunk's time assigned, by the op_name metadata of its HLO instruction, to the layers, the
cache writes, the head projections (FFN heads and vocabulary projections), or acceptance and loop
bookkeeping (everything outside the model); per loop iteration, beside the iteration's wall time
(the time in which no thunk runs is the runtime's dispatch between thunks and the while loop's control).

  python -m benchmarks.profile_iteration --workdir=workdirs/small [--runs=ar,bpd:2,bpd] \
      [--num_examples=4 --max_new_tokens=128] [--markdown=FILE]

A run is METHOD or METHOD:DRAFT_LEN (bpd's draft length, head 1 included); each is traced
--repeats times and the trace of median wall time is reported. Prefill is one call
per example and counted in with the iterations (short prompts keep it to about 1%).
Uses only API that exists since the drafter seam (it also runs on older checkouts for
before/after tables).
"""
import collections
import dataclasses
import glob
import os
import re
import sys
import tempfile

_DUMP = tempfile.mkdtemp(prefix="bpdjax_hlo_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_dump_to={_DUMP} --xla_dump_hlo_as_text").strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
from jax import profiler

from benchmarks import common
from benchmarks import results as results_page
from bpdjax import api
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.eval import metrics

_CONFIG = common.define_config(
    methods="ar", num_examples=4, max_new_tokens=128, record_topk=0, tasks="jsonl",
    jsonl=os.path.join(os.path.dirname(os.path.abspath(__file__)), "story_openings.jsonl"))
_RUNS = flags.DEFINE_list("runs", ["ar", "bpd:2", "bpd"], "METHOD or METHOD:DRAFT_LEN.")
_MARKDOWN = flags.DEFINE_string("markdown", results_page.default_path("profile_iteration"),
                                    results_page.HELP)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Traced decodes per run; the median wall is kept.")
_LABEL = flags.DEFINE_string("label", "", "Label of this checkout in the table (e.g. before).")

PARTS = ("layers", "cache writes", "head projections", "acceptance + loop")
_META = ("ThreadpoolListener", "ThunkExecutor", "end: ", "ExecuteHelper", "Execute")
_CONTAINERS = ("while", "conditional", "call")   # Their thunks are counted inside them.


def _op_names() -> dict:
  """{HLO instruction name: op_name} from the optimized decode modules XLA dumped so far; a fusion
  without metadata takes the op_name of the first instruction of its fused computation, or else
  of its first named operand; control flow (while, conditional, call) maps to None."""
  names, calls, first_in, operands = {}, {}, {}, {}
  for path in glob.glob(os.path.join(_DUMP, "*jit_decode*after_optimizations.txt")):
    computation = None
    with open(path, encoding="utf-8") as f:
      for line in f:
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) [(]", line)
        if head and not line.startswith(" "):
          computation = head.group(1)
          continue
        inst = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = ", line)
        if not inst:
          continue
        op = re.search(r'op_name="([^"]+)"', line)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if called:
          calls[inst.group(1)] = called.group(1)
        if re.search(r"= .*[ )](?:%s)[(]" % "|".join(_CONTAINERS), line):
          names[inst.group(1)] = None
          continue
        args = re.search(r"= \S+ [\w\-]+[(]([^)]*)[)]", line)
        if args:
          operands[inst.group(1)] = re.findall(r"%([\w.\-]+)", args.group(1))
        if op:
          names[inst.group(1)] = op.group(1)
          first_in.setdefault(computation, op.group(1))
  for inst, computation in calls.items():
    if computation in first_in:
      names.setdefault(inst, first_in[computation])
  for inst, args in operands.items():      # Rewrites (e.g. dot fusions) can drop the metadata.
    if inst not in names:
      names[inst] = next((names[a] for a in args if names.get(a)), "")
  return names


def _part(op_name: str) -> str:
  if re.search(r"/head_\d+|attend|lm_head|head_logits", op_name):
    return "head projections"
  if re.search(r"/layer_\d+", op_name):
    if re.search(r"dynamic_update_slice|scatter", op_name):
      return "cache writes"
    return "layers"
  if "final_norm" in op_name or "embedding" in op_name:
    return "layers"
  return "acceptance + loop"


def _thunk_seconds(trace_dir: str, names: dict) -> tuple[dict, float]:
  """({part: seconds} summed over the XLA thunks of the trace, seconds in which at least one
  thunk ran). Thunks on different threads of XLA's pool can overlap, so the parts may add up
  to more than the busy time."""
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  data = profiler.ProfileData.from_file(path)
  out = collections.Counter()
  spans = []
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for event in line.events:
        if (event.name.startswith(_META) or not event.duration_ns
            or names.get(event.name, "") is None):
          continue
        out[_part(names.get(event.name, ""))] += event.duration_ns * 1e-9
        spans.append((event.start_ns, event.start_ns + event.duration_ns))
  busy, end = 0.0, float("-inf")
  for start, stop in sorted(spans):
    busy += max(0.0, stop - max(start, end))
    end = max(end, stop)
  return out, busy * 1e-9


def main(argv):
  del argv
  s = common.settings(_CONFIG.value)
  loaded = api.load(s.workdir)
  config = loaded.model.config
  prompts = common.prompts(s, loaded, s.tasks[0])
  res = common.load_resources(s, loaded)
  generator = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  label = _LABEL.value or "this checkout"
  rows = []
  for spec in _RUNS.value:
    name, _, draft_len = spec.partition(":")
    options = s.options.get(name) or methods.make_options(
        name, **dict(_CONFIG.value.options.get(name, {})))
    if draft_len:
      options = dataclasses.replace(options, draft_len=int(draft_len))
    b = generator.build(name, res, options, s.options, batch_size=s.batch_size,
                        prompt_width=generator.width(prompts, s.max_new_tokens),
                        max_new_tokens=s.max_new_tokens)
    decode = lambda b=b: generator.generate(prompts, b, max_new_tokens=s.max_new_tokens,
                                            batch_size=s.batch_size)
    decode()                                             # Compile (and dump the HLO).
    traced = []
    for _ in range(_REPEATS.value):
      trace_dir = tempfile.mkdtemp(prefix="bpdjax_trace_")
      with profiler.trace(trace_dir):
        gens, timings = decode()
      entry = metrics.speed_metrics(gens, timings)
      traced.append((entry["wall_seconds"], entry, _thunk_seconds(trace_dir, _op_names())))
    wall, entry, (parts, busy) = sorted(traced, key=lambda t: t[0])[len(traced) // 2]
    steps = entry["calls"]
    total = sum(parts.values())
    cells = [f"{parts[p] / steps * 1e3:.3f} ({parts[p] / total:.0%})" for p in PARTS]
    rows.append(f"| {label} | {spec} | {entry['block_efficiency']:.3f} | "
                f"{wall / steps * 1e3:.3f} | " + " | ".join(cells) +
                f" | {(wall - busy) / steps * 1e3:.3f} |")
    print(rows[-1], flush=True)
  head = [f"\n{s.workdir} (h = {config.num_heads_bpd}), {len(prompts)} {s.tasks[0]} prompts x "
          f"{s.max_new_tokens} tokens, batch {s.batch_size}, {jax.devices()[0].device_kind}; "
          "ms per model call (share of thunk time):\n",
          "| checkout | run | BE | wall ms/call | " + " | ".join(PARTS) +
          " | no thunk running ms/call |", "|---" * (5 + len(PARTS)) + "|"]
  print("\n".join(head + rows))
  results_page.append(_MARKDOWN.value, "profile_iteration", "\n".join(head + rows))


if __name__ == "__main__":
  sys.exit(app.run(main))
