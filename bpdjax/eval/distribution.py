"""Distribution check of sampled outputs against the model (decode.py at temperature > 0).

Greedy outputs are compared with plain decoding token for token; sampled ones cannot be, so the
report gives, per method, two statistics of its samples that a lossless method shares with plain
sampling (up to sampling noise) and a lossy one shifts:

- mean_logprob: the mean over examples of the mean over its generated tokens of
  log q(token | prefix), q the processed sampling distribution (temperature, top-k, top-p),
  with its standard error and, beside ar's, the z-score of the paired difference (same prompts
  and seed, so the same first token). Medusa's typical
  acceptance keeps tokens likelier than q would draw: its mean_logprob is higher.
- second_token_tv: total variation distance between the histogram of each example's second
  generated token (pooled over the examples) and the model's exact distribution of it, the mean
  over examples of q(. | prompt, first token). The first generated token comes from the prefill,
  identical in every method for one seed, so the second is the first that a method's
  verification decides; ar's own distance is the noise floor at this number of examples.

Shapes: N examples, W = prompt + output slots of a scoring batch, V vocabulary.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax.decoding import sampling

BATCH = 8             # Examples scored per forward pass.


@functools.partial(jax.jit, static_argnames=("model", "config"))
def _log_q(model, params, tokens: jax.Array, config: sampling.SamplingConfig) -> jax.Array:
  """tokens [n, W] -> log q [n, W, V] of the token after each slot (head 1, processed)."""
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  hidden, _ = model.apply({"params": params}, tokens, positions, method=model.hidden_states)
  logits = model.apply({"params": params}, hidden, 0, 1, method=model.head_logits)[:, :, 0]
  return jax.nn.log_softmax(sampling.processed_logits(logits, config), axis=-1)


def score(model, params, prompts: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
          config: sampling.SamplingConfig) -> dict:
  """Per example (prompt [p_i] and its generated tokens [m_i]): the sum and count of log q of
  the generated tokens, and q of the second generated token's position (None when m_i < 2).
  Returns {"logprob_sums": [N], "counts": [N], "second_token": list of ([V] q, token)}."""
  if config.greedy:
    raise ValueError("The distribution check is for sampled outputs (temperature > 0)")
  sums, counts, second = [], [], []
  for start in range(0, len(prompts), BATCH):
    rows = [(np.asarray(p), np.asarray(o)) for p, o in
            zip(prompts[start:start + BATCH], outputs[start:start + BATCH])]
    width = max(len(p) + len(o) for p, o in rows)
    width = 1 << max(3, math.ceil(math.log2(width)))          # Few shapes, few compilations.
    batch = np.zeros((len(rows), width), np.int32)
    for i, (p, o) in enumerate(rows):
      batch[i, :len(p) + len(o)] = np.concatenate([p, o])
    log_q = np.asarray(_log_q(model, params, jnp.asarray(batch), config))
    for i, (p, o) in enumerate(rows):
      slots = np.arange(len(p) - 1, len(p) + len(o) - 1)     # Slot s predicts token s + 1.
      picked = log_q[i, slots, o] if len(o) else np.zeros((0,))
      sums.append(float(np.sum(picked)))
      counts.append(len(o))
      second.append((np.exp(log_q[i, len(p)]), int(o[1])) if len(o) >= 2 else None)
  return {"logprob_sums": np.asarray(sums), "counts": np.asarray(counts),
          "second_token": second}


def summarize(scored: dict, reference: Optional[dict] = None) -> dict:
  """The report's statistics of one method's `score` (see the module docstring); `reference`
  (ar's score on the same prompts) adds logprob_z_vs_ar, the z-score of the mean per-example
  difference (paired: the same prompt and first token)."""
  per_example = _per_example(scored)
  valid = ~np.isnan(per_example)
  n = int(np.sum(valid))
  out = {"mean_logprob": float(np.mean(per_example[valid])) if n else None,
         "logprob_se": _se(per_example[valid]), "examples": n,
         "second_token_tv": _second_token_tv(scored["second_token"])}
  if reference is not None:
    diff = per_example - _per_example(reference)
    diff = diff[~np.isnan(diff)]
    se = _se(diff)
    out["logprob_z_vs_ar"] = float(np.mean(diff) / se) if se else None
  return out


def _per_example(scored: dict) -> np.ndarray:
  """[N] mean log q per generated token of each example (nan for an empty output)."""
  counts = scored["counts"].astype(np.float64)
  return np.where(counts > 0, scored["logprob_sums"] / np.maximum(counts, 1), np.nan)


def _se(x: np.ndarray) -> Optional[float]:
  return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None


def _second_token_tv(second: list) -> Optional[float]:
  rows = [s for s in second if s is not None]
  if not rows:
    return None
  expected = np.mean([q for q, _ in rows], axis=0)                                 # [V]
  observed = np.bincount([t for _, t in rows], minlength=expected.shape[0]) / len(rows)
  return float(0.5 * np.sum(np.abs(observed - expected)))
