"""decode.py end to end on a trained tiny workdir: every method (with tiny resources where it
needs them), one compiled program per (task, method, purpose), the configuration and its flag
aliases, the --mesh flag on 8 simulated devices, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bpdjax import api
from bpdjax.decoding import generator as generator_lib
from bpdjax.decoding import methods
from bpdjax.decoding import resources
from bpdjax.eval import flags as alias_flags
from bpdjax.ngram import estimate
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_FIELDS = ("block_efficiency", "accepted_tokens_per_call", "calls", "tokens", "wall_seconds",
                 "tokens_per_second", "speedup_vs_ar", "identical_to_ar", "repetition_rate",
                 "head_entropy", "h_max", "oracle_topk", "accepted_length_histogram",
                 "head_acceptance", "output_sha256")
SMALL_KNOBS = ["--k=4", "--p=4", "--tree_size=12"]


def _usable(workdir) -> list:
  """The methods the workdir's model can decode with (the tiny model has plain ffn heads: the
  methods of heads that read their drafts refuse it, and only those, before compiling)."""
  from bpdjax import configuration  # pylint: disable=g-import-not-at-top
  from bpdjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  cfg = configuration.validate_model(workdir_lib.load_config(workdir).model)
  usable, refused = [], []
  for name in methods.names():
    try:
      methods.registry.validate(name, methods.make_options(name), cfg)
      usable.append(name)
    except ValueError:
      refused.append(name)
  assert refused == [m for m in methods.names() if m.startswith(("sequential", "markov"))]
  return usable


def _run_decode(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, "decode.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def tiny_resources(trained_tiny_workdir, lmplz, tmp_path_factory):
  """(rescorer workdir: an h = 1 LM in the tiny vocabulary, 2-gram ARPA of the tiny corpus)."""
  from bpdjax.train import loop  # pylint: disable=g-import-not-at-top
  from bpdjax.configs import tiny  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("tiny_resources")
  config = tiny.get_config()
  config.num_train_steps = 10
  config.model.num_heads_bpd = 1
  config.data.vocab_path = os.path.join(trained_tiny_workdir, "vocab.model")
  loop.train_and_evaluate(config, str(d / "rescorer"))
  arpa = str(d / "ngram2.arpa")
  estimate.estimate_workdir(trained_tiny_workdir, 2, arpa, max_documents=50, lmplz=lmplz,
                            memory=helpers.LMPLZ_MEMORY,
                            log=lambda _: None)
  return str(d / "rescorer"), arpa


@pytest.mark.slow
def test_every_method_through_decode_py(trained_tiny_workdir, tiny_resources, tmp_path):
  """Every method the model supports in one decode.py run: full report, output identical to
  ar, at most two programs per (task, method) (the tasks' prompts pad to one width)."""
  rescorer, arpa = tiny_resources
  out = tmp_path / "report"
  usable = _usable(trained_tiny_workdir)
  proc = _run_decode(f"--workdir={trained_tiny_workdir}", "--tasks=lambada,squad",
                     f"--methods={','.join(usable)}", "--num_examples=3",
                     "--max_new_tokens=12", "--batch_size=2", f"--output={out}",
                     f"--rescorer_workdir={rescorer}", f"--ngram_arpa={arpa}", *SMALL_KNOBS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  assert report["complete"] is True
  for task in ("lambada", "squad"):
    assert list(report["tasks"][task]) == usable
    for method, entry in report["tasks"][task].items():
      for field in REPORT_FIELDS:
        assert field in entry, (task, method, field)
      assert entry["identical_to_ar"] is True, (task, method)
      assert len(entry["head_entropy"]) == 4
    assert report["tasks"][task]["ar"]["block_efficiency"] == 1.0
    bpd = report["tasks"][task]["bpd"]
    # Oracle with k = 1 replays BPD's own acceptance: equal to its measured block efficiency.
    assert bpd["oracle_topk"]["1"] == pytest.approx(bpd["block_efficiency"])
  assert report["compilations"] <= 2 * 2 * len(usable)
  assert f"{report['compilations']} decode programs compiled" in proc.stdout
  assert (out / "report.md").exists() and (out / "lambada.png").exists()
  # auto measured its cost table once and reports its choices and predicted/realized tokens.
  (table,) = report["cost_tables"]
  assert table["source"] == "measured" and table["sizes"][0] == 1 and table["relative"][0] == 1
  st = report["tasks"]["lambada"]["auto"]["drafter_stats"]
  assert len(st["chosen"]) == len(table["sizes"]) and sum(st["chosen"]) > 0
  assert st["realized_tokens_per_call"] >= 1
  md = (out / "report.md").read_text()
  assert "Cost-aware choice" in md and "| lambada | auto |" in md and "Cost table (measured" in md


@pytest.mark.slow
def test_mesh_flag_shards_decoding_with_the_same_outputs(trained_tiny_workdir, tmp_path):
  """decode.py --mesh=2,2,2 on 8 simulated devices: parameters sharded over (data 2, fsdp 2,
  tensor 2), batch over data; the same outputs as on one device. The CLI's wiring of the mesh,
  with a plain and a drafting method; every method under a mesh, resources included, is
  tests/test_sharded_decoding.py (one process, no report, so each costs one compile)."""
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(8),
             JAX_PLATFORMS="cpu")
  digests = {}
  for name, extra, run_env in (("one", [], None), ("mesh", ["--mesh=2,2,2"], env)):
    out = tmp_path / name
    proc = _run_decode(f"--workdir={trained_tiny_workdir}", "--tasks=lambada",
                       "--methods=ar,medusa", "--num_examples=4", "--max_new_tokens=10",
                       "--batch_size=4", "--record_topk=0", f"--output={out}", *SMALL_KNOBS,
                       *extra, env=run_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    digests[name] = {m: e["output_sha256"] for m, e in report["tasks"]["lambada"].items()}
    assert report["settings"]["device"].startswith("8 x" if extra else "1 x")
  assert digests["one"] == digests["mesh"]
  assert len(set(digests["one"].values())) == 1       # medusa's output equals ar's.


def test_help_lists_every_method_and_task():
  proc = _run_decode("--help")   # absl prints the usage and exits with 1.
  assert "Methods:" in proc.stdout and "Tasks:" in proc.stdout, proc.stderr[-2000:]
  from bpdjax.data import eval_sets  # pylint: disable=g-import-not-at-top
  for name in methods.names():
    assert f"  {name}: {methods.get(name).summary}" in proc.stdout
  for task in eval_sets.EVAL_TASKS:
    assert f"  {task}: {eval_sets.SUMMARIES[task]}" in proc.stdout


def test_flag_aliases_set_the_config(monkeypatch):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from bpdjax.configs import decode as decode_config  # pylint: disable=g-import-not-at-top
  flags.FLAGS(["decode.py", "--alpha=0.25", "--k=4", "--methods=ar,local", "--ngram_backend=wfst"])
  try:
    config = decode_config.get_config()
    alias_flags.apply_aliases(config)
  finally:
    flags.FLAGS.unparse_flags()
  assert config.methods == "ar,local"
  assert config.options.local.alpha == config.options.pbest_ngram.alpha == 0.25
  assert config.options.medusa.k == config.options.local.k == 4
  assert config.options.ngram.backend == "wfst" and "alpha" not in config.options.medusa


@pytest.mark.parametrize("flags,message", [
    (["--tasks=nope"], "Unknown task 'nope'"),
    (["--methods=ar,magic"], "Unknown decoding method 'magic'"),
    (["--max_new_tokens=0"], "max_new_tokens must be >= 1"),
    (["--methods=local"], "needs --rescorer_workdir"),
    (["--config.options.pbest_0gram.q=3"], "Unknown config key 'options.pbest_0gram.q'"),
])
def test_bad_settings_fail_before_loading(flags, message, tmp_path):
  proc = _run_decode(f"--workdir={tmp_path}/missing", f"--output={tmp_path}/out", *flags)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert not (tmp_path / "out" / "report.json").exists()


def test_workdir_without_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    api.load(str(tmp_path))
  proc = _run_decode(f"--workdir={tmp_path}", f"--output={tmp_path}/out")
  assert proc.returncode != 0 and str(tmp_path) in proc.stderr


def test_generator_rejects_bad_prompts(trained_tiny_workdir):
  loaded = api.load(trained_tiny_workdir)
  gen = generator_lib.Generator(loaded.model, loaded.params, eos_id=loaded.vocab.eos_id)
  bpd = methods.build("bpd", loaded.model.config).drafter
  max_len = loaded.model.config.max_len
  with pytest.raises(ValueError, match="Prompt 1 is empty"):
    gen.generate([np.array([5, 6]), np.array([], np.int32)], bpd, max_new_tokens=4)
  with pytest.raises(ValueError, match=f"exceeds the model's max_len={max_len}"):
    gen.generate([np.arange(max_len) % 50 + 3], bpd, max_new_tokens=4)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    gen.generate([np.array([5, 6])], max_new_tokens=0)
  with pytest.raises(ValueError, match="outside"):
    gen.generate([np.array([5, 10**6])], max_new_tokens=3)


def test_settings_validation(trained_tiny_workdir):
  base = dict(workdir="w", output="o", num_examples=1, max_new_tokens=4)
  cases = [
      (dict(tasks="jsonl", methods="ar"), "needs --jsonl"),
      (dict(tasks="lambada", methods="pbest_ngram"), "needs --ngram_arpa"),
      (dict(tasks="lambada", methods="local"), "needs --rescorer_workdir"),
      (dict(tasks="lambada", methods="ar", num_examples=0), "num_examples"),
      (dict(tasks="lambada", methods="ar", temperature=-1.0), "temperature must be >= 0"),
      (dict(tasks="lambada", methods="medusa", acceptance="typical_lossy"),
       "typical_lossy.*temperature > 0"),
      (dict(tasks="lambada", methods="ar", temperature=1.0, top_p=0.0), "top_p"),
  ]
  for values, match in cases:
    with pytest.raises(ValueError, match=match):
      helpers.decode_settings(**dict(base, **values)).validate()
  with pytest.raises(ValueError, match="alpha"):
    helpers.decode_settings(**base, tasks="lambada", methods="local", rescorer_workdir="r",
                            options={"local": {"alpha": 1.5}}).validate()
  with pytest.raises(ValueError, match="has no option"):
    helpers.decode_settings(**base, tasks="lambada", methods="bpd",
                            options={"bpd": {"alpha": 0.5}})
  # Checks that need the model's shape (from config.json, no weights): p against the lattice.
  model = api.load(trained_tiny_workdir).model.config
  settings = helpers.decode_settings(**base, tasks="lambada", methods="pbest_0gram",
                                     options={"pbest_0gram": {"k": 2, "p": 9}})
  settings.validate()
  with pytest.raises(ValueError, match="p=9 exceeds the k\\^\\(h-1\\) = 2\\^3"):
    settings.validate(model)
  with pytest.raises(ValueError, match="needs a rescoring LM"):
    methods.build("local", model, resources.Resources())


def test_decode_config_defaults_are_the_methods_own():
  from bpdjax.configs import decode as decode_config  # pylint: disable=g-import-not-at-top
  config = decode_config.get_config()
  assert set(config.options) == set(methods.names())
  for name in methods.names():
    assert dict(config.options[name]) == methods.knobs(name)
    methods.make_options(name, **config.options[name]).validate()


def test_sampling_report_has_the_distribution_check(trained_tiny_workdir, tmp_path):
  """At temperature > 0 every method's entry has the distribution check with its seed, and a
  lossy acceptance rule is flagged in report.json and report.md (the check's power against
  it: tests/test_sampled_verification.py)."""
  from bpdjax.eval import run as run_lib  # pylint: disable=g-import-not-at-top
  settings = helpers.decode_settings(
      workdir=trained_tiny_workdir, output=str(tmp_path / "out"), tasks="lambada",
      methods="ar,bpd,medusa", num_examples=3, max_new_tokens=8, record_topk=0,
      temperature=1.0, acceptance="typical_lossy", seed=5,
      options={"medusa": {"tree_size": 8}})
  result = run_lib.run(settings, log=lambda *_: None)
  assert result["settings"]["lossless"] is False
  for method, entry in result["tasks"]["lambada"].items():
    check = entry["distribution_check"]
    assert entry["lossless"] is False and check["seed"] == 5 and check["examples"] == 3
    assert check["mean_logprob"] < 0 and 0 <= check["second_token_tv"] <= 1
    assert ("logprob_z_vs_ar" in check) is (method != "ar")
  md = (tmp_path / "out" / "report.md").read_text()
  assert "Distribution check of the samples" in md
  assert "NO (lossy)" in md and "LOSSY" in md


_BAD_VALUES = {"workdir": "", "output": "", "tasks": "nope", "methods": "nope",
               "num_examples": 0, "max_new_tokens": 0, "batch_size": 0,
               "max_prompt_tokens": -1, "record_topk": -1, "mesh": "2,x"}


@pytest.mark.parametrize("setting", sorted(_BAD_VALUES))
def test_each_schema_check_names_its_setting(setting):
  """Every setting declared with a check (eval/schema.py) refuses a bad value with a message
  that names the setting, before anything is loaded."""
  from bpdjax.eval import schema  # pylint: disable=g-import-not-at-top
  assert {s.name for s in schema.SETTINGS if s.check} == set(_BAD_VALUES)
  values = dict(workdir="w", output="o", tasks="lambada", methods="ar", num_examples=1,
                max_new_tokens=4)
  values[setting] = _BAD_VALUES[setting]
  with pytest.raises(ValueError, match=setting):
    helpers.decode_settings(**values).validate()


def test_settings_are_declared_once():
  """The config keys, the alias flags and the settings' attributes all come from the schema."""
  from bpdjax.configs import decode as decode_config  # pylint: disable=g-import-not-at-top
  from bpdjax.eval import schema  # pylint: disable=g-import-not-at-top
  config = decode_config.get_config()
  names = {s.name for s in schema.SETTINGS}
  assert set(config.keys()) == names | {"options"}
  assert names <= set(alias_flags._ALIASES)  # pylint: disable=protected-access
  settings = helpers.decode_settings()
  assert all(settings.values[n] == config[n] for n in names)
