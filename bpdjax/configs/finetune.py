"""Per-task supervised fine-tuning of the CPU default (configs/small.py) from its workdir.

  python train.py --config=configs/finetune.py:squad --workdir=workdirs/ft_squad
  (squad | xsum | samsum | gsm8k; --config.init.workdir=... for another parent)

The model shape and vocabulary come from init.workdir (a mismatch is an error); the optimizer and
the schedule are fresh. Sized for about 10 minutes on 2 idle CPU cores (small.py trains at
3.7 s per step of 16 x 256 tokens): 150 steps of 16 rows of 256 tokens, packed prompt -> target
pairs, loss on the target tokens only (bpdjax/data/supervised.py). The prompt room P of a row
leaves seq_len - P tokens for the target: short answers (squad) get most of the row for the
context, GSM8K's worked solutions the most target room.
"""
from bpdjax.configs import small

PROMPT_TOKENS = {"squad": 224, "xsum": 200, "samsum": 192, "gsm8k": 96}


def get_config(task: str = "squad"):
  if task not in PROMPT_TOKENS:
    raise ValueError(f"configs/finetune.py:{task}: no such fine-tuning task; known: "
                     f"{', '.join(PROMPT_TOKENS)}")
  c = small.get_config()
  c.init.workdir = "workdirs/small"
  c.data.task = "sft"
  c.data.sft_tasks = task
  c.data.sft_prompt_tokens = PROMPT_TOKENS[task]
  c.num_train_steps = 150
  c.warmup_steps = 15
  c.learning_rate = 1e-3
  c.log_every_steps = 10
  c.eval_every_steps = 50
  c.num_eval_batches = 8
  c.checkpoint_every_steps = 50
  return c
