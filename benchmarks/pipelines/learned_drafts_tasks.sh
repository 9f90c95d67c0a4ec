#!/usr/bin/env bash
# Issue 32 on the fine-tuned TinyStories tasks: each head set of the learned-drafts comparison
# (ffn h = 4: workdirs/ts_ffn; sequential h = 6: workdirs/ts_seq6; ffn + Markov r = 32:
# workdirs/ts_markov800) fine-tuned whole, body and heads, on each task as
# configs/finetune_tinystories.py fine-tunes ts_ffn9 (400 steps, ~10-20 min each on 2 idle
# cores), then decode.py on NUM seeded evaluation examples, greedy and at T = 1: BE and
# identical-to-ar per method (not timed); the ffn heads also with local and n-gram rescoring (ngram:4 of
# the distillation data, ngram:4ft of the task's targets). Then one table,
# benchmarks/pipelines/learned_drafts_tasks.py.
#
#   bash benchmarks/pipelines/learned_drafts_tasks.sh               # TASKS="gsm8k xsum samsum"
#   TASKS=gsm8k NUM=32 bash benchmarks/pipelines/learned_drafts_tasks.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
TASKS=${TASKS:-gsm8k xsum samsum}
NUM=${NUM:-32}
MAX_NEW=${MAX_NEW:-64}
OUT=${OUT:-out/learned_drafts_tasks}
# name: parent workdir, model overrides, methods decoded.
declare -A PARENT=([ffn]=ts_ffn [seq]=ts_seq6 [markov]=ts_markov800)
declare -A MODEL=([ffn]="--config.model.num_heads_bpd=4"
                  [seq]="--config.model.num_heads_bpd=6 --config.model.head_type=sequential"
                  [markov]="--config.model.num_heads_bpd=4 --config.model.markov_rank=32")
declare -A METHODS=([ffn]=ar,bpd,pbest_0gram,medusa,prompt_lookup,prompt_lookup_tree
                    [seq]=ar,sequential,sequential_tree,prompt_lookup_tree
                    [markov]=ar,markov,markov_tree)
for task in $TASKS; do
  for heads in ffn seq markov; do
    workdir=workdirs/ft_ts_${task}_$heads
    # shellcheck disable=SC2086
    "$PY" train.py --config=configs/finetune_tinystories.py:"$task" --workdir="$workdir" \
        --config.init.workdir=workdirs/"${PARENT[$heads]}" ${MODEL[$heads]}
    for temperature in 0 1; do
      dir=$OUT/$task/$heads/t$temperature
      [ -f "$dir/report.json" ] || "$PY" decode.py --workdir="$workdir" --output="$dir" \
          --tasks="$task" --methods="${METHODS[$heads]}" --num_examples="$NUM" \
          --max_new_tokens="$MAX_NEW" --config.max_prompt_tokens=192 \
          --config.temperature="$temperature" --record_topk=0
    done
  done
done
# The paper's refinements of the fine-tuned ffn heads: local (the TinyStories rescorer) and the
# n-gram DP with the 4-gram LM of the distillation data (ngram:4) and of the task's fine-tuning
# targets (ngram:4ft, estimated from the sft workdir), greedy and at T = 1.
for task in $TASKS; do
  workdir=workdirs/ft_ts_${task}_ffn
  [ -f "$workdir/ngram4.arpa" ] || "$PY" -m bpdjax.ngram.estimate --workdir="$workdir" \
      --order=4 --output="$workdir/ngram4.arpa" --build_kenlm
  for temperature in 0 1; do
    for lm in 4 4ft; do
      dir=$OUT/$task/ffn_ngram$lm/t$temperature
      lm_args=(--methods=ar,local,ngram --ngram_arpa=workdirs/ts_ffn/ngram4.arpa
               --rescorer_workdir=workdirs/ts_rescorer)
      [ "$lm" = 4ft ] && lm_args=(--methods=ar,ngram --ngram_arpa="$workdir/ngram4.arpa")
      [ -f "$dir/report.json" ] || "$PY" decode.py --workdir="$workdir" --output="$dir" \
          --tasks="$task" "${lm_args[@]}" --num_examples="$NUM" \
          --max_new_tokens="$MAX_NEW" --config.max_prompt_tokens=192 \
          --config.temperature="$temperature" --record_topk=0
    done
  done
done
"$PY" -m benchmarks.pipelines.learned_drafts_tasks --out="$OUT"
