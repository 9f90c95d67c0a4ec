"""The paper's scale: a ~1.5B-parameter blockwise parallel LM with h = 9 FFN heads on English C4.

Kim et al. 2024 pretrain a 1.5B decoder-only LM on C4 with 512-token sequences and batches of
2048 on TPUv3/v4 (see PAPER.md section 1). Shapes here: 24 layers, d_model 2048, 16 heads of 128,
SwiGLU MLP 6144, heads' FFN 4096: 1.374B in the base LM (65.5M of it the tied 32000 x 2048
embedding) + 9 x 16.8M = 151M in the heads = 1.525B parameters in all.

The vocabulary is T5's C4 SentencePiece model (32000 pieces). It must be given by the user:
there is no local C4 text to train one on, so

  python train.py --config=configs/c4_1p5b.py --workdir=gs://... --multihost \\
      --config.data.vocab_path=/path/to/cc_all.32000/sentencepiece.model

(the T5 model is gs://t5-data/vocabs/cc_all.32000/sentencepiece.model). C4 itself is read
through TFDS (`c4/en`); set --config.data.tfds_data_dir if it is not in the TFDS default place.
"""
from bpdjax.configs import default


def get_config():
  c = default.get_config()
  c.model.update(
      vocab_size=32000,        # T5's C4 SentencePiece vocabulary.
      num_layers=24,
      emb_dim=2048,
      num_heads=16,
      num_kv_heads=16,         # Plain multi-head attention, as in the paper's era of models.
      head_dim=128,
      mlp_dim=6144,            # 3 x d_model with SwiGLU (about 4 x d_model of a GELU MLP's FLOPs).
      mlp_activation="swiglu",
      max_len=512,             # Trained at 512; RoPE positions beyond it are untrained.
      tie_embeddings=True,     # Every head's softmax is tied to the input embedding (paper).
      num_heads_bpd=9,         # h = 9 (paper).
      head_type="ffn",
      head_hidden_dim=4096,    # 2 x d_model per head; 9 heads add ~10% to the base LM.
      dtype="bfloat16",        # bfloat16 activations; parameters and optimizer state stay float32.
  )
  c.data.task = "c4"
  c.data.seq_len = 512
  c.data.vocab_path = ""       # Required: T5's C4 SentencePiece model (see the docstring).
  c.data.shuffle_buffer = 10_000

  # Optimiser: batch 2048 x 512 = 1.05M tokens per step, the batch of GPT-3 XL (1.3B; Brown et
  # al. 2020, table 2.1: lr 2.0e-4, AdamW b2 0.95, weight decay 0.1, cosine to 10%, clip 1.0),
  # whose recipe default.py's optimiser already follows; Pythia-1.4B uses the same peak lr.
  # 50k steps = 52B tokens, ~35 tokens per parameter: past the Chinchilla-optimal ~20 (Hoffmann
  # et al. 2022) and more than T5's 34B-token C4 pretraining (2^19 steps x 65k tokens).
  c.batch_size = 2048
  c.num_train_steps = 50_000
  c.learning_rate = 2e-4
  c.warmup_steps = 1000        # ~1B tokens (GPT-3 XL: 375M); long warmups are cheap insurance.
  c.end_learning_rate_fraction = 0.1
  c.weight_decay = 0.1
  c.adam_b1 = 0.9
  c.adam_b2 = 0.95
  c.grad_clip_norm = 1.0
  c.head_loss_decay = 1.0      # Heads summed with equal weight (paper: heads trained jointly).

  c.log_every_steps = 50
  c.eval_every_steps = 2000
  c.num_eval_batches = 16
  c.checkpoint_every_steps = 1000
  c.max_checkpoints_to_keep = 3

  # Mesh for a TPU pod slice, e.g. v4-64 (32 chips: data=2) up to v4-512 / v3-512 (256 devices:
  # data=16). Float32 parameters + Adam moments + gradients of 1.5B parameters take ~24 GB per
  # replica, more than a v3 core's 16 GB HBM and most of a v4 chip's 32 GB, so they are sharded
  # FSDP-style over fsdp=16 (~1.5 GB per device); every sharded dimension (embed 2048 on fsdp)
  # divides by 16. tensor=1: at d_model 2048 the per-layer all-reduces of tensor parallelism cost
  # more than they save, while FSDP's all-gathers overlap with compute. The rest of the devices
  # replicate (data=-1). The global batch 2048 is split over data x fsdp, so data x 16 must divide
  # 2048 (up to 2048 devices). tensor=2 also works (heads 16, mlp 6144, head_mlp 4096 and vocab
  # 32000 all divide by 2) if a slice's per-device batch gets too small for pure FSDP.
  c.mesh.data = -1
  c.mesh.fsdp = 16
  c.mesh.tensor = 1
  # Logical axis rules: default.py's (batch over data x fsdp, parameters' embed over fsdp,
  # model-parallel dimensions over tensor, activations' embed and length replicated).
  return c
