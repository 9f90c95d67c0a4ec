"""The text-level API (bpdjax.text): load -> generate a string, lists of prompts, streaming of
accepted blocks, and `load` on a pretrained folder or on a folder that is neither."""
import os

import pytest

import bpdjax
from bpdjax import text

DATA = os.environ.get("BPDJAX_DATA_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared",
    "data"))
PROMPTS = ["First Citizen:", "ROMEO: O, she doth teach", "All"]


@pytest.fixture(scope="module")
def tiny(trained_tiny_workdir):
  return bpdjax.load(trained_tiny_workdir)


def test_generate_returns_text_with_costs(tiny):
  outputs = {m: bpdjax.generate(tiny, PROMPTS[0], method=m, max_new_tokens=24)
             for m in ("ar", "bpd", "medusa")}
  ar = outputs["ar"]
  assert isinstance(ar, str) and isinstance(ar, text.Text)
  assert len(ar.tokens) == 24 or ar.tokens[-1] == tiny.vocab.eos_id
  assert ar == tiny.vocab.decode(ar.tokens)
  assert ar.block_efficiency == 1.0 and ar.calls == len(ar.tokens)
  for method, out in outputs.items():
    assert out.tokens == ar.tokens, method            # Exact: every method equals plain decoding.
    assert str(out) == str(ar), method
    assert out.method == method and out.seconds > 0
    assert out.block_efficiency == len(out.tokens) / out.calls
  assert outputs["bpd"].calls <= ar.calls
  print({m: round(o.block_efficiency, 3) for m, o in outputs.items()}, repr(str(ar)))


def test_a_list_of_prompts_gives_a_list(tiny):
  outs = bpdjax.generate(tiny, PROMPTS, method="bpd", max_new_tokens=16, batch_size=2)
  assert isinstance(outs, list) and len(outs) == len(PROMPTS)
  for prompt, out in zip(PROMPTS, outs):
    assert out.tokens == bpdjax.generate(tiny, prompt, method="ar", max_new_tokens=16).tokens


def test_stream_yields_each_call_s_block(tiny):
  ref = bpdjax.generate(tiny, PROMPTS[1], method="bpd", max_new_tokens=32)
  blocks = list(bpdjax.stream(tiny, PROMPTS[1], method="bpd", max_new_tokens=32))
  assert [t for b in blocks for t in b.tokens] == ref.tokens
  assert "".join(b.text for b in blocks) == str(ref)
  assert [b.call for b in blocks] == list(range(1, len(blocks) + 1))
  assert len(blocks) == ref.calls                     # One block per model call, as decided.
  assert len(blocks[0].tokens) == 1                   # The prefill decides one token.
  sampled = dict(method="bpd", max_new_tokens=20, temperature=0.8, seed=3)
  assert ([t for b in bpdjax.stream(tiny, PROMPTS[0], **sampled) for t in b.tokens]
          == bpdjax.generate(tiny, PROMPTS[0], **sampled).tokens)


def test_bad_input(tiny, tmp_path):
  with pytest.raises(ValueError, match="Unknown method 'nope'; methods: .*bpd"):
    bpdjax.generate(tiny, "x", method="nope")
  with pytest.raises(ValueError, match="encodes to no tokens"):
    bpdjax.generate(tiny, "", method="ar")
  with pytest.raises(TypeError, match="A prompt is a str"):
    bpdjax.generate(tiny, 42)
  with pytest.raises(ValueError, match="prompt is an empty list"):
    bpdjax.generate(tiny, [])
  with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
    bpdjax.generate(tiny, ["x"], batch_size=0)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    bpdjax.generate(tiny, "x", max_new_tokens=0)
  with pytest.raises(ValueError, match="max_len"):
    bpdjax.generate(tiny, "First Citizen:", max_new_tokens=10_000)
  (tmp_path / "notes.txt").write_text("not a model")
  with pytest.raises(FileNotFoundError, match="neither a bpdjax workdir .* nor a Hugging Face"):
    bpdjax.load(str(tmp_path))


def test_load_a_pretrained_folder():
  folder = os.path.join(DATA, "models", "TinyStories-656K")
  if not os.path.isdir(folder):
    pytest.skip(f"{folder} is not here")
  m = bpdjax.load(folder)
  assert m.model.config.num_heads_bpd == 1
  out = bpdjax.generate(m, "Once upon a time", method="ar", max_new_tokens=12)
  assert len(out.tokens) >= 1 and out.block_efficiency == 1.0
