//! The application's commit path, driven in memory: no socket, no session, a real shard in a
//! temporary directory and the real group-commit task on a tokio-uring runtime.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::smtp::{BodyType, Mailbox, Notify, Recipient, ReversePath};
use crate::spool::ShardConfig;

/// A one-core application over `dir`, with `extra` TOML appended to the configuration.
fn core(dir: &std::path::Path, extra: &str, max_bytes: u64) -> (Rc<Core>, watch::Sender<bool>) {
    let text = format!(
        "hostname = \"mx.test.example\"\nspool_dir = \"{}\"\nthreads = 1\n{extra}",
        dir.display()
    );
    let config = Arc::new(crate::config::from_toml(&text, "test").unwrap());
    let shared = Arc::new(Shared::build(Arc::clone(&config)).unwrap());
    let shard_config = ShardConfig {
        dir: config.spool_dir.clone(),
        shard: 0,
        segment_size: 1 << 20,
        max_bytes,
        durability: config.spool.durability,
    };
    let (shard, _) = Shard::open(shard_config, 0).unwrap();
    let (stop, shutdown) = watch::channel(false);
    (Core::new(0, shared, shard, shutdown), stop)
}

fn transaction(body: &str) -> Transaction {
    Transaction {
        helo: "client.example".into(),
        esmtp: true,
        peer: SocketAddr::from(([192, 0, 2, 7], 40000)),
        tls: None,
        auth_user: None,
        reverse_path: ReversePath::Mailbox(Mailbox::parse("alice@example.com").unwrap()),
        body_type: BodyType::SevenBit,
        smtputf8: false,
        ret: None,
        envid: None,
        deliver_by: None,
        mt_priority: None,
        recipients: vec![Recipient {
            forward_path: Mailbox::parse("bob@example.net").unwrap(),
            notify: Notify::from_bits(Notify::FAILURE),
            orcpt: None,
        }],
        feedback: false,
        body: body.replace('\n', "\r\n").into_bytes(),
    }
}

const NOW: u64 = 1_800_000_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW)
}

/// Runs `test` on a tokio-uring runtime with the core's group-commit task running.
fn with_commit_task(core: Rc<Core>, test: impl AsyncFnOnce(Rc<Core>)) {
    tokio_uring::start(async move {
        tokio_uring::spawn(Rc::clone(&core).commit_loop());
        test(core).await;
    });
}

#[test]
fn a_commit_is_durable_and_stored_with_its_trace_header() {
    let dir = tempfile::tempdir().unwrap();
    let (core, _stop) = core(dir.path(), "", 0);
    with_commit_task(core, async |core| {
        let id = core
            .commit(transaction("Subject: hi\n\nbody\n"), now())
            .await
            .unwrap();
        let shard = core.shard.borrow();
        // Durable before the 250: the commit returned only once the fdatasync covered it.
        assert_eq!(shard.durable_seq(), shard.appended_seq());
        let view = shard.message(id).unwrap();
        let body = std::str::from_utf8(view.body).unwrap();
        assert!(body.starts_with("Received: from client.example"), "{body}");
        assert!(body.contains("by mx.test.example"), "{body}");
        assert!(body.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{body}");
        assert_eq!(view.meta.received_at_ms, NOW);
        assert_eq!(view.meta.reverse_path.as_str(), "alice@example.com");
        let rcpt = &view.meta.recipients[0];
        assert_eq!(rcpt.address.as_str(), "bob@example.net");
        assert_eq!(rcpt.notify(), Notify::from_bits(Notify::FAILURE));
        assert_eq!(core.metrics.messages_accepted.load(Ordering::Relaxed), 1);
    });
}

#[test]
fn content_refusal_stores_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (core, _stop) = core(dir.path(), "[limits]\nmax_header_size = \"100\"\n", 0);
    with_commit_task(core, async |core| {
        let long = format!("Subject: {}\n\nbody\n", "x".repeat(200));
        let err = core.commit(transaction(&long), now()).await.unwrap_err();
        let CommitError::Rejected(reply) = err else {
            panic!("{err:?}");
        };
        assert_eq!(reply.code, 552, "{reply:?}");
        assert_eq!(core.shard.borrow().messages().count(), 0);
        assert_eq!(core.metrics.messages_accepted.load(Ordering::Relaxed), 0);
        let content = crate::metrics::RejectReason::Content;
        assert_eq!(core.metrics.rejected(content), 1);
    });
}

#[test]
fn a_full_spool_refuses_new_mail() {
    let dir = tempfile::tempdir().unwrap();
    // Below one segment: the first message would need space the spool may not take.
    let (core, _stop) = core(dir.path(), "", 4096);
    with_commit_task(core, async |core| {
        let err = core
            .commit(transaction("Subject: hi\n\nbody\n"), now())
            .await
            .unwrap_err();
        assert_eq!(err, CommitError::SpoolFull);
        let full = crate::metrics::RejectReason::SpoolFull;
        assert_eq!(core.metrics.rejected(full), 1);
    });
}

#[test]
fn concurrent_commits_all_become_durable_with_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (core, _stop) = core(dir.path(), "", 0);
    with_commit_task(core, async |core| {
        let commits: Vec<_> = (0..20)
            .map(|i| {
                let core = Rc::clone(&core);
                tokio_uring::spawn(async move {
                    core.commit(transaction(&format!("Subject: {i}\n\nbody\n")), now())
                        .await
                })
            })
            .collect();
        let mut ids = Vec::new();
        for c in commits {
            ids.push(c.await.unwrap().unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        let shard = core.shard.borrow();
        assert_eq!(shard.durable_seq(), shard.appended_seq());
        assert_eq!(shard.messages().count(), 20);
    });
}
