//! Purging: finished messages past their retention leave their segments for a placeholder in
//! the ledger.

use super::*;

impl Shard {
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
        let mut archives = Vec::new();
        for e in self.segments.iter().filter(|e| chosen.contains(&e.seg.seq)) {
            for id in &e.own {
                if let Some(p) = self.placeholder(*id, now_ms) {
                    let archived = record::archive(&p)
                        .map_err(|source| SpoolError::Encode { id: *id, source })?;
                    archives.push(archived);
                    report.purged.push(*id);
                }
            }
        }
        self.ledger.append(&archives, now_ms)?;
        let mut result = Ok(());
        let mut i = 0;
        while i < self.segments.len() {
            if !chosen.contains(&self.segments[i].seg.seq) {
                i += 1;
                continue;
            }
            let path = self.segments[i].seg.path.clone();
            match self.disk.remove_file(&path) {
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
        disk::sync_dir(&*self.disk, &self.shard_dir).map_err(|source| SpoolError::Io {
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
