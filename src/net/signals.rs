//! Signal handling for the main thread: workers never see signals; the main thread waits for
//! them synchronously and turns them into a shutdown broadcast. One of the few places with
//! `unsafe` code (see docs/architecture.md).

#![allow(unsafe_code)]

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every thread it starts later).
pub fn block() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigemptyset(&mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            if libc::sigaddset(&mut set, s) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // pthread_sigmask returns the error number instead of setting errno.
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Waits for one of the blocked signals and returns its number.
pub fn wait(set: &libc::sigset_t) -> std::io::Result<i32> {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block and `sig` is a valid out-pointer. sigwait returns
    // the error number instead of setting errno.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}
