"""Base configuration: every key a run may set. Other configs start from this one.

Override any key on the command line, e.g. `--config.num_train_steps=20` or
`--config.model.num_heads_bpd=4`. Unknown keys are rejected by ml_collections.
"""
import dataclasses
import os

import ml_collections

from bpdjax import model as model_lib


def default_data_dir() -> str:
  """BPDJAX_DATA_DIR; else ../shared/data next to the checkout these configs are in; else (an
  installed package, whose configs sit in site-packages) ../shared/data from the current
  directory, e.g. a checkout's root."""
  if os.environ.get("BPDJAX_DATA_DIR"):
    return os.environ["BPDJAX_DATA_DIR"]
  here = os.path.dirname(os.path.abspath(__file__))
  beside_checkout = os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "data"))
  if os.path.isdir(beside_checkout):
    return beside_checkout
  return os.path.abspath(os.path.join("..", "shared", "data"))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data_dir = default_data_dir()

  c.model = ml_collections.ConfigDict()
  m = c.model
  m.vocab_size = 8192           # Must equal the SentencePiece vocabulary's size.
  m.num_layers = 4
  m.emb_dim = 256
  m.num_heads = 4
  m.num_kv_heads = 4            # < num_heads gives grouped-query attention.
  m.head_dim = 64
  m.mlp_dim = 768
  m.mlp_activation = "swiglu"   # "swiglu" | "gelu"
  m.max_len = 512               # Longest sequence the model is trained or decoded at.
  m.rope_theta = 10000.0
  m.norm_eps = 1e-6
  m.tie_embeddings = True       # Output softmax tied to the input embedding (paper).
  m.num_heads_bpd = 9           # h: block heads; head 1 predicts t+1, head i predicts t+i.
  m.head_type = "ffn"           # "ffn" (paper: FFN + residual, tied softmax) | "medusa" | "sequential".
  m.head_hidden_dim = 1024      # Hidden width of each "ffn" head.
  # "sequential" heads (Hydra: head i also reads the tokens drafted before it) and markov_rank
  # > 0 (a rank-r bigram correction on heads 2..h, any head type) live in bpdjax/heads.py.
  m.markov_rank = 0
  m.dtype = "float32"           # Activation dtype: "float32" | "bfloat16".
  # The architecture features of the imported families (Qwen2/3, Mistral, Gemma 2/3: qkv_bias,
  # qk_norm, post_norms, embed_scale, soft caps, sliding windows, ...; bpdjax/model.py says
  # what each does), at Llama's values: declared here so that a pretrained import, fine-tuning
  # from an imported model's workdir and --config.model.X overrides can set them.
  for field in dataclasses.fields(model_lib.TransformerConfig):
    if field.name not in m:
      m[field.name] = field.default

  c.data = ml_collections.ConfigDict()
  d = c.data
  d.task = "wiki"               # "wiki" | "tiny_shakespeare" | "c4" | "token_file" | "sft"
  # task "sft" (bpdjax/data/supervised.py): prompt -> target fine-tuning, loss on targets only.
  d.sft_tasks = ""              # Comma-separated: squad, xsum, samsum, gsm8k, jsonl.
  d.sft_jsonl = ""              # sft task "jsonl": {"prompt": ..., "reference": ...} per line.
  d.sft_prompt_tokens = 192     # Prompt room P of a seq_len row; the target gets seq_len - P.
  d.sft_long_prompts = "keep_last"  # A prompt over P tokens: "keep_last" its end, or "error".
  # task "token_file": a folder of token-id shards (+ manifest.json) written by bpdjax.distill.
  d.token_dir = ""
  d.corpus_dir = ""             # Local corpus; "" means the task's folder under data_dir.
  d.vocab_path = ""             # SentencePiece model; "" means data.vocab_dir/<task>_<vocab_size>.model.
  d.vocab_dir = "vocab"         # Trained-vocab cache (bpdjax.data.vocab), relative to cwd.
  d.tfds_data_dir = ""          # TFDS data_dir for c4 ("" = TFDS default).
  d.seq_len = 256               # Packed training sequence length (<= model.max_len).
  d.eval_fraction = 0.01        # Share of a local corpus's documents held out for evaluation.
  d.shuffle_buffer = 1000
  # Input shards S (0 = jax.process_count()). Each process reads S / process_count of them; the
  # global batch depends on S only, so a run keeps its data order when the process count changes.
  d.num_input_shards = 0

  # Start from a pretrained model instead of random weights (set at most one of the two).
  # config.model then comes from the import, except num_heads_bpd, head_type, head_hidden_dim
  # and dtype; the workdir keeps the model's tokenizer instead of a SentencePiece vocab.model.
  c.init = ml_collections.ConfigDict()
  c.init.hf_model = ""          # Hugging Face Llama folder (config.json, *.safetensors, tokenizer.json).
  c.init.llama2c_bin = ""       # llama2.c checkpoint .bin ...
  c.init.llama2c_tokenizer = "" # ... and its tokenizer .bin.
  # Or start from a bpdjax workdir's checkpoint (heads included; fine-tuning): config.model and
  # the vocabulary become that workdir's (a differing model shape or data.vocab_path is an
  # error); the optimizer state and the schedule are fresh (step 0 of this run's schedule).
  c.init.workdir = ""
  c.init.step = -1              # Checkpoint step of init.workdir; -1 = its latest.
  # Train only block heads 2..h; the imported base (and head 1, the LM head) stays bitwise
  # frozen (Medusa-1 style). Needs init.*; head 1 is reported but has loss weight 0.
  c.train_heads_only = False

  c.seed = 0
  c.batch_size = 16             # Global batch (sequences), split over processes and devices.
  c.num_train_steps = 1000
  # Wall-clock budget of one run, in seconds (bpdjax/train/budget.py): once spent, the run
  # checkpoints at the step boundary and exits 0; a later run resumes. Unset: no budget.
  c.max_train_seconds = ml_collections.config_dict.placeholder(float)
  # Steps the learning-rate schedule spans; <= 0 means num_train_steps. Set it to stop a run
  # early and continue it later on the same schedule.
  c.schedule_steps = -1
  c.learning_rate = 3e-3
  c.warmup_steps = 100
  c.end_learning_rate_fraction = 0.1   # Cosine decays to this fraction of the peak.
  c.weight_decay = 0.1
  c.adam_b1 = 0.9
  c.adam_b2 = 0.95
  c.grad_clip_norm = 1.0
  # Loss weight of head i is head_loss_decay**(i-1); 1.0 weights every head equally.
  c.head_loss_decay = 1.0

  c.log_every_steps = 10
  c.eval_every_steps = 200
  c.num_eval_batches = 8
  c.checkpoint_every_steps = 200
  c.max_checkpoints_to_keep = 3
  # TensorBoard event files beside metrics.jsonl (clu, through tf.io.gfile; False: metrics.jsonl
  # only, e.g. for a bucket that only gcsfs reaches, such as a local emulator).
  c.tensorboard = True
  # A non-finite loss or gradient norm stops training (non-zero exit, no checkpoint of it);
  # N > 0 skips up to N such updates in a run first (bpdjax/train/guard.py).
  c.max_nonfinite_skips = 0
  # A finite blow-up stops training too (bpdjax/train/spike.py): a step's loss or gradient norm
  # above divergence_spike_factor x the median of the last divergence_window steps (checked
  # once divergence_min_history are known; seeded from metrics.jsonl on resume), or the loss of
  # the state about to be checkpointed above it. No such step is ever saved. 0 turns it off.
  c.divergence_spike_factor = 10.0
  c.divergence_window = 100
  c.divergence_min_history = 5
  # Resume from this checkpoint step instead of the newest intact one (-1), e.g. the last one
  # before a divergence; the newer steps are moved to WORKDIR/superseded_checkpoints/.
  c.resume_step = -1
  # Record a sha256 manifest of each checkpoint's files at save time and verify it on restore
  # (checkpoint_integrity.py); hashing costs one extra read of what was written.
  c.checkpoint_manifests = True
  # A resume whose data-stream settings (batch_size, seed, data.seq_len, data.task, shards, ...)
  # differ from the checkpoint's run is refused unless this is True (batches would repeat or be
  # skipped).
  c.allow_data_stream_change = False

  # Mesh axes (data, fsdp, tensor); -1 in data takes the remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Logical axis name -> mesh axes. Parameters and activations name logical axes only.
  c.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("vocab", "tensor"),
      ("heads", "tensor"),
      ("kv_heads", "tensor"),
      ("mlp", "tensor"),
      ("head_mlp", "tensor"),
      ("head_dim", None),
      ("length", None),
      ("act_embed", None),
  )
  return c
