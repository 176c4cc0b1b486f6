# Helpers shared by the load benchmarks (benches/load.sh, benches/telemetry.sh); sourced, not run.
# The sourcing script sets ROOT and TAG (the log prefix) before, and TMP (a scratch directory),
# LOAD_PIN (the pinning of wrk, nginx, Redis) after; `scratch` sets TMP and PIDS.

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$TAG" "$*" >&2; exit 1; }

# bench_args [--positional] "$@": a script's arguments. Its settings are environment variables,
# and may also be given as NAME=value arguments (`benches/telemetry.sh SINKS=stream,file`),
# which are exported; -h or --help prints the script's opening comment. With --positional the
# other arguments are left in ARGS (compare.sh's two builds); without, any other argument stops
# the run: an argument silently ignored would measure something other than what was asked for.
bench_args() {
  local arg positional=0
  ARGS=()
  if [[ ${1:-} == --positional ]]; then
    positional=1
    shift
  fi
  for arg in "$@"; do
    case $arg in
      -h | --help)
        awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
        exit 0
        ;;
      *=*)
        [[ ${arg%%=*} =~ ^[A-Z_][A-Z0-9_]*$ ]] ||
          die "'$arg': a setting is NAME=value with NAME in capitals (see $0 --help)"
        export "${arg?}"
        ;;
      *)
        ((positional)) ||
          die "unknown argument '$arg': settings are NAME=value, as arguments or in the environment (see $0 --help)"
        ARGS+=("$arg")
        ;;
    esac
  done
}

# bench_setup PREFIX: the knobs both scripts share (DURATION, CONNECTIONS, WARMUP, PIN,
# SKIP_BUILD, RESULTS_DIR), PATH with the sbin directories, cd to ROOT, STAMP, and the results
# directory target/load/<PREFIX><UTC time>.
bench_setup() {
  DURATION=${DURATION:-10s}
  CONNECTIONS=${CONNECTIONS:-32}
  WARMUP=${WARMUP:-2s}
  PIN=${PIN:-1}
  SKIP_BUILD=${SKIP_BUILD:-0}
  cd "$ROOT"
  export PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
  STAMP=$(date -u +%Y%m%dT%H%M%SZ)
  RESULTS_DIR=${RESULTS_DIR:-target/load/$1${STAMP}}
  mkdir -p "$RESULTS_DIR"
  RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
}
# "10s" / "2m" / "500ms" -> whole seconds (rounded up), for time bounds.
to_secs() {
  local v=$1
  case $v in
    *ms) echo $(((${v%ms} + 999) / 1000)) ;;
    *s) echo "${v%s}" ;;
    *m) echo $((${v%m} * 60)) ;;
    *h) echo $((${v%h} * 3600)) ;;
    *) echo "$v" ;;
  esac
}

# alive PID: the process runs (an exited child that was not waited for yet does not count).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  if [[ -n ${WRK_PID:-} ]]; then
    kill -TERM "$WRK_PID" 2>/dev/null || true
    wait "$WRK_PID" 2>/dev/null || true
  fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 100; i++)); do   # up to 10 s each
      alive "$pid" || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
  if [[ -n ${HALT_POLL_RESTORE:-} ]]; then
    echo "$HALT_POLL_RESTORE" >"$HALT_POLL_FILE" 2>/dev/null || true
  fi
  exit "$rc"
}

USED_PORTS=" "
# Pick ports below the kernel's ephemeral range, so that no outgoing connection (wrk, the
# gateway's upstream pool, TIME_WAIT leftovers of earlier runs) can hold the port we bind.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
PORT_LOW=15000
PORT_HIGH=$((EPHEMERAL_LOW - 1))
((PORT_HIGH > PORT_LOW + 1000)) || { PORT_LOW=20000; PORT_HIGH=60000; }
# port_in_use PORT: any TCP socket (listening, connected or TIME_WAIT) has it as local port.
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Htan "sport = :$1" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# free_port VAR: a TCP port on 127.0.0.1 that nothing uses (and that we did not pick yet).
free_port() {
  local p _
  for _ in $(seq 1 500); do
    p=$((PORT_LOW + RANDOM % (PORT_HIGH - PORT_LOW)))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! port_in_use "$p"; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

# wait_until SECONDS PID WHAT CMD...: retries CMD until it succeeds; fails if PID died.
wait_until() {
  local secs=$1 pid=$2 what=$3 i
  shift 3
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$pid" || die "$what exited while starting (logs in $RESULTS_DIR)"
    sleep 0.1
  done
  die "$what did not come up within ${secs}s (logs in $RESULTS_DIR)"
}

# parse FILE -> "rps p50_ms p99_ms requests non2xx socket_errors"
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    $1 == "50%" && NF == 2 { p50 = ms($2) }
    $1 == "99%" && NF == 2 { p99 = ms($2) }
    / requests in /        { reqs = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ {
      for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { gsub(",", "", $i); errs += $i }
    }
    /^Requests\/sec:/      { rps = $2 }
    END {
      if (rps == "") exit 1
      printf "%.1f %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, non2xx, errs
    }' "$1"
}

# /proc/stat snapshot: "cpuN busy total" per CPU (busy = all but idle and iowait).
cpu_snapshot() {
  awk '/^cpu[0-9]/ { t = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; print $1, t - $5 - $6, t }' /proc/stat
}

# cpu_busy BEFORE AFTER -> "cpu0% cpu1%" (busy share of each of the first two CPUs)
cpu_busy() {
  awk 'NR == FNR { b[$1] = $2; t[$1] = $3; next }
       { dt = $3 - t[$1]; pct[$1] = dt > 0 ? 100 * ($2 - b[$1]) / dt : 0 }
       END { printf "%.0f %.0f\n", pct["cpu0"], ("cpu1" in pct ? pct["cpu1"] : 0) }' "$1" "$2"
}

WRK_PID=
run_wrk() {
  local out=$1 bound=$2 rc=0
  shift 2
  timeout "$bound" "${LOAD_PIN[@]}" wrk "$@" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || rc=$?
  WRK_PID=
  return "$rc"
}

TICKS_PER_S=$(getconf CLK_TCK)
proc_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }   # fields after "pid (comm) "; utime and stime are the 12th and 13th
  awk '{ print $12 + $13 }' <<<"$stat"
}

# us_per_req TICKS REQUESTS -> CPU microseconds per request
us_per_req() { awk -v t="$1" -v n="$2" -v hz="$TICKS_PER_S" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }'; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }


# start_nginx: nginx with $TMP/nginx/nginx.conf on the load CPU; waits until ORIGIN_PORT answers.
start_nginx() {
  "${LOAD_PIN[@]}" nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" \
    >"$RESULTS_DIR/nginx.log" 2>&1 &
  PIDS+=($!)
  wait_until 10 "${PIDS[-1]}" nginx curl -fsS --max-time 1 "http://127.0.0.1:$ORIGIN_PORT/"
}

# ab_prologue: what the A/B benchmarks (telemetry.sh, milestones.sh) do before their runs:
# check the tools, set WRK_BOUND / WARM_BOUND, pin the gateways to CPU 0 and the load to CPU 1
# (PIN=0 or one core: no pinning), build the release binary unless SKIP_BUILD=1 or
# TOLLGATE_BIN is set, set BIN.
ab_prologue() {
  local cmd
  for cmd in cargo nginx redis-server redis-cli wrk curl taskset; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (see benches/load.sh for the packages)"
  done
  WRK_BOUND=$(($(to_secs "$DURATION") + 30))
  WARM_BOUND=$(($(to_secs "$WARMUP") + 30))
  if [[ $PIN != 0 && $(nproc) -ge 2 ]]; then
    GW_PIN=(taskset -c 0)
    LOAD_PIN=(taskset -c 1)
  else
    GW_PIN=()
    LOAD_PIN=()
  fi
  release_bin
}

# release_bin: builds the release binary unless SKIP_BUILD=1 or TOLLGATE_BIN
# is set (a build to measure, an earlier commit's say), and sets BIN to the binary measured.
release_bin() {
  if [[ $SKIP_BUILD != 1 && -z ${TOLLGATE_BIN:-} ]]; then
    log "cargo build --release"
    cargo build --release --bin tollgate
  fi
  BIN=${TOLLGATE_BIN:-$ROOT/target/release/tollgate}
  [[ -x $BIN ]] || die "$BIN not found (build it with cargo build --release)"
}

# bench_key: a random API key for the bench tenant (KEY) and its SHA-256 (KEY_SHA).
bench_key() {
  KEY="tg_bench_$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  KEY_SHA=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
}

# metered_gateway PORT: the config of a one-core gateway on PORT with the bench tenant (KEY_SHA)
# on a plan metering `requests` in the Redis on REDIS_PORT, up to `routes:` (the caller adds
# its routes, and any other section, after it).
# SERVER_EXTRA (environment): more `server` settings for the gateways, e.g.
# SERVER_EXTRA="request_id: true", to measure what a setting costs; PLAN_EXTRA likewise for
# the bench plan, e.g. PLAN_EXTRA="rate_limit: { requests: 1000000000, per: 1s, shared: true }".
metered_gateway() {
  local store="{ kind: redis, url: \"redis://127.0.0.1:$REDIS_PORT/0\" }"
  if [[ -n ${REDIS_TLS_PORT:-} ]]; then
    store="{ kind: redis, url: \"rediss://127.0.0.1:$REDIS_TLS_PORT/0\", ca_file: \"$TMP/tls/ca.crt\" }"
  fi
  cat <<CONF
server: { listen: "127.0.0.1:$1", threads: 1, grace_period: 1s${SERVER_EXTRA:+, $SERVER_EXTRA} }
store: $store
upstreams: { origin: { targets: ["127.0.0.1:$ORIGIN_PORT"] } }
tenants: { bench: { plan: bench, keys: [{ id: bench-key, sha256: "$KEY_SHA" }] } }
plans: { bench: { meters: { requests: { limit: 1000000000, period: month } }${PLAN_EXTRA:+, $PLAN_EXTRA} } }
CONF
}

# two_route_gateway PORT TELEMETRY(0|1): the config of a metered_gateway with an unmetered
# `/open` route and a metered `/` route; with TELEMETRY=1 also a spool in TMP and a redis_stream
# sink on the store's Redis (callgrind.sh, wakeups.sh), or with TELEMETRY_SINK=file (environment)
# a file sink in TMP instead.
two_route_gateway() {
  metered_gateway "$1"
  cat <<CONF
routes:
  - { name: open, match: { path: /open }, upstream: origin, auth: none }
  - { name: metered, match: { path_prefix: / }, upstream: origin, meter: { requests: 1 } }
CONF
  if [[ $2 == 1 ]]; then
    cat <<CONF
telemetry:
  spool: $TMP/spool-$1
  sinks:
CONF
    case ${TELEMETRY_SINK:-stream} in
      stream) echo "    - { name: events, kind: redis_stream, url: \"redis://127.0.0.1:$REDIS_PORT/0\", stream: \"tg:events:$1\" }" ;;
      file) echo "    - { name: events, kind: file, path: \"$TMP/events-$1.jsonl\" }" ;;
      *) die "TELEMETRY_SINK must be stream or file" ;;
    esac
  fi
}

# start_plain_origin: nginx on ORIGIN_PORT answering every request 200 "ok" (the origin of the
# A/B benchmarks, which measure the gateway, not the origin).
start_plain_origin() {
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location / { default_type text/plain; return 200 'ok'; }
    }
}
CONF
  start_nginx
}

# start_redis: a Redis without persistence on REDIS_PORT, on the load CPU; sets REDIS_PID.
# With STORE_TLS=1 it also listens for TLS on REDIS_TLS_PORT, with a certificate for 127.0.0.1
# from a CA made for the run ($TMP/tls/ca.crt), and metered_gateway's store uses that port
# (`rediss://`, `ca_file`); the scripts' own redis-cli calls keep the plain port.
start_redis() {
  local tls=()
  if [[ ${STORE_TLS:-0} == 1 ]]; then
    command -v openssl >/dev/null 2>&1 || die "STORE_TLS=1 needs openssl"
    free_port REDIS_TLS_PORT
    mkdir -p "$TMP/tls"
    (
      cd "$TMP/tls"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=bench-ca -keyout ca.key -out ca.crt
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj /CN=127.0.0.1 -keyout server.key -out server.csr
      printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
        -extfile server.ext -out server.crt
    ) >"$RESULTS_DIR/tls.log" 2>&1 || die "could not make the TLS certificates (see $RESULTS_DIR/tls.log)"
    tls=(--tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TMP/tls/server.crt"
      --tls-key-file "$TMP/tls/server.key" --tls-auth-clients no)
  fi
  "${LOAD_PIN[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" "${tls[@]}" --save "" --appendonly no \
    --dir "$TMP" --daemonize no --logfile "$RESULTS_DIR/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_until 10 "$REDIS_PID" redis redis-cli -p "$REDIS_PORT" ping
}

# evalsha_calls: EVALSHAs the Redis of start_redis has run so far. On a metered run these are
# the reservations' script runs, each carrying a batch of calls.
evalsha_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats |
    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0
}

# scratch NAME: TMP, a fresh scratch directory, and PIDS, the processes to stop; on exit (also
# on Ctrl-C or error) `cleanup` stops them and removes TMP. Then `halt_poll` (below).
scratch() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-$1.XXXXXX")
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  halt_poll
}

# Guest halt polling (the `cpuidle-haltpoll` driver of a KVM guest): how long an idle vCPU
# polls for new work before it halts. A halted vCPU is woken by the host, which costs the CPU
# that wakes it a VM exit and the woken one a reschedule, so with polling off every idle moment
# of a core makes the next wake-up of that core expensive. Loopback benchmarks are made of such
# wake-ups: the gateway wakes wrk, nginx and Redis on the other core, and they wake it. The
# kernel's default is 200000 ns; a VM may ship with 0. On one such VM (2026-12-05), two
# alternating pairs of 5 s runs went from metered/unmetered 0.773 and 0.745 with polling off
# to 0.813 and 0.819 with 200000 ns, and the metered route's core from 93% to 97% busy.
#
# HALT_POLL_NS (unset: the machine as it is) sets it for the run and restores it on exit
# (root, and only where the driver is loaded). HALT_POLL_NOTE says what the runs had, for the
# results; a warning is logged when polling is off.
HALT_POLL_FILE=/sys/module/haltpoll/parameters/guest_halt_poll_ns
halt_poll() {
  HALT_POLL_NOTE="guest halt polling: not a KVM guest with cpuidle-haltpoll"
  [[ -r $HALT_POLL_FILE ]] || {
    [[ -z ${HALT_POLL_NS:-} ]] || die "HALT_POLL_NS is set, but $HALT_POLL_FILE does not exist"
    return 0
  }
  local was
  was=$(cat "$HALT_POLL_FILE")
  if [[ -n ${HALT_POLL_NS:-} && $HALT_POLL_NS != "$was" ]]; then
    [[ $HALT_POLL_NS =~ ^[0-9]+$ ]] || die "HALT_POLL_NS must be a number of nanoseconds"
    echo "$HALT_POLL_NS" >"$HALT_POLL_FILE" 2>/dev/null ||
      die "could not write $HALT_POLL_FILE (HALT_POLL_NS needs root)"
    HALT_POLL_RESTORE=$was
    log "guest halt polling set to $HALT_POLL_NS ns for the run (the machine has $was; restored on exit)"
    HALT_POLL_NOTE="guest halt polling: $HALT_POLL_NS ns for the run (the machine's setting: $was)"
  else
    HALT_POLL_NOTE="guest halt polling: $was ns (the machine's setting)"
    if [[ $was == 0 ]]; then
      log "warning: guest halt polling is off on this VM ($HALT_POLL_FILE is 0): idle cores halt at once," \
        "and the runs with more idle time (the metered route, telemetry) pay more per wake-up; HALT_POLL_NS=200000 restores the kernel's default for the run"
    fi
  fi
}
