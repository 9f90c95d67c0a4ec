"""One decode configuration (configs/decode.py) as checked settings: `DecodeSettings`.

Validation happens here once, before anything is loaded or compiled: names of tasks and
methods, each method's options (registry), the resources they need, sampling, sizes, the output
path; and, with the model's shape from the workdir's config.json (no weights needed), the checks
that depend on it (k against the vocabulary, p against the lattice, tree sizes, prompt room).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import ml_collections

from bpdjax import fileio
from bpdjax import model as model_lib
from bpdjax.data import eval_sets
from bpdjax.decoding import methods
from bpdjax.decoding import resources
from bpdjax.decoding import sampling
from bpdjax.eval import quality


def parse_list(value: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in str(value).split(",") if x.strip())


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """An evaluation run: `options` maps each method to its options dataclass."""
  workdir: str
  output: str
  tasks: tuple[str, ...]
  methods: tuple[str, ...]
  options: dict[str, Any]
  num_examples: int
  max_new_tokens: int
  batch_size: int = 1
  sampling: sampling.SamplingConfig = sampling.SamplingConfig()
  seed: int = 0
  record_topk: int = 16
  data_dir: str = ""
  jsonl: str = ""
  mesh: tuple[int, ...] = ()
  rescorer_workdir: str = ""
  ngram_arpa: str = ""
  cost_cache: str = ""
  example_seed: int = 0
  max_prompt_tokens: int = 0
  quality: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "DecodeSettings":
    """Reads configs/decode.py's ConfigDict; unknown methods or knobs are ValueErrors."""
    names = parse_list(config.methods)
    for name in names:
      methods.get(name)
    options = {name: methods.make_options(name, **dict(config.options.get(name, {})))
               for name in names}
    mesh = tuple(int(x) for x in parse_list(config.mesh)) if config.mesh else ()
    return cls(
        workdir=config.workdir, output=config.output, tasks=parse_list(config.tasks),
        methods=names, options=options, num_examples=config.num_examples,
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
        sampling=sampling.SamplingConfig(temperature=float(config.temperature),
                                         top_k=int(config.top_k), top_p=float(config.top_p),
                                         acceptance=str(config.get("acceptance", "tokenwise"))),
        seed=config.seed, record_topk=config.record_topk, data_dir=config.data_dir,
        jsonl=config.jsonl, mesh=mesh, rescorer_workdir=config.rescorer_workdir,
        ngram_arpa=config.ngram_arpa, cost_cache=config.get("cost_cache", ""),
        example_seed=int(config.get("example_seed", 0)),
        max_prompt_tokens=int(config.get("max_prompt_tokens", 0)),
        quality=bool(config.get("quality", False)))

  def validate(self, model: Optional[model_lib.TransformerConfig] = None) -> None:
    """Raises ValueError for bad settings; `model` adds the checks that need its shape."""
    if not self.workdir:
      raise ValueError("No workdir given (--workdir or --config.workdir)")
    if not self.output:
      raise ValueError("No output directory given (--output or --config.output)")
    if fileio.exists(self.output) and not fileio.isdir(self.output):
      raise ValueError(f"Output path {self.output!r} exists and is not a directory")
    if not self.tasks:
      raise ValueError("No evaluation task given")
    for task in self.tasks:
      if task not in eval_sets.EVAL_TASKS:
        raise ValueError(f"Unknown task {task!r}; known: {sorted(eval_sets.EVAL_TASKS)}")
    if "jsonl" in self.tasks and not self.jsonl:
      raise ValueError("Task 'jsonl' needs --jsonl=PATH (a file with a 'prompt' per line)")
    if self.quality:
      quality.check_tasks(self.tasks)
    if self.max_prompt_tokens < 0:
      raise ValueError(f"max_prompt_tokens must be >= 0 (0: max_len - max_new_tokens), got "
                       f"{self.max_prompt_tokens}")
    if not self.methods:
      raise ValueError("No decoding method given")
    given = {resources.RESCORER: bool(self.rescorer_workdir),
             resources.NGRAM_LM: bool(self.ngram_arpa)}
    for name in self.methods:
      method = methods.get(name)
      lacking = resources.missing(method.resources, given)
      if lacking:
        raise ValueError(f"Method {name!r} needs --{lacking[0]}")
      self.options[name].validate(model)
      if not (self.sampling.greedy or method.exact_sampling):
        raise ValueError(f"Method {name!r} decodes greedily only (temperature 0); methods that "
                         f"sample: {[m for m in methods.names() if methods.get(m).exact_sampling]}")
    for key in ("max_new_tokens", "num_examples", "batch_size"):
      if getattr(self, key) < 1:
        raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
    if self.record_topk < 0:
      raise ValueError(f"record_topk must be >= 0, got {self.record_topk}")
    self.sampling.validate(model.vocab_size if model is not None else 1 << 62)
    if model is not None:
      if self.record_topk > model.vocab_size:
        raise ValueError(f"record_topk={self.record_topk} exceeds the vocabulary size "
                         f"{model.vocab_size}")
      if self.max_new_tokens >= model.max_len:
        raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in "
                         f"the model's max_len={model.max_len}")
      if self.max_prompt_tokens + self.max_new_tokens > model.max_len:
        raise ValueError(f"max_prompt_tokens={self.max_prompt_tokens} + max_new_tokens="
                         f"{self.max_new_tokens} exceed the model's max_len={model.max_len}")

  def as_dict(self) -> dict:
    """For the report: every setting, method options as dicts."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["options"] = {m: dataclasses.asdict(o) for m, o in self.options.items()}
    d["sampling"] = dataclasses.asdict(self.sampling)
    d["temperature"] = self.sampling.temperature
    return d
