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
# Knobs (environment): SINKS (stream, file or stream+file), STREAM_REDIS (store: the stream on
# the store's Redis; own: on a Redis of its own), BATCH (512, `telemetry.batch`: events per
# spool write and per delivery), DURATION (10s), ROUNDS (5),
# CONNECTIONS (32), WARMUP (2s), PIN (1),
# RESULTS_DIR (target/load/telemetry-<UTC time>), SKIP_BUILD (0), TOLLGATE_LOG (warn),
# TOLLGATE_BIN (another build to measure, e.g. an earlier commit's, for a before/after run),
# HALT_POLL_NS (unset; a KVM guest's halt polling for the run, see benches/lib.sh).
# Needs: cargo, nginx, redis-server, redis-cli, wrk, curl, taskset.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SINKS=${SINKS:-stream}
[[ $SINKS == stream || $SINKS == file || $SINKS == stream+file ]] ||
  { echo "SINKS must be stream, file or stream+file" >&2; exit 1; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=telemetry
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_setup telemetry-

ab_prologue

scratch telemetry

free_port ORIGIN_PORT
free_port REDIS_PORT
free_port OFF_PORT
free_port ON_PORT
free_port ON_ADMIN
free_port OFF_ADMIN

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
# Both have an admin listener (the "on" one's serves the metrics read after the runs), so the
# two configs differ only in `telemetry`.
{
  gateway_config "$OFF_PORT"
  echo "admin: { listen: \"127.0.0.1:$OFF_ADMIN\" }"
} >"$TMP/off.yaml"
{
  gateway_config "$ON_PORT"
  cat <<CONF
admin: { listen: "127.0.0.1:$ON_ADMIN" }
telemetry:
  spool: "$TMP/spool"
  instance: bench
  flush_interval: ${FLUSH_INTERVAL:-20ms}
  batch: ${BATCH:-512}
  sinks:
CONF
  [[ $SINKS == file ]] ||
    echo "    - { kind: redis_stream, url: \"redis://127.0.0.1:$STREAM_PORT/1\", stream: \"tollgate:events\", max_len: 100000000 }"
  [[ $SINKS == stream ]] || echo "    - { kind: file, path: \"$TMP/events.jsonl\" }"
} >"$TMP/on.yaml"
for which in off on; do
  "$BIN" check --config "$TMP/$which.yaml" >/dev/null || die "tollgate check rejected $which.yaml"
  sed "s/$KEY_SHA/<sha256>/" "$TMP/$which.yaml" >"$RESULTS_DIR/$which.yaml"
  TOLLGATE_LOG=${TOLLGATE_LOG:-warn} "${GW_PIN[@]}" "$BIN" serve --config "$TMP/$which.yaml" \
    >"$RESULTS_DIR/tollgate-$which.log" 2>&1 &
  PIDS+=($!)
  printf -v "PID_${which^^}" '%s' "$!"
done
AUTH=(-H "Authorization: Bearer $KEY")
wait_until 30 "$PID_OFF" "gateway (off)" curl -fsS --max-time 1 "${AUTH[@]}" "http://127.0.0.1:$OFF_PORT/"
wait_until 30 "$PID_ON" "gateway (on)" curl -fsS --max-time 1 "${AUTH[@]}" "http://127.0.0.1:$ON_PORT/"

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
  local which=$1 r=$2 port pid t0 t1 p0 p1 parsed
  port=$([[ $1 == on ]] && echo "$ON_PORT" || echo "$OFF_PORT")
  pid=$([[ $1 == on ]] && echo "$PID_ON" || echo "$PID_OFF")
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

: >"$RESULTS_DIR/rounds.txt"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(off on); else order=(on off); fi
  for which in "${order[@]}"; do
    log "round $r/$ROUNDS: telemetry $which"
    run "$which" "$r" >"$TMP/$which.parsed"
  done
  read -r a_rps a_p50 a_p99 a_us a_px <"$TMP/off.parsed"
  read -r b_rps b_p50 b_p99 b_us b_px <"$TMP/on.parsed"
  # columns: 1 round, 2-6 off rps p50 p99 gw-us proxy-us, 7-11 the same on, 12 rps ratio,
  # 13 ratio of gateway CPU per request (on/off)
  echo "$r $a_rps $a_p50 $a_p99 $a_us $a_px $b_rps $b_p50 $b_p99 $b_us $b_px" \
    "$(awk -v b="$b_rps" -v a="$a_rps" 'BEGIN { printf "%.4f", b / a }')" \
    "$(awk -v b="$b_us" -v a="$a_us" 'BEGIN { printf "%.4f", (a > 0 ? b / a : 0) }')" >>"$RESULTS_DIR/rounds.txt"
  log "round $r: off $a_rps req/s, on $b_rps req/s"
done

# Every event the spool took must reach both sinks, and none may have been dropped.
metric() { curl -fsS "http://127.0.0.1:$ON_ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%d\n", s }'; }
for _ in $(seq 1 600); do
  [[ $(metric 'tollgate_events_spooled ') == 0 ]] && break
  sleep 0.1
done
spooled=$(metric 'tollgate_events_total{result="spooled",sink="spool"}')
dropped=$(metric 'tollgate_events_dropped_total')
# Delivery is at least once: a batch retried after a timeout can land twice, so count ids.
if [[ $SINKS == file ]]; then
  unique_in_stream=$spooled
  stream_note="no stream sink"
else
  in_stream=$(redis-cli -p "$STREAM_PORT" -n 1 xlen tollgate:events)
  unique_in_stream=$(redis-cli -p "$STREAM_PORT" -n 1 --raw xrange tollgate:events - + |
    grep -o '"id":"[^"]*"' | sort -u | wc -l)
  stream_note="in the stream $in_stream ($unique_in_stream distinct ids)"
fi
if [[ $SINKS == stream ]]; then
  in_file=$spooled
  file_note="no file sink"
else
  in_file=$(wc -l <"$TMP/events.jsonl")
  file_note="in the file $in_file"
fi

col() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/rounds.txt" | median; }
{
  echo
  if [[ -n ${TOLLGATE_BIN:-} ]]; then
    echo "telemetry cost on the metered route — $STAMP, binary $TOLLGATE_BIN"
  else
    echo "telemetry cost on the metered route — $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  fi
  echo "loopback; wrk -t1 -c$CONNECTIONS -d$DURATION; server.threads: 1; flush_interval ${FLUSH_INTERVAL:-20ms};" \
    "$([[ ${#GW_PIN[@]} -gt 0 ]] && echo "gateways on CPU 0, wrk + nginx + redis on CPU 1" || echo "no CPU pinning")"
  echo "$HALT_POLL_NOTE"
  printf '%-30s %9s %8s %8s %9s %9s\n' "" "req/s" "p50 ms" "p99 ms" "gw us/r" "proxy us/r"
  printf '%-30s %9.0f %8.3f %8.3f %9s %9s\n' "telemetry off *" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)"
  printf '%-30s %9.0f %8.3f %8.3f %9s %9s\n' "telemetry on ($SINKS) *" "$(col 7)" "$(col 8)" "$(col 9)" "$(col 10)" "$(col 11)"
  printf 'on/off req/s: %.3f (median of per-round ratios: %s)\n' "$(col 12)" \
    "$(awk '{ printf "%s%.3f", (NR > 1 ? " " : ""), $12 }' "$RESULTS_DIR/rounds.txt")"
  printf 'on/off gateway CPU per request: %.3f (median of per-round ratios: %s)\n' "$(col 13)" \
    "$(awk '{ printf "%s%.3f", (NR > 1 ? " " : ""), $13 }' "$RESULTS_DIR/rounds.txt")"
  echo "* median of $ROUNDS rounds; gw us/r = gateway CPU microseconds per request, all threads;"
  echo "  proxy us/r = the proxy worker threads only (the request path; telemetry's background"
  echo "  thread and its blocking writes are the difference)"
  echo "events: spooled $spooled, $stream_note, $file_note, dropped $dropped"
  echo "raw outputs: $RESULTS_DIR"
} | tee "$RESULTS_DIR/summary.txt"
((spooled > 0 && unique_in_stream == spooled && in_file >= spooled && dropped == 0)) ||
  die "events were lost or dropped (see above)"
