#!/usr/bin/env bash
# Instructions per call, counted by valgrind (callgrind): a deterministic measure of the
# gateway's own work, for a machine where wall-clock throughput swings by ±20% from one minute
# to the next. One command, on loopback:
#
#   benches/callgrind.sh                         # the release binary of this checkout
#   TOLLGATE_BIN=/path/to/other benches/callgrind.sh   # another build, to compare
#
# It starts its own nginx origin and Redis, then runs the gateway under
# `valgrind --tool=callgrind` with instrumentation off, and for each scenario warms up, switches
# instrumentation on, drives CALLS-ish calls with wrk (8 connections, DURATION), switches it off
# and reads the instruction total. Scenarios, each on a gateway of its own:
#   unmetered          `auth: none` route: the proxy alone
#   metered            API key + one reservation in Redis (batched with concurrent calls)
#   metered+telemetry  the same with a `telemetry` section (spool + redis_stream sink): every
#                      thread's instructions, so the spool writer and the sink count too
# and prints instructions per call and the ratios. User space only: the kernel's socket work
# (about half of a call's CPU time here) is not counted, so these ratios are not throughput
# ratios; they tell whether a change to the gateway's code made a call cheaper, independent of
# how busy the machine is. Valgrind runs the gateway ~50x slower, so a run takes about a minute.
#
# Knobs (environment, or NAME=value arguments): DURATION (8s), SKIP_BUILD (0), TOLLGATE_BIN, RESULTS_DIR,
# SERVER_EXTRA (more `server` settings for every gateway, e.g. SERVER_EXTRA="request_id: true"),
# TELEMETRY_SINK (stream, or file: the telemetry scenario's sink)
# (target/load/callgrind-<UTC time>; keeps the callgrind.out files for callgrind_annotate).
# Needs: valgrind, nginx, redis-server, redis-cli, wrk, curl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=callgrind
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args "$@"
DURATION=${DURATION:-8s}
bench_setup callgrind-
for cmd in valgrind callgrind_control nginx redis-server redis-cli wrk curl; do
  command -v "$cmd" >/dev/null 2>&1 ||
    die "$cmd is missing (apt-get install -y valgrind nginx-light redis-server redis-tools wrk curl)"
done
LOAD_PIN=()
release_bin

scratch callgrind
free_port ORIGIN_PORT
free_port REDIS_PORT
start_plain_origin
start_redis

bench_key

# measure NAME PATH TELEMETRY -> "NAME calls instructions"
measure() {
  local name=$1 path=$2 telemetry=$3 port pid n total out
  free_port port
  two_route_gateway "$port" "$telemetry" >"$TMP/$name.yaml"
  "$BIN" check --config "$TMP/$name.yaml" >/dev/null
  TOLLGATE_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$RESULTS_DIR/callgrind.$name.%p" \
    "$BIN" serve --config "$TMP/$name.yaml" >"$RESULTS_DIR/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_until 120 "$pid" "tollgate ($name)" curl -fsS --max-time 2 "http://127.0.0.1:$port/open"
  local url="http://127.0.0.1:$port$path"
  wrk -t1 -c8 -d3s -H "Authorization: Bearer $KEY" "$url" >/dev/null 2>&1
  sleep 1 # the warm-up's events reach the spool and the sink before counting starts
  callgrind_control -z "$pid" >/dev/null 2>&1
  callgrind_control -i on "$pid" >/dev/null 2>&1
  wrk -t1 -c8 -d"$DURATION" -H "Authorization: Bearer $KEY" "$url" >"$RESULTS_DIR/$name.wrk" 2>&1
  # Events of the last calls are still on their way through the spool to the sink.
  [[ $telemetry == 1 ]] && sleep 1.5
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$name" "$pid" >/dev/null 2>&1
  n=$(awk '/ requests in /{ print $1 }' "$RESULTS_DIR/$name.wrk")
  out=$(ls -t "$RESULTS_DIR"/callgrind."$name".*.* | head -1)
  total=$(awk '/^totals:/{ print $2; exit }' "$out")
  grep -q "Non-2xx" "$RESULTS_DIR/$name.wrk" && die "$name: wrk saw non-2xx answers"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$name $n $total"
}

log "binary: $BIN"
{
  measure unmetered /open 0
  measure metered / 0
  measure metered+telemetry / 1
} >"$RESULTS_DIR/results.txt"

awk -v stamp="$STAMP" '
  { name[NR] = $1; calls[NR] = $2; per[NR] = $3 / $2 }
  END {
    printf "instructions per call (callgrind, user space, all threads) — %s\n", stamp
    for (i = 1; i <= NR; i++) printf "  %-20s %8.0f   (%d calls)\n", name[i], per[i], calls[i]
    printf "  metered / unmetered instructions:            %.3f\n", per[2] / per[1]
    printf "  metered+telemetry / metered instructions:    %.3f\n", per[3] / per[2]
  }' "$RESULTS_DIR/results.txt" | tee "$RESULTS_DIR/summary.txt"
log "callgrind outputs: $RESULTS_DIR (callgrind_annotate <file>)"
