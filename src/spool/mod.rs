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

mod ledger;
pub mod record;
pub mod recovery;
pub mod segment;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::ids::QueueId;

pub use record::{
    ArchivedMessageMeta, ArchivedPlaceholder, ArchivedRecipientMeta, ArchivedStatusRecord,
    BODY_7BIT, BODY_8BITMIME, MessageMeta, Placeholder, PlaceholderRecipient, RecipientMeta,
    StatusKind, StatusRecord,
};
pub use recovery::{RecoveryReport, SegmentReport};
pub use segment::{HeaderError, TornTail};

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
    /// Envelope and session facts; `meta.id` is ignored and replaced by the assigned id.
    pub meta: MessageMeta,
    /// Body parts, concatenated on disk.
    pub body: &'a [&'a [u8]],
}

/// Sequence number of an append in this shard's lifetime: durable once
/// [`Shard::durable_seq`] `>=` it. Numbers start at 1 after each [`Shard::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitTicket(pub u64);

/// Why the spool has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// The filesystem refused to reserve the space (`ENOSPC` or `EDQUOT`).
    Disk,
    /// The shard's `max_bytes` would be exceeded.
    Limit {
        /// The configured limit.
        max_bytes: u64,
        /// Bytes of segment files the shard holds now.
        used: u64,
    },
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullReason::Disk => f.write_str("no space left on the filesystem"),
            FullReason::Limit { max_bytes, used } => {
                write!(f, "max_bytes {max_bytes} reached, {used} in use")
            }
        }
    }
}

/// Errors of the spool layer. Each names the id or the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`open`, `fdatasync`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the spool lock.
    #[error("spool lock {path} is held by another ringmta instance")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// No room for a new segment; the shard stays usable and the next append tries again.
    #[error("shard {shard} spool is full ({reason}): cannot reserve {needed} bytes for {path}")]
    Full {
        /// The shard.
        shard: u8,
        /// Size of the segment that could not be created.
        needed: u64,
        /// The segment file that could not be created.
        path: PathBuf,
        /// Disk or configured limit.
        reason: FullReason,
    },
    /// No message with this id in this shard.
    #[error("unknown message {id} in shard {shard}")]
    UnknownMessage {
        /// The id.
        id: QueueId,
        /// The shard asked.
        shard: u8,
    },
    /// A status record names a recipient index the message does not have.
    #[error("message {id} has no recipient {rcpt} (it has {count})")]
    NoSuchRecipient {
        /// The message.
        id: QueueId,
        /// The index given.
        rcpt: u32,
        /// How many recipients it has.
        count: usize,
    },
    /// A status record has a kind byte that is not a [`StatusKind`].
    #[error("status record for {id} has unknown kind {kind}")]
    BadStatusKind {
        /// The message.
        id: QueueId,
        /// The kind byte.
        kind: u8,
    },
    /// The record does not fit in one frame.
    #[error("record for {id} is too large: {len} bytes, at most {max}")]
    TooLarge {
        /// The message.
        id: QueueId,
        /// Payload length.
        len: u64,
        /// Largest payload a frame holds.
        max: u64,
    },
    /// rkyv could not serialise the record.
    #[error("cannot encode record for {id}")]
    Encode {
        /// The message.
        id: QueueId,
        /// rkyv's error.
        #[source]
        source: rancor::Error,
    },
    /// An earlier `fdatasync` failed; the shard takes no more writes.
    #[error("shard {shard} refuses writes after a failed fdatasync of {path}; restart to recover")]
    Poisoned {
        /// The shard.
        shard: u8,
        /// The file whose flush failed.
        path: PathBuf,
    },
    /// A file's header is not valid.
    #[error("{path} has an invalid header")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        reason: HeaderError,
    },
    /// The shard's 56-bit id counter is exhausted.
    #[error("shard {shard} has no ids left after {last}")]
    IdsExhausted {
        /// The shard.
        shard: u8,
        /// The last id assigned.
        last: QueueId,
    },
}

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
    fs::create_dir_all(dir).map_err(|source| SpoolError::Io {
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

/// Location of a record: segment sequence number and frame offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordRef {
    /// Segment sequence number.
    pub segment: u64,
    /// Offset of the frame in that segment.
    pub offset: u64,
}

/// Compact per-message state kept in memory (strings stay in the mapping).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageState {
    /// Where the message record is.
    pub at: RecordRef,
    /// When it was received, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Latest `at_ms` of a final status; meaningful once every recipient is final.
    pub final_at_ms: u64,
    /// One entry per recipient, in RCPT order.
    pub recipients: Box<[RecipientState]>,
}

/// Delivery state of one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecipientState {
    /// Latest delivery outcome: `None` (not tried yet), `Deferred`, or a final kind. A final kind
    /// never changes again.
    pub kind: Option<StatusKind>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the Unix epoch): the received time before the
    /// first attempt, the `next_attempt_ms` of the last `Deferred` after that.
    pub next_attempt_ms: u64,
    /// The last `Deferred` or final status record (its reply, remote and category); read it with
    /// [`Shard::status_record`].
    pub last_status: Option<RecordRef>,
    /// A delay DSN was sent.
    pub delay_notified: bool,
    /// The DSN for the final outcome was sent.
    pub dsn_sent: bool,
}

impl RecipientState {
    /// Whether this recipient reached a final status.
    pub fn is_final(&self) -> bool {
        self.kind.is_some_and(StatusKind::is_final)
    }

    /// Where it stands, as operators see it.
    pub fn status(&self) -> RecipientStatus {
        match self.kind {
            None => RecipientStatus::Queued,
            Some(StatusKind::Delivered) => RecipientStatus::Delivered,
            Some(StatusKind::Failed) => RecipientStatus::Bounced,
            Some(StatusKind::Deleted) => RecipientStatus::Deleted,
            Some(StatusKind::Deferred | StatusKind::DelayNotified | StatusKind::DsnSent) => {
                RecipientStatus::Deferred
            }
        }
    }
}

/// Where a recipient stands, as the queue listing, the metrics and the event log name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipientStatus {
    /// Not tried yet.
    Queued = 0,
    /// Tried, to be tried again.
    Deferred = 1,
    /// Delivered (final).
    Delivered = 2,
    /// Failed (final).
    Bounced = 3,
    /// Deleted by an operator (final).
    Deleted = 4,
}

impl RecipientStatus {
    /// Every status, in discriminant order.
    pub const ALL: [RecipientStatus; 5] = [
        RecipientStatus::Queued,
        RecipientStatus::Deferred,
        RecipientStatus::Delivered,
        RecipientStatus::Bounced,
        RecipientStatus::Deleted,
    ];

    /// The name operators see.
    pub const fn name(self) -> &'static str {
        match self {
            RecipientStatus::Queued => "queued",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Delivered => "delivered",
            RecipientStatus::Bounced => "bounced",
            RecipientStatus::Deleted => "deleted",
        }
    }
}

impl MessageState {
    fn new(at: RecordRef, received_at_ms: u64, recipients: usize) -> Self {
        let r = RecipientState {
            kind: None,
            attempts: 0,
            next_attempt_ms: received_at_ms,
            last_status: None,
            delay_notified: false,
            dsn_sent: false,
        };
        MessageState {
            at,
            received_at_ms,
            final_at_ms: 0,
            recipients: vec![r; recipients].into_boxed_slice(),
        }
    }

    /// Whether every recipient reached a final status.
    pub fn is_final(&self) -> bool {
        self.recipients.iter().all(RecipientState::is_final)
    }

    /// Applies one status record; `false` when `rcpt` is out of range.
    fn apply(
        &mut self,
        rcpt: u32,
        kind: StatusKind,
        attempt: u32,
        at_ms: u64,
        next_attempt_ms: u64,
        at: RecordRef,
    ) -> bool {
        let Some(r) = self.recipients.get_mut(rcpt as usize) else {
            return false;
        };
        match kind {
            StatusKind::DelayNotified => r.delay_notified = true,
            StatusKind::DsnSent => r.dsn_sent = true,
            // The first final status wins: a late Deferred or a second outcome changes nothing.
            _ if r.is_final() => {}
            StatusKind::Deferred => {
                r.kind = Some(kind);
                r.attempts = r.attempts.max(attempt);
                r.next_attempt_ms = next_attempt_ms;
                r.last_status = Some(at);
            }
            StatusKind::Delivered | StatusKind::Failed | StatusKind::Deleted => {
                r.kind = Some(kind);
                r.attempts = r.attempts.max(attempt);
                r.last_status = Some(at);
                self.final_at_ms = self.final_at_ms.max(at_ms);
            }
        }
        true
    }
}

/// A message read back zero-copy from its segment.
#[derive(Clone, Copy, Debug)]
pub struct MessageView<'a> {
    /// Its id.
    pub id: QueueId,
    /// The archived envelope (validated at recovery or written by this process).
    pub meta: &'a ArchivedMessageMeta,
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
}

/// One core's spool: its segments, index and append position. Not shared between threads.
pub struct Shard {
    cfg: ShardConfig,
    shard_dir: PathBuf,
    /// The shard directory, open: what `active_file` hands out while there is no active segment.
    dir_file: File,
    /// Sorted by `seg.seq`. When `has_active`, the last one is the active (writable) segment.
    segments: Vec<SegmentEntry>,
    has_active: bool,
    index: HashMap<QueueId, MessageState>,
    /// Lowest counter the next id may use; above every id recovered or assigned.
    next_counter: u64,
    next_seq: u64,
    appended: u64,
    /// Invariant: `durable <= appended`.
    durable: u64,
    /// Sum of the segment file sizes.
    bytes: u64,
    /// Set by a failed fdatasync: the file whose flush failed.
    poisoned: Option<PathBuf>,
    ledger: ledger::Ledger,
}

impl Shard {
    /// Recovers the shard's existing segments (read-only scan; torn or corrupt tails are dropped
    /// and reported), removes leftovers of interrupted segment creations, and creates a new
    /// active segment for appends. The caller should hold the [`lock`] of `cfg.dir`.
    ///
    /// When the new segment cannot be reserved (disk full, `max_bytes`) the shard still opens
    /// (so that delivery and purge can free space); the next append tries again.
    pub fn open(cfg: ShardConfig, now_ms: u64) -> Result<(Shard, RecoveryReport), SpoolError> {
        let shard_dir = recovery::shard_dir(&cfg.dir, cfg.shard);
        let io_err = |op, path: &Path, source| SpoolError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        if !shard_dir.is_dir() {
            fs::create_dir_all(&shard_dir).map_err(|e| io_err("create", &shard_dir, e))?;
            segment::sync_dir(&cfg.dir).map_err(|e| io_err("fsync", &cfg.dir, e))?;
        }
        let dir_file = File::open(&shard_dir).map_err(|e| io_err("open", &shard_dir, e))?;
        let rec = recovery::recover_shard(&cfg.dir, cfg.shard, Load::Map, false)?;
        for tmp in &rec.report.removed_tmp {
            fs::remove_file(tmp).map_err(|e| io_err("remove", tmp, e))?;
        }
        let mut segments = rec.segments;
        trim_recovered(&mut segments, &rec.report);
        let next_seq = segments.last().map_or(1, |s| s.seg.seq + 1);
        let bytes = segments.iter().map(|s| s.seg.len()).sum();
        let next_counter = rec.max_counter.map_or(0, |c| c + 1).max(now_ms);
        let mut shard = Shard {
            shard_dir,
            dir_file,
            segments,
            has_active: false,
            index: rec.index,
            next_counter,
            next_seq,
            appended: 0,
            durable: 0,
            bytes,
            poisoned: None,
            ledger: ledger::Ledger::new(&cfg.dir, cfg.shard),
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

    /// Appends a message record and assigns its id: above every id recovered or assigned before,
    /// and at least `now_ms` (so ids roughly follow time across restarts).
    ///
    /// Durable on return: nothing; see the module doc and [`CommitTicket`].
    pub fn append_message(
        &mut self,
        msg: &NewMessage<'_>,
        now_ms: u64,
    ) -> Result<(QueueId, CommitTicket), SpoolError> {
        self.check_poisoned()?;
        let counter = self.next_counter.max(now_ms);
        let id = QueueId::new(self.cfg.shard, counter);
        if counter >= 1 << 56 {
            return Err(SpoolError::IdsExhausted {
                shard: self.cfg.shard,
                last: QueueId::new(self.cfg.shard, self.next_counter.saturating_sub(1)),
            });
        }
        let mut meta = msg.meta.clone();
        meta.id = id.0;
        let archived =
            record::archive(&meta).map_err(|source| SpoolError::Encode { id, source })?;
        let body_len: usize = msg.body.iter().map(|p| p.len()).sum();
        let plen = record::payload_len(archived.len(), body_len);
        let room = if meta.is_dsn {
            Room::Outcome
        } else {
            Room::Intake
        };
        let offset = self.append_frame(
            id,
            RecordKind::Message,
            room,
            &archived,
            msg.body,
            plen,
            now_ms,
        )?;
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
        let archived = record::archive(rec).map_err(|source| SpoolError::Encode { id, source })?;
        let plen = archived.len();
        let offset = self.append_frame(
            id,
            RecordKind::Status,
            Room::Outcome,
            &archived,
            &[],
            plen,
            rec.at_ms,
        )?;
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
    pub fn active_file(&self) -> &File {
        match self.segments.last() {
            Some(e) if self.has_active => e.seg.file().unwrap_or(&self.dir_file),
            _ => &self.dir_file,
        }
    }

    /// Records that an `fdatasync` of [`Shard::active_file`], started when
    /// `appended_seq() == upto`, returned `Ok`. Never lowers `durable_seq`.
    pub fn mark_durable(&mut self, upto: u64) {
        if self.poisoned.is_none() {
            self.durable = self.durable.max(upto.min(self.appended));
        }
    }

    /// Records that an `fdatasync` of [`Shard::active_file`] failed: the shard is poisoned (see
    /// the module doc) and refuses further writes.
    pub fn mark_sync_failed(&mut self) {
        let path = self
            .segments
            .last()
            .map(|e| e.seg.path.clone())
            .unwrap_or_default();
        tracing::error!(shard = self.cfg.shard, path = %path.display(),
            "fdatasync failed; shard refuses further writes");
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
        let (meta, body) = self.segment(at.segment)?.message_at(at.offset)?;
        Some(MessageView { id, meta, body })
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

    /// Removes segments (never the active one) whose messages are all final for at least
    /// `retention_ms`, leaving a placeholder per message in the ledger.
    ///
    /// A segment qualifies when every message its records concern (its own message records and
    /// the messages its status records refer to) is final with its last final status at or
    /// before `now_ms - retention_ms`, and, for status records, the message's own segment goes
    /// too (or is gone already): otherwise the status records that make a message final could
    /// disappear while the message record stays. Order: placeholders appended to the ledger and
    /// fdatasynced, then the segments unlinked, then the directory fsynced.
    pub fn purge(&mut self, now_ms: u64, retention_ms: u64) -> Result<PurgeReport, SpoolError> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let done = |id: &QueueId| {
            self.index
                .get(id)
                .is_none_or(|s| s.is_final() && s.final_at_ms <= cutoff)
        };
        let active = self.has_active.then(|| self.active_seq());
        let mut chosen: HashSet<u64> = self
            .segments
            .iter()
            .filter(|e| Some(e.seg.seq) != active && e.seg.header_error.is_none())
            .filter(|e| e.own.iter().all(done) && e.refs.iter().all(done))
            .map(|e| e.seg.seq)
            .collect();
        // Keep a segment of status records only if the messages they finish go with it.
        loop {
            let keep: HashSet<u64> = chosen
                .iter()
                .copied()
                .filter(|&seq| {
                    self.entry(seq).is_some_and(|e| {
                        e.refs.iter().all(|id| {
                            self.index
                                .get(id)
                                .is_none_or(|s| chosen.contains(&s.at.segment))
                        })
                    })
                })
                .collect();
            if keep.len() == chosen.len() {
                break;
            }
            chosen = keep;
        }
        let mut report = PurgeReport::default();
        if chosen.is_empty() {
            return Ok(report);
        }
        let mut frames = Vec::new();
        for e in self.segments.iter().filter(|e| chosen.contains(&e.seg.seq)) {
            for id in &e.own {
                if let Some(p) = self.placeholder(*id, now_ms) {
                    let archived = record::archive(&p)
                        .map_err(|source| SpoolError::Encode { id: *id, source })?;
                    frames.extend_from_slice(&record::encode_frame(
                        RecordKind::Placeholder,
                        &archived,
                        &[],
                    ));
                    report.purged.push(*id);
                }
            }
        }
        self.ledger.append(&frames, now_ms)?;
        let mut result = Ok(());
        let mut i = 0;
        while i < self.segments.len() {
            if !chosen.contains(&self.segments[i].seg.seq) {
                i += 1;
                continue;
            }
            let path = self.segments[i].seg.path.clone();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    result = Err(SpoolError::Io {
                        op: "unlink",
                        path,
                        source,
                    });
                    break;
                }
            }
            let e = self.segments.remove(i);
            for id in &e.own {
                self.index.remove(id);
            }
            self.bytes -= e.seg.len();
            report.bytes_freed += e.seg.len();
            report.removed.push(path);
        }
        segment::sync_dir(&self.shard_dir).map_err(|source| SpoolError::Io {
            op: "fsync",
            path: self.shard_dir.clone(),
            source,
        })?;
        result?;
        tracing::info!(
            shard = self.cfg.shard,
            segments = report.removed.len(),
            messages = report.purged.len(),
            bytes = report.bytes_freed,
            "spool purge"
        );
        Ok(report)
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
        }
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
        kind: RecordKind,
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
        let appended = self.segments[last].seg.append(kind, meta, body);
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
        let seg = loop {
            match Segment::create(&self.shard_dir, self.cfg.shard, seq, size, now_ms) {
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
        segment::sync_dir(&self.shard_dir).map_err(|source| SpoolError::Io {
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
        match e.seg.trim(false) {
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

    /// The placeholder of an indexed message, built from its mapping and state.
    fn placeholder(&self, id: QueueId, now_ms: u64) -> Option<Placeholder> {
        let view = self.message(id)?;
        let state = self.state(id)?;
        let recipients = view
            .meta
            .recipients
            .iter()
            .zip(state.recipients.iter())
            .map(|(m, r)| {
                let last = r.last_status.and_then(|at| self.status_record(at));
                PlaceholderRecipient {
                    address: m.address.as_str().to_owned(),
                    kind: r.kind.map_or(StatusKind::Deleted as u8, |k| k as u8),
                    attempts: r.attempts,
                    at_ms: last.map_or(0, |s| s.at_ms.to_native()),
                    reply: last.map_or_else(String::new, |s| s.reply.as_str().to_owned()),
                }
            })
            .collect();
        Some(Placeholder {
            id: id.0,
            received_at_ms: state.received_at_ms,
            final_at_ms: state.final_at_ms,
            purged_at_ms: now_ms,
            reverse_path: view.meta.reverse_path.as_str().to_owned(),
            envid: view.meta.envid.as_ref().map(|e| e.as_str().to_owned()),
            body_len: view.body.len() as u64,
            recipients,
        })
    }
}

/// Gives back the reserved space past the last record of each recovered segment that read to
/// a clean end (the active segment of the previous run, typically mostly empty).
fn trim_recovered(segments: &mut [SegmentEntry], report: &RecoveryReport) {
    for e in segments {
        let clean = report
            .segments
            .iter()
            .any(|r| r.seq == e.seg.seq && r.torn.is_none() && r.header_error.is_none());
        if !clean {
            continue;
        }
        if let Err(err) = e.seg.trim(true) {
            tracing::warn!(path = %e.seg.path.display(), error = %err,
                "cannot give back the unused space of a recovered segment");
        }
    }
}

/// What `ringmta spool check` reports: per shard, what recovery would read and drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One report per shard directory, by shard number.
    pub shards: Vec<RecoveryReport>,
    /// The ledger scan, if there is a ledger.
    pub ledger: Option<SegmentReport>,
}

impl CheckReport {
    /// Whether every segment and the ledger read to a clean end with valid headers.
    pub fn is_clean(&self) -> bool {
        self.shards.iter().all(|s| s.damaged().next().is_none())
            && self
                .ledger
                .as_ref()
                .is_none_or(|l| l.torn.is_none() && l.header_error.is_none())
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.shards {
            write!(f, "{s}")?;
            for seg in &s.segments {
                if seg.torn.is_none() && seg.header_error.is_none() {
                    writeln!(f, "  {seg}")?;
                }
            }
        }
        match &self.ledger {
            Some(l) => writeln!(f, "ledger {l}")?,
            None => writeln!(f, "no ledger")?,
        }
        let verdict = if self.is_clean() {
            "clean: recovery would drop nothing"
        } else {
            "damaged: recovery would drop the tails listed above (never acknowledged data)"
        };
        writeln!(f, "{verdict}")
    }
}

/// Offline, read-only: scans every shard of a spool directory as recovery would, verifying every
/// record's checksum and archive. Works while a server runs: it never writes, reads copies of
/// the files, and stops each segment at its first invalid record (a record being written at that
/// moment shows up as a torn tail).
pub fn check(dir: &Path) -> Result<CheckReport, SpoolError> {
    let mut report = CheckReport::default();
    for shard in recovery::list_shards(dir)? {
        let rec = recovery::recover_shard(dir, shard, Load::Read, true)?;
        report.shards.push(rec.report);
    }
    report.ledger = ledger::read_ledger(dir, |_| {})?;
    Ok(report)
}

/// A message as `queue ls/show` sees it (owned: the files are read, not mapped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSnapshot {
    /// Its id.
    pub id: QueueId,
    /// Envelope and session facts.
    pub meta: MessageMeta,
    /// Body size in bytes.
    pub body_len: u64,
    /// Per-recipient state.
    pub state: MessageState,
    /// Per recipient, the reply of its last status record.
    pub last_replies: Vec<Option<String>>,
}

/// All messages of a spool with their state, plus the ledger's placeholders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolSnapshot {
    /// Messages still in segments, by id.
    pub messages: Vec<MessageSnapshot>,
    /// Purged messages, by id, one per id (an interrupted purge can write one twice), excluding
    /// ids still present in `messages`.
    pub placeholders: Vec<Placeholder>,
}

/// Reads every message of a spool directory with its state, and the ledger's placeholders.
/// Read-only and safe while a server runs (see [`check`]).
pub fn read_spool(dir: &Path) -> Result<SpoolSnapshot, SpoolError> {
    let mut snap = SpoolSnapshot::default();
    for shard in recovery::list_shards(dir)? {
        let rec = recovery::recover_shard(dir, shard, Load::Read, false)?;
        let seg = |seq: u64| {
            rec.segments
                .binary_search_by_key(&seq, |e| e.seg.seq)
                .ok()
                .map(|i| &rec.segments[i].seg)
        };
        for (&id, state) in &rec.index {
            let Some((meta, body)) =
                seg(state.at.segment).and_then(|s| s.message_at(state.at.offset))
            else {
                continue;
            };
            let meta: MessageMeta = rkyv::deserialize::<MessageMeta, rancor::Error>(meta)
                .map_err(|source| SpoolError::Encode { id, source })?;
            let last_replies = state
                .recipients
                .iter()
                .map(|r| {
                    let at = r.last_status?;
                    let rec = seg(at.segment)?.status_at(at.offset)?;
                    Some(rec.reply.as_str().to_owned())
                })
                .collect();
            snap.messages.push(MessageSnapshot {
                id,
                meta,
                body_len: body.len() as u64,
                state: state.clone(),
                last_replies,
            });
        }
    }
    snap.messages.sort_by_key(|m| m.id);
    let live: HashSet<u64> = snap.messages.iter().map(|m| m.id.0).collect();
    let mut seen = HashSet::new();
    let mut failed = None;
    ledger::read_ledger(dir, |p| {
        let id = p.id.to_native();
        if live.contains(&id) || !seen.insert(id) {
            return;
        }
        match rkyv::deserialize::<Placeholder, rancor::Error>(p) {
            Ok(p) => snap.placeholders.push(p),
            Err(source) => {
                failed = Some(SpoolError::Encode {
                    id: QueueId(id),
                    source,
                })
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    snap.placeholders.sort_by_key(|p| p.id);
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cfg(dir: &Path) -> ShardConfig {
        ShardConfig {
            segment_size: 64 << 10,
            ..ShardConfig::new(dir, 0)
        }
    }

    pub(super) fn meta(rcpts: usize) -> MessageMeta {
        MessageMeta {
            received_at_ms: 1_000,
            reverse_path: "sender@example.com".into(),
            recipients: (0..rcpts)
                .map(|i| RecipientMeta {
                    address: format!("rcpt{i}@example.net"),
                    notify: 4,
                    orcpt: None,
                })
                .collect(),
            client_addr: "127.0.0.1:4000".into(),
            helo: "client.example".into(),
            ..MessageMeta::default()
        }
    }

    pub(super) fn status(id: QueueId, rcpt: u32, kind: StatusKind, at_ms: u64) -> StatusRecord {
        StatusRecord {
            id: id.0,
            rcpt,
            kind: kind as u8,
            attempt: 1,
            at_ms,
            next_attempt_ms: at_ms + 300_000,
            reply: format!("{kind:?} reply for {rcpt}"),
            remote: "mx.example.net".into(),
            category: String::new(),
        }
    }

    fn append(shard: &mut Shard, rcpts: usize, body: &[u8]) -> QueueId {
        let msg = NewMessage {
            meta: meta(rcpts),
            body: &[b"Received: x\r\n", body],
        };
        shard.append_message(&msg, 1_000).unwrap().0
    }

    /// Decodes the frames of a segment file as stored on disk.
    fn frames_on_disk(path: &Path) -> Vec<(RecordKind, Vec<u8>, Vec<u8>)> {
        let bytes = segment::read_aligned(path).unwrap();
        let mut pos = FILE_HEADER_LEN;
        let mut out = Vec::new();
        while let Some(f) = record::decode_frame(&bytes[pos..]).unwrap() {
            out.push((f.kind, f.meta.to_vec(), f.body.to_vec()));
            pos += f.len;
        }
        out
    }

    fn segment_paths(dir: &Path) -> Vec<PathBuf> {
        let (segs, _) = recovery::list_segments(&recovery::shard_dir(dir, 0)).unwrap();
        segs.into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn appended_records_are_on_disk_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, report) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        assert_eq!(report.messages, 0);
        let id = append(&mut shard, 2, b"hello\r\n");
        let t = shard
            .append_status(&status(id, 0, StatusKind::Deferred, 2_000))
            .unwrap();
        assert_eq!(
            (shard.appended_seq(), shard.durable_seq(), t),
            (2, 0, CommitTicket(2))
        );
        shard.sync().unwrap();
        assert_eq!(shard.durable_seq(), 2);

        let on_disk = frames_on_disk(&segment_paths(dir.path())[0]);
        assert_eq!(on_disk.len(), 2);
        assert_eq!(on_disk[0].0, RecordKind::Message);
        assert_eq!(on_disk[0].2, b"Received: x\r\nhello\r\n");
        let mut m = rkyv::util::AlignedVec::<16>::new();
        m.extend_from_slice(&on_disk[0].1);
        assert_eq!(record::check_message(&m).unwrap().id, id.0);
        assert_eq!(on_disk[1].0, RecordKind::Status);

        let view = shard.message(id).unwrap();
        assert_eq!(view.body, b"Received: x\r\nhello\r\n");
        assert_eq!(view.meta.recipients.len(), 2);
        assert_eq!(view.meta.reverse_path, "sender@example.com");
    }

    #[test]
    fn mark_durable_never_goes_back_or_past_appended() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        append(&mut shard, 1, b"a");
        append(&mut shard, 1, b"b");
        shard.mark_durable(1);
        assert_eq!(shard.durable_seq(), 1);
        shard.mark_durable(0);
        assert_eq!(shard.durable_seq(), 1);
        shard.mark_durable(99);
        assert_eq!(shard.durable_seq(), 2);
    }

    #[test]
    fn durability_none_counts_appends_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            durability: Durability::None,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c, 1_000).unwrap();
        append(&mut shard, 1, b"a");
        assert_eq!(shard.durable_seq(), 1);
    }

    #[test]
    fn ids_are_monotonic_across_reopen_even_if_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 50_000).unwrap();
        let a = append(&mut shard, 1, b"a");
        let b = append(&mut shard, 1, b"b");
        assert!(b > a && a.counter() >= 50_000 && a.shard() == 0);
        shard.sync().unwrap();
        drop(shard);
        let (mut shard, report) = Shard::open(cfg(dir.path()), 10).unwrap();
        assert_eq!(report.messages, 2);
        let c = append(&mut shard, 1, b"c");
        assert!(c > b, "{c} after {b}");
        drop(shard);
        let (mut shard, _) = Shard::open(cfg(dir.path()), 90_000).unwrap();
        let d = append(&mut shard, 1, b"d");
        assert!(d > c && d.counter() >= 90_000);
    }

    #[test]
    fn status_records_rebuild_state_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        let id = append(&mut shard, 4, b"body");
        let fresh = append(&mut shard, 1, b"other");
        shard
            .append_status(&status(id, 0, StatusKind::Deferred, 2_000))
            .unwrap();
        shard
            .append_status(&status(id, 1, StatusKind::Delivered, 3_000))
            .unwrap();
        shard
            .append_status(&status(id, 2, StatusKind::Failed, 4_000))
            .unwrap();
        shard
            .append_status(&status(id, 2, StatusKind::DsnSent, 4_100))
            .unwrap();
        // A late Deferred after a final outcome changes nothing.
        shard
            .append_status(&status(id, 1, StatusKind::Deferred, 5_000))
            .unwrap();
        let before = shard.state(id).unwrap().clone();
        shard.sync().unwrap();
        drop(shard);

        let (shard, report) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        assert_eq!((report.messages, report.status_records), (2, 5));
        let st = shard.state(id).unwrap();
        assert_eq!(st, &before);
        let kinds: Vec<_> = st.recipients.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Some(StatusKind::Deferred),
                Some(StatusKind::Delivered),
                Some(StatusKind::Failed),
                None
            ]
        );
        assert!(st.recipients[2].dsn_sent);
        assert_eq!(st.final_at_ms, 4_000);
        let reply = shard
            .status_record(st.recipients[1].last_status.unwrap())
            .unwrap();
        assert_eq!(reply.reply, "Delivered reply for 1");
        let mut pending: Vec<_> = shard.pending().collect();
        pending.sort();
        assert_eq!(
            pending,
            [(id, 0, 302_000), (id, 3, 1_000), (fresh, 0, 1_000)]
        );
        assert_eq!(shard.stats().pending_recipients, 3);
    }

    #[test]
    fn bad_status_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        let id = append(&mut shard, 1, b"x");
        let unknown = QueueId::new(0, 1);
        let e = shard
            .append_status(&status(unknown, 0, StatusKind::Delivered, 1))
            .unwrap_err();
        assert!(e.to_string().contains(&unknown.to_string()), "{e}");
        let e = shard
            .append_status(&status(id, 1, StatusKind::Delivered, 1))
            .unwrap_err();
        assert!(
            matches!(
                e,
                SpoolError::NoSuchRecipient {
                    rcpt: 1,
                    count: 1,
                    ..
                }
            ),
            "{e}"
        );
        let mut bad = status(id, 0, StatusKind::Delivered, 1);
        bad.kind = 77;
        assert!(matches!(
            shard.append_status(&bad),
            Err(SpoolError::BadStatusKind { .. })
        ));
        assert_eq!(shard.appended_seq(), 1);
    }

    #[test]
    fn segments_switch_when_full_and_big_messages_get_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size: 8 << 10,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c.clone(), 1_000).unwrap();
        let body = vec![b'x'; 3000];
        let ids: Vec<_> = (0..5).map(|_| append(&mut shard, 1, &body)).collect();
        // Three segments: 2 messages each fit in 8 KiB. Switching synced the earlier ones.
        assert_eq!(shard.stats().segments, 3);
        assert_eq!(shard.durable_seq(), 4);
        let big = vec![b'y'; 100_000];
        let big_id = append(&mut shard, 1, &big);
        assert_eq!(shard.message(big_id).unwrap().body.len(), 100_000 + 13);
        shard.sync().unwrap();
        let sizes: Vec<u64> = segment_paths(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .collect();
        assert_eq!(sizes.len(), 4);
        // Sealed segments keep what they hold: two messages fill 8 KiB, one needs 4 KiB.
        assert_eq!(sizes[..3], [8 << 10, 8 << 10, 4 << 10]);
        assert!(sizes[3] > 100_000);
        drop(shard);
        let (shard, report) = Shard::open(c, 1_000).unwrap();
        assert_eq!(report.messages, 6);
        for id in ids {
            assert_eq!(shard.message(id).unwrap().body.len(), 3013);
        }
    }

    #[test]
    fn max_bytes_gives_full_and_the_shard_recovers_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size: 8 << 10,
            max_bytes: 16 << 10,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c, 1_000).unwrap();
        let body = vec![b'x'; 3000];
        let msg = NewMessage {
            meta: meta(1),
            body: &[&body],
        };
        let mut ids = Vec::new();
        let err = loop {
            match shard.append_message(&msg, 1_000) {
                Ok((id, _)) => ids.push(id),
                Err(e) => break e,
            }
        };
        assert_eq!(ids.len(), 4);
        assert!(matches!(
            err,
            SpoolError::Full {
                shard: 0,
                reason: FullReason::Limit { .. },
                ..
            }
        ));
        assert!(err.to_string().contains("seg-"), "{err}");
        // Still full on retry, and still readable.
        assert!(matches!(
            shard.append_message(&msg, 1_000),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(shard.message(ids[0]).unwrap().body.len(), 3000);
        // Outcomes can still be recorded (status records get one segment of headroom).
        for &id in &ids {
            shard
                .append_status(&status(id, 0, StatusKind::Delivered, 2_000))
                .unwrap();
        }
        shard.sync().unwrap();
        // Space returns: purge removes the finished segments, appends work again.
        // The first segment goes; the second is active and stays.
        let purged = shard.purge(10_000, 1_000).unwrap();
        assert_eq!(purged.removed.len(), 1);
        assert_eq!(purged.purged, ids[..2]);
        let (id, t) = shard.append_message(&msg, 1_000).unwrap();
        assert!(id > ids[3]);
        shard.sync().unwrap();
        assert!(shard.durable_seq() >= t.0);
        // Raising the limit also makes room.
        shard.set_max_bytes(0);
        for _ in 0..10 {
            shard.append_message(&msg, 1_000).unwrap();
        }
    }

    /// Sum of the sizes of the shard's segment files, read from the directory.
    fn bytes_on_disk(dir: &Path) -> u64 {
        segment_paths(dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    /// Regression (issue 23, bug 1): every settled minute the shard sealed its active segment
    /// and reserved a fresh full-size one, so a trickle of mail pinned a whole segment per
    /// message until retention, and with `max_bytes` new mail soon got "full" (and the
    /// rotation ate the room meant for status records).
    #[test]
    fn a_trickle_of_mail_with_idle_rotations_keeps_the_spool_small() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size: 64 << 10,
            max_bytes: 256 << 10,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c, 1_000).unwrap();
        let body = vec![b'x'; 500];
        for i in 0..30u64 {
            let msg = NewMessage {
                meta: meta(1),
                body: &[&body],
            };
            let (id, _) = shard
                .append_message(&msg, 1_000 + i)
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            shard
                .append_status(&status(id, 0, StatusKind::Delivered, 2_000 + i))
                .unwrap_or_else(|e| panic!("status {i}: {e}"));
            shard.sync().unwrap();
            assert!(shard.rotate_if_settled().unwrap(), "round {i}");
            // Idle minutes after that rotate nothing and allocate nothing.
            let before = bytes_on_disk(dir.path());
            assert!(!shard.rotate_if_settled().unwrap());
            assert_eq!(bytes_on_disk(dir.path()), before);
        }
        // Each sealed segment keeps one message and its status record in 4 KiB.
        let on_disk = bytes_on_disk(dir.path());
        assert_eq!(shard.stats().bytes, on_disk);
        assert!(
            on_disk <= 30 * 4096,
            "{on_disk} bytes for 30 small messages"
        );
        // And the messages are all still readable.
        assert_eq!(shard.messages().count(), 30);
        for id in shard.messages().collect::<Vec<_>>() {
            assert_eq!(shard.message(id).unwrap().body.len(), 500);
        }
        drop(shard);
        let (shard, report) = Shard::open(cfg(dir.path()), 3_000).unwrap();
        assert!(report.damaged().next().is_none());
        assert_eq!(shard.messages().count(), 30);
    }

    /// Regression (issue 23, bug 1): outcomes of accepted mail must always find room, or a
    /// delivered result lives only in memory (and is delivered again after a restart) and DSNs
    /// cannot be queued.
    #[test]
    fn a_full_spool_still_records_every_outcome_and_queues_dsns() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size: 8 << 10,
            max_bytes: 16 << 10,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c, 1_000).unwrap();
        let body = vec![b'x'; 3000];
        let msg = NewMessage {
            meta: meta(1),
            body: &[&body],
        };
        let mut ids = Vec::new();
        while let Ok((id, _)) = shard.append_message(&msg, 1_000) {
            ids.push(id);
        }
        assert!(!ids.is_empty());
        // Far more status records than one segment of headroom holds.
        for round in 0..100u64 {
            for &id in &ids {
                let mut rec = status(id, 0, StatusKind::Deferred, 2_000 + round);
                rec.reply = "451 4.2.0 mailbox busy, try again later".into();
                shard
                    .append_status(&rec)
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        assert!(shard.stats().bytes > (16 << 10) + (8 << 10));
        // A DSN goes in although new mail does not.
        let mut dsn = meta(1);
        dsn.is_dsn = true;
        dsn.reverse_path = String::new();
        shard
            .append_message(
                &NewMessage {
                    meta: dsn,
                    body: &[&body],
                },
                3_000,
            )
            .unwrap();
        assert!(matches!(
            shard.append_message(&msg, 3_000),
            Err(SpoolError::Full { .. })
        ));
        shard.sync().unwrap();
        drop(shard);
        let (shard, _) = Shard::open(cfg(dir.path()), 4_000).unwrap();
        for &id in &ids {
            assert_eq!(shard.state(id).unwrap().recipients[0].attempts, 1);
            assert_eq!(
                shard.state(id).unwrap().recipients[0].next_attempt_ms,
                2_099 + 300_000,
                "the last of 100 status records was read back"
            );
        }
    }

    #[test]
    fn reopening_gives_back_the_unused_space_of_the_last_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        let id = append(&mut shard, 1, b"hello\r\n");
        shard.sync().unwrap();
        drop(shard);
        assert_eq!(bytes_on_disk(dir.path()), 64 << 10);
        let (shard, _) = Shard::open(cfg(dir.path()), 2_000).unwrap();
        // The old segment is cut to 4 KiB; the new active one is whole.
        assert_eq!(bytes_on_disk(dir.path()), (64 << 10) + 4096);
        assert_eq!(shard.stats().bytes, (64 << 10) + 4096);
        assert!(shard.message(id).unwrap().body.ends_with(b"hello\r\n"));
    }

    #[test]
    fn reopening_keeps_a_segment_with_bytes_after_its_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        append(&mut shard, 1, b"hello\r\n");
        shard.sync().unwrap();
        drop(shard);
        // A frame whose header page never reached the disk: zeros, then data further on.
        let path = &segment_paths(dir.path())[0];
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"later data", 16 << 10).unwrap();
        drop(f);
        let (_shard, _) = Shard::open(cfg(dir.path()), 2_000).unwrap();
        assert_eq!(
            fs::metadata(path).unwrap().len(),
            64 << 10,
            "kept for spool check"
        );
        let report = check(dir.path()).unwrap();
        assert!(!report.is_clean(), "{report}");
    }

    #[test]
    fn purge_moves_finished_messages_to_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size: 8 << 10,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c.clone(), 1_000).unwrap();
        let body = vec![b'x'; 3000];
        let a = append(&mut shard, 2, &body);
        let b = append(&mut shard, 1, &body); // segment 1 holds a, b
        let keep = append(&mut shard, 1, &body); // segment 2, stays pending
        shard
            .append_status(&status(a, 0, StatusKind::Delivered, 5_000))
            .unwrap();
        shard
            .append_status(&status(a, 1, StatusKind::Failed, 6_000))
            .unwrap();
        shard
            .append_status(&status(b, 0, StatusKind::Deleted, 5_500))
            .unwrap();
        shard.sync().unwrap();
        let first = segment_paths(dir.path())[0].clone();

        // Not old enough yet.
        assert_eq!(shard.purge(6_500, 1_000).unwrap(), PurgeReport::default());
        let report = shard.purge(7_000, 1_000).unwrap();
        assert_eq!(report.removed, std::slice::from_ref(&first));
        assert_eq!(report.purged, [a, b]);
        assert!(!first.exists());
        assert!(shard.state(a).is_none() && shard.message(b).is_none());
        assert!(shard.message(keep).is_some());

        let snap = read_spool(dir.path()).unwrap();
        assert_eq!(
            snap.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [keep]
        );
        assert_eq!(snap.placeholders.len(), 2);
        let pa = &snap.placeholders[0];
        assert_eq!((pa.id, pa.final_at_ms, pa.body_len), (a.0, 6_000, 3013));
        assert_eq!(pa.reverse_path, "sender@example.com");
        assert_eq!(pa.recipients[1].kind, StatusKind::Failed as u8);
        assert_eq!(pa.recipients[1].reply, "Failed reply for 1");
        drop(shard);

        // The status records of a and b stay in segment 2; after a restart they are known to
        // belong to purged messages, and ids keep growing.
        let (mut shard, report) = Shard::open(c, 1).unwrap();
        assert_eq!(
            (
                report.messages,
                report.already_purged,
                report.unknown_status
            ),
            (1, 3, 0)
        );
        assert!(append(&mut shard, 1, b"z") > keep);
        let check = check(dir.path()).unwrap();
        assert!(check.is_clean(), "{check}");
        assert_eq!(check.ledger.unwrap().records, 2);
    }

    #[test]
    fn purge_keeps_status_segments_whose_messages_stay() {
        let dir = tempfile::tempdir().unwrap();
        let c = ShardConfig {
            segment_size: 8 << 10,
            ..cfg(dir.path())
        };
        let (mut shard, _) = Shard::open(c, 1_000).unwrap();
        let body = vec![b'x'; 3000];
        let a = append(&mut shard, 1, &body);
        let pending = append(&mut shard, 1, &body); // segment 1: a, pending
        let b = append(&mut shard, 1, &body); // segment 2: b, then a's and b's outcomes
        shard
            .append_status(&status(a, 0, StatusKind::Delivered, 1_000))
            .unwrap();
        shard
            .append_status(&status(b, 0, StatusKind::Delivered, 1_000))
            .unwrap();
        append(&mut shard, 1, &vec![b'y'; 5000]); // does not fit: segment 3 becomes active
        shard.sync().unwrap();
        // Segment 2 is finished, but it holds a's outcome while a's record stays in segment 1.
        let report = shard.purge(10_000, 0).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        assert!(shard.state(a).unwrap().is_final());
        shard
            .append_status(&status(pending, 0, StatusKind::Delivered, 2_000))
            .unwrap();
        let report = shard.purge(10_000, 0).unwrap();
        assert_eq!(report.removed.len(), 2);
        assert_eq!(report.purged, [a, pending, b]);
    }

    #[test]
    fn a_second_lock_fails_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let held = lock(&spool).unwrap();
        let err = lock(&spool).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }));
        let text = err.to_string();
        assert!(
            text.contains(&spool.join("lock").display().to_string()),
            "{text}"
        );
        assert!(text.contains("another ringmta instance"), "{text}");
        drop(held);
        lock(&spool).unwrap();
    }

    #[test]
    fn a_failed_sync_poisons_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        append(&mut shard, 1, b"a");
        shard.mark_sync_failed();
        shard.mark_durable(1);
        assert_eq!(shard.durable_seq(), 0);
        let msg = NewMessage {
            meta: meta(1),
            body: &[b"x"],
        };
        assert!(matches!(
            shard.append_message(&msg, 1),
            Err(SpoolError::Poisoned { .. })
        ));
        assert!(matches!(shard.sync(), Err(SpoolError::Poisoned { .. })));
    }

    #[test]
    fn check_reports_a_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        append(&mut shard, 1, b"first");
        append(&mut shard, 1, b"second");
        shard.sync().unwrap();
        let path = segment_paths(dir.path())[0].clone();
        drop(shard);
        assert!(check(dir.path()).unwrap().is_clean());
        let mut bytes = fs::read(&path).unwrap();
        let second = bytes.windows(6).position(|w| w == b"second").unwrap();
        bytes[second] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let report = check(dir.path()).unwrap();
        assert!(!report.is_clean());
        let seg = &report.shards[0].segments[0];
        assert_eq!(seg.records, 1);
        let torn = seg.torn.as_ref().unwrap();
        assert!(matches!(torn.reason, record::FrameError::Crc { .. }));
        assert_eq!(torn.offset, seg.end);
        assert!(report.to_string().contains("torn/corrupt tail"), "{report}");
    }
}
