#!/usr/bin/env bash
# Long fuzz runs with a plateau report: runs each named target (or all) for SECONDS each, one
# after another on one core, and prints per target the runs, final coverage, corpus size and
# how long ago coverage last grew. Usage: fuzz/run-long.sh SECONDS [TARGET...]
# Needs a nightly toolchain and cargo-fuzz. Findings land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: fuzz/run-long.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
logdir=${FUZZ_LOG_DIR:-fuzz/logs}
mkdir -p "$logdir"
cargo +nightly fuzz build >/dev/null
for t in "${targets[@]}"; do
  log="$logdir/$t.log"
  start=$(date +%s)
  # libFuzzer writes its status lines to stderr; stamp each with the seconds since the start.
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | python3 -u -c '
import sys, time
t0 = time.time()
for line in sys.stdin:
    sys.stdout.write("%7.1f %s" % (time.time() - t0, line))
' >"$log" || echo "$t: fuzzer exited non-zero, see $log"
  python3 - "$t" "$log" "$(( $(date +%s) - start ))" <<'PY'
import re, sys
target, path, wall = sys.argv[1], sys.argv[2], int(sys.argv[3])
last_cov, last_ft, cov, ft, corp, runs = 0.0, 0.0, 0, 0, "?", "?"
text = open(path, errors="replace").read()
for line in text.splitlines():
    parts = line.split(None, 1)
    if len(parts) < 2:
        continue
    m = re.search(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)", parts[1])
    if m:
        t = float(parts[0])
        runs, corp = m.group(1), m.group(5)
        c, f = int(m.group(3)), int(m.group(4))
        if c > cov and m.group(2) == "NEW":
            last_cov = t
        if f > ft and m.group(2) == "NEW":
            last_ft = t
        cov, ft = max(cov, c), max(ft, f)
    m = re.search(r"stat::number_of_executed_units: (\d+)", parts[1])
    if m:
        runs = m.group(1)
crash = "CRASH" if any(k in text for k in ("panicked", "ERROR: libFuzzer", "==ERROR")) else "no crash"
print(f"{target}: {wall} s, {runs} runs, cov {cov} (last grew at {last_cov:.0f} s), "
      f"ft {ft} (last grew at {last_ft:.0f} s), corpus {corp}, {crash}")
PY
done
