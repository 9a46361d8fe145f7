//! Arbitrary bytes as a segment file (after a valid file header): recovery and `spool check`
//! never panic and never return a record that fails its checksum.
//!
//! Runs on a tmpfs when there is one (`/dev/shm`) with 64 KiB segments: recovery's fsyncs and
//! preallocation would otherwise make this the slowest target by far.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringmta::spool::{Shard, ShardConfig};

const SEGMENT: u64 = 64 * 1024;

/// A scratch directory for this process, a valid segment file header and its file name.
fn setup() -> &'static (PathBuf, Vec<u8>, std::ffi::OsString) {
    static SETUP: OnceLock<(PathBuf, Vec<u8>, std::ffi::OsString)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("ringmta-fuzz-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ShardConfig {
            segment_size: SEGMENT,
            ..ShardConfig::new(&dir, 0)
        };
        drop(Shard::open(cfg, 1_800_000_000_000).unwrap());
        let seg = std::fs::read_dir(dir.join("shard-00"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path();
        let header = std::fs::read(&seg).unwrap()[..64].to_vec();
        (dir, header, seg.file_name().unwrap().to_owned())
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, header, name) = setup();
    let shard_dir = dir.join("shard-00");
    let _ = std::fs::remove_dir_all(&shard_dir);
    std::fs::create_dir_all(&shard_dir).unwrap();
    let mut bytes = header.clone();
    bytes.extend_from_slice(&data[..data.len().min(SEGMENT as usize - 64)]);
    bytes.resize(SEGMENT as usize, 0);
    std::fs::write(shard_dir.join(name), &bytes).unwrap();
    let _ = ringmta::spool::check(dir);
    let cfg = ShardConfig {
        segment_size: SEGMENT,
        ..ShardConfig::new(dir, 0)
    };
    if let Ok((shard, _)) = Shard::open(cfg, 1_800_000_000_000) {
        for id in shard.messages().collect::<Vec<_>>() {
            if let Some(v) = shard.message(id) {
                let _ = (v.body.len(), v.meta.recipients.len());
            }
        }
    }
});
