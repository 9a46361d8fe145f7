//! Segment files: creation with reserved space, the shared mapping, appends, and flushes.
//!
//! With `disk.rs`, this is the only module of the spool with `unsafe` code (mapping files and
//! reading rkyv archives without re-validating them). It never decides *what* to write; `mod.rs`
//! does. Every file operation goes through a [`Disk`]; on one that cannot map (the simulated disk
//! of the tests) a segment keeps its bytes in memory and appends are copied there too.
//!
//! What is durable after each call (Linux semantics):
//!
//! - [`Segment::create`]: the file exists under its final name with all of its space reserved
//!   (`fallocate`) and a valid file header, and both are durable: the file is fsynced before the
//!   rename from its temporary name, and the caller fsyncs the directory after it
//!   ([`disk::sync_dir`]). A crash before that leaves at most a `*.tmp` file, which recovery removes.
//! - [`Segment::append`]: nothing. The frame is written with one `pwritev(2)` into the page cache
//!   (visible at once through the segment's read-only shared mapping, which maps the same pages)
//!   and becomes durable only when a later `fdatasync` of the segment file returns `Ok`.
//! - [`Segment::sync_data`] (`fdatasync(2)`): every frame appended before the call is durable,
//!   including the extent conversions of the preallocated range that reading it back needs; the
//!   size never changes after `create`.
//!
//! Writes go through a syscall, not through the mapping: with a writable mapping every
//! fdatasync had to write-protect the mapped dirty pages (a TLB shoot-down IPI to every core) and
//! every first touch of a preallocated page faulted it in and zeroed it; together that was about
//! a quarter of the CPU per 100 KB message (see docs/benchmarks.md).
//!
//! Crash ordering: the kernel may write dirty pages back in any order, so after a crash any subset
//! of an unsynced frame's pages may be on disk. The CRC in the header covers the payload, so every
//! such mix reads as a bad frame (or a zero length) and recovery stops there; see
//! docs/spool-format.md.
//!
//! Invariants of a [`Segment`]:
//! - `end` is a multiple of 16, at least [`FILE_HEADER_LEN`], at most the mapping length; every
//!   frame in `[FILE_HEADER_LEN, end)` has passed [`record::decode_frame`] and checked rkyv access
//!   (when scanned) or was produced by rkyv in this process (when appended).
//! - `frames` holds the start offset of each of those frames, ascending. Zero-copy reads accept
//!   only offsets found there, which is what makes the unchecked rkyv access sound.
//! - Bytes in `[end, len)` of the active segment have never been written by this process.

#![allow(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rkyv::util::AlignedVec;

use super::disk::{self, Disk, DiskFile, Mode};

use super::record::{
    self, ArchivedMessageMeta, ArchivedStatusRecord, FRAME_ALIGN, Frame, FrameError, FrameFormat,
    FramePos, HeaderFields, KEY_LEN, MessageOptions, RecordKind,
};

/// Length of the file header at the start of every segment and of the ledger.
pub const FILE_HEADER_LEN: usize = 64;
/// Magic of a segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"RINGSPL1";
/// Magic of the ledger file.
pub const LEDGER_MAGIC: &[u8; 8] = b"RINGLDG1";
/// File header format version this code writes (it reads 1 and 2).
pub const FILE_FORMAT_VERSION: u32 = 2;

/// Why a file header was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file is shorter than a header.
    #[error("file is {0} bytes, shorter than the 64-byte header")]
    Short(u64),
    /// Wrong magic bytes.
    #[error("bad magic {0:02x?}")]
    Magic([u8; 8]),
    /// Unknown file format version.
    #[error("unknown file format version {0}")]
    Version(u32),
    /// Header checksum mismatch.
    #[error("header crc32c mismatch")]
    Crc,
    /// Shard or sequence number differ from the file name.
    #[error("header says shard {shard} seq {seq:016x}, file name disagrees")]
    Mismatch {
        /// Shard in the header.
        shard: u8,
        /// Sequence number in the header.
        seq: u64,
    },
}

/// What a format 2 file header holds besides its magic.
#[derive(Clone, Copy, Debug)]
pub struct NewHeader<'a> {
    /// Shard (0 in the ledger).
    pub shard: u8,
    /// Sequence number (matches the file name).
    pub seq: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// The file's frame key.
    pub key: &'a [u8; KEY_LEN],
    /// Frames written to the shard's previous segment (seq - 1), as known when this one was
    /// created; `None` for the ledger and a shard's first segment.
    pub prev_frames: Option<u64>,
}

/// Encodes a file header: magic, version, shard, seq, creation time, frame key, previous
/// segment's frame count (+1; 0 for none), CRC32C of bytes 0..60.
pub fn file_header(magic: &[u8; 8], n: NewHeader<'_>) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FILE_FORMAT_VERSION.to_le_bytes());
    h[12] = n.shard;
    h[16..24].copy_from_slice(&n.seq.to_le_bytes());
    h[24..32].copy_from_slice(&n.created_ms.to_le_bytes());
    h[32..48].copy_from_slice(n.key);
    let prev = n.prev_frames.map_or(0, |f| f + 1);
    h[48..56].copy_from_slice(&prev.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A new random frame key for a file.
pub fn new_key() -> [u8; KEY_LEN] {
    rand::random()
}

/// What a valid file header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Shard (0 in the ledger).
    pub shard: u8,
    /// Sequence number (matches the file name).
    pub seq: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// How its frames are laid out and checked.
    pub format: FrameFormat,
    /// Frames written to the shard's previous segment, as known when this one was created.
    pub prev_frames: Option<u64>,
}

/// Decodes a file header.
pub fn parse_file_header(buf: &[u8], magic: &[u8; 8]) -> Result<FileHeader, HeaderError> {
    if buf.len() < FILE_HEADER_LEN {
        return Err(HeaderError::Short(buf.len() as u64));
    }
    let mut m = [0u8; 8];
    m.copy_from_slice(&buf[..8]);
    if &m != magic {
        return Err(HeaderError::Magic(m));
    }
    let stored = u32::from_le_bytes([buf[60], buf[61], buf[62], buf[63]]);
    if crc32c::crc32c(&buf[..60]) != stored {
        return Err(HeaderError::Crc);
    }
    let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    let format = match version {
        1 => FrameFormat::V1,
        2 => FrameFormat::v2(buf[32..48].try_into().expect("16 bytes")),
        _ => return Err(HeaderError::Version(version)),
    };
    Ok(FileHeader {
        shard: buf[12],
        seq: u64_at(16),
        created_ms: u64_at(24),
        format,
        prev_frames: u64_at(48).checked_sub(1),
    })
}

/// File name of segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("seg-{seq:016x}")
}

/// Parses a segment file name back to its seq; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Reads a whole file into a 16-byte aligned buffer (readers that must not map: a live spool
/// may be purged or, for the ledger, have a torn tail truncated while they read).
pub fn read_aligned(disk: &dyn Disk, path: &Path) -> io::Result<AlignedVec<16>> {
    disk::read_all(&*disk.open(path, Mode::Read)?)
}

/// A validated record handed to a scan visitor.
#[derive(Clone, Copy, Debug)]
pub enum Rec<'a> {
    /// A message: archived meta and raw body.
    Message(&'a ArchivedMessageMeta, &'a [u8]),
    /// A status record.
    Status(&'a ArchivedStatusRecord),
}

/// Where a scan stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset just past the last valid frame.
    pub end: u64,
    /// Number of the frame an append at `end` would get (format 2).
    pub next_number: u64,
    /// Set when the scan stopped at an invalid frame (or non-zero bytes after the end).
    pub torn: Option<TornTail>,
    /// Damaged regions the scan stepped over, with valid frames after each (format 2).
    pub damaged: Vec<Damage>,
}

/// A damaged region in the middle of a file: skipped, and every valid frame after it kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first byte not read as data.
    pub offset: u64,
    /// Length of the skipped region (up to the next valid frame).
    pub bytes: u64,
    /// Records lost in it, from the frame numbers on either side.
    pub frames: u64,
    /// Why the frame at `offset` was rejected.
    pub reason: FrameError,
}

/// A torn or corrupt tail that recovery dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Offset of the first byte not read as data.
    pub offset: u64,
    /// Bytes from `offset` to the last non-zero byte of the file (what was dropped).
    pub bytes: u64,
    /// Why the frame at `offset` was rejected.
    pub reason: FrameError,
}

enum Map {
    Empty,
    Read(Mmap),
    /// The active segment: a read-only shared mapping of the whole preallocated file; appends go
    /// through `pwritev` on the file and show up in the mapping (same page cache).
    Active(Mmap),
    /// A copy in memory: a segment loaded with [`Load::Read`], or one on a disk that cannot map.
    Owned(AlignedVec<16>),
    /// The active segment on a disk that cannot map: appends are copied into it as well.
    ActiveOwned(AlignedVec<16>),
}

impl Map {
    fn bytes(&self) -> &[u8] {
        match self {
            Map::Empty => &[],
            Map::Read(m) => m,
            Map::Active(m) => m,
            Map::Owned(v) | Map::ActiveOwned(v) => v,
        }
    }
}

/// How to load an existing segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Map it read-only (the caller holds the spool lock: nobody truncates the file).
    Map,
    /// Copy it into memory (offline readers while a server may run).
    Read,
}

/// One segment file, mapped (or copied) whole.
pub struct Segment {
    /// Sequence number, from the file name.
    pub seq: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// Set when the file header is invalid: no records are read from it and it is never purged.
    pub header_error: Option<HeaderError>,
    /// How its frames are laid out and checked (format 2 for every segment this build creates).
    format: FrameFormat,
    /// Frames the shard's previous segment held when this one was created (its header says).
    pub prev_frames: Option<u64>,
    /// Number the next frame would get: frames written so far, damaged ones included.
    next_number: u64,
    file: Option<Box<dyn DiskFile>>,
    map: Map,
    end: usize,
    frames: Vec<u64>,
}

impl Segment {
    /// Creates segment `seq` in `dir` with `size` bytes reserved, ready for appends.
    ///
    /// Durable on return: the file (header and reserved size) and its rename. The caller must
    /// fsync `dir` to make the directory entry durable. `ENOSPC`/`EDQUOT` come back as they are
    /// and the partial file is removed.
    pub fn create(
        disk: &dyn Disk,
        dir: &Path,
        new: NewHeader<'_>,
        size: u64,
    ) -> io::Result<Segment> {
        let seq = new.seq;
        debug_assert!(size as usize >= FILE_HEADER_LEN && size.is_multiple_of(16));
        let path = dir.join(segment_file_name(seq));
        let tmp = dir.join(format!("{}.tmp", segment_file_name(seq)));
        let file = disk.open(&tmp, Mode::CreateNew)?;
        let header = file_header(SEGMENT_MAGIC, new);
        let prepared = file
            .allocate(size)
            .and_then(|()| file.write_at(&[&header], 0))
            .and_then(|()| file.sync_all())
            .and_then(|()| disk.rename(&tmp, &path));
        if let Err(e) = prepared {
            let _ = disk.remove_file(&tmp);
            return Err(e);
        }
        // SAFETY: the file was just created by us, is exclusively ours (the spool lock keeps other
        // ringmta processes out and the tool only reads), and is never truncated while mapped:
        // purge only unlinks, which keeps the pages alive. The mapping is read-only; writes go
        // through `pwritev`, so no store can fault on an unreservable page.
        let map = match unsafe { file.map(size as usize)? } {
            Some(m) => Map::Active(exact(m, size as usize)?),
            None => {
                let mut v = AlignedVec::<16>::with_capacity(size as usize);
                v.extend_from_slice(&header);
                v.resize(size as usize, 0);
                Map::ActiveOwned(v)
            }
        };
        Ok(Segment {
            seq,
            path,
            header_error: None,
            format: FrameFormat::v2(new.key),
            prev_frames: new.prev_frames,
            next_number: 0,
            file: Some(file),
            map,
            end: FILE_HEADER_LEN,
            frames: Vec::new(),
        })
    }

    /// Loads an existing segment for reading and checks its file header against `shard`/`seq`.
    /// Records are not read until [`Segment::scan`].
    pub fn load(
        disk: &dyn Disk,
        path: &Path,
        shard: u8,
        seq: u64,
        how: Load,
    ) -> io::Result<Segment> {
        let (file, map) = match how {
            Load::Read => (None, Map::Owned(read_aligned(disk, path)?)),
            Load::Map => {
                let file = disk.open(path, Mode::Read)?;
                let len = file.size()?;
                // SAFETY: the caller holds the spool lock, so no other ringmta process writes
                // this file, and this process never writes to or truncates a recovered segment
                // below its end (appends go to a new one; purge only unlinks; `trim` remaps
                // first). The bytes are treated as untrusted until `scan` validates them.
                let map = if len == 0 {
                    Map::Empty
                } else if let Some(m) = unsafe { file.map(len as usize)? } {
                    Map::Read(exact(m, len as usize)?)
                } else {
                    Map::Owned(disk::read_all(&*file)?)
                };
                (Some(file), map)
            }
        };
        let (format, prev_frames, header_error) =
            match parse_file_header(map.bytes(), SEGMENT_MAGIC) {
                Ok(h) if h.shard == shard && h.seq == seq => (h.format, h.prev_frames, None),
                Ok(h) => (
                    h.format,
                    None,
                    Some(HeaderError::Mismatch {
                        shard: h.shard,
                        seq: h.seq,
                    }),
                ),
                Err(e) => (FrameFormat::V1, None, Some(e)),
            };
        Ok(Segment {
            seq,
            path: path.to_owned(),
            header_error,
            format,
            prev_frames,
            next_number: 0,
            file,
            map,
            end: FILE_HEADER_LEN,
            frames: Vec::new(),
        })
    }

    /// Reads every frame from the header on, in order, handing each valid record to `visit`
    /// (see [`scan_frames`] for what is checked and how damage is stepped over).
    pub fn scan(&mut self, full_tail: bool, mut visit: impl FnMut(u64, Rec<'_>)) -> ScanEnd {
        self.frames.clear();
        self.end = FILE_HEADER_LEN;
        if self.header_error.is_some() {
            return ScanEnd::default();
        }
        let frames = &mut self.frames;
        let bytes = &self.map.bytes()[FILE_HEADER_LEN.min(self.map.bytes().len())..];
        let start = (FILE_HEADER_LEN as u64, 0);
        let end = scan_frames(self.format, bytes, start, full_tail, |pos, frame| {
            let rec = validate(frame)?;
            visit(pos, rec);
            frames.push(pos);
            Ok(())
        });
        self.end = end.end as usize;
        self.next_number = end.next_number;
        end
    }

    /// Appends one frame: `meta` (an rkyv archive made in this process) then `body` parts.
    /// Returns the frame's offset, or `None` when it does not fit (or the segment is read-only).
    ///
    /// Durable on return: nothing (see the module doc). The payload is copied before the header,
    /// so a concurrent reader of the file sees either no frame or a complete one with a valid CRC
    /// (or, torn by a racing read, an invalid one).
    ///
    /// `flags` go in the header as they are: [`record::FLAG_OPTIONS`] on a message whose first
    /// body part is its options block.
    pub fn append(
        &mut self,
        kind: RecordKind,
        flags: u16,
        meta: &[u8],
        body: &[&[u8]],
    ) -> io::Result<Option<u64>> {
        let cap = match &self.map {
            Map::Active(m) => m.len(),
            Map::ActiveOwned(v) => v.len(),
            _ => return Ok(None),
        };
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let body_len: usize = body.iter().map(|p| p.len()).sum();
        let plen = record::payload_len(meta.len(), body_len);
        let flen = self.format.frame_len(plen);
        if plen > record::MAX_PAYLOAD_LEN || self.end + flen > cap {
            return Ok(None);
        }
        let start = self.end;
        const ZEROS: [u8; 64] = [0; 64];
        let gap = plen - body_len - meta.len();
        let hlen = self.format.header_len();
        let tail = flen - hlen - plen;
        debug_assert!(gap <= ZEROS.len() && tail <= ZEROS.len());
        let mut parts: Vec<&[u8]> = Vec::with_capacity(body.len() + 4);
        parts.push(meta);
        parts.push(&ZEROS[..gap]);
        parts.extend_from_slice(body);
        let at = FramePos {
            offset: start as u64,
            number: self.next_number,
        };
        let fields = HeaderFields {
            kind,
            flags,
            payload_len: plen as u32,
            meta_len: meta.len() as u32,
        };
        let h = record::frame_header(self.format, at, fields, &parts);
        parts.insert(0, &h[..hlen]);
        parts.push(&ZEROS[..tail]);
        // One pwritev per frame: the header's CRC covers the payload, so a crash that persists
        // any subset of these bytes reads back as a bad frame, whatever the order of writeback.
        // Writing through a syscall rather than the mapping keeps writeback from having to
        // write-protect mapped pages (TLB shoot-downs on every fdatasync) and avoids faulting
        // in (and zeroing) preallocated pages before they are overwritten.
        file.write_at(&parts, start as u64)?;
        if let Map::ActiveOwned(v) = &mut self.map {
            let mut at = start;
            for p in &parts {
                v[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        }
        self.frames.push(start as u64);
        self.next_number += 1;
        self.end = start + flen;
        Ok(Some(start as u64))
    }

    /// `fdatasync(2)` of the segment file: on `Ok`, every frame appended before the call is
    /// durable. After an `Err` the state of unsynced frames is unknown (the kernel may have
    /// dropped the dirty pages); the caller must not retry and claim success.
    pub fn sync_data(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// The open file, if loaded with [`Load::Map`] or created.
    pub fn file(&self) -> Option<&dyn DiskFile> {
        self.file.as_deref()
    }

    /// Size of the file in bytes (the mapping covers all of it).
    pub fn len(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    /// Whether the file is empty (zero bytes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset just past the last valid frame.
    pub fn end(&self) -> u64 {
        self.end as u64
    }

    /// Number of valid frames.
    pub fn record_count(&self) -> u64 {
        self.frames.len() as u64
    }

    /// Frames written to this segment, damaged ones included (from the frame numbers).
    pub fn frames_written(&self) -> u64 {
        self.next_number
    }

    /// Start offsets of the valid frames, ascending.
    pub fn frame_offsets(&self) -> &[u64] {
        &self.frames
    }

    /// Bytes still free for frames (0 for read-only segments).
    pub fn remaining(&self) -> u64 {
        match &self.map {
            Map::Active(m) => (m.len() - self.end) as u64,
            Map::ActiveOwned(v) => (v.len() - self.end) as u64,
            _ => 0,
        }
    }

    /// Turns a writable segment into a read-only one: later appends return `None`.
    pub fn seal(&mut self) {
        self.map = match std::mem::replace(&mut self.map, Map::Empty) {
            Map::Active(m) => Map::Read(m),
            Map::ActiveOwned(v) => Map::Owned(v),
            other => other,
        };
    }

    /// Gives the reserved space past the last frame of a sealed (or recovered) mapped segment
    /// back to the filesystem: the file is cut to `end` rounded up to 4 KiB. Returns the bytes
    /// freed; does nothing to an active or copied segment or one with a bad header. Callers do
    /// not trim a segment whose scan stopped at a torn tail: it stays for `spool check` to show.
    ///
    /// Durable on return: nothing needs to be. Every frame lies below the cut, and a crash that
    /// loses the truncation leaves zeros past `end`, which recovery reads as a clean end.
    ///
    /// With `check_tail` (a segment recovered from disk) nothing is cut unless every byte past
    /// `end` is zero. Only format 1 needs the check here (its scan looks only at the frame
    /// header after the last frame, so a frame whose header never reached the disk would
    /// otherwise vanish unseen); a format 2 scan read the whole tail and reported any non-zero
    /// byte, and a segment with a report is not trimmed. A segment this
    /// process wrote needs no check (it never writes past `end`).
    pub fn trim(&mut self, disk: &dyn Disk, check_tail: bool) -> io::Result<u64> {
        // A segment copied with `Load::Read` has no file: nothing to cut.
        let (Map::Read(_) | Map::Owned(_), Some(file)) = (&self.map, &self.file) else {
            return Ok(0);
        };
        let old = self.map.bytes();
        let keep = (self.end as u64).next_multiple_of(4096);
        let len = old.len() as u64;
        if self.header_error.is_some() || keep >= len {
            return Ok(0);
        }
        // A format 2 scan has read the whole tail already (a clean end means only zeros).
        if check_tail && self.format == FrameFormat::V1 && old[self.end..].iter().any(|&b| b != 0) {
            return Ok(0);
        }
        // A recovered segment is open read-only; the cut needs a handle that may write.
        let writable = disk.open(&self.path, Mode::Write)?;
        if let Map::Owned(v) = &mut self.map {
            writable.set_len(keep)?;
            v.resize(keep as usize, 0);
            return Ok(len - keep);
        }
        // Map the prefix that stays before cutting the file, so that no mapped page ever lies
        // past the end of the file (touching one would raise SIGBUS).
        // SAFETY: as for `load`: the spool lock keeps other writers out and this process never
        // writes below `end` again; the new mapping covers only bytes that stay in the file.
        let unmappable = || io::Error::other("a mapped segment's disk no longer maps it");
        let map = unsafe { file.map(keep as usize)? }.ok_or_else(unmappable)?;
        self.map = Map::Read(exact(map, keep as usize)?);
        if let Err(e) = writable.set_len(keep) {
            // The file keeps its length: map all of it again so that `len` stays true.
            // SAFETY: as above; the file was not cut, so every mapped byte is in it.
            let map = unsafe { file.map(len as usize)? }.ok_or_else(unmappable)?;
            self.map = Map::Read(exact(map, len as usize)?);
            return Err(e);
        }
        Ok(len - keep)
    }

    /// The message record at `offset`, zero-copy: archived meta, options and body.
    ///
    /// `None` unless `offset` is the start of a validated message frame of this segment.
    pub fn message_at(&self, offset: u64) -> Option<(&ArchivedMessageMeta, MessageOptions, &[u8])> {
        let (kind, flags, meta, body) = self.frame_at(offset)?;
        if kind != RecordKind::Message {
            return None;
        }
        // The block was checked when the frame was (scan) or written by this process.
        let (options, body) = if flags == record::FLAG_OPTIONS {
            let (block, body) = body.split_at(record::OPTIONS_LEN);
            (MessageOptions::decode(block).ok()?, body)
        } else {
            (MessageOptions::default(), body)
        };
        // SAFETY: `frame_at` only returns frames listed in `self.frames`, each of which passed
        // checked rkyv access in `scan` or was archived by rkyv in this process (`append`); the
        // bytes are never rewritten afterwards (appends only go past `end`), and `meta` starts at
        // a 16-byte aligned offset of a page-aligned mapping or an AlignedVec<16>.
        let meta = unsafe { rkyv::access_unchecked::<ArchivedMessageMeta>(meta) };
        Some((meta, options, body))
    }

    /// The status record at `offset`, zero-copy; `None` unless it is a validated status frame.
    pub fn status_at(&self, offset: u64) -> Option<&ArchivedStatusRecord> {
        let (kind, _, meta, _) = self.frame_at(offset)?;
        if kind != RecordKind::Status {
            return None;
        }
        // SAFETY: as in `message_at`.
        Some(unsafe { rkyv::access_unchecked::<ArchivedStatusRecord>(meta) })
    }

    /// Splits a validated frame at `offset` into (kind, flags, archive, rest of the payload)
    /// without re-hashing it.
    fn frame_at(&self, offset: u64) -> Option<(RecordKind, u16, &[u8], &[u8])> {
        self.frames.binary_search(&offset).ok()?;
        let bytes = self.map.bytes();
        let at = offset as usize;
        let hlen = self.format.header_len();
        let h = &bytes[at..at + hlen];
        let plen = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let mlen = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        let kind = RecordKind::from_u8(h[5])?;
        let flags = u16::from_le_bytes([h[6], h[7]]);
        let payload = &bytes[at + hlen..at + hlen + plen];
        let body_start = if mlen == plen {
            mlen
        } else {
            record::align16(mlen)
        };
        Some((kind, flags, &payload[..mlen], &payload[body_start..]))
    }
}

/// A format 1 file header, as builds before format 2 wrote it (tests of reading old files).
#[cfg(test)]
pub(crate) fn v1_file_header(magic: &[u8; 8], shard: u8, seq: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12] = shard;
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A mapping checked to be `len` bytes long, as asked for (what makes the SIGBUS reasoning of
/// `trim` and the bounds of every read hold whatever the disk returned).
fn exact(map: Mmap, len: usize) -> io::Result<Mmap> {
    if map.len() == len {
        Ok(map)
    } else {
        Err(io::Error::other(format!(
            "mapping of {} bytes where {len} were asked for",
            map.len()
        )))
    }
}

/// Validates the archive of a frame that passed the header and CRC checks.
fn validate<'a>(frame: &Frame<'a>) -> Result<Rec<'a>, FrameError> {
    match frame.kind {
        RecordKind::Message => Ok(Rec::Message(record::check_message(frame.meta)?, frame.body)),
        RecordKind::Status => Ok(Rec::Status(record::check_status(frame.meta)?)),
        // Placeholders belong in the ledger only.
        RecordKind::Placeholder => Err(FrameError::Kind(RecordKind::Placeholder as u8)),
    }
}

/// Reads the frames of a file of format `fmt` in order from `bytes`, which are the file's bytes
/// from `start.0` (a frame boundary, where the frame numbered `start.1` is) to its end, handing each one whose header, checksums and padding are valid to `accept`, which
/// validates its archive (an `Err` makes it an invalid frame).
///
/// In a format 2 file an invalid frame does not end the scan: a frame whose header is intact is
/// stepped over by its length, otherwise the scan looks for the next header that is valid at its
/// offset ([`record::probe_header`]), and the region in between is reported as [`Damage`].
/// Damage with no valid frame after it is a torn tail: the end of what a crash left. A format 1
/// file ends at its first invalid frame, as format 1 cannot resynchronise.
///
/// A zero length is the end unless a valid frame follows (a header zeroed by damage). In format
/// 1, only `full_tail` checks the rest of the file for non-zero bytes (a torn frame whose header
/// never reached the disk); format 2 always looks at all of it.
pub fn scan_frames<'a>(
    fmt: FrameFormat,
    bytes: &'a [u8],
    start: (u64, u64),
    full_tail: bool,
    mut accept: impl FnMut(u64, &Frame<'a>) -> Result<(), FrameError>,
) -> ScanEnd {
    let (base, first_number) = start;
    let mut pos = 0;
    let mut end = pos;
    let mut next_number = first_number;
    let mut valid_next = first_number;
    let mut damaged = Vec::new();
    let mut torn = loop {
        let rest = &bytes[pos..];
        let at = base + pos as u64;
        let reason = match record::decode_frame(fmt, at, rest) {
            Ok(Some(frame)) => match accept(at, &frame) {
                Ok(()) => {
                    next_number = frame.number + 1;
                    valid_next = next_number;
                    pos += frame.len;
                    end = pos;
                    continue;
                }
                Err(reason) => Some(reason),
            },
            Ok(None) => None,
            Err(reason) => Some(reason),
        };
        // An intact header gives the damaged frame's length; otherwise search.
        let intact = reason
            .as_ref()
            .and_then(|_| record::probe_header(fmt, at, rest));
        let resume = match intact {
            Some((len, number)) => Some((pos + len, 1, number + 1)),
            None => next_header(fmt, bytes, base, pos + FRAME_ALIGN, next_number)
                .map(|(at, number)| (at, number.saturating_sub(next_number), number)),
        };
        match (resume, reason) {
            (Some((to, frames, number)), reason) => {
                damaged.push(Damage {
                    offset: at,
                    bytes: (to - pos) as u64,
                    frames,
                    reason: reason.unwrap_or(FrameError::ZeroedHeader),
                });
                next_number = number;
                pos = to;
            }
            (None, None) => {
                let whole = full_tail || fmt != FrameFormat::V1;
                let tail = if whole {
                    rest
                } else {
                    &rest[..rest.len().min(fmt.header_len())]
                };
                break match last_nonzero(tail) {
                    0 => None,
                    n => Some(TornTail {
                        offset: at,
                        bytes: n as u64,
                        reason: FrameError::DataAfterEnd,
                    }),
                };
            }
            (None, Some(reason)) => {
                break Some(TornTail {
                    offset: at,
                    bytes: last_nonzero(rest) as u64,
                    reason,
                });
            }
        }
    };
    // Damage after the last valid frame is what a crash leaves of unsynced appends: a tail.
    let end = base + end as u64;
    if let Some(first) = damaged.iter().position(|d| d.offset >= end) {
        let d = damaged.swap_remove(first);
        damaged.truncate(first);
        torn = Some(TornTail {
            offset: d.offset,
            bytes: last_nonzero(&bytes[(d.offset - base) as usize..]) as u64,
            reason: d.reason,
        });
    }
    ScanEnd {
        end,
        next_number: valid_next,
        torn,
        damaged,
    }
}

/// The first offset from `from` (16-byte steps) where a whole frame of this file is valid (its
/// header tag at that offset, its payload CRC and padding), numbered at least `min_number`; with
/// its number. A frame found by searching must check completely: a header alone that passed by
/// chance would otherwise make the scan skip valid frames by a forged length.
fn next_header(
    fmt: FrameFormat,
    bytes: &[u8],
    base: u64,
    from: usize,
    min_number: u64,
) -> Option<(usize, u64)> {
    (from..bytes.len()).step_by(FRAME_ALIGN).find_map(|at| {
        let offset = base + at as u64;
        let (_, n) = record::probe_header(fmt, offset, &bytes[at..])?;
        let whole = matches!(record::decode_frame(fmt, offset, &bytes[at..]), Ok(Some(_)));
        (whole && n >= min_number).then_some((at, n))
    })
}

/// Length of `bytes` up to and including its last non-zero byte.
fn last_nonzero(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_round_trips_and_rejects_damage() {
        let key = [9u8; KEY_LEN];
        let new = NewHeader {
            shard: 7,
            seq: 42,
            created_ms: 1000,
            key: &key,
            prev_frames: Some(0),
        };
        let h = file_header(SEGMENT_MAGIC, new);
        let expected = FileHeader {
            shard: 7,
            seq: 42,
            created_ms: 1000,
            format: FrameFormat::v2(&key),
            prev_frames: Some(0),
        };
        assert_eq!(parse_file_header(&h, SEGMENT_MAGIC), Ok(expected));
        let none = file_header(
            SEGMENT_MAGIC,
            NewHeader {
                prev_frames: None,
                ..new
            },
        );
        assert_eq!(
            parse_file_header(&none, SEGMENT_MAGIC).unwrap().prev_frames,
            None
        );
        let old = v1_file_header(SEGMENT_MAGIC, 7, 42);
        assert_eq!(
            parse_file_header(&old, SEGMENT_MAGIC).unwrap().format,
            FrameFormat::V1
        );
        assert!(matches!(
            parse_file_header(&h, LEDGER_MAGIC),
            Err(HeaderError::Magic(_))
        ));
        for i in 0..FILE_HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(parse_file_header(&bad, SEGMENT_MAGIC).is_err(), "byte {i}");
        }
        assert_eq!(
            parse_segment_file_name(&segment_file_name(0xabc)),
            Some(0xabc)
        );
        assert_eq!(parse_segment_file_name("seg-0000000000000abc.tmp"), None);
    }

    #[test]
    fn appended_frames_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = new_key();
        let new = NewHeader {
            shard: 1,
            seq: 5,
            created_ms: 0,
            key: &key,
            prev_frames: None,
        };
        let mut seg = Segment::create(&disk::RealDisk, dir.path(), new, 4096).unwrap();
        let meta = record::archive(&record::MessageMeta::default()).unwrap();
        let off = seg
            .append(RecordKind::Message, 0, &meta, &[b"ab", b"cd"])
            .unwrap()
            .unwrap();
        assert_eq!(off, FILE_HEADER_LEN as u64);
        seg.sync_data().unwrap();
        let bytes = read_aligned(&disk::RealDisk, &seg.path).unwrap();
        assert_eq!(bytes.len(), 4096);
        let f = record::decode_frame(seg.format, off, &bytes[off as usize..])
            .unwrap()
            .unwrap();
        assert_eq!(f.body, b"abcd");
        let (_, options, body) = seg.message_at(off).unwrap();
        assert_eq!((options, body), (MessageOptions::default(), &b"abcd"[..]));
        assert!(
            seg.message_at(off + 16).is_none(),
            "only validated frame starts are readable"
        );
        assert!(seg.status_at(off).is_none());
        // A frame that does not fit is refused, and nothing is written.
        let big = vec![1u8; 8192];
        assert!(
            seg.append(RecordKind::Message, 0, &meta, &[&big])
                .unwrap()
                .is_none()
        );
        let mut again = Segment::load(&disk::RealDisk, &seg.path, 1, 5, Load::Map).unwrap();
        let mut n = 0;
        let end = again.scan(true, |_, _| n += 1);
        assert_eq!((n, end.torn), (1, None));
    }
}
