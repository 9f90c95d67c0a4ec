"""The registry of decoding methods: name -> options, resources, drafter builder, step policy,
one-line summary.

A method family (a module under decoding/drafters/ or decoding/policies/) registers each of its
names with `register(Method(...))`. Everything above the loop (decode.py's configuration and
--help, evaluation, benchmarks) looks methods up here, so no method name appears anywhere else.

A method is a drafter (what to propose) and a step policy (how much of it to verify): most
methods pair their own drafter with the fixed policy (verify the whole tree); a policy method
(auto) may drive another method's drafter (`drafter_method`) and may need a measured cost
table (`needs_costs`), which the driver measures between `build_drafter` and `build_policy`.

Options are a frozen dataclass per method (drafters/base.py: knob groups): its fields are the
knobs, their defaults the only defaults, and `validate(model)` the only checks (model: the
TransformerConfig, or None for the checks that need no model; both kinds run before anything is
loaded or compiled, since a workdir's config.json gives the model's shape without its weights).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from bpdjax import model as model_lib
from bpdjax.decoding import cost as cost_lib
from bpdjax.decoding import resources as resources_lib
from bpdjax.decoding.policies import fixed


@dataclasses.dataclass(frozen=True)
class Built:
  """A method ready for the loop: `drafter` (protocol.Drafter), its `params` (or None) and the
  `policy` (protocol.StepPolicy) that decides how much of each draft to verify."""
  name: str
  options: Any
  drafter: Any
  params: Any = None
  policy: Any = fixed.FIXED


def _fixed_policy(options, drafter, costs):
  del options, drafter, costs
  return fixed.FIXED


@dataclasses.dataclass(frozen=True)
class Method:
  """name: what users type; summary: one line for --help; options: the options dataclass;
  build(options, model_config, resources) -> (drafter, drafter_params); resources: names of
  the resource kinds it needs (decoding/resources.py); policy(options, drafter, costs) -> the
  step policy (default: verify the whole tree); needs_costs(options): whether `policy` needs a
  measured cost table (costs None otherwise); drafter_method(options): the name of the method
  whose drafter it drives instead of its own build ("" for its own); exact_sampling: whether
  it decodes at temperature > 0 exactly in distribution (every method whose drafts are
  deterministic given the context is: verify.py's rules are lossless for any such chain or
  tree; False: greedy only); role: "reference" for the method whose output every other must
  equal (plain decoding), "vanilla" for the draft that refinements are measured against (the
  heads' argmax chain), "" otherwise."""
  name: str
  summary: str
  options: type
  build: Callable[[Any, model_lib.TransformerConfig, Any], tuple[Any, Any]]
  resources: tuple[str, ...] = ()
  policy: Callable[[Any, Any, Optional[cost_lib.CostTable]], Any] = _fixed_policy
  needs_costs: Callable[[Any], bool] = lambda options: False
  drafter_method: Callable[[Any], str] = lambda options: ""
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


def resources_of(name: str, options: Any) -> tuple[str, ...]:
  """The resource kinds `name` needs with these options (its driven drafter's included)."""
  inner = get(name).drafter_method(options)
  return get(name).resources + (get(inner).resources if inner else ())


def validate(name: str, options: Any, model_config: Optional[model_lib.TransformerConfig],
             method_options: Optional[Mapping[str, Any]] = None) -> None:
  """The method's checks, and those of the drafter method it drives (with its options from
  `method_options`, else its defaults)."""
  options.validate(model_config)
  inner = get(name).drafter_method(options)
  if inner:
    get(inner)   # A clear error for an unknown name.
    inner_options = (method_options or {}).get(inner) or make_options(inner)
    inner_options.validate(model_config)


def build_drafter(name: str, model_config: model_lib.TransformerConfig, resources: Any,
                  options: Any, method_options: Optional[Mapping[str, Any]] = None
                  ) -> tuple[Any, Any]:
  """(drafter, drafter params) of the method, after validating its options and checking the
  resources it needs against the model."""
  validate(name, options, model_config, method_options)
  for kind in resources_of(name, options):
    given = (resources or resources_lib.Resources()).need(kind, name)
    resources_lib.kind(kind).check(given, model_config)
  inner = get(name).drafter_method(options)
  if inner:
    inner_options = (method_options or {}).get(inner) or make_options(inner)
    return get(inner).build(inner_options, model_config, resources)
  return get(name).build(options, model_config, resources)


def build_policy(name: str, options: Any, drafter: Any,
                 costs: Optional[cost_lib.CostTable] = None) -> Any:
  """The method's step policy over `drafter` (costs: the measured table when it needs one)."""
  method = get(name)
  if method.needs_costs(options) and costs is None:
    raise ValueError(f"Method {name!r} needs a measured cost table: build it with the driver "
                     "(decoding.generator.Generator.build) or give relative costs in its "
                     "`costs` option")
  return method.policy(options, drafter, costs)


def build(name: str, model_config: model_lib.TransformerConfig, resources: Any = None,
          options: Optional[Any] = None, cost_table: Optional[cost_lib.CostTable] = None,
          method_options: Optional[Mapping[str, Any]] = None, **values) -> Built:
  """Validates the options against the model and builds the drafter and its policy
  (resources: a resources.Resources holding what the method needs; cost_table: the measured
  table of a policy that needs one, else see decoding.generator.Generator.build)."""
  options = make_options(name, **values) if options is None else options
  drafter, params = build_drafter(name, model_config, resources, options, method_options)
  return Built(name=name, options=options, drafter=drafter, params=params,
               policy=build_policy(name, options, drafter, cost_table))
