#!/usr/bin/env bash
# Runs ../shared/bench/postfix-bench.sh against ringmta (TARGET=external): smtp-source ->
# ringmta (durable spool) -> smtp-sink, on loopback, so that ringmta and Postfix are measured by
# the same driver. Picks two free loopback ports. Needs a release build.
#   SIZE=1024 CONC="1 10 50" N=20000 REPS=1 THREADS=0 DURABILITY=fsync loadtest/postfix-side-by-side.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-../shared/bench/postfix-bench.sh}
WORK=${WORK:-/tmp/ringmta-pfbench}
THREADS=${THREADS:-0}; DURABILITY=${DURABILITY:-fsync}
read -r MTA_PORT SINK_PORT < <(python3 -c "
import socket
a = socket.socket(); a.bind(('127.0.0.1', 0)); b = socket.socket(); b.bind(('127.0.0.1', 0))
print(a.getsockname()[1], b.getsockname()[1])")
rm -rf "$WORK"; mkdir -p "$WORK"
cat > "$WORK/ringmta.toml" <<CONF
hostname = "bench.invalid"
spool_dir = "$WORK/spool"
threads = $THREADS
[listen]
smtp = ["127.0.0.1:$MTA_PORT"]
submission = []
submissions = []
http = ""
[limits]
max_connections_per_core = 20000
[spool]
durability = "$DURABILITY"
[delivery]
routes = { "*" = "127.0.0.1:$SINK_PORT" }
max_connections = 32
max_messages_per_connection = 1000
[log]
level = "warn"
CONF
target/release/ringmta serve --config "$WORK/ringmta.toml" > "$WORK/ringmta.out" 2> "$WORK/ringmta.err" &
RP=$!
trap 'kill $RP 2>/dev/null; wait $RP 2>/dev/null' EXIT
for _ in $(seq 200); do grep -q "ringmta ready" "$WORK/ringmta.out" && break; sleep 0.05; done
TARGET=external LABEL="ringmta-t${THREADS}-${DURABILITY}" MTA_PORT=$MTA_PORT SINK_PORT=$SINK_PORT RAW=${RAW:-0} \
  WORK="$WORK/bench" bash "$BENCH"
