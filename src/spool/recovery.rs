//! Startup scan: rebuild a shard's index and per-recipient state from its segments and the ledger.
//!
//! Recovery never writes: it reads segments in sequence order and the records of each segment in
//! file order, and stops a segment at the first zero length (clean end) or the first frame that
//! fails any check (torn/corrupt tail, reported with its offset and the bytes dropped). A dropped
//! tail is treated as never written: it can only hold records that no `fdatasync` covered, since
//! every synced record lies before every unsynced one in the same file (docs/spool-format.md).
//! Each frame's archive is validated with checked rkyv access here, once; later reads of the same
//! bytes are zero-copy and unchecked (see `segment.rs`).
//!
//! Ids found in the ledger are final: their message records (left behind by a crash between the
//! ledger's fdatasync and the unlink of their segment) are not indexed, and status records that
//! refer to them are counted apart from status records for ids never seen.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::ids::QueueId;

use super::disk::Disk;
use super::ledger;
use super::record::{FrameError, StatusKind};
use super::segment::{self, Damage, HeaderError, Load, Rec, Segment, TornTail};
use super::{MessageState, RecordRef, SpoolError};

/// What the scan of one segment (or the ledger) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// Shard of the segment (`None` for the ledger).
    pub shard: Option<u8>,
    /// Segment sequence number (0 for the ledger).
    pub seq: u64,
    /// File size in bytes.
    pub len: u64,
    /// Valid records read.
    pub records: u64,
    /// Offset just past the last valid record.
    pub end: u64,
    /// Set when the file header is invalid; no record of the file was read.
    pub header_error: Option<HeaderError>,
    /// Set when the scan stopped at an invalid frame: everything from there was dropped.
    pub torn: Option<TornTail>,
    /// Damaged regions stepped over, each with valid records after it.
    pub damaged: Vec<Damage>,
}

impl SegmentReport {
    /// Whether the file read to a clean end with a valid header and no damage.
    pub fn is_clean(&self) -> bool {
        self.torn.is_none() && self.header_error.is_none() && self.damaged.is_empty()
    }
}

impl fmt::Display for SegmentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(e) = &self.header_error {
            return write!(f, "unreadable header ({e}), {} bytes ignored", self.len);
        }
        write!(
            f,
            "{} records, valid up to offset {}",
            self.records, self.end
        )?;
        for d in &self.damaged {
            write!(
                f,
                "; damaged at offset {} ({} bytes, {} records lost, later records kept): {}",
                d.offset, d.bytes, d.frames, d.reason
            )?;
        }
        if let Some(t) = &self.torn {
            write!(
                f,
                "; torn/corrupt tail at offset {} ({} bytes dropped): {}",
                t.offset, t.bytes, t.reason
            )?;
        }
        Ok(())
    }
}

/// What [`super::Shard::open`] recovered and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The shard.
    pub shard: u8,
    /// One entry per segment file, in sequence order.
    pub segments: Vec<SegmentReport>,
    /// Messages indexed.
    pub messages: u64,
    /// Status records applied.
    pub status_records: u64,
    /// Status records whose message is unknown (neither in a segment nor in the ledger): ignored.
    pub unknown_status: u64,
    /// Status records ignored because their recipient index or kind is out of range.
    pub bad_status: u64,
    /// Records of messages already in the ledger (purge interrupted before the unlink): ignored.
    pub already_purged: u64,
    /// Message records with an id already seen or belonging to another shard: ignored.
    pub foreign_or_duplicate: u64,
    /// Leftover `*.tmp` files of interrupted segment creations (removed by `Shard::open`).
    pub removed_tmp: Vec<PathBuf>,
}

impl RecoveryReport {
    /// Segments that ended in a torn or corrupt tail, hold damage, or whose header is
    /// unreadable.
    pub fn damaged(&self) -> impl Iterator<Item = &SegmentReport> {
        self.segments.iter().filter(|s| !s.is_clean())
    }

    /// Records lost to damage: in the middle of segments, or at the end of one whose successor
    /// counted them (not counting torn tails, which hold only appends never acknowledged).
    pub fn lost_records(&self) -> u64 {
        self.segments
            .iter()
            .flat_map(|s| &s.damaged)
            .map(|d| d.frames)
            .sum()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "shard {}: {} segments, {} messages, {} status records",
            self.shard,
            self.segments.len(),
            self.messages,
            self.status_records
        )?;
        for s in self.damaged() {
            writeln!(f, "  {s}")?;
        }
        let ignored = [
            (self.unknown_status, "status records for unknown messages"),
            (
                self.bad_status,
                "status records with a bad recipient or kind",
            ),
            (self.already_purged, "records of messages already purged"),
            (
                self.foreign_or_duplicate,
                "duplicate or foreign message records",
            ),
        ];
        for (n, what) in ignored {
            if n > 0 {
                writeln!(f, "  ignored {n} {what}")?;
            }
        }
        for p in &self.removed_tmp {
            writeln!(f, "  removed unfinished {}", p.display())?;
        }
        Ok(())
    }
}

/// A segment with the ids of the messages its records concern (used by purge).
pub(crate) struct SegmentEntry {
    pub(crate) seg: Segment,
    /// Ids of the message records in this segment, in file order.
    pub(crate) own: Vec<QueueId>,
    /// Ids its status records refer to (consecutive duplicates collapsed).
    pub(crate) refs: Vec<QueueId>,
}

impl SegmentEntry {
    pub(crate) fn new(seg: Segment) -> Self {
        SegmentEntry {
            seg,
            own: Vec::new(),
            refs: Vec::new(),
        }
    }
}

/// A recovered shard, before it takes new appends.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<SegmentEntry>,
    pub(crate) index: HashMap<QueueId, MessageState>,
    pub(crate) report: RecoveryReport,
    /// Highest id counter seen in the segments or the ledger.
    pub(crate) max_counter: Option<u64>,
}

/// Directory of shard `shard` inside the spool directory.
pub fn shard_dir(spool_dir: &Path, shard: u8) -> PathBuf {
    spool_dir.join(format!("shard-{shard:02}"))
}

/// `(seq, path)` of each segment file, sorted, and the leftover `*.tmp` files.
pub(crate) type SegmentFiles = (Vec<(u64, PathBuf)>, Vec<PathBuf>);

/// Lists `(seq, path)` of the segment files of a shard directory, sorted, and the `*.tmp` files.
pub(crate) fn list_segments(disk: &dyn Disk, dir: &Path) -> Result<SegmentFiles, SpoolError> {
    let io_err = |source| SpoolError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    };
    let mut segs = Vec::new();
    let mut tmps = Vec::new();
    let names = match disk.list_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((segs, tmps)),
        Err(e) => return Err(io_err(e)),
    };
    for name in names {
        if let Some(seq) = segment::parse_segment_file_name(&name) {
            segs.push((seq, dir.join(name)));
        } else if name.starts_with("seg-") && name.ends_with(".tmp") {
            tmps.push(dir.join(name));
        }
    }
    segs.sort();
    Ok((segs, tmps))
}

/// Lists the shard numbers that have a directory in the spool directory.
/// Shard numbers that have a directory under `spool_dir`.
pub fn list_shards(spool_dir: &Path) -> Result<Vec<u8>, SpoolError> {
    let mut shards = Vec::new();
    let entries = fs::read_dir(spool_dir).map_err(|source| SpoolError::Io {
        op: "list",
        path: spool_dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("shard-"))
            && let Ok(s) = n.parse::<u8>()
        {
            shards.push(s);
        }
    }
    shards.sort_unstable();
    Ok(shards)
}

/// Scans every segment of `shard` and the ledger. Never writes.
pub(crate) fn recover_shard(
    disk: &dyn Disk,
    spool_dir: &Path,
    shard: u8,
    how: Load,
    full_tail: bool,
) -> Result<Recovered, SpoolError> {
    let dir = shard_dir(spool_dir, shard);
    let (files, tmps) = list_segments(disk, &dir)?;
    let mut report = RecoveryReport {
        shard,
        removed_tmp: tmps,
        ..RecoveryReport::default()
    };
    let mut index: HashMap<QueueId, MessageState> = HashMap::new();
    let mut unknown: HashMap<QueueId, u64> = HashMap::new();
    let mut max_counter: Option<u64> = None;
    let mut segments = Vec::with_capacity(files.len());
    for (seq, path) in files {
        let seg = Segment::load(disk, &path, shard, seq, how).map_err(|source| SpoolError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        let mut entry = SegmentEntry::new(seg);
        let (own, refs) = (&mut entry.own, &mut entry.refs);
        let end = entry.seg.scan(full_tail, |offset, rec| match rec {
            Rec::Message(meta, _) => {
                let id = QueueId(meta.id.to_native());
                if id.shard() != shard || index.contains_key(&id) {
                    report.foreign_or_duplicate += 1;
                    return;
                }
                max_counter = max_counter.max(Some(id.counter()));
                index.insert(
                    id,
                    MessageState::new(
                        RecordRef {
                            segment: seq,
                            offset,
                        },
                        meta.received_at_ms.to_native(),
                        meta.recipients.len(),
                    ),
                );
                own.push(id);
                report.messages += 1;
            }
            Rec::Status(rec) => {
                let id = QueueId(rec.id.to_native());
                if refs.last() != Some(&id) {
                    refs.push(id);
                }
                let Some(state) = index.get_mut(&id) else {
                    *unknown.entry(id).or_default() += 1;
                    return;
                };
                let kind = StatusKind::from_u8(rec.kind);
                let applied = kind.is_some_and(|kind| {
                    state.apply(
                        rec.rcpt.to_native(),
                        kind,
                        rec.attempt.to_native(),
                        rec.at_ms.to_native(),
                        rec.next_attempt_ms.to_native(),
                        RecordRef {
                            segment: seq,
                            offset,
                        },
                    )
                });
                if applied {
                    report.status_records += 1;
                } else {
                    report.bad_status += 1;
                }
            }
        });
        let seg = &entry.seg;
        if let Some(t) = &end.torn {
            tracing::warn!(path = %seg.path.display(), offset = t.offset, bytes = t.bytes,
                reason = %t.reason, "dropping torn or corrupt segment tail");
        }
        for d in &end.damaged {
            tracing::error!(path = %seg.path.display(), offset = d.offset, bytes = d.bytes,
                records = d.frames, reason = %d.reason,
                "damaged spool frame skipped; the records after it are kept");
        }
        if let Some(e) = &seg.header_error {
            tracing::warn!(path = %seg.path.display(), error = %e, "ignoring segment with bad header");
        }
        report.segments.push(SegmentReport {
            path: seg.path.clone(),
            shard: Some(shard),
            seq,
            len: seg.len(),
            records: seg.record_count(),
            end: end.end,
            header_error: seg.header_error.clone(),
            torn: end.torn,
            damaged: end.damaged,
        });
        segments.push(entry);
    }
    missing_tails(&segments, &mut report);
    let ledger = ledger::read_ledger(disk, spool_dir, |p| {
        let id = QueueId(p.id.to_native());
        if id.shard() != shard {
            return;
        }
        max_counter = max_counter.max(Some(id.counter()));
        if index.remove(&id).is_some() {
            report.messages -= 1;
            report.already_purged += 1;
        }
        if let Some(n) = unknown.remove(&id) {
            report.already_purged += n;
        }
    })?;
    for l in &ledger {
        if let Some(e) = &l.header_error {
            // Its ids cannot be read; a message whose purge a crash interrupted may come back.
            tracing::error!(path = %l.path.display(), error = %e,
                "ledger header is invalid; ignoring its placeholders");
        }
    }
    report.unknown_status = unknown.values().sum();
    Ok(Recovered {
        segments,
        index,
        report,
        max_counter,
    })
}

/// A segment with fewer frames than the next segment's header counted for it lost its tail to
/// damage: a crash cannot, since the count was taken from what was on disk (and synced) when the
/// next segment was created. Its torn tail, if any, becomes damage.
fn missing_tails(segments: &[SegmentEntry], report: &mut RecoveryReport) {
    for (i, pair) in segments.windows(2).enumerate() {
        let (seg, next) = (&pair[0].seg, &pair[1].seg);
        let Some(counted) = next.prev_frames.filter(|_| next.seq == seg.seq + 1) else {
            continue;
        };
        let written = seg.frames_written();
        if seg.header_error.is_some() || written >= counted {
            continue;
        }
        let r = &mut report.segments[i];
        let damage = Damage {
            offset: r.end,
            bytes: r.len.saturating_sub(r.end),
            frames: counted - written,
            reason: FrameError::MissingTail(counted - written),
        };
        tracing::error!(path = %seg.path.display(), offset = damage.offset,
            records = damage.frames, "the end of a spool segment is lost to damage");
        r.torn = None;
        r.damaged.push(damage);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::spool::record::{self, StatusKind};
    use crate::spool::segment::FILE_HEADER_LEN;
    use crate::spool::tests::{cfg, meta, status};
    use crate::spool::{NewMessage, Shard};

    /// Frames of a segment image: (offset, length).
    fn frame_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        buf.extend_from_slice(bytes);
        let mut pos = FILE_HEADER_LEN;
        let mut out = Vec::new();
        let fmt = segment::parse_file_header(&buf, segment::SEGMENT_MAGIC)
            .unwrap()
            .format;
        while let Some(f) = record::decode_frame(fmt, pos as u64, &buf[pos..]).unwrap() {
            out.push((pos, f.len));
            pos += f.len;
        }
        out
    }

    /// Crash simulation: a segment whose bytes past `cut` never reached the disk (and read as
    /// zeros, as preallocated space does). Every frame fully before the cut must come back,
    /// exactly; no frame crossing it may come back unless its lost bytes were zeros anyway (the
    /// frame is then byte-identical); records after the first lost one never come back; and the
    /// shard takes new appends.
    #[test]
    fn recovery_survives_a_cut_at_every_offset() {
        let src = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(src.path()), 1_000).unwrap();
        let mut bodies = BTreeMap::new();
        let mut add = |shard: &mut Shard, i: usize| {
            // Bodies with zero runs, so some cuts land in bytes that were zero already.
            let body: Vec<u8> = (0..40 + i * 7)
                .map(|j| if j % 9 < 3 { 0 } else { j as u8 })
                .collect();
            let mut msg = NewMessage {
                meta: meta(2),
                options: Default::default(),
                body: &[&body],
            };
            let id = shard.append_message(&mut msg, 1_000).unwrap().0;
            bodies.insert(id, body);
            id
        };
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(add(&mut shard, i));
        }
        shard
            .append_status(&status(ids[0], 0, StatusKind::Delivered, 2_000))
            .unwrap();
        shard.sync().unwrap();
        let synced_records = 5;
        // Unsynced tail: a crash may keep any part of it.
        ids.push(add(&mut shard, 4));
        shard
            .append_status(&status(ids[1], 1, StatusKind::Deferred, 3_000))
            .unwrap();
        ids.push(add(&mut shard, 5));
        let seg_path = shard_dir(src.path(), 0).join(segment::segment_file_name(1));
        drop(shard);
        let image = fs::read(&seg_path).unwrap();
        let spans = frame_spans(&image);
        assert_eq!(spans.len(), 8);
        let synced_end = spans[synced_records - 1].0 + spans[synced_records - 1].1;
        let written_end = spans.last().map(|&(o, l)| o + l).unwrap();

        // Every offset from inside the third-to-last synced record to past the written end.
        let first_cut = spans[synced_records - 3].0;
        let started = Instant::now();
        for cut in first_cut..=written_end + 16 {
            let dir = tempfile::tempdir().unwrap();
            let sdir = shard_dir(dir.path(), 0);
            fs::create_dir_all(&sdir).unwrap();
            let mut torn = image.clone();
            torn[cut.min(image.len())..].fill(0);
            fs::write(sdir.join(segment::segment_file_name(1)), &torn).unwrap();

            let intact = spans
                .iter()
                .take_while(|&&(o, l)| torn[o..o + l] == image[o..o + l])
                .count();
            let (mut shard, report) = Shard::open(cfg(dir.path()), 1).unwrap();
            let seg = &report.segments[0];
            assert_eq!(seg.records as usize, intact, "cut at {cut}");
            assert_eq!(
                report.messages + report.status_records,
                intact as u64,
                "cut at {cut}"
            );
            assert_eq!(report.unknown_status + report.bad_status, 0);
            assert_eq!(
                seg.end as usize,
                spans.get(intact).map_or(written_end, |s| s.0)
            );
            if cut >= synced_end {
                assert!(intact >= synced_records, "synced record lost at cut {cut}");
            }
            // Recovered messages are exactly the originals; lost ones are absent.
            let mut recovered = 0;
            for (id, body) in &bodies {
                if let Some(view) = shard.message(*id) {
                    assert_eq!(view.body, &body[..], "cut at {cut}");
                    recovered += 1;
                }
            }
            assert_eq!(recovered, report.messages);
            let delivered = shard.state(ids[0]).map(|s| s.recipients[0].kind);
            if intact >= 5 {
                assert_eq!(delivered, Some(Some(StatusKind::Delivered)));
            }
            // New appends go to a new segment and survive the next reopen.
            let mut msg = NewMessage {
                meta: meta(1),
                options: Default::default(),
                body: &[b"after"],
            };
            let (id, _) = shard.append_message(&mut msg, 1).unwrap();
            // Above every recovered id (ids of torn records were never acknowledged).
            assert!(shard.messages().all(|old| old <= id));
            shard.sync().unwrap();
            drop(shard);
            let (shard, again) = Shard::open(cfg(dir.path()), 1).unwrap();
            assert_eq!(again.messages, report.messages + 1);
            assert_eq!(shard.message(id).unwrap().body, b"after");
        }
        eprintln!(
            "{} cuts in {:?}",
            written_end + 17 - first_cut,
            started.elapsed()
        );
    }

    /// Timing, not an assertion: `cargo test --release -- --ignored --nocapture recovery_of_1m`.
    #[test]
    #[ignore]
    fn recovery_of_1m_small_messages() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::spool::ShardConfig::new(dir.path(), 0);
        let (mut shard, _) = Shard::open(c.clone(), 1_000).unwrap();
        let body = [b'x'; 64];
        let mut msg = NewMessage {
            meta: meta(1),
            options: Default::default(),
            body: &[&body],
        };
        let started = Instant::now();
        for _ in 0..1_000_000 {
            shard.append_message(&mut msg, 1_000).unwrap();
        }
        shard.sync().unwrap();
        let appended = started.elapsed();
        let bytes = shard.stats().bytes;
        drop(shard);
        let started = Instant::now();
        let (shard, report) = Shard::open(c, 1_000).unwrap();
        let recovered = started.elapsed();
        assert_eq!(report.messages, 1_000_000);
        eprintln!(
            "append+sync 1M: {appended:?}; recover 1M ({} segments, {} MiB): {recovered:?}; \
             index {} messages",
            report.segments.len(),
            bytes >> 20,
            shard.stats().messages
        );
    }
}
