//! Pure record encoding: frame layout, checksums, and the archived record types.
//!
//! This module does no I/O and holds no state. It turns records into frame bytes and checks frame
//! bytes on the way back; `segment.rs` decides where those bytes live and when they become durable.
//!
//! A frame (format 2) is a 32-byte header followed by the payload, padded with zeros to 16 bytes:
//!
//! ```text
//! offset 0  payload_len u32 LE   0 means "end of written data" (preallocated space reads as zeros)
//! offset 4  format_version u8    FORMAT_VERSION (2)
//! offset 5  kind u8              RecordKind
//! offset 6  flags u16 LE         0, or FLAG_OPTIONS on a message frame; other bits are rejected
//! offset 8  payload_crc u32 LE   CRC32C of the file's key, then the payload
//! offset 12 meta_len u32 LE      length of the rkyv archive at the start of the payload
//! offset 16 number u64 LE        the frame's ordinal in its file, from 0
//! offset 24 reserved u32         zero
//! offset 28 header_tag u32 LE    SipHash-2-4 (file key) of the offset (u64 LE), bytes 0..28
//! offset 32 payload              rkyv archive [+ zero padding to 16 + raw body for messages]
//! ```
//!
//! The key is 16 random bytes in the file header ([`FrameFormat::V2`] holds it). A frame
//! header is therefore valid only in its own file and at its own offset: a message body cannot
//! carry one (its writer does not know the key), and a copy of a real frame read at another
//! offset fails. That is what lets a reader step over a damaged frame and find the next one.
//!
//! Format 1 (files written before format 2, still read): a 16-byte header, the same fields at
//! offsets 0..16 with one unkeyed CRC at offset 8 over header bytes 0..8 and 12..16 and the
//! payload; no number, no header tag.
//!
//! A message frame with `FLAG_OPTIONS` holds its [`MessageOptions`] (16 bytes) between the padded
//! archive and the body. Messages without options (most of them) are written without the block.
//!
//! Invariants: every frame starts at a 16-byte aligned offset and its length is a multiple of 16,
//! so each payload (and each rkyv root) sits on a 16-byte boundary; the padding after the payload
//! is zero, and [`decode_frame`] rejects a frame whose padding is not, so that any single flipped
//! byte anywhere in a frame is detected.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::smtp::{Notify, Ret};

/// Length of a frame header in bytes (format 2).
pub const FRAME_HEADER_LEN: usize = 32;
/// Length of a format 1 frame header.
pub const V1_HEADER_LEN: usize = 16;
/// Alignment of frames and payloads.
pub const FRAME_ALIGN: usize = 16;
/// The frame format version this code writes (it also reads version 1 in version 1 files).
pub const FORMAT_VERSION: u8 = 2;
/// Length of a file's frame key.
pub const KEY_LEN: usize = 16;
/// Header flag of a message frame that carries a [`MessageOptions`] block.
pub const FLAG_OPTIONS: u16 = 1;
/// Length of the [`MessageOptions`] block.
pub const OPTIONS_LEN: usize = 16;
/// Largest payload a frame can describe (`payload_len` is a `u32`, kept aligned).
pub const MAX_PAYLOAD_LEN: usize = (u32::MAX as usize) & !(FRAME_ALIGN - 1);

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A [`MessageMeta`] archive followed by the raw body.
    Message = 1,
    /// A [`StatusRecord`] archive.
    Status = 2,
    /// A [`Placeholder`] archive (ledger only).
    Placeholder = 3,
}

impl RecordKind {
    /// Parses the on-disk kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Message),
            2 => Some(Self::Status),
            3 => Some(Self::Placeholder),
            _ => None,
        }
    }
}

/// Envelope and session facts of an accepted message; the body follows it in the payload.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MessageMeta {
    /// The [`crate::ids::QueueId`] value; assigned by the shard on append.
    pub id: u64,
    /// When the final dot (or last BDAT chunk) arrived, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// MAIL FROM address, empty for the null reverse path.
    pub reverse_path: String,
    /// RFC 3461 RET as [`Ret::to_byte`]; read it with [`ArchivedMessageMeta::ret`].
    pub ret: u8,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// BODY= parameter: [`BODY_7BIT`] or [`BODY_8BITMIME`].
    pub body_type: u8,
    /// Whether the SMTPUTF8 parameter was given.
    pub smtputf8: bool,
    /// Recipients in RCPT order; a status record's `rcpt` indexes this list.
    pub recipients: Vec<RecipientMeta>,
    /// Authenticated user, if any.
    pub auth_user: Option<String>,
    /// Client socket address as text.
    pub client_addr: String,
    /// EHLO/HELO argument.
    pub helo: String,
    /// TLS protocol and cipher as text, if TLS was used.
    pub tls: Option<String>,
    /// A DSN we generated: never a DSN about it.
    pub is_dsn: bool,
}

/// Per-message delivery options that the sender asked for (DELIVERBY, MT-PRIORITY, the
/// `X-Ringmta-*` control headers) or that its user's settings give. Stored in a fixed 16-byte
/// block, not in the archive, so that adding them changed no archived layout:
///
/// ```text
/// offset 0  expires_at_ms u64 LE   0: no deadline of its own (the retry policy's lifetime holds)
/// offset 8  priority i8            -9..=9 (RFC 6710); 0 is normal
/// offset 9  7 reserved bytes       zero
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageOptions {
    /// When its recipients that are not delivered yet fail as expired, ms since the Unix epoch;
    /// 0 for none.
    pub expires_at_ms: u64,
    /// Priority, -9 (lowest) to 9 (highest), 0 normal: higher leaves the ready queue first.
    pub priority: i8,
}

impl MessageOptions {
    /// Whether nothing is set (such a message is stored without the block).
    pub fn is_default(&self) -> bool {
        *self == MessageOptions::default()
    }

    /// The on-disk block.
    pub fn encode(&self) -> [u8; OPTIONS_LEN] {
        let mut b = [0u8; OPTIONS_LEN];
        b[0..8].copy_from_slice(&self.expires_at_ms.to_le_bytes());
        b[8] = self.priority as u8;
        b
    }

    /// Reads a block written by [`MessageOptions::encode`].
    pub fn decode(b: &[u8]) -> Result<MessageOptions, FrameError> {
        let bad = || FrameError::Options;
        let b: &[u8; OPTIONS_LEN] = b.try_into().map_err(|_| bad())?;
        let priority = b[8] as i8;
        if !(-9..=9).contains(&priority) || b[9..].iter().any(|&x| x != 0) {
            return Err(bad());
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&b[0..8]);
        Ok(MessageOptions {
            expires_at_ms: u64::from_le_bytes(ms),
            priority,
        })
    }
}

/// One RCPT TO of a message.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct RecipientMeta {
    /// The forward path.
    pub address: String,
    /// RFC 3461 NOTIFY as [`Notify::bits`]; read it with [`RecipientMeta::notify`].
    pub notify: u8,
    /// RFC 3461 ORCPT, as given.
    pub orcpt: Option<String>,
}

impl RecipientMeta {
    /// The NOTIFY parameter.
    pub fn notify(&self) -> Notify {
        Notify::from_bits(self.notify)
    }
}

impl ArchivedRecipientMeta {
    /// The NOTIFY parameter.
    pub fn notify(&self) -> Notify {
        Notify::from_bits(self.notify)
    }
}

impl ArchivedMessageMeta {
    /// The RET parameter.
    pub fn ret(&self) -> Option<Ret> {
        Ret::from_byte(self.ret)
    }

    /// Whether the body was declared 8BITMIME.
    pub fn eight_bit(&self) -> bool {
        self.body_type == BODY_8BITMIME
    }
}

/// `MessageMeta::body_type` for 7BIT or no BODY parameter.
pub const BODY_7BIT: u8 = 0;
/// `MessageMeta::body_type` for BODY=8BITMIME.
pub const BODY_8BITMIME: u8 = 1;

/// The outcome of one step for one recipient of a message.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct StatusRecord {
    /// The [`crate::ids::QueueId`] value of the message.
    pub id: u64,
    /// Index into the message's recipients.
    pub rcpt: u32,
    /// A [`StatusKind`] as `u8`.
    pub kind: u8,
    /// Delivery attempt number this status ends (1 for the first attempt).
    pub attempt: u32,
    /// When this happened, ms since the Unix epoch.
    pub at_ms: u64,
    /// When to try again (meaningful for `Deferred`), ms since the Unix epoch.
    pub next_attempt_ms: u64,
    /// The remote reply or local error text.
    pub reply: String,
    /// The remote host that answered, if any.
    pub remote: String,
    /// Bounce classifier category.
    pub category: String,
}

/// What a status record says. `Delivered`, `Failed` and `Deleted` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StatusKind {
    /// A transient failure; retry at `next_attempt_ms`.
    Deferred = 0,
    /// Accepted by the next hop (final).
    Delivered = 1,
    /// Permanently failed (final).
    Failed = 2,
    /// Removed by an operator (final).
    Deleted = 3,
    /// A delay DSN was sent for this recipient.
    DelayNotified = 4,
    /// The DSN for the final outcome was sent.
    DsnSent = 5,
}

impl StatusKind {
    /// Parses the stored kind byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Deferred,
            1 => Self::Delivered,
            2 => Self::Failed,
            3 => Self::Deleted,
            4 => Self::DelayNotified,
            5 => Self::DsnSent,
            _ => return None,
        })
    }

    /// Whether no further delivery attempt follows this status.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Deleted)
    }
}

/// What stays of a purged message in the ledger: envelope and outcome, no body.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Placeholder {
    /// The [`crate::ids::QueueId`] value.
    pub id: u64,
    /// When the message was received, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// When its last recipient reached a final status, ms since the Unix epoch.
    pub final_at_ms: u64,
    /// When the body was purged, ms since the Unix epoch.
    pub purged_at_ms: u64,
    /// MAIL FROM address, empty for the null reverse path.
    pub reverse_path: String,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// Body size in bytes before the purge.
    pub body_len: u64,
    /// Outcome per recipient, in RCPT order.
    pub recipients: Vec<PlaceholderRecipient>,
}

/// The final outcome of one recipient of a purged message.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PlaceholderRecipient {
    /// The forward path.
    pub address: String,
    /// The final [`StatusKind`] as `u8`.
    pub kind: u8,
    /// Number of delivery attempts.
    pub attempts: u32,
    /// When the final status was recorded.
    pub at_ms: u64,
    /// The last reply text.
    pub reply: String,
}

/// Why a frame was rejected. Recovery treats every one of these as "never written".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes remain than the frame needs.
    #[error("frame needs {need} bytes but only {have} remain")]
    Truncated {
        /// Bytes the header claims (header + padded payload).
        need: usize,
        /// Bytes available from the frame start.
        have: usize,
    },
    /// The version byte is not [`FORMAT_VERSION`].
    #[error("unknown format version {0}")]
    Version(u8),
    /// The kind byte is unknown.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// Reserved flag bits are set.
    #[error("reserved flags {0:#06x} set")]
    Flags(u16),
    /// `meta_len` does not fit the payload or the kind.
    #[error("meta length {meta_len} invalid for payload length {payload_len}")]
    MetaLen {
        /// The stored meta length.
        meta_len: u32,
        /// The stored payload length.
        payload_len: u32,
    },
    /// The header's keyed tag does not match (format 2): nothing in it can be trusted, not
    /// even the length.
    #[error("header tag mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderTag {
        /// Tag stored in the header.
        stored: u32,
        /// Tag computed with the file's key over the offset and the header.
        computed: u32,
    },
    /// The payload checksum does not match.
    #[error("crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// Padding after the payload is not zero.
    #[error("non-zero padding after the payload")]
    Padding,
    /// The checksum matched but the rkyv archive failed validation.
    #[error("invalid {kind:?} archive")]
    Archive {
        /// Which record kind failed.
        kind: RecordKind,
    },
    /// The segment ends before the frame count its successor's header recorded for it: its last
    /// frames were lost to damage (a crash cannot take frames that a later segment counted).
    #[error("{0} frames missing at the end (the next segment counted them)")]
    MissingTail(u64),
    /// A zero length where valid frames follow: a header zeroed by damage.
    #[error("zeroed frame header")]
    ZeroedHeader,
    /// A zero length followed by non-zero bytes: a frame whose header never reached the disk.
    #[error("zero length followed by non-zero bytes")]
    DataAfterEnd,
    /// A message's options block holds a value out of range.
    #[error("invalid message options block")]
    Options,
    /// The archive holds a value out of range (unknown status kind).
    #[error("status record with unknown kind {0}")]
    StatusKind(u8),
}

/// A frame whose header, checksum and padding are valid. The archive is not validated yet.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// What it holds.
    pub kind: RecordKind,
    /// The rkyv archive (exactly `meta_len` bytes, starts 16-byte aligned).
    pub meta: &'a [u8],
    /// Bytes after the padded archive (and the options block): the body for messages, empty
    /// otherwise.
    pub body: &'a [u8],
    /// A message's options (the default when the frame has no block).
    pub options: MessageOptions,
    /// The frame's ordinal in its file (format 2; 0 in format 1).
    pub number: u64,
    /// Bytes the frame occupies, header and padding included (a multiple of 16).
    pub len: usize,
}

/// How the frames of one file are laid out and checked; its file header says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFormat {
    /// Files written before format 2 (read only): 16-byte headers, one unkeyed CRC.
    V1,
    /// 32-byte headers with a keyed tag bound to the frame's offset, and a keyed payload CRC.
    V2 {
        /// CRC32C of the file's [`KEY_LEN`]-byte key, where payload CRCs start.
        seed: u32,
        /// The key as SipHash-2-4 keys, for header tags.
        sip: (u64, u64),
    },
}

impl FrameFormat {
    /// Format 2 with `key` (from the file header).
    pub fn v2(key: &[u8; KEY_LEN]) -> FrameFormat {
        let half = |i: usize| u64::from_le_bytes(key[i..i + 8].try_into().expect("8 bytes"));
        FrameFormat::V2 {
            seed: crc32c::crc32c(key),
            sip: (half(0), half(8)),
        }
    }

    /// Length of a frame header.
    pub fn header_len(self) -> usize {
        match self {
            FrameFormat::V1 => V1_HEADER_LEN,
            FrameFormat::V2 { .. } => FRAME_HEADER_LEN,
        }
    }

    /// Total frame length for a payload of `payload_len` bytes.
    pub fn frame_len(self, payload_len: usize) -> usize {
        self.header_len() + align16(payload_len)
    }
}

/// Where a frame sits in its file: its offset and its ordinal (format 2 binds both into the
/// header's CRC and stores the ordinal).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramePos {
    /// Byte offset of the frame's first header byte in the file.
    pub offset: u64,
    /// Ordinal of the frame in the file, from 0.
    pub number: u64,
}

/// Rounds up to the frame alignment.
pub fn align16(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Total format 2 frame length for a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + align16(payload_len)
}

/// Payload length of a record whose archive is `meta_len` bytes and body `body_len` bytes.
///
/// The body, when present, starts at `align16(meta_len)` so that the archive's root stays at the
/// end of its own `meta_len` bytes (where rkyv looks for it).
pub fn payload_len(meta_len: usize, body_len: usize) -> usize {
    if body_len == 0 {
        meta_len
    } else {
        align16(meta_len) + body_len
    }
}

/// The fixed fields of a frame header.
#[derive(Clone, Copy, Debug)]
pub struct HeaderFields {
    /// What the frame holds.
    pub kind: RecordKind,
    /// Header flags.
    pub flags: u16,
    /// Payload length (archive, padding, options block, body).
    pub payload_len: u32,
    /// Archive length.
    pub meta_len: u32,
}

/// Builds a frame header (`fmt.header_len()` bytes of the result are used) with its checksums
/// over `payload_parts` (which must add up to `payload_len`, zero padding between archive and
/// body included).
pub fn frame_header(
    fmt: FrameFormat,
    at: FramePos,
    fields: HeaderFields,
    payload_parts: &[&[u8]],
) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&fields.payload_len.to_le_bytes());
    h[5] = fields.kind as u8;
    h[6..8].copy_from_slice(&fields.flags.to_le_bytes());
    h[12..16].copy_from_slice(&fields.meta_len.to_le_bytes());
    match fmt {
        FrameFormat::V1 => {
            h[4] = 1;
            let crc = v1_crc(&h, payload_parts);
            h[8..12].copy_from_slice(&crc.to_le_bytes());
        }
        FrameFormat::V2 { seed, sip } => {
            h[4] = FORMAT_VERSION;
            let crc = payload_parts
                .iter()
                .fold(seed, |c, p| crc32c::crc32c_append(c, p));
            h[8..12].copy_from_slice(&crc.to_le_bytes());
            h[16..24].copy_from_slice(&at.number.to_le_bytes());
            let tag = header_tag(sip, at.offset, &h);
            h[28..32].copy_from_slice(&tag.to_le_bytes());
        }
    }
    h
}

/// Encodes a whole frame into a new buffer (ledger appends and tests; segments write in place).
pub fn encode_frame(
    fmt: FrameFormat,
    at: FramePos,
    kind: RecordKind,
    meta: &[u8],
    body: &[u8],
) -> Vec<u8> {
    encode(fmt, at, kind, 0, meta, &[body])
}

/// Encodes a message frame with its options (the block only when one is set), as
/// [`crate::spool::Shard::append_message`] lays it out.
pub fn encode_message(
    fmt: FrameFormat,
    at: FramePos,
    meta: &[u8],
    options: MessageOptions,
    body: &[u8],
) -> Vec<u8> {
    if options.is_default() {
        return encode(fmt, at, RecordKind::Message, 0, meta, &[body]);
    }
    encode(
        fmt,
        at,
        RecordKind::Message,
        FLAG_OPTIONS,
        meta,
        &[&options.encode(), body],
    )
}

fn encode(
    fmt: FrameFormat,
    at: FramePos,
    kind: RecordKind,
    flags: u16,
    meta: &[u8],
    body: &[&[u8]],
) -> Vec<u8> {
    let body_len: usize = body.iter().map(|b| b.len()).sum();
    let plen = payload_len(meta.len(), body_len);
    let pad = [0u8; FRAME_ALIGN];
    let gap = &pad[..plen - meta.len() - body_len];
    let mut parts = vec![meta, gap];
    parts.extend_from_slice(body);
    let flen = fmt.frame_len(plen);
    let mut out = Vec::with_capacity(flen);
    // Lengths come from in-memory archives far below 4 GiB; callers check MAX_PAYLOAD_LEN.
    let fields = HeaderFields {
        kind,
        flags,
        payload_len: plen as u32,
        meta_len: meta.len() as u32,
    };
    let h = frame_header(fmt, at, fields, &parts);
    out.extend_from_slice(&h[..fmt.header_len()]);
    for part in parts {
        out.extend_from_slice(part);
    }
    out.resize(flen, 0);
    out
}

/// Whether a format 2 frame header with valid checksum starts `buf`, for a frame at `offset`
/// whose whole length fits in `buf`: its (length, number) then. This is how a reader finds the
/// next frame after damage: nothing but a header written at that offset of that file passes.
pub fn probe_header(fmt: FrameFormat, offset: u64, buf: &[u8]) -> Option<(usize, u64)> {
    let FrameFormat::V2 { sip, .. } = fmt else {
        return None;
    };
    let h = buf.get(..FRAME_HEADER_LEN)?;
    let plen = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    // Cheap filters first: the search runs over every 16-byte step of a damaged region.
    if plen == 0 || h[4] != FORMAT_VERSION || RecordKind::from_u8(h[5]).is_none() {
        return None;
    }
    let stored = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if header_tag(sip, offset, h) != stored {
        return None;
    }
    let len = fmt.frame_len(plen);
    let number = u64::from_le_bytes(h[16..24].try_into().ok()?);
    (len <= buf.len()).then_some((len, number))
}

/// Decodes the frame at the start of `buf` (which runs to the end of the written region), found
/// at `offset` of a file of format `fmt`.
///
/// Returns `Ok(None)` at a zero length (the end of written data, or a header zeroed by damage:
/// the caller tells them apart), `Ok(Some(frame))` for a frame whose header, checksums and padding
/// are valid, and an error otherwise. The caller validates the archive with [`check_message`] /
/// [`check_status`] / [`check_placeholder`].
pub fn decode_frame(
    fmt: FrameFormat,
    offset: u64,
    buf: &[u8],
) -> Result<Option<Frame<'_>>, FrameError> {
    let hlen = fmt.header_len();
    if buf.len() < hlen {
        if buf.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        return Err(FrameError::Truncated {
            need: hlen,
            have: buf.len(),
        });
    }
    let h = &buf[..hlen];
    let plen = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if plen == 0 {
        return Ok(None);
    }
    let number = match fmt {
        FrameFormat::V1 if h[4] == 1 => 0,
        FrameFormat::V2 { sip, .. } if h[4] == FORMAT_VERSION => {
            let stored = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
            let computed = header_tag(sip, offset, h);
            if stored != computed {
                return Err(FrameError::HeaderTag { stored, computed });
            }
            if h[24..28] != [0; 4] {
                return Err(FrameError::Padding);
            }
            u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]])
        }
        _ => return Err(FrameError::Version(h[4])),
    };
    let kind = RecordKind::from_u8(h[5]).ok_or(FrameError::Kind(h[5]))?;
    let flags = u16::from_le_bytes([h[6], h[7]]);
    let has_options = match (kind, flags) {
        (_, 0) => false,
        (RecordKind::Message, FLAG_OPTIONS) => true,
        _ => return Err(FrameError::Flags(flags)),
    };
    let stored = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let meta_len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let plen_us = plen as usize;
    let need = fmt.frame_len(plen_us);
    if need > buf.len() {
        return Err(FrameError::Truncated {
            need,
            have: buf.len(),
        });
    }
    let m = meta_len as usize;
    let meta_ok = match kind {
        RecordKind::Message if has_options => m > 0 && align16(m) + OPTIONS_LEN <= plen_us,
        RecordKind::Message => m > 0 && (m == plen_us || align16(m) < plen_us),
        RecordKind::Status | RecordKind::Placeholder => m == plen_us,
    };
    if !meta_ok {
        return Err(FrameError::MetaLen {
            meta_len,
            payload_len: plen,
        });
    }
    let payload = &buf[hlen..hlen + plen_us];
    let computed = match fmt {
        FrameFormat::V1 => v1_crc(h, &[payload]),
        FrameFormat::V2 { seed, .. } => crc32c::crc32c_append(seed, payload),
    };
    if computed != stored {
        return Err(FrameError::Crc { stored, computed });
    }
    // Padding is outside the checksum; require zeros so every byte of the frame is checked.
    if buf[hlen + plen_us..need].iter().any(|&b| b != 0) {
        return Err(FrameError::Padding);
    }
    let body_start = if m == plen_us { m } else { align16(m) };
    if payload[m..body_start].iter().any(|&b| b != 0) {
        return Err(FrameError::Padding);
    }
    let (options, body) = if has_options {
        let (block, body) = payload[body_start..].split_at(OPTIONS_LEN);
        (MessageOptions::decode(block)?, body)
    } else {
        (MessageOptions::default(), &payload[body_start..])
    };
    Ok(Some(Frame {
        kind,
        meta: &payload[..m],
        body,
        options,
        number,
        len: need,
    }))
}

/// What [`archive`] can serialise: any record rkyv's high-level serializer takes.
pub trait Archivable:
    for<'a> Serialize<
    rkyv::api::high::HighSerializer<
        AlignedVec,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rancor::Error,
    >,
>
{
}

impl<T> Archivable for T where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >
{
}

/// Serialises a record with rkyv into an aligned buffer.
pub fn archive<T>(value: &T) -> Result<AlignedVec, rancor::Error>
where
    T: Archivable,
{
    archive_into(value, AlignedVec::new())
}

/// [`archive`] into `buf` (cleared first), so that a caller archiving record after record
/// reuses one buffer instead of growing a new one each time.
pub fn archive_into<T>(value: &T, mut buf: AlignedVec) -> Result<AlignedVec, rancor::Error>
where
    T: Archivable,
{
    buf.clear();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, buf)
}

/// Validates a message archive (checked rkyv access). `meta` must be 16-byte aligned.
pub fn check_message(meta: &[u8]) -> Result<&ArchivedMessageMeta, FrameError> {
    rkyv::access::<ArchivedMessageMeta, rancor::Error>(meta).map_err(|_| FrameError::Archive {
        kind: RecordKind::Message,
    })
}

/// Validates a status archive, including its kind byte. `meta` must be 16-byte aligned.
pub fn check_status(meta: &[u8]) -> Result<&ArchivedStatusRecord, FrameError> {
    let rec = rkyv::access::<ArchivedStatusRecord, rancor::Error>(meta).map_err(|_| {
        FrameError::Archive {
            kind: RecordKind::Status,
        }
    })?;
    if StatusKind::from_u8(rec.kind).is_none() {
        return Err(FrameError::StatusKind(rec.kind));
    }
    Ok(rec)
}

/// Validates a placeholder archive. `meta` must be 16-byte aligned.
pub fn check_placeholder(meta: &[u8]) -> Result<&ArchivedPlaceholder, FrameError> {
    rkyv::access::<ArchivedPlaceholder, rancor::Error>(meta).map_err(|_| FrameError::Archive {
        kind: RecordKind::Placeholder,
    })
}

/// Format 1's CRC32C: header bytes 0..8 and 12..16, then the payload parts in order.
fn v1_crc(h: &[u8], payload_parts: &[&[u8]]) -> u32 {
    let mut crc = crc32c::crc32c(&h[0..8]);
    crc = crc32c::crc32c_append(crc, &h[12..16]);
    for part in payload_parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    crc
}

/// Format 2's header tag: SipHash-2-4 keyed with the file's key over the frame's offset and
/// header bytes 0..28, low 32 bits. A PRF, unlike a CRC: seeing tags of a file does not help to
/// forge another one.
fn header_tag((k0, k1): (u64, u64), offset: u64, h: &[u8]) -> u32 {
    use std::hash::Hasher;
    let mut sip = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
    sip.write(&offset.to_le_bytes());
    sip.write(&h[..28]);
    sip.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FMT: FrameFormat = FrameFormat::V2 {
        seed: 0x5eed_1234,
        sip: (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
    };
    const AT: FramePos = FramePos {
        offset: 4096,
        number: 3,
    };

    fn arb_meta() -> impl Strategy<Value = MessageMeta> {
        (
            any::<u64>(),
            any::<u64>(),
            ".{0,40}",
            0u8..3,
            proptest::option::of("[a-z0-9]{0,20}"),
            proptest::collection::vec(
                (
                    "[a-z]{1,10}@[a-z]{1,10}",
                    0u8..16,
                    proptest::option::of(".{0,10}"),
                ),
                1..5,
            ),
            any::<bool>(),
        )
            .prop_map(|(id, at, rp, ret, envid, rcpts, dsn)| MessageMeta {
                id,
                received_at_ms: at,
                reverse_path: rp,
                ret,
                envid,
                body_type: 1,
                smtputf8: dsn,
                recipients: rcpts
                    .into_iter()
                    .map(|(address, notify, orcpt)| RecipientMeta {
                        address,
                        notify,
                        orcpt,
                    })
                    .collect(),
                auth_user: None,
                client_addr: "127.0.0.1:1".into(),
                helo: "h".into(),
                tls: Some("TLS1.3".into()),
                is_dsn: dsn,
            })
    }

    /// Copies into a 16-aligned buffer so that rkyv's alignment check holds, as in a mapping.
    fn aligned(bytes: &[u8]) -> AlignedVec<16> {
        let mut v = AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    fn message_frame(meta: &MessageMeta, options: MessageOptions, body: &[u8]) -> Vec<u8> {
        let a = archive(meta).unwrap();
        encode_message(FMT, AT, &a, options, body)
    }

    /// Options as senders set them: often none, else a deadline and a priority in range.
    fn arb_options() -> impl Strategy<Value = MessageOptions> {
        prop_oneof![
            Just(MessageOptions::default()),
            (any::<u64>(), -9i8..=9).prop_map(|(expires_at_ms, priority)| MessageOptions {
                expires_at_ms,
                priority
            }),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trips(meta in arb_meta(), options in arb_options(),
                               body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let buf = aligned(&message_frame(&meta, options, &body));
            prop_assert_eq!(buf.len() % FRAME_ALIGN, 0);
            let f = decode_frame(FMT, AT.offset, &buf).unwrap().unwrap();
            prop_assert_eq!(f.kind, RecordKind::Message);
            prop_assert_eq!(f.len, buf.len());
            prop_assert_eq!(f.body, &body[..]);
            prop_assert_eq!(f.options, options);
            let back: MessageMeta =
                rkyv::deserialize::<_, rancor::Error>(check_message(f.meta).unwrap()).unwrap();
            prop_assert_eq!(back, meta);
        }

        #[test]
        fn status_round_trips(id in any::<u64>(), rcpt in any::<u32>(), kind in 0u8..6,
                              at in any::<u64>(), reply in ".{0,80}") {
            let rec = StatusRecord { id, rcpt, kind, attempt: 3, at_ms: at, next_attempt_ms: at / 2,
                reply, remote: "mx.example".into(), category: "greylisted".into() };
            let buf = aligned(&encode_frame(FMT, AT, RecordKind::Status, &archive(&rec).unwrap(), &[]));
            let f = decode_frame(FMT, AT.offset, &buf).unwrap().unwrap();
            let back: StatusRecord =
                rkyv::deserialize::<_, rancor::Error>(check_status(f.meta).unwrap()).unwrap();
            prop_assert_eq!(back, rec);
        }

        #[test]
        fn any_flipped_byte_is_detected(meta in arb_meta(), options in arb_options(),
                                        body in proptest::collection::vec(any::<u8>(), 0..64),
                                        pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut frame = message_frame(&meta, options, &body);
            let i = pos.index(frame.len());
            frame[i] ^= 1 << bit;
            let buf = aligned(&frame);
            match decode_frame(FMT, AT.offset, &buf) {
                // A flipped length byte can turn the header into "end of data": never a record.
                Ok(None) => prop_assert!(i < 4),
                Ok(Some(_)) => prop_assert!(false, "flip at {} accepted", i),
                Err(_) => {}
            }
        }

        #[test]
        fn truncation_is_detected(meta in arb_meta(), options in arb_options(),
                                  body in proptest::collection::vec(any::<u8>(), 0..64),
                                  cut in any::<prop::sample::Index>()) {
            let frame = message_frame(&meta, options, &body);
            let k = cut.index(frame.len());
            // Shorter buffer: always rejected or read as the end.
            let short = aligned(&frame[..k]);
            prop_assert!(!matches!(decode_frame(FMT, AT.offset, &short), Ok(Some(_))));
            // Zero-filled after the cut (preallocated space): rejected unless the lost bytes were
            // zeros already, in which case the frame is byte-identical to the original.
            let mut zeroed = frame.clone();
            zeroed[k..].fill(0);
            let buf = aligned(&zeroed);
            if let Ok(Some(f)) = decode_frame(FMT, AT.offset, &buf) {
                prop_assert_eq!(&zeroed, &frame);
                prop_assert_eq!(f.len, frame.len());
            }
        }
    }

    #[test]
    fn a_message_without_options_has_no_block_and_an_options_block_is_checked() {
        let meta = archive(&MessageMeta::default()).unwrap();
        // No options: the frame is exactly the frame written before options existed.
        assert_eq!(
            encode_message(FMT, AT, &meta, MessageOptions::default(), b"body"),
            encode_frame(FMT, AT, RecordKind::Message, &meta, b"body")
        );
        let options = MessageOptions {
            expires_at_ms: 1_700_000_000_000,
            priority: -3,
        };
        let frame = encode_message(FMT, AT, &meta, options, b"body");
        let buf = aligned(&frame);
        let f = decode_frame(FMT, AT.offset, &buf).unwrap().unwrap();
        assert_eq!((f.options, f.body), (options, &b"body"[..]));
        // The flag on a status frame, or an unknown flag, is refused (format 1, where no header
        // CRC comes first; in format 2 the header tag refuses any changed header byte).
        let status = archive(&StatusRecord::default()).unwrap();
        let v1 = FramePos::default();
        let mut s = encode_frame(FrameFormat::V1, v1, RecordKind::Status, &status, &[]);
        s[6] = FLAG_OPTIONS as u8;
        assert_eq!(
            decode_frame(FrameFormat::V1, 0, &aligned(&s)).unwrap_err(),
            FrameError::Flags(FLAG_OPTIONS)
        );
        // An out-of-range priority or a reserved byte set is refused even with a valid CRC.
        let mut bad = options.encode();
        bad[8] = 10;
        assert_eq!(MessageOptions::decode(&bad), Err(FrameError::Options));
        let mut bad = options.encode();
        bad[15] = 1;
        assert_eq!(MessageOptions::decode(&bad), Err(FrameError::Options));
    }

    #[test]
    fn zero_header_is_the_end() {
        assert!(matches!(decode_frame(FMT, AT.offset, &[0u8; 64]), Ok(None)));
        assert!(matches!(decode_frame(FMT, AT.offset, &[]), Ok(None)));
    }

    #[test]
    fn body_starts_after_padded_archive() {
        let meta = MessageMeta::default();
        let a = archive(&meta).unwrap();
        let frame = aligned(&encode_frame(FMT, AT, RecordKind::Message, &a, b"body"));
        let f = decode_frame(FMT, AT.offset, &frame).unwrap().unwrap();
        assert_eq!(f.meta.len(), a.len());
        assert_eq!(f.body, b"body");
        let body_off = f.body.as_ptr() as usize - frame.as_ptr() as usize;
        assert_eq!(body_off, FRAME_HEADER_LEN + align16(a.len()));
    }

    #[test]
    fn a_format_2_header_is_valid_only_with_its_key_and_at_its_offset() {
        let meta = archive(&MessageMeta::default()).unwrap();
        let frame = aligned(&encode_frame(FMT, AT, RecordKind::Message, &meta, b"body"));
        let f = decode_frame(FMT, AT.offset, &frame).unwrap().unwrap();
        assert_eq!((f.number, f.len), (AT.number, frame.len()));
        assert_eq!(
            probe_header(FMT, AT.offset, &frame),
            Some((frame.len(), AT.number))
        );
        // The same bytes at another offset, or in a file with another key, are not a frame.
        for (fmt, offset) in [
            (FMT, AT.offset + 16),
            (FrameFormat::v2(&[7; KEY_LEN]), AT.offset),
        ] {
            assert!(matches!(
                decode_frame(fmt, offset, &frame),
                Err(FrameError::HeaderTag { .. })
            ));
            assert_eq!(probe_header(fmt, offset, &frame), None);
        }
        // A header whose frame runs past the buffer is not offered as a place to resume.
        assert_eq!(
            probe_header(FMT, AT.offset, &frame[..frame.len() - 16]),
            None
        );
        // Format 1 frames still read, in format 1 files only.
        let old = aligned(&encode_frame(
            FrameFormat::V1,
            AT,
            RecordKind::Message,
            &meta,
            b"x",
        ));
        let f = decode_frame(FrameFormat::V1, 0, &old).unwrap().unwrap();
        assert_eq!((f.body, f.len), (&b"x"[..], old.len()));
        assert_eq!(
            decode_frame(FMT, 0, &old).unwrap_err(),
            FrameError::Version(1)
        );
        assert_eq!(
            decode_frame(FrameFormat::V1, 0, &frame).unwrap_err(),
            FrameError::Version(2)
        );
    }
}
