#!/usr/bin/env bash
# Issue #12 end to end on this CPU: pretrain configs/small.py (or reuse workdirs/small),
# fine-tune it on each task (configs/finetune.py:TASK, ~10 min each on 2 idle cores), then per
# task and model (pretrained, fine-tuned) one decode.py report with task quality, the paper's
# Table 1 shape (benchmarks/block_sizes.py: BE of bpd for block sizes 2..9, the first k heads of
# the h = 9 model), the repetition / entropy / h_max table (benchmarks/finetune_tables.py ->
# benchmarks/results/finetune.md), and (REFINE=1, the default) the refinement table on the
# fine-tuned models with alpha tuned over a grid that reaches toward 0.
#
#   bash benchmarks/finetune_pipeline.sh     # each stage resumes or is skipped when done
#   REFINE=0 bash benchmarks/finetune_pipeline.sh   # without the refinement stage
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TASKS=${TASKS:-squad xsum samsum gsm8k}
NUM=${NUM:-50}          # Evaluation examples per task (a seeded shuffle of the evaluation part).
MAX_NEW=${MAX_NEW:-64}
ALPHAS=${ALPHAS:-0.05,0.1,0.25,0.5,0.75}
OUT=${OUT:-out/finetune}
NUM_TUNE=${NUM_TUNE:-24}        # Refinement stage: alpha-tuning and reported examples per task,
NUM_REPORT=${NUM_REPORT:-32}    # tokens per tuning / reported example.
TUNE_MAX_NEW=${TUNE_MAX_NEW:-16}
REFINE_MAX_NEW=${REFINE_MAX_NEW:-32}

"$PY" train.py --config=configs/small.py --workdir=workdirs/small
for task in $TASKS; do
  "$PY" train.py --config=configs/finetune.py:"$task" --workdir=workdirs/ft_"$task"
done
for task in $TASKS; do
  for model in small ft_"$task"; do
    dir="$OUT/$model/$task"
    [ -f "$dir/report.json" ] || "$PY" decode.py --workdir=workdirs/"$model" --output="$dir" \
        --tasks="$task" --methods=ar,bpd --num_examples="$NUM" --max_new_tokens="$MAX_NEW" \
        --config.max_prompt_tokens=192 --config.quality=True
    [ -f "$dir/blocks.json" ] || "$PY" benchmarks/block_sizes.py --workdir=workdirs/"$model" \
        --tasks="$task" --num_examples="$NUM" --max_new_tokens="$MAX_NEW" \
        --config.max_prompt_tokens=192 --json="$dir/blocks.json"
  done
done
# The tables cover every task decoded so far, so a run for a subset of tasks keeps the others.
done_tasks=$(for t in squad xsum samsum gsm8k; do [ -f "$OUT/ft_$t/$t/blocks.json" ] && echo "$t"; done | paste -sd,)
"$PY" benchmarks/finetune_tables.py --out="$OUT" --tasks="$done_tasks" \
    --markdown=benchmarks/results/finetune.md
[ "${REFINE:-1}" = 1 ] || exit 0
# Refinement on the fine-tuned models: the rescorers and n-gram LMs of the pretraining corpus
# (benchmarks/refinement_resources.sh), and each task's 4-gram LM of its fine-tuning targets
# (an sft workdir's n-gram LM; row ngram:4ft; a 2-gram row of the targets would add a sixth of
# the stage's time). Each task's table is written to
# $OUT/refinement_TASK/refinement.{json,md}; a finished one is kept.
PY=$PY bash benchmarks/refinement_resources.sh
for task in $TASKS; do
  [ -f workdirs/ft_"$task"/ngram4.arpa ] || "$PY" -m bpdjax.ngram.estimate \
      --workdir=workdirs/ft_"$task" --order=4 --output=workdirs/ft_"$task"/ngram4.arpa --build_kenlm
done
for task in $TASKS; do
  [ -f "$OUT/refinement_$task/refinement.json" ] && grep -q wall_minutes \
      "$OUT/refinement_$task/refinement.json" && continue
  "$PY" benchmarks/refinement_table.py --workdir=workdirs/ft_"$task" --tasks="$task" \
      --rescorers=xs=workdirs/rescorer_xs,s=workdirs/rescorer_s \
      --ngrams=2=workdirs/small/ngram2.arpa,4=workdirs/small/ngram4.arpa,4ft=workdirs/ft_"$task"/ngram4.arpa \
      --pbest_ngram_order=4 --alphas="$ALPHAS" --num_tune="$NUM_TUNE" --num_report="$NUM_REPORT" \
      --tune_max_new_tokens="$TUNE_MAX_NEW" --max_new_tokens="$REFINE_MAX_NEW" \
      --output="$OUT/refinement_$task"
done
