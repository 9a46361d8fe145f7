//! Signal handling for the main thread: workers never see signals; the main thread waits for
//! them synchronously and turns them into a shutdown broadcast.

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every thread it starts later).
pub fn block() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals and returns its number.
pub fn wait(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block and `sig` is a valid out-pointer.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}
