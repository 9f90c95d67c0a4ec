"""What some drafting methods need beyond the model: the only decoding code that opens a workdir
or an ARPA file.

  rescorer  a small causal LM in the model's vocabulary (local neural rescoring), from its
            train.py workdir
  ngram_lm  an ARPA n-gram LM over the model's token ids (global n-gram rescoring), as exact
            on-device tables (ngram.dp) or an OpenFST rescorer (ngram.fst), built on first use

Both are checked against the model's vocabulary (the workdir's vocabulary file, by sha256).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional

from bpdjax import checkpoints
from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import params as params_lib
from bpdjax import workdir as workdir_lib
from bpdjax.decoding import model_fns
from bpdjax.ngram import arpa as arpa_lib
from bpdjax.ngram import tables as ngram_tables
from bpdjax.ngram import fst

RESCORER = "rescorer"
NGRAM_LM = "ngram_lm"
COST_MODEL = "cost_model"      # decoding/cost.CostModel; decode.py makes it, no flag needed.
# What the command line calls each resource given by a file (for error messages).
FLAGS = {RESCORER: "rescorer_workdir", NGRAM_LM: "ngram_arpa"}
LABELS = {RESCORER: "a rescoring LM", NGRAM_LM: "an n-gram LM",
          COST_MODEL: "a cost model (decoding/cost.CostModel)"}


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


@dataclasses.dataclass
class Resources:
  """The resources at hand; a method asks for the ones it needs with `need`."""
  rescorer: Optional[Rescorer] = None
  ngram_lm: Optional[NgramLM] = None
  cost_model: Optional[Any] = None

  def need(self, name: str, method: str):
    value = getattr(self, name)
    if value is None:
      where = f" (decode.py --{FLAGS[name]})" if name in FLAGS else ""
      raise ValueError(f"Method {method!r} needs {LABELS[name]}{where}")
    return value


def missing(method_resources, given: dict[str, bool]) -> list[str]:
  """The command-line names of the file resources a method needs that are not given."""
  return [FLAGS[r] for r in method_resources if r in FLAGS and not given.get(r)]


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
