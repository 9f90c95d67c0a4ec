"""A Hugging Face config.json -> TransformerConfig, for the decoder families bpdjax computes.

  family    model_type    architectures         what differs from Llama (layers.py)
  Llama     llama         LlamaForCausalLM      -
  Mistral   mistral       MistralForCausalLM    sliding window on every layer
  Qwen2     qwen2         Qwen2ForCausalLM      q/k/v biases; sliding window (use_sliding_window)
  Qwen3     qwen3         Qwen3ForCausalLM      q/k RMSNorm; sliding window (use_sliding_window)
  Gemma 2   gemma2        Gemma2ForCausalLM     GeGLU, (1 + w) norms, post norms, soft-capping,
                                                query_pre_attn_scalar, embeddings * sqrt(d),
                                                sliding window on alternate layers
  Gemma 3   gemma3_text   Gemma3ForCausalLM     Gemma 2's, q/k norms instead of soft-capping, a
                                                local RoPE base for the sliding layers
            gemma3        Gemma3ForConditionalGeneration: its language model (text_config)

Both config.json styles are read: transformers >= 5 (rope_parameters, layer_types) and the
older one (rope_theta, rope_scaling, rope_local_base_freq, sliding_window_pattern). A missing
key takes transformers' default for that family. Anything bpdjax would compute differently
(other RoPE scalings, MoE, biases the block lacks, quantized weights, ...) is a ValueError
naming the field, never a silently different model.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import ml_collections

from bpdjax import configuration
from bpdjax import model as model_lib


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model_type computes beyond Llama, and transformers' defaults for its config."""
  name: str
  architectures: tuple
  gemma: bool = False              # GeGLU, (1 + w) norms, post norms, sqrt(d) embedding scale.
  qkv_bias: bool = False
  qk_norm: bool = False
  window: str = ""                 # "all" | "use_sliding_window" | "layer_types" | "".
  window_pattern: int = 0          # Default layer_types: layer i is global iff (i+1) % p == 0.
  defaults: tuple = ()             # (key, value) of transformers' config defaults.

  def default(self, key: str, fallback=None):
    return dict(self.defaults).get(key, fallback)


def _shape(vocab, hidden, mlp, layers, heads, kv_heads, max_len):
  return (("vocab_size", vocab), ("hidden_size", hidden), ("intermediate_size", mlp),
          ("num_hidden_layers", layers), ("num_attention_heads", heads),
          ("num_key_value_heads", kv_heads), ("max_position_embeddings", max_len))


# Defaults: transformers 5.24's config classes (a multimodal Gemma 3's text_config leaves most
# of them out). Llama's keys are required (as before).
FAMILIES = {
    "llama": Family("Llama", ("LlamaForCausalLM",)),
    "mistral": Family("Mistral", ("MistralForCausalLM",), window="all",
                      defaults=_shape(32000, 4096, 14336, 32, 32, 8, 131072)
                      + (("sliding_window", 4096),)),
    "qwen2": Family("Qwen2", ("Qwen2ForCausalLM",), qkv_bias=True, window="use_sliding_window",
                    defaults=_shape(151936, 4096, 22016, 32, 32, 32, 32768)
                    + (("max_window_layers", 28), ("sliding_window", 4096))),
    "qwen3": Family("Qwen3", ("Qwen3ForCausalLM",), qk_norm=True, window="use_sliding_window",
                    defaults=_shape(151936, 4096, 22016, 32, 32, 32, 32768)
                    + (("max_window_layers", 28), ("sliding_window", 4096), ("head_dim", 128))),
    "gemma2": Family("Gemma 2", ("Gemma2ForCausalLM",), gemma=True, window="layer_types",
                     window_pattern=2,
                     defaults=_shape(256000, 2304, 9216, 26, 8, 4, 8192)
                     + (("head_dim", 256), ("query_pre_attn_scalar", 256),
                        ("sliding_window", 4096), ("attn_logit_softcapping", 50.0),
                        ("final_logit_softcapping", 30.0), ("tie_word_embeddings", True))),
    "gemma3_text": Family("Gemma 3", ("Gemma3ForCausalLM",), gemma=True, qk_norm=True,
                          window="layer_types", window_pattern=6,
                          defaults=_shape(262208, 2304, 9216, 26, 8, 4, 131072)
                          + (("head_dim", 256), ("query_pre_attn_scalar", 256),
                             ("sliding_window", 4096), ("rope_theta", 1_000_000.0),
                             ("rope_local_base_freq", 10_000.0), ("tie_word_embeddings", True))),
}
# Fields whose presence (a true value) means experts: bpdjax has dense MLPs only.
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
               "moe_intermediate_size")
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _bad(field: str, value, why: str):
  return ValueError(f"Unsupported config.json: {field}={value!r} ({why})")


def language_model_config(hf: dict) -> dict:
  """The config.json of the language model: `hf` itself, or a multimodal Gemma 3's text_config
  (Gemma3ForConditionalGeneration computes text-only input as Gemma3ForCausalLM does; the
  vision tower is left out, see hf_weights.language_model_tensors)."""
  if hf.get("model_type") != "gemma3":
    return hf
  archs = hf.get("architectures")
  if archs is not None and archs != ["Gemma3ForConditionalGeneration"]:
    raise _bad("architectures", archs, "model_type 'gemma3' supports "
               "['Gemma3ForConditionalGeneration'] only")
  text = hf.get("text_config")
  if not isinstance(text, dict):
    raise _bad("text_config", text, "a multimodal Gemma 3 config.json needs its language "
               "model's text_config")
  return dict(text, model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
              tie_word_embeddings=hf.get("tie_word_embeddings",
                                         text.get("tie_word_embeddings", True)))


def family_of(hf: dict) -> Family:
  """The family of a (language model's) config.json; ValueError naming model_type or
  architectures otherwise."""
  model_type = hf.get("model_type")
  if model_type not in FAMILIES:
    raise _bad("model_type", model_type, f"supported: {sorted(FAMILIES)}")
  family = FAMILIES[model_type]
  archs = hf.get("architectures")
  if archs is not None and (not archs or any(a not in family.architectures for a in archs)):
    raise _bad("architectures", archs, f"model_type {model_type!r} supports "
               f"{list(family.architectures)} only")
  return family


def _rope(params: Optional[dict], field: str, theta: float) -> tuple[float, float]:
  """(theta, linear factor) of one RoPE parameter dict; other RoPE types are a ValueError."""
  params = params or {}
  partial = params.get("partial_rotary_factor", 1.0)
  if partial != 1.0:
    raise _bad(f"{field}.partial_rotary_factor", partial, "partial RoPE is not supported")
  rope_type = params.get("rope_type", params.get("type", "default"))
  theta = float(params.get("rope_theta", theta))
  if rope_type == "default":
    return theta, 1.0
  if rope_type == "linear":
    factor = params.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
      raise _bad(f"{field}.factor", factor, "linear RoPE scaling needs a positive factor")
    return theta, float(factor)
  raise _bad(f"{field}.rope_type", rope_type, "only default and linear RoPE are supported")


def _ropes(hf: dict, family: Family) -> tuple[tuple[float, float], tuple[float, float]]:
  """((theta, factor) of the global layers, (theta, factor) of the sliding layers), read as
  transformers 5 reads them: an old-style rope_scaling wins over rope_parameters, and Gemma 3
  applies it to its global layers only (rope_local_base_freq is its local base)."""
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise _bad("partial_rotary_factor", hf["partial_rotary_factor"], "partial RoPE is not "
               "supported")
  theta = float(hf.get("rope_theta", family.default("rope_theta", 10000.0)))
  scaling, params = hf.get("rope_scaling"), hf.get("rope_parameters") or {}
  nested = bool(params) and set(params) <= set(_LAYER_TYPES)
  if family.default("rope_local_base_freq") is not None:               # Gemma 3.
    full = dict(params.get("full_attention") or {}) if nested else dict(params)
    full.update(scaling or {})
    local = dict(params.get("sliding_attention") or {}) if nested else {}
    local_theta = float(hf.get("rope_local_base_freq", family.default("rope_local_base_freq")))
    field = "rope_scaling" if scaling else "rope_parameters.full_attention"
    return (_rope(full, field, theta),
            _rope(local, "rope_parameters.sliding_attention", local_theta))
  if scaling:
    return (_rope(scaling, "rope_scaling", theta),) * 2
  if nested:
    return (_rope(params.get("full_attention"), "rope_parameters.full_attention", theta),
            _rope(params.get("sliding_attention"), "rope_parameters.sliding_attention", theta))
  return (_rope(params, "rope_parameters", theta),) * 2


def _sliding_layers(hf: dict, family: Family, num_layers: int) -> tuple[int, tuple]:
  """(window, indices of the sliding-window layers) as transformers builds them."""
  window = hf.get("sliding_window", family.default("sliding_window"))
  if family.window == "use_sliding_window" and not hf.get("use_sliding_window", False):
    window = None
  if not family.window or window is None:
    return 0, ()
  if not isinstance(window, int) or window < 1:
    raise _bad("sliding_window", window, "must be a positive integer or null")
  if family.window == "all":                           # Mistral ignores layer_types.
    return window, tuple(range(num_layers))
  types = hf.get("layer_types")
  if types is None:
    if family.window == "use_sliding_window":
      first = hf.get("max_window_layers", family.default("max_window_layers"))
      types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    else:
      pattern = hf.get("sliding_window_pattern", family.window_pattern)
      types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
               for i in range(num_layers)]
  if len(types) != num_layers or any(t not in _LAYER_TYPES for t in types):
    raise _bad("layer_types", types, f"needs num_hidden_layers={num_layers} entries of "
               f"{list(_LAYER_TYPES)}")
  return window, tuple(i for i, t in enumerate(types) if t == "sliding_attention")


def _check_unsupported(hf: dict, family: Family) -> None:
  for field in _MOE_FIELDS:
    if hf.get(field):
      raise _bad(field, hf[field], "mixture-of-experts models are not supported")
  if family.gemma:
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
      raise _bad("hidden_activation", act, "only 'gelu_pytorch_tanh' (GeGLU) is supported")
  else:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise _bad("hidden_act", act, "only 'silu' (SwiGLU) is supported")
  for field in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
    if hf.get(field, False):
      raise _bad(field, hf[field], "not supported")
  if hf.get("quantization_config") is not None:
    raise _bad("quantization_config", hf["quantization_config"], "quantized weights")
  for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
    if not isinstance(hf.get(field), int) or hf[field] < 1:
      raise ValueError(f"config.json: {field} must be a positive integer, got "
                       f"{hf.get(field)!r}")


def config_from_hf(hf: dict, num_heads_bpd: int = 1, head_type: str = "ffn",
                   head_hidden_dim: Optional[int] = None,
                   dtype: str = "float32") -> model_lib.TransformerConfig:
  """A Hugging Face config.json (as a dict) of a supported family -> TransformerConfig (of the
  language model, for a multimodal Gemma 3).

  Raises:
    ValueError naming the field of anything bpdjax's Transformer does not compute the same way.
  """
  hf = language_model_config(hf)
  family = family_of(hf)
  hf = {**dict(family.defaults), **hf}
  _check_unsupported(hf, family)
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or family.default("head_dim")
  if head_dim is None:
    if hf["hidden_size"] % heads:
      raise _bad("hidden_size", hf["hidden_size"],
                 f"not divisible by num_attention_heads={heads} and no head_dim given")
    head_dim = hf["hidden_size"] // heads
  (theta, factor), (local_theta, local_factor) = _ropes(hf, family)
  window, sliding = _sliding_layers(hf, family, hf["num_hidden_layers"])
  if sliding and (local_theta, local_factor) != (theta, factor):
    if local_factor != 1.0:
      raise _bad("rope_parameters.sliding_attention", (local_theta, local_factor),
                 "RoPE scaling on the sliding-window layers is not supported")
  else:
    local_theta = 0.0
  caps = [hf.get(k, family.default(k)) or 0.0
          for k in ("attn_logit_softcapping", "final_logit_softcapping")]
  m = ml_collections.ConfigDict(dict(
      vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"], emb_dim=hf["hidden_size"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or family.default("num_key_value_heads", heads),
      head_dim=head_dim, mlp_dim=hf["intermediate_size"],
      max_len=hf.get("max_position_embeddings", 2048), num_heads_bpd=num_heads_bpd,
      mlp_activation="geglu" if family.gemma else "swiglu", rope_theta=theta,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qkv_bias=family.qkv_bias,
      qk_norm=family.qk_norm, post_norms=family.gemma,
      embed_scale=float(hf["hidden_size"]) ** 0.5 if family.gemma else 1.0,
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar",
                                         family.default("query_pre_attn_scalar", 0.0))),
      attn_logit_softcap=float(caps[0]), final_logit_softcap=float(caps[1]),
      sliding_window=window, sliding_window_layers=sliding, rope_factor=factor,
      local_rope_theta=local_theta,
      tie_embeddings=bool(hf.get("tie_word_embeddings",
                                 family.default("tie_word_embeddings", False))),
      head_type=head_type, head_hidden_dim=head_hidden_dim or hf["intermediate_size"],
      dtype=dtype))
  return configuration.validate_model(m)
