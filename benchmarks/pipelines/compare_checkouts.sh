#!/usr/bin/env bash
# Wall time of one command in two checkouts (before / after a change), alternating, and the
# ratio of the medians:
#
#   ROUNDS=5 bash benchmarks/pipelines/compare_checkouts.sh BEFORE_DIR AFTER_DIR -- \
#       .venv/bin/python decode.py --workdir=/tmp/ts_ffn_{} ... --output=/tmp/out_{}
#
# The command runs from each checkout's root (its own decode.py, its own bpdjax); "{}" in it
# becomes "before" or "after" (a workdir copy or an output folder per side). A python path in
# the command is taken as given, so both sides can share one environment. Prints each run's
# wall time and exit status, the lines of its output matching GREP (default: auto's cost-table
# and compile lines), then the medians and after / before. A failed run stops the comparison.
set -uo pipefail
BEFORE=${1:?usage: compare_checkouts.sh BEFORE_DIR AFTER_DIR -- COMMAND...}
AFTER=${2:?usage: compare_checkouts.sh BEFORE_DIR AFTER_DIR -- COMMAND...}
shift 2
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "no command after --" >&2; exit 2; }
ROUNDS=${ROUNDS:-5}
GREP=${GREP:-cost table measured in [0-9.]* s|[0-9]* decode programs compiled}
declare -A walls=([before]="" [after]="")
for round in $(seq 1 "$ROUNDS"); do
  for side in before after; do
    dir=$BEFORE; [ "$side" = after ] && dir=$AFTER
    args=("${@//\{\}/$side}")
    log=$(mktemp)
    t0=$(date +%s.%N)
    (cd "$dir" && "${args[@]}") > "$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    wall=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
    echo "$side round $round: exit $rc, wall $wall s; $(grep -oE "$GREP" "$log" | paste -sd ';' -)"
    if [ "$rc" != 0 ]; then tail -20 "$log"; rm -f "$log"; exit 1; fi
    rm -f "$log"
    walls[$side]+="$wall "
  done
done
python3 - "${walls[before]}" "${walls[after]}" <<'EOF'
import statistics, sys
before, after = ([float(x) for x in arg.split()] for arg in sys.argv[1:])
mb, ma = (max(statistics.median(x), 1e-3) for x in (before, after))
print(f"median before {mb:.1f} s, after {ma:.1f} s: after / before {ma / mb:.2f}x "
      f"(per round {', '.join(f'{a / max(b, 1e-3):.2f}' for b, a in zip(before, after))})")
EOF
