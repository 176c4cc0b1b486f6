#!/usr/bin/env bash
# What a call costs the machine besides the gateway's own instructions: how often the gateway
# wakes another process, how often each of its threads sleeps, and which syscalls it makes, per
# call, counted by the kernel's tracepoints. One command, on loopback:
#
#   benches/wakeups.sh                     # DURATION=4s
#
# On a 2-core VM a wake-up of a process on the other core (an inter-processor interrupt) cost
# the waking core about 8 µs, a quarter of a whole proxied call; these counts tell how many a
# change adds or saves, where wall-clock throughput is too noisy to show it.
#
# Like load.sh it starts its own nginx origin, Redis and gateway (pinned to CPU 0 with
# server.threads: 1; nginx, Redis and wrk on CPU 1), then drives, one after the other:
#   unmetered          `auth: none` route
#   metered            API key + one reservation in Redis (batched with concurrent calls)
#   metered+telemetry  the same on a gateway with a `telemetry` section (spool + redis_stream
#                      sink on the same Redis), so the spool writer and the sink's delivery count
# For each it prints, per call: wake-ups the gateway's threads did, by the woken process; the
# voluntary sleeps of each gateway thread; and the gateway's syscalls by name. Each count comes
# from a run of its own (tracing the syscalls slows the gateway down; counts per call do not
# change with speed).
#
# Knobs (environment, or NAME=value arguments): DURATION (4s), CONNECTIONS (32), SKIP_BUILD (0), TOLLGATE_BIN,
# RESULTS_DIR (target/load/wakeups-<UTC time>). Needs: perf (with tracepoints: run as root),
# nginx, redis-server, redis-cli, wrk, curl, taskset.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=wakeups
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args "$@"
DURATION=${DURATION:-4s}
bench_setup wakeups-
for cmd in perf nginx redis-server redis-cli wrk curl taskset; do
  command -v "$cmd" >/dev/null 2>&1 ||
    die "$cmd is missing (apt-get install -y linux-perf nginx-light redis-server redis-tools wrk curl)"
done
[[ $(id -u) -eq 0 ]] || die "the kernel's tracepoints need root"
[[ $(nproc) -ge 2 ]] || die "needs 2 cores: the gateway on one, the load on the other"
LOAD_PIN=(taskset -c 1)
release_bin

scratch wakeups
free_port ORIGIN_PORT
free_port REDIS_PORT
start_plain_origin
start_redis
bench_key

# gateway NAME TELEMETRY(0|1): starts a pinned gateway; sets GW_PID and GW_PORT.
gateway() {
  free_port GW_PORT
  two_route_gateway "$GW_PORT" "$2" >"$TMP/$1.yaml"
  "$BIN" check --config "$TMP/$1.yaml" >/dev/null
  TOLLGATE_LOG=warn taskset -c 0 "$BIN" serve --config "$TMP/$1.yaml" >"$RESULTS_DIR/$1.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_until 60 "$GW_PID" "tollgate ($1)" curl -fsS --max-time 2 "http://127.0.0.1:$GW_PORT/open"
}

# drive OUT PATH [perf args...]: warms up, then runs wrk for DURATION (under `perf ARGS` when
# given); prints the calls wrk counted.
drive() {
  local out=$1 path=$2 url
  shift 2
  url="http://127.0.0.1:$GW_PORT$path"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $KEY" "$url" >/dev/null
  if (($# > 0)); then
    "$@" -- taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $KEY" \
      "$url" >"$out.wrk" 2>&1
  else
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $KEY" \
      "$url" >"$out.wrk" 2>&1
  fi
  awk '/ requests in /{ print $1 }' "$out.wrk"
}

# measure NAME PATH TELEMETRY
measure() {
  local name=$1 path=$2 telemetry=$3 n tids
  gateway "$name" "$telemetry"
  echo "== $name"
  # Wake-ups done by the gateway's threads (all of them run on CPU 0), by the woken process.
  n=$(drive "$RESULTS_DIR/$name.sched" "$path" \
    perf record -q -e sched:sched_waking -C 0 -o "$RESULTS_DIR/$name.sched.data")
  echo "  wake-ups done by the gateway's threads per call, by the process woken ($n calls):"
  perf script -i "$RESULTS_DIR/$name.sched.data" -F pid,trace 2>/dev/null |
    awk -v gw="$GW_PID" -v n="$n" '
      $1 == gw && match($0, /comm=[^ ]+/) { count[substr($0, RSTART + 5, RLENGTH - 5)]++ }
      END { for (w in count) if (count[w] / n >= 0.001) printf "    %7.3f  %s\n", count[w] / n, w }' |
    sort -r
  # Voluntary sleeps of each gateway thread.
  tids=$(ls "/proc/$GW_PID/task")
  for t in $tids; do
    echo "$t $(tr ' ' _ <"/proc/$GW_PID/task/$t/comm") $(awk '/^voluntary_ctxt_switches/{ print $2 }' "/proc/$GW_PID/task/$t/status")"
  done >"$TMP/before"
  n=$(drive "$RESULTS_DIR/$name.sleeps" "$path")
  echo "  voluntary sleeps per call, by gateway thread ($n calls):"
  for t in $tids; do
    [[ -r /proc/$GW_PID/task/$t/status ]] || continue
    echo "$t $(awk '/^voluntary_ctxt_switches/{ print $2 }' "/proc/$GW_PID/task/$t/status")"
  done | awk -v n="$n" 'NR == FNR { name[$1] = $2; was[$1] = $3; next }
      ($1 in was) && ($2 - was[$1]) / n >= 0.001 { printf "    %7.3f  %s\n", ($2 - was[$1]) / n, name[$1] }' \
      "$TMP/before" - | sort -r
  # Syscalls of the whole gateway.
  n=$(drive "$RESULTS_DIR/$name.syscalls" "$path" \
    perf stat -e 'syscalls:sys_enter_*' -p "$GW_PID" -o "$RESULTS_DIR/$name.syscalls.stat")
  echo "  syscalls per call ($n calls):"
  awk -v n="$n" '$2 ~ /^syscalls:sys_enter_/ {
      v = $1; gsub(",", "", v)
      if (v + 0 > 0 && v / n >= 0.001) { sub("syscalls:sys_enter_", "", $2); printf "    %7.3f  %s\n", v / n, $2 }
    }' "$RESULTS_DIR/$name.syscalls.stat" | sort -r
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
}

log "binary: $BIN"
{
  echo "tollgate wake-ups, sleeps and syscalls per call — $STAMP; wrk -t1 -c$CONNECTIONS -d$DURATION"
  echo "gateway on CPU 0 (server.threads: 1); nginx, Redis and wrk on CPU 1"
  measure unmetered /open 0
  measure metered / 0
  measure metered+telemetry / 1
} | tee "$RESULTS_DIR/summary.txt"
log "outputs: $RESULTS_DIR"
