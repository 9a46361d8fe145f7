#!/usr/bin/env bash
# cluster-bench.sh -- what [cluster] costs: messages/s end to end with one node alone, one node
# joined to Redis, and two nodes joined to one Redis (the load split between them), alternated
# ROUNDS times in one run on this machine.
#
#   loadtest send --> ringmta node(s) (durable spool) --> loadtest sink
#                           \--- redis-server (leases, events, counts)
#
# Per phase it prints e2e msg/s (until the sink has every message), the nodes' CPU seconds per
# 1000 messages (all nodes together) and the Redis commands per message.
#
# Environment: N=20000 messages per phase, SIZE=1024, CONC=50 (connections in all, split between
# the senders), ROUNDS=3,
# THREADS=2 (threads of the single node; each of the two nodes gets THREADS/2),
# WORK=/tmp/ringmta-cluster-bench. Needs `cargo build --release` and redis-server.
# Everything listens on and connects to 127.0.0.1 only; every process is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}; SIZE=${SIZE:-1024}; CONC=${CONC:-50}; ROUNDS=${ROUNDS:-3}; THREADS=${THREADS:-2}
WORK=${WORK:-/tmp/ringmta-cluster-bench}; BIN=${BIN:-target/release}
HALF=$(( THREADS / 2 > 0 ? THREADS / 2 : 1 ))
rm -rf "$WORK"; mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$WORK" \
  > "$WORK/redis.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis_commands() { redis-cli -p "$port" info stats | awk -F: '/^total_commands_processed/{print $2+0}'; }


# node NAME THREADS CLUSTER(0/1): starts a node; appends its pid to NODE_PIDS, its address to ADDRS.
node() {
  local dir="$WORK/$1" cluster=""
  rm -rf "$dir"; mkdir -p "$dir"
  [ "$3" = 1 ] && cluster="[cluster]
redis = \"redis://127.0.0.1:$port\"
node = \"$1\""
  cat > "$dir.toml" <<CONF
hostname = "bench.invalid"
spool_dir = "$dir"
threads = $2
[listen]
smtp = ["127.0.0.1:0"]
submission = []
submissions = []
http = ""
[limits]
max_connections_per_core = 20000
[delivery]
routes = { "*" = "$SINK" }
max_connections = 32
max_messages_per_connection = 1000
[log]
level = "warn"
$cluster
CONF
  "$BIN/ringmta" serve --config "$dir.toml" > "$dir.out" 2> "$dir.err" &
  local p=$!; pids+=("$p"); NODE_PIDS+=("$p")
  for _ in $(seq 200); do grep -q "ringmta ready" "$dir.out" && break; sleep 0.05; done
  ADDRS+=("$(sed -n 's/.*smtp=\([^ ]*\).*/\1/p' "$dir.out")")
}

cpu() { local t=0 p; for p in "${NODE_PIDS[@]}"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }

# phase LABEL NODES CLUSTER
phase() {
  NODE_PIDS=(); ADDRS=()
  start_sink
  if [ "$2" = 1 ]; then node solo "$THREADS" "$3"; else node mta-a "$HALF" 1; node mta-b "$HALF" 1; fi
  sleep 0.5  # the first grant
  local per=$(( N / ${#ADDRS[@]} )) conc=$(( CONC / ${#ADDRS[@]} )) c0 r0 t0 senders=() a i
  c0=$(cpu); r0=$(redis_commands); t0=$(date +%s.%N)
  for a in "${ADDRS[@]}"; do
    "$BIN/loadtest" send --target "$a" -c "$conc" -m "$per" -s "$SIZE" --pipelining \
      > "$WORK/send-$a.out" 2>&1 &
    senders+=($!)
  done
  for p in "${senders[@]}"; do wait "$p"; done
  for i in $(seq 6000); do kill -0 "$SINK_PID" 2>/dev/null || break; sleep 0.05; done
  local el c1 r1 tck
  el=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.3f", $1-$2}')
  c1=$(cpu); r1=$(redis_commands); tck=$(getconf CLK_TCK)
  printf '%-34s e2e %6.0f msg/s  cpu %.3f s/1000 msg  redis %.3f cmd/msg\n' "$1" \
    "$(awk -v n="$N" -v s="$el" 'BEGIN{print n/s}')" \
    "$(awk -v a="$c0" -v b="$c1" -v n="$N" -v t="$tck" 'BEGIN{print (b-a)/t/n*1000}')" \
    "$(awk -v a="$r0" -v b="$r1" -v n="$N" 'BEGIN{print (b-a)/n}')"
  for p in "${NODE_PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
}

echo "# $N x $SIZE B per phase, c=$CONC in all, durable; one node: threads=$THREADS; two nodes: threads=$HALF each"
for r in $(seq "$ROUNDS"); do
  phase "round $r: one node, no cluster" 1 0
  phase "round $r: one node, [cluster]" 1 1
  phase "round $r: two nodes, [cluster]" 2 1
done
