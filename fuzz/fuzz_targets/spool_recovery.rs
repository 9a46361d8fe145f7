//! Arbitrary bytes as a segment file (after a valid file header): recovery and `spool check`
//! never panic and never return a record that fails its checksum.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringmta::spool::{Shard, ShardConfig};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    // A real segment to get a valid file header, then the fuzzer's bytes as its frames.
    {
        let cfg = ShardConfig { segment_size: 1 << 20, ..ShardConfig::new(dir.path(), 0) };
        let _ = Shard::open(cfg, 1_800_000_000_000).unwrap();
    }
    let shard_dir = dir.path().join("shard-00");
    for entry in std::fs::read_dir(&shard_dir).unwrap().flatten() {
        let path = entry.path();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = data.len().min(bytes.len() - 64);
        bytes[64..64 + n].copy_from_slice(&data[..n]);
        std::fs::write(&path, &bytes).unwrap();
    }
    let _ = ringmta::spool::check(dir.path());
    let cfg = ShardConfig { segment_size: 1 << 20, ..ShardConfig::new(dir.path(), 0) };
    if let Ok((shard, _)) = Shard::open(cfg, 1_800_000_000_000) {
        for id in shard.messages().collect::<Vec<_>>() {
            if let Some(v) = shard.message(id) {
                let _ = (v.body.len(), v.meta.recipients.len());
            }
        }
    }
});
