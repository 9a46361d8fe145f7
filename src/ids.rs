//! Small identifier newtypes shared by every layer.
//!
//! Ids are newtypes, never bare `u64`s, so a queue id cannot be passed where a connection id or
//! a transaction id is expected.

use std::fmt;
use std::str::FromStr;

/// The id of one accepted message, unique across the whole spool and across restarts, and
/// across the nodes of a cluster.
///
/// Layout, high bits first: a 48-bit per-shard monotonic counter seeded from the clock in
/// milliseconds, the 8-bit node number (`cluster.node_id`; 0 on a single host), the 8-bit shard
/// (core) index. Displayed as 16 lowercase hex digits. See
/// `docs/decisions/2026-12-03-node-in-queue-id.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    /// Counters at or above this no longer fit (the year 10889, at one id per millisecond).
    pub const COUNTER_LIMIT: u64 = 1 << 48;

    /// Builds an id from a node number, a shard index and that shard's counter value (below
    /// [`Self::COUNTER_LIMIT`]).
    pub fn new(node: u8, shard: u8, counter: u64) -> Self {
        QueueId((counter << 16) | (u64::from(node) << 8) | u64::from(shard))
    }

    /// The shard (core) that owns this message's records.
    pub fn shard(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// The cluster node that accepted this message (0 on a single host).
    pub fn node(self) -> u8 {
        ((self.0 >> 8) & 0xff) as u8
    }

    /// The per-shard counter part.
    pub fn counter(self) -> u64 {
        self.0 >> 16
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Error returned when a string is not a valid queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {0:?}: expected 16 hex digits")]
pub struct ParseQueueIdError(pub String);

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(ParseQueueIdError(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| ParseQueueIdError(s.to_owned()))
    }
}

/// The local part's prefix of a VERP return path: `bounces+<queue id>@<bounce domain>`
/// (`delivery.bounce_domain`; reports coming back to it are read by the feedback module).
pub const VERP_PREFIX: &str = "bounces+";

/// The return path of message `id` when bounces come back to `domain`.
pub fn verp_address(id: QueueId, domain: &str) -> String {
    format!("{VERP_PREFIX}{id}@{domain}")
}

/// The message a VERP local part names (`bounces+0001a21298f62900`, case-insensitive), if it
/// is one.
pub fn parse_verp(local: &str) -> Option<QueueId> {
    let prefix = local.get(..VERP_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(VERP_PREFIX) {
        return None;
    }
    local[VERP_PREFIX.len()..].to_ascii_lowercase().parse().ok()
}

/// One SMTP transaction inside a session; pairs an `Event::Commit` with its `handle_commit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxnId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_round_trips_through_text() {
        let id = QueueId::new(7, 3, 0x1234_5678_9abc);
        assert_eq!((id.node(), id.shard()), (7, 3));
        assert_eq!(id.counter(), 0x1234_5678_9abc);
        assert_eq!(id.to_string().parse::<QueueId>(), Ok(id));
        assert!("xyz".parse::<QueueId>().is_err());
        assert!("000000000000000g".parse::<QueueId>().is_err());
    }
}
