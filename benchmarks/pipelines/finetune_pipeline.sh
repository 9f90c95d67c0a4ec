#!/usr/bin/env bash
# Issue #12 end to end on this CPU: pretrain configs/small.py (or reuse workdirs/small),
# fine-tune it on each task (configs/finetune.py:TASK, ~10 min each on 2 idle cores), then per
# task and model (pretrained, fine-tuned) one decode.py report with task quality, the paper's
# Table 1 shape (benchmarks/block_sizes.py: BE of bpd for block sizes 2..9, the first k heads of
# the h = 9 model), the repetition / entropy / h_max table, task quality on up to QUALITY_NUM
# examples with a paired test (benchmarks/pipelines/finetune_tables.py -> docs/results/finetune.md),
# and (REFINE=1, the default) the refinement table on the fine-tuned models with alpha tuned
# over a grid that reaches toward 0.
#
#   bash benchmarks/pipelines/finetune_pipeline.sh     # each stage resumes or is skipped when done
#   REFINE=0 bash benchmarks/pipelines/finetune_pipeline.sh   # without the refinement stage
#   BASE=tinystories bash benchmarks/pipelines/finetune_pipeline.sh
#
# BASE=tinystories fine-tunes TinyStories-656K with its h = 9 heads (workdirs/ts_ffn9, from
# benchmarks/pipelines/tinystories_track.sh) instead, every parameter trained
# (configs/finetune_tinystories.py), into workdirs/ft_ts_TASK and out/finetune_ts; its
# refinement stage uses the track's rescorer and 2-/4-gram LMs of the distillation data.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
TASKS=${TASKS:-squad xsum samsum gsm8k}
NUM=${NUM:-50}          # Evaluation examples per task (a seeded shuffle of the evaluation part).
MAX_NEW=${MAX_NEW:-64}
# Table (c): up to this many examples per task; 2000 takes whole evaluation parts (squad 1,925,
# xsum 189, samsum 174, gsm8k 1,319).
QUALITY_NUM=${QUALITY_NUM:-2000}
ALPHAS=${ALPHAS:-0.05,0.1,0.25,0.5,0.75}
BASE=${BASE:-small}
case $BASE in
  small) PARENT=small; FT=ft_; FT_CONFIG=configs/finetune.py; OUT=${OUT:-out/finetune}
         RESULTS=docs/results/finetune.md
         RESCORERS=xs=workdirs/rescorer_xs,s=workdirs/rescorer_s
         NGRAMS=2=workdirs/small/ngram2.arpa,4=workdirs/small/ngram4.arpa ;;
  tinystories) PARENT=ts_ffn9; FT=ft_ts_; FT_CONFIG=configs/finetune_tinystories.py
         OUT=${OUT:-out/finetune_ts}; RESULTS=docs/results/finetune_tinystories.md
         RESCORERS=ts=workdirs/ts_rescorer
         NGRAMS=2=workdirs/ts_ffn9/ngram2.arpa,4=workdirs/ts_ffn9/ngram4.arpa ;;
  *) echo "BASE=$BASE: must be small or tinystories" >&2; exit 2 ;;
esac
NUM_TUNE=${NUM_TUNE:-24}        # Refinement stage: alpha-tuning and reported examples per task,
NUM_REPORT=${NUM_REPORT:-32}    # tokens per tuning / reported example.
TUNE_MAX_NEW=${TUNE_MAX_NEW:-16}
REFINE_MAX_NEW=${REFINE_MAX_NEW:-32}

# Prompts keep their last N tokens: 192, and 448 for squad on the TinyStories base, whose
# tokenizer leaves only 48% of the answers inside a prompt's last 192 tokens (87% inside 448;
# configs/finetune_tinystories.py trains squad on rows of 512 for the same reason).
prompt_cap() { [ "$BASE:$1" = tinystories:squad ] && echo 448 || echo 192; }

if [ "$BASE" = small ]; then
  "$PY" train.py --config=configs/small.py --workdir=workdirs/small
elif [ ! -f workdirs/ts_ffn9/ngram4.arpa ] || [ ! -d workdirs/ts_rescorer/checkpoints ]; then
  echo "BASE=tinystories needs workdirs/ts_ffn9 (with its n-gram LMs) and workdirs/ts_rescorer:" \
       "run benchmarks/pipelines/tinystories_track.sh first" >&2; exit 2
fi
for task in $TASKS; do
  "$PY" train.py --config="$FT_CONFIG":"$task" --workdir=workdirs/"$FT$task"
done
for task in $TASKS; do
  for model in "$PARENT" "$FT$task"; do
    dir="$OUT/$model/$task"
    [ -f "$dir/report.json" ] || "$PY" decode.py --workdir=workdirs/"$model" --output="$dir" \
        --tasks="$task" --methods=ar,bpd --num_examples="$NUM" --max_new_tokens="$MAX_NEW" \
        --config.max_prompt_tokens="$(prompt_cap "$task")" --config.quality=True
    [ -f "$dir/blocks.json" ] || "$PY" -m benchmarks.block_sizes --workdir=workdirs/"$model" \
        --tasks="$task" --num_examples="$NUM" --max_new_tokens="$MAX_NEW" \
        --config.max_prompt_tokens="$(prompt_cap "$task")" --json="$dir/blocks.json"
  done
done
# Task quality on more examples (greedy ar only, per-example scores for table (c)'s paired
# test): at a few percent of problems solved, NUM examples cannot tell two models apart.
for task in $TASKS; do
  for model in "$PARENT" "$FT$task"; do
    dir="$OUT/$model/$task/quality"
    [ -f "$dir/report.json" ] || "$PY" decode.py --workdir=workdirs/"$model" --output="$dir" \
        --tasks="$task" --methods=ar --num_examples="$QUALITY_NUM" --max_new_tokens="$MAX_NEW" \
        --record_topk=0 \
        --config.max_prompt_tokens="$(prompt_cap "$task")" --config.quality=True
  done
done
# The tables cover every task decoded so far, so a run for a subset of tasks keeps the others.
done_tasks=$(for t in squad xsum samsum gsm8k; do
  [ -f "$OUT/$FT$t/$t/blocks.json" ] && [ -f "$OUT/$FT$t/$t/quality/report.json" ] && echo "$t"
done | paste -sd,)
"$PY" -m benchmarks.pipelines.finetune_tables --out="$OUT" --tasks="$done_tasks" --pretrained="$PARENT" \
    --finetuned_prefix="$FT" --quality_dir=quality --markdown="$RESULTS"
[ "${REFINE:-1}" = 1 ] || exit 0
# Refinement on the fine-tuned models: the rescorers and n-gram LMs of the pretraining corpus
# (benchmarks/pipelines/refinement_resources.sh), and each task's 4-gram LM of its fine-tuning targets
# (an sft workdir's n-gram LM; row ngram:4ft; a 2-gram row of the targets would add a sixth of
# the stage's time). Each task's table is written to
# $OUT/refinement_TASK/refinement.{json,md}; a finished one is kept.
[ "$BASE" = small ] && PY=$PY bash benchmarks/pipelines/refinement_resources.sh
for task in $TASKS; do
  [ -f workdirs/"$FT$task"/ngram4.arpa ] || "$PY" -m bpdjax.ngram.estimate \
      --workdir=workdirs/"$FT$task" --order=4 --output=workdirs/"$FT$task"/ngram4.arpa --build_kenlm
done
for task in $TASKS; do
  [ -f "$OUT/refinement_$task/refinement.json" ] && grep -q wall_minutes \
      "$OUT/refinement_$task/refinement.json" && continue
  "$PY" -m benchmarks.refinement_table --workdir=workdirs/"$FT$task" --tasks="$task" \
      --rescorers="$RESCORERS" --ngrams="$NGRAMS",4ft=workdirs/"$FT$task"/ngram4.arpa \
      --pbest_ngram_order=4 --alphas="$ALPHAS" --num_tune="$NUM_TUNE" --num_report="$NUM_REPORT" \
      --tune_max_new_tokens="$TUNE_MAX_NEW" --max_new_tokens="$REFINE_MAX_NEW" \
      --max_prompt_tokens="$(prompt_cap "$task")" --output="$OUT/refinement_$task"
done
