"""Block heads on an imported base: fresh heads, and trained heads put on a fresh import.

The imported LM head becomes head 1 and is exact: for head_type "ffn" head 1's FFN output layer
is zero (the FFN is the identity), for "medusa" head 1 is the plain LM head. Further heads are
fresh: "ffn" heads start as copies of head 1 (zero output layer), "medusa" heads have a zero
ResBlock and a copy of the LM head as their vocabulary projection (as Medusa initialises them),
"sequential" heads 2..h (heads.py) a zero output layer, so they too start as copies of head 1;
a Markov correction (markov_rank > 0) starts at zero.
All parameters are host numpy float32 arrays, in the tree `Transformer.init` gives.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import heads as heads_lib
from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import partitioning

Params = dict[str, Any]


def _lm_head_kernel(base: Params, cfg: model_lib.TransformerConfig) -> np.ndarray:
  """[D, V] vocabulary projection of the base LM."""
  if cfg.tie_embeddings:
    return np.ascontiguousarray(np.asarray(base["embedding"]["embedding"]).T)
  return np.asarray(base["lm_head"]["kernel"])


def init_heads(cfg: model_lib.TransformerConfig, base: Params, seed: int = 0) -> Params:
  """Fresh heads {head_i: ...} for cfg; all of them start equal to the base LM's next-token head
  (FFN heads: zero output layer; Medusa heads: zero ResBlock, vocab projection = LM head)."""
  x = jnp.zeros((1, 1, cfg.emb_dim), cfg.jnp_dtype)
  heads: Params = {}
  if cfg.head_type in ("ffn", "sequential"):
    for i in range(cfg.num_heads_bpd):
      rng = jax.random.PRNGKey(seed + i)
      if cfg.head_type == "ffn" or i == 0:
        p = model_lib.FfnHead(cfg).init(rng, x)["params"]
      else:
        previous = jnp.zeros((1, 1, i, cfg.emb_dim), cfg.jnp_dtype)
        p = heads_lib.SequentialHead(cfg).init(rng, x, previous)["params"]
      heads[f"head_{i + 1}"] = p
  else:
    lm_head = _lm_head_kernel(base, cfg)
    for i in range(1, cfg.num_heads_bpd):
      p = dict(model_lib.MedusaHead(cfg).init(jax.random.PRNGKey(seed + i), x)["params"])
      p = partitioning.strip_boxes(p)
      p["vocab"] = {"kernel": lm_head.copy()}
      heads[f"head_{i + 1}"] = p
  for i in range(1, cfg.num_heads_bpd if cfg.markov_rank > 0 else 1):
    heads[f"head_{i + 1}_markov"] = heads_lib.MarkovCorrection(cfg).init(
        jax.random.PRNGKey(seed + 1000 + i), jnp.zeros((1, 1), jnp.int32))["params"]
  heads = partitioning.strip_boxes(heads)
  return jax.tree.map(lambda a: np.asarray(a, np.float32), heads)


def merge_heads(base_params: Params, head_params: Params) -> Params:
  """base_params with every head_* entry replaced by those of head_params (e.g. heads trained
  on top of an imported model; any other entries of head_params are ignored). Use a config
  whose num_heads_bpd / head_type / head_hidden_dim match the heads; `params.check_params` verifies."""
  heads = {k: v for k, v in head_params.items() if k.startswith("head_")}
  if not heads:
    raise ValueError(f"head_params has no head_* entries (keys: {sorted(head_params)})")
  d = np.shape(base_params["embedding"]["embedding"])[1]
  for name, p in heads.items():
    for layer in ("hidden", "resblock"):
      if layer in p and np.shape(p[layer]["kernel"])[0] != d:
        raise ValueError(f"{name}/{layer}/kernel has shape {np.shape(p[layer]['kernel'])}; the "
                         f"base model's width is {d}")
  merged = {k: v for k, v in base_params.items() if not k.startswith("head_")}
  merged.update(heads)
  return merged




def with_fresh_heads(cfg: model_lib.TransformerConfig, base: Params, seed: int) -> Params:
  """base (an import, no heads) plus init_heads(cfg, base, seed), checked against the model."""
  params = dict(base)
  params.update(init_heads(cfg, base, seed))
  params_lib.check_params(cfg, params)
  return params
