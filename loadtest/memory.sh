#!/usr/bin/env bash
# memory.sh -- anonymous memory per queued message: queue N messages that cannot be delivered
# (next hop is a closed loopback port, retried hourly), then read ringmta's RssAnon, before and
# after a restart (recovery rebuilds the in-memory queue from the segments).
#   N=100000 SIZE=1024 loadtest/memory.sh        (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}; SIZE=${SIZE:-1024}; WORK=${WORK:-/tmp/ringmta-mem}; BIN=${BIN:-target/release}
rm -rf "$WORK"; mkdir -p "$WORK"
. loadtest/lib.sh
ringmta_config '[limits]
max_connections_per_core = 20000
[delivery]
routes = { "*" = "127.0.0.1:1" }
retry_schedule = ["1h"]'
start
trap 'kill $RP 2>/dev/null || true' EXIT
a0=$(anon)
"$BIN/loadtest" send --target "$MTA" -c 50 -m "$N" -s "$SIZE" --per-connection 100 --pipelining | head -2
sleep 3
a1=$(anon)
echo "live: RssAnon $a0 KiB -> $a1 KiB: $(( (a1 - a0) * 1024 / N )) bytes per queued message"
kill -TERM $RP; wait $RP 2>/dev/null || true
start
sleep 2
a2=$(anon)
echo "after restart (recovered $N queued): RssAnon $a2 KiB total, $(( (a2 - a0) * 1024 / N )) bytes per queued message above an empty server"
