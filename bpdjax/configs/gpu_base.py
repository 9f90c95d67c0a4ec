"""The accelerator check's model (benchmarks/gpu_check.sh): the paper's setting at ~130M
parameters, a 12 x 768 decoder trained jointly with h = 9 FFN heads on token shards of the local
Wikipedia corpus, bfloat16 compute, sequences of 512, for a wall-clock budget.

  python -m bpdjax.data.text_shards --config=configs/gpu_base.py --output=gpu_inputs/shards
  python train.py --config=configs/gpu_base.py --workdir=workdirs/gpu_base

The vocabulary is configs/small.py's (4,096 pieces, trained on the corpus's train split), so one
set of shards serves this model and the CPU comparison against the text pipeline; it also keeps
the h = 9 tied softmaxes (9 x 4,096 x 768 per token) small beside the 12 layers. A batch of
64 x 512 tokens; the schedule spans 2,400 steps, about what an H100 runs in the 4-minute budget
(an estimate: no accelerator has run it yet), and a run that is slower stops on the budget with
a checkpoint. The shard command reads data.task "wiki" (see text_shards); training reads
data.task "token_file". `--config=configs/gpu_base.py:smoke` is the same run on tiny shapes
(seconds on a CPU; the check's --smoke mode), with h = 9 kept so every verify size exists, in
float32.
"""
from bpdjax.configs import default


def get_config(variant: str = ""):
  if variant not in ("", "smoke"):
    raise ValueError(f"configs/gpu_base.py:{variant}: the variants are '' and 'smoke'")
  c = default.get_config()
  c.model.update(vocab_size=4096, num_layers=12, emb_dim=768, num_heads=12, num_kv_heads=12,
                 head_dim=64, mlp_dim=2560, max_len=512, num_heads_bpd=9, head_type="ffn",
                 head_hidden_dim=2048, dtype="bfloat16")
  c.data.task = "token_file"
  c.data.token_dir = "gpu_inputs/shards"  # Relative to the checkout; gpu_check.sh passes it.
  c.data.seq_len = 512
  c.data.vocab_dir = "vocab"    # Where the shard command caches the trained vocabulary.
  c.batch_size = 64
  c.num_train_steps = 2400
  c.max_train_seconds = 240.0
  c.learning_rate = 1e-3
  c.warmup_steps = 200
  c.log_every_steps = 50
  c.eval_every_steps = 100_000  # No eval inside the budget; the check decodes held-out text.
  c.num_eval_batches = 8
  c.checkpoint_every_steps = 500
  c.tensorboard = False         # clu's TensorBoard writer needs TensorFlow (not on GPU images).
  if variant == "smoke":
    # float32: an almost untrained model in bfloat16 has near-ties between its top tokens, which
    # a 1-token and a k-token call may round apart (a smoke run saw pbest_0gram differ from ar).
    c.model.update(vocab_size=512, num_layers=2, emb_dim=64, num_heads=4, num_kv_heads=2,
                   head_dim=16, mlp_dim=128, max_len=128, head_hidden_dim=128, dtype="float32")
    c.data.seq_len = 64
    c.batch_size = 8
    c.num_train_steps = 200
    c.max_train_seconds = 20.0
    c.warmup_steps = 5
    c.log_every_steps = 10
    c.checkpoint_every_steps = 50
    c.num_eval_batches = 2
  return c
