//! The ledger: placeholders of purged messages (envelope and outcome, no body), in files that
//! rotate and expire.
//!
//! Files, all in the spool directory and shared by all shards:
//! - `ledger-{seq:016x}`: format 2 files ([`LEDGER_MAGIC`] header, [`RecordKind::Placeholder`]
//!   frames), seq from 1; only the newest is appended to. A new one is started when the newest is
//!   a day old or holds [`ROTATE_BYTES`], so that old placeholders go a file at a time.
//! - `ledger`: the single format 1 file of older builds, read as the oldest ledger file and never
//!   written again.
//!
//! A file is removed when the file after it was started more than `retention.ledger` ago: every
//! placeholder in it was written before that (appends go to the newest file; a shard that raced
//! a rotation may add to the previous file for the length of one purge).
//!
//! Files are written with positioned writes at the end the appender validated (under the lock),
//! not mapped: purges are rare and several shards append. Durable after [`Ledger::append`]
//! returns `Ok`: the placeholders it wrote (they were `fdatasync`ed). Appends from different
//! shards are serialised by an exclusive `flock` on the file, held from the tail check to the
//! `fdatasync`, so the only way a torn tail can exist is a crash during an append; the next
//! append truncates it (under the lock) before writing, and readers stop at it. Each file is
//! created atomically (written as a temporary file, then hard-linked into place and the
//! directory fsynced), so it always starts with a complete header.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rkyv::util::AlignedVec;

use super::SpoolError;
use super::disk::{self, Disk, DiskFile, Mode};
use super::record::{self, ArchivedPlaceholder, FrameError, FrameFormat, FramePos, RecordKind};
use super::recovery::SegmentReport;
use super::segment::{self, FILE_HEADER_LEN, LEDGER_MAGIC};

/// File name of the format 1 ledger of older builds (read, never written).
pub const LEGACY_LEDGER_FILE: &str = "ledger";
/// The newest ledger file is rotated once it is this old.
pub const ROTATE_MS: u64 = 86_400_000;
/// The newest ledger file is rotated once it holds this many bytes.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// File name of ledger file `seq` (from 1).
pub fn ledger_file_name(seq: u64) -> String {
    format!("ledger-{seq:016x}")
}

/// The ledger files of `spool_dir` in order, oldest first: (seq, path), the format 1 file as
/// seq 0.
pub(crate) fn list(disk: &dyn Disk, spool_dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for name in disk.list_dir(spool_dir)? {
        let seq = if name == LEGACY_LEDGER_FILE {
            0
        } else {
            match name.strip_prefix("ledger-").filter(|h| h.len() == 16) {
                Some(hex) => match u64::from_str_radix(hex, 16) {
                    Ok(seq) if seq > 0 => seq,
                    _ => continue,
                },
                None => continue,
            }
        };
        files.push((seq, spool_dir.join(name)));
    }
    files.sort();
    Ok(files)
}

/// The file a handle appends to.
struct Current {
    seq: u64,
    file: Box<dyn DiskFile>,
    format: FrameFormat,
    created_ms: u64,
    /// (offset, next frame number) up to which this handle has validated the file (a frame
    /// boundary); `None` until the first append, or after an error, which forces a full scan.
    valid_end: Option<(u64, u64)>,
}

/// A shard's handle on the shared ledger.
pub(crate) struct Ledger {
    disk: Arc<dyn Disk>,
    spool_dir: PathBuf,
    shard: u8,
    current: Option<Current>,
}

impl Ledger {
    pub(crate) fn new(disk: Arc<dyn Disk>, spool_dir: &Path, shard: u8) -> Self {
        Ledger {
            disk,
            spool_dir: spool_dir.to_owned(),
            shard,
            current: None,
        }
    }

    fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError {
        let path = path.to_owned();
        move |source| SpoolError::Io { op, path, source }
    }

    /// Appends placeholders (their rkyv archives) to the newest ledger file and makes them
    /// durable (`fdatasync`).
    pub(crate) fn append(
        &mut self,
        archives: &[AlignedVec],
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        if archives.is_empty() {
            return Ok(());
        }
        let mut cur = self.open(now_ms)?;
        let path = self.spool_dir.join(ledger_file_name(cur.seq));
        cur.file.lock().map_err(Self::io_err(&path, "lock"))?;
        let result = Self::append_locked(&cur, &path, archives);
        // Unlocking only fails for a bad fd; closing the fd (drop) releases the lock anyway.
        let _ = cur.file.unlock();
        cur.valid_end = result.as_ref().ok().copied();
        self.current = Some(cur);
        result.map(|_| ())
    }

    fn append_locked(
        cur: &Current,
        path: &Path,
        archives: &[AlignedVec],
    ) -> Result<(u64, u64), SpoolError> {
        let file = &cur.file;
        let len = file.size().map_err(Self::io_err(path, "stat"))?;
        // Re-read from the last frame this handle validated (another shard may have appended).
        let (from, number) = cur
            .valid_end
            .filter(|&(v, _)| v <= len && v >= FILE_HEADER_LEN as u64)
            .unwrap_or((FILE_HEADER_LEN as u64, 0));
        let mut buf = AlignedVec::<16>::new();
        buf.resize((len - from) as usize, 0);
        disk::read_exact_at(&**file, &mut buf, from).map_err(Self::io_err(path, "read"))?;
        let scan = segment::scan_frames(cur.format, &buf, (from, number), true, |_, f| {
            placeholder(f).map(|_| ())
        });
        let (valid, mut number) = (scan.end, scan.next_number);
        if valid < len {
            tracing::warn!(path = %path.display(), offset = valid, bytes = len - valid,
                "ledger has a torn tail from an interrupted purge; truncating it");
            file.set_len(valid)
                .map_err(Self::io_err(path, "truncate"))?;
        }
        let mut frames = Vec::new();
        for a in archives {
            let at = FramePos {
                offset: valid + frames.len() as u64,
                number,
            };
            frames.extend_from_slice(&record::encode_frame(
                cur.format,
                at,
                RecordKind::Placeholder,
                a,
                &[],
            ));
            number += 1;
        }
        // At `valid`, the end of the file: the lock keeps other appenders out until the sync.
        if let Err(e) = file.write_at(&[&frames], valid) {
            // Leave no partial frame behind for the next appender or reader.
            let _ = file.set_len(valid);
            return Err(Self::io_err(path, "write")(e));
        }
        file.sync_data().map_err(Self::io_err(path, "fdatasync"))?;
        Ok((valid + frames.len() as u64, number))
    }

    /// The newest ledger file, opened for appending; a new one when there is none yet, when the
    /// newest is due for rotation, or when its header cannot be read.
    fn open(&mut self, now_ms: u64) -> Result<Current, SpoolError> {
        let (disk, dir) = (&*self.disk, &self.spool_dir);
        let files = list(disk, dir).map_err(Self::io_err(dir, "list"))?;
        let newest = files.last().map_or(0, |&(seq, _)| seq);
        if let Some(cur) = self.current.take() {
            let len = cur.file.size().unwrap_or(u64::MAX);
            if cur.seq == newest && !due(cur.created_ms, len, now_ms) {
                return Ok(cur);
            }
        }
        if newest > 0 {
            let path = dir.join(ledger_file_name(newest));
            if let Some(cur) = open_file(disk, &path, newest)? {
                let len = cur.file.size().map_err(Self::io_err(&path, "stat"))?;
                if !due(cur.created_ms, len, now_ms) {
                    return Ok(cur);
                }
            }
        }
        let seq = newest + 1;
        let path = dir.join(ledger_file_name(seq));
        let tmp = dir.join(format!("{}.tmp-{:02}", ledger_file_name(seq), self.shard));
        let key = segment::new_key();
        let new = segment::NewHeader {
            shard: 0,
            seq,
            created_ms: now_ms,
            key: &key,
            prev_frames: None,
        };
        let header = segment::file_header(LEDGER_MAGIC, new);
        let t = disk
            .open(&tmp, Mode::Create)
            .map_err(Self::io_err(&tmp, "create"))?;
        t.write_at(&[&header], 0)
            .and_then(|()| t.sync_all())
            .map_err(Self::io_err(&tmp, "write"))?;
        // link(2) fails if another shard created the file first: theirs is just as good.
        let linked = disk.hard_link(&tmp, &path);
        let _ = disk.remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Self::io_err(&path, "link")(e)),
        }
        disk::sync_dir(disk, dir).map_err(Self::io_err(dir, "fsync"))?;
        match open_file(disk, &path, seq)? {
            Some(cur) => Ok(cur),
            None => Err(SpoolError::BadHeader {
                path,
                reason: segment::HeaderError::Short(0),
            }),
        }
    }

    /// Removes the ledger files whose successor was started more than `retention_ms` ago (every
    /// placeholder in them is older than that). Returns the files removed.
    pub(crate) fn expire(
        &self,
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<Vec<PathBuf>, SpoolError> {
        let (disk, dir) = (&*self.disk, &self.spool_dir);
        let files = list(disk, dir).map_err(Self::io_err(dir, "list"))?;
        let cutoff = now_ms.saturating_sub(retention_ms);
        // When each file was started, from its 64-byte header; `None` when unreadable. Files
        // are started in order, so the first readable start after a file bounds every
        // placeholder in it (a file with a damaged header does not stop the others expiring).
        let started: Vec<Option<u64>> = files
            .iter()
            .map(|(_, p)| read_header(disk, p).map(|h| h.created_ms))
            .collect();
        let mut removed = Vec::new();
        for (i, (_, old)) in files.iter().enumerate() {
            let bound = started[i + 1..].iter().flatten().next();
            if bound.is_none_or(|&t| t > cutoff) {
                continue;
            }
            match disk.remove_file(old) {
                Ok(()) => removed.push(old.clone()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io_err(old, "unlink")(e)),
            }
        }
        // Temporary files of a creation that a crash interrupted (a live one is seconds old).
        for (path, age) in stale_tmp(disk, dir) {
            if age > std::time::Duration::from_secs(60) && disk.remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            disk::sync_dir(disk, dir).map_err(Self::io_err(dir, "fsync"))?;
            tracing::info!(
                files = removed.len(),
                "ledger files past retention.ledger removed"
            );
        }
        Ok(removed)
    }
}

/// Whether the newest ledger file, started at `created_ms` and `len` bytes long, is due for
/// rotation.
fn due(created_ms: u64, len: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(created_ms) >= ROTATE_MS || len >= ROTATE_BYTES
}

/// Opens a format 2 ledger file for appending; `None` when its header is not a valid format 2
/// ledger header (it is then left alone and a new file started).
fn open_file(disk: &dyn Disk, path: &Path, seq: u64) -> Result<Option<Current>, SpoolError> {
    let file = disk
        .open(path, Mode::Write)
        .map_err(Ledger::io_err(path, "open"))?;
    Ok(match header_of(&*file) {
        Some(hd) if hd.seq == seq && hd.format != FrameFormat::V1 => Some(Current {
            seq,
            file,
            format: hd.format,
            created_ms: hd.created_ms,
            valid_end: None,
        }),
        _ => None,
    })
}

/// The file header of an open ledger file, if it is valid (reads 64 bytes only).
fn header_of(file: &dyn DiskFile) -> Option<segment::FileHeader> {
    let mut h = [0u8; FILE_HEADER_LEN];
    disk::read_exact_at(file, &mut h, 0).ok()?;
    segment::parse_file_header(&h, LEDGER_MAGIC).ok()
}

/// The file header of the ledger file at `path`, if it is valid.
fn read_header(disk: &dyn Disk, path: &Path) -> Option<segment::FileHeader> {
    header_of(&*disk.open(path, Mode::Read).ok()?)
}

/// Leftover `ledger-*.tmp-NN` files and their age.
fn stale_tmp(disk: &dyn Disk, dir: &Path) -> Vec<(PathBuf, std::time::Duration)> {
    let Ok(names) = disk.list_dir(dir) else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter(|name| name.starts_with("ledger-") && name.contains(".tmp-"))
        .filter_map(|name| {
            let path = dir.join(name);
            Some((path.clone(), disk.age(&path)?))
        })
        .collect()
}

/// The validated placeholder of a ledger frame.
fn placeholder<'a>(f: &record::Frame<'a>) -> Result<&'a ArchivedPlaceholder, FrameError> {
    if f.kind != RecordKind::Placeholder {
        return Err(FrameError::Kind(f.kind as u8));
    }
    record::check_placeholder(f.meta)
}

/// Reads every ledger file of `spool_dir`, oldest first (copies, so it is safe while a server
/// appends or truncates), handing every valid placeholder to `visit`. One report per file; none
/// when there is no ledger yet.
pub(crate) fn read_ledger(
    disk: &dyn Disk,
    spool_dir: &Path,
    mut visit: impl FnMut(&ArchivedPlaceholder),
) -> Result<Vec<SegmentReport>, SpoolError> {
    let files = match list(disk, spool_dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Ledger::io_err(spool_dir, "list")(e)),
    };
    let mut reports = Vec::new();
    for (seq, path) in files {
        let buf = match segment::read_aligned(disk, &path) {
            Ok(b) => b,
            // Expired by a running server since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Ledger::io_err(&path, "read")(e)),
        };
        let mut report = SegmentReport {
            path: path.clone(),
            shard: None,
            seq,
            len: buf.len() as u64,
            records: 0,
            end: 0,
            header_error: None,
            torn: None,
            damaged: Vec::new(),
        };
        let fmt = match segment::parse_file_header(&buf, LEDGER_MAGIC) {
            Ok(h) => h.format,
            Err(e) => {
                report.header_error = Some(e);
                reports.push(report);
                continue;
            }
        };
        let body = &buf[FILE_HEADER_LEN..];
        let end = segment::scan_frames(fmt, body, (FILE_HEADER_LEN as u64, 0), true, |_, f| {
            visit(placeholder(f)?);
            report.records += 1;
            Ok(())
        });
        report.end = end.end;
        report.torn = end.torn;
        report.damaged = end.damaged;
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::TornTail;
    use crate::spool::disk::RealDisk;
    use crate::spool::record::Placeholder;
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    const DAY: u64 = 86_400_000;

    fn archive(id: u64) -> AlignedVec {
        let p = Placeholder {
            id,
            reverse_path: "a@example.com".into(),
            ..Placeholder::default()
        };
        record::archive(&p).unwrap()
    }

    /// Every id in the ledger files, oldest file first, and the last file's torn tail.
    fn ids(dir: &Path) -> (Vec<u64>, Option<TornTail>) {
        let mut ids = Vec::new();
        let reports = read_ledger(&RealDisk, dir, |p| ids.push(p.id.to_native())).unwrap();
        (ids, reports.last().and_then(|r| r.torn.clone()))
    }

    fn names(dir: &Path) -> Vec<String> {
        list(&RealDisk, dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_torn_ledger_tail_is_ignored_then_truncated_by_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_ledger(&RealDisk, dir.path(), |_| {})
                .unwrap()
                .is_empty()
        );
        let mut a = Ledger::new(disk::real(), dir.path(), 0);
        a.append(&[archive(1)], 0).unwrap();
        // A crash in the middle of another append: half a frame, then zeros.
        let path = dir.path().join(ledger_file_name(1));
        let len = fs::metadata(&path).unwrap().len();
        let cur = open_file(&RealDisk, &path, 1).unwrap().unwrap();
        let at = FramePos {
            offset: len,
            number: 1,
        };
        let mut torn =
            record::encode_frame(cur.format, at, RecordKind::Placeholder, &archive(2), &[]);
        torn.truncate(torn.len() / 2);
        torn.extend_from_slice(&[0; 32]);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let (seen, tail) = ids(dir.path());
        assert_eq!(seen, [1]);
        assert!(tail.is_some());
        // Another shard's handle (no cached end) repairs the tail before appending.
        let mut b = Ledger::new(disk::real(), dir.path(), 1);
        b.append(&[archive(3)], 0).unwrap();
        a.append(&[archive(4), archive(5)], 0).unwrap();
        assert_eq!(ids(dir.path()), (vec![1, 3, 4, 5], None));
        assert_eq!(names(dir.path()), [ledger_file_name(1)]);
    }

    #[test]
    fn ledger_files_rotate_daily_and_expire_after_their_successor_is_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        // A format 1 ledger from an older build is read first and never written.
        let legacy = dir.path().join(LEGACY_LEDGER_FILE);
        let mut old = segment::v1_file_header(LEDGER_MAGIC, 0, 0).to_vec();
        let v1 = FramePos::default();
        old.extend(record::encode_frame(
            FrameFormat::V1,
            v1,
            RecordKind::Placeholder,
            &archive(1),
            &[],
        ));
        fs::write(&legacy, &old).unwrap();
        let before = fs::read(&legacy).unwrap();

        let mut a = Ledger::new(disk::real(), dir.path(), 0);
        let mut b = Ledger::new(disk::real(), dir.path(), 1);
        a.append(&[archive(2)], 10 * DAY).unwrap();
        b.append(&[archive(3)], 10 * DAY + 1).unwrap();
        // A day later the next append starts a new file, whichever shard makes it.
        b.append(&[archive(4)], 11 * DAY).unwrap();
        a.append(&[archive(5)], 11 * DAY + 5).unwrap();
        a.append(&[archive(6)], 12 * DAY + 5).unwrap();
        assert_eq!(fs::read(&legacy).unwrap(), before);
        assert_eq!(ids(dir.path()), (vec![1, 2, 3, 4, 5, 6], None));
        assert_eq!(
            names(dir.path()),
            [
                LEGACY_LEDGER_FILE.to_owned(),
                ledger_file_name(1),
                ledger_file_name(2),
                ledger_file_name(3)
            ]
        );

        // With 400 days of retention, a file goes once its successor is 400 days old: the
        // legacy file when ledger-1 (day 10) is, ledger-1 when ledger-2 (day 11) is.
        let keep = 400 * DAY;
        assert!(a.expire(410 * DAY - 1, keep).unwrap().is_empty());
        assert_eq!(a.expire(410 * DAY, keep).unwrap(), [legacy]);
        assert_eq!(ids(dir.path()).0, [2, 3, 4, 5, 6]);
        assert_eq!(b.expire(411 * DAY, keep).unwrap().len(), 1);
        assert_eq!(ids(dir.path()).0, [4, 5, 6]);
        // The newest file is never removed, however old.
        assert_eq!(a.expire(9_999 * DAY, keep).unwrap().len(), 1);
        assert_eq!(names(dir.path()), [ledger_file_name(3)]);
        assert_eq!(ids(dir.path()).0, [6]);
    }

    #[test]
    fn a_ledger_file_with_a_damaged_header_does_not_stop_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Ledger::new(disk::real(), dir.path(), 0);
        for day in 1..=3 {
            a.append(&[archive(day)], day * DAY).unwrap();
        }
        // ledger-2's header is damaged: its start time is unknown, ledger-3's bounds it.
        let second = dir.path().join(ledger_file_name(2));
        let mut bytes = fs::read(&second).unwrap();
        bytes[20] ^= 1;
        fs::write(&second, &bytes).unwrap();
        // A creation that a crash interrupted left a temporary file.
        let tmp = dir.path().join(format!("{}.tmp-01", ledger_file_name(4)));
        fs::write(&tmp, b"x").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let removed = a.expire(3 * DAY + 400 * DAY, 400 * DAY).unwrap();
        assert_eq!(
            removed,
            [dir.path().join(ledger_file_name(1)), second, tmp],
            "ledger-1 and the damaged ledger-2 go once ledger-3 is 400 days old"
        );
        assert_eq!(ids(dir.path()).0, [3]);
    }
}
