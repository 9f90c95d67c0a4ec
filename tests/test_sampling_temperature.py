"""Sampling is right at every temperature: a tiny one samples the greedy tokens (scaled logits
never overflow inside the jitted loop), a huge one is still a valid, exact sample."""
import numpy as np
import pytest

from bpdjax.decoding import methods
from bpdjax.decoding import sampling
from tests import helpers


@pytest.mark.parametrize("method,temperature", [("ar", 1e-9), ("ar", 1e-6), ("bpd", 1e-9)])
def test_tiny_temperature_is_greedy(method, temperature):
  model, cfg, params = helpers.random_model()
  prompts, lengths = helpers.uneven_prompts()
  drafter = methods.build(method, cfg, None).drafter
  greedy = helpers.rows(helpers.decode(model, params, prompts, lengths, drafter, 8))
  sampled = helpers.rows(helpers.decode(
      model, params, prompts, lengths, drafter, 8,
      config=sampling.SamplingConfig(temperature=temperature)))
  assert sampled == greedy


def test_processed_logits_are_finite_at_every_temperature():
  logits = np.array([[-17.3, 0.0, 17.56, 17.5, -1e30]], np.float32)  # The last one masked.
  for temperature in (1e-30, 1e-9, 1e-6, 1.0, 1e9, 1e30):
    out = np.asarray(sampling.processed_logits(logits, sampling.SamplingConfig(temperature)))
    assert np.isfinite(out).all(), (temperature, out)
    assert out.argmax() == 2
  tiny = np.asarray(sampling.processed_logits(logits, sampling.SamplingConfig(1e-9)))
  assert np.exp(tiny - tiny.max()).sum() == 1.0  # A point mass on the argmax.


def test_huge_temperature_is_an_exact_sample(method="bpd"):
  """At 1e9 the distribution is uniform: every token id valid, chi-square against it holds."""
  model, cfg, params = helpers.random_model(vocab_size=16)
  drafter = methods.build(method, cfg, None).drafter
  config = sampling.SamplingConfig(temperature=1e9)
  helpers.assert_exact_in_distribution(model, params, [3, 5, 7], 16, drafter, config, num=2,
                                       n=8000)
