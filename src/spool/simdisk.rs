//! A simulated disk that can lose power (tests only).
//!
//! Every file and directory has two states: *live*, what reads see, and *durable*, what the
//! last completed sync of it covered: `sync_data`/`sync_all` of a file makes its contents
//! durable, `sync_all` of a directory its entries (creations, renames, links, unlinks). Nothing
//! else makes anything durable, which is what POSIX promises and no more: a new file whose
//! directory was not synced may vanish, however often the file itself was synced.
//!
//! [`SimDisk::die_after`] makes the disk fail every mutating operation after the next `n`
//! (the power is gone; a sync cut at that point never completes). [`SimDisk::power_cut`] then
//! returns the disk as it comes back: with [`Keep::Synced`] exactly the durable state; with
//! [`Keep::Some`] the durable state plus a random part of what came after it, since a real disk
//! may write back any part of its cache, in any order, before the power goes: each 512-byte
//! sector of each unsynced write (so a sector written twice may come back in any of its
//! versions, and a file may end in the middle of a write), each unsynced truncation, and each
//! directory entry either as written or as last synced. Directory entries are chosen one by one,
//! so a rename may come back under both names or neither, which is harsher than ext4, XFS or
//! btrfs (their renames are atomic) and can only make a test fail, never pass.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use memmap2::Mmap;

use super::disk::{Disk, DiskFile, Kind, Mode};

/// Granularity of what a power cut keeps of a file's unsynced writes.
const SECTOR: usize = 512;

/// What a power cut keeps of the writes no sync covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Nothing: the disk holds exactly what completed syncs covered.
    Synced,
    /// Any subset, chosen from this seed.
    Some(u64),
}

/// A change to a file since its last sync.
#[derive(Clone, Debug)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum Node {
    File {
        live: Vec<u8>,
        durable: Vec<u8>,
        /// What happened to `durable` to make `live`, in order.
        since: Vec<Change>,
    },
    Dir {
        live: BTreeMap<String, usize>,
        durable: BTreeMap<String, usize>,
    },
}

#[derive(Debug)]
struct State {
    /// Indexed by inode number; 0 is the root directory.
    nodes: Vec<Node>,
    /// Mutating operations performed.
    ops: u64,
    /// Mutating operations allowed before the power goes.
    limit: Option<u64>,
}

/// An in-memory disk; clones share it.
#[derive(Clone, Debug)]
pub struct SimDisk(Arc<Mutex<State>>);

fn eio() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found() -> io::Error {
    io::ErrorKind::NotFound.into()
}

fn components(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_str().ok_or_else(not_found)?.to_owned()),
            _ => return Err(io::ErrorKind::InvalidInput.into()),
        }
    }
    Ok(out)
}

impl State {
    fn lookup(&self, path: &Path) -> io::Result<usize> {
        let mut ino = 0;
        for name in components(path)? {
            match &self.nodes[ino] {
                Node::Dir { live, .. } => ino = *live.get(&name).ok_or_else(not_found)?,
                Node::File { .. } => return Err(not_found()),
            }
        }
        Ok(ino)
    }

    /// The directory holding `path` and the last name of `path`.
    fn parent(&self, path: &Path) -> io::Result<(usize, String)> {
        let mut names = components(path)?;
        let name = names
            .pop()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let dir: std::path::PathBuf = std::iter::once("/".to_owned()).chain(names).collect();
        let ino = self.lookup(&dir)?;
        match self.nodes[ino] {
            Node::Dir { .. } => Ok((ino, name)),
            Node::File { .. } => Err(not_found()),
        }
    }

    fn entries(&mut self, dir: usize) -> &mut BTreeMap<String, usize> {
        match &mut self.nodes[dir] {
            Node::Dir { live, .. } => live,
            Node::File { .. } => unreachable!("parent() returns directories only"),
        }
    }

    fn file(&mut self, ino: usize) -> io::Result<&mut Vec<u8>> {
        match &mut self.nodes[ino] {
            Node::File { live, .. } => Ok(live),
            Node::Dir { .. } => Err(io::ErrorKind::IsADirectory.into()),
        }
    }

    /// Applies a change to a file's live contents and remembers it until the next sync.
    fn change(&mut self, ino: usize, c: Change) -> io::Result<()> {
        let Node::File { live, since, .. } = &mut self.nodes[ino] else {
            return Err(io::ErrorKind::IsADirectory.into());
        };
        self.ops += 1;
        apply(live, &c);
        since.push(c);
        Ok(())
    }

    /// Counts one mutating operation; fails once the power is gone.
    fn op(&mut self) -> io::Result<()> {
        self.check()?;
        self.ops += 1;
        Ok(())
    }

    /// Fails once the power is gone.
    fn check(&self) -> io::Result<()> {
        if self.limit.is_some_and(|l| self.ops >= l) {
            return Err(eio());
        }
        Ok(())
    }

    fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }
}

impl SimDisk {
    /// An empty disk: the root directory only.
    pub fn new() -> Self {
        let root = Node::Dir {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        SimDisk(Arc::new(Mutex::new(State {
            nodes: vec![root],
            ops: 0,
            limit: None,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        self.state().ops
    }

    /// Whether the power went (every mutating operation fails).
    pub fn is_dead(&self) -> bool {
        self.state().check().is_err()
    }

    /// The power goes after `n` more mutating operations: every later one fails.
    pub fn die_after(&self, n: u64) {
        let mut st = self.state();
        st.limit = Some(st.ops + n);
    }

    /// An independent copy, as it is now (with the power on).
    pub fn copy(&self) -> SimDisk {
        let st = self.state();
        SimDisk(Arc::new(Mutex::new(State {
            nodes: st.nodes.clone(),
            ops: 0,
            limit: None,
        })))
    }

    /// The disk as it comes back after the power went now: see [`Keep`].
    pub fn power_cut(&self, keep: Keep) -> SimDisk {
        let st = self.state();
        let mut rng = match keep {
            Keep::Synced => None,
            Keep::Some(seed) => Some(Rng::new(seed)),
        };
        let nodes = st
            .nodes
            .iter()
            .map(|n| match n {
                Node::File { durable, since, .. } => {
                    let kept = match &mut rng {
                        None => durable.clone(),
                        Some(r) => replay_some(durable, since, r),
                    };
                    Node::File {
                        live: kept.clone(),
                        durable: kept,
                        since: Vec::new(),
                    }
                }
                Node::Dir { live, durable } => {
                    let kept = match &mut rng {
                        None => durable.clone(),
                        Some(r) => mix_entries(live, durable, r),
                    };
                    Node::Dir {
                        live: kept.clone(),
                        durable: kept,
                    }
                }
            })
            .collect();
        SimDisk(Arc::new(Mutex::new(State {
            nodes,
            ops: 0,
            limit: None,
        })))
    }
}

fn apply(data: &mut Vec<u8>, c: &Change) {
    match c {
        Change::Write(offset, bytes) => {
            let at = *offset as usize;
            if data.len() < at + bytes.len() {
                data.resize(at + bytes.len(), 0);
            }
            data[at..at + bytes.len()].copy_from_slice(bytes);
        }
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// A file after a cut that kept a random part of its unsynced changes: each sector of each
/// write, and each truncation, applied or not, in their order.
fn replay_some(durable: &[u8], since: &[Change], r: &mut Rng) -> Vec<u8> {
    let mut data = durable.to_vec();
    for c in since {
        match c {
            Change::Write(offset, bytes) => {
                let mut at = *offset as usize;
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = (SECTOR - at % SECTOR).min(rest.len());
                    if r.coin() {
                        apply(&mut data, &Change::Write(at as u64, rest[..n].to_vec()));
                    }
                    at += n;
                    rest = &rest[n..];
                }
            }
            Change::SetLen(_) if r.coin() => apply(&mut data, c),
            Change::SetLen(_) => {}
        }
    }
    data
}

/// A directory after a cut that kept a random part of its unsynced entry changes.
fn mix_entries(
    live: &BTreeMap<String, usize>,
    durable: &BTreeMap<String, usize>,
    r: &mut Rng,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for name in live.keys().chain(durable.keys()) {
        let (l, d) = (live.get(name), durable.get(name));
        let pick = if l == d || r.coin() { l } else { d };
        if let Some(&ino) = pick {
            out.insert(name.clone(), ino);
        }
    }
    out
}

/// xorshift64: enough randomness for choosing what a cut keeps, and reproducible from a seed.
struct Rng(u64);

impl Rng {
    /// Seeded through splitmix64, so that neighbouring seeds give unrelated choices.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn coin(&mut self) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 & 1 == 1
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Box<dyn DiskFile>> {
        let mut st = self.state();
        let ino = match mode {
            Mode::Read | Mode::Write => st.lookup(path)?,
            Mode::CreateNew | Mode::Create => {
                let (dir, name) = st.parent(path)?;
                match (st.entries(dir).get(&name).copied(), mode) {
                    (Some(_), Mode::CreateNew) => return Err(io::ErrorKind::AlreadyExists.into()),
                    (Some(ino), _) => {
                        st.check()?;
                        st.change(ino, Change::SetLen(0))?;
                        ino
                    }
                    (None, _) => {
                        st.op()?;
                        let ino = st.add(Node::File {
                            live: Vec::new(),
                            durable: Vec::new(),
                            since: Vec::new(),
                        });
                        st.entries(dir).insert(name, ino);
                        ino
                    }
                }
            }
        };
        if mode != Mode::Read && matches!(st.nodes[ino], Node::Dir { .. }) {
            return Err(io::ErrorKind::IsADirectory.into());
        }
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        let (fd, fname) = st.parent(from)?;
        let (td, tname) = st.parent(to)?;
        let ino = *st.entries(fd).get(&fname).ok_or_else(not_found)?;
        st.op()?;
        st.entries(fd).remove(&fname);
        st.entries(td).insert(tname, ino);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        let ino = st.lookup(from)?;
        let (td, tname) = st.parent(to)?;
        if st.entries(td).contains_key(&tname) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        st.op()?;
        st.entries(td).insert(tname, ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        let (dir, name) = st.parent(path)?;
        if !st.entries(dir).contains_key(&name) {
            return Err(not_found());
        }
        st.op()?;
        st.entries(dir).remove(&name);
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        let (dir, name) = st.parent(path)?;
        if st.entries(dir).contains_key(&name) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        st.op()?;
        let ino = st.add(Node::Dir {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        });
        st.entries(dir).insert(name, ino);
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.state();
        match &st.nodes[st.lookup(path)?] {
            // Newest name first: no caller may depend on the order of a listing.
            Node::Dir { live, .. } => Ok(live.keys().rev().cloned().collect()),
            Node::File { .. } => Err(io::ErrorKind::NotADirectory.into()),
        }
    }

    fn kind(&self, path: &Path) -> Option<Kind> {
        let st = self.state();
        Some(match st.nodes[st.lookup(path).ok()?] {
            Node::Dir { .. } => Kind::Dir,
            Node::File { .. } => Kind::File,
        })
    }

    fn age(&self, _path: &Path) -> Option<Duration> {
        None
    }
}

/// An open file (or directory) of a [`SimDisk`]: unlinking it keeps it readable and writable,
/// as on Linux.
struct SimFile {
    disk: SimDisk,
    ino: usize,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State, usize) -> io::Result<T>) -> io::Result<T> {
        f(&mut self.disk.state(), self.ino)
    }

    fn change(&self, c: Change) -> io::Result<()> {
        self.with(|st, ino| {
            st.check()?;
            st.change(ino, c)
        })
    }

    fn sync(&self) -> io::Result<()> {
        self.with(|st, ino| {
            st.op()?;
            match &mut st.nodes[ino] {
                Node::File {
                    live,
                    durable,
                    since,
                } => {
                    durable.clone_from(live);
                    since.clear();
                }
                Node::Dir { live, durable } => durable.clone_from(live),
            }
            Ok(())
        })
    }
}

impl DiskFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.with(|st, ino| Ok(st.file(ino)?.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|st, ino| {
            let data = st.file(ino)?;
            let start = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        })
    }

    fn write_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        self.change(Change::Write(offset, parts.concat()))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Change::SetLen(len))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.with(|st, ino| {
            st.check()?;
            let size = st.file(ino)?.len() as u64;
            st.change(ino, Change::SetLen(size.max(len)))
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn lock(&self) -> io::Result<()> {
        Ok(())
    }

    fn unlock(&self) -> io::Result<()> {
        Ok(())
    }

    // No mapping: the segment keeps its own copy (nothing unsafe happens here).
    #[allow(unsafe_code)]
    unsafe fn map(&self, _len: usize) -> io::Result<Option<Mmap>> {
        Ok(None)
    }

    fn std_file(&self) -> Option<&File> {
        None
    }

    fn try_clone(&self) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(SimFile {
            disk: self.disk.clone(),
            ino: self.ino,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::disk::{self, create_dir_durably};

    fn read(d: &SimDisk, path: &str) -> Option<Vec<u8>> {
        disk::read_all(&*d.open(Path::new(path), Mode::Read).ok()?)
            .ok()
            .map(|v| v.to_vec())
    }

    #[test]
    fn a_new_file_survives_a_cut_only_once_its_directory_is_synced() {
        let d = SimDisk::new();
        create_dir_durably(&d, Path::new("/spool")).unwrap();
        let f = d.open(Path::new("/spool/a"), Mode::CreateNew).unwrap();
        f.write_at(&[b"hello"], 0).unwrap();
        f.sync_all().unwrap();
        let cut = d.power_cut(Keep::Synced);
        assert_eq!(read(&cut, "/spool/a"), None, "file synced, directory not");
        disk::sync_dir(&d, Path::new("/spool")).unwrap();
        assert_eq!(
            read(&d.power_cut(Keep::Synced), "/spool/a").unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_rename_is_durable_only_after_the_directory_sync() {
        let d = SimDisk::new();
        create_dir_durably(&d, Path::new("/s")).unwrap();
        let f = d.open(Path::new("/s/x.tmp"), Mode::CreateNew).unwrap();
        f.write_at(&[b"v"], 0).unwrap();
        f.sync_all().unwrap();
        disk::sync_dir(&d, Path::new("/s")).unwrap();
        d.rename(Path::new("/s/x.tmp"), Path::new("/s/x")).unwrap();
        let cut = d.power_cut(Keep::Synced);
        assert!(read(&cut, "/s/x").is_none());
        assert_eq!(read(&cut, "/s/x.tmp").unwrap(), b"v");
        disk::sync_dir(&d, Path::new("/s")).unwrap();
        let cut = d.power_cut(Keep::Synced);
        assert_eq!(read(&cut, "/s/x").unwrap(), b"v");
        assert!(read(&cut, "/s/x.tmp").is_none());
    }

    #[test]
    fn unsynced_writes_are_lost_or_kept_in_part_and_synced_ones_stay() {
        let d = SimDisk::new();
        create_dir_durably(&d, Path::new("/s")).unwrap();
        let f = d.open(Path::new("/s/f"), Mode::CreateNew).unwrap();
        disk::sync_dir(&d, Path::new("/s")).unwrap();
        f.write_at(&[&[1u8; 2048]], 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(&[&[2u8; 4096]], 1024).unwrap();
        assert_eq!(
            read(&d.power_cut(Keep::Synced), "/s/f").unwrap(),
            vec![1u8; 2048]
        );
        let mut seen = std::collections::HashSet::new();
        for seed in 0..64 {
            let got = read(&d.power_cut(Keep::Some(seed)), "/s/f").unwrap();
            assert!((2048..=5120).contains(&got.len()), "{}", got.len());
            assert!(got[..1024].iter().all(|&b| b == 1), "synced bytes stay");
            seen.insert(got);
        }
        assert!(seen.len() > 4, "different seeds keep different parts");
    }

    #[test]
    fn a_sector_written_twice_may_come_back_in_any_of_its_versions() {
        let d = SimDisk::new();
        create_dir_durably(&d, Path::new("/s")).unwrap();
        let f = d.open(Path::new("/s/f"), Mode::CreateNew).unwrap();
        disk::sync_dir(&d, Path::new("/s")).unwrap();
        f.sync_data().unwrap();
        f.write_at(&[&[1u8; 100]], 0).unwrap();
        f.write_at(&[&[2u8; 100]], 100).unwrap();
        let seen: std::collections::HashSet<Vec<u8>> = (0..64)
            .map(|seed| read(&d.power_cut(Keep::Some(seed)), "/s/f").unwrap())
            .collect();
        for want in [
            vec![],
            vec![1u8; 100],
            [vec![0u8; 100], vec![2u8; 100]].concat(),
        ] {
            assert!(seen.contains(&want), "{want:?} never came back");
        }
    }

    #[test]
    fn the_disk_fails_everything_after_the_power_goes() {
        let d = SimDisk::new();
        create_dir_durably(&d, Path::new("/s")).unwrap();
        let f = d.open(Path::new("/s/f"), Mode::CreateNew).unwrap();
        d.die_after(1);
        f.write_at(&[b"a"], 0).unwrap();
        assert!(
            f.sync_data().is_err(),
            "a sync after the cut never completes"
        );
        assert!(f.write_at(&[b"b"], 1).is_err());
        assert!(d.create_dir(Path::new("/t")).is_err());
    }
}
