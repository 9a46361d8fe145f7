//! What the shard's index knows of each message and recipient, rebuilt from the records at
//! start-up and kept current by every append.

use super::*;

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
    pub(super) fn new(at: RecordRef, received_at_ms: u64, recipients: usize) -> Self {
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
    pub(super) fn apply(
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
