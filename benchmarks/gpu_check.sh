#!/usr/bin/env bash
# The GPU check of cost-aware drafting, one command, under 8 minutes on one GPU:
#   (a) verify-cost tables (chains 1..9, trees of 16 and 64 nodes, relative to one AR step) for
#       the c4_1p5b shape, random weights, bfloat16, batch 1 and 8;
#   (b) ar / bpd / medusa / auto tokens/s and block efficiency on TinyStories-656K with trained
#       heads (workdirs/ts_ffn, README "Heads on a frozen pretrained model"), batch 1 and 8.
#
#   bash benchmarks/gpu_check.sh [WORKDIR] > gpu_check.txt
#
# On a machine whose Python lacks some of requirements.txt's pure-Python packages (e.g.
# ml_collections, seqio), put their wheels in .whl/ first (pip download --no-deps ...); they are
# installed from there without a network. JAX must already see the GPU (jax[cuda]).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import benchmarks.common and bpdjax from here
PY=${PY:-python3}
WORKDIR=${1:-workdirs/ts_ffn}
if [ -d .whl ]; then "$PY" -m pip install --quiet --no-index --find-links .whl .whl/*.whl || true; fi
"$PY" - <<'PY'
import jax
print("JAX", jax.__version__, "devices", jax.devices())
PY
echo "== (a) cost tables, c4_1p5b shape, bfloat16 =="
timeout 300 "$PY" benchmarks/cost_tables.py --shapes=c4_1p5b --dtype=bfloat16 \
    --batch_sizes=1,8 --trees=16,64 --repeats=5
echo "== (b) TinyStories-656K heads: ar, bpd, medusa, auto =="
timeout 300 "$PY" benchmarks/decode_speed.py --workdir="$WORKDIR" --tasks=jsonl \
    --jsonl=benchmarks/story_openings.jsonl --methods=ar,bpd,medusa,auto --num_examples=16 \
    --max_new_tokens=128 --batch_sizes=1,8 --rounds=3
