#!/usr/bin/env bash
# The long forms of the crash tests (release build; their short forms run in `cargo test`):
#
#   loadtest/durability.sh soak [KILLS]      SIGKILL ringmta KILLS times (default 100) while
#       clients submit, the sink retries and bounces, and content is purged; every acknowledged
#       message must arrive or be bounced; what arrives twice is counted (issue 19).
#   loadtest/durability.sh power-cut [CUTS]  cut the power CUTS times (default 50) under load,
#       on tests/it/fusefs.py's volatile filesystem; every message acknowledged before a cut
#       must be in the spool ringmta finds after it (issue 21). Needs root, /dev/fuse, libfuse2
#       and `pip install fusepy`.
#   loadtest/durability.sh disk-model [CASES]  the shard on the simulated disk of
#       src/spool/simdisk.rs, CASES random workloads (default 2000), the power cut before every
#       disk operation of each; the unit test spool::power_tests with more cases (issue 21).
#
# Results go in docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  soak) var=RINGMTA_SOAK_KILLS test=soak_of_kills_during_acceptance_delivery_and_purge_loses_nothing
        default=100 lines='^(soak|test result|thread)' ;;
  power-cut) var=RINGMTA_POWER_CUTS test=a_power_cut_keeps_every_message_acknowledged_before_it
        default=50 lines='^(power cut|test result|thread)' ;;
  disk-model)
    PROPTEST_CASES="${2:-2000}" cargo test --release --locked --lib -- spool::power_tests \
      --nocapture 2>&1 | awk '
        /^power model:/ { w++; cuts += $3; msgs += $5; acked += substr($7, 2); purged += $11 }
        /^(test result|thread)/ { print }
        END { printf "power model: %d workloads, %d cuts, %d messages, %d of them acknowledged before the end, %d purged\n", w, cuts, msgs, acked, purged }'
    exit 0 ;;
  *) echo "usage: $0 soak|power-cut|disk-model [N]" >&2; exit 2 ;;
esac
env "$var=${2:-$default}" cargo test --release --locked --test it "$test" -- --nocapture 2>&1 |
  grep -E "$lines" || true
