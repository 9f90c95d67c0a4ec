"""Report fields of draft refinement: gain over BPD, steps won against the vanilla draft,
repetition repairs, repetition before/after rescoring, rescoring cost per step."""
import numpy as np
import pytest

from bpdjax.decoding import generator
from bpdjax.eval import analysis
from bpdjax.eval import metrics
from bpdjax.eval import report
from bpdjax.eval import run
from tests import helpers

L = 4   # draft length = heads
M = 8   # max_new_tokens


def _records():
  """Three rows of hand-made records (see the comments for each iteration's expected outcome).

  Row 0, output 10..17 (n = 8), kept 3, 2, 3:
    slot 0: vanilla [10, 11, 11, 99] keeps 2 (11 != 12): refined 3 > 2, a win, and a repair
      (the rejected token 11 copies the one before it; the output has 11, 12 there);
    slot 3: vanilla [13, 14, 15, 16] keeps 4 > refined 2: a loss;
    slot 5: vanilla [15, 16, 99, 98] keeps 2 < refined 3 (= the 3 tokens left): a win, no
      repetition in the vanilla draft, so no repair.
  Row 1, output [20, 21, 21, 22, 23] (n = 5), kept 4, 4:
    slot 0: vanilla [20, 21, 21, 22] keeps 4 = refined: a tie (its repetition is real text);
    slot 4: 1 token left: refined min(4, 1) = 1, vanilla 1: a tie.
  Row 2, output [30, 31, 31, 32, 33, 34] (n = 6), kept 4, 2:
    slot 0: vanilla [30, 31, 31, 77] keeps 3 < refined 4: a win, not a repair (the repeated
      pair was accepted: both drafts hold the output there);
    slot 4: vanilla [33, 34, 1, 2], 2 tokens left: 2 = refined 2: a tie.
  """
  outputs = [list(range(10, 18)), [20, 21, 21, 22, 23], [30, 31, 31, 32, 33, 34]]
  kept = np.array([[3, 4, 4], [2, 4, 2], [3, 0, 0]], np.int32)                  # [I, B]
  topk = np.zeros((3, M + L, L, 2), np.int32)                                  # [B, S, h, K]
  topk[..., 1] = 5  # second choices: never read
  vanilla_heads = {(0, 0): [11, 11, 99], (0, 3): [14, 15, 16], (0, 5): [16, 99, 98],
                   (1, 0): [21, 21, 22], (1, 4): [5, 6, 7],
                   (2, 0): [31, 31, 77], (2, 4): [34, 1, 2]}
  for (b, s), heads in vanilla_heads.items():
    topk[b, s, 0, 0] = outputs[b][s]   # head 1 at slot s: the model's own token there
    topk[b, s, 1:, 0] = heads
  tokens = np.zeros((3, M + L), np.int32)
  for b, out in enumerate(outputs):
    tokens[b, :len(out)] = out
  lengths = np.array([len(o) for o in outputs])
  drafts = np.zeros((3, 3, L), np.int32)  # the refined drafts: not read by these analyses
  return outputs, kept, topk, tokens, lengths, drafts


def test_vanilla_drafts_rebuilt_from_records():
  _, kept, topk, tokens, _, _ = _records()
  slots, vanilla = analysis.vanilla_drafts(kept, topk, tokens, L)
  np.testing.assert_array_equal(slots, [[0, 0, 0], [3, 4, 4], [5, 8, 6]])
  np.testing.assert_array_equal(vanilla[0, 0], [10, 11, 11, 99])
  np.testing.assert_array_equal(vanilla[1, 0], [13, 14, 15, 16])
  np.testing.assert_array_equal(vanilla[2, 0], [15, 16, 99, 98])
  np.testing.assert_array_equal(vanilla[1, 2], [33, 34, 1, 2])
  with pytest.raises(ValueError, match="draft_len 5 exceeds the 4 recorded heads"):
    analysis.vanilla_drafts(kept, topk, tokens, 5)


def test_wins_ties_losses_and_repairs_exact_counts():
  _, kept, topk, tokens, lengths, _ = _records()
  got = analysis.refinement_vs_vanilla(kept, topk, tokens, lengths, L)
  assert got == {"iterations": 7, "wins": 3, "ties": 3, "losses": 1,
                 "win_fraction": 3 / 7, "tie_fraction": 3 / 7, "loss_fraction": 1 / 7,
                 "repetition_repairs": 1, "repetition_repair_share": 1 / 3}
  # Vanilla drafts: 3 repeated neighbour pairs out of 7 drafts x 3 pairs.
  assert analysis.vanilla_repetition(kept, topk, tokens, L) == pytest.approx(3 / 21)
  # The vanilla draft judged against itself: every step a tie.
  _, vanilla = analysis.vanilla_drafts(kept, topk, tokens, L)
  assert analysis.repetition(vanilla, kept)[0] == pytest.approx(3 / 21)
  # Records that do not belong to the outputs are refused.
  with pytest.raises(ValueError, match="past its"):
    analysis.refinement_vs_vanilla(kept, topk, tokens, lengths - 3, L)


def test_vanilla_records_are_all_ties():
  """Records whose kept lengths are the vanilla draft's own (what "bpd" records): all ties."""
  outputs, kept, topk, tokens, lengths, _ = _records()
  own = np.zeros((M, 3), np.int32)
  for b, out in enumerate(outputs):
    s, t = 0, 0
    while s < len(out):
      v = [out[s]] + list(topk[b, s, 1:, 0])
      n = 1
      while n < L and s + n < len(out) and v[n] == out[s + n]:
        n += 1
      own[t, b], s, t = n, s + n, t + 1
  got = analysis.refinement_vs_vanilla(own, topk, tokens, lengths, L)
  assert got["ties"] == got["iterations"] == int(np.sum(own > 0)) and got["wins"] == 0
  assert got["repetition_repair_share"] is None and got["loss_fraction"] == 0.0


def _generations():
  outputs, kept, topk, tokens, lengths, drafts = _records()
  gens = [generator.Generation(
      tokens=np.asarray(out, np.int32), calls=int(np.sum(kept[:, b] > 0)) + 1,
      records={"kept": kept[:, b], "drafts": drafts[:, b], "topk": topk[b],
               "entropy": np.zeros((M + L, L), np.float32)}) for b, out in enumerate(outputs)]
  return gens


def test_report_fields_from_generations():
  gens = _generations()
  got = metrics.refinement_analyses(gens, L, greedy=True)
  assert got["steps_vs_vanilla"]["wins"] == 3 and got["repetition_repair_share"] == 1 / 3
  assert got["vanilla_repetition_rate"] == pytest.approx(3 / 21)
  sampled = metrics.refinement_analyses(gens, L, greedy=False)
  assert sampled["steps_vs_vanilla"] is None and sampled["repetition_repair_share"] is None
  assert sampled["vanilla_repetition_rate"] == pytest.approx(3 / 21)
  assert set(metrics.refinement_analyses(gens, 1, True).values()) == {None}


def test_speed_steps_gain_and_share():
  gens = _generations()  # calls 4, 3, 3
  timings = [generator.BatchTiming(seconds=0.5, tokens=13, rows=2),
             generator.BatchTiming(seconds=0.25, tokens=6, rows=1)]
  speed = metrics.speed_metrics(gens, timings)
  assert speed["loop_steps"] == 4 + 3  # max calls of batch [4, 3], then of [3]
  assert speed["ms_per_step"] == pytest.approx(750 / 7)
  entry = dict(speed)
  metrics.add_drafting_cost(entry, 3.0, 1.0)
  assert entry["drafting_share"] == pytest.approx(3.0 / (750 / 7))
  assert entry["drafting_ms_per_step"] == 3.0 and entry["vanilla_propose_ms"] == 1.0
  none = {}
  metrics.add_drafting_cost(none, None, 1.0)
  assert none["drafting_share"] is None
  task = {"ar": {"block_efficiency": 1.0}, "bpd": {"block_efficiency": 1.6},
          "pbest_0gram": {"block_efficiency": 2.0}}
  metrics.compare_to_vanilla(task, "bpd")
  assert task["bpd"]["be_gain_vs_bpd"] == 0.0
  assert task["pbest_0gram"]["be_gain_vs_bpd"] == pytest.approx(0.25)
  assert task["ar"]["be_gain_vs_bpd"] == pytest.approx(1 / 1.6 - 1)
  without = {"ar": {"block_efficiency": 1.0}}
  metrics.compare_to_vanilla(without, "bpd")
  assert "be_gain_vs_bpd" not in without["ar"]


@pytest.mark.slow
def test_evaluate_run_refinement_fields(trained_tiny_workdir, tmp_path):
  settings = helpers.decode_settings(
      workdir=trained_tiny_workdir, output=str(tmp_path / "out"), tasks="lambada",
      methods="ar,bpd,pbest_0gram", num_examples=3, max_new_tokens=12, batch_size=2,
      options={"pbest_0gram": {"k": 4, "p": 4}})
  result = run.run(settings)
  methods = result["tasks"]["lambada"]
  for method, e in methods.items():
    for field in ("be_gain_vs_bpd", "steps_vs_vanilla", "repetition_repair_share",
                  "vanilla_repetition_rate", "drafting_ms_per_step", "drafting_share",
                  "loop_steps", "ms_per_step"):
      assert field in e, (method, field)
    assert e["identical_to_ar"] is True
  ar, bpd, pbest = methods["ar"], methods["bpd"], methods["pbest_0gram"]
  assert ar["steps_vs_vanilla"] is None and ar["drafting_ms_per_step"] is None
  assert ar["be_gain_vs_bpd"] == pytest.approx(1 / bpd["block_efficiency"] - 1)
  assert bpd["be_gain_vs_bpd"] == 0.0 and bpd["drafting_ms_per_step"] > 0
  assert pbest["be_gain_vs_bpd"] == pytest.approx(
      pbest["block_efficiency"] / bpd["block_efficiency"] - 1)
  for e in (bpd, pbest):
    st = e["steps_vs_vanilla"]
    iterations = e["calls"] - e["examples"]  # one prefill per example, the rest iterations
    assert st["wins"] + st["ties"] + st["losses"] == st["iterations"] == iterations
    assert st["win_fraction"] + st["tie_fraction"] + st["loss_fraction"] == pytest.approx(1.0)
  # BPD against itself: all ties; its drafts are the vanilla drafts.
  assert bpd["steps_vs_vanilla"]["ties"] == bpd["steps_vs_vanilla"]["iterations"]
  assert bpd["vanilla_repetition_rate"] == pytest.approx(bpd["repetition_rate"])
  # The p best 0-gram chains include the vanilla (argmax) chain: never a loss.
  assert pbest["steps_vs_vanilla"]["losses"] == 0
  # Drafting times are positive medians of the proposal alone, never a difference of two.
  assert pbest["drafting_ms_per_step"] > 0 and pbest["vanilla_propose_ms"] > 0
  assert pbest["drafting_share"] == pytest.approx(
      pbest["drafting_ms_per_step"] / pbest["ms_per_step"])
  md = (tmp_path / "out" / "report.md").read_text()
  assert "Draft refinement against vanilla BPD" in md and "| lambada | pbest_0gram |" in md
  lines = report.summary_lines(result)
  assert any("pbest_0gram" in line and "vs bpd" in line and "W/T/L" in line for line in lines)
