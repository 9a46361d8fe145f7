# lib.sh -- shared by the benchmark and memory scripts: a one-worker ringmta on a loopback port
# 0, its config and its anonymous memory, and the sink. Source it after setting WORK and BIN.

# start_sink: a sink that exits by itself after N messages; sets SINK (its address) and
# SINK_PID, and adds the pid to the caller's `pids`. Runs under `taskset` when PIN_LOAD is set.
start_sink() {  # sets SINK and SINK_PID; the sink exits by itself after N messages
  ${PIN_LOAD[@]+"${PIN_LOAD[@]}"} "$BIN/loadtest" sink --listen 127.0.0.1:0 --exit-after "$N" > "$WORK/sink.out" 2>&1 &
  SINK_PID=$!; pids+=("$SINK_PID")
  for _ in $(seq 100); do grep -q listening "$WORK/sink.out" && break; sleep 0.05; done
  SINK=$(awk '/listening/{print $NF}' "$WORK/sink.out")
}

# ringmta_config EXTRA: writes $WORK/ringmta.toml, the common part plus EXTRA (TOML tables).
ringmta_config() {
  cat > "$WORK/ringmta.toml" <<CONF
hostname = "bench.invalid"
spool_dir = "$WORK/spool"
threads = 1
[listen]
smtp = ["127.0.0.1:0"]
submission = []
submissions = []
http = ""
[log]
level = "error"
$1
CONF
}

# start: runs ringmta in the background (RP = its pid) and sets MTA to its SMTP address.
start() {
  "$BIN/ringmta" serve --config "$WORK/ringmta.toml" > "$WORK/ringmta.out" 2> "$WORK/ringmta.err" &
  RP=$!
  for _ in $(seq 600); do grep -q "ringmta ready" "$WORK/ringmta.out" && break; sleep 0.05; done
  MTA=$(sed -n 's/.*smtp=\([^ ]*\).*/\1/p' "$WORK/ringmta.out")
}

# anon: ringmta's RssAnon in KiB.
anon() { awk '/RssAnon/{print $2}' /proc/$RP/status; }
