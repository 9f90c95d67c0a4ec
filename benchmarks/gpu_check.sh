#!/usr/bin/env bash
# The accelerator check, one command: the paper's setting at ~130M parameters (configs/gpu_base.py,
# 12 x 768, h = 9 FFN heads, bfloat16) trained on token shards of the local Wikipedia corpus for a
# wall-clock budget, then decoded and timed against its cost table and the memory-bandwidth floor.
#
#   bash benchmarks/gpu_check.sh OUT --prepare  # here (corpus, TensorFlow, network): inputs, wheels
#   bash benchmarks/gpu_check.sh OUT            # on the GPU / TPU machine, gpu_inputs/ and .whl/ beside
#   bash benchmarks/gpu_check.sh OUT --smoke    # any CPU: every stage on tiny shapes, in seconds
#
# Stages, each under its own timeout; the first that fails stops the check (the report still says
# what ran, and the exit status is 1):
#   probe           device and bandwidth (a large device copy: GB/s); no accelerator = an error
#   shards          token shards (made by --prepare, checked against the run's vocabulary) and the
#                   decode prompts: held-out documents of the shards, lambada contexts
#   train           train.py on the shards for TRAIN_SECONDS (config.max_train_seconds)
#   decode_heldout  ar, bpd, pbest_0gram, medusa (tree 64), auto at batch 1 and 8 on held-out
#   decode_lambada  Wikipedia / lambada prompts (benchmarks/decode_speed.py)
#   cost            the trained model's cost table (verify 1..9, trees 16 / 64), loop-overhead
#                   share, AR tokens/s against the bandwidth floor (benchmarks/gpu_floor.py)
# then OUT/gpu_check.md (stage times, the targets, every stage's table) and OUT/gpu_check.json.
#
# Environment: PY (python; default the checkout's .venv/bin/python when there is one, else
# python3), INPUTS (default gpu_inputs), TRAIN_SECONDS (180: the whole check then fits one
# 10-minute command on an H100-class machine; 240 where time allows).
# Pure-Python packages the accelerator image lacks travel as wheels in .whl/ (--prepare fetches
# them); they are installed into /tmp/bpdjax_site without a network.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # benchmarks/ scripts import the checkout's bpdjax
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT [--smoke | --prepare]}
MODE=${2:-full}
case "$MODE" in full|--smoke|--prepare) ;; *) echo "unknown mode $MODE (--smoke, --prepare)" >&2; exit 2;; esac
# The checkout's virtual environment when it has one (README's setup), else python3.
if [ -z "${PY:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PY=${PY:-python3}
export INPUTS=${INPUTS:-gpu_inputs}
TRAIN_SECONDS=${TRAIN_SECONDS:-180}
export PYTHONUNBUFFERED=1
# JAX's persistent compilation cache: a stage reuses the programs an earlier one compiled at the
# same shapes (the smoke's two decode stages share every one), as does a rerun into the same OUT.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}
mkdir -p "$OUT"
STAGES="$OUT/stages.tsv"
: > "$STAGES"

export CONFIG=bpdjax/configs/gpu_base.py TASK=wiki PROMPT_TOKENS=64
DECODE=(--methods=ar,bpd,pbest_0gram,medusa,auto --batch_sizes=1,8 --num_examples=8
        --max_new_tokens=128 --rounds=2 --config.max_prompt_tokens=256)
FLOOR=(--batch_sizes=1,8 --trees=16,64 --prompt_width=64 --max_new_tokens=128)
PROBE=()
T_PROBE=120 T_SHARDS=900 T_TRAIN=$((TRAIN_SECONDS + 120)) T_DECODE=240 T_COST=240
SMOKE=false
if [ "$MODE" = --smoke ]; then
  SMOKE=true
  export CONFIG=bpdjax/configs/gpu_base.py:smoke TASK=tiny_shakespeare PROMPT_TOKENS=16
  export INPUTS="$OUT/smoke_inputs"
  TRAIN_SECONDS=${SMOKE_TRAIN_SECONDS:-20}
  # auto gets fixed relative costs here (measuring its table per batch size compiles a program
  # of every verify size: minutes on a busy 2-core machine); the cost stage still measures one.
  # Prompts of at most 16 tokens: both decode stages pad to one width and share their programs.
  DECODE=(--methods=ar,bpd,pbest_0gram,medusa,auto --batch_sizes=1,8 --num_examples=8
          --max_new_tokens=16 --rounds=1 --config.max_prompt_tokens=16
          --config.options.auto.costs=1,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8)
  FLOOR=(--batch_sizes=1,8 --trees=16 --prompt_width=16 --max_new_tokens=16 --repeats=3
         --min_seconds=0.02)
  PROBE=(--smoke --probe_mib=16)
  T_PROBE=120 T_SHARDS=300 T_TRAIN=$((TRAIN_SECONDS + 240)) T_DECODE=900 T_COST=900
fi
WORKDIR="$OUT/workdir"
QUIET='^(I|W|E)[0-9]{4} |^normalizer|^WARNING: All log|^E0000|cuInit|oneDNN|cudart_stub|libtpu'

report() {
  "$PY" benchmarks/gpu_report.py --report="$OUT" --smoke="$SMOKE" 2>&1 | grep -v -E "$QUIET"
}

stage() {  # stage NAME TIMEOUT COMMAND...: runs it, keeps its log and tables, stops on failure.
  local name=$1 limit=$2; shift 2
  echo "== stage $name (timeout $limit s) =="
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "$rc" "$limit" >> "$STAGES"
  # The stage's tables: the markdown it wrote itself (decode_speed.py), else those of its log.
  [ -f "$OUT/$name.md" ] || grep -E '^\||^Trained model' "$OUT/$name.log" |
      sed '/^Trained model/G' > "$OUT/$name.md"
  if [ "$rc" = 0 ]; then
    cat "$OUT/$name.md"
  else
    grep -v -E "$QUIET" "$OUT/$name.log" | tail -n 60
    [ "$rc" = 124 ] && echo "stage $name: timed out after $limit s" >&2
    echo "stage $name failed (exit $rc); its log: $OUT/$name.log" >&2
    report > /dev/null
    exit 1
  fi
}

shards_and_prompts() {  # Shards (written here only if absent: needs the corpus and TensorFlow).
  set -e
  if [ ! -f "$INPUTS/shards/manifest.json" ]; then
    "$PY" -m bpdjax.data.text_shards --config="$CONFIG" --task="$TASK" --output="$INPUTS/shards"
  fi
  "$PY" benchmarks/gpu_report.py --prompts="$INPUTS" --config="$CONFIG" \
      --prompt_tokens="$PROMPT_TOKENS"
}
export -f shards_and_prompts

wheels() {  # The pure-Python packages the accelerator image lacks (its package list, KINDS.md).
  set -e
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
      ml_collections==1.1.0 nltk==3.10.4 defusedxml==0.7.1
  "$PY" -m pip wheel -q --no-deps -w .whl rouge_score==0.1.2   # An sdist only: built here.
  ls -la .whl
}
export -f wheels

if [ "$MODE" = --prepare ]; then
  stage wheels 600 bash -c wheels
  stage shards 3600 bash -c shards_and_prompts
  du -sh "$INPUTS" .whl
  echo "Carry $INPUTS and .whl to the accelerator machine, then run: bash benchmarks/gpu_check.sh OUT"
  exit 0
fi

if [ "$MODE" = full ] && ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/bpdjax_site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/bpdjax_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "
import importlib, sys
missing = []
for name in ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'sentencepiece',
             'nltk', 'rouge_score', 'numpy', 'absl'):
  try:
    importlib.import_module(name)
  except ImportError as e:
    missing.append(f'{name} ({e})')
sys.exit('missing Python packages: ' + ', '.join(missing) if missing else 0)
"; then
  echo "Put their wheels in .whl/ (bash benchmarks/gpu_check.sh OUT --prepare fetches them)." >&2
  exit 1
fi

stage probe "$T_PROBE" "$PY" benchmarks/gpu_floor.py --probe --json="$OUT/probe.json" "${PROBE[@]}"
stage shards "$T_SHARDS" bash -c shards_and_prompts
train_and_summary() {
  set -e
  "$PY" train.py --config="$CONFIG" --workdir="$WORKDIR" --config.data.token_dir="$INPUTS/shards" \
      --config.max_train_seconds="$TRAIN_SECONDS"
  "$PY" benchmarks/gpu_report.py --train_summary="$WORKDIR"
}
export -f train_and_summary
export WORKDIR TRAIN_SECONDS
stage train "$T_TRAIN" bash -c train_and_summary
for task in heldout lambada; do
  stage "decode_$task" "$T_DECODE" "$PY" benchmarks/decode_speed.py --workdir="$WORKDIR" \
      --tasks=jsonl --jsonl="$INPUTS/$task.jsonl" "${DECODE[@]}" --markdown="$OUT/decode_$task.md"
done
stage cost "$T_COST" "$PY" benchmarks/gpu_floor.py --workdir="$WORKDIR" \
    --probe_json="$OUT/probe.json" --json="$OUT/floor.json" "${FLOOR[@]}"
report
