//! The shard against power cuts, on a simulated disk (`simdisk.rs`).
//!
//! A random workload (messages, deferrals, final outcomes, group commits as the worker makes
//! them and blocking syncs, idle rotation, purges into the ledger) runs once to count the disk
//! operations it makes; then, for every one of those operations, it runs again on a fresh disk
//! whose power goes just before that operation, and the shard is recovered from what the disk
//! kept: only what completed syncs covered, or that plus random parts of the rest. Recovery is
//! itself cut before each of its own operations and recovered again; and each cut is also played
//! as a crash of the process alone (the page cache survives) followed by a power cut after the
//! restart's recovery. At every cut:
//!
//! - every record whose ticket a completed sync covered (a 250, a recorded outcome) is recovered
//!   with its bytes, or, when a purge had begun, its message (all of whose recipients had a
//!   final outcome) is in the ledger;
//! - a purge that returned `Ok` stays done: its messages are in the ledger and its segment files
//!   are gone;
//! - nothing is recovered that was not written as it reads (no corrupt message or outcome);
//! - recovery never fails or panics, never reports a lost segment end, and with nothing but
//!   synced data kept reports no damage at all;
//! - the recovered shard takes new mail.
//!
//! The workload itself must run without an error until the power goes.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::simdisk::{Keep, SimDisk};
use super::tests::meta;
use super::*;

const SPOOL: &str = "/spool";

fn sim_cfg() -> ShardConfig {
    ShardConfig {
        // A few messages per segment: rotation happens all the time.
        segment_size: 8 << 10,
        ..ShardConfig::new(SPOOL, 0)
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A message with 1 or 2 recipients and a body of this many bytes.
    Message { rcpts: usize, body: usize },
    /// A deferral of the first recipient of the `pick`-th message (mod the count) not final.
    Defer { pick: usize },
    /// Final outcomes for every recipient of the `pick`-th message not final.
    Finish { pick: usize, failed: bool },
    /// The worker's group commit: read `appended_seq` and the active file together, fdatasync
    /// that file, `mark_durable`; with `racing`, a message is appended between the read and the
    /// fdatasync (it must not count as durable).
    Commit { racing: bool },
    /// `Shard::sync`: a blocking fdatasync of everything appended.
    Sync,
    /// Seal the active segment if every message is final.
    Rotate,
    /// Purge every segment whose messages are all final.
    Purge,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..=2usize, 0..3000usize).prop_map(|(rcpts, body)| Step::Message { rcpts, body }),
        2 => any::<usize>().prop_map(|pick| Step::Defer { pick }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, failed)| Step::Finish { pick, failed }),
        2 => any::<bool>().prop_map(|racing| Step::Commit { racing }),
        1 => Just(Step::Sync),
        2 => Just(Step::Rotate),
        2 => Just(Step::Purge),
    ]
}

/// A message appended: id, ticket, recipients, reverse path, body.
type Appended = (QueueId, u64, usize, String, Vec<u8>);

/// What the workload did before the power went.
#[derive(Debug, Default)]
struct Done {
    messages: Vec<Appended>,
    /// Each status appended: message, recipient, kind, attempt, ticket, reply.
    statuses: Vec<(QueueId, u32, StatusKind, u32, u64, String)>,
    /// Messages a purge that returned `Ok` removed.
    purged: HashSet<QueueId>,
    /// Segment files a purge that returned `Ok` unlinked.
    unlinked: Vec<PathBuf>,
    /// The shard's durable sequence number when the power went.
    durable: u64,
    /// An error while the disk still worked: a defect, whatever the cut.
    unexpected: Option<String>,
}

/// Runs `steps` on a shard of `disk` until the first error, which must be the power going.
fn run(disk: &SimDisk, steps: &[Step]) -> Done {
    let mut done = Done::default();
    let mut shard = match Shard::open_on(Arc::new(disk.clone()), sim_cfg(), 1_000) {
        Ok((shard, _)) => shard,
        Err(e) => {
            if !disk.is_dead() {
                done.unexpected = Some(format!("open: {e}"));
            }
            return done;
        }
    };
    let mut now = 1_000;
    for s in steps {
        now += 1;
        let r = apply(&mut shard, &mut done, s, now);
        done.durable = shard.durable_seq();
        if let Err(e) = r {
            if !disk.is_dead() {
                done.unexpected = Some(format!("{s:?}: {e}"));
            }
            break;
        }
    }
    done
}

fn append(shard: &mut Shard, done: &mut Done, rcpts: usize, len: usize, now: u64) -> R {
    let i = done.messages.len();
    let body: Vec<u8> = (0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect();
    let mut m = meta(rcpts);
    m.reverse_path = format!("m{i}@example.com");
    let mut msg = NewMessage {
        meta: m.clone(),
        options: Default::default(),
        body: &[&body],
    };
    let (id, t) = shard.append_message(&mut msg, now)?;
    done.messages.push((id, t.0, rcpts, m.reverse_path, body));
    Ok(())
}

/// Appends an outcome for one recipient: its next attempt.
fn outcome(
    shard: &mut Shard,
    done: &mut Done,
    (id, rcpt): (QueueId, u32),
    kind: StatusKind,
    now: u64,
) -> R {
    let attempt = shard
        .state(id)
        .map_or(0, |st| st.recipients[rcpt as usize].attempts)
        + 1;
    let reply = format!("{kind:?} {id} {rcpt} {attempt}");
    let rec = StatusRecord {
        id: id.0,
        rcpt,
        kind: kind as u8,
        attempt,
        at_ms: now,
        next_attempt_ms: now + 1,
        reply: reply.clone(),
        remote: String::new(),
        category: String::new(),
    };
    let t = shard.append_status(&rec)?;
    done.statuses.push((id, rcpt, kind, attempt, t.0, reply));
    Ok(())
}

type R = Result<(), SpoolError>;

/// The group commit as `worker::commit_loop` makes it, on the shard's disk.
fn commit(shard: &mut Shard, done: &mut Done, racing: bool, now: u64) -> R {
    let target = shard.appended_seq();
    let io = |source| SpoolError::Io {
        op: "fdatasync",
        path: PathBuf::new(),
        source,
    };
    let file = shard.active_disk_file().try_clone().map_err(io)?;
    if racing {
        append(shard, done, 1, 100, now)?;
    }
    match file.sync_data() {
        Ok(()) => {
            shard.mark_durable(target);
            Ok(())
        }
        Err(e) => {
            shard.mark_sync_failed();
            Err(io(e))
        }
    }
}

fn apply(shard: &mut Shard, done: &mut Done, s: &Step, now: u64) -> R {
    let open: Vec<QueueId> = done
        .messages
        .iter()
        .map(|m| m.0)
        .filter(|id| shard.state(*id).is_some_and(|st| !st.is_final()))
        .collect();
    match *s {
        Step::Message { rcpts, body } => append(shard, done, rcpts, body, now),
        Step::Defer { pick } if !open.is_empty() => {
            let id = open[pick % open.len()];
            let rcpt = shard.state(id).map_or(0, |st| {
                st.recipients
                    .iter()
                    .position(|r| !r.is_final())
                    .unwrap_or(0)
            });
            outcome(shard, done, (id, rcpt as u32), StatusKind::Deferred, now)
        }
        Step::Finish { pick, failed } if !open.is_empty() => {
            let id = open[pick % open.len()];
            let kind = if failed {
                StatusKind::Failed
            } else {
                StatusKind::Delivered
            };
            let n = shard.state(id).map_or(0, |st| st.recipients.len());
            (0..n as u32)
                .filter(|&i| {
                    shard
                        .state(id)
                        .is_some_and(|st| !st.recipients[i as usize].is_final())
                })
                .collect::<Vec<_>>()
                .into_iter()
                .try_for_each(|i| outcome(shard, done, (id, i), kind, now))
        }
        Step::Defer { .. } | Step::Finish { .. } => Ok(()),
        Step::Commit { racing } => commit(shard, done, racing, now),
        Step::Sync => shard.sync(),
        Step::Rotate => shard.rotate_if_settled().map(|_| ()),
        Step::Purge => shard.purge(now, 0).map(|report| {
            done.purged.extend(report.purged);
            done.unlinked.extend(report.removed);
        }),
    }
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

/// How far the disk got before the cut being checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The workload ran on it; no recovery yet.
    Workload,
    /// A recovery started on it, too.
    Recovery,
}

/// Recovers the shard from what `back` kept after a cut and checks it against what was done.
fn check_recovery(
    back: &SimDisk,
    keep: Keep,
    done: &Done,
    stage: Stage,
) -> Result<(), TestCaseError> {
    // Only before any recovery: a recovery may create a segment under a purged one's name (seq 1
    // again when nothing is left). The purged messages themselves are checked below either way.
    for path in done.unlinked.iter().filter(|_| stage == Stage::Workload) {
        prop_assert!(
            back.kind(path).is_none(),
            "{} is back after the purge that unlinked it returned",
            path.display()
        );
    }
    // On a copy: the checks below write to it, and callers cut `back` again.
    let back = &back.copy();
    let (mut shard, report) = Shard::open_on(Arc::new(back.clone()), sim_cfg(), 5_000)
        .map_err(|e| fail(format!("recovery failed: {e}")))?;
    let mut ledger = HashSet::new();
    let ledgers = ledger::read_ledger(back, Path::new(SPOOL), |p| {
        ledger.insert(QueueId(p.id.to_native()));
    })
    .map_err(|e| fail(format!("ledger unreadable: {e}")))?;

    for s in &report.segments {
        for d in &s.damaged {
            prop_assert!(
                !matches!(d.reason, record::FrameError::MissingTail(_)),
                "a segment end was lost: {s}"
            );
        }
        if keep == Keep::Synced {
            prop_assert!(s.is_clean(), "only synced data was kept, yet: {s}");
        }
    }
    if keep == Keep::Synced {
        for l in &ledgers {
            prop_assert!(l.is_clean(), "only synced data was kept, yet: {l}");
        }
    }

    // Messages: every acknowledged one is there, as written, unless purged; nothing else is.
    let finished = |id: QueueId, rcpts: usize| {
        (0..rcpts as u32).all(|i| {
            done.statuses
                .iter()
                .any(|s| s.0 == id && s.1 == i && s.2.is_final())
        })
    };
    let appended: HashMap<QueueId, &Appended> = done.messages.iter().map(|m| (m.0, m)).collect();
    for id in &ledger {
        let Some(m) = appended.get(id) else {
            return Err(fail(format!("{id} in the ledger, never appended")));
        };
        prop_assert!(finished(*id, m.2), "{id} in the ledger before it was final");
    }
    for (id, ticket, ..) in &done.messages {
        if done.purged.contains(id) {
            prop_assert!(shard.message(*id).is_none(), "{id} back after its purge");
            prop_assert!(
                ledger.contains(id),
                "{id} was purged but is not in the ledger"
            );
        } else if *ticket <= done.durable && !ledger.contains(id) {
            prop_assert!(
                shard.message(*id).is_some(),
                "{id} was acknowledged (ticket {ticket} <= durable {}) and is lost",
                done.durable
            );
        }
    }
    for id in shard.messages().collect::<Vec<_>>() {
        let Some((_, _, rcpts, rp, body)) = appended.get(&id) else {
            return Err(fail(format!("{id} recovered, never appended")));
        };
        let v = shard.message(id).expect("indexed messages are readable");
        prop_assert_eq!(v.meta.id.to_native(), id.0);
        prop_assert_eq!(v.meta.reverse_path.as_str(), rp.as_str());
        prop_assert_eq!(v.meta.recipients.len(), *rcpts);
        prop_assert_eq!(v.body, &body[..], "{} recovered with another body", id);
    }

    // Outcomes: every acknowledged one is there; every one there was written as it reads.
    let written: HashMap<(QueueId, u32, u32), (StatusKind, &str)> = done
        .statuses
        .iter()
        .map(|s| ((s.0, s.1, s.3), (s.2, s.5.as_str())))
        .collect();
    for (id, rcpt, kind, attempt, ticket, _) in &done.statuses {
        let Some(st) = shard.state(*id) else {
            // Purged, or not acknowledged with its message (checked above).
            continue;
        };
        let r = &st.recipients[*rcpt as usize];
        if *ticket <= done.durable {
            prop_assert!(
                r.attempts >= *attempt,
                "{id} rcpt {rcpt} lost attempt {attempt}"
            );
            if kind.is_final() {
                prop_assert_eq!(r.kind, Some(*kind), "{} rcpt {} lost its outcome", id, rcpt);
            }
        }
    }
    for id in shard.messages().collect::<Vec<_>>() {
        let st = shard.state(id).expect("indexed").clone();
        for (i, r) in st.recipients.iter().enumerate() {
            let Some(at) = r.last_status else {
                prop_assert_eq!(r.attempts, 0, "{} rcpt {}: attempts with no record", id, i);
                continue;
            };
            let rec = shard
                .status_record(at)
                .ok_or_else(|| fail(format!("{id} rcpt {i}: last status unreadable")))?;
            let key = (id, i as u32, rec.attempt.to_native());
            let Some((kind, reply)) = written.get(&key) else {
                return Err(fail(format!(
                    "{id} rcpt {i}: outcome {key:?} never written"
                )));
            };
            prop_assert_eq!(rec.id.to_native(), id.0);
            prop_assert_eq!(rec.kind, *kind as u8);
            prop_assert_eq!(rec.reply.as_str(), *reply);
            prop_assert_eq!(r.attempts, rec.attempt.to_native());
        }
    }

    // The recovered spool takes new mail and makes it durable.
    let mut msg = NewMessage {
        meta: meta(1),
        options: Default::default(),
        body: &[b"after the cut"],
    };
    let appended = shard
        .append_message(&mut msg, 6_000)
        .and_then(|_| shard.sync());
    prop_assert!(appended.is_ok(), "after recovery: {:?}", appended.err());
    Ok(())
}

/// Recovery of `back` cut before each of its own operations, then recovered again.
fn cut_recovery(back: &SimDisk, seed: u64, done: &Done) -> Result<(), TestCaseError> {
    let probe = back.copy();
    let _ = Shard::open_on(Arc::new(probe.clone()), sim_cfg(), 5_000);
    for j in 0..probe.ops() {
        let again = back.copy();
        again.die_after(j);
        if let Err(e) = Shard::open_on(Arc::new(again.clone()), sim_cfg(), 5_000) {
            prop_assert!(again.is_dead(), "recovery failed on a working disk: {e}");
        }
        for keep in [Keep::Synced, Keep::Some(seed ^ j)] {
            check_recovery(&again.power_cut(keep), keep, done, Stage::Recovery)
                .map_err(|e| fail(format!("recovery cut before its op {j}, {keep:?}: {e}")))?;
        }
    }
    Ok(())
}

/// The workload cut before each of its disk operations in turn; each cut recovered from the
/// synced state and from `seeds` random mixes, and its recovery cut in turn.
fn every_cut(steps: &[Step], seeds: u64) -> Result<(), TestCaseError> {
    let whole = SimDisk::new();
    let full = run(&whole, steps);
    prop_assert!(
        full.unexpected.is_none(),
        "without a cut: {:?}",
        full.unexpected
    );
    let total = whole.ops();
    // One line per workload for the long form's tally (loadtest/durability.sh disk-model).
    eprintln!(
        "power model: {} cuts, {} messages ({} acknowledged), {} outcomes, {} purged",
        total + 1,
        full.messages.len(),
        full.messages.iter().filter(|m| m.1 <= full.durable).count(),
        full.statuses.len(),
        full.purged.len()
    );
    for k in 0..=total {
        let disk = SimDisk::new();
        disk.die_after(k);
        let done = run(&disk, steps);
        let at = |keep: Keep| format!("cut before op {k}/{total}, {keep:?}");
        prop_assert!(
            done.unexpected.is_none(),
            "{}: {:?}",
            at(Keep::Synced),
            done.unexpected
        );
        if k == total {
            prop_assert_eq!(done.messages.len(), full.messages.len(), "replay differs");
        }
        let back = disk.power_cut(Keep::Synced);
        check_recovery(&back, Keep::Synced, &done, Stage::Workload)
            .map_err(|e| fail(format!("{}: {e}", at(Keep::Synced))))?;
        cut_recovery(&back, k, &done).map_err(|e| fail(format!("{}: {e}", at(Keep::Synced))))?;
        // The process dies instead (the page cache survives), and the power after its restart:
        // whatever that recovery read must be on disk before anything comes to depend on it.
        let crashed = disk.copy();
        if let Err(e) = Shard::open_on(Arc::new(crashed.clone()), sim_cfg(), 5_000) {
            return Err(fail(format!(
                "{}, process crash: recovery failed: {e}",
                at(Keep::Synced)
            )));
        }
        check_recovery(
            &crashed.power_cut(Keep::Synced),
            Keep::Synced,
            &done,
            Stage::Recovery,
        )
        .map_err(|e| {
            fail(format!(
                "{}, process crash then power: {e}",
                at(Keep::Synced)
            ))
        })?;
        for seed in 0..seeds {
            let keep = Keep::Some(k * 1_000 + seed);
            check_recovery(&disk.power_cut(keep), keep, &done, Stage::Workload)
                .map_err(|e| fail(format!("{}: {e}", at(keep))))?;
        }
    }
    Ok(())
}

/// Workloads per run: 48, or `PROPTEST_CASES` (the long form in docs/security.md).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn a_power_cut_at_any_disk_operation_keeps_every_acknowledged_record(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        every_cut(&steps, 2)?;
    }
}

/// A fixed workload that goes through every kind of step, so that the property holds on at
/// least one run with rotation, purge and a ledger whatever proptest generates.
#[test]
fn a_power_cut_during_rotation_purge_and_ledger_writes_keeps_every_acknowledged_record() {
    let mut steps = Vec::new();
    for i in 0..6 {
        steps.push(Step::Message {
            rcpts: 1 + i % 2,
            body: 2500,
        });
        steps.push(Step::Commit { racing: i == 2 });
        steps.push(Step::Defer { pick: i });
    }
    for i in 0..7 {
        steps.push(Step::Finish {
            pick: i,
            failed: i == 3,
        });
    }
    steps.extend([Step::Sync, Step::Rotate, Step::Purge]);
    steps.push(Step::Message {
        rcpts: 1,
        body: 100,
    });
    steps.extend([
        Step::Sync,
        Step::Finish {
            pick: 0,
            failed: false,
        },
        Step::Rotate,
        Step::Purge,
    ]);

    let whole = SimDisk::new();
    let done = run(&whole, &steps);
    assert!(done.unexpected.is_none(), "{:?}", done.unexpected);
    assert_eq!(done.messages.len(), 8, "with the racing commit's message");
    assert_eq!(done.purged.len(), 8, "the workload purges everything");
    every_cut(&steps, 4).unwrap();
}
