"""Decoding under a Mesh (parameters sharded by the logical rules, batch over data) gives the same
tokens as on one device. Runs in a subprocess with 8 simulated CPU devices."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from bpdjax.configs import tiny
    from bpdjax import model as model_lib, partitioning
    from bpdjax.decoding import generator, methods
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
    for method in ("ar", "bpd"):
      for name, gen in (("single", single), ("sharded", sharded)):
        drafter = methods.build(method, cfg).drafter
        results, _ = gen.generate(prompts, drafter, max_new_tokens=20, batch_size=8)
        out[f"{name}_{method}"] = [r.tokens.tolist() for r in results]
    leaf = sharded.params["layer_0"]["mlp"]["up"]["kernel"]
    out["up_kernel_sharding"] = str(leaf.sharding.spec)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_sharded_decoding_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
  out = json.loads(line[len("RESULT"):])
  assert out["single_ar"] == out["sharded_ar"]
  assert out["single_bpd"] == out["sharded_bpd"]
  assert out["single_ar"] == out["single_bpd"]
  # The parameters really are sharded: embed over fsdp, mlp over tensor.
  assert "fsdp" in out["up_kernel_sharding"] and "tensor" in out["up_kernel_sharding"]
