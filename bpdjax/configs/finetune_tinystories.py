"""Per-task supervised fine-tuning of TinyStories-656K with its h = 9 heads (workdirs/ts_ffn9).

  python train.py --config=configs/finetune_tinystories.py:squad --workdir=workdirs/ft_ts_squad
  (squad | xsum | samsum | gsm8k)

The parent is the TinyStories track's workdir (benchmarks/pipelines/tinystories_track.sh: the imported
model, frozen, with 9 FFN heads trained on its self-distillation data). Here every parameter
trains, body included, as the paper fine-tunes its whole blockwise model per task: the one base
whose greedy text is English, where configs/finetune.py's parent (configs/small.py) is not.
The model shape and the Hugging Face tokenizer come from init.workdir (the model section below
mirrors it; a mismatch is an error); the optimizer and the schedule are fresh. Packing, prompt
room and loss on target tokens only as in configs/finetune.py. Sized for about 10 minutes on 2
idle CPU cores (measured figures in docs/results/finetune_tinystories.md).
"""
from bpdjax.configs import finetune
from bpdjax.configs import tinystories_heads

# SQuAD rows of 512 tokens (8 per batch: the same tokens per step), 480 of prompt room: this
# tokenizer splits Wikipedia into many pieces (median prompt 324 tokens), and only 48% of the
# answers lie inside a prompt's last 192 tokens against 87% inside its last 448 (300 fine-tune
# questions), so a shorter room trains the model to answer from contexts that do not hold it.
LONG_ROWS = {"squad": dict(seq_len=512, prompt_tokens=480, batch_size=8)}


def get_config(task: str = "squad"):
  if task not in finetune.PROMPT_TOKENS:
    raise ValueError(f"configs/finetune_tinystories.py:{task}: no such fine-tuning task; known: "
                     f"{', '.join(finetune.PROMPT_TOKENS)}")
  c = tinystories_heads.get_config()
  c.init.hf_model = ""
  c.init.workdir = "workdirs/ts_ffn9"
  c.model.num_heads_bpd = 9
  c.train_heads_only = False
  c.data.task = "sft"
  c.data.token_dir = ""
  c.data.sft_tasks = task
  c.data.sft_prompt_tokens = finetune.PROMPT_TOKENS[task]
  if task in LONG_ROWS:
    rows = LONG_ROWS[task]
    c.data.seq_len, c.data.sft_prompt_tokens = rows["seq_len"], rows["prompt_tokens"]
    c.batch_size = rows["batch_size"]
  c.num_train_steps = 400
  c.warmup_steps = 40
  c.learning_rate = 1e-3
  c.log_every_steps = 20
  c.eval_every_steps = 100
  c.num_eval_batches = 8
  c.checkpoint_every_steps = 100
  return c
