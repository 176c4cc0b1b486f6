#!/usr/bin/env bash
# Load benchmark of the gateway, on loopback, in one command:
#
#   benches/load.sh                      # DURATION=10s ROUNDS=3 by default
#   DURATION=30s ROUNDS=5 benches/load.sh
#
# It builds the release binary, starts its own origin (nginx answering 200 "ok"), its own Redis
# and its own gateway on free 127.0.0.1 ports, drives them with wrk, prints a table and stops
# everything it started (also on Ctrl-C or error). Nothing outside loopback is touched.
#
# Scenarios, each run preceded by a WARMUP run whose numbers are discarded:
#   (a) origin        wrk -> nginx directly: the ceiling of this machine
#   (b) unmetered     wrk -> tollgate /open (auth: none) -> nginx: the proxy alone
#   (c) metered       wrk -> tollgate / with an API key -> nginx: identify the tenant, check and
#                     reserve the `requests` meter in Redis (one round trip), then proxy
#   (d0) tokens fixed like (c) with a second meter, `tokens: 42` at a fixed cost, on a JSON answer
#   (d)/(e) tokens    the same two meters, `tokens` read from the response's JSON body / SSE
#                     stream (reserve 1000, settle to 42): against (d0), the cost of inspection
#   (f0)/(f) plugin   one OpenAI-style SSE answer on two routes charging the same three meters
#                     (`requests: 1`, `input_tokens` / `output_tokens` reserved at 1000 and
#                     settled to 12 / 30): (f) measures them with the llm-usage plugin, (f0) with
#                     the built-in `from_response: json:…`; against (f0), the plugin host's cost
#   (g0)/(g) baseline examples/baseline_proxy.rs, pinned like the gateway: a bare pingora
#                     passthrough (g0), and the same plus one EVALSHA per call on a redis-rs
#                     ConnectionManager (g). g/g0 is what "one store round trip per call" costs
#                     any pingora gateway on this machine; (c)/(b) is what tollgate's costs.
# (a) runs once; (b)-(g) run ROUNDS times, interleaved, and the table shows medians.
# "metered/unmetered" is the median of the per-round ratios of req/s. The table also shows how
# busy each CPU was during a run and the CPU time the gateway (and Redis) spent per request
# (from /proc/<pid>/stat): when the machine is shared, CPU per request is the steadier number.
# The script samples the CPUs for 2 s first and warns when something else is running.
#
# CPU pinning (with 2+ cores; PIN=0 turns it off): the gateway runs alone on CPU 0 with
# server.threads: 1; nginx, Redis and wrk share CPU 1. The gateway gets one whole core and the
# load generator cannot steal it, so the numbers are per-core throughput of the gateway; (a)
# is nginx + wrk sharing one core, so it is a reference point, not a like-for-like rival.
#
# After every metered run the Redis counter is compared with the 2xx answers wrk counted: they
# must agree, except for at most CONNECTIONS calls that were still in flight when wrk stopped
# (admitted and charged by the gateway, their answers never read by wrk).
# It also reports how many calls each reservation script run carried in the metered run
# (the Redis counter's delta over Redis's count of EVALSHAs): the reservation pipe's batches.
#
# Knobs (environment, or NAME=value arguments): DURATION (10s), ROUNDS (3), CONNECTIONS (32), WARMUP (2s), PIN (1),
# RESULTS_DIR (target/load/<UTC time>), SKIP_BUILD (0), TOLLGATE_LOG (warn),
# TOLLGATE_BIN (target/release/tollgate; with SKIP_BUILD=1, to measure another build),
# HALT_POLL_NS (unset; a KVM guest's halt polling for the run, see benches/lib.sh).
# Needs: cargo, nginx, redis-server, redis-cli, wrk, curl, taskset; missing Debian packages are
# installed with apt-get when running as root.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=load
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args "$@"

ROUNDS=${ROUNDS:-3}
bench_setup ""

# ---------------------------------------------------------------- prerequisites
ensure_tools() {
  local -A pkg=([nginx]=nginx-light [wrk]=wrk [redis-server]=redis-server [redis-cli]=redis-tools
                [curl]=curl [taskset]=util-linux)
  local missing=() cmd
  for cmd in nginx wrk redis-server redis-cli curl taskset; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg[$cmd]}")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "missing: ${missing[*]} (install them: apt-get install -y ${missing[*]})"
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
ensure_tools
command -v cargo >/dev/null 2>&1 || die "cargo not found"

DURATION_S=$(to_secs "$DURATION")
WARMUP_S=$(to_secs "$WARMUP")
[[ $DURATION_S =~ ^[0-9]+$ && $DURATION_S -ge 1 ]] || die "DURATION must look like 10s, 1m"
[[ $WARMUP_S =~ ^[0-9]+$ ]] || die "WARMUP must look like 2s"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"

if [[ $PIN != 0 && $(nproc) -ge 2 ]]; then
  GW_PIN=(taskset -c 0)
  LOAD_PIN=(taskset -c 1)
  PIN_NOTE="tollgate on CPU 0; nginx, redis, wrk on CPU 1"
else
  GW_PIN=()
  LOAD_PIN=()
  PIN_NOTE="no CPU pinning"
fi

# ---------------------------------------------------------------- build
if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release"
  cargo build --release --bin tollgate --example baseline_proxy
fi
BIN=${TOLLGATE_BIN:-$ROOT/target/release/tollgate}
[[ -x $BIN ]] || die "$BIN not found (build it with cargo build --release)"
BASELINE_BIN=$ROOT/target/release/examples/baseline_proxy
[[ -x $BASELINE_BIN ]] || die "$BASELINE_BIN not found (cargo build --release --example baseline_proxy)"

# ---------------------------------------------------------------- processes and cleanup
scratch load

free_port ORIGIN_PORT
free_port REDIS_PORT
free_port GW_PORT
free_port BASE_PORT

# ---------------------------------------------------------------- origin: nginx
mkdir -p "$TMP/nginx"
temp_paths="    client_body_temp_path $TMP/nginx/client_body;"
nginx_build=$(nginx -V 2>&1)
for m in proxy fastcgi uwsgi scgi; do
  [[ $nginx_build == *"--without-http_${m}_module"* ]] ||
    temp_paths+=$'\n'"    ${m}_temp_path $TMP/nginx/${m};"
done
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
$temp_paths
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location / {
            default_type text/plain;
            return 200 'ok';
        }
        location ~ ^/llm/(json|fixed) {
            default_type application/json;
            return 200 '{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}';
        }
        location ~ ^/llm/sse-(plain|plugin) {
            default_type text/event-stream;
            return 200 'data: {"model":"gpt-4.1","choices":[{"delta":{"content":"h"}}],"usage":null}\n\ndata: {"model":"gpt-4.1","choices":[{"delta":{"content":"i"}}],"usage":null}\n\ndata: {"model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}\n\ndata: [DONE]\n\n';
        }
        location /llm/sse {
            default_type text/event-stream;
            return 200 'data: {"choices":[{"delta":{"content":"h"}}],"usage":null}\n\ndata: {"choices":[{"delta":{"content":"i"}}],"usage":null}\n\ndata: {"choices":[],"usage":{"total_tokens":42}}\n\ndata: [DONE]\n\n';
        }
    }
}
CONF
start_nginx

# ---------------------------------------------------------------- store: redis
start_redis

# ---------------------------------------------------------------- gateway: tollgate
TENANT=bench
bench_key
cat >"$TMP/tollgate.yaml" <<CONF
# written by benches/load.sh
server:
  listen: "127.0.0.1:$GW_PORT"
  threads: 1
  grace_period: 1s
store:
  kind: redis
  url: "redis://127.0.0.1:$REDIS_PORT/0"
upstreams:
  origin:
    targets: ["127.0.0.1:$ORIGIN_PORT"]
tenants:
  $TENANT:
    plan: bench
    keys:
      - id: bench-key
        sha256: "$KEY_SHA"
plans:
  bench:
    meters:
      requests: { limit: 1000000000, period: month }
      tokens: { limit: 1000000000000, period: month }
      input_tokens: { limit: 1000000000000, period: month }
      output_tokens: { limit: 1000000000000, period: month }
plugins:
  llm-usage: {}
routes:
  - name: sse-plain
    match: { path_prefix: /llm/sse-plain }
    upstream: origin
    meter:
      requests: 1
      input_tokens: { from_response: "json:usage.prompt_tokens", reserve: 1000 }
      output_tokens: { from_response: "json:usage.completion_tokens", reserve: 1000 }
  - name: sse-plugin
    match: { path_prefix: /llm/sse-plugin }
    upstream: origin
    plugins: [llm-usage]
    meter:
      requests: 1
      input_tokens: { from_response: "plugin:llm-usage", reserve: 1000 }
      output_tokens: { from_response: "plugin:llm-usage", reserve: 1000 }
  - name: tokens-fixed
    match: { path_prefix: /llm/fixed }
    upstream: origin
    meter:
      requests: 1
      tokens: 42
  - name: tokens-json
    match: { path_prefix: /llm/json }
    upstream: origin
    meter:
      requests: 1
      tokens: { from_response: "json:usage.total_tokens", reserve: 1000 }
  - name: tokens-sse
    match: { path_prefix: /llm/sse }
    upstream: origin
    meter:
      requests: 1
      tokens: { from_response: "json:usage.total_tokens", reserve: 1000 }
  - name: open
    match: { path: /open }
    upstream: origin
    auth: none
  - name: metered
    match: { path_prefix: / }
    upstream: origin
    meter: { requests: 1 }
CONF
sed "s/$KEY_SHA/<sha256 of a random key>/" "$TMP/tollgate.yaml" >"$RESULTS_DIR/tollgate.yaml"
"$BIN" check --config "$TMP/tollgate.yaml" >"$RESULTS_DIR/check.txt" 2>&1 ||
  { cat "$RESULTS_DIR/check.txt" >&2; die "tollgate check rejected the generated config"; }

TOLLGATE_LOG=${TOLLGATE_LOG:-warn} "${GW_PIN[@]}" "$BIN" serve --config "$TMP/tollgate.yaml" \
  >"$RESULTS_DIR/tollgate.log" 2>&1 &
PIDS+=($!)
GW_PID=$!
GW=http://127.0.0.1:$GW_PORT
wait_until 30 "${PIDS[-1]}" tollgate curl -fsS --max-time 1 "$GW/open"

# The baseline, on the gateway's CPU (it idles while the gateway is measured, and the other way
# round).
"${GW_PIN[@]}" "$BASELINE_BIN" "127.0.0.1:$BASE_PORT" "127.0.0.1:$ORIGIN_PORT" \
  "redis://127.0.0.1:$REDIS_PORT/0" >"$RESULTS_DIR/baseline.log" 2>&1 &
PIDS+=($!)
BASE_PID=$!
BASE=http://127.0.0.1:$BASE_PORT
wait_until 30 "$BASE_PID" baseline curl -fsS --max-time 1 "$BASE/evalsha"
[[ $(redis-cli -p "$REDIS_PORT" get baseline:counter) -ge 1 ]] ||
  die "the baseline's EVALSHA did not count"

# meter_sum METER: sum of the tenant's counters of METER (one per period; a run may cross
# midnight). counter: the `requests` meter's.
meter_sum() {
  redis-cli -p "$REDIS_PORT" --scan --pattern "tg:{$TENANT}:m:$1:*" |
    while read -r k; do redis-cli -p "$REDIS_PORT" get "$k"; done |
    awk '{ s += $1 } END { printf "%d\n", s }'
}
counter() { meter_sum requests; }

# ---------------------------------------------------------------- sanity checks
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
s=$(status_of "$GW/open"); [[ $s == 200 ]] || die "GET /open answered $s, expected 200"
s=$(status_of "$GW/"); [[ $s == 401 ]] || die "GET / without a key answered $s, expected 401"
c0=$(counter)
s=$(status_of -H "Authorization: Bearer $KEY" "$GW/"); [[ $s == 200 ]] ||
  die "GET / with the key answered $s, expected 200"
c1=$(counter)
((c1 == c0 + 1)) || die "one metered call moved the Redis counter from $c0 to $c1"
((c0 == 0)) || die "the 401 call changed the counter ($c0)"
# The plugin route settles to the stream's usage.
s=$(status_of -H "Authorization: Bearer $KEY" "$GW/llm/sse-plugin"); [[ $s == 200 ]] ||
  die "GET /llm/sse-plugin answered $s, expected 200"
sleep 0.2
o=$(meter_sum output_tokens); ((o == 30)) || die "llm-usage settled output_tokens to $o, expected 30"
log "sanity ok: /open 200, / without key 401, / with key 200 and counted once, llm-usage settled 30"

# ---------------------------------------------------------------- wrk

WRK_BOUND=$((DURATION_S + 30))
WARM_BOUND=$((WARMUP_S + 30))

# run_wrk OUT BOUND_SECONDS [wrk args...]: wrk on the load CPU, killed after BOUND_SECONDS.
# It runs in the background and is waited for, so that Ctrl-C / SIGTERM stop the script at once.

# warm NAME URL [wrk args...]: a WARMUP run whose numbers are kept but not reported.
warm() {
  local name=$1 url=$2
  shift 2
  ((WARMUP_S > 0)) || return 0
  run_wrk "$RESULTS_DIR/$name.warmup.txt" "$WARM_BOUND" -t1 -c"$CONNECTIONS" -d"$WARMUP" "$@" "$url" ||
    die "wrk warmup failed: $name"
}

# CPU time (user + system, all threads) a process used so far, in clock ticks.

# measure NAME URL [wrk args...]: the measured run. Writes NAME.txt (wrk's output) and
# NAME.parsed: "rps p50_ms p99_ms requests non2xx socket_errors cpu0% cpu1% gw_us redis_us"
# (gw_us, redis_us: CPU microseconds per request used by the gateway and by Redis).
measure() {
  local name=$1 url=$2
  shift 2
  local gw0 rd0 gw1 rd1
  gw0=$(proc_ticks "$GW_PID")
  rd0=$(proc_ticks "$REDIS_PID")
  cpu_snapshot >"$TMP/cpu.before"
  run_wrk "$RESULTS_DIR/$name.txt" "$WRK_BOUND" -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" ||
    die "wrk failed: $name"
  cpu_snapshot >"$TMP/cpu.after"
  gw1=$(proc_ticks "$GW_PID")
  rd1=$(proc_ticks "$REDIS_PID")
  local parsed reqs
  parsed=$(parse_wrk "$RESULTS_DIR/$name.txt") || die "could not read wrk output $RESULTS_DIR/$name.txt"
  reqs=$(awk '{ print $4 }' <<<"$parsed")
  echo "$parsed $(cpu_busy "$TMP/cpu.before" "$TMP/cpu.after")" \
    "$(us_per_req $((gw1 - gw0)) "$reqs") $(us_per_req $((rd1 - rd0)) "$reqs")" \
    >"$RESULTS_DIR/$name.parsed"
}

# Anything else running spoils the numbers: sample both CPUs for 2 s before starting.
cpu_snapshot >"$TMP/cpu.before"
sleep 2
cpu_snapshot >"$TMP/cpu.after"
read -r idle_c0 idle_c1 < <(cpu_busy "$TMP/cpu.before" "$TMP/cpu.after")
LOAD_BEFORE="cpu0 ${idle_c0}% busy, cpu1 ${idle_c1}% busy (2 s sample); load average $(cut -d' ' -f1-3 /proc/loadavg)"
if ((idle_c0 > 10 || idle_c1 > 10)); then
  log "warning: the machine is busy before the runs ($LOAD_BEFORE): the numbers will be noisy"
fi
log "pinning: $PIN_NOTE"
log "wrk -t1 -c$CONNECTIONS -d$DURATION --latency (warmup $WARMUP each), $ROUNDS rounds"
{
  echo "date: $STAMP"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "cpus: $(nproc); $PIN_NOTE"
  echo "kernel: $(uname -r)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "redis: $(redis-server --version)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "duration: $DURATION, warmup: $WARMUP, rounds: $ROUNDS, connections: $CONNECTIONS"
  echo "before the runs: $LOAD_BEFORE"
  echo "$HALT_POLL_NOTE"
} >"$RESULTS_DIR/env.txt"

log "(a) origin"
warm origin "http://127.0.0.1:$ORIGIN_PORT/"
measure origin "http://127.0.0.1:$ORIGIN_PORT/"
read -r o_rps o_p50 o_p99 o_reqs o_non o_err o_c0 o_c1 o_gw o_rd <"$RESULTS_DIR/origin.parsed"

: >"$RESULTS_DIR/rounds.txt"
: >"$RESULTS_DIR/measured_rounds.txt"
: >"$RESULTS_DIR/plugin_rounds.txt"
: >"$RESULTS_DIR/baseline_rounds.txt"
mismatch=0
AUTH=(-H "Authorization: Bearer $KEY")
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS: (b) unmetered"
  warm "unmetered.$r" "$GW/open"
  measure "unmetered.$r" "$GW/open"
  read -r u_rps u_p50 u_p99 u_reqs u_non u_err u_c0 u_c1 u_gw u_rd <"$RESULTS_DIR/unmetered.$r.parsed"

  log "round $r/$ROUNDS: (c) metered"
  warm "metered.$r" "$GW/" "${AUTH[@]}"
  sleep 0.5
  before=$(counter)
  scripts_before=$(evalsha_calls)
  measure "metered.$r" "$GW/" "${AUTH[@]}"
  sleep 0.5   # let calls that were in flight when wrk stopped finish
  after=$(counter)
  scripts=$(($(evalsha_calls) - scripts_before))
  read -r m_rps m_p50 m_p99 m_reqs m_non m_err m_c0 m_c1 m_gw m_rd <"$RESULTS_DIR/metered.$r.parsed"

  ok2xx=$((m_reqs - m_non))
  counted=$((after - before))
  extra=$((counted - ok2xx))
  if ((extra >= 0 && extra <= CONNECTIONS)); then verdict=ok; else verdict=MISMATCH; mismatch=1; fi
  # columns: 1 round, 2-4 unmetered rps p50 p99, 5-7 metered rps p50 p99, 8 ratio,
  # 9 unmetered socket errors, 10 metered socket errors, 11 metered non-2xx, 12 metered 2xx,
  # 13 redis delta, 14 difference, 15 verdict, 16-17 unmetered cpu0/1 %, 18-19 metered cpu0/1 %,
  # 20 unmetered gateway CPU us/req, 21 metered gateway CPU us/req, 22 metered redis CPU us/req,
  # 23 ratio of gateway CPU per request, metered/unmetered, 24 metered calls per reservation
  # script run (the batches the reservation pipe wrote)
  printf '%d %s %s %s %s %s %s %s %s %s %d %d %d %d %s %s %s %s %s %s %s %s %s %s\n' "$r" \
    "$u_rps" "$u_p50" "$u_p99" "$m_rps" "$m_p50" "$m_p99" \
    "$(awk -v m="$m_rps" -v u="$u_rps" 'BEGIN { printf "%.4f", m / u }')" \
    "$u_err" "$m_err" "$m_non" "$ok2xx" "$counted" "$extra" "$verdict" \
    "$u_c0" "$u_c1" "$m_c0" "$m_c1" "$u_gw" "$m_gw" "$m_rd" \
    "$(awk -v m="$m_gw" -v u="$u_gw" 'BEGIN { printf "%.4f", (u > 0 ? m / u : 0) }')" \
    "$(awk -v c="$counted" -v s="$scripts" 'BEGIN { printf "%.2f", (s > 0 ? c / s : 0) }')" >>"$RESULTS_DIR/rounds.txt"
  log "round $r: unmetered $u_rps req/s, metered $m_rps req/s; redis +$counted, wrk 2xx $ok2xx ($verdict)"

  # (d)/(e): token-metered routes whose usage is read from the response (JSON body, SSE stream),
  # against the fixed-cost metered route of the same round.
  for kind in fixed json sse; do
    log "round $r/$ROUNDS: ($kind) token-metered"
    warm "$kind.$r" "$GW/llm/$kind" "${AUTH[@]}"
    measure "$kind.$r" "$GW/llm/$kind" "${AUTH[@]}"
  done
  read -r f_rps _ f_p99 _ <"$RESULTS_DIR/fixed.$r.parsed"
  read -r j_rps _ j_p99 _ <"$RESULTS_DIR/json.$r.parsed"
  read -r s_rps _ s_p99 _ <"$RESULTS_DIR/sse.$r.parsed"
  # columns: 1 round, 2-3 json rps p99, 4-5 sse rps p99, 6-7 their req/s ratio to the same two
  # meters charged at a fixed cost, 8-9 fixed-cost rps p99
  printf '%d %s %s %s %s %s %s %s %s\n' "$r" "$j_rps" "$j_p99" "$s_rps" "$s_p99" \
    "$(awk -v a="$j_rps" -v b="$f_rps" 'BEGIN { printf "%.4f", a / b }')" \
    "$(awk -v a="$s_rps" -v b="$f_rps" 'BEGIN { printf "%.4f", a / b }')" \
    "$f_rps" "$f_p99" >>"$RESULTS_DIR/measured_rounds.txt"

  # (f0)/(f): the same SSE answer without and with the llm-usage plugin.
  for kind in sse-plain sse-plugin; do
    log "round $r/$ROUNDS: ($kind)"
    warm "$kind.$r" "$GW/llm/$kind" "${AUTH[@]}"
    measure "$kind.$r" "$GW/llm/$kind" "${AUTH[@]}"
  done
  read -r p0_rps _ p0_p99 _ _ _ _ _ p0_gw _ <"$RESULTS_DIR/sse-plain.$r.parsed"
  read -r p1_rps _ p1_p99 _ _ _ _ _ p1_gw _ <"$RESULTS_DIR/sse-plugin.$r.parsed"
  # columns: 1 round, 2-4 without: rps p99 gw_us, 5-7 with llm-usage: rps p99 gw_us, 8 req/s ratio
  printf '%d %s %s %s %s %s %s %s\n' "$r" "$p0_rps" "$p0_p99" "$p0_gw" "$p1_rps" "$p1_p99" "$p1_gw" \
    "$(awk -v a="$p1_rps" -v b="$p0_rps" 'BEGIN { printf "%.4f", a / b }')" >>"$RESULTS_DIR/plugin_rounds.txt"

  # (g0)/(g): the bare pingora baseline, without and with one EVALSHA per call. The gateway's
  # PID slot measures the baseline's CPU here.
  saved_pid=$GW_PID
  GW_PID=$BASE_PID
  for kind in bare evalsha; do
    log "round $r/$ROUNDS: (g) baseline $kind"
    path=$([[ $kind == bare ]] && echo /open || echo /evalsha)
    warm "baseline-$kind.$r" "$BASE$path"
    measure "baseline-$kind.$r" "$BASE$path"
  done
  GW_PID=$saved_pid
  read -r g0_rps _ g0_p99 _ _ _ _ _ g0_gw _ <"$RESULTS_DIR/baseline-bare.$r.parsed"
  read -r g1_rps _ g1_p99 _ _ _ _ _ g1_gw g1_rd <"$RESULTS_DIR/baseline-evalsha.$r.parsed"
  # columns: 1 round, 2-4 bare: rps p99 cpu-us, 5-8 with EVALSHA: rps p99 cpu-us redis-us,
  # 9 req/s ratio evalsha/bare, 10 tollgate metered/unmetered of the same round
  printf '%d %s %s %s %s %s %s %s %s %s\n' "$r" "$g0_rps" "$g0_p99" "$g0_gw" "$g1_rps" "$g1_p99" "$g1_gw" "$g1_rd" \
    "$(awk -v a="$g1_rps" -v b="$g0_rps" 'BEGIN { printf "%.4f", a / b }')" \
    "$(awk -v m="$m_rps" -v u="$u_rps" 'BEGIN { printf "%.4f", m / u }')" >>"$RESULTS_DIR/baseline_rounds.txt"
done

# ---------------------------------------------------------------- report
col() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/rounds.txt" | median; }
u_rps=$(col 2); u_p50=$(col 3); u_p99=$(col 4)
m_rps=$(col 5); m_p50=$(col 6); m_p99=$(col 7)
ratio=$(col 8)
u_c0=$(col 16); u_c1=$(col 17); m_c0=$(col 18); m_c1=$(col 19)
u_gw=$(col 20); m_gw=$(col 21); m_rd=$(col 22); cpu_ratio=$(col 23)
ratios=$(awk '{ printf "%s%.3f", (NR > 1 ? " " : ""), $8 }' "$RESULTS_DIR/rounds.txt")

{
  echo
  echo "tollgate load benchmark — $STAMP"
  echo "loopback; wrk -t1 -c$CONNECTIONS -d$DURATION; $PIN_NOTE; tollgate server.threads=1"
  echo "before the runs: $LOAD_BEFORE"
  echo "$HALT_POLL_NOTE"
  echo
  row() { printf '%-34s %9s %8s %8s %6s %6s %7s %8s\n' "$@"; }
  row "scenario" "req/s" "p50 ms" "p99 ms" "cpu0%" "cpu1%" "gw us/r" "redis us/r"
  row "----------------------------------" "---------" "--------" "--------" "------" "------" "-------" "--------"
  row "(a) origin: nginx direct" "$(printf %.0f "$o_rps")" "$(printf %.3f "$o_p50")" "$(printf %.3f "$o_p99")" "$o_c0" "$o_c1" "-" "-"
  row "(b) tollgate /open, unmetered *" "$(printf %.0f "$u_rps")" "$(printf %.3f "$u_p50")" "$(printf %.3f "$u_p99")" "$u_c0" "$u_c1" "$u_gw" "-"
  row "(c) tollgate /, metered (redis) *" "$(printf %.0f "$m_rps")" "$(printf %.3f "$m_p50")" "$(printf %.3f "$m_p99")" "$m_c0" "$m_c1" "$m_gw" "$m_rd"
  mcol() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/measured_rounds.txt" | median; }
  row "(d0) tokens at a fixed cost *" "$(printf %.0f "$(mcol 8)")" "-" "$(printf %.3f "$(mcol 9)")" "-" "-" "-" "-"
  row "(d) tokens from JSON body *" "$(printf %.0f "$(mcol 2)")" "-" "$(printf %.3f "$(mcol 3)")" "-" "-" "-" "-"
  row "(e) tokens from SSE stream *" "$(printf %.0f "$(mcol 4)")" "-" "$(printf %.3f "$(mcol 5)")" "-" "-" "-" "-"
  pcol() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/plugin_rounds.txt" | median; }
  row "(f0) SSE tokens, from_response *" "$(printf %.0f "$(pcol 2)")" "-" "$(printf %.3f "$(pcol 3)")" "-" "-" "$(pcol 4)" "-"
  row "(f) SSE tokens, llm-usage plugin *" "$(printf %.0f "$(pcol 5)")" "-" "$(printf %.3f "$(pcol 6)")" "-" "-" "$(pcol 7)" "-"
  bcol() { awk -v c="$1" '{ print $c }' "$RESULTS_DIR/baseline_rounds.txt" | median; }
  row "(g0) bare pingora passthrough *" "$(printf %.0f "$(bcol 2)")" "-" "$(printf %.3f "$(bcol 3)")" "-" "-" "$(bcol 4)" "-"
  row "(g) bare pingora + 1 EVALSHA *" "$(printf %.0f "$(bcol 5)")" "-" "$(printf %.3f "$(bcol 6)")" "-" "-" "$(bcol 7)" "$(bcol 8)"
  echo
  printf 'response-measured/fixed-cost req/s, same two meters: JSON %.3f, SSE %.3f (medians of per-round ratios)\n' "$(mcol 6)" "$(mcol 7)"
  printf 'llm-usage plugin on SSE / same route without it, req/s: %.3f (median of per-round ratios)\n' "$(pcol 8)"
  printf 'metered/unmetered req/s: %.3f  (median of per-round ratios: %s)\n' "$ratio" "$ratios"
  printf 'gateway CPU per request, metered/unmetered: %.3f (median of per-round ratios)\n' "$cpu_ratio"
  printf 'metered calls per reservation script run (EVALSHA): %.1f (median of rounds)\n' "$(col 24)"
  printf 'baseline: bare pingora + 1 EVALSHA / bare pingora req/s: %.3f (per round: %s)\n' "$(bcol 9)" \
    "$(awk '{ printf "%s%.3f", (NR > 1 ? " " : ""), $9 }' "$RESULTS_DIR/baseline_rounds.txt")"
  printf '* median of %d rounds.\n' "$ROUNDS"
  echo "cpuN%: busy share of CPU N during the run, whoever used it ($PIN_NOTE);"
  echo "gw us/r, redis us/r: CPU microseconds per answered request used by the gateway, by Redis."
  echo "Both CPUs near 100% means the run was bound by CPU 1 (wrk + nginx + redis) or by other"
  echo "processes, not by the gateway; CPU per request is the steadier measure then."
  echo
  echo "per round:"
  awk '{ printf "  round %d: unmetered %.0f req/s %s us/r (cpu0 %s%%, cpu1 %s%%); metered %.0f req/s %s us/r (cpu0 %s%%, cpu1 %s%%); ratio %.3f\n", $1, $2, $20, $16, $17, $5, $21, $18, $19, $8 }' \
    "$RESULTS_DIR/rounds.txt"
  echo
  echo "metered counting check (per round: redis counter delta vs 2xx answers wrk read):"
  awk '{ printf "  round %d: redis +%d, wrk 2xx %d, non-2xx %d, socket errors %d, difference %+d  %s\n", $1, $13, $12, $11, $10, $14, $15 }' \
    "$RESULTS_DIR/rounds.txt"
  echo "  (a difference of 0..$CONNECTIONS is calls in flight when wrk stopped: admitted and counted,"
  echo "   their answers never read)"
  echo
  echo "raw wrk outputs: $RESULTS_DIR"
} | tee "$RESULTS_DIR/summary.txt"

((o_err + 0 == 0)) || log "warning: wrk saw socket errors against the origin"
if ((mismatch)); then
  die "the Redis counter disagrees with wrk's 2xx count (see above)"
fi
