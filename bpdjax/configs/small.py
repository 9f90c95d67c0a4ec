"""The CPU default: the local Wikipedia corpus, h = 9, sized to train in under an hour on 2 cores.

Throughput decides the shape: the h = 9 tied softmaxes cost h x vocab x emb_dim multiply-adds per
token, more than the 6 layers, so the vocabulary is 4096 pieces (8192 ran at a third of the
speed). Measured and reached figures are in README.md.
"""
from bpdjax.configs import default


def get_config():
  c = default.get_config()
  c.model.update(vocab_size=4096, num_layers=6, emb_dim=256, num_heads=4, num_kv_heads=4,
                 head_dim=64, mlp_dim=768, max_len=512, num_heads_bpd=9, head_hidden_dim=512)
  c.data.task = "wiki"
  c.data.seq_len = 256
  c.batch_size = 16
  c.num_train_steps = 600   # 1,120 tokens/s measured here (3.7 s/step): about 37 minutes.
  c.learning_rate = 3e-3
  c.warmup_steps = 100
  c.log_every_steps = 10
  c.eval_every_steps = 250
  c.num_eval_batches = 16
  c.checkpoint_every_steps = 100
  return c
