"""Decoding under a Mesh (parameters sharded by the logical rules, batch over data) gives the same
tokens as plain decoding on one device, for every method the tiny model can run: those that
need no resource (prompt lookup included), auto over its own chain and over a Medusa tree, and
local and ngram (dp) with tiny resources. Runs in a subprocess with 8 simulated CPU devices."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests import helpers

_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from bpdjax.configs import tiny
    from bpdjax import model as model_lib, partitioning
    from bpdjax.decoding import generator, methods, resources
    from bpdjax.ngram import arpa
    assert jax.device_count() == 8, jax.devices()
    config = tiny.get_config()
    cfg = model_lib.TransformerConfig.from_config(config.model)
    model = model_lib.Transformer(cfg)
    tok = jnp.zeros((1, 4), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tok, tok)["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    rng = np.random.RandomState(0)
    prompts = [rng.randint(3, cfg.vocab_size, n) for n in (5, 9, 2, 7, 11, 3, 8, 6)]
    out = {}
    single = generator.Generator(model, params, eos_id=None)
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = generator.Generator(model, params, eos_id=None, mesh=mesh,
                                  rules=config.logical_axis_rules)
    # Tiny resources: a second random model as the rescorer, a hand-written bigram ARPA.
    other = jax.tree.map(lambda x: x[::-1] if x.ndim == 1 else -x, params)
    lines = ["\\data\\", f"ngram 1={cfg.vocab_size + 3}", "ngram 2=64", "", "\\1-grams:",
             "-99 <s> -0.3", "-2.7 </s>", "-2.7 <unk>"]
    lines += [f"-2.7 {i} -0.3" for i in range(cfg.vocab_size)]
    lines += ["", "\\2-grams:"] + [f"-0.5 {i} {(7 * i + 3) % cfg.vocab_size}" for i in range(64)]
    lines += ["", "\\end\\", ""]
    open(sys.argv[1], "w").write("\n".join(lines))
    res = resources.Resources(
        rescorer=resources.Rescorer(model, other),
        ngram_lm=resources.NgramLM(arpa.parse_arpa(sys.argv[1], cfg.vocab_size)))
    knobs = {"options": {"medusa": methods.make_options("medusa", k=4, tree_size=16)}}
    runs = {"ar": {}, "bpd": {}, "pbest_0gram": dict(k=4, p=4), "medusa": dict(k=4, tree_size=16),
            "auto": dict(costs="1,1.05,1.1,1.15"), "auto_entropy": {},
            "auto_medusa": dict(drafter="medusa", costs="1,1,1,1,1"),
            "local": dict(k=4), "ngram": dict(k=4), "medusa_local": dict(k=4, tree_size=16),
            "pbest_ngram": dict(k=4, p=4), "prompt_lookup": dict(num_tokens=4),
            "prompt_lookup_tree": dict(num_tokens=4, k=4, tree_size=16)}
    # One device decodes ar only: every method's greedy output equals ar's on one device (each
    # method's own tests), so a sharded run is compared with single-device ar.
    for name, gen, label, values in [("single", single, "ar", {})] + [
        ("sharded", sharded, label, values) for label, values in runs.items()]:
      method = label.split("_medusa")[0]
      built = gen.build(method, res, method_options=knobs["options"], batch_size=8,
                        prompt_width=32, max_new_tokens=20, **values)
      results, _ = gen.generate(prompts, built, max_new_tokens=20, batch_size=8)
      out[f"{name}_{label}"] = [r.tokens.tolist() for r in results]
    leaf = sharded.params["layer_0"]["mlp"]["up"]["kernel"]
    out["up_kernel_sharding"] = str(leaf.sharding.spec)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_decoding_matches_single_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(8),
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "bigram.arpa")], cwd=root,
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
  out = json.loads(line[len("RESULT"):])
  labels = sorted(k[len("sharded_"):] for k in out if k.startswith("sharded_"))
  assert len(labels) == 13, labels
  for label in labels:
    assert out[f"sharded_{label}"] == out["single_ar"], label
  # The parameters really are sharded: embed over fsdp, mlp over tensor.
  assert "fsdp" in out["up_kernel_sharding"] and "tensor" in out["up_kernel_sharding"]
