"""Block heads on a frozen TinyStories-656K (Medusa-1 style), trained on self-distillation data.

  python -m bpdjax.distill --hf_model=../shared/data/models/TinyStories-656K \
      --output=workdirs/ts_distill --num_sequences=5000 --seq_len=256 --temperature=0.3
  python train.py --config=configs/tinystories_heads.py --workdir=workdirs/ts_ffn
  python train.py --config=configs/tinystories_heads.py --workdir=workdirs/ts_medusa \
      --config.model.head_type=medusa

h = 4 heads; head 1 is the imported LM head (frozen, reported), heads 2..4 are trained; the base
stays bitwise unchanged (base_checksum.json). The model section below mirrors the import (the
trainer takes every field except num_heads_bpd, head_type, head_hidden_dim and dtype from it).
About 10 minutes on 2 shared CPU cores (800 steps of 16 x 256 tokens, ~5 epochs of that data).
"""
import os

from bpdjax.configs import default



def get_config():
  c = default.get_config()
  c.init.hf_model = os.path.join(c.data_dir, "models", "TinyStories-656K")
  c.train_heads_only = True
  # TinyStories-656K's config.json (the import overrides these), h = 4 heads.
  c.model.update(vocab_size=2048, num_layers=2, emb_dim=128, num_heads=8, num_kv_heads=4,
                 head_dim=16, mlp_dim=384, max_len=512, norm_eps=1e-6, tie_embeddings=True,
                 num_heads_bpd=4, head_type="ffn", head_hidden_dim=384)
  c.data.task = "token_file"
  c.data.token_dir = "workdirs/ts_distill"   # Relative to the current directory (README: the root).
  c.data.seq_len = 256
  c.data.shuffle_buffer = 1000
  c.batch_size = 16
  c.num_train_steps = 800
  c.learning_rate = 1e-3          # Medusa-1's head learning rate.
  c.warmup_steps = 40
  c.weight_decay = 0.0
  c.log_every_steps = 20
  c.eval_every_steps = 200
  c.num_eval_batches = 8
  c.checkpoint_every_steps = 200
  return c
