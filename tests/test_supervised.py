"""Supervised fine-tuning data (data.task="sft"): disjoint fine-tune / evaluation splits, loss
on target tokens only for every head, packing with segment ids, clear errors for bad examples."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bpdjax import losses
from bpdjax.data import eval_sets
from bpdjax.data import pipeline
from bpdjax.data import supervised
from bpdjax.data import vocabulary
from bpdjax.train import steps
from bpdjax.configs import tiny
from tests import helpers

PROMPT_ROOM = 48


def _config(vocab_path, tasks, jsonl="", **data):
  config = tiny.get_config()
  config.batch_size = 2
  config.data.update(**{"task": "sft", "vocab_path": vocab_path, "sft_tasks": tasks,
                        "sft_jsonl": jsonl, "sft_prompt_tokens": PROMPT_ROOM, **data})
  return config


def _ids(split):
  """An id that falls in the fine-tune part ("train") or the evaluation part."""
  want = split != "train"
  return next(f"ex{i}" for i in range(1000)
              if eval_sets.is_evaluation("jsonl", {"id": f"ex{i}"}) == want)


def _jsonl(tmp_path, train, validation=None):
  validation = validation or {"prompt": "Evaluation prompt.", "reference": "held out"}
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(json.dumps(dict(r, id=_ids(s))) for s, r in
                            (("train", train), ("validation", validation))) + "\n")
  return str(path)


@pytest.mark.parametrize("name", eval_sets.FINETUNE_TASKS)
def test_finetune_and_evaluation_parts_are_disjoint(name):
  data_dir = tiny.get_config().data_dir
  finetune = eval_sets.read_finetune_records(name, data_dir)
  evaluation = eval_sets.read_records(name, data_dir)
  assert finetune and evaluation
  prompt = eval_sets.PROMPT_FORMATS[name].format
  assert not {prompt(**r) for r in finetune} & {prompt(**r) for r in evaluation}
  assert not {r["id"] for r in finetune} & {r["id"] for r in evaluation}
  if name == "squad":  # Split by article: no paragraph of an evaluation article is trained on.
    assert not {r["article"] for r in finetune} & {r["article"] for r in evaluation}
    assert not {r["context"] for r in finetune} & {r["context"] for r in evaluation}
  print(name, len(finetune), "fine-tune /", len(evaluation), "evaluation examples")


def test_one_example_carries_loss_on_its_target_only(tiny_vocab_path, tmp_path):
  prompt, target = "Citizen: speak?\nAnswer:", "We are poor."
  config = _config(tiny_vocab_path, "jsonl", _jsonl(tmp_path, {"prompt": prompt,
                                                              "reference": target}))
  vocab = vocabulary.load_vocabulary(tiny_vocab_path)
  p = list(vocab.encode(prompt))
  t = list(vocab.encode(target)) + [vocab.eos_id]
  batch = next(pipeline.make_train_iterator(config, tiny_vocab_path))
  row = {k: v[0] for k, v in batch.items()}
  # The one example, repeated, is packed into the row: segments 1, 2, ... of len(p) + len(t).
  n = len(p) + len(t)
  copies = config.data.seq_len // n
  assert copies >= 2
  for s in range(copies):
    seg = slice(s * n, (s + 1) * n)
    np.testing.assert_array_equal(row["decoder_segment_ids"][seg], s + 1)
    np.testing.assert_array_equal(row["decoder_positions"][seg], np.arange(n))
    np.testing.assert_array_equal(row["decoder_target_tokens"][seg], p + t)
    np.testing.assert_array_equal(row["decoder_loss_weights"][seg],
                                  [0] * len(p) + [1] * len(t))
  assert not row["decoder_loss_weights"][copies * n:].any()
  # Every head: head i at position t is trained on token t+i only inside the target.
  h = config.model.num_heads_bpd
  _, head_w = losses.head_targets(jnp.asarray(batch["decoder_target_tokens"]),
                                  jnp.asarray(batch["decoder_loss_weights"]),
                                  jnp.asarray(batch["decoder_segment_ids"]), h)
  for i in range(h):
    expected = np.zeros(config.data.seq_len)
    # Position t reads input token t (the last prompt token sits at len(p)) and head i+1
    # predicts target token t+i: both it and the next token must be target tokens.
    for s in range(copies):
      expected[s * n + len(p): s * n + n - i] = 1
    np.testing.assert_array_equal(np.asarray(head_w)[0, :, i], expected)
  # The loss does not see the prompt's tokens as targets: changing them leaves it unchanged.
  model, cfg, params = helpers.random_model(vocab_size=config.model.vocab_size, h=h)
  loss = lambda b: float(steps.compute_loss(params, b, model, jnp.ones(h))[0])
  changed = dict(batch)
  changed["decoder_target_tokens"] = np.where(batch["decoder_loss_weights"] > 0,
                                              batch["decoder_target_tokens"], 7)
  assert loss(changed) == pytest.approx(loss(batch), abs=1e-6)
  changed["decoder_target_tokens"] = np.where(batch["decoder_loss_weights"] > 0, 7,
                                              batch["decoder_target_tokens"])
  assert abs(loss(changed) - loss(batch)) > 1e-3


def test_mixture_of_the_four_tasks_packs_rows(tiny_vocab_path):
  config = _config(tiny_vocab_path, "squad,xsum,samsum,gsm8k")
  batch = next(pipeline.make_train_iterator(config, tiny_vocab_path))
  w, seg = batch["decoder_loss_weights"], batch["decoder_segment_ids"]
  assert w.shape == (2, config.data.seq_len)
  for r in range(2):  # Every segment has a prompt (weight 0) followed by its target (weight 1).
    for s in set(seg[r][seg[r] > 0].tolist()):
      ws = w[r][seg[r] == s]
      assert ws[0] == 0 and ws[-1] == 1 and np.all(np.diff(ws) >= 0)
  assert len(pipeline.make_eval_iterator(config, tiny_vocab_path, num_batches=1)) == 1


def test_empty_target_is_an_error(tiny_vocab_path, tmp_path):
  config = _config(tiny_vocab_path, "jsonl", _jsonl(tmp_path, {"prompt": "Hi", "reference": " "}))
  with pytest.raises(ValueError, match=r"supervised task 'jsonl': example 'ex\d+' has an empty "
                                       r"target"):
    pipeline.make_train_iterator(config, tiny_vocab_path)


def test_prompt_longer_than_its_room_is_an_error(tiny_vocab_path, tmp_path):
  long_prompt = "All the world's a stage, and all the men and women merely players. " * 20
  path = _jsonl(tmp_path, {"prompt": long_prompt, "reference": "Exeunt."})
  config = _config(tiny_vocab_path, "jsonl", path, sft_long_prompts="error")
  with pytest.raises(ValueError, match=r"the prompt of example 'ex\d+' has \d+ tokens, more than "
                                       r"data.sft_prompt_tokens=48"):
    pipeline.make_train_iterator(config, tiny_vocab_path)
  # keep_last (the default) keeps the prompt's last 48 tokens, as decode.py does.
  config = _config(tiny_vocab_path, "jsonl", path)
  row = next(pipeline.make_train_iterator(config, tiny_vocab_path))
  vocab = vocabulary.load_vocabulary(tiny_vocab_path)
  kept = row["decoder_target_tokens"][0][:PROMPT_ROOM]
  np.testing.assert_array_equal(kept, list(vocab.encode(long_prompt))[-PROMPT_ROOM:])


@pytest.mark.parametrize("tasks,message", [
    ("lambada", "lambada stays a language-modelling task"),
    ("", "needs data.sft_tasks"),
    ("jsonl", "set data.sft_jsonl")])
def test_bad_task_lists_are_errors(tiny_vocab_path, tasks, message):
  with pytest.raises(ValueError, match=message):
    pipeline.make_train_iterator(_config(tiny_vocab_path, tasks), tiny_vocab_path)


def test_prompt_room_must_leave_room_for_a_target(tiny_vocab_path):
  config = _config(tiny_vocab_path, "squad", sft_prompt_tokens=64)
  with pytest.raises(ValueError, match=r"sft_prompt_tokens=64 must be in \[1, data.seq_len=64\)"):
    pipeline.make_train_iterator(config, tiny_vocab_path)
