//! Support shared by the unit and integration tests (not used by the server): how a test that
//! cannot run says so.
//!
//! A test whose outside dependency (swaks, clamd, a Python package, root for a tmpfs) is
//! missing calls [`skip`] and returns. On a developer's machine that is a visible note; under
//! `RINGMTA_NO_SKIP=1`, which `.ci/run` sets after installing every such dependency, it is a
//! failure with the reason, so a green CI never hides a test that did not run. Every skip is
//! also appended to the file named by `RINGMTA_SKIP_LOG`, which `.ci/run` prints at the end.

use std::io::Write as _;

/// Records that the calling test cannot run and why; panics under `RINGMTA_NO_SKIP=1`. The
/// caller returns right after.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("RINGMTA_SKIP_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{line}");
        }
    }
    if std::env::var_os("RINGMTA_NO_SKIP").is_some_and(|v| v == "1") {
        panic!("{line} (RINGMTA_NO_SKIP=1: every dependency of the tests must be installed)");
    }
    // stdout and stderr of a passing test are hidden by the runner; stderr shows with
    // --nocapture, the log file always.
    eprintln!("{line}");
}
