//! The shard against its durability, size and recovery promises, on real files.

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
    let mut msg = NewMessage {
        meta: meta(rcpts),
        options: Default::default(),
        body: &[b"Received: x\r\n", body],
    };
    shard.append_message(&mut msg, 1_000).unwrap().0
}

/// Decodes the frames of a segment file as stored on disk.
fn frames_on_disk(path: &Path) -> Vec<(RecordKind, Vec<u8>, Vec<u8>)> {
    let bytes = segment::read_aligned(&disk::RealDisk, path).unwrap();
    let mut pos = FILE_HEADER_LEN;
    let mut out = Vec::new();
    let fmt = segment::parse_file_header(&bytes, segment::SEGMENT_MAGIC)
        .unwrap()
        .format;
    while let Some(f) = record::decode_frame(fmt, pos as u64, &bytes[pos..]).unwrap() {
        out.push((f.kind, f.meta.to_vec(), f.body.to_vec()));
        pos += f.len;
    }
    out
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let (segs, _) = recovery::list_segments(&disk::RealDisk, &recovery::shard_dir(dir, 0)).unwrap();
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
fn a_messages_options_survive_recovery_next_to_messages_without() {
    let dir = tempfile::tempdir().unwrap();
    let options = MessageOptions {
        expires_at_ms: 61_000,
        priority: 5,
    };
    let (with, without) = {
        let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
        let mut msg = NewMessage {
            meta: meta(1),
            options,
            body: &[b"Subject: code\r\n\r\n123456\r\n"],
        };
        let with = shard.append_message(&mut msg, 1_000).unwrap().0;
        let without = append(&mut shard, 1, b"plain");
        shard.sync().unwrap();
        (with, without)
    };
    let (shard, report) = Shard::open(cfg(dir.path()), 2_000).unwrap();
    assert_eq!(report.messages, 2);
    let view = shard.message(with).unwrap();
    assert_eq!(view.options, options);
    assert_eq!(view.body, b"Subject: code\r\n\r\n123456\r\n");
    let view = shard.message(without).unwrap();
    assert_eq!(view.options, MessageOptions::default());
    assert_eq!(view.body, b"Received: x\r\nplain");
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
    let unknown = QueueId::new(0, 0, 1);
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
    let mut msg = NewMessage {
        meta: meta(1),
        options: Default::default(),
        body: &[&body],
    };
    let mut ids = Vec::new();
    let err = loop {
        match shard.append_message(&mut msg, 1_000) {
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
        shard.append_message(&mut msg, 1_000),
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
    let (id, t) = shard.append_message(&mut msg, 1_000).unwrap();
    assert!(id > ids[3]);
    shard.sync().unwrap();
    assert!(shard.durable_seq() >= t.0);
    // Raising the limit also makes room.
    shard.set_max_bytes(0);
    for _ in 0..10 {
        shard.append_message(&mut msg, 1_000).unwrap();
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
        let mut msg = NewMessage {
            meta: meta(1),
            options: Default::default(),
            body: &[&body],
        };
        let (id, _) = shard
            .append_message(&mut msg, 1_000 + i)
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
    let mut msg = NewMessage {
        meta: meta(1),
        options: Default::default(),
        body: &[&body],
    };
    let mut ids = Vec::new();
    while let Ok((id, _)) = shard.append_message(&mut msg, 1_000) {
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
            &mut NewMessage {
                meta: dsn,
                options: Default::default(),
                body: &[&body],
            },
            3_000,
        )
        .unwrap();
    assert!(matches!(
        shard.append_message(&mut msg, 3_000),
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
    assert_eq!(check.ledgers[0].records, 2);
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
    let mut msg = NewMessage {
        meta: meta(1),
        options: Default::default(),
        body: &[b"x"],
    };
    assert!(matches!(
        shard.append_message(&mut msg, 1),
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

/// Ids recovered from `image` written as the only segment of a spool in `dir`, and the report.
fn recover_image(dir: &Path, path: &Path, image: &[u8]) -> (Vec<QueueId>, RecoveryReport) {
    fs::write(path, image).unwrap();
    let rec = recovery::recover_shard(&disk::RealDisk, dir, 0, Load::Read, false).unwrap();
    let mut ids: Vec<QueueId> = rec.index.keys().copied().collect();
    ids.sort();
    (ids, rec.report)
}

/// A segment of `n` messages with `body_len`-byte bodies of non-zero bytes and one status
/// record after each: the image, the message ids, and each frame's (offset, length, id).
fn damage_fixture(
    dir: &Path,
    n: usize,
    body_len: usize,
) -> (PathBuf, Vec<u8>, Vec<(usize, usize, QueueId)>) {
    let (mut shard, _) = Shard::open(cfg(dir), 1_000).unwrap();
    let mut spans = Vec::new();
    for i in 0..n {
        let body: Vec<u8> = (0..body_len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        let id = append(&mut shard, 1, &body);
        spans.push(id);
        shard
            .append_status(&status(id, 0, StatusKind::Deferred, 2_000))
            .unwrap();
    }
    shard.sync().unwrap();
    let path = segment_paths(dir)[0].clone();
    drop(shard);
    // A restart: the next segment's header counts this one's frames.
    drop(Shard::open(cfg(dir), 3_000).unwrap());
    let image = fs::read(&path).unwrap();
    let rec = recovery::recover_shard(&disk::RealDisk, dir, 0, Load::Read, false).unwrap();
    let seg = &rec.segments[0].seg;
    let frames: Vec<(usize, usize, QueueId)> = (0..seg.record_count() as usize)
        .map(|k| {
            let offsets = seg.frame_offsets();
            let off = offsets[k] as usize;
            let next = offsets
                .get(k + 1)
                .map_or(seg.end() as usize, |&o| o as usize);
            let id = match (seg.message_at(off as u64), seg.status_at(off as u64)) {
                (Some((m, _, _)), _) => QueueId(m.id.to_native()),
                (_, Some(s)) => QueueId(s.id.to_native()),
                _ => unreachable!(),
            };
            (off, next - off, id)
        })
        .collect();
    assert_eq!(frames.len(), 2 * n);
    (path, image, frames)
}

#[test]
fn a_bit_flipped_anywhere_in_a_middle_frame_loses_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let (path, image, frames) = damage_fixture(dir.path(), 5, 300);
    let all: Vec<QueueId> = frames.iter().step_by(2).map(|f| f.2).collect();
    // The third message's frame, header and padding included.
    let (off, len, victim) = frames[4];
    for i in off..off + len {
        let mut bad = image.clone();
        bad[i] ^= 1 << (i % 8);
        let (ids, report) = recover_image(dir.path(), &path, &bad);
        let expected: Vec<QueueId> = all.iter().copied().filter(|&id| id != victim).collect();
        assert_eq!(ids, expected, "flip at byte {} of the frame", i - off);
        let seg = &report.segments[0];
        assert_eq!(seg.torn, None, "flip at byte {}", i - off);
        assert_eq!(seg.damaged.len(), 1, "flip at byte {}", i - off);
        let d = &seg.damaged[0];
        assert_eq!((d.offset, d.bytes, d.frames), (off as u64, len as u64, 1));
        assert_eq!(seg.records, frames.len() as u64 - 1);
        // Its status record (next frame) is read and counted as one for an unknown message.
        assert_eq!(report.unknown_status, 1);
        assert_eq!(report.lost_records(), 1);
    }
    // The same flip in a status frame loses that status record only.
    let (off, _, _) = frames[5];
    let mut bad = image.clone();
    bad[off + 40] ^= 4;
    let (ids, report) = recover_image(dir.path(), &path, &bad);
    assert_eq!(ids, all);
    assert_eq!(report.status_records, 4);
    assert_eq!(report.lost_records(), 1);
    // `spool check` shows where, and says that later records were kept.
    let text = check(dir.path()).unwrap().to_string();
    assert!(text.contains(&format!("damaged at offset {off}")), "{text}");
    assert!(text.contains("1 records lost"), "{text}");
}

#[test]
fn a_zeroed_sector_loses_exactly_the_records_it_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (path, image, frames) = damage_fixture(dir.path(), 12, 3_000);
    let all: Vec<QueueId> = frames.iter().step_by(2).map(|f| f.2).collect();
    let end = frames.last().map(|f| f.0 + f.1).unwrap();
    // Sector 0 holds the file header (and its key): that is the header case, tested apart.
    let mut sectors = 0;
    for s in (4096..end).step_by(4096) {
        let mut bad = image.clone();
        bad[s..s + 4096].fill(0);
        let touched: Vec<usize> = (0..frames.len())
            .filter(|&k| {
                let (o, l, _) = frames[k];
                let (a, b) = (o.max(s), (o + l).min(s + 4096));
                a < b && image[a..b].iter().any(|&x| x != 0)
            })
            .collect();
        let lost_messages: Vec<QueueId> = touched
            .iter()
            .filter(|&&k| k % 2 == 0)
            .map(|&k| frames[k].2)
            .collect();
        let expected: Vec<QueueId> = all
            .iter()
            .copied()
            .filter(|id| !lost_messages.contains(id))
            .collect();
        let (ids, report) = recover_image(dir.path(), &path, &bad);
        assert_eq!(ids, expected, "sector at {s}");
        let seg = &report.segments[0];
        assert_eq!(
            seg.records as usize,
            frames.len() - touched.len(),
            "sector at {s}"
        );
        let seg = &report.segments[0];
        assert_eq!(
            seg.records as usize,
            frames.len() - touched.len(),
            "sector at {s}"
        );
        // Also at the end of the segment: its successor counted its frames.
        assert_eq!(
            report.lost_records() as usize,
            touched.len(),
            "sector at {s}: {report}"
        );
        assert_eq!(seg.torn, None);
        sectors += 1;
    }
    assert!(sectors >= 8, "{sectors} sectors tried");
}

#[test]
fn a_lost_end_of_a_segment_is_damage_when_the_next_segment_counted_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let (path, image, frames) = damage_fixture(dir.path(), 4, 500);
    let all: Vec<QueueId> = frames.iter().step_by(2).map(|f| f.2).collect();
    // Zeros from the third message to the end: a lost write, not a crash (the restart after
    // the appends counted all 8 frames in the next segment's header).
    let (off, _, _) = frames[4];
    let mut bad = image.clone();
    bad[off..].fill(0);
    let (ids, report) = recover_image(dir.path(), &path, &bad);
    assert_eq!(ids, all[..2]);
    let seg = &report.segments[0];
    assert_eq!(seg.torn, None);
    assert_eq!(seg.damaged.len(), 1, "{report}");
    let d = &seg.damaged[0];
    assert_eq!((d.offset as usize, d.frames), (off, 4));
    assert_eq!(d.reason, record::FrameError::MissingTail(4));
    assert!(
        report.to_string().contains("4 frames missing at the end"),
        "{report}"
    );
    // The newest segment has no successor: zeros at its end are the clean end (or a tail).
    let newest = segment_paths(dir.path())[1].clone();
    let rec = recovery::recover_shard(&disk::RealDisk, dir.path(), 0, Load::Read, false).unwrap();
    assert!(rec.report.segments[1].is_clean(), "{newest:?}");
}

#[test]
fn a_segment_of_format_1_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let shard_dir = recovery::shard_dir(dir.path(), 0);
    fs::create_dir_all(&shard_dir).unwrap();
    // A format 1 file header (no key) and frames, as builds before format 2 wrote them.
    let mut image = segment::v1_file_header(segment::SEGMENT_MAGIC, 0, 1).to_vec();
    let id = QueueId::new(0, 0, 1_000);
    let m = MessageMeta {
        id: id.0,
        ..meta(1)
    };
    let at = record::FramePos::default();
    image.extend(record::encode_message(
        record::FrameFormat::V1,
        at,
        &record::archive(&m).unwrap(),
        MessageOptions::default(),
        b"old body",
    ));
    let s = status(id, 0, StatusKind::Delivered, 2_000);
    image.extend(record::encode_frame(
        record::FrameFormat::V1,
        at,
        RecordKind::Status,
        &record::archive(&s).unwrap(),
        &[],
    ));
    image.resize(8192, 0);
    fs::write(shard_dir.join(segment::segment_file_name(1)), &image).unwrap();
    let (shard, report) = Shard::open(cfg(dir.path()), 3_000).unwrap();
    assert_eq!((report.messages, report.status_records), (1, 1));
    assert!(report.damaged().next().is_none(), "{report}");
    assert_eq!(shard.message(id).unwrap().body, b"old body");
    assert!(shard.state(id).unwrap().is_final());
}

#[test]
fn a_frame_copied_into_a_body_is_never_read_as_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(cfg(dir.path()), 1_000).unwrap();
    let first = append(&mut shard, 1, b"the first message");
    shard.sync().unwrap();
    let path = segment_paths(dir.path())[0].clone();
    let on_disk = fs::read(&path).unwrap();
    let (off, len) = {
        let rec =
            recovery::recover_shard(&disk::RealDisk, dir.path(), 0, Load::Read, false).unwrap();
        let seg = &rec.segments[0].seg;
        let off = seg.frame_offsets()[0] as usize;
        (off, seg.end() as usize - off)
    };
    // A body that carries the exact bytes of a real frame of this very file, 16-byte aligned
    // inside the body (which is itself 16-byte aligned), as a resynchronising scan would meet it.
    let mut body = b"Subject: a spool file\r\n\r\n".to_vec();
    let received = b"Received: x\r\n".len();
    while !(received + body.len()).is_multiple_of(16) {
        body.push(b'.');
    }
    body.extend_from_slice(&on_disk[off..off + len]);
    append(&mut shard, 1, &body);
    let last = append(&mut shard, 1, b"the last message");
    shard.sync().unwrap();
    drop(shard);
    let image = fs::read(&path).unwrap();
    // Damage the carrier's header: the scan must look for the next valid header from there.
    let rec = recovery::recover_shard(&disk::RealDisk, dir.path(), 0, Load::Read, false).unwrap();
    let carrier_off = rec.segments[0].seg.frame_offsets()[1] as usize;
    assert!(
        image[carrier_off..]
            .windows(len)
            .any(|w| w == &on_disk[off..off + len]),
        "the copy is in the carrier"
    );
    let mut bad = image.clone();
    bad[carrier_off] ^= 0x40;
    let (ids, report) = recover_image(dir.path(), &path, &bad);
    assert_eq!(ids, [first, last]);
    assert_eq!(report.foreign_or_duplicate, 0, "{report}");
    let d = &report.segments[0].damaged;
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].offset as usize, d[0].frames), (carrier_off, 1));
}
