#!/usr/bin/env bash
# What a Redis Cluster store costs the metered route, against one Redis server, side by side in
# one run, on loopback:
#
#   benches/cluster.sh                    # DURATION=8s ROUNDS=5 by default
#
# Two gateways from the same release binary, identical but for `store`: one on a Redis server,
# one on a three-node Redis Cluster (`kind: redis-cluster`). Both run pinned to CPU 0 with
# server.threads: 1 and are driven one at a time by wrk on CPU 1, where nginx (the origin), the
# Redis server and the cluster's three nodes run too. Rounds alternate which gateway goes first;
# the table shows medians and the median of per-round ratios. TENANTS (default 1) spreads the
# calls over that many tenants, round-robin (a wrk Lua script picks each call's key): with 1,
# every batch of reservations goes to one node; with more, batches are split by slot.
#
# After every round each store's counters are compared with the 2xx answers wrk counted: they
# must agree, except for at most CONNECTIONS calls still in flight when wrk stopped.
#
# Knobs (environment, or NAME=value arguments): DURATION (8s), ROUNDS (5), CONNECTIONS (32), WARMUP (2s), TENANTS (1),
# SKIP_BUILD (0), TOLLGATE_BIN, RESULTS_DIR (target/load/cluster-<UTC time>).
# Needs: cargo, nginx, redis-server, redis-cli, wrk, curl, taskset, 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=cluster
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_args "$@"
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-5}
TENANTS=${TENANTS:-1}
bench_setup cluster-
for cmd in nginx redis-server redis-cli wrk curl taskset; do
  command -v "$cmd" >/dev/null 2>&1 ||
    die "$cmd is missing (apt-get install -y nginx-light redis-server redis-tools wrk curl)"
done
[[ $(nproc) -ge 2 ]] || die "needs 2 cores: the gateways on one, the load on the other"
[[ $TENANTS =~ ^[1-9][0-9]?$ ]] || die "TENANTS must be 1 to 99"
LOAD_PIN=(taskset -c 1)
release_bin
DURATION_S=$(to_secs "$DURATION")

scratch cluster
free_port ORIGIN_PORT
free_port REDIS_PORT
start_plain_origin
start_redis

# ---------------------------------------------------------------- the cluster: 3 primaries
NODES=()
NODE_PIDS=()
for i in 1 2 3; do
  free_port port
  free_port bus
  "${LOAD_PIN[@]}" redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
    --cluster-port "$bus" --cluster-config-file "$TMP/nodes-$port.conf" --save "" \
    --appendonly no --dir "$TMP" --daemonize no --logfile "$RESULTS_DIR/node-$port.log" &
  PIDS+=($!)
  NODE_PIDS+=($!)
  NODES+=("$port")
  wait_until 10 "$!" "cluster node $i" redis-cli -p "$port" ping
done
timeout 60 redis-cli --cluster create "${NODES[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
  >"$RESULTS_DIR/cluster-create.txt" 2>&1 || die "redis-cli --cluster create failed (see $RESULTS_DIR)"
for port in "${NODES[@]}"; do
  wait_until 30 "${NODE_PIDS[0]}" "cluster state ok on $port" \
    sh -c "redis-cli -p $port cluster info | grep -q cluster_state:ok"
done

# ---------------------------------------------------------------- tenants and gateways
KEYS=()
tenants_yaml=""
for ((t = 1; t <= TENANTS; t++)); do
  key="tg_bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  KEYS+=("$key")
  tenants_yaml+="  t$t: { plan: bench, keys: [{ id: k$t, sha256: \"$(printf %s "$key" | sha256sum | cut -d' ' -f1)\" }] }"$'\n'
done

# gateway NAME STORE_YAML: starts a pinned gateway; sets PORT_<NAME> and PID_<NAME>.
gateway() {
  local name=$1 store=$2 port pid
  free_port port
  cat >"$TMP/$name.yaml" <<CONF
server: { listen: "127.0.0.1:$port", threads: 1, grace_period: 1s }
store: $store
upstreams: { origin: { targets: ["127.0.0.1:$ORIGIN_PORT"] } }
tenants:
$tenants_yaml
plans: { bench: { meters: { requests: { limit: 1000000000, period: month } } } }
routes:
  - { name: open, match: { path: /open }, upstream: origin, auth: none }
  - { name: metered, match: { path_prefix: / }, upstream: origin, meter: { requests: 1 } }
CONF
  "$BIN" check --config "$TMP/$name.yaml" >/dev/null || die "tollgate check rejected $name.yaml"
  TOLLGATE_LOG=warn taskset -c 0 "$BIN" serve --config "$TMP/$name.yaml" \
    >"$RESULTS_DIR/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_until 30 "$pid" "tollgate ($name)" curl -fsS --max-time 2 "http://127.0.0.1:$port/open"
  printf -v "PORT_$name" '%s' "$port"
  printf -v "PID_$name" '%s' "$pid"
}
gateway single "{ kind: redis, url: \"redis://127.0.0.1:$REDIS_PORT/0\" }"
gateway cluster "{ kind: redis-cluster, urls: [\"redis://127.0.0.1:${NODES[0]}\"] }"

# Every call carries the key of tenant (n mod TENANTS): wrk sends them round-robin.
cat >"$TMP/keys.lua" <<LUA
local keys = { $(printf '"%s", ' "${KEYS[@]}") }
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. keys[n % #keys + 1] })
end
LUA

# counted NAME: the sum of every tenant's `requests` counters in that gateway's store.
counted() {
  local total=0 t v
  for ((t = 1; t <= TENANTS; t++)); do
    if [[ $1 == single ]]; then
      v=$(redis-cli -p "$REDIS_PORT" --scan --pattern "tg:{t$t}:m:requests:*" |
        while read -r k; do redis-cli -p "$REDIS_PORT" get "$k"; done | awk '{ s += $1 } END { print s + 0 }')
    else
      v=0
      for port in "${NODES[@]}"; do
        v=$((v + $(redis-cli -p "$port" --scan --pattern "tg:{t$t}:m:requests:*" |
          while read -r k; do redis-cli -p "$port" get "$k"; done | awk '{ s += $1 } END { print s + 0 }')))
      done
    fi
    total=$((total + v))
  done
  echo "$total"
}

# measure NAME ROUND -> appends "name round rps p99 gw_us 2xx counted" to runs.txt
measure() {
  local name=$1 r=$2 port pid t0 t1 c0 c1 parsed
  port=PORT_$name
  pid=PID_$name
  run_wrk "$RESULTS_DIR/$name.$r.warmup" $((DURATION_S + 30)) -t1 -c"$CONNECTIONS" -d"$WARMUP" \
    -s "$TMP/keys.lua" "http://127.0.0.1:${!port}/" || die "wrk warmup failed: $name"
  sleep 0.5
  c0=$(counted "$name")
  t0=$(proc_ticks "${!pid}")
  run_wrk "$RESULTS_DIR/$name.$r.txt" $((DURATION_S + 30)) -t1 -c"$CONNECTIONS" -d"$DURATION" \
    --latency -s "$TMP/keys.lua" "http://127.0.0.1:${!port}/" || die "wrk failed: $name"
  t1=$(proc_ticks "${!pid}")
  sleep 0.5
  c1=$(counted "$name")
  parsed=$(parse_wrk "$RESULTS_DIR/$name.$r.txt")
  read -r rps _ p99 reqs non2xx _ <<<"$parsed"
  echo "$name $r $rps $p99 $(us_per_req $((t1 - t0)) "$reqs") $((reqs - non2xx)) $((c1 - c0))" \
    >>"$RESULTS_DIR/runs.txt"
  log "round $r: $name $rps req/s, 2xx $((reqs - non2xx)), counted $((c1 - c0))"
}

: >"$RESULTS_DIR/runs.txt"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(single cluster); else order=(cluster single); fi
  for name in "${order[@]}"; do measure "$name" "$r"; done
done

# ---------------------------------------------------------------- report
mismatch=0
while read -r name r _ _ _ ok counted; do
  extra=$((counted - ok))
  if ((extra < 0 || extra > CONNECTIONS)); then
    log "MISMATCH: $name round $r: $ok 2xx answers, $counted counted"
    mismatch=1
  fi
done <"$RESULTS_DIR/runs.txt"
med() { awk -v n="$1" -v c="$2" '$1 == n { print $c }' "$RESULTS_DIR/runs.txt" | median; }
ratios=$(awk '{ v[$2, $1] = $3; w[$2, $1] = $5 } END {
    for (r = 1; (r, "single") in v; r++) printf "%.4f %.4f\n", v[r, "cluster"] / v[r, "single"], w[r, "cluster"] / w[r, "single"]
  }' "$RESULTS_DIR/runs.txt")
{
  echo
  echo "Redis Cluster store vs one Redis server, metered route — $STAMP, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "loopback; wrk -t1 -c$CONNECTIONS -d$DURATION; $TENANTS tenant(s); gateways on CPU 0 (threads: 1); wrk, nginx, Redis and the 3 nodes on CPU 1"
  printf '%-26s %9s %8s %8s\n' "store" "req/s" "p99 ms" "gw us/r"
  printf '%-26s %9.0f %8.3f %8s\n' "redis (one server) *" "$(med single 3)" "$(med single 4)" "$(med single 5)"
  printf '%-26s %9.0f %8.3f %8s\n' "redis-cluster (3 nodes) *" "$(med cluster 3)" "$(med cluster 4)" "$(med cluster 5)"
  printf 'cluster/single req/s: %.3f (per round: %s)\n' "$(awk '{ print $1 }' <<<"$ratios" | median)" \
    "$(awk '{ printf "%s%.3f", (NR > 1 ? " " : ""), $1 }' <<<"$ratios")"
  printf 'cluster/single gateway CPU per call: %.3f (median of per-round ratios)\n' "$(awk '{ print $2 }' <<<"$ratios" | median)"
  echo "* median of $ROUNDS rounds; every round's counters $( ((mismatch)) && echo 'did NOT all match' || echo 'matched') wrk's 2xx answers (to within the calls in flight)"
} | tee "$RESULTS_DIR/summary.txt"
((mismatch == 0)) || die "a store's counters did not match the answers"
