//! Offline views of a spool: `ringmta spool check` and the reader behind `spool dump`.

use super::*;
use disk::RealDisk;

/// What `ringmta spool check` reports: per shard, what recovery would read and drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One report per shard directory, by shard number.
    pub shards: Vec<RecoveryReport>,
    /// The scan of each ledger file, oldest first (none before the first purge).
    pub ledgers: Vec<SegmentReport>,
}

impl CheckReport {
    /// Whether every segment and the ledger read to a clean end with valid headers.
    pub fn is_clean(&self) -> bool {
        self.shards.iter().all(|s| s.damaged().next().is_none())
            && self.ledgers.iter().all(SegmentReport::is_clean)
    }

    /// The exit status of `ringmta spool check`, after fsck(8): 0 clean; 1 torn tails only
    /// (what a crash leaves: appends never acknowledged, which recovery drops); 4 damage
    /// (records lost in the middle of a file or at the end of one its successor counted, or a
    /// file whose header cannot be read). After a power cut, damage in the segment that was
    /// being appended to can also be unsynced appends that reached the disk out of order.
    pub fn exit_code(&self) -> u8 {
        let mut files = self
            .shards
            .iter()
            .flat_map(|s| &s.segments)
            .chain(&self.ledgers);
        if files.any(|f| f.header_error.is_some() || !f.damaged.is_empty()) {
            4
        } else if self.is_clean() {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.shards {
            write!(f, "{s}")?;
            for seg in &s.segments {
                if seg.is_clean() {
                    writeln!(f, "  {seg}")?;
                }
            }
        }
        for l in &self.ledgers {
            writeln!(f, "ledger {l}")?;
        }
        if self.ledgers.is_empty() {
            writeln!(f, "no ledger")?;
        }
        let lost: u64 = self
            .shards
            .iter()
            .map(RecoveryReport::lost_records)
            .sum::<u64>()
            + self
                .ledgers
                .iter()
                .flat_map(|l| &l.damaged)
                .map(|d| d.frames)
                .sum::<u64>();
        let verdict = if self.is_clean() {
            "clean: recovery would drop nothing".to_owned()
        } else if lost == 0 {
            "damaged: recovery would drop the tails listed above (never acknowledged data)"
                .to_owned()
        } else {
            format!(
                "damaged: {lost} records lost to damage in the middle of a file (listed above; \
                 the records after each are kept), and any tails listed (never acknowledged data)"
            )
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
        let rec = recovery::recover_shard(&RealDisk, dir, shard, Load::Read, true)?;
        report.shards.push(rec.report);
    }
    report.ledgers = ledger::read_ledger(&RealDisk, dir, |_| {})?;
    Ok(report)
}

/// A message as `queue ls/show` sees it (owned: the files are read, not mapped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSnapshot {
    /// Its id.
    pub id: QueueId,
    /// Envelope and session facts.
    pub meta: MessageMeta,
    /// Its deadline and priority.
    pub options: super::MessageOptions,
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
        let rec = recovery::recover_shard(&RealDisk, dir, shard, Load::Read, false)?;
        let seg = |seq: u64| {
            rec.segments
                .binary_search_by_key(&seq, |e| e.seg.seq)
                .ok()
                .map(|i| &rec.segments[i].seg)
        };
        for (&id, state) in &rec.index {
            let Some((meta, options, body)) =
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
                options,
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
    ledger::read_ledger(&RealDisk, dir, |p| {
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
    use record::FrameError;

    fn file(torn: bool, damaged: bool, header: bool) -> SegmentReport {
        SegmentReport {
            path: PathBuf::from("seg"),
            shard: Some(0),
            seq: 1,
            len: 4096,
            records: 1,
            end: 128,
            header_error: header.then_some(HeaderError::Crc),
            torn: torn.then_some(TornTail {
                offset: 128,
                bytes: 10,
                reason: FrameError::Kind(9),
            }),
            damaged: if damaged {
                vec![Damage {
                    offset: 128,
                    bytes: 64,
                    frames: 1,
                    reason: FrameError::Kind(9),
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn check_of(segments: Vec<SegmentReport>, ledgers: Vec<SegmentReport>) -> CheckReport {
        CheckReport {
            shards: vec![RecoveryReport {
                segments,
                ..RecoveryReport::default()
            }],
            ledgers,
        }
    }

    #[test]
    fn the_exit_status_tells_clean_from_torn_tails_from_damage() {
        let ok = || file(false, false, false);
        assert_eq!(check_of(vec![ok()], vec![ok()]).exit_code(), 0);
        assert_eq!(
            check_of(vec![ok(), file(true, false, false)], vec![]).exit_code(),
            1
        );
        assert_eq!(
            check_of(vec![ok()], vec![file(true, false, false)]).exit_code(),
            1
        );
        assert_eq!(
            check_of(vec![file(true, true, false)], vec![]).exit_code(),
            4
        );
        assert_eq!(
            check_of(vec![ok()], vec![file(false, false, true)]).exit_code(),
            4
        );
        assert_eq!(
            check_of(vec![file(false, false, true)], vec![ok()]).exit_code(),
            4
        );
    }
}
