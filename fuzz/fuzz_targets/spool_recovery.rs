//! Damage anywhere in a segment: recovery and `spool check` never panic, and recovery never
//! returns a record that is not one that was written.
//!
//! Each input writes up to 8 real messages (bodies taken from the input) through the `Shard`
//! API, then overwrites bytes of the segment file at offsets the input picks, or appends the
//! rest of the input as raw bytes after the records. After recovery every message it returns
//! must carry the id, envelope, options and body that were appended under that id (odd-length
//! bodies go with an options block, so both frame layouts are damaged): a record whose
//! bytes were damaged is dropped (its checksum fails), never returned altered.
//!
//! Runs on a tmpfs when there is one (`/dev/shm`) with 64 KiB segments: recovery's fsyncs and
//! preallocation would otherwise make this the slowest target by far.
#![no_main]
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringmta::spool::{MessageMeta, MessageOptions, NewMessage, RecipientMeta, Shard, ShardConfig};

const SEGMENT: u64 = 64 * 1024;
const NOW: u64 = 1_800_000_000_000;

/// A scratch directory for this process.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("ringmta-fuzz-spool-{}", std::process::id()))
    })
}

fn config() -> ShardConfig {
    ShardConfig {
        segment_size: SEGMENT,
        ..ShardConfig::new(dir(), 0)
    }
}

fn meta(sender: &str) -> MessageMeta {
    MessageMeta {
        received_at_ms: NOW,
        reverse_path: sender.to_owned(),
        recipients: vec![RecipientMeta {
            address: "rcpt@example.net".into(),
            ..RecipientMeta::default()
        }],
        ..MessageMeta::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    // Up to 8 messages of up to 255 bytes each, taken from the input.
    let mut rest = rest;
    let mut written: HashMap<u64, (String, MessageOptions, Vec<u8>)> = HashMap::new();
    {
        let (mut shard, _) = Shard::open(config(), NOW).unwrap();
        for i in 0..(count % 9) {
            let Some((&len, tail)) = rest.split_first() else {
                break;
            };
            let n = usize::from(len).min(tail.len());
            let body = tail[..n].to_vec();
            rest = &tail[n..];
            let sender = format!("s{i}@example.org");
            let parts: [&[u8]; 1] = [&body];
            let options = if len % 2 == 1 {
                MessageOptions {
                    expires_at_ms: NOW + u64::from(len),
                    priority: (len % 19) as i8 - 9,
                }
            } else {
                MessageOptions::default()
            };
            let mut new = NewMessage {
                meta: meta(&sender),
                options,
                body: &parts,
            };
            let (id, _) = shard.append_message(&mut new, NOW).unwrap();
            written.insert(id.0, (sender, options, body));
        }
        shard.sync().unwrap();
    }
    // The damage: (offset u16, byte) pairs, or with a leading 0xFF the rest as raw bytes
    // after the written records.
    let seg = std::fs::read_dir(dir.join("shard-00"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && !n.ends_with(".tmp"))
        })
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    if rest.first() == Some(&0xFF) {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(64, |p| p + 1);
        let raw = &rest[1..];
        let n = raw.len().min(bytes.len().saturating_sub(end));
        bytes[end..end + n].copy_from_slice(&raw[..n]);
    } else {
        for pair in rest.chunks_exact(3) {
            let offset = usize::from(u16::from_le_bytes([pair[0], pair[1]]));
            if let Some(b) = bytes.get_mut(offset) {
                *b = pair[2];
            }
        }
    }
    std::fs::write(&seg, &bytes).unwrap();

    let _ = ringmta::spool::check(dir);
    if let Ok((shard, _)) = Shard::open(config(), NOW) {
        for id in shard.messages().collect::<Vec<_>>() {
            let Some(v) = shard.message(id) else {
                continue;
            };
            let Some((sender, options, body)) = written.get(&id.0) else {
                panic!("recovered message {id} was never written");
            };
            assert_eq!(
                v.meta.reverse_path.as_str(),
                sender,
                "{id}: envelope altered"
            );
            assert_eq!(v.options, *options, "{id}: options altered");
            assert_eq!(v.body, &body[..], "{id}: body altered");
        }
    }
});
