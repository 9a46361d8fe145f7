//! The durable spool: per-core append-only segment files of framed rkyv records.
//!
//! A [`Shard`] owns one core's segments. It appends message and status records into a mapped,
//! preallocated segment, keeps a small index (id -> record location, per-recipient state) and
//! reads messages back zero-copy from the mappings. It does no asynchronous I/O: the I/O glue
//! runs `fdatasync` on [`Shard::active_file`] and reports success with [`Shard::mark_durable`].
//!
//! What is durable after each call:
//!
//! - [`Shard::open`]: nothing new is written except the fresh active segment, which is durable
//!   (file fsynced, directory fsynced) before `open` returns.
//! - [`Shard::append_message`] / [`Shard::append_status`]: nothing. The record is in the page cache
//!   and visible to [`Shard::message`]; it becomes durable when an `fdatasync` of the segment that
//!   holds it returns `Ok`. The returned [`CommitTicket`] is durable once
//!   [`Shard::durable_seq`] `>=` it. With [`Durability::None`] the ticket counts as durable at
//!   once (the record still reaches the disk eventually through normal writeback).
//!   When an append does not fit the active segment, the shard fdatasyncs that segment (blocking;
//!   once per segment) before switching, so all earlier tickets are durable when it returns.
//! - [`Shard::mark_durable`]`(upto)`: nothing is written; it records that an `fdatasync` of the
//!   active file, started when `appended_seq() == upto`, returned `Ok`.
//! - [`Shard::sync`]: every record appended so far is durable (blocking `fdatasync`).
//! - [`Shard::purge`]: placeholders of the purged messages are durable in the ledger (fdatasync)
//!   before any segment is unlinked; the unlinks are durable (directory fsync) when it returns.
//!
//! A failed `fdatasync` poisons the shard: the kernel may have dropped the dirty pages and
//! marked them clean, so no later flush can prove those records durable. Every later append or
//! sync returns [`SpoolError::Poisoned`]; restarting recovers whatever really is on disk.
//!
//! Never: write to a segment other than the active one, rewrite a byte before the active
//! segment's end, or unlink a segment before its placeholders are durable.
//!
//! Files: this one holds the [`Shard`] (appends, flushes, segment switching); `state.rs` the
//! per-message index; `purge.rs` retention; `record.rs` the record formats; `segment.rs` the
//! mapped files; `recovery.rs` start-up; `ledger.rs` placeholders of purged mail; `inspect.rs`
//! the offline `spool check` and dump; `lock.rs` the directory lock; `error.rs` the errors;
//! `disk.rs` the seam every file operation goes through (the filesystem, or in tests the
//! simulated disk of `simdisk.rs`, which `power_tests.rs` cuts the power of).

pub(crate) mod disk;
mod error;
mod inspect;
mod ledger;
mod lock;
mod purge;
pub mod record;
pub mod recovery;
pub mod segment;
#[cfg(test)]
mod simdisk;
mod state;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rkyv::rancor;

use crate::ids::QueueId;

pub use error::{FullReason, SpoolError};
pub use inspect::{CheckReport, MessageSnapshot, SpoolSnapshot, check, read_spool};
pub use lock::{SpoolLock, lock};
pub use record::{
    ArchivedMessageMeta, ArchivedPlaceholder, ArchivedRecipientMeta, ArchivedStatusRecord,
    BODY_7BIT, BODY_8BITMIME, MessageMeta, MessageOptions, Placeholder, PlaceholderRecipient,
    RecipientMeta, StatusKind, StatusRecord,
};
pub use recovery::{RecoveryReport, SegmentReport};
pub use segment::{Damage, HeaderError, TornTail};
pub use state::{MessageState, RecipientState, RecipientStatus, RecordRef};

use disk::{Disk, DiskFile};
use record::RecordKind;
use recovery::SegmentEntry;
use segment::{FILE_HEADER_LEN, Load, Segment};

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Size of a segment for status records and DSNs when the disk cannot reserve a full one.
const OUTCOME_SEGMENT_SIZE: u64 = 256 << 10;

/// Which space rule a record's segment follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Room {
    /// New mail: held to `max_bytes`.
    Intake,
    /// What became of accepted mail (status records, DSNs): limited by the disk alone.
    Outcome,
}

/// Whether appends wait for `fdatasync` before they count as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// A ticket is durable only after an `fdatasync` covering it (the default; what a 250 needs).
    Fsync,
    /// Tickets count as durable at once. For benchmarks and tests only: a crash can lose
    /// acknowledged messages.
    None,
}

/// Where and how a shard stores its segments. Resolved configuration, passed in by the caller.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The spool directory (the shard uses `dir/shard-{NN}/`).
    pub dir: PathBuf,
    /// The shard (core) index; the low 8 bits of every id it assigns.
    pub shard: u8,
    /// Size of each new segment file in bytes (rounded up to 4 KiB); default 64 MiB.
    pub segment_size: u64,
    /// Upper bound on the sum of this shard's segment file sizes in bytes; 0 = unlimited.
    /// New mail that would need a segment beyond it fails with [`SpoolError::Full`]. Status
    /// records and DSNs are not held to it: they record what became of mail already accepted,
    /// they are what lets a full spool drain, and only the disk itself can refuse them.
    pub max_bytes: u64,
    /// When tickets count as durable.
    pub durability: Durability,
}

impl ShardConfig {
    /// A config with the defaults: 64 MiB segments, no size limit, [`Durability::Fsync`].
    pub fn new(dir: impl Into<PathBuf>, shard: u8) -> Self {
        ShardConfig {
            dir: dir.into(),
            shard,
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_bytes: 0,
            durability: Durability::Fsync,
        }
    }
}

/// A message to append: its envelope and its body, given in parts that are written back to back
/// (for example `[received_header, client_body]`), so the body is never copied before the spool.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    /// Envelope and session facts; `meta.id` is ignored and set to the assigned id.
    pub meta: MessageMeta,
    /// Delivery options (stored only when one is set).
    pub options: MessageOptions,
    /// Body parts, concatenated on disk.
    pub body: &'a [&'a [u8]],
}

/// Sequence number of an append in this shard's lifetime: durable once
/// [`Shard::durable_seq`] `>=` it. Numbers start at 1 after each [`Shard::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTicket(pub u64);

/// A message read back zero-copy from its segment.
#[derive(Clone, Copy, Debug)]
pub struct MessageView<'a> {
    /// Its id.
    pub id: QueueId,
    /// The archived envelope (validated at recovery or written by this process).
    pub meta: &'a ArchivedMessageMeta,
    /// Its delivery options.
    pub options: MessageOptions,
    /// The raw body bytes, straight from the mapping.
    pub body: &'a [u8],
}

/// What [`Shard::purge`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Segment files unlinked.
    pub removed: Vec<PathBuf>,
    /// Messages whose body is gone (each has a placeholder in the ledger).
    pub purged: Vec<QueueId>,
    /// Bytes of segment files freed.
    pub bytes_freed: u64,
}

/// Counters of one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Segment files, the active one included.
    pub segments: u64,
    /// Sum of segment file sizes (the quantity `max_bytes` limits).
    pub bytes: u64,
    /// Valid records in all segments.
    pub records: u64,
    /// Messages indexed (queued or final but not purged).
    pub messages: u64,
    /// Recipients not yet final.
    pub pending_recipients: u64,
    /// Last append sequence number.
    pub appended_seq: u64,
    /// Last durable sequence number.
    pub durable_seq: u64,
    /// Records lost to damage in the middle of segments, as found by recovery at start.
    pub lost_records: u64,
}

/// One core's spool: its segments, index and append position. Not shared between threads.
pub struct Shard {
    cfg: ShardConfig,
    /// Where its files live: the filesystem, or a simulated disk in tests.
    disk: Arc<dyn Disk>,
    shard_dir: PathBuf,
    /// The shard directory, open: what `active_file` hands out while there is no active segment.
    dir_file: Box<dyn DiskFile>,
    /// Sorted by `seg.seq`. When `has_active`, the last one is the active (writable) segment.
    segments: Vec<SegmentEntry>,
    has_active: bool,
    index: HashMap<QueueId, MessageState>,
    /// Lowest counter the next id may use; above every id recovered or assigned.
    next_counter: u64,
    /// The cluster node number in every id assigned ([`Shard::set_node`]; 0 on a single host).
    node: u8,
    next_seq: u64,
    appended: u64,
    /// Invariant: `durable <= appended`.
    durable: u64,
    /// Sum of the segment file sizes.
    bytes: u64,
    /// Set by a failed fdatasync: the file whose flush failed.
    poisoned: Option<PathBuf>,
    ledger: ledger::Ledger,
    /// Records lost to damage in the middle of segments, as found by recovery.
    lost_records: u64,
    /// The buffer records are archived into, reused from one append to the next.
    scratch: rkyv::util::AlignedVec,
}

impl Shard {
    /// Recovers the shard's existing segments (read-only scan; torn or corrupt tails are dropped
    /// and reported), removes leftovers of interrupted segment creations, and creates a new
    /// active segment for appends. The caller should hold the [`lock`] of `cfg.dir`.
    ///
    /// When the new segment cannot be reserved (disk full, `max_bytes`) the shard still opens
    /// (so that delivery and purge can free space); the next append tries again.
    pub fn open(cfg: ShardConfig, now_ms: u64) -> Result<(Shard, RecoveryReport), SpoolError> {
        Shard::open_on(disk::real(), cfg, now_ms)
    }

    /// [`Shard::open`] on another [`Disk`] (a simulated one, in tests).
    pub(crate) fn open_on(
        disk: Arc<dyn Disk>,
        cfg: ShardConfig,
        now_ms: u64,
    ) -> Result<(Shard, RecoveryReport), SpoolError> {
        let shard_dir = recovery::shard_dir(&cfg.dir, cfg.shard);
        let io_err = |op, path: &Path, source| SpoolError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        if disk.kind(&shard_dir) != Some(disk::Kind::Dir) {
            disk::create_dir_durably(&*disk, &shard_dir)
                .map_err(|e| io_err("create", &shard_dir, e))?;
        }
        let dir_file = disk
            .open(&shard_dir, disk::Mode::Read)
            .map_err(|e| io_err("open", &shard_dir, e))?;
        let rec = recovery::recover_shard(&*disk, &cfg.dir, cfg.shard, Load::Map, false)?;
        for tmp in &rec.report.removed_tmp {
            disk.remove_file(tmp)
                .map_err(|e| io_err("remove", tmp, e))?;
        }
        let mut segments = rec.segments;
        // After a crash of the process (not of the machine) the last segment's unsynced
        // appends may still be in the page cache only; recovery has just read them as records.
        // Make them durable before anything new (a status record, the next segment's count of
        // them) comes to depend on them.
        for e in &segments {
            e.seg
                .sync_data()
                .map_err(|err| io_err("fdatasync", &e.seg.path, err))?;
        }
        trim_recovered(&*disk, &mut segments, &rec.report);
        let next_seq = segments.last().map_or(1, |s| s.seg.seq + 1);
        let bytes = segments.iter().map(|s| s.seg.len()).sum();
        let next_counter = rec.max_counter.map_or(0, |c| c + 1).max(now_ms);
        let mut shard = Shard {
            ledger: ledger::Ledger::new(disk.clone(), &cfg.dir, cfg.shard),
            disk,
            shard_dir,
            dir_file,
            segments,
            has_active: false,
            index: rec.index,
            next_counter,
            node: 0,
            next_seq,
            appended: 0,
            durable: 0,
            bytes,
            poisoned: None,
            lost_records: rec.report.lost_records(),
            scratch: Default::default(),
            cfg,
        };
        match shard.new_segment(Room::Intake, 0, now_ms) {
            Ok(()) => {}
            Err(SpoolError::Full { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(
            shard = shard.cfg.shard,
            messages = rec.report.messages,
            segments = rec.report.segments.len(),
            "spool shard recovered"
        );
        Ok((shard, rec.report))
    }

    /// Sets the cluster node number carried by every id assigned from now on (ids stay unique
    /// across nodes whose numbers differ).
    pub fn set_node(&mut self, node: u8) {
        self.node = node;
    }

    /// Appends a message record and assigns its id: above every id recovered or assigned before,
    /// and at least `now_ms` (so ids roughly follow time across restarts).
    ///
    /// Durable on return: nothing; see the module doc and [`CommitTicket`].
    pub fn append_message(
        &mut self,
        msg: &mut NewMessage<'_>,
        now_ms: u64,
    ) -> Result<(QueueId, CommitTicket), SpoolError> {
        self.check_poisoned()?;
        let counter = self.next_counter.max(now_ms);
        let id = QueueId::new(self.node, self.cfg.shard, counter);
        if counter >= QueueId::COUNTER_LIMIT {
            return Err(SpoolError::IdsExhausted {
                shard: self.cfg.shard,
                last: QueueId::new(
                    self.node,
                    self.cfg.shard,
                    self.next_counter.saturating_sub(1),
                ),
            });
        }
        // Set in place: a clone here would copy the envelope (every recipient) per message.
        msg.meta.id = id.0;
        let meta = &msg.meta;
        let archived = record::archive_into(meta, std::mem::take(&mut self.scratch))
            .map_err(|source| SpoolError::Encode { id, source })?;
        let block = msg.options.encode();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(msg.body.len() + 1);
        let flags = if msg.options.is_default() {
            0
        } else {
            parts.push(&block);
            record::FLAG_OPTIONS
        };
        parts.extend_from_slice(msg.body);
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        let plen = record::payload_len(archived.len(), body_len);
        let room = if meta.is_dsn {
            Room::Outcome
        } else {
            Room::Intake
        };
        let offset = self.append_frame(
            id,
            (RecordKind::Message, flags),
            room,
            &archived,
            &parts,
            plen,
            now_ms,
        );
        self.scratch = archived;
        let offset = offset?;
        self.next_counter = counter + 1;
        let at = RecordRef {
            segment: self.active_seq(),
            offset,
        };
        self.index.insert(
            id,
            MessageState::new(at, meta.received_at_ms, meta.recipients.len()),
        );
        self.active_entry().own.push(id);
        Ok((id, self.bump_seq()))
    }

    /// Appends a status record and applies it to the in-memory state of its recipient.
    ///
    /// Durable on return: nothing; see the module doc and [`CommitTicket`].
    pub fn append_status(&mut self, rec: &StatusRecord) -> Result<CommitTicket, SpoolError> {
        self.check_poisoned()?;
        let id = QueueId(rec.id);
        let Some(state) = self.index.get(&id) else {
            return Err(SpoolError::UnknownMessage {
                id,
                shard: self.cfg.shard,
            });
        };
        if rec.rcpt as usize >= state.recipients.len() {
            return Err(SpoolError::NoSuchRecipient {
                id,
                rcpt: rec.rcpt,
                count: state.recipients.len(),
            });
        }
        let Some(kind) = StatusKind::from_u8(rec.kind) else {
            return Err(SpoolError::BadStatusKind { id, kind: rec.kind });
        };
        let archived = record::archive_into(rec, std::mem::take(&mut self.scratch))
            .map_err(|source| SpoolError::Encode { id, source })?;
        let plen = archived.len();
        let offset = self.append_frame(
            id,
            (RecordKind::Status, 0),
            Room::Outcome,
            &archived,
            &[],
            plen,
            rec.at_ms,
        );
        self.scratch = archived;
        let offset = offset?;
        let at = RecordRef {
            segment: self.active_seq(),
            offset,
        };
        // The id was looked up above and nothing removes index entries in between.
        if let Some(state) = self.index.get_mut(&id) {
            state.apply(
                rec.rcpt,
                kind,
                rec.attempt,
                rec.at_ms,
                rec.next_attempt_ms,
                at,
            );
        }
        let entry = self.active_entry();
        if entry.refs.last() != Some(&id) {
            entry.refs.push(id);
        }
        Ok(self.bump_seq())
    }

    /// Sequence number of the last append (0 before the first).
    pub fn appended_seq(&self) -> u64 {
        self.appended
    }

    /// Every append with a ticket `<=` this is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    /// The file whose `fdatasync` makes the pending appends durable.
    ///
    /// Read it together with [`Shard::appended_seq`], with no append in between: every append up
    /// to that number is then in this file or already durable (a segment switch syncs the old
    /// file first). While no segment could be reserved (spool full), this is the shard directory,
    /// on which `fdatasync` is harmless and there is nothing pending.
    /// `None` on a simulated disk, which has no real file to hand out.
    pub fn active_file(&self) -> Option<&File> {
        self.active_disk_file().std_file()
    }

    /// [`Shard::active_file`] as the shard's [`Disk`] sees it (what the tests' commit loop
    /// syncs).
    pub(crate) fn active_disk_file(&self) -> &dyn DiskFile {
        match self.segments.last() {
            Some(e) if self.has_active => e.seg.file().unwrap_or(&*self.dir_file),
            _ => &*self.dir_file,
        }
    }

    /// Records that an `fdatasync` of [`Shard::active_file`], started when
    /// `appended_seq() == upto`, returned `Ok`. Never lowers `durable_seq`.
    pub fn mark_durable(&mut self, upto: u64) {
        if self.poisoned.is_none() {
            self.durable = self.durable.max(upto.min(self.appended));
        }
    }

    /// Whether an `fdatasync` failed: the shard refuses writes until a restart.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// The byte limit for new mail (`spool.max_size`; 0: none).
    pub fn max_bytes(&self) -> u64 {
        self.cfg.max_bytes
    }

    /// Records that an `fdatasync` of [`Shard::active_file`] failed: the shard is poisoned (see
    /// the module doc) and refuses further writes.
    pub fn mark_sync_failed(&mut self) {
        let path = self
            .segments
            .last()
            .map(|e| e.seg.path.clone())
            .unwrap_or_default();
        // What the operator needs to know: every record up to `durable_seq` is on disk (every
        // message acknowledged with 250 is among them); the ones after it were never
        // acknowledged (their clients got 451 and retry) and may or may not be on disk.
        tracing::error!(shard = self.cfg.shard, path = %path.display(),
            durable_seq = self.durable, appended_seq = self.appended,
            not_durable = self.appended - self.durable,
            "fdatasync failed; shard refuses further writes. Every message acknowledged before \
             is durable; the records appended since were not acknowledged (clients got 451). \
             Fix the device, restart, and run `ringmta spool check`");
        self.poisoned = Some(path);
    }

    /// Blocking `fdatasync` of the active segment, then [`Shard::mark_durable`] of everything
    /// appended. Performs the flush even with [`Durability::None`].
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.check_poisoned()?;
        let upto = self.appended;
        if self.has_active
            && let Some(e) = self.segments.last()
            && let Err(source) = e.seg.sync_data()
        {
            let path = e.seg.path.clone();
            self.mark_sync_failed();
            return Err(SpoolError::Io {
                op: "fdatasync",
                path,
                source,
            });
        }
        self.mark_durable(upto);
        Ok(())
    }

    /// A message, zero-copy from its segment: archived envelope and body.
    pub fn message(&self, id: QueueId) -> Option<MessageView<'_>> {
        let at = self.index.get(&id)?.at;
        let (meta, options, body) = self.segment(at.segment)?.message_at(at.offset)?;
        Some(MessageView {
            id,
            meta,
            options,
            body,
        })
    }

    /// Per-recipient state of a message.
    pub fn state(&self, id: QueueId) -> Option<&MessageState> {
        self.index.get(&id)
    }

    /// A status record, zero-copy (for example a recipient's [`RecipientState::last_status`]).
    pub fn status_record(&self, at: RecordRef) -> Option<&ArchivedStatusRecord> {
        self.segment(at.segment)?.status_at(at.offset)
    }

    /// Every recipient not yet final: (message, recipient index, when it is due).
    pub fn pending(&self) -> impl Iterator<Item = (QueueId, u32, u64)> + '_ {
        self.index.iter().flat_map(|(&id, st)| {
            st.recipients
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.is_final())
                .map(move |(i, r)| (id, i as u32, r.next_attempt_ms))
        })
    }

    /// Ids of every indexed message (queued or final but not purged), in no particular order.
    pub fn messages(&self) -> impl Iterator<Item = QueueId> + '_ {
        self.index.keys().copied()
    }

    /// Changes the size limit (configuration reload, or an operator making room). Takes effect at
    /// the next append.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.cfg.max_bytes = max_bytes;
    }

    /// Counters for metrics and `queue` views.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            segments: self.segments.len() as u64,
            bytes: self.bytes,
            records: self.segments.iter().map(|e| e.seg.record_count()).sum(),
            messages: self.index.len() as u64,
            pending_recipients: self.pending().count() as u64,
            appended_seq: self.appended,
            durable_seq: self.durable,
            lost_records: self.lost_records,
        }
    }

    /// Removes the ledger files past `retention_ms` (see `ledger.rs`); returns those removed.
    pub fn expire_ledger(
        &self,
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<Vec<PathBuf>, SpoolError> {
        self.ledger.expire(now_ms, retention_ms)
    }

    // ---- helpers ----

    fn check_poisoned(&self) -> Result<(), SpoolError> {
        match &self.poisoned {
            Some(path) => Err(SpoolError::Poisoned {
                shard: self.cfg.shard,
                path: path.clone(),
            }),
            None => Ok(()),
        }
    }

    fn bump_seq(&mut self) -> CommitTicket {
        self.appended += 1;
        if self.cfg.durability == Durability::None {
            self.durable = self.appended;
        }
        CommitTicket(self.appended)
    }

    fn active_seq(&self) -> u64 {
        self.segments.last().map_or(0, |e| e.seg.seq)
    }

    fn active_entry(&mut self) -> &mut SegmentEntry {
        // Called right after a successful append, which needs an active segment.
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    fn entry(&self, seq: u64) -> Option<&SegmentEntry> {
        let i = self
            .segments
            .binary_search_by_key(&seq, |e| e.seg.seq)
            .ok()?;
        Some(&self.segments[i])
    }

    fn segment(&self, seq: u64) -> Option<&Segment> {
        self.entry(seq).map(|e| &e.seg)
    }

    /// Appends one frame to the active segment, switching to a new segment when it does not fit.
    #[allow(clippy::too_many_arguments)]
    fn append_frame(
        &mut self,
        id: QueueId,
        (kind, flags): (RecordKind, u16),
        room: Room,
        meta: &[u8],
        body: &[&[u8]],
        payload_len: usize,
        now_ms: u64,
    ) -> Result<u64, SpoolError> {
        if payload_len > record::MAX_PAYLOAD_LEN {
            return Err(SpoolError::TooLarge {
                id,
                len: payload_len as u64,
                max: record::MAX_PAYLOAD_LEN as u64,
            });
        }
        let need = record::frame_len(payload_len) as u64;
        // Outcome segments may take the spool past `max_bytes`; new mail does not use their room.
        if room == Room::Intake && self.cfg.max_bytes != 0 && self.bytes > self.cfg.max_bytes {
            return Err(SpoolError::Full {
                shard: self.cfg.shard,
                needed: need,
                path: self.shard_dir.clone(),
                reason: FullReason::Limit {
                    max_bytes: self.cfg.max_bytes,
                    used: self.bytes,
                },
            });
        }
        let fits = self.has_active
            && self
                .segments
                .last()
                .is_some_and(|e| e.seg.remaining() >= need);
        if !fits {
            self.new_segment(room, need, now_ms)?;
        }
        let last = self.segments.len() - 1;
        let appended = self.segments[last].seg.append(kind, flags, meta, body);
        match appended {
            Ok(Some(offset)) => Ok(offset),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                Err(SpoolError::Full {
                    shard: self.cfg.shard,
                    needed: need,
                    path: self.segments[last].seg.path.clone(),
                    reason: FullReason::Disk,
                })
            }
            Err(source) => Err(SpoolError::Io {
                op: "write",
                path: self.segments[last].seg.path.clone(),
                source,
            }),
            Ok(None) => {
                // new_segment sized the segment for `need`; reaching here is a bug.
                debug_assert!(false, "frame of {need} bytes does not fit a fresh segment");
                Err(SpoolError::TooLarge {
                    id,
                    len: payload_len as u64,
                    max: self.segments[last].seg.remaining(),
                })
            }
        }
    }

    /// Creates a new active segment with room for a frame of `need` bytes. The old active
    /// segment is fdatasynced (and everything appended marked durable), sealed and trimmed
    /// before the switch.
    fn new_segment(&mut self, room: Room, need: u64, now_ms: u64) -> Result<(), SpoolError> {
        // The new header will hold the active segment's frame count: a later recovery that finds
        // fewer there knows its tail was lost to damage, not to a crash. So those frames must be
        // on disk before the new header is: sync the active segment first (the seal below would
        // sync it anyway, only too late for that).
        if self.has_active {
            self.sync()?;
        }
        let min_size = (FILE_HEADER_LEN as u64 + need).next_multiple_of(4096);
        let mut size = self.cfg.segment_size.max(min_size).next_multiple_of(4096);
        let seq = self.next_seq;
        let path = self.shard_dir.join(segment::segment_file_name(seq));
        let full = |reason, size| SpoolError::Full {
            shard: self.cfg.shard,
            needed: size,
            path: path.clone(),
            reason,
        };
        // Only new mail is held to `max_bytes`: a full spool must still record delivery
        // outcomes and queue DSNs, or nothing would ever become final and purgeable.
        if room == Room::Intake
            && self.cfg.max_bytes != 0
            && self.bytes.saturating_add(size) > self.cfg.max_bytes
        {
            let err = full(
                FullReason::Limit {
                    max_bytes: self.cfg.max_bytes,
                    used: self.bytes,
                },
                size,
            );
            tracing::warn!(error = %err, "spool shard full");
            return Err(err);
        }
        let key = segment::new_key();
        let new = segment::NewHeader {
            shard: self.cfg.shard,
            seq,
            created_ms: now_ms,
            key: &key,
            prev_frames: self
                .segments
                .last()
                .filter(|e| e.seg.seq + 1 == seq)
                .map(|e| e.seg.frames_written()),
        };
        let seg = loop {
            match Segment::create(&*self.disk, &self.shard_dir, new, size) {
                Ok(seg) => break seg,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                    // On a nearly full disk an outcome still gets a segment just big enough.
                    let smaller = OUTCOME_SEGMENT_SIZE.max(min_size);
                    if room == Room::Outcome && smaller < size {
                        size = smaller;
                        continue;
                    }
                    let err = full(FullReason::Disk, size);
                    tracing::warn!(error = %err, "spool shard full");
                    return Err(err);
                }
                Err(source) => {
                    return Err(SpoolError::Io {
                        op: "create",
                        path,
                        source,
                    });
                }
            }
        };
        disk::sync_dir(&*self.disk, &self.shard_dir).map_err(|source| SpoolError::Io {
            op: "fsync",
            path: self.shard_dir.clone(),
            source,
        })?;
        self.next_seq += 1;
        self.bytes += size;
        self.seal_active()?;
        self.segments.push(SegmentEntry::new(seg));
        self.has_active = true;
        Ok(())
    }

    /// Makes the active segment read-only and gives its unused reserved space back; the next
    /// append creates a new segment. Everything appended so far is fdatasynced first.
    fn seal_active(&mut self) -> Result<(), SpoolError> {
        if !self.has_active {
            return Ok(());
        }
        // Everything appended so far lives in the active segment (or is already durable).
        self.sync()?;
        self.has_active = false;
        let Some(e) = self.segments.last_mut() else {
            return Ok(());
        };
        e.seg.seal();
        match e.seg.trim(&*self.disk, false) {
            Ok(freed) => self.bytes -= freed,
            // The segment stays whole: only space is lost, never a record.
            Err(err) => tracing::warn!(path = %e.seg.path.display(), error = %err,
                "cannot give back the unused space of a sealed segment"),
        }
        Ok(())
    }

    /// Marks every non-final recipient of `id` as `Deleted` (an operator's delete: no DSN).
    /// Returns how many were marked, or `None` when the message is not in this shard. Durable
    /// after the next sync, like any status record.
    pub fn mark_deleted(&mut self, id: QueueId, now_ms: u64) -> Option<Result<u64, SpoolError>> {
        let state = self.state(id)?.clone();
        let mut n = 0;
        for (i, r) in state.recipients.iter().enumerate() {
            if r.is_final() {
                continue;
            }
            let rec = StatusRecord {
                id: id.0,
                rcpt: i as u32,
                kind: StatusKind::Deleted as u8,
                attempt: r.attempts,
                at_ms: now_ms,
                next_attempt_ms: 0,
                reply: "deleted by operator".into(),
                remote: String::new(),
                category: String::new(),
            };
            if let Err(e) = self.append_status(&rec) {
                return Some(Err(e));
            }
            n += 1;
        }
        Some(Ok(n))
    }

    /// Seals the active segment when it holds records and every message of the shard is final,
    /// so that purge can remove delivered content from an idle shard (it never removes the
    /// active segment). The sealed file is cut to what it holds and no new segment is made: the
    /// next append creates one. Returns whether it sealed.
    pub fn rotate_if_settled(&mut self) -> Result<bool, SpoolError> {
        let Some(last) = self.segments.last() else {
            return Ok(false);
        };
        if !self.has_active
            || last.seg.record_count() == 0
            || !self.index.values().all(MessageState::is_final)
        {
            return Ok(false);
        }
        self.seal_active()?;
        Ok(true)
    }
}

/// Gives back the reserved space past the last record of each recovered segment that read to
/// a clean end (the active segment of the previous run, typically mostly empty).
fn trim_recovered(disk: &dyn Disk, segments: &mut [SegmentEntry], report: &RecoveryReport) {
    for e in segments {
        let clean = report
            .segments
            .iter()
            .any(|r| r.seq == e.seg.seq && r.is_clean());
        if !clean {
            continue;
        }
        if let Err(err) = e.seg.trim(disk, true) {
            tracing::warn!(path = %e.seg.path.display(), error = %err,
                "cannot give back the unused space of a recovered segment");
        }
    }
}

#[cfg(test)]
mod power_tests;
#[cfg(test)]
mod tests;
