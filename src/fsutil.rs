//! Small files written whole or not at all, and durably: the self-signed certificate and its key,
//! the dev user's password, the webhook offset.
//!
//! The spool's own files go through `spool::disk`; these are the few others a restart reads.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tells apart the temporary files of writers in this process.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes`: a temporary file created with `mode` (never wider, not even
/// for a moment: the password and the key are 0600), written, fsynced, renamed into place, and
/// the directory fsynced. A crash or a power cut leaves the old file or the new one, never an
/// empty or partial one (a power cut once left an empty certificate behind; issue 21). Each
/// call writes its own temporary file (`path.tmp-PID-N`), so two writers of one file never
/// rename each other's half-written bytes into place; the last rename wins. A crash can leave a
/// temporary file behind.
pub fn replace_durably(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
    tmp.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_replaced_whole_with_its_mode_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        replace_durably(&path, b"one", 0o600).unwrap();
        replace_durably(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
    }
}
