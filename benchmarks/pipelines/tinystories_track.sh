#!/usr/bin/env bash
# Issue #12's TinyStories track: the refinement table on the one pretrained base whose greedy
# text does not loop. TinyStories-656K (frozen) with h = 9 FFN heads trained on its own
# self-distillation data (head 1 is the imported LM head), the rescorer and the 2-/4-gram LMs
# estimated on the same distillation data, and held-out story openings (the distillation
# data's validation sequences, never trained on) as prompts; alpha tuned on the first
# NUM_TUNE openings over a grid that reaches toward 0, the next NUM_REPORT reported.
#
#   bash benchmarks/pipelines/tinystories_track.sh      # each stage resumes or is skipped when done
#
# Writes out/tinystories/refinement/refinement.{json,md} and out/tinystories/openings.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${BPDJAX_DATA_DIR:-../shared/data}
NUM_TUNE=${NUM_TUNE:-24}
NUM_REPORT=${NUM_REPORT:-48}
TUNE_MAX_NEW=${TUNE_MAX_NEW:-32}
MAX_NEW=${MAX_NEW:-64}
ALPHAS=${ALPHAS:-0.05,0.1,0.25,0.5,0.75}
OUT=${OUT:-out/tinystories}
W=workdirs/ts_ffn9

[ -f workdirs/ts_distill/manifest.json ] || "$PY" -m bpdjax.distill \
    --hf_model="$DATA"/models/TinyStories-656K --output=workdirs/ts_distill \
    --num_sequences=5000 --seq_len=256 --temperature=0.3 --seed=0
"$PY" train.py --config=configs/tinystories_heads.py --workdir=$W --config.model.num_heads_bpd=9
"$PY" train.py --config=configs/tinystories_rescorer.py --workdir=workdirs/ts_rescorer
for order in 2 4; do
  [ -f $W/ngram$order.arpa ] || "$PY" -m bpdjax.ngram.estimate --workdir=$W --order=$order \
      --output=$W/ngram$order.arpa --build_kenlm
done
"$PY" -m benchmarks.pipelines.heldout_openings --workdir=$W --tokens=24 --output="$OUT"/openings.jsonl
"$PY" -m benchmarks.refinement_table --workdir=$W --tasks=jsonl --jsonl="$OUT"/openings.jsonl \
    --rescorers=ts=workdirs/ts_rescorer --ngrams=2=$W/ngram2.arpa,4=$W/ngram4.arpa \
    --alphas="$ALPHAS" --num_tune="$NUM_TUNE" --num_report="$NUM_REPORT" \
    --tune_max_new_tokens="$TUNE_MAX_NEW" --max_new_tokens="$MAX_NEW" \
    --max_prompt_tokens=64 --output="$OUT"/refinement
