"""Evaluates decoding methods on a trained workdir and writes a report.

  python decode.py --workdir=workdirs/small --tasks=lambada,squad --methods=ar,bpd \
      --num_examples=50 --max_new_tokens=64 --output=out/small

Writes OUTPUT/report.json (per task and method: block efficiency, speed, identical-to-AR, and
the paper's analyses), OUTPUT/report.md and one PNG per task.
"""
from absl import app
from absl import flags
import jax

from bpdjax import api
from bpdjax import partitioning
from bpdjax.decoding import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
_TASKS = flags.DEFINE_string("tasks", "lambada", "Comma-separated evaluation tasks.")
_METHODS = flags.DEFINE_string("methods", "ar,bpd", "Comma-separated decoding methods.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 50, "Examples per task.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per example.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Prompts decoded together.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 = lossless sampling.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for report.json, report.md, plots.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Evaluation data folder (default: the run's).")
_JSONL = flags.DEFINE_string("jsonl", None, "Prompts file for task 'jsonl'.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_K = flags.DEFINE_integer("k", 16, "Candidates per head for lattice methods.")
_P = flags.DEFINE_integer("p", 16, "Drafts verified per call for p-best methods.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Rescorer weight in [0, 1] (local, n-gram).")
_TREE_SIZE = flags.DEFINE_integer("tree_size", 64,
                                  "Medusa sparse-tree nodes, root included (medusa methods).")
_RESCORER = flags.DEFINE_string("rescorer_workdir", None,
                                "Rescoring LM workdir (local, medusa_local).")
_NGRAM = flags.DEFINE_string("ngram_arpa", None,
                              "ARPA n-gram LM over the model's token ids (ngram, pbest_ngram).")
_NGRAM_BACKEND = flags.DEFINE_enum(
    "ngram_backend", "dp", ["dp", "wfst"],
    "n-gram rescoring: dp = exact dynamic program on device; wfst = OpenFST (pynini) on the host.")
_MESH = flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes to shard decoding, e.g. 2,2,2.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  settings = evaluate.EvalSettings(
      tasks=evaluate.parse_list(_TASKS.value), methods=evaluate.parse_list(_METHODS.value),
      num_examples=_NUM_EXAMPLES.value, max_new_tokens=_MAX_NEW.value, batch_size=_BATCH.value,
      temperature=_TEMPERATURE.value, data_dir=_DATA_DIR.value, jsonl_path=_JSONL.value,
      seed=_SEED.value, k=_K.value, p=_P.value, alpha=_ALPHA.value, tree_size=_TREE_SIZE.value,
      rescorer_workdir=_RESCORER.value, ngram_arpa=_NGRAM.value,
      ngram_backend=_NGRAM_BACKEND.value)
  settings.validate()
  mesh = None
  if _MESH.value:
    mesh = partitioning.make_mesh(dict(zip(partitioning.MESH_AXES, map(int, _MESH.value))))
  loaded = api.load(_WORKDIR.value)
  result = evaluate.run(loaded, settings, _OUTPUT.value, _WORKDIR.value, mesh=mesh)
  print("\n".join(evaluate.summary_lines(result)))
  print(f"Report: {_OUTPUT.value}/report.json, report.md ({jax.device_count()} devices)")


if __name__ == "__main__":
  app.run(main)
