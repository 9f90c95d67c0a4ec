"""benchmarks/gpu_check.sh: its --smoke mode runs every stage on this CPU (tiny shapes) and
prints each stage's table, so the accelerator check cannot rot while no accelerator is lent;
without an accelerator the real check stops at once with a clear message; shards of another
vocabulary than the run's are refused."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from bpdjax import configuration
from bpdjax import model as model_lib
from bpdjax import partitioning
from bpdjax.configs import gpu_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("probe", "shards", "train", "decode_heldout", "decode_lambada", "cost")


def _env(**extra):
  """The check's environment; benchmarks/ scripts import the checkout's bpdjax from the root."""
  path = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
  return dict(os.environ, PY=sys.executable, JAX_PLATFORMS="cpu", PYTHONPATH=path, **extra)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("gpu_check"))
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", out, "--smoke"], cwd=ROOT,
                        env=_env(SMOKE_TRAIN_SECONDS="5"), capture_output=True, text=True,
                        timeout=1800)
  return out, proc


@pytest.mark.slow
def test_smoke_runs_every_stage_and_prints_its_table(smoke):
  out, proc = smoke
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  printed = proc.stdout
  for stage in STAGES:
    section = printed.split(f"== stage {stage} ")[1].split("== stage ")[0]
    assert "\n|---" in section, (stage, section)          # A markdown table for every stage.
  result = json.load(open(os.path.join(out, "gpu_check.json")))
  assert [s["stage"] for s in result["stages"]] == list(STAGES)
  assert all(s["exit"] == "0" for s in result["stages"])
  floor = result["floor"]["batches"]
  assert set(floor) == {"1", "8"} and floor["1"]["floor_s"] > 0
  assert len(floor["1"]["cost_relative"]) == 10                  # Verify 1..9, a tree of 16.
  for stage in ("decode_heldout", "decode_lambada"):
    methods = {(r["batch"], r["method"]) for r in result["decode"][stage]}
    assert methods == {(b, m) for b in ("1", "8")
                       for m in ("ar", "bpd", "pbest_0gram", "medusa", "auto")}
    assert all(r["identical"] == "True" for r in result["decode"][stage])  # Greedy: exact.
  assert result["targets"] and os.path.exists(os.path.join(out, "gpu_check.md"))
  print(open(os.path.join(out, "gpu_check.md")).read().split("\n## ")[0])  # Stage times.
  # The budgeted run stopped with a checkpoint of the step it stopped at, and exited 0.
  metrics = [json.loads(l) for l in open(os.path.join(out, "workdir", "metrics.jsonl"))]
  stop = [r for r in metrics if "stopped_by_budget" in r]
  assert stop and os.path.isdir(os.path.join(out, "workdir", "checkpoints", str(stop[0]["step"])))


@pytest.mark.slow
def test_shards_of_another_vocabulary_are_refused(smoke):
  out, _ = smoke
  proc = subprocess.run([sys.executable, "benchmarks/gpu_report.py",
                         f"--prompts={out}/smoke_inputs", "--config=bpdjax/configs/gpu_base.py"],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "512-id vocabulary (manifest.json) but model.vocab_size=4096" in proc.stderr


def test_no_accelerator_is_an_error_not_a_cpu_run(tmp_path):
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1
  assert "JAX sees no accelerator (backend cpu" in proc.stdout + proc.stderr
  stages = open(tmp_path / "stages.tsv").read().split("\n")
  assert stages[0].startswith("probe\t") and stages[1] == ""   # Nothing ran after the probe.


@pytest.mark.parametrize("variant, low, high", [("", 125e6, 135e6), ("smoke", 1e5, 1e6)])
def test_gpu_base_is_the_papers_setting_at_130m(variant, low, high):
  config = gpu_base.get_config(variant)
  model_config = configuration.validate(config)
  assert (model_config.num_layers, model_config.emb_dim) == ((12, 768) if not variant else (2, 64))
  assert model_config.num_heads_bpd == 9 and model_config.head_type == "ffn"
  assert model_config.dtype == ("float32" if variant else "bfloat16")
  assert config.max_train_seconds > 0
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.eval_shape(lambda: model_lib.Transformer(model_config).init(
      jax.random.PRNGKey(0), tokens, tokens))["params"]
  count = sum(x.size for x in jax.tree.leaves(partitioning.strip_boxes(params)))
  assert low < count < high, count
