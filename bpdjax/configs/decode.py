"""decode.py's configuration: every setting of an evaluation run, with its default.

  python decode.py --workdir=workdirs/small --config.methods=ar,bpd,pbest_0gram \
      --config.options.pbest_0gram.p=8 --output=out/small

Every key can be overridden with --config.KEY=VALUE; the flags of earlier versions (--tasks,
--methods, --k, --p, --alpha, --tree_size, --ngram_backend, ...) still work and set the same
keys (--k, --p, --alpha, --tree_size and --ngram_backend set that knob of every method that
has it). Method knobs and their defaults come from the methods' own options (decoding/
drafters/); `python decode.py --help` lists the methods and tasks.
"""
import ml_collections

from bpdjax.decoding import methods


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = ""                 # A workdir written by train.py (required).
  c.output = ""                  # Directory for report.json, report.md and plots (required).
  c.tasks = "lambada"            # Comma-separated evaluation tasks.
  c.methods = "ar,bpd"           # Comma-separated decoding methods.
  c.num_examples = 50            # Examples per task.
  c.max_new_tokens = 64          # Tokens generated per example.
  c.batch_size = 1               # Prompts decoded together.
  c.temperature = 0.0            # 0 = greedy; > 0 = sampling (exact in distribution).
  c.top_k = 0                    # Sampling: keep the k most likely tokens (0 = off).
  c.top_p = 1.0                  # Sampling: nucleus mass (1 = off).
  c.acceptance = "tokenwise"     # Sampling rule: tokenwise | block (both lossless) |
                                 # typical_lossy (Medusa's typical acceptance: NOT lossless).
  c.seed = 0                     # Sampling seed.
  c.example_seed = 0             # Examples: a seeded shuffle of each task's file (-1: file order).
  c.max_prompt_tokens = 0        # Prompts keep their last N tokens (0: max_len - max_new_tokens).
  c.quality = False              # Task quality (ROUGE-L, SQuAD EM/F1, accuracy) of the outputs.
  c.record_topk = 16             # Top-K recorded per head for the analyses (0: speed only).
  c.data_dir = ""                # Evaluation data folder (default: the run's data_dir).
  c.jsonl = ""                   # Prompts file of task "jsonl".
  c.mesh = ""                    # "data,fsdp,tensor" sizes to shard decoding, e.g. "2,2,2".
  c.rescorer_workdir = ""        # Rescoring LM (methods that need a rescorer).
  c.ngram_arpa = ""              # ARPA n-gram LM over the model's token ids (n-gram methods).
  c.cost_cache = ""              # Measured cost tables (auto): "" memory only, "workdir", a path.
  c.options = ml_collections.ConfigDict(
      {name: ml_collections.ConfigDict(methods.knobs(name)) for name in methods.names()})
  return c
