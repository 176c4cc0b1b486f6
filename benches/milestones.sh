#!/usr/bin/env bash
# What do lifecycle milestones cost the metered route? Three gateways from the same release
# binary and the same config, measured side by side in one run, on loopback:
#
#   benches/milestones.sh                 # DURATION=10s ROUNDS=5 by default
#
#   off      no `onboarding:` section: no milestone is detected
#   on       `onboarding: { activation: { calls: 100, within: 7d } }`: every milestone check on,
#            the tenant activated after its first 100 calls (the steady state of a tenant that
#            uses the API: every later call answers its checks from memory)
#   pending  `activation: { calls: 1000000000, within: 7d }`: the tenant never gets there, so
#            every call also counts towards `activated` (one more key in the reservation's
#            script) — the cost for a tenant inside its activation window
#
# No telemetry in any of them, so the numbers are the detection's cost alone (the handful of
# milestone events a tenant ever fires costs nothing measurable). All three run pinned to CPU 0
# with server.threads: 1 and are driven one at a time by wrk on CPU 1, where nginx (the origin)
# and Redis run too. Rounds rotate which gateway goes first; the table shows medians and the
# median of per-round ratios against `off`.
#
# Knobs (environment, or NAME=value arguments): DURATION (10s), ROUNDS (5), CONNECTIONS (32), WARMUP (2s), PIN (1),
# RESULTS_DIR (target/load/milestones-<UTC time>), SKIP_BUILD (0), TOLLGATE_LOG (warn),
# TOLLGATE_BIN (another build to measure).
# Needs: cargo, nginx, redis-server, redis-cli, wrk, curl, taskset.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=milestones
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args "$@"

ROUNDS=${ROUNDS:-5}
bench_setup milestones-

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
ab_prologue

scratch milestones
free_port ORIGIN_PORT
free_port REDIS_PORT

start_plain_origin
start_redis

VARIANTS=(off on pending)
declare -A ONBOARDING=(
  [off]=""
  [on]="onboarding: { activation: { calls: 100, within: 7d } }"
  [pending]="onboarding: { activation: { calls: 1000000000, within: 7d } }"
)
declare -A PORT PID KEY
for v in "${VARIANTS[@]}"; do
  free_port "PORT[$v]"
  # Each gateway its own tenant, so one's milestones and counters never touch another's.
  KEY[$v]="tg_bench_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  sha=$(printf %s "${KEY[$v]}" | sha256sum | cut -d' ' -f1)
  cat >"$TMP/$v.yaml" <<CONF
server: { listen: "127.0.0.1:${PORT[$v]}", threads: 1, grace_period: 1s }
store: { kind: redis, url: "redis://127.0.0.1:$REDIS_PORT/0" }
upstreams: { origin: { targets: ["127.0.0.1:$ORIGIN_PORT"] } }
tenants: { bench-$v: { plan: bench, keys: [{ id: bench-key, sha256: "$sha" }] } }
plans: { bench: { meters: { requests: { limit: 1000000000, period: month, warn_at: 0.8 } } } }
routes: [{ name: metered, match: { path_prefix: / }, upstream: origin, meter: { requests: 1 } }]
${ONBOARDING[$v]}
CONF
  "$BIN" check --config "$TMP/$v.yaml" >/dev/null || die "tollgate check rejected $v.yaml"
  sed "s/$sha/<sha256>/" "$TMP/$v.yaml" >"$RESULTS_DIR/$v.yaml"
  TOLLGATE_LOG=${TOLLGATE_LOG:-warn} "${GW_PIN[@]}" "$BIN" serve --config "$TMP/$v.yaml" \
    >"$RESULTS_DIR/tollgate-$v.log" 2>&1 &
  PIDS+=($!)
  PID[$v]=$!
done
for v in "${VARIANTS[@]}"; do
  wait_until 30 "${PID[$v]}" "gateway ($v)" \
    curl -fsS --max-time 1 -H "Authorization: Bearer ${KEY[$v]}" "http://127.0.0.1:${PORT[$v]}/"
done
# The first call of `on` and `pending` fired first_call, with its header.
for v in on pending; do
  hint=$(curl -sS -o /dev/null -D - -H "Authorization: Bearer ${KEY[$v]}" "http://127.0.0.1:${PORT[$v]}/" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "tollgate-milestone" { print $2 }')
  [[ -z $hint ]] || die "$v: the second call carried Tollgate-Milestone: $hint"
  [[ $(redis-cli -p "$REDIS_PORT" exists "tg:{bench-$v}:ms:first_call") == 1 ]] ||
    die "$v: no first_call mark in Redis: are milestones on?"
done
[[ $(redis-cli -p "$REDIS_PORT" --scan --pattern "tg:{bench-off}:ms:*" | wc -l) == 0 ]] ||
  die "off: milestone marks in Redis"

# run VARIANT ROUND: warm-up, then the measured run; prints "rps p50 p99 gw_us_per_request".
run() {
  local v=$1 r=$2 t0 t1 parsed url auth
  url="http://127.0.0.1:${PORT[$v]}/"
  auth=(-H "Authorization: Bearer ${KEY[$v]}")
  run_wrk "$RESULTS_DIR/$v.$r.warmup.txt" "$WARM_BOUND" -t1 -c"$CONNECTIONS" -d"$WARMUP" \
    "${auth[@]}" "$url" || die "wrk warm-up failed"
  t0=$(proc_ticks "${PID[$v]}")
  run_wrk "$RESULTS_DIR/$v.$r.txt" "$WRK_BOUND" -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
    "${auth[@]}" "$url" || die "wrk failed"
  t1=$(proc_ticks "${PID[$v]}")
  parsed=$(parse_wrk "$RESULTS_DIR/$v.$r.txt") || die "unreadable wrk output"
  read -r rps p50 p99 reqs non2xx errs <<<"$parsed"
  ((non2xx == 0 && errs == 0)) || log "warning: $v round $r: $non2xx non-2xx, $errs socket errors"
  echo "$rps $p50 $p99 $(us_per_req $((t1 - t0)) "$reqs")"
}

: >"$RESULTS_DIR/rounds.txt"
for ((r = 1; r <= ROUNDS; r++)); do
  # Rotate the order, so no variant always runs first (or right after another's warm-up).
  shift_by=$(((r - 1) % 3))
  order=("${VARIANTS[@]:shift_by}" "${VARIANTS[@]:0:shift_by}")
  for v in "${order[@]}"; do
    log "round $r/$ROUNDS: $v"
    run "$v" "$r" >"$TMP/$v.parsed"
  done
  read -r a_rps a_p50 a_p99 a_us <"$TMP/off.parsed"
  read -r b_rps b_p50 b_p99 b_us <"$TMP/on.parsed"
  read -r c_rps c_p50 c_p99 c_us <"$TMP/pending.parsed"
  # columns: 1 round, 2-5 off rps p50 p99 gw-us, 6-9 on, 10-13 pending, 14-15 rps ratios
  # on/off and pending/off, 16-17 gateway CPU per request ratios on/off and pending/off
  echo "$r $a_rps $a_p50 $a_p99 $a_us $b_rps $b_p50 $b_p99 $b_us $c_rps $c_p50 $c_p99 $c_us" \
    "$(awk -v b="$b_rps" -v a="$a_rps" 'BEGIN { printf "%.4f", b / a }')" \
    "$(awk -v b="$c_rps" -v a="$a_rps" 'BEGIN { printf "%.4f", b / a }')" \
    "$(awk -v b="$b_us" -v a="$a_us" 'BEGIN { printf "%.4f", (a > 0 ? b / a : 0) }')" \
    "$(awk -v b="$c_us" -v a="$a_us" 'BEGIN { printf "%.4f", (a > 0 ? b / a : 0) }')" >>"$RESULTS_DIR/rounds.txt"
  log "round $r: off $a_rps, on $b_rps, pending $c_rps req/s"
done

# The `on` tenant was activated exactly once; `pending` never was.
[[ $(redis-cli -p "$REDIS_PORT" exists "tg:{bench-on}:ms:activated") == 1 ]] || die "on: never activated"
[[ $(redis-cli -p "$REDIS_PORT" exists "tg:{bench-pending}:ms:activated") == 0 ]] || die "pending: activated"

col() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/rounds.txt" | median; }
all() { awk -v c="$1" '{ printf "%s%.3f", (NR > 1 ? " " : ""), $c }' "$RESULTS_DIR/rounds.txt"; }
{
  echo
  echo "milestone cost on the metered route — $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "loopback; wrk -t1 -c$CONNECTIONS -d$DURATION; server.threads: 1; no telemetry;" \
    "$([[ ${#GW_PIN[@]} -gt 0 ]] && echo "gateways on CPU 0, wrk + nginx + redis on CPU 1" || echo "no CPU pinning")"
  printf '%-40s %9s %8s %8s %9s\n' "" "req/s" "p50 ms" "p99 ms" "gw us/r"
  printf '%-40s %9.0f %8.3f %8.3f %9s\n' "off (no onboarding) *" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)"
  printf '%-40s %9.0f %8.3f %8.3f %9s\n' "on (tenant activated) *" "$(col 6)" "$(col 7)" "$(col 8)" "$(col 9)"
  printf '%-40s %9.0f %8.3f %8.3f %9s\n' "on, activation pending *" "$(col 10)" "$(col 11)" "$(col 12)" "$(col 13)"
  printf 'on/off req/s: %.3f (per round: %s)\n' "$(col 14)" "$(all 14)"
  printf 'pending/off req/s: %.3f (per round: %s)\n' "$(col 15)" "$(all 15)"
  printf 'gateway CPU per request, on/off: %.3f (per round: %s); pending/off: %.3f (per round: %s)\n' \
    "$(col 16)" "$(all 16)" "$(col 17)" "$(all 17)"
  echo "* median of $ROUNDS rounds; gw us/r = gateway CPU microseconds per request, all threads"
  echo "raw outputs: $RESULTS_DIR"
} | tee "$RESULTS_DIR/summary.txt"
