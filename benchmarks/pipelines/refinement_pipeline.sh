#!/usr/bin/env bash
# Issue #4's table end to end on this CPU: train configs/small.py, the two CPU rescorers and
# the 2-gram / 4-gram LMs, then tune alpha and write out/refinement/refinement.{json,md}.
#
#   bash benchmarks/pipelines/refinement_pipeline.sh            # resumes every finished or cut step
#
# Run it alone on the machine: every stage uses both cores. Measured on 2 cores: small 600 steps
# ~37 min (1,120 tok/s); rescorer_xs 300 and rescorer_s 200 steps of 32 x 256 tokens ~5 and
# ~7 min (8,000-9,200 and 3,700-3,900 tok/s); n-gram LMs under a minute; the table 48 min (per
# task 100 tuning examples x 16 tokens x 4 alphas, 100 reported examples x 32 tokens, batch 1;
# some other jobs shared the cores). Override the sizes with the variables below.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
XS_STEPS=${XS_STEPS:-300}
S_STEPS=${S_STEPS:-200}
NUM_TUNE=${NUM_TUNE:-100}
NUM_REPORT=${NUM_REPORT:-100}
TUNE_MAX_NEW=${TUNE_MAX_NEW:-16}
MAX_NEW=${MAX_NEW:-32}

"$PY" train.py --config=configs/small.py --workdir=workdirs/small
XS_STEPS=$XS_STEPS S_STEPS=$S_STEPS PY=$PY bash benchmarks/pipelines/refinement_resources.sh
"$PY" -m benchmarks.refinement_table --workdir=workdirs/small \
    --rescorers=xs=workdirs/rescorer_xs,s=workdirs/rescorer_s \
    --ngrams=2=workdirs/small/ngram2.arpa,4=workdirs/small/ngram4.arpa \
    --num_tune="$NUM_TUNE" --num_report="$NUM_REPORT" --tune_max_new_tokens="$TUNE_MAX_NEW" \
    --max_new_tokens="$MAX_NEW" \
    --output=out/refinement
