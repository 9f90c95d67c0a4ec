#!/usr/bin/env bash
# The refinement table's resources for workdirs/small, each built once (a finished one is kept):
# the two CPU rescorers (configs/rescorer_{xs,s}.py with the BPD model's vocabulary, so they
# score its token ids) and the 2-gram / 4-gram LMs of its pretraining corpus (KenLM lmplz).
# Used by benchmarks/pipelines/refinement_pipeline.sh and benchmarks/pipelines/finetune_pipeline.sh.
#
# Measured on 2 idle cores: rescorer_xs 300 and rescorer_s 200 steps of 32 x 256 tokens ~5 and
# ~7 min; each n-gram LM under a minute (3M tokens).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
XS_STEPS=${XS_STEPS:-300}
S_STEPS=${S_STEPS:-200}

for size in xs s; do
  steps=$XS_STEPS; [[ $size == s ]] && steps=$S_STEPS
  "$PY" train.py --config=configs/rescorer_$size.py --workdir=workdirs/rescorer_$size \
      --config.data.vocab_path=workdirs/small/vocab.model --config.num_train_steps="$steps" \
      --config.warmup_steps=50 --config.eval_every_steps="$steps" \
      --config.checkpoint_every_steps=100
done
for order in 2 4; do
  prune="0 0"; [[ $order == 4 ]] && prune="0 0 1 1"   # 4-gram: singleton 3/4-grams dropped.
  [[ -f workdirs/small/ngram$order.arpa ]] || "$PY" -m bpdjax.ngram.estimate \
      --workdir=workdirs/small --order=$order --output=workdirs/small/ngram$order.arpa \
      --max_tokens=3000000 --prune="$prune" --build_kenlm
done
