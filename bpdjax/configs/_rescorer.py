"""Shared shapes of the rescorer configs (rescorer_*.py): small causal LMs with h = 1.

A rescorer scores draft tokens of a blockwise parallel model (PAPER.md section 4), so it must use
that model's vocabulary:
  * CPU-sized members (xs, s) train on the local wiki corpus with the 4096-piece wiki vocabulary,
    the task and vocabulary of configs/small.py (the same data.vocab_dir/wiki_4096.model cache).
  * The paper's members (32m, 61m, 94m: total parameters with the tied 32000 embedding) train on
    C4 with T5's C4 SentencePiece model, which --config.data.vocab_path must name (as for
    configs/c4_1p5b.py).
With h = 1 the model is a plain next-token LM; its single "ffn" head (zero-initialised output,
residual) is one extra FFN block, sized like the layers' MLP and counted below.
"""
from bpdjax.configs import default

# name: (vocab, num_layers, emb_dim, num_heads, head_dim, mlp_dim); parameter counts with h = 1.
SHAPES = {
    "xs": (4096, 4, 128, 4, 32, 384),      # 0.95M non-embedding, 1.48M in all.
    "s": (4096, 6, 192, 6, 32, 512),       # 2.85M non-embedding, 3.64M in all.
    "32m": (32000, 4, 512, 8, 64, 1536),   # 31.6M in all (16.4M embedding).
    "61m": (32000, 10, 512, 8, 64, 2048),  # 60.4M in all (16.4M embedding).
    "94m": (32000, 9, 768, 12, 64, 2176),  # 94.3M in all (24.6M embedding).
}


def make_config(name: str):
  vocab, layers, dim, heads, head_dim, mlp = SHAPES[name]
  c = default.get_config()
  c.model.update(vocab_size=vocab, num_layers=layers, emb_dim=dim, num_heads=heads,
                 num_kv_heads=heads, head_dim=head_dim, mlp_dim=mlp, head_hidden_dim=mlp,
                 num_heads_bpd=1, head_type="ffn")
  if vocab == 4096:
    # CPU runs on the local wiki corpus (default.py's task, vocabulary and sequence length).
    c.data.task = "wiki"
    c.batch_size = 32
    c.num_train_steps = 3000
    c.learning_rate = 3e-3
    c.warmup_steps = 200
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
  else:
    # Accelerator runs on C4, sequences of 512 as the BPD model. Batch 256 x 512 = 131k tokens;
    # 40k steps = 5.2B tokens, well past Chinchilla-optimal for <= 94M parameters (small
    # rescorers gain from more data). lr 6e-4 is GPT-3 Small's (125M; Brown et al. 2020).
    c.model.dtype = "bfloat16"
    c.model.max_len = 512
    c.data.task = "c4"
    c.data.seq_len = 512
    c.data.vocab_path = ""   # Required: T5's C4 SentencePiece model (32000 pieces).
    c.data.shuffle_buffer = 10_000
    c.batch_size = 256
    c.num_train_steps = 40_000
    c.learning_rate = 6e-4
    c.warmup_steps = 1000
    c.log_every_steps = 50
    c.eval_every_steps = 2000
    c.num_eval_batches = 16
    c.checkpoint_every_steps = 2000
    # Small enough to replicate: pure data parallelism over the slice.
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
  return c
