//! Why a spool operation failed.

use super::*;

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
