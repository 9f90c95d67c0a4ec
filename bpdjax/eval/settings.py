"""One decode configuration (bpdjax/configs/decode.py) as checked settings: `DecodeSettings`.

The settings are those of the schema (eval/schema.py), read as attributes (`s.workdir`,
`s.max_new_tokens`, ...), with the comma lists and the sampling rule parsed (`s.tasks`,
`s.methods`, `s.mesh`, `s.sampling`) and each method's options (`s.options[name]`). Validation
(`validate`, run once by eval/plan.py before anything is loaded or compiled): every setting's
own check, then what involves several (a task's file, the resources a method needs, sampling),
and, with the model's shape from the workdir's config.json (no weights needed), the checks that
depend on it (k against the vocabulary, p against the lattice, tree sizes, prompt room).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import ml_collections

from bpdjax import fileio
from bpdjax import model as model_lib
from bpdjax.decoding import methods
from bpdjax.decoding import registry
from bpdjax.decoding import resources
from bpdjax.decoding import sampling
from bpdjax.eval import quality
from bpdjax.eval import schema

parse_list = schema.parse_list


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """values: every schema setting by name; options: each listed method's options dataclass."""
  values: dict
  options: dict

  def __getattr__(self, name: str) -> Any:
    values = self.__dict__.get("values", {})
    if name in values:
      return values[name]
    raise AttributeError(f"DecodeSettings has no setting {name!r}")

  @property
  def tasks(self) -> tuple[str, ...]:
    return parse_list(self.values["tasks"])

  @property
  def methods(self) -> tuple[str, ...]:
    return parse_list(self.values["methods"])

  @property
  def mesh(self) -> tuple[int, ...]:
    return tuple(int(x) for x in parse_list(self.values["mesh"]))

  @property
  def sampling(self) -> sampling.SamplingConfig:
    v = self.values
    return sampling.SamplingConfig(temperature=float(v["temperature"]), top_k=int(v["top_k"]),
                                   top_p=float(v["top_p"]), acceptance=str(v["acceptance"]))

  @property
  def resource_paths(self) -> dict[str, str]:
    """{resource setting: path} of the resources the settings name."""
    return {k.setting: self.values[k.setting] for k in resources.kinds()
            if self.values[k.setting]}

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "DecodeSettings":
    """Reads the configuration; unknown methods or knobs are ValueErrors."""
    values = {s.name: s.type(config[s.name]) if s.type is not bool else bool(config[s.name])
              for s in schema.SETTINGS}
    schema.check(values, ("methods",))   # Options exist only for known methods.
    names = parse_list(values["methods"])
    options = {name: methods.make_options(name, **dict(config.options.get(name, {})))
               for name in names}
    return cls(values=values, options=options)

  def validate(self, model: Optional[model_lib.TransformerConfig] = None) -> None:
    """Raises ValueError for bad settings; `model` adds the checks that need its shape."""
    schema.check(self.values)
    if fileio.exists(self.output) and not fileio.isdir(self.output):
      raise ValueError(f"Output path {self.output!r} exists and is not a directory")
    if "jsonl" in self.tasks and not self.jsonl:
      raise ValueError("Task 'jsonl' needs --jsonl=PATH (a file with a 'prompt' per line)")
    if self.quality:
      quality.check_tasks(self.tasks)
    given = self.resource_paths
    for name in self.methods:
      for kind in registry.resources_of(name, self.options[name]):
        setting = resources.kind(kind).setting
        if setting not in given:
          raise ValueError(f"Method {name!r} needs --{setting}")
      registry.validate(name, self.options[name], model, self.options)
      if not (self.sampling.greedy or methods.get(name).exact_sampling):
        raise ValueError(f"Method {name!r} decodes greedily only (temperature 0); methods that "
                         f"sample: {[m for m in methods.names() if methods.get(m).exact_sampling]}")
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
    """For the report: every setting, parsed, and the method options as dicts."""
    d = dict(self.values, tasks=self.tasks, methods=self.methods, mesh=self.mesh)
    d["options"] = {m: dataclasses.asdict(o) for m, o in self.options.items()}
    d["sampling"] = dataclasses.asdict(self.sampling)
    return d
