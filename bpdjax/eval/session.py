"""Stage 2 of an evaluation run: the session. What the plan needs, built once: the model
(its parameters), the resources the settings name, the driver (decoding.generator.Generator,
sharded over the settings' mesh) and every method (drafter and step policy; cost tables of the
cost-aware ones measured here, at the run's batch size and widest prompt).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from bpdjax import api
from bpdjax import partitioning
from bpdjax import workdir as workdir_lib
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import resources as resources_lib
from bpdjax.eval import plan as plan_lib


@dataclasses.dataclass
class Session:
  """plan; loaded: the model; generator: the driver; resources; built: {method: Built};
  cost_tables: every cost table a method was built with (for the report)."""
  plan: plan_lib.Plan
  loaded: api.LoadedModel
  generator: generator_lib.Generator
  resources: resources_lib.Resources
  built: dict
  cost_tables: list


def cost_cache_path(settings) -> str:
  """Where measured cost tables are kept across runs ("" = memory only)."""
  if settings.cost_cache == "workdir":
    return workdir_lib.path(settings.workdir, workdir_lib.COST_TABLES_FILE)
  return settings.cost_cache


def open_session(plan: plan_lib.Plan, log: Callable[[str], None] = print,
                 loaded: Optional[api.LoadedModel] = None) -> Session:
  """Loads the model and the resources and builds every method once."""
  s = plan.settings
  mesh = None
  if s.mesh:
    mesh = partitioning.make_mesh(dict(zip(partitioning.MESH_AXES, s.mesh)))
  loaded = loaded or api.load(s.workdir)
  config = loaded.model.config
  resources = resources_lib.load(s.resource_paths, s.workdir, config.vocab_size)
  generator = generator_lib.Generator(
      loaded.model, loaded.params, eos_id=loaded.vocab.eos_id, mesh=mesh,
      rules=loaded.config.logical_axis_rules if mesh is not None else None)
  width = max(plan.widths.values())
  built = {m: generator.build(m, resources, s.options[m], s.options, batch_size=s.batch_size,
                              prompt_width=width, max_new_tokens=s.max_new_tokens,
                              cost_cache=cost_cache_path(s), log=log)
           for m in s.methods}
  return Session(plan, loaded, generator, resources, built, list(generator.cost_tables))
