#!/usr/bin/env bash
# bench.sh -- end-to-end benchmark of ringmta with the project's own load tool, and the raw
# ceiling (loadtest send -> loadtest sink, no MTA), on loopback, in one run.
#
#   loadtest send --> ringmta (durable spool) --> loadtest sink
#
# Prints, per phase: the sender's report (accepted msg/s, latency percentiles of the 250 after
# DATA) and one summary line: e2e msg/s (until the sink has every message), ringmta CPU
# seconds per 1000 messages, and ringmta's peak RSS.
#
# Environment: N=20000 messages, SIZE=1024, CONC=50, THREADS=0 (ringmta threads, 0 = per core),
# PER_CONN=1 (messages per connection; 1 = a new SMTP session per message), DURABILITY=fsync,
# RAW=1 (also measure the raw ceiling), LOG_LEVEL=warn (ringmta's), WORK=/tmp/ringmta-bench, EXTRA='' (TOML appended to
# ringmta's config, e.g. a [[dkim]] key), SCAN='' (clamd or rspamd: start that scanner with
# tests/it/scanners.sh and configure it), MTA_CPUS='' and LOAD_CPUS='' (CPU lists for
# `taskset -c`: pin ringmta and the load tool to separate cores). Needs `cargo build --release`.
# Everything listens on and connects to 127.0.0.1 only; every process is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}; SIZE=${SIZE:-1024}; CONC=${CONC:-50}; THREADS=${THREADS:-0}; RAW=${RAW:-1}
PER_CONN=${PER_CONN:-1}; DURABILITY=${DURABILITY:-fsync}; WORK=${WORK:-/tmp/ringmta-bench}
BIN=${BIN:-target/release}
MTA_CPUS=${MTA_CPUS:-}; LOAD_CPUS=${LOAD_CPUS:-}
PIN_MTA=(); PIN_LOAD=()
[ -z "$MTA_CPUS" ] || PIN_MTA=(taskset -c "$MTA_CPUS")
[ -z "$LOAD_CPUS" ] || PIN_LOAD=(taskset -c "$LOAD_CPUS")
rm -rf "$WORK"; mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh

wait_sink() {  # bounded wait for the sink to reach N; prints seconds since $1
  local t0=$1 i
  for i in $(seq 6000); do kill -0 "$SINK_PID" 2>/dev/null || break; sleep 0.05; done
  echo "$(date +%s.%N) $t0" | awk '{printf "%.3f", $1-$2}'
}
send() {  # target
  "${PIN_LOAD[@]}" "$BIN/loadtest" send --target "$1" -c "$CONC" -m "$N" -s "$SIZE" --per-connection "$PER_CONN" --pipelining
}

if [ "$RAW" = 1 ]; then
  start_sink
  echo "# raw ceiling: loadtest send -> loadtest sink ($N x $SIZE B, c=$CONC)"
  t0=$(date +%s.%N); send "$SINK"; el=$(wait_sink "$t0")
  echo "raw e2e: $(awk -v n="$N" -v s="$el" 'BEGIN{printf "%.0f", n/s}') msg/s"
fi

SCAN=${SCAN:-}; EXTRA=${EXTRA:-}
if [ -n "$SCAN" ]; then
  bash tests/it/scanners.sh "$SCAN" "$WORK/$SCAN" > "$WORK/scan.addr" &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$WORK/scan.addr" ] && break; sleep 0.1; done
  addr=$(awk '{print $2}' "$WORK/scan.addr")
  case "$SCAN" in
    clamd) EXTRA="$EXTRA
[scan.clamd]
address = \"$addr\"" ;;
    rspamd) EXTRA="$EXTRA
[scan.rspamd]
url = \"$addr\"" ;;
  esac
fi

start_sink
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
max_message_size = "200MB"
[spool]
durability = "$DURABILITY"
[delivery]
routes = { "*" = "$SINK" }
max_connections = 32
max_messages_per_connection = 1000
[log]
level = "${LOG_LEVEL:-warn}"
$EXTRA
CONF
"${PIN_MTA[@]}" "$BIN/ringmta" serve --config "$WORK/ringmta.toml" > "$WORK/ringmta.out" 2> "$WORK/ringmta.err" &
RP=$!; pids+=("$RP")
for _ in $(seq 200); do grep -q "ringmta ready" "$WORK/ringmta.out" && break; sleep 0.05; done
MTA=$(sed -n 's/.*smtp=\([^ ]*\).*/\1/p' "$WORK/ringmta.out")
read -r usr0 sys0 < <(awk '{print $14, $15}' /proc/$RP/stat)
echo "# ringmta (threads=$THREADS, $DURABILITY): loadtest send -> ringmta -> loadtest sink ($N x $SIZE B, c=$CONC)"
t0=$(date +%s.%N); send "$MTA"; el=$(wait_sink "$t0")
read -r usr1 sys1 < <(awk '{print $14, $15}' /proc/$RP/stat)
hwm=$(awk '/VmHWM/{print $2}' /proc/$RP/status)
tck=$(getconf CLK_TCK)
per1000() { awk -v d="$1" -v n="$N" -v t="$tck" 'BEGIN{printf "%.3f", d/t/n*1000}'; }
echo "ringmta e2e: $(awk -v n="$N" -v s="$el" 'BEGIN{printf "%.0f", n/s}') msg/s; cpu $(per1000 $((usr1 + sys1 - usr0 - sys0))) s per 1000 msg (user $(per1000 $((usr1 - usr0))), kernel $(per1000 $((sys1 - sys0)))); peak RSS $((hwm / 1024)) MiB"
