#!/usr/bin/env bash
# What does telemetry cost the request path? The metered route with telemetry off and on,
# measured side by side in one run, on loopback:
#
#   benches/telemetry.sh                  # DURATION=10s ROUNDS=5 by default
#
# Two gateways from the same release binary and the same config, except that one has a
# `telemetry` section (spool in a temporary directory; a redis_stream sink on the store's Redis,
# or with SINKS=file a file sink, or both with SINKS=stream+file), so every call's event is
# encoded, queued, appended to the spool with fsync and delivered. Both run pinned to CPU 0 with
# server.threads: 1 and are driven one at a time by wrk on CPU 1, where nginx (the origin) and
# Redis (the store and the event stream) run too. Rounds alternate which
# gateway goes first; the table shows medians and the median of per-round ratios.
#
# After the runs every event must be in every sink: the script waits for the spool to drain,
# compares the distinct event ids in the stream (and the file's lines) with the events the spool
# took, and checks that none was dropped.
#
# TOGETHER=1 drives every gateway at the same time in each round instead of one after the other,
# all still on CPU 0: the machine's swings (a shared VM's throughput can move by a fifth from one
# second to the next) then fall on every gateway alike, and the ratio of gateway CPU per request
# (all threads, telemetry's included, per call served) is what to read. The req/s of each is its
# share of the core, not its throughput alone; on a core a gateway has to itself (the default
# mode) throughput is the inverse of CPU per request.
#
# SINKS=stream,file (a comma) runs three gateways instead: telemetry off, on with the stream
# sink only, and on with the file sink only, in rotating order, so the two sinks are compared
# under the same minutes of a noisy machine; the table then has a row and a ratio for each.
#
# Knobs (environment, or NAME=value arguments): SINKS (stream, file, stream+file, or a comma-separated list of them),
# STREAM_REDIS (store: the stream on
# the store's Redis; own: on a Redis of its own), BATCH (512, `telemetry.batch`: events per
# spool write and per delivery), DURATION (10s), ROUNDS (5),
# CONNECTIONS (32), WARMUP (2s), PIN (1), TOGETHER (0),
# RESULTS_DIR (target/load/telemetry-<UTC time>), SKIP_BUILD (0), TOLLGATE_LOG (warn),
# TOLLGATE_BIN (another build to measure, e.g. an earlier commit's, for a before/after run),
# HALT_POLL_NS (unset; a KVM guest's halt polling for the run, see benches/lib.sh).
# Needs: cargo, nginx, redis-server, redis-cli, wrk, curl, taskset.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=telemetry
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args "$@"

ROUNDS=${ROUNDS:-5}
SINKS=${SINKS:-stream}
IFS=, read -r -a VARIANTS <<<"$SINKS"
for v in "${VARIANTS[@]}"; do
  [[ $v == stream || $v == file || $v == stream+file ]] ||
    { echo "SINKS must be stream, file or stream+file, or a comma-separated list of them" >&2; exit 1; }
done
# The telemetry-on gateways: "on" alone, or "on-<sinks>" each when SINKS lists several.
if ((${#VARIANTS[@]} == 1)); then
  ONS=(on)
else
  ONS=("${VARIANTS[@]/#/on-}")
fi
declare -A SINKS_OF
for i in "${!ONS[@]}"; do SINKS_OF[${ONS[$i]}]=${VARIANTS[$i]}; done
bench_setup telemetry-

ab_prologue

scratch telemetry

free_port ORIGIN_PORT
free_port REDIS_PORT
declare -A PORT ADMIN PID
for which in off "${ONS[@]}"; do
  free_port gw_port
  PORT[$which]=$gw_port
  free_port admin_port
  ADMIN[$which]=$admin_port
done

start_plain_origin

start_redis
# STREAM_REDIS=own: the event stream gets a Redis of its own (same CPU), not the store's.
STREAM_PORT=$REDIS_PORT
if [[ ${STREAM_REDIS:-store} == own ]]; then
  STORE_PORT=$REDIS_PORT
  free_port REDIS_PORT
  start_redis
  STREAM_PORT=$REDIS_PORT
  REDIS_PORT=$STORE_PORT
fi

bench_key
# gateway_config PORT: the shared part of both configs.
gateway_config() {
  metered_gateway "$1"
  cat <<CONF
routes: [{ name: metered, match: { path_prefix: / }, upstream: origin, meter: { requests: 1 } }]
CONF
}
# Every gateway has an admin listener (the "on" ones' serve the metrics read after the runs), so
# the configs differ only in `telemetry`. Each "on" gateway has its own spool, and its own stream
# (when it has a stream sink).
{
  gateway_config "${PORT[off]}"
  echo "admin: { listen: \"127.0.0.1:${ADMIN[off]}\" }"
} >"$TMP/off.yaml"
declare -A STREAM_OF FILE_OF
for which in "${ONS[@]}"; do
  STREAM_OF[$which]=tollgate:events${which#on}
  FILE_OF[$which]=$TMP/events-$which.jsonl
  {
    gateway_config "${PORT[$which]}"
    cat <<CONF
admin: { listen: "127.0.0.1:${ADMIN[$which]}" }
telemetry:
  spool: "$TMP/spool-$which"
  instance: bench
  flush_interval: ${FLUSH_INTERVAL:-20ms}
  batch: ${BATCH:-512}
  sinks:
CONF
    [[ ${SINKS_OF[$which]} == file ]] ||
      echo "    - { kind: redis_stream, url: \"redis://127.0.0.1:$STREAM_PORT/1\", stream: \"${STREAM_OF[$which]}\", max_len: 100000000 }"
    [[ ${SINKS_OF[$which]} == stream ]] || echo "    - { kind: file, path: \"${FILE_OF[$which]}\" }"
  } >"$TMP/$which.yaml"
done
AUTH=(-H "Authorization: Bearer $KEY")
for which in off "${ONS[@]}"; do
  "$BIN" check --config "$TMP/$which.yaml" >/dev/null || die "tollgate check rejected $which.yaml"
  sed "s/$KEY_SHA/<sha256>/" "$TMP/$which.yaml" >"$RESULTS_DIR/$which.yaml"
  TOLLGATE_LOG=${TOLLGATE_LOG:-warn} "${GW_PIN[@]}" "$BIN" serve --config "$TMP/$which.yaml" \
    >"$RESULTS_DIR/tollgate-$which.log" 2>&1 &
  PIDS+=($!)
  PID[$which]=$!
done
for which in off "${ONS[@]}"; do
  wait_until 30 "${PID[$which]}" "gateway ($which)" curl -fsS --max-time 1 "${AUTH[@]}" "http://127.0.0.1:${PORT[$which]}/"
done

# proxy_ticks PID: CPU time (clock ticks) of the gateway's proxy worker threads only.
proxy_ticks() {
  local t sum=0 stat
  for t in /proc/"$1"/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == "tollgate proxy" ]] || continue
    stat=$(cat "$t/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    sum=$((sum + $(awk '{ print $12 + $13 }' <<<"$stat")))
  done
  echo "$sum"
}

# run WHICH ROUND: warm-up, then the measured run; prints
# "rps p50 p99 gw_us_per_request proxy_thread_us_per_request".
run() {
  local which=$1 r=$2 port=${PORT[$1]} pid=${PID[$1]} t0 t1 p0 p1 parsed
  run_wrk "$RESULTS_DIR/$which.$r.warmup.txt" "$WARM_BOUND" -t1 -c"$CONNECTIONS" -d"$WARMUP" \
    "${AUTH[@]}" "http://127.0.0.1:$port/" || die "wrk warm-up failed"
  t0=$(proc_ticks "$pid")
  p0=$(proxy_ticks "$pid")
  run_wrk "$RESULTS_DIR/$which.$r.txt" "$WRK_BOUND" -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
    "${AUTH[@]}" "http://127.0.0.1:$port/" || die "wrk failed"
  t1=$(proc_ticks "$pid")
  p1=$(proxy_ticks "$pid")
  parsed=$(parse_wrk "$RESULTS_DIR/$which.$r.txt") || die "unreadable wrk output"
  read -r rps p50 p99 reqs non2xx errs <<<"$parsed"
  ((non2xx == 0 && errs == 0)) || log "warning: $which round $r: $non2xx non-2xx, $errs socket errors"
  echo "$rps $p50 $p99 $(us_per_req $((t1 - t0)) "$reqs") $(us_per_req $((p1 - p0)) "$reqs")"
}

# run_together ROUND: every gateway's warm-up at once, then every gateway's measured run at once
# (TOGETHER=1); writes TMP/<which>.parsed as `run` prints.
run_together() {
  local r=$1 which pids=() t0 p0 t1 p1 parsed
  declare -A T0 P0
  for which in "${ALL[@]}"; do
    timeout "$WARM_BOUND" "${LOAD_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${AUTH[@]}" \
      "http://127.0.0.1:${PORT[$which]}/" >"$RESULTS_DIR/$which.$r.warmup.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || die "wrk warm-up failed"
  pids=()
  for which in "${ALL[@]}"; do
    T0[$which]=$(proc_ticks "${PID[$which]}")
    P0[$which]=$(proxy_ticks "${PID[$which]}")
  done
  for which in "${ALL[@]}"; do
    timeout "$WRK_BOUND" "${LOAD_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
      "${AUTH[@]}" "http://127.0.0.1:${PORT[$which]}/" >"$RESULTS_DIR/$which.$r.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || die "wrk failed"
  for which in "${ALL[@]}"; do
    t1=$(proc_ticks "${PID[$which]}")
    p1=$(proxy_ticks "${PID[$which]}")
    parsed=$(parse_wrk "$RESULTS_DIR/$which.$r.txt") || die "unreadable wrk output"
    read -r rps p50 p99 reqs non2xx errs <<<"$parsed"
    ((non2xx == 0 && errs == 0)) || log "warning: $which round $r: $non2xx non-2xx, $errs socket errors"
    echo "$rps $p50 $p99 $(us_per_req $((t1 - T0[$which])) "$reqs") $(us_per_req $((p1 - P0[$which])) "$reqs")" \
      >"$TMP/$which.parsed"
  done
}

# rounds.txt, one line per round: the round, then for "off" and each "on" gateway in turn its
# rps p50 p99 gw-us proxy-us, and after those, for each "on" gateway, the rps ratio and the
# ratio of gateway CPU per request (on/off).
: >"$RESULTS_DIR/rounds.txt"
ALL=(off "${ONS[@]}")
for ((r = 1; r <= ROUNDS; r++)); do
  # Rotate which gateway goes first (with two: off, on in odd rounds, on, off in even ones).
  order=()
  for ((k = 0; k < ${#ALL[@]}; k++)); do order+=("${ALL[$(((k + r - 1) % ${#ALL[@]}))]}"); done
  if [[ ${TOGETHER:-0} == 1 ]]; then
    log "round $r/$ROUNDS: every gateway at once"
    run_together "$r"
  else
    for which in "${order[@]}"; do
      log "round $r/$ROUNDS: telemetry $which"
      run "$which" "$r" >"$TMP/$which.parsed"
    done
  fi
  read -r a_rps _ _ a_us _ <"$TMP/off.parsed"
  line="$r $(cat "$TMP/off.parsed")"
  ratios=""
  summary="off $a_rps req/s"
  for which in "${ONS[@]}"; do
    read -r b_rps _ _ b_us _ <"$TMP/$which.parsed"
    line+=" $(cat "$TMP/$which.parsed")"
    ratios+=" $(awk -v b="$b_rps" -v a="$a_rps" 'BEGIN { printf "%.4f", b / a }')"
    ratios+=" $(awk -v b="$b_us" -v a="$a_us" 'BEGIN { printf "%.4f", (a > 0 ? b / a : 0) }')"
    summary+=", $which $b_rps req/s"
  done
  echo "$line$ratios" >>"$RESULTS_DIR/rounds.txt"
  log "round $r: $summary"
done

# Every event each spool took must reach its sinks, and none may have been dropped.
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 { s += $NF } END { printf "%d\n", s }'; }
lost=0
events_notes=()
for which in "${ONS[@]}"; do
  admin=${ADMIN[$which]}
  for _ in $(seq 1 600); do
    [[ $(metric "$admin" 'tollgate_events_spooled ') == 0 ]] && break
    sleep 0.1
  done
  spooled=$(metric "$admin" 'tollgate_events_total{result="spooled",sink="spool"}')
  dropped=$(metric "$admin" 'tollgate_events_dropped_total')
  # Delivery is at least once: a batch retried after a timeout can land twice, so count ids.
  if [[ ${SINKS_OF[$which]} == file ]]; then
    unique_in_stream=$spooled
    stream_note="no stream sink"
  else
    stream=${STREAM_OF[$which]}
    in_stream=$(redis-cli -p "$STREAM_PORT" -n 1 xlen "$stream")
    unique_in_stream=$(redis-cli -p "$STREAM_PORT" -n 1 --raw xrange "$stream" - + |
      grep -o '"id":"[^"]*"' | sort -u | wc -l)
    stream_note="in the stream $in_stream ($unique_in_stream distinct ids)"
  fi
  if [[ ${SINKS_OF[$which]} == stream ]]; then
    in_file=$spooled
    file_note="no file sink"
  else
    in_file=$(wc -l <"${FILE_OF[$which]}")
    file_note="in the file $in_file"
  fi
  prefix=$([[ ${#ONS[@]} -gt 1 ]] && echo "$which: " || echo "")
  events_notes+=("events: ${prefix}spooled $spooled, $stream_note, $file_note, dropped $dropped")
  ((spooled > 0 && unique_in_stream == spooled && in_file >= spooled && dropped == 0)) || lost=1
done

col() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/rounds.txt" | median; }
# per_round COLUMN: the column's value in every round, three decimals.
per_round() { awk -v c="$1" '{ printf "%s%.3f", (NR > 1 ? " " : ""), $c }' "$RESULTS_DIR/rounds.txt"; }
{
  echo
  if [[ -n ${TOLLGATE_BIN:-} ]]; then
    echo "telemetry cost on the metered route — $STAMP, binary $TOLLGATE_BIN"
  else
    echo "telemetry cost on the metered route — $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  fi
  [[ ${TOGETHER:-0} == 1 ]] && echo "TOGETHER=1: the gateways shared CPU 0 and were driven at the same time;" \
    "compare the gateway CPU per request (req/s is each gateway's share of the core)"
  echo "loopback; wrk -t1 -c$CONNECTIONS -d$DURATION; server.threads: 1; flush_interval ${FLUSH_INTERVAL:-20ms};" \
    "$([[ ${#GW_PIN[@]} -gt 0 ]] && echo "gateways on CPU 0, wrk + nginx + redis on CPU 1" || echo "no CPU pinning")"
  echo "$HALT_POLL_NOTE"
  printf '%-30s %9s %8s %8s %9s %9s\n' "" "req/s" "p50 ms" "p99 ms" "gw us/r" "proxy us/r"
  printf '%-30s %9.0f %8.3f %8.3f %9s %9s\n' "telemetry off *" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)"
  base=7
  for which in "${ONS[@]}"; do
    printf '%-30s %9.0f %8.3f %8.3f %9s %9s\n' "telemetry on (${SINKS_OF[$which]}) *" "$(col $base)" \
      "$(col $((base + 1)))" "$(col $((base + 2)))" "$(col $((base + 3)))" "$(col $((base + 4)))"
    base=$((base + 5))
  done
  for which in "${ONS[@]}"; do
    label=$([[ ${#ONS[@]} -gt 1 ]] && echo "on (${SINKS_OF[$which]})/off" || echo "on/off")
    printf '%s req/s: %.3f (median of per-round ratios: %s)\n' "$label" "$(col $base)" "$(per_round $base)"
    printf '%s gateway CPU per request: %.3f (median of per-round ratios: %s)\n' "$label" \
      "$(col $((base + 1)))" "$(per_round $((base + 1)))"
    base=$((base + 2))
  done
  echo "* median of $ROUNDS rounds; gw us/r = gateway CPU microseconds per request, all threads;"
  echo "  proxy us/r = the proxy worker threads only (the request path; telemetry's background"
  echo "  thread and its blocking writes are the difference)"
  printf '%s\n' "${events_notes[@]}"
  echo "raw outputs: $RESULTS_DIR"
} | tee "$RESULTS_DIR/summary.txt"
((lost == 0)) || die "events were lost or dropped (see above)"
