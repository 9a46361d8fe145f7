#!/usr/bin/env bash
# Starts a real content scanner for tests, confined to DIR and to loopback.
#
#   scanners.sh clamd DIR    prints "clamd unix:DIR/clamd.sock"
#   scanners.sh rspamd DIR   prints "rspamd http://127.0.0.1:PORT"
#
# The line is printed only once the daemon answers (clamd: PING/PONG; rspamd: GET /ping), so a
# caller that has read it can scan at once. The script then stays in the foreground until it is
# killed, the daemon exits, or 600 s pass; the daemon never outlives it: SIGTERM/SIGINT/SIGHUP
# stop it through a trap, and SIGKILL through the kernel's parent-death signal (setpriv
# --pdeathsig), which is why the daemons run as root here (a uid change would clear it).
#
# Exit status 77 with a "SKIP: ..." line on stdout means the daemon is not installed
# (apt-get install -y clamav-daemon rspamd). Nothing is downloaded: clamd loads only the two
# test signatures written below (no freshclam), and rspamd runs with a minimal configuration
# that loads no Lua rules or plugins, uses no redis, and sends DNS only to 127.0.0.1:1, so no
# packet leaves the machine. Logs go to DIR/clamd.log or DIR/rspamd.log.
#
# Test strings that the scanners flag:
#   clamd:  RINGMTA-CLAMD-TEST-SIGNATURE-7F3A  -> "Ringmta.Test.Signature.UNOFFICIAL"
#           the EICAR test string               -> "Eicar-Test-Signature.UNOFFICIAL"
#   rspamd: the GTUBE string (XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X)
#           -> action "reject" (rspamd's built-in GTUBE check needs no rules)
set -euo pipefail

LIFETIME=600
STARTUP_LIMIT=120

die() {
    echo "scanners.sh: $*" >&2
    exit 1
}

usage() {
    die "usage: scanners.sh clamd|rspamd DIR"
}

# Waits for $1 (a shell command) to succeed while the daemon $2 is alive, up to STARTUP_LIMIT s.
wait_ready() {
    local check=$1 pid=$2 log=$3 i
    for ((i = 0; i < STARTUP_LIMIT * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "scanners.sh: daemon exited during startup; log follows" >&2
            tail -n 40 "$log" >&2 || true
            exit 1
        fi
        if eval "$check" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "daemon not ready after ${STARTUP_LIMIT}s (see $log)"
}

# Keeps the script in the foreground until the daemon exits or LIFETIME passes.
supervise() {
    local pid=$1 i
    for ((i = 0; i < LIFETIME; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
}

start_clamd() {
    local dir=$1
    local clamd
    clamd=$(command -v clamd || true)
    [[ -x /usr/sbin/clamd ]] && clamd=/usr/sbin/clamd
    if [[ -z $clamd ]]; then
        echo "SKIP: clamd not installed (apt-get install -y clamav-daemon)"
        exit 77
    fi
    mkdir -p "$dir/db" "$dir/tmp"
    rm -f "$dir/clamd.sock"
    # .ndb body signatures: Name:TargetType:Offset:HexSignature (target 0 = any file, offset *).
    {
        printf 'Ringmta.Test.Signature:0:*:%s\n' \
            "$(printf '%s' 'RINGMTA-CLAMD-TEST-SIGNATURE-7F3A' | od -An -tx1 | tr -d ' \n')"
        # The EICAR test string, kept in hex so that this file itself is not flagged.
        printf 'Eicar-Test-Signature:0:*:%s\n' \
            '58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a'
    } >"$dir/db/ringmta-test.ndb"
    cat >"$dir/clamd.conf" <<EOF
Foreground yes
LogFile $dir/clamd.log
LogTime yes
LogSyslog no
PidFile $dir/clamd.pid
LocalSocket $dir/clamd.sock
LocalSocketMode 600
DatabaseDirectory $dir/db
TemporaryDirectory $dir/tmp
MaxThreads 4
StreamMaxLength 10M
SelfCheck 0
Bytecode no
EOF
    setpriv --pdeathsig KILL -- "$clamd" -c "$dir/clamd.conf" >>"$dir/clamd.log" 2>&1 &
    daemon_pid=$!
    trap 'kill "$daemon_pid" 2>/dev/null || true' EXIT
    trap 'exit 0' TERM INT HUP
    wait_ready "clamd_ping '$dir/clamd.sock'" "$daemon_pid" "$dir/clamd.log"
    echo "clamd unix:$dir/clamd.sock"
    supervise "$daemon_pid"
}

clamd_ping() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"zPING\0")
sys.exit(0 if s.recv(16).startswith(b"PONG") else 1)
EOF
}

start_rspamd() {
    local dir=$1
    local rspamd
    rspamd=$(command -v rspamd || true)
    if [[ -z $rspamd ]]; then
        echo "SKIP: rspamd not installed (apt-get install -y rspamd)"
        exit 77
    fi
    mkdir -p "$dir/db" "$dir/run" "$dir/tmp"
    local port
    # A free port: bind port 0 and release it. Another process could take it before rspamd
    # binds; rspamd then fails to start and the script exits 1 with its log.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$dir/rspamd.conf" <<EOF
# Minimal test configuration: no rules, plugins, redis, maps or statistics. The core's GTUBE
# check sets the action itself, and the other actions need only the thresholds below.
options {
    pidfile = "$dir/run/rspamd.pid";
    dbdir = "$dir/db";
    tempdir = "$dir/tmp";
    cache_file = "$dir/db/symbols.cache";
    filters = "";
    allow_raw_input = true;
    dns {
        nameserver = ["127.0.0.1:1"];
        timeout = 0.2s;
        retransmits = 1;
    }
}
logging {
    type = "file";
    filename = "$dir/rspamd.log";
    level = "info";
}
actions {
    reject = 15;
    add_header = 6;
    greylist = 4;
}
worker "normal" {
    bind_socket = "127.0.0.1:$port";
    count = 1;
    mime = true;
}
EOF
    # -f: stay in the foreground; -i: allow root (see the header for why root).
    setpriv --pdeathsig KILL -- "$rspamd" -f -i -c "$dir/rspamd.conf" >>"$dir/rspamd.out" 2>&1 &
    daemon_pid=$!
    trap 'kill "$daemon_pid" 2>/dev/null || true' EXIT
    trap 'exit 0' TERM INT HUP
    wait_ready "rspamd_ping $port" "$daemon_pid" "$dir/rspamd.log"
    echo "rspamd http://127.0.0.1:$port"
    supervise "$daemon_pid"
}

rspamd_ping() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
sys.exit(0 if s.recv(64).startswith(b"HTTP/1.") else 1)
EOF
}

[[ $# -eq 2 ]] || usage
dir=$(mkdir -p "$2" && cd "$2" && pwd)
case $1 in
clamd) start_clamd "$dir" ;;
rspamd) start_rspamd "$dir" ;;
*) usage ;;
esac
