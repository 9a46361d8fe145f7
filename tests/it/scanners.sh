#!/usr/bin/env bash
# Starts a real content scanner for tests, confined to DIR and to loopback.
#
#   scanners.sh clamd DIR    prints "clamd unix:DIR/clamd.sock"
#   scanners.sh rspamd DIR   prints "rspamd http://127.0.0.1:PORT"
#
# DIR is created if needed and made absolute. The line is printed only once the daemon answers
# (clamd: zPING -> PONG; rspamd: GET /ping), so a caller that has read it can scan at once. The
# script then stays in the foreground until it is signalled, the daemon exits, or 600 s pass.
# The daemon runs in its own process group and never outlives the script: SIGTERM, SIGINT or
# SIGHUP stop the group through a trap (TERM, then KILL after 5 s), and a watchdog subshell
# does the same within 0.5 s if the script is SIGKILLed or the process that started it exits
# (so start it from a process that lives as long as the scanner is needed, not from a `( &)`
# subshell).
#
#   bash tests/it/scanners.sh clamd "$dir" >"$dir.addr" & pid=$!
#   until [ -s "$dir.addr" ]; do kill -0 $pid || exit 1; sleep 0.1; done
#   ...; kill $pid
#
# Exit status 77 with a "SKIP: ..." line on stdout means the daemon is not installed
# (apt-get install -y clamav-daemon rspamd); 1 means it failed to start (its log is copied to
# stderr). Nothing is downloaded: clamd loads only the two test signatures written below (no
# freshclam), and rspamd runs with a minimal configuration that loads no Lua rules or plugins,
# uses no redis and sends DNS only to 127.0.0.1:1, so no packet leaves the machine. All state
# and logs (clamd.log, rspamd.log) stay in DIR.
#
# Test strings the scanners flag:
#   clamd:  RINGMTA-CLAMD-TEST-SIGNATURE-7F3A -> "Ringmta.Test.Signature.UNOFFICIAL"
#           the EICAR test string              -> "Eicar-Test-Signature.UNOFFICIAL"
#           (clamd adds ".UNOFFICIAL" to names from unsigned databases)
#   rspamd: XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X (GTUBE)
#           -> action "reject" from rspamd's built-in check; anything else scores 0, "no action"
set -euo pipefail

LIFETIME=600
STARTUP_LIMIT=120
daemon_pid=

die() {
    echo "scanners.sh: $*" >&2
    exit 1
}

# Starts "$@" in a new session (so its pid is also its process group, which holds the workers
# rspamd forks), with output appended to log $1.
run_daemon() {
    local log=$1
    shift
    setsid "$@" >>"$log" 2>&1 </dev/null &
    daemon_pid=$!
    trap stop_daemon EXIT
    trap 'exit 0' TERM INT HUP
    watchdog "$$" "$PPID" >/dev/null 2>&1 </dev/null &
}

# TERM to the daemon's group, then KILL if it is still there after 5 s.
stop_daemon() {
    local i
    [[ -n $daemon_pid ]] || return 0
    kill -TERM -- "-$daemon_pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 -- "-$daemon_pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$daemon_pid" 2>/dev/null || true
}

# Runs in a background subshell: stops the daemon once the script ($1) or the process that
# started it ($2) is gone. The first covers a SIGKILL that no trap sees; the second a test
# binary or CI script that exits without stopping its scanner.
watchdog() {
    trap - EXIT TERM INT HUP
    while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do
        sleep 0.5
    done
    stop_daemon
}

# Polls the command $1 until it succeeds while the daemon is alive, up to STARTUP_LIMIT s.
wait_ready() {
    local check=$1 log=$2 i
    for ((i = 0; i < STARTUP_LIMIT * 10; i++)); do
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "scanners.sh: daemon exited during startup; end of $log:" >&2
            tail -n 40 "$log" >&2 || true
            exit 1
        fi
        if eval "$check" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "daemon not ready after ${STARTUP_LIMIT}s (see $log)"
}

# Keeps the script in the foreground until the daemon exits or LIFETIME s pass.
supervise() {
    local i
    for ((i = 0; i < LIFETIME; i++)); do
        kill -0 "$daemon_pid" 2>/dev/null || return 0
        sleep 1
    done
}

start_clamd() {
    local dir=$1 clamd
    clamd=$(PATH="$PATH:/usr/sbin:/sbin" command -v clamd || true)
    if [[ -z $clamd ]]; then
        echo "SKIP: clamd not installed (apt-get install -y clamav-daemon)"
        exit 77
    fi
    mkdir -p "$dir/db" "$dir/tmp"
    rm -f "$dir/clamd.sock"
    # .ndb body signatures: Name:TargetType:Offset:HexSignature (target 0 = any, offset * = any).
    {
        printf 'Ringmta.Test.Signature:0:*:%s\n' \
            "$(printf '%s' 'RINGMTA-CLAMD-TEST-SIGNATURE-7F3A' | od -An -tx1 | tr -d ' \n')"
        # The EICAR test string, in hex so that this file itself is not flagged.
        printf 'Eicar-Test-Signature:0:*:%s\n' \
            '58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a'
    } >"$dir/db/ringmta-test.ndb"
    # No User directive: clamd stays root, so it can read DIR wherever the caller put it.
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
    run_daemon "$dir/clamd.out" "$clamd" -c "$dir/clamd.conf"
    wait_ready "clamd_ping '$dir/clamd.sock'" "$dir/clamd.log"
    echo "clamd unix:$dir/clamd.sock"
    supervise
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
    local dir=$1 rspamd port
    rspamd=$(command -v rspamd || true)
    if [[ -z $rspamd ]]; then
        echo "SKIP: rspamd not installed (apt-get install -y rspamd)"
        exit 77
    fi
    mkdir -p "$dir/db" "$dir/run" "$dir/tmp"
    # A free port: bind port 0 and release it. Another process could take it before rspamd
    # binds; rspamd then fails to start and this script exits 1 with its log.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf '%s\n' com net org test example invalid localhost >"$dir/tld.dat"
    cat >"$dir/rspamd.conf" <<EOF
# Minimal test configuration: no rules, plugins, redis, maps or statistics. The core's GTUBE
# check sets the action itself; the other actions need only the thresholds below.
options {
    pidfile = "$dir/run/rspamd.pid";
    tempdir = "$dir/tmp";
    cache_file = "$dir/db/symbols.cache";
    hs_cache_dir = "$dir/db";
    # The stock public-suffix list costs ~10 s of Hyperscan compilation at each cold start, and
    # URL detection does not matter without rules.
    url_tld = "$dir/tld.dat";
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
    # -f: stay in the foreground; -i: allow running as root, which the test machines are.
    run_daemon "$dir/rspamd.out" "$rspamd" -f -i --var="DBDIR=$dir/db" --var="RUNDIR=$dir/run" \
        --var="LOGDIR=$dir" -c "$dir/rspamd.conf"
    wait_ready "rspamd_ping $port" "$dir/rspamd.log"
    echo "rspamd http://127.0.0.1:$port"
    supervise
}

rspamd_ping() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
sys.exit(0 if s.recv(64).startswith(b"HTTP/1.1 200") else 1)
EOF
}

[[ $# -eq 2 ]] || die "usage: scanners.sh clamd|rspamd DIR"
dir=$(mkdir -p "$2" && cd "$2" && pwd)
case $1 in
clamd) start_clamd "$dir" ;;
rspamd) start_rspamd "$dir" ;;
*) die "usage: scanners.sh clamd|rspamd DIR" ;;
esac
