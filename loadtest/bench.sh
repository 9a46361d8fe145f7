#!/usr/bin/env bash
# bench.sh -- end-to-end benchmark of ringmta with the project's own load tool, and the raw
# ceiling (loadtest send -> loadtest sink, no MTA), on loopback.
#
#   loadtest send --> ringmta (durable spool) --> loadtest sink
#
# Environment: N=20000 messages, SIZE=1024, CONC=50, THREADS=0 (ringmta threads, 0 = per core),
# REUSE=1 (messages per connection for the sender; 1 = a new session per message),
# DURABILITY=fsync, WORK=/tmp/ringmta-bench. Needs a release build (cargo build --release).
# Everything listens on and connects to 127.0.0.1 only; every process is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}; SIZE=${SIZE:-1024}; CONC=${CONC:-50}; THREADS=${THREADS:-0}
PER_CONN=${PER_CONN:-1}; DURABILITY=${DURABILITY:-fsync}; WORK=${WORK:-/tmp/ringmta-bench}
BIN=target/release
rm -rf "$WORK"; mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The sink: port 0, read back.
"$BIN/loadtest" sink --listen 127.0.0.1:0 --exit-after 100000000 > "$WORK/sink.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$WORK/sink.out" && break; sleep 0.05; done
SINK=$(awk '/listening/{print $NF}' "$WORK/sink.out")

echo "# raw ceiling: loadtest send -> loadtest sink ($N x $SIZE B, c=$CONC)"
"$BIN/loadtest" send --target "$SINK" -c "$CONC" -m "$N" -s "$SIZE" --per-connection "$PER_CONN" --pipelining

cat > "$WORK/ringmta.toml" <<CONF
hostname = "bench.invalid"
spool_dir = "$WORK/spool"
threads = $THREADS
[listen]
smtp = ["127.0.0.1:0"]
submission = []
submissions = []
http = ""
[limits]
max_connections_per_core = 20000
[spool]
durability = "$DURABILITY"
[delivery]
routes = { "*" = "$SINK" }
max_connections = 32
max_messages_per_connection = 1000
[log]
level = "warn"
CONF
"$BIN/ringmta" serve --config "$WORK/ringmta.toml" > "$WORK/ringmta.out" 2> "$WORK/ringmta.err" &
pids+=($!)
for _ in $(seq 200); do grep -q "ringmta ready" "$WORK/ringmta.out" && break; sleep 0.05; done
MTA=$(sed -n 's/.*smtp=\([^ ]*\).*/\1/p' "$WORK/ringmta.out")
echo "# ringmta ($DURABILITY): loadtest send -> ringmta $MTA -> sink ($N x $SIZE B, c=$CONC)"
"$BIN/loadtest" send --target "$MTA" -c "$CONC" -m "$N" -s "$SIZE" --per-connection "$PER_CONN" --pipelining
