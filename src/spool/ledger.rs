//! The ledger: `spool_dir/ledger`, placeholders of purged messages (envelope and outcome, no body).
//!
//! One file shared by all shards, framed like a segment ([`RecordKind::Placeholder`] frames after
//! a 64-byte [`LEDGER_MAGIC`] header), written with plain `write(2)` in append mode, not mapped:
//! purges are rare and several shards append to it.
//!
//! Durable after [`Ledger::append`] returns `Ok`: the placeholders it wrote (they were
//! `fdatasync`ed). Appends from different shards are serialised by an exclusive `flock` on the
//! ledger file, held from the tail check to the `fdatasync`, so the only way a torn tail can
//! exist is a crash during an append; the next append truncates it (under the lock) before
//! writing, and readers stop at it. The file itself is created atomically (written as a temporary
//! file, then hard-linked into place), so it always starts with a complete header.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use super::SpoolError;
use super::record::{self, ArchivedPlaceholder, FrameError, RecordKind};
use super::recovery::SegmentReport;
use super::segment::{self, FILE_HEADER_LEN, LEDGER_MAGIC, TornTail};

/// File name of the ledger inside the spool directory.
pub const LEDGER_FILE: &str = "ledger";

/// A shard's handle on the shared ledger.
pub(crate) struct Ledger {
    spool_dir: PathBuf,
    path: PathBuf,
    shard: u8,
    file: Option<File>,
    /// Offset up to which this handle has validated the file (a frame boundary); `None` until the
    /// first append, or after an error, which forces a full scan.
    valid_end: Option<u64>,
}

impl Ledger {
    pub(crate) fn new(spool_dir: &Path, shard: u8) -> Self {
        Ledger {
            spool_dir: spool_dir.to_owned(),
            path: spool_dir.join(LEDGER_FILE),
            shard,
            file: None,
            valid_end: None,
        }
    }

    /// Appends pre-encoded placeholder frames and makes them durable (`fdatasync`).
    pub(crate) fn append(&mut self, frames: &[u8], now_ms: u64) -> Result<(), SpoolError> {
        if frames.is_empty() {
            return Ok(());
        }
        let file = self.open(now_ms)?;
        let io_err = |op, source| SpoolError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        file.lock().map_err(|e| io_err("lock", e))?;
        let result = Self::append_locked(&file, &self.path, self.valid_end, frames);
        // Unlocking only fails for a bad fd; closing the fd (drop) releases the lock anyway.
        let _ = file.unlock();
        self.file = Some(file);
        match result {
            Ok(end) => {
                self.valid_end = Some(end);
                Ok(())
            }
            Err(e) => {
                self.valid_end = None;
                Err(e)
            }
        }
    }

    fn append_locked(
        mut file: &File,
        path: &Path,
        valid_from: Option<u64>,
        frames: &[u8],
    ) -> Result<u64, SpoolError> {
        let io_err = |op, source| SpoolError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let len = file.metadata().map_err(|e| io_err("stat", e))?.len();
        let from = valid_from.filter(|&v| v <= len && v >= FILE_HEADER_LEN as u64);
        let start = from.unwrap_or(0);
        let mut buf = AlignedVec::<16>::new();
        buf.resize((len - start) as usize, 0);
        file.read_exact_at(&mut buf, start)
            .map_err(|e| io_err("read", e))?;
        let mut pos = 0usize;
        if from.is_none() {
            segment::parse_file_header(&buf, LEDGER_MAGIC).map_err(|reason| {
                SpoolError::BadHeader {
                    path: path.to_owned(),
                    reason,
                }
            })?;
            pos = FILE_HEADER_LEN;
        }
        let (valid, _) = scan(&buf[pos..], |_| {});
        let valid = start + (pos + valid) as u64;
        if valid < len {
            tracing::warn!(path = %path.display(), offset = valid, bytes = len - valid,
                "ledger has a torn tail from an interrupted purge; truncating it");
            file.set_len(valid).map_err(|e| io_err("truncate", e))?;
        }
        if let Err(e) = file.write_all(frames) {
            // Leave no partial frame behind for the next appender or reader.
            let _ = file.set_len(valid);
            return Err(io_err("write", e));
        }
        file.sync_data().map_err(|e| io_err("fdatasync", e))?;
        Ok(valid + frames.len() as u64)
    }

    fn open(&mut self, now_ms: u64) -> Result<File, SpoolError> {
        if let Some(f) = self.file.take() {
            return Ok(f);
        }
        let io_err = |op, path: &Path, source| SpoolError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        if !self.path.exists() {
            let tmp = self
                .spool_dir
                .join(format!("{LEDGER_FILE}.tmp-{:02}", self.shard));
            let mut t = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
            t.write_all(&segment::file_header(LEDGER_MAGIC, 0, 0, now_ms))
                .and_then(|()| t.sync_all())
                .map_err(|e| io_err("write", &tmp, e))?;
            // link(2) fails if another shard created the ledger first: theirs is just as good.
            match fs::hard_link(&tmp, &self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("link", &self.path, e)),
            }
            let _ = fs::remove_file(&tmp);
            segment::sync_dir(&self.spool_dir).map_err(|e| io_err("fsync", &self.spool_dir, e))?;
        }
        OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io_err("open", &self.path, e))
    }
}

/// Reads the ledger of `spool_dir` (a copy, so it is safe while a server appends or truncates),
/// handing every valid placeholder to `visit`. `Ok(None)` when there is no ledger yet.
pub(crate) fn read_ledger(
    spool_dir: &Path,
    mut visit: impl FnMut(&ArchivedPlaceholder),
) -> Result<Option<SegmentReport>, SpoolError> {
    let path = spool_dir.join(LEDGER_FILE);
    let buf = match segment::read_aligned(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SpoolError::Io {
                op: "read",
                path,
                source,
            });
        }
    };
    let mut report = SegmentReport {
        path: path.clone(),
        shard: None,
        seq: 0,
        len: buf.len() as u64,
        records: 0,
        end: 0,
        header_error: None,
        torn: None,
    };
    if let Err(e) = segment::parse_file_header(&buf, LEDGER_MAGIC) {
        report.header_error = Some(e);
        return Ok(Some(report));
    }
    let (valid, torn) = scan(&buf[FILE_HEADER_LEN..], |p| {
        report.records += 1;
        visit(p)
    });
    report.end = (FILE_HEADER_LEN + valid) as u64;
    report.torn = torn.map(|mut t| {
        t.offset += FILE_HEADER_LEN as u64;
        t
    });
    Ok(Some(report))
}

/// Scans placeholder frames from the start of `buf` (16-byte aligned); returns the valid length
/// and the reason it stopped early, if it did.
fn scan(buf: &[u8], mut visit: impl FnMut(&ArchivedPlaceholder)) -> (usize, Option<TornTail>) {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let torn = |reason| TornTail {
            offset: pos as u64,
            bytes: rest.len() as u64,
            reason,
        };
        match record::decode_frame(rest) {
            Ok(None) if rest.iter().all(|&b| b == 0) => return (pos, None),
            Ok(None) => return (pos, Some(torn(FrameError::DataAfterEnd))),
            Err(e) => return (pos, Some(torn(e))),
            Ok(Some(f)) if f.kind != RecordKind::Placeholder => {
                return (pos, Some(torn(FrameError::Kind(f.kind as u8))));
            }
            Ok(Some(f)) => match record::check_placeholder(f.meta) {
                Ok(p) => {
                    visit(p);
                    pos += f.len;
                }
                Err(e) => return (pos, Some(torn(e))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::Placeholder;

    fn frame(id: u64) -> Vec<u8> {
        let p = Placeholder {
            id,
            reverse_path: "a@example.com".into(),
            ..Placeholder::default()
        };
        record::encode_frame(RecordKind::Placeholder, &record::archive(&p).unwrap(), &[])
    }

    fn ids(dir: &Path) -> (Vec<u64>, Option<TornTail>) {
        let mut ids = Vec::new();
        let report = read_ledger(dir, |p| ids.push(p.id.to_native()))
            .unwrap()
            .unwrap();
        (ids, report.torn)
    }

    #[test]
    fn a_torn_ledger_tail_is_ignored_then_truncated_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_ledger(dir.path(), |_| {}).unwrap().is_none());
        let mut a = Ledger::new(dir.path(), 0);
        a.append(&frame(1), 0).unwrap();
        // A crash in the middle of another append: half a frame, then zeros.
        let mut torn = frame(2);
        torn.truncate(torn.len() / 2);
        torn.extend_from_slice(&[0; 32]);
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(LEDGER_FILE))
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let (seen, tail) = ids(dir.path());
        assert_eq!(seen, [1]);
        assert!(tail.is_some());
        // Another shard's handle (no cached end) repairs the tail before appending.
        let mut b = Ledger::new(dir.path(), 1);
        b.append(&frame(3), 0).unwrap();
        a.append(&frame(4), 0).unwrap();
        assert_eq!(ids(dir.path()), (vec![1, 3, 4], None));
    }
}
