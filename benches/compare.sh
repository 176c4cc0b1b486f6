#!/usr/bin/env bash
# Two builds of the gateway, side by side, on the metered and the unmetered route: for a change
# whose effect is a few percent on a machine that swings by more than that from one minute to
# the next. One command, on loopback:
#
#   benches/compare.sh BIN_A BIN_B          # e.g. a build of main and a build of a change
#
# It starts its own nginx origin and Redis, one gateway per build (each pinned to CPU 0 with
# server.threads: 1; nginx, Redis and wrk on CPU 1, like load.sh), and then runs ROUNDS rounds;
# each round drives, for A then B, the unmetered route and then the metered one for DURATION
# (after a 2 s warm-up each). Short runs, interleaved, so both builds see the same machine. It
# prints every run and, per build, the medians over the rounds of: metered/unmetered req/s,
# gateway CPU per call metered/unmetered, how busy the gateway's core was on the metered route,
# the calls per reserve script run (Redis's EVALSHA count), and, when run as root with perf,
# the inter-processor interrupts the gateway's core sent per call on each route (the kernel's
# `ipi:ipi_send_cpu` tracepoint): each wakes a process on the other core, and costs the
# sending core several microseconds in a VM.
#
# Run it once with the same binary as A and B (an A/A run) to see what the machine's noise
# alone does to the medians: on a noisy sitting it can be more than the change being measured
# (one A/A run, 10 rounds: 0.909 and 0.686).
#
# Knobs (environment, or NAME=value arguments): DURATION (4s), ROUNDS (10), CONNECTIONS (32), TELEMETRY (0; 1 gives both
# gateways a telemetry section with a redis_stream sink on the store's Redis, so the metered
# route's figures include its usage events), RESULTS_DIR (target/load/compare-<UTC time>),
# HALT_POLL_NS (unset; a KVM guest's halt polling for the run, see benches/lib.sh), STORE_TLS (0;
# 1 puts the gateways' store on a `rediss://` port of the same Redis, see benches/lib.sh).
# Needs: nginx, redis-server, redis-cli, wrk, curl, taskset.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=compare
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args --positional "$@"
set -- "${ARGS[@]}"
DURATION=${DURATION:-4s}
bench_setup compare-
ROUNDS=${ROUNDS:-10}
(($# == 2)) || die "usage: benches/compare.sh BIN_A BIN_B"
for cmd in nginx redis-server redis-cli wrk curl taskset; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (see benches/load.sh for the packages)"
done
[[ $(nproc) -ge 2 ]] || die "needs 2 cores: the gateways on one, the load on the other"
LOAD_PIN=(taskset -c 1)
GW_PIN=(taskset -c 0)
BOUND=$(($(to_secs "$DURATION") + 30))

# Interrupts are counted when the kernel's tracepoint can be read (root, perf installed).
IPI=0
if [[ $(id -u) -eq 0 ]] && command -v perf >/dev/null 2>&1 &&
  perf stat -x, -C 0 -e ipi:ipi_send_cpu -- true >/dev/null 2>&1; then
  IPI=1
else
  log "not counting inter-processor interrupts (needs root and perf with the ipi tracepoints)"
fi

scratch compare
free_port ORIGIN_PORT
free_port REDIS_PORT
start_plain_origin
start_redis
bench_key

declare -a GW_PORT GW_PID
for i in 0 1; do
  bin=${*:i+1:1}
  [[ -x $bin ]] || die "$bin is not an executable"
  free_port port
  GW_PORT[i]=$port
  two_route_gateway "$port" "${TELEMETRY:-0}" >"$TMP/gateway$i.yaml"
  TOLLGATE_LOG=warn "${GW_PIN[@]}" "$bin" serve --config "$TMP/gateway$i.yaml" \
    >"$RESULTS_DIR/gateway$i.log" 2>&1 &
  GW_PID[i]=$!
  PIDS+=("${GW_PID[i]}")
  wait_until 30 "${GW_PID[i]}" "gateway $i" curl -fsS --max-time 2 "http://127.0.0.1:$port/open"
done

# run I ROUTE -> "req/s cpu0% us/call calls/script ipi/call"
run() {
  local url="http://127.0.0.1:${GW_PORT[$1]}$2" out="$TMP/wrk.txt" t0 t1 e0 e1 n ipi_pid ipis=-
  run_wrk "$out" "$BOUND" -t1 -c"$CONNECTIONS" -d2s -H "X-Api-Key: $KEY" "$url" || true
  cpu_snapshot >"$TMP/cpu0"
  t0=$(proc_ticks "${GW_PID[$1]}")
  e0=$(evalsha_calls)
  if ((IPI)); then
    perf stat -x, -C 0 -e ipi:ipi_send_cpu -o "$TMP/ipi.txt" &
    ipi_pid=$!
  fi
  run_wrk "$out" "$BOUND" -t1 -c"$CONNECTIONS" -d"$DURATION" -H "X-Api-Key: $KEY" "$url" || true
  if ((IPI)); then
    kill -INT "$ipi_pid"
    wait "$ipi_pid" || true
    ipis=$(awk -F, '/ipi_send_cpu/ { print $1 }' "$TMP/ipi.txt")
  fi
  cpu_snapshot >"$TMP/cpu1"
  t1=$(proc_ticks "${GW_PID[$1]}")
  e1=$(evalsha_calls)
  n=$(awk '/requests in/ { print $1 }' "$out")
  [[ -n $n && $n -gt 0 ]] || die "wrk answered nothing (see $out)"
  printf '%s %s %s %s %s\n' "$(awk '/Requests\/sec/ { print $2 }' "$out")" \
    "$(cpu_busy "$TMP/cpu0" "$TMP/cpu1" | cut -d' ' -f1)" "$(us_per_req $((t1 - t0)) "$n")" \
    "$(awk -v n="$n" -v e=$((e1 - e0)) 'BEGIN { if (e > 0) printf "%.1f", n / e; else print "-" }')" \
    "$(awk -v n="$n" -v i="$ipis" 'BEGIN { if (i ~ /^[0-9]+$/) printf "%.3f", i / n; else print "-" }')"
}

for ((r = 1; r <= ROUNDS; r++)); do
  for i in 0 1; do
    read -r open_rps _ open_us _ open_ipi <<<"$(run "$i" /open)"
    read -r rps cpu us batch ipi <<<"$(run "$i" /)"
    printf '%s %s %s %s %s %s %s\n' "$(awk -v a="$rps" -v b="$open_rps" 'BEGIN { printf "%.4f", a / b }')" \
      "$(awk -v a="$us" -v b="$open_us" 'BEGIN { printf "%.4f", a / b }')" "$cpu" "$batch" \
      "$open_ipi" "$ipi" "$open_rps $rps" >>"$RESULTS_DIR/build$i.txt"
    log "round $r build $((i == 0 ? 0 : 1)): unmetered $open_rps req/s $open_us us/call $open_ipi IPIs/call; metered $rps req/s $us us/call $ipi IPIs/call, core $cpu% busy, $batch calls per script run"
  done
done

echo "compare — $STAMP; wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS rounds; gateways on CPU 0, load on CPU 1"
echo "$HALT_POLL_NOTE; store over $([[ ${STORE_TLS:-0} == 1 ]] && echo TLS || echo TCP)"
for i in 0 1; do
  f=$RESULTS_DIR/build$i.txt
  echo "build $((i == 0 ? 0 : 1)) (${*:i+1:1}):"
  echo "  metered/unmetered req/s: $(cut -d' ' -f1 "$f" | median) (per round: $(cut -d' ' -f1 "$f" | tr '\n' ' '))"
  echo "  gateway CPU per call, metered/unmetered: $(cut -d' ' -f2 "$f" | median)"
  echo "  gateway core busy on the metered route: $(cut -d' ' -f3 "$f" | median)%"
  echo "  calls per reserve script run: $(cut -d' ' -f4 "$f" | median)"
  if ((IPI)); then
    echo "  inter-processor interrupts per call, unmetered / metered: $(cut -d' ' -f5 "$f" | median) / $(cut -d' ' -f6 "$f" | median)"
  fi
done
echo "runs: $RESULTS_DIR"
