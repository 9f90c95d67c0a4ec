#!/usr/bin/env bash
# Issue 32's speed columns: tokens/s and ms per call of the learned-drafts rows at batch 1 and 8,
# each against ar in the same process (benchmarks/decode_speed.py: median of alternating
# rounds, outputs checked identical), on the learned-drafts comparison's 36 prompts (the
# prompts.jsonl benchmarks/learned_drafts.py writes into its --output folder). One run per head
# set; the Markov set twice, the correction over the whole vocabulary and over each head's 256
# best tokens. Tables go to docs/results/decode_speed.md.
#
#   bash benchmarks/pipelines/learned_drafts_speed.sh
#   PROMPTS=out/stage_ffn800/prompts.jsonl ROUNDS=5 bash benchmarks/pipelines/learned_drafts_speed.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
PROMPTS=${PROMPTS:-out/stage_ffn800/prompts.jsonl}
ROUNDS=${ROUNDS:-3}
common=(--tasks=jsonl --jsonl="$PROMPTS" --num_examples=36 --max_new_tokens=128
        --batch_sizes=1,8 --rounds="$ROUNDS")
"$PY" -m bpdjax.bench decode_speed --workdir=workdirs/ts_ffn "${common[@]}" \
    --methods=ar,bpd,pbest_0gram,medusa,prompt_lookup,prompt_lookup_tree,local,ngram,auto \
    --config.options.auto.drafter=prompt_lookup --config.rescorer_workdir=workdirs/ts_rescorer \
    --config.ngram_arpa=workdirs/ts_ffn/ngram4.arpa
"$PY" -m bpdjax.bench decode_speed --workdir=workdirs/ts_seq6 "${common[@]}" \
    --methods=ar,sequential,sequential_tree,prompt_lookup_tree,auto \
    --config.options.auto.drafter=sequential
for scored in 0 256; do
  "$PY" -m bpdjax.bench decode_speed --workdir=workdirs/ts_markov800 "${common[@]}" \
      --methods=ar,markov,markov_tree --config.options.markov.markov_candidates=$scored \
      --config.options.markov_tree.markov_candidates=$scored
done
