//! The shard against power cuts, on a simulated disk (`simdisk.rs`).
//!
//! A random workload (messages, deferrals, final outcomes, syncs, idle rotation, purges into the
//! ledger) runs once to count the disk operations it makes; then, for every one of those
//! operations, it runs again on a fresh disk whose power goes just before that operation, and
//! the shard is recovered from what the disk kept: only what completed syncs covered, or any
//! subset of the rest besides. At every cut:
//!
//! - every record whose ticket a completed sync covered (a 250, a recorded outcome) is recovered
//!   intact, or its message is in the ledger when a purge had begun;
//! - a purge that returned `Ok` stays done: its messages are in the ledger and its segment files
//!   are gone;
//! - nothing is recovered that was not written as it reads (no corrupt message or outcome);
//! - recovery never fails or panics, never reports a lost segment end, and with nothing but
//!   synced data kept reports no damage at all;
//! - the recovered shard takes new mail.

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
    /// The group commit: fdatasync of the active segment.
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
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, failed)| Step::Finish { pick, failed }),
        3 => Just(Step::Sync),
        1 => Just(Step::Rotate),
        1 => Just(Step::Purge),
    ]
}

/// What the workload did before the power went.
#[derive(Debug, Default)]
struct Done {
    /// Each message appended: its ticket, recipients and body.
    messages: Vec<(QueueId, u64, usize, Vec<u8>)>,
    /// Each status appended: message, recipient, kind, attempt, ticket.
    statuses: Vec<(QueueId, u32, StatusKind, u32, u64)>,
    /// Messages a purge that returned `Ok` removed.
    purged: HashSet<QueueId>,
    /// Segment files a purge that returned `Ok` unlinked.
    unlinked: Vec<PathBuf>,
    /// The shard's durable sequence number when the power went.
    durable: u64,
}

fn body_of(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect()
}

/// Runs `steps` on a shard of `disk` until the first error (the power went).
fn run(disk: &SimDisk, steps: &[Step]) -> Done {
    let mut done = Done::default();
    let Ok((mut shard, _)) = Shard::open_on(Arc::new(disk.clone()), sim_cfg(), 1_000) else {
        return done;
    };
    let mut now = 1_000;
    for s in steps {
        now += 1;
        let ok = apply(&mut shard, &mut done, s, now);
        done.durable = shard.durable_seq();
        if !ok {
            break;
        }
    }
    done
}

/// One step; `false` once the disk failed.
fn apply(shard: &mut Shard, done: &mut Done, s: &Step, now: u64) -> bool {
    let open: Vec<QueueId> = done
        .messages
        .iter()
        .map(|m| m.0)
        .filter(|id| shard.state(*id).is_some_and(|st| !st.is_final()))
        .collect();
    let r = match *s {
        Step::Message { rcpts, body } => {
            let body = body_of(done.messages.len(), body);
            let msg = NewMessage {
                meta: meta(rcpts),
                options: Default::default(),
                body: &[&body],
            };
            shard.append_message(&msg, now).map(|(id, t)| {
                done.messages.push((id, t.0, rcpts, body.clone()));
            })
        }
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
        Step::Sync => shard.sync(),
        Step::Rotate => shard.rotate_if_settled().map(|_| ()),
        Step::Purge => shard.purge(now, 0).map(|report| {
            done.purged.extend(report.purged);
            done.unlinked.extend(report.removed);
        }),
    };
    r.is_ok()
}

/// Appends an outcome for one recipient: its next attempt.
fn outcome(
    shard: &mut Shard,
    done: &mut Done,
    (id, rcpt): (QueueId, u32),
    kind: StatusKind,
    now: u64,
) -> Result<(), SpoolError> {
    let attempt = shard
        .state(id)
        .map_or(0, |st| st.recipients[rcpt as usize].attempts)
        + 1;
    let rec = StatusRecord {
        id: id.0,
        rcpt,
        kind: kind as u8,
        attempt,
        at_ms: now,
        next_attempt_ms: now + 1,
        reply: format!("{kind:?} {rcpt} {attempt}"),
        remote: String::new(),
        category: String::new(),
    };
    let t = shard.append_status(&rec)?;
    done.statuses.push((id, rcpt, kind, attempt, t.0));
    Ok(())
}

/// Recovers the shard from what `disk` kept after a cut and checks it against what was done.
fn check_recovery(back: &SimDisk, keep: Keep, done: &Done) -> Result<(), TestCaseError> {
    // Before recovery, which may create a segment under a purged one's name (seq 1 again when
    // nothing is left).
    for path in &done.unlinked {
        prop_assert!(
            back.kind(path).is_none(),
            "{} is back after the purge that unlinked it returned",
            path.display()
        );
    }

    let (mut shard, report) = match Shard::open_on(Arc::new(back.clone()), sim_cfg(), 5_000) {
        Ok(r) => r,
        Err(e) => return Err(TestCaseError::fail(format!("recovery failed: {e}"))),
    };
    let mut ledger = HashSet::new();
    let ledgers = ledger::read_ledger(back, Path::new(SPOOL), |p| {
        ledger.insert(QueueId(p.id.to_native()));
    })
    .map_err(|e| TestCaseError::fail(format!("ledger unreadable: {e}")))?;

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

    let appended: HashMap<QueueId, &(QueueId, u64, usize, Vec<u8>)> =
        done.messages.iter().map(|m| (m.0, m)).collect();
    for (id, ticket, rcpts, body) in &done.messages {
        let acked = *ticket <= done.durable;
        let view = shard.message(*id);
        if done.purged.contains(id) {
            prop_assert!(view.is_none(), "{id} came back after its purge returned");
            prop_assert!(
                ledger.contains(id),
                "{id} was purged but is not in the ledger"
            );
        } else if acked && !ledger.contains(id) {
            let Some(v) = view else {
                return Err(TestCaseError::fail(format!(
                    "{id} was acknowledged (ticket {ticket} <= durable {}) and is lost",
                    done.durable
                )));
            };
            prop_assert_eq!(v.body, &body[..], "{} body", id);
            prop_assert_eq!(v.meta.recipients.len(), *rcpts);
        }
    }
    for id in shard.messages().collect::<Vec<_>>() {
        let Some((_, _, rcpts, body)) = appended.get(&id) else {
            return Err(TestCaseError::fail(format!(
                "{id} recovered, never appended"
            )));
        };
        let v = shard.message(id).expect("indexed messages are readable");
        prop_assert_eq!(v.body, &body[..], "{} recovered with another body", id);
        prop_assert_eq!(v.meta.recipients.len(), *rcpts);
    }

    // Outcomes: every acknowledged one is there; nothing is there that was not appended.
    let mut last: HashMap<(QueueId, u32), (StatusKind, u32)> = HashMap::new();
    for &(id, rcpt, kind, attempt, ticket) in &done.statuses {
        let Some(st) = shard.state(id) else { continue };
        let r = &st.recipients[rcpt as usize];
        if ticket <= done.durable {
            if kind.is_final() {
                prop_assert_eq!(r.kind, Some(kind), "{} rcpt {} lost its outcome", id, rcpt);
            } else {
                prop_assert!(r.attempts >= attempt, "{id} rcpt {rcpt} lost a deferral");
            }
        }
        last.insert((id, rcpt), (kind, attempt));
    }
    for id in shard.messages().collect::<Vec<_>>() {
        let st = shard.state(id).expect("indexed");
        for (i, r) in st.recipients.iter().enumerate() {
            let written = last.get(&(id, i as u32));
            prop_assert!(
                r.attempts <= written.map_or(0, |w| w.1),
                "{id} rcpt {i}: {} attempts recovered, fewer written",
                r.attempts
            );
            if r.is_final() {
                let k = done
                    .statuses
                    .iter()
                    .any(|s| s.0 == id && s.1 == i as u32 && Some(s.2) == r.kind);
                prop_assert!(k, "{id} rcpt {i}: outcome {:?} never written", r.kind);
            }
        }
    }

    // The recovered spool takes new mail and makes it durable.
    let msg = NewMessage {
        meta: meta(1),
        options: Default::default(),
        body: &[b"after the cut"],
    };
    let appended = shard.append_message(&msg, 6_000).and_then(|_| shard.sync());
    prop_assert!(appended.is_ok(), "after recovery: {:?}", appended.err());
    Ok(())
}

/// The workload cut before each of its disk operations in turn (`seeds` subsets kept for each
/// in the second mode).
fn every_cut(steps: &[Step], seeds: u64) -> Result<(), TestCaseError> {
    let whole = SimDisk::new();
    let full = run(&whole, steps);
    let total = whole.ops();
    for k in 0..=total {
        let disk = SimDisk::new();
        disk.die_after(k);
        let done = run(&disk, steps);
        if k == total {
            prop_assert_eq!(done.messages.len(), full.messages.len(), "replay differs");
        }
        check_recovery(&disk.power_cut(Keep::Synced), Keep::Synced, &done).map_err(|e| {
            TestCaseError::fail(format!("cut before op {k}/{total}, synced only: {e}"))
        })?;
        for seed in 0..seeds {
            let keep = Keep::Some(k * 1_000 + seed + 1);
            check_recovery(&disk.power_cut(keep), keep, &done).map_err(|e| {
                TestCaseError::fail(format!("cut before op {k}/{total}, {keep:?}: {e}"))
            })?;
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
        steps.push(Step::Sync);
        steps.push(Step::Defer { pick: i });
    }
    for i in 0..6 {
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
    assert_eq!(done.messages.len(), 7);
    assert!(
        done.purged.len() == 7,
        "the workload purges everything: {:?}",
        done.purged
    );
    every_cut(&steps, 4).unwrap();
}
