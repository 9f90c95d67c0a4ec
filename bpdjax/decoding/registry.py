"""The registry of decoding methods: name -> options, resources, builder, one-line summary.

A method family (a module under decoding/drafters/) registers each of its names with
`register(Method(...))`. Everything above the loop (decode.py's configuration and --help,
evaluation, benchmarks) looks methods up here, so no method name appears anywhere else.

Options are a frozen dataclass per method: its fields are the knobs, their defaults the only
defaults, and `validate(model)` the only checks (model: the TransformerConfig, or None for the
checks that need no model; both kinds run before anything is loaded or compiled, since a
workdir's config.json gives the model's shape without its weights).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from bpdjax import model as model_lib


@dataclasses.dataclass(frozen=True)
class Built:
  """A drafter ready for the loop: `drafter` (protocol.Drafter) and its `params` (or None)."""
  name: str
  options: Any
  drafter: Any
  params: Any = None


@dataclasses.dataclass(frozen=True)
class Method:
  """name: what users type; summary: one line for --help; options: the options dataclass;
  resources: names of the resources.Resources fields it needs; build(options, model_config,
  resources) -> (drafter, drafter_params); exact_sampling: whether it decodes at temperature > 0
  exactly in distribution (every method whose drafts are deterministic given the context is:
  verify.py's rules are lossless for any such chain or tree; False: greedy only); role: "reference" for the method whose output
  every other must equal (plain decoding), "vanilla" for the draft that refinements are
  measured against (the heads' argmax chain), "" otherwise."""
  name: str
  summary: str
  options: type
  build: Callable[[Any, model_lib.TransformerConfig, Any], tuple[Any, Any]]
  resources: tuple[str, ...] = ()
  exact_sampling: bool = True
  role: str = ""


REFERENCE = "reference"
VANILLA = "vanilla"
_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in _METHODS:
    raise ValueError(f"Decoding method {method.name!r} is registered twice")
  if not dataclasses.is_dataclass(method.options):
    raise TypeError(f"Options of method {method.name!r} must be a dataclass")
  _METHODS[method.name] = method
  return method


def with_role(role: str) -> str:
  """The name of the method registered with `role` (REFERENCE or VANILLA)."""
  found = [m.name for m in _METHODS.values() if m.role == role]
  if len(found) != 1:
    raise ValueError(f"Expected one method with role {role!r}, found {found}")
  return found[0]


def names() -> list[str]:
  return list(_METHODS)


def get(name: str) -> Method:
  if name not in _METHODS:
    raise ValueError(f"Unknown decoding method {name!r}; known: {sorted(_METHODS)}")
  return _METHODS[name]


def knobs(name: str) -> dict[str, Any]:
  """The method's knobs and their defaults."""
  return {f.name: f.default for f in dataclasses.fields(get(name).options)}


def make_options(name: str, **values) -> Any:
  """The options of `name` with `values` over the defaults (unknown knobs are an error)."""
  method = get(name)
  unknown = sorted(set(values) - set(knobs(name)))
  if unknown:
    raise ValueError(f"Method {name!r} has no option(s) {unknown}; its options: "
                     f"{sorted(knobs(name))}")
  return method.options(**values)


def build(name: str, model_config: model_lib.TransformerConfig, resources: Any = None,
          options: Optional[Any] = None, **values) -> Built:
  """Validates the options against the model and builds the drafter (resources: a
  resources.Resources holding what the method needs)."""
  method = get(name)
  options = make_options(name, **values) if options is None else options
  options.validate(model_config)
  drafter, params = method.build(options, model_config, resources)
  return Built(name=name, options=options, drafter=drafter, params=params)
