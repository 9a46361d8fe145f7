#!/usr/bin/env bash
# The long form of the crash soak (issue 19): SIGKILL ringmta KILLS times (default 100) at random
# moments while real clients submit, the sink retries and bounces, and content is purged; then
# check that every acknowledged message arrived or was bounced, and count what arrived twice.
# The short form (20 kills) runs in `cargo test`. Result goes in docs/security.md.
#
#   loadtest/soak.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-100}"
RINGMTA_SOAK_KILLS="$kills" cargo test --release --locked --test it \
  soak_of_kills_during_acceptance_delivery_and_purge_loses_nothing -- --nocapture 2>&1 |
  grep -E '^(soak|test result|thread)' || true
