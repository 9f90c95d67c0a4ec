"""What some methods need beyond the model, by name: a registry of resource kinds, and the
only decoding code that opens a workdir or an ARPA file.

  rescorer  a small causal LM in the model's vocabulary (local neural rescoring), from its
            train.py workdir (setting `rescorer_workdir`)
  ngram_lm  an ARPA n-gram LM over the model's token ids (global n-gram rescoring), as exact
            on-device tables (ngram.dp) or an OpenFST rescorer (ngram.fst), built on first use
            (setting `ngram_arpa`)

A kind is registered once (`register(Kind(...))`): its name, the decode setting that gives it,
a label for messages, its loader and its compatibility check with the model. A method lists
the kinds it needs (registry.Method.resources); decode.py loads each kind a setting names, once.
Adding a resource kind = one registration more.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Optional

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib
from bpdjax.decoding import model_fns
from bpdjax.ngram import arpa as arpa_lib
from bpdjax.ngram import tables as ngram_tables
from bpdjax.ngram import fst

@dataclasses.dataclass(frozen=True, eq=False)
class Rescorer:
  """model, params: the rescoring LM (h = 1 suffices); workdir: where it was read from."""
  model: model_lib.Transformer
  params: Any
  workdir: str = ""

  @property
  def fns(self) -> model_fns.TransformerFns:
    return model_fns.TransformerFns(self.model)


class NgramLM:
  """A parsed ARPA (`model`: ngram.arpa.ArpaModel) and its backends, built once each."""

  def __init__(self, model: arpa_lib.ArpaModel, path: str = ""):
    self.model = model
    self.path = path
    self._tables = None
    self._wfst: dict[float, fst.WfstRescorer] = {}
    self._lock = threading.Lock()

  @property
  def order(self) -> int:
    return self.model.order

  @property
  def vocab_size(self) -> int:
    return self.model.vocab_size

  def tables(self) -> ngram_tables.NgramTables:
    """Device tables of the exact dynamic program."""
    with self._lock:
      if self._tables is None:
        self._tables = ngram_tables.build_tables(self.model)
      return self._tables

  def wfst(self, alpha: float) -> fst.WfstRescorer:
    """The OpenFST rescorer (its weights bake in alpha), one per alpha."""
    with self._lock:
      if alpha not in self._wfst:
        self._wfst[alpha] = fst.WfstRescorer(self.model, alpha)
      return self._wfst[alpha]


def load_rescorer(rescorer_workdir: str, model_workdir: Optional[str] = None) -> Rescorer:
  """The rescoring LM of a workdir; its vocabulary must be the model's (same file bytes)."""
  if model_workdir is not None and (workdir_lib.vocab_digest(rescorer_workdir)
                                    != workdir_lib.vocab_digest(model_workdir)):
    raise ValueError(f"Rescorer {rescorer_workdir!r} uses another vocabulary: "
                     f"{workdir_lib.vocab_path(rescorer_workdir)} differs from "
                     f"{workdir_lib.vocab_path(model_workdir)}")
  config = workdir_lib.load_config(rescorer_workdir)
  model = model_lib.Transformer(configuration.validate_model(config.model))
  params, _ = checkpoints.restore_params(rescorer_workdir, params_lib.abstract_params(model))
  return Rescorer(model=model, params=params, workdir=rescorer_workdir)


def load_ngram_lm(arpa_path: str, vocab_size: int, model_workdir: Optional[str] = None) -> NgramLM:
  """An ARPA over token ids < vocab_size; when model_workdir is given, the vocabulary recorded
  beside the ARPA by ngram.estimate (if any) must be that workdir's."""
  if model_workdir is not None:
    workdir_lib.check_arpa_vocab_record(arpa_path, workdir_lib.vocab_digest(model_workdir))
  return NgramLM(arpa_lib.parse_arpa(arpa_path, vocab_size), path=arpa_path)


@dataclasses.dataclass(frozen=True)
class Kind:
  """A kind of resource: name (what methods list), setting (the decode setting whose value,
  a path, names it), label (for messages), load(value, model_workdir, vocab_size) -> resource,
  check(resource, model_config) -> None or ValueError (compatibility with the model)."""
  name: str
  setting: str
  label: str
  load: Callable[[str, Optional[str], int], Any]
  check: Callable[[Any, model_lib.TransformerConfig], None]


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
  if kind.name in _KINDS:
    raise ValueError(f"Resource kind {kind.name!r} is registered twice")
  _KINDS[kind.name] = kind
  return kind


def kinds() -> list[Kind]:
  return list(_KINDS.values())


def kind(name: str) -> Kind:
  if name not in _KINDS:
    raise ValueError(f"Unknown resource kind {name!r}; known: {sorted(_KINDS)}")
  return _KINDS[name]


class Resources:
  """The resources at hand, by kind name; a method asks for the ones it needs with `need`.

    Resources(rescorer=load_rescorer(path), ngram_lm=load_ngram_lm(arpa, vocab_size))
  """

  def __init__(self, **given):
    for name in given:
      kind(name)
    self._given = {n: v for n, v in given.items() if v is not None}

  def get(self, name: str) -> Any:
    return self._given.get(name)

  def __getattr__(self, name: str) -> Any:
    """`resources.rescorer`, `resources.ngram_lm`, ...: the resource of that kind, or None."""
    if name in _KINDS:
      return self.__dict__.get("_given", {}).get(name)
    raise AttributeError(f"No resource kind {name!r}; known: {sorted(_KINDS)}")

  def need(self, name: str, method: str) -> Any:
    value = self._given.get(name)
    if value is None:
      k = kind(name)
      raise ValueError(f"Method {method!r} needs {k.label} (decode.py --{k.setting})")
    return value

  def check(self, model_config: model_lib.TransformerConfig) -> None:
    """Every resource's compatibility check with the model."""
    for name, value in self._given.items():
      kind(name).check(value, model_config)


def load(values: dict[str, str], model_workdir: Optional[str], vocab_size: int) -> Resources:
  """The resources whose setting has a value in `values` ({setting: path}), loaded once each
  and checked against the model's vocabulary."""
  return Resources(**{k.name: k.load(values[k.setting], model_workdir, vocab_size)
                      for k in kinds() if values.get(k.setting)})


def _check_rescorer(rescorer: Rescorer, model: model_lib.TransformerConfig) -> None:
  if rescorer.model.config.vocab_size != model.vocab_size:
    raise ValueError(f"Rescorer vocabulary size {rescorer.model.config.vocab_size} differs from "
                     f"the model's {model.vocab_size}")


def _check_ngram_lm(lm: NgramLM, model: model_lib.TransformerConfig) -> None:
  if lm.vocab_size != model.vocab_size:
    raise ValueError(f"The n-gram LM was read for vocab_size={lm.vocab_size}; the model has "
                     f"{model.vocab_size}")


RESCORER = register(Kind("rescorer", "rescorer_workdir", "a rescoring LM",
                         lambda path, workdir, vocab: load_rescorer(path, workdir),
                         _check_rescorer)).name
NGRAM_LM = register(Kind("ngram_lm", "ngram_arpa", "an n-gram LM",
                         lambda path, workdir, vocab: load_ngram_lm(path, vocab, workdir),
                         _check_ngram_lm)).name
