"""A rescoring LM (h = 1) for TinyStories-656K's tokenizer, from scratch on its distill data.

  python train.py --config=configs/tinystories_rescorer.py --workdir=workdirs/ts_rescorer

Local neural rescoring (methods local, medusa_local) needs a causal LM with the model's
vocabulary that is much cheaper than the model: this one has one layer of width 64 (~0.19M
parameters, ~70% of them the tied 2048 x 64 embedding) against the base's two layers of 128
(0.66M). It trains on the self-distillation data of configs/tinystories_heads.py (written by
`python -m bpdjax.distill`), whose manifest names the tokenizer the workdir keeps.
"""
from bpdjax.configs import default



def get_config():
  c = default.get_config()
  c.model.update(vocab_size=2048, num_layers=1, emb_dim=64, num_heads=4, num_kv_heads=4,
                 head_dim=16, mlp_dim=192, max_len=512, norm_eps=1e-6, tie_embeddings=True,
                 num_heads_bpd=1, head_type="ffn", head_hidden_dim=192)
  c.data.task = "token_file"
  c.data.token_dir = "workdirs/ts_distill"   # Relative to the current directory (README: the root).
  c.data.seq_len = 256
  c.data.shuffle_buffer = 1000
  c.batch_size = 16
  c.num_train_steps = 600
  c.learning_rate = 3e-3
  c.warmup_steps = 50
  c.log_every_steps = 50
  c.eval_every_steps = 300
  c.num_eval_batches = 8
  c.checkpoint_every_steps = 300
  return c
