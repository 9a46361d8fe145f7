//! The spool directory's lock: one server per spool.

use super::*;

/// The exclusive lock on a spool directory, held while a server runs; released on drop.
#[derive(Debug)]
pub struct SpoolLock {
    /// Keeps the `flock` alive: it belongs to this open file description.
    _file: File,
    path: PathBuf,
}

impl SpoolLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` if needed and takes an exclusive `flock` on `dir/lock` without waiting.
///
/// Fails with [`SpoolError::Locked`] when another process (or another `lock` call in this one)
/// holds it. The lock file records the holder's pid, for operators only.
pub fn lock(dir: &Path) -> Result<SpoolLock, SpoolError> {
    disk::create_dir_durably(&disk::RealDisk, dir).map_err(|source| SpoolError::Io {
        op: "create",
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join("lock");
    let io_err = |op, source| SpoolError::Io {
        op,
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", e)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| io_err("write", e))?;
    Ok(SpoolLock { _file: file, path })
}
