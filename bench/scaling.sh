#!/usr/bin/env bash
# How many remote cores can one reactor feed?  On an N-core machine (nproc), for each pool size P = 1..N-1:
# dataserv's reactor on CPU 0, its pool pinned to CPUs 1..P (--reactor-cpus 0 --pool-cpus 1-P), loadgen
# on CPU 0 too (taskset), one `loadgen compare` (sweep with --refine, loopback only); then the reactor
# model's predicted knee, min(P / w, 1 / r) (GIL-holding work: one core), beside each measured knee.
# Last, P = N on every CPU (--pool-cpus 0-(N-1), "N-shared"): one pool thread shares CPU 0 with the
# reactor and loadgen, and the model charges that core their CPU per request s = r + g (g: loadgen's, from
# its own CPU clock): min(P / (w + s), 1 / s).  On 2 CPUs that gives pool 1 and pool 2.
# Runs unchanged on 2 or 16 cores; every run is bounded by `timeout`.  Writes OUT/pool-P/ (compare's
# files) and OUT/summary.tsv, and prints the summary.
#
#   bench/scaling.sh [--dry-run] [--cpus N] [--out DIR] [--dispatch LIST] [--work-kind LIST]
#                    [--work-ms MS] [--step-duration D] [--refine N]
#   bench/scaling.sh --summarize DIR
#
# --dry-run prints the plan (one command per pool size) and runs nothing; --cpus N plans for N CPUs
# instead of nproc's count (with --dry-run, to see a bigger machine's plan); --summarize DIR only
# writes and prints DIR/summary.tsv from DIR/pool-*/results.json.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "scaling.sh: $*" >&2; exit 2; }

dry_run=0
summarize_only=0
cpus=$(nproc)
out="bench/scaling-$(date -u +%Y%m%dT%H%M%SZ)"
dispatch=threads
work_kind=pbkdf2
work_ms=4
step_duration=2s
refine=2
run_limit_s=900  # one pool size's compare: a few sweeps of a few seconds a step; far less in practice

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --summarize) summarize_only=1; out=${2:?--summarize needs a directory}; shift ;;
        --cpus) cpus=${2:?--cpus needs a number}; shift ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        --dispatch) dispatch=${2:?--dispatch needs a list}; shift ;;
        --work-kind) work_kind=${2:?--work-kind needs a list}; shift ;;
        --work-ms) work_ms=${2:?--work-ms needs a number}; shift ;;
        --step-duration) step_duration=${2:?--step-duration needs a duration}; shift ;;
        --refine) refine=${2:?--refine needs a number}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done
python=${PYTHON:-python}

# DIR/summary.tsv: predicted against measured knee per pool size (loadgen.lib.reactor_model.scaling_table).
summarize() {
    "$python" - "$out" <<'EOF' | tee "$out/summary.tsv"
import json
import pathlib
import sys

from loadgen.lib.reactor_model import scaling_table

out = pathlib.Path(sys.argv[1])
runs = {p.parent.name.split("-", 1)[1]: json.loads(p.read_text()) for p in out.glob("pool-*/results.json")}
print("\n".join(scaling_table(runs)))
EOF
}

if [ "$summarize_only" = 1 ]; then
    [ -d "$out" ] || die "--summarize: no directory $out"
    summarize
    exit 0
fi

[[ "$cpus" =~ ^[0-9]+$ ]] || die "--cpus must be a whole number, got $cpus"
[ "$cpus" -ge 2 ] || die "needs at least 2 CPUs (CPU 0 for the reactor and loadgen, 1.. for the pool); have $cpus"

[ "$dry_run" = 1 ] || [ "$cpus" -le "$(nproc)" ] || die "--cpus $cpus is more than this machine's $(nproc) (plan it with --dry-run)"
[[ "$refine" =~ ^[0-9]+$ ]] || die "--refine must be a whole number, got $refine"

# One pool size's command, into the array cmd: on CPU 0, bounded.  $1: the pool size; $2: the work's
# iteration count (empty: calibrate); $3: "shared" for the pool on CPUs 0..P-1 (CPU 0 the reactor's too).
compare_cmd() {
    local pool=$1 iterations=${2:-} shared=${3:-} pool_cpus=1 label=$1
    [ "$pool" -gt 1 ] && pool_cpus="1-$pool"
    if [ "$shared" = shared ]; then pool_cpus="0-$((pool - 1))"; label="$pool-shared"; fi
    cmd=(timeout --kill-after=30 "$run_limit_s" taskset -c 0 "$python" -m loadgen compare
         --dispatch "$dispatch" --work-kind "$work_kind" --connection keep-alive --pool-size "$pool"
         --work-ms "$work_ms" --step-duration "$step_duration" --overload-duration 1s --refine "$refine"
         --server-cpus "0-$((cpus - 1))" --server-arg=--reactor-cpus=0 "--server-arg=--pool-cpus=$pool_cpus")
    [ -n "$iterations" ] && cmd+=("--server-arg=--work-iterations=$iterations")
    cmd+=(--out-dir "$out/pool-$label" --quiet)
}

if [ "$dry_run" = 1 ]; then
    echo "# $cpus CPUs: reactor and loadgen on CPU 0, pool on CPUs 1..P for P = 1..$((cpus - 1)); K: pool 1's work iterations"
    for pool in $(seq 1 $((cpus - 1))); do
        iterations=K
        if [ "$pool" = 1 ] || [[ "$work_kind" == *,* ]]; then iterations=""; fi
        compare_cmd "$pool" "$iterations"
        echo "${cmd[*]}"
    done
    compare_cmd "$cpus" K shared
    echo "${cmd[*]}"
    exit 0
fi

mkdir -p "$out"
iterations=""
for pool in $(seq 1 $((cpus - 1))); do
    echo "scaling.sh: pool $pool of $((cpus - 1))" >&2
    compare_cmd "$pool" "$iterations"
    "${cmd[@]}" >"$out/pool-$pool.log" 2>&1 || echo "scaling.sh: pool $pool failed (see $out/pool-$pool.log)" >&2
    if [ -z "$iterations" ] && [[ "$work_kind" != *,* ]] && [ -f "$out/pool-$pool/results.json" ]; then
        # every pool size runs the work that the first calibrated, so w is the same throughout (one
        # work kind only: compare itself pins each kind's count within a run)
        iterations=$("$python" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(next((e["work_iterations"] for e in d["configurations"] if e.get("work_iterations")), ""))' \
            "$out/pool-$pool/results.json")
    fi
done
echo "scaling.sh: pool $cpus on every CPU (one pool thread beside the reactor and loadgen)" >&2
compare_cmd "$cpus" "$iterations" shared
"${cmd[@]}" >"$out/pool-$cpus-shared.log" 2>&1 ||
    echo "scaling.sh: pool $cpus shared failed (see $out/pool-$cpus-shared.log)" >&2

summarize
