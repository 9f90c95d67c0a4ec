"""Writes tests/fixtures/families/<family>/: tiny random models of each imported family, built and
run by transformers, with reference logits and greedy continuations.

Dev-only (needs torch + transformers, see requirements-bench.txt; not the project's venv):
  .venv-bench/bin/python tools/make_family_fixtures.py [--out_dir tests/fixtures/families]

Per family (Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, and a multimodal Gemma 3 whose
language model bpdjax imports): 2 layers of width 64 (4 query heads,
2 key/value heads of 16), vocabulary 320, a sliding window of 8 positions (on every layer for
Mistral, on one of the two for the others) so that the 20-token logit sequences and the 64-token
continuations reach far past it, and each family's own features switched on (Gemma 2's
soft-capping with caps small enough to matter, Gemma 3's linear RoPE scaling on its global layer
and query_pre_attn_scalar != head_dim, Qwen2's biases, Qwen3's q/k norms, tied and untied
output embeddings). Weights are random (every tensor, norms and biases included, so that a
mapping mistake shows) and saved in bfloat16 to keep the files small; the references come from
the saved files loaded back in float32, which is what bpdjax imports.

Each folder holds the model as save_pretrained writes it (config.json, model.safetensors,
generation_config.json), a tiny byte-level BPE tokenizer with the family's BOS/EOS conventions
(tokenizer.json, tokenizer_config.json), and
  reference.npz   tokens [2, 20] int32 and transformers' float32 logits [2, 20, V]
  reference.json  3 prompts: text, transformers' ids, 64 greedy new ids from generate() (EOS
                  off, cross-checked against an argmax loop of full forward passes), and the
                  smallest top-1/top-2 logit margin met (ties would make greedy fragile).
and tests/fixtures/families/published_configs.json (see PUBLISHED_CONFIGS below).
Rerunning it rewrites the same bytes (checked with cmp against a fresh --out_dir).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import tokenizers
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 320            # Embedding rows; Qwen2's tokenizer has fewer ids (padded embeddings).
WINDOW = 8
NEW_TOKENS = 64
# Random weights' scales (see `randomize`): chosen for top-1/top-2 logit margins above 1e-3 and
# continuations that do not repeat one token.
MAT_STD = {"gemma": 0.5, "other": 0.25}
GEMMA_EMBED_STD = 0.02
GEMMA_FINAL_SCALE = 10.0
SEEDS = {"qwen2": 2, "gemma2": 1}   # Seed 0 met margins below MIN_MARGIN there.
MIN_MARGIN = 1e-3
LOGIT_LEN = 20
PROMPTS = ["Once upon a time", "The little dog ran to the park and saw a big red ball", "She"]
CORPUS = [
    "Once upon a time there was a little girl named Lily who loved to play in the park.",
    "The little dog ran to the park and saw a big red ball under the old tree.",
    "She was happy because her mother baked a cake with apples and honey.",
    "Tom and his sister went to the sea to look for shells and small fish.",
    "One day the cat climbed the tall tree and could not get down again.",
    "They laughed and sang songs until the sun went down behind the hills.",
] * 4
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=128, rms_norm_eps=1e-6)

# family -> (config class, model class, config kwargs, tokenizer conventions)
FAMILIES = {
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(sliding_window=WINDOW, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                dict(specials=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", add_bos=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                   tie_word_embeddings=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}),
              dict(specials=[], appended=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   bos=None, eos="<|endoftext|>", add_bos=False, size=300)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                   tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}),
              dict(specials=[], appended=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   bos=None, eos="<|im_end|>", add_bos=False)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(sliding_window=WINDOW, query_pre_attn_scalar=32, attn_logit_softcapping=5.0,
                    final_logit_softcapping=10.0,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
               dict(specials=["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>", eos="<eos>",
                    add_bos=True)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    dict(sliding_window=WINDOW, query_pre_attn_scalar=24,
                         layer_types=["sliding_attention", "full_attention"],
                         rope_parameters={
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 1_000_000.0}}),
                    dict(specials=["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>",
                         eos="<eos>", add_bos=True)),
    # Multimodal Gemma 3: the same language model inside Gemma3ForConditionalGeneration, with a
    # tiny SigLIP vision tower that bpdjax leaves out (text in, text out).
    "gemma3": ("Gemma3Config", "Gemma3ForConditionalGeneration",
               dict(sliding_window=WINDOW, query_pre_attn_scalar=24,
                    layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}}),
               dict(specials=["<pad>", "<eos>", "<bos>", "<unk>"], bos="<bos>", eos="<eos>",
                    add_bos=True)),
}
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              image_size=28, patch_size=14)


# tools/published_configs.json: config.json files shaped like those of published checkpoints
# (written from their model cards' configs, not downloaded; transformers < 5 style: rope_theta,
# rope_scaling, no layer_types). tests/fixtures/families/published_configs.json adds
# transformers' reading of each, checked by tests/test_families.py.
with open(os.path.join(HERE, "published_configs.json")) as _f:
  PUBLISHED_CONFIGS = json.load(_f)


def _reading(config, text) -> dict:
  """transformers' reading of a config: what bpdjax's import must agree with."""
  types = list(getattr(text, "layer_types", None) or [])
  if text.model_type == "mistral":          # Its window holds on every layer.
    types = ["sliding_attention"] * text.num_hidden_layers
  rope = text.rope_parameters
  if "full_attention" not in rope:
    rope = {"full_attention": rope, "sliding_attention": rope}
  return {
      "sliding_window": text.sliding_window,
      "sliding_layers": ([i for i, t in enumerate(types) if t == "sliding_attention"]
                         if text.sliding_window else []),
      "rope": {k: [v.get("rope_theta"), v.get("rope_type"), v.get("factor", 1.0)]
               for k, v in rope.items() if k in ("full_attention", "sliding_attention")},
      "num_kv_heads": text.num_key_value_heads,
      "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
      "tie": config.tie_word_embeddings,
      "query_pre_attn_scalar": getattr(text, "query_pre_attn_scalar", None),
      "softcaps": [getattr(text, "attn_logit_softcapping", None),
                   getattr(text, "final_logit_softcapping", None)],
      "vocab_size": text.vocab_size}


def published_configs(out_dir: str) -> None:
  """Writes published_configs.json: each config and transformers' reading of it."""
  out = {}
  for name, d in PUBLISHED_CONFIGS.items():
    config = transformers.AutoConfig.for_model(**json.loads(json.dumps(d)))
    text = config.get_text_config() if d["model_type"] == "gemma3" else config
    out[name] = {"config": d, "transformers": _reading(config, text)}
  with open(os.path.join(out_dir, "published_configs.json"), "w") as f:
    json.dump(out, f, indent=1)


def make_tokenizer(conv: dict) -> transformers.PreTrainedTokenizerFast:
  """A byte-level BPE of conv["size"] (default VOCAB) ids with the family's special tokens:
  first (Llama/Mistral/Gemma ids 0..) or appended after the merges (Qwen); BOS added by the
  post-processor where the family adds it."""
  size = conv.get("size", VOCAB)
  appended = conv.get("appended", [])
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=size - len(appended), special_tokens=conv["specials"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(CORPUS, trainer)
  if tok.get_vocab_size() != size - len(appended):
    raise RuntimeError(f"BPE has {tok.get_vocab_size()} ids, wanted {size - len(appended)}")
  tok.add_special_tokens(appended)
  if conv["add_bos"]:
    bos = conv["bos"]
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
  kwargs = {k: v for k, v in (("bos_token", conv["bos"]), ("eos_token", conv["eos"]),
                              ("unk_token", "<unk>" if "<unk>" in conv["specials"] else None),
                              ("pad_token", "<pad>" if "<pad>" in conv["specials"] else None))
            if v is not None}
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def randomize(model: torch.nn.Module, gemma: bool, seed: int) -> None:
  """Every tensor random: matrices N(0, MAT_STD^2), norm weights around their identity (1 for
  Llama-style, 0 for Gemma's 1 + w), biases N(0, 0.1^2). Gemma's embedding rows are random
  directions of one small norm (GEMMA_EMBED_STD per component; times sqrt(64) on the way in,
  larger rows drown the layers and the tied output layer repeats one token) and its final norm
  scales by ~GEMMA_FINAL_SCALE (logits wide enough apart)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if gemma and name.endswith(("model.norm.weight", "language_model.norm.weight")):
        p.copy_(GEMMA_FINAL_SCALE - 1.0 + 0.2 * noise)
      elif "norm" in name:
        p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
      elif gemma and "embed_tokens" in name:
        p.copy_(GEMMA_EMBED_STD * noise.shape[1] ** 0.5 * noise / noise.norm(dim=1, keepdim=True))
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(MAT_STD["gemma" if gemma else "other"] * noise)


def margin(logits: torch.Tensor) -> float:
  top = torch.topk(logits.double(), 2, dim=-1).values
  return float((top[..., 0] - top[..., 1]).min())


def build(family: str, out_dir: str, seed: int) -> dict:
  config_cls, model_cls, kwargs, conv = FAMILIES[family]
  folder = os.path.join(out_dir, family)
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  tok = make_tokenizer(conv)
  ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("bos", conv["bos"]),
                                                            ("eos", conv["eos"])) if t}
  # Qwen's configs name <|endoftext|> as bos_token_id although its tokenizer adds no BOS
  # (tokenizer_config.json: "bos_token": null); the fixtures keep that quirk.
  text = dict(**COMMON, **kwargs, bos_token_id=ids.get("bos", ids["eos"]),
              eos_token_id=ids["eos"], pad_token_id=tok.pad_token_id)
  if family == "gemma3":   # Image tokens: ids the prompts never use.
    config = transformers.Gemma3Config(text_config=text, vision_config=VISION,
                                       mm_tokens_per_image=4, boi_token_index=VOCAB - 3,
                                       eoi_token_index=VOCAB - 2, image_token_index=VOCAB - 1)
  else:
    config = getattr(transformers, config_cls)(**text)
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config)
  randomize(model, family.startswith("gemma"), seed)
  model.to(torch.bfloat16).save_pretrained(folder)
  tok.save_pretrained(folder)
  if conv["bos"] is None:
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path) as f:
      tok_config = json.load(f)
    with open(path, "w") as f:
      json.dump({**tok_config, "bos_token": None}, f, indent=2)

  # The references: the saved (bfloat16) weights in float32, as bpdjax imports them.
  model = getattr(transformers, model_cls).from_pretrained(folder, dtype=torch.float32).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  auto_tok = transformers.AutoTokenizer.from_pretrained(folder)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, len(auto_tok), size=(2, LOGIT_LEN)).astype(np.int32)
  with torch.no_grad():
    logits = model(torch.tensor(tokens, dtype=torch.long)).logits
    margins = [margin(logits)]
    greedy = []
    for text in PROMPTS:
      prompt = auto_tok(text, return_tensors="pt").input_ids
      out = model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS,
                           attention_mask=torch.ones_like(prompt))
      new = out[0, prompt.shape[1]:].tolist()
      seq = prompt
      for _ in range(NEW_TOKENS):
        step = model(seq).logits[:, -1]
        margins.append(margin(step))
        seq = torch.cat([seq, step.argmax(-1, keepdim=True)], dim=1)
      if len(new) != NEW_TOKENS or seq[0, prompt.shape[1]:].tolist() != new:
        raise RuntimeError(f"{family}: generate() and the argmax loop disagree for {text!r}")
      greedy.append({"prompt": text, "prompt_ids": prompt[0].tolist(), "new_ids": new})
  np.savez_compressed(os.path.join(folder, "reference.npz"), tokens=tokens,
                      logits=logits.numpy().astype(np.float32))
  meta = {"source": "tools/make_family_fixtures.py", "family": family, "seed": seed,
          "torch": torch.__version__, "transformers": transformers.__version__,
          "new_tokens": NEW_TOKENS, "sliding_window": WINDOW, "eos_disabled": True,
          "bos_id": ids.get("bos"), "eos_id": ids["eos"], "tokenizer_size": len(auto_tok),
          "min_top2_margin": min(margins), "greedy": greedy}
  with open(os.path.join(folder, "reference.json"), "w") as f:
    json.dump(meta, f, indent=1)
  if meta["min_top2_margin"] < MIN_MARGIN:
    raise RuntimeError(f"{family}: a top-1/top-2 margin of {meta['min_top2_margin']:.3g} (< "
                       f"{MIN_MARGIN}): float32 rounding could flip greedy; change SEEDS")
  return meta


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--out_dir", default=os.path.join(HERE, "..", "tests", "fixtures",
                                                        "families"))
  parser.add_argument("--families", default=",".join(FAMILIES))
  args = parser.parse_args(argv)
  torch.set_num_threads(1)
  os.makedirs(args.out_dir, exist_ok=True)
  published_configs(args.out_dir)
  for family in args.families.split(","):
    meta = build(family, args.out_dir, SEEDS.get(family, 0))
    size = sum(os.path.getsize(os.path.join(args.out_dir, family, n))
               for n in os.listdir(os.path.join(args.out_dir, family)))
    print(f"{family}: {size / 1024:.0f} KiB, min top-2 margin {meta['min_top2_margin']:.3g}, "
          f"prompt lengths {[len(g['prompt_ids']) for g in meta['greedy']]}, first new ids "
          f"{meta['greedy'][0]['new_ids'][:8]}, distinct new ids per prompt "
          f"{[len(set(g['new_ids'])) for g in meta['greedy']]}")


if __name__ == "__main__":
  main(sys.argv[1:])
