#!/usr/bin/env bash
# conn-memory.sh -- anonymous memory per open SMTP connection. For each state, a fresh ringmta
# (one worker) is started, N connections are opened and brought to that state and held, and
# ringmta's RssAnon is read before and after:
#   idle     greeted, EHLO answered, plaintext
#   tls      STARTTLS done (rustls session and buffers), EHLO again
#   data     in DATA with BODY bytes of the message sent (the body buffer of each session)
#   N=2000 BODY=65536 loadtest/conn-memory.sh        (needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}; BODY=${BODY:-65536}; WORK=${WORK:-/tmp/ringmta-connmem}; BIN=target/release
ulimit -n $(( N * 2 + 1024 ))
rm -rf "$WORK"; mkdir -p "$WORK"
. loadtest/lib.sh
ringmta_config "[limits]
max_connections_per_core = $(( N + 100 ))
command_timeout = \"10m\"
data_timeout = \"10m\"
[relay]
trusted_networks = [\"127.0.0.0/8\"]"
trap 'kill $RP 2>/dev/null || true' EXIT
for state in idle tls data; do
  rm -rf "$WORK/spool"
  start
  a0=$(anon)
  # Holds the connections until ringmta's memory has been read, then is killed.
  python3 - "$MTA" "$N" "$state" "$BODY" > "$WORK/held" <<'PY' &
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
n, state, body = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def reply(f):
    while True:
        line = f.readline()
        if not line or line[3:4] != b"-":
            return line
held = []
for i in range(n):
    s = socket.create_connection((host, int(port)))
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO conn-memory.test\r\n"); reply(f)
    if state == "tls":
        s.sendall(b"STARTTLS\r\n"); reply(f)
        s = ctx.wrap_socket(s, server_hostname="bench.invalid")
        f = s.makefile("rb")
        s.sendall(b"EHLO conn-memory.test\r\n"); reply(f)
    if state == "data":
        s.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        reply(f); reply(f); reply(f)
        s.sendall(b"Subject: held\r\n\r\n" + b"x" * 78 + b"\r\n" + (b"y" * 78 + b"\r\n") * (body // 80))
    held.append((s, f))
print("held", len(held), flush=True)
import time
time.sleep(3600)
PY
  HP=$!
  for _ in $(seq 3000); do grep -q held "$WORK/held" && break; sleep 0.1; done
  grep -q held "$WORK/held" || { echo "$state: the client did not get $N connections up"; exit 1; }
  sleep 2
  a1=$(anon)
  echo "$state: $N connections, RssAnon $a0 KiB -> $a1 KiB: $(( (a1 - a0) * 1024 / N )) bytes per connection"
  kill "$HP" 2>/dev/null || true; wait "$HP" 2>/dev/null || true
  kill -TERM $RP; wait $RP 2>/dev/null || true
done
