"""Seconds-long config for tests and smoke runs: tiny_shakespeare, a 512-piece vocabulary."""
from bpdjax.configs import default


def get_config():
  c = default.get_config()
  c.model.update(vocab_size=512, num_layers=2, emb_dim=64, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=128, max_len=128, num_heads_bpd=4, head_hidden_dim=128)
  c.data.task = "tiny_shakespeare"
  c.data.seq_len = 64
  c.data.shuffle_buffer = 64
  c.data.eval_fraction = 0.05
  c.batch_size = 8
  c.num_train_steps = 40
  c.learning_rate = 3e-3
  c.warmup_steps = 5
  c.log_every_steps = 5
  c.eval_every_steps = 20
  c.num_eval_batches = 2
  c.checkpoint_every_steps = 20
  return c
