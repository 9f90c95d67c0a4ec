"""Text in, text out: generation for notebooks and scripts (`bpdjax.generate`, `bpdjax.stream`).

  import bpdjax
  m = bpdjax.load("workdirs/ts_ffn")                      # or load(hf_folder, heads=workdir)
  out = bpdjax.generate(m, "Once upon a time", method="bpd", max_new_tokens=64)
  print(out, out.block_efficiency, out.seconds)           # out is a str (a `Text`)
  for block in bpdjax.stream(m, "Once upon a time", method="bpd"):
    print(block.text, end="", flush=True)                 # one accepted block per model call

Both run the one driver (decoding/generator.Generator): `generate` decodes with the loop
compiled whole; `stream` runs the same loop's prefill and step from the host (the driver's
`stepper` hook), one jitted call per iteration, so it yields each block as soon as its verify
call has decided it: the same tokens as `generate` (greedy, or the same sampling rule and key),
at the price of a host round trip per call. Methods are those of
`decode.py --help`; `options` are their knobs (e.g. k=4, tree_size=32), the defaults otherwise.
Methods that need a resource (a rescorer workdir, an ARPA file) take it as `resources=`
(decoding/resources.Resources).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from bpdjax import api
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import loop
from bpdjax.decoding import methods
from bpdjax.decoding import sampling


class Text(str):
  """A generated continuation (the str itself) with what it cost.

  tokens: list[int] generated ids; calls: serial model calls (prefill included);
  block_efficiency: len(tokens) / calls (1.0 for plain decoding); seconds: decode time of its
  batch (compilation excluded); method: the decoding method's name.
  """
  tokens: list
  calls: int
  seconds: float
  method: str

  def __new__(cls, text: str, tokens: Sequence[int], calls: int, seconds: float, method: str):
    self = super().__new__(cls, text)
    self.tokens, self.calls, self.seconds, self.method = list(tokens), calls, seconds, method
    return self

  @property
  def block_efficiency(self) -> float:
    return len(self.tokens) / max(self.calls, 1)


@dataclasses.dataclass(frozen=True)
class Block:
  """One model call's decided tokens. text: what they add to the decoded text; tokens: their
  ids; call: 1 for the prefill (which decides the first token), then 2, 3, ..."""
  text: str
  tokens: list
  call: int


def _encode(m: api.LoadedModel, prompt: str) -> list[int]:
  if not isinstance(prompt, str):
    raise TypeError(f"A prompt is a str (or a list of str), got {type(prompt).__name__}")
  ids = m.vocab.encode(prompt)
  if not ids:
    raise ValueError("The prompt encodes to no tokens: give some text")
  return ids


def _build(gen: generator_lib.Generator, method: str, resources: Any, options: dict,
           batch_size: int, width: int, max_new_tokens: int):
  if method not in methods.names():
    raise ValueError(f"Unknown method {method!r}; methods: {', '.join(methods.names())}")
  return gen.build(method, resources, batch_size=batch_size, prompt_width=width,
                   max_new_tokens=max_new_tokens, **options)


_GENERATORS: dict = {}


def _generator(m: api.LoadedModel) -> generator_lib.Generator:
  """One driver per loaded model, kept: generating or streaming again with the same settings
  compiles nothing."""
  key = id(m.params)
  if key not in _GENERATORS or _GENERATORS[key].params is not m.params:
    _GENERATORS.clear()          # Keep only the newest model's programs.
    _GENERATORS[key] = generator_lib.Generator(m.model, m.params, eos_id=m.vocab.eos_id)
  return _GENERATORS[key]


def _sampling(temperature: float, top_k: int, top_p: float) -> sampling.SamplingConfig:
  return sampling.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)


def generate(m: api.LoadedModel, prompt: Union[str, Sequence[str]], method: str = "bpd",
             max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, batch_size: int = 1, resources: Any = None,
             **options) -> Union[Text, list]:
  """The continuation of `prompt` (a `Text`), or of each prompt of a list (a list of `Text`).

  Raises:
    ValueError: an unknown method or knob, an empty prompt, a prompt too long for max_len.
  """
  if not isinstance(prompt, (str, list, tuple)):
    raise TypeError(f"A prompt is a str (or a list of str), got {type(prompt).__name__}")
  prompts = [prompt] if isinstance(prompt, str) else list(prompt)
  if not prompts:
    raise ValueError("prompt is an empty list: give a str or a non-empty list of str")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
  ids = [_encode(m, p) for p in prompts]
  gen = _generator(m)
  gen.check_prompts(ids, max_new_tokens)
  built = _build(gen, method, resources, options, batch_size, gen.width(ids, max_new_tokens),
                 max_new_tokens)
  results, timings = gen.generate(ids, built, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size,
                                  sampling_config=_sampling(temperature, top_k, top_p),
                                  rng=jax.random.PRNGKey(seed))
  seconds = [t.seconds for t in timings for _ in range(t.rows)]
  texts = [Text(m.vocab.decode(r.tokens.tolist()), r.tokens.tolist(), r.calls, s, method)
           for r, s in zip(results, seconds)]
  return texts[0] if isinstance(prompt, str) else texts


def stream(m: api.LoadedModel, prompt: str, method: str = "bpd", max_new_tokens: int = 64,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
           resources: Any = None, **options) -> Iterator[Block]:
  """Yields the blocks of `prompt`'s continuation as each model call decides them (see the
  module docstring); the blocks' tokens, joined, are `generate`'s tokens for the same settings.
  """
  ids = _encode(m, prompt)
  gen = _generator(m)
  gen.check_prompts([ids], max_new_tokens)
  config = _sampling(temperature, top_k, top_p)
  config.validate(m.model.config.vocab_size)
  width = gen.width([ids], max_new_tokens)
  built = _build(gen, method, resources, options, 1, width, max_new_tokens)
  settings = loop.Settings(built.drafter, max_new_tokens, m.vocab.eos_id, config,
                           plain_stretches=False, policy=built.policy)  # One block per call.
  start, step, _ = gen.stepper(settings, width + max_new_tokens + loop.block_size(built.drafter))
  prompts, lengths = generator_lib.pad_batch([np.asarray(ids, np.int32)], 1, width)
  # The same key as Generator.generate gives its first batch, so sampling matches generate's.
  _, sub = jax.random.split(jax.random.PRNGKey(seed))
  state = start(m.params, jnp.asarray(prompts), jnp.asarray(lengths), sub, built.params)
  emitted, text, call = [], "", 1
  while True:
    tokens = np.asarray(state.tokens[0])
    decided = min(int(state.num_tokens[0]), max_new_tokens)
    new = tokens[len(emitted):decided].tolist()
    if m.vocab.eos_id in new:
      new = new[:new.index(m.vocab.eos_id) + 1]
    if new:
      emitted += new
      full = m.vocab.decode(emitted)
      yield Block(text=full[len(text):], tokens=new, call=call)
      text = full
    if (m.vocab.eos_id in new or len(emitted) >= max_new_tokens
        or not bool(loop.running(state, settings))):
      return
    state = step(m.params, state, built.params)
    call += 1
