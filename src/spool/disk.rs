//! The seam between the spool and the filesystem: every file operation of a shard (recovery,
//! appends, syncs, segment creation and rotation, purge, the ledger) goes through a [`Disk`].
//! One sync does not: the worker's group commit fdatasyncs a duplicate of
//! [`super::Shard::active_file`] through io_uring (the tests' commit loop syncs
//! `Shard::active_disk_file` instead, under the same contract).
//!
//! [`RealDisk`] is the filesystem. The unit tests replace it with `SimDisk` (`simdisk.rs`), an
//! in-memory disk that can lose power: it keeps what each completed sync covered and drops (or
//! keeps any subset of) the rest, which a process kill never shows.
//!
//! The spool lock file and the offline tools' listing of shard directories use the real
//! filesystem directly.
//!
//! Crate-private: an implementation's `map` must return a mapping of exactly the bytes asked
//! for, of the same file `write_at` writes, or the spool's unchecked reads of what it appended
//! would read something else (the callers check the length; the rest is this module's duty).

#![allow(unsafe_code)]

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use memmap2::{Mmap, MmapOptions};
use rkyv::util::AlignedVec;

/// How [`Disk::open`] opens a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An existing file (or directory) for reading.
    Read,
    /// An existing file for reading and writing.
    Write,
    /// A new file for reading and writing; `AlreadyExists` if the name is taken.
    CreateNew,
    /// A file for writing, created when missing and emptied when present.
    Create,
}

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// The filesystem operations of the spool. Paths are absolute or relative to the process's
/// working directory, as for `std::fs`.
pub trait Disk: fmt::Debug + Send + Sync {
    /// Opens a file, or (with [`Mode::Read`]) a directory, whose `sync_all` then syncs its
    /// entries.
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Box<dyn DiskFile>>;
    /// `rename(2)`: durable once the directories involved are synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `link(2)`: `AlreadyExists` when `to` exists; durable once its directory is synced.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `unlink(2)`: durable once the directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// `mkdir(2)` of one directory: durable once its parent is synced.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// The names in a directory, in no particular order (names that are not UTF-8 are left out).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// What `path` names, if anything.
    fn kind(&self, path: &Path) -> Option<Kind>;
    /// Time since the file was last modified, when the disk keeps a clock.
    fn age(&self, path: &Path) -> Option<Duration>;
}

/// An open file (or directory) of a [`Disk`].
pub trait DiskFile: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> io::Result<u64>;
    /// `pread(2)`: bytes read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `parts`, back to back, at `offset` (one `pwritev(2)` when it can).
    fn write_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()>;
    /// `ftruncate(2)`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fallocate(2)` of `[0, len)`: the space is reserved and the file at least `len` long.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// `fdatasync(2)`.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync(2)` (of a directory: its entries).
    fn sync_all(&self) -> io::Result<()>;
    /// An exclusive `flock(2)`, waiting for it.
    fn lock(&self) -> io::Result<()>;
    /// Releases [`DiskFile::lock`].
    fn unlock(&self) -> io::Result<()>;
    /// A read-only shared mapping of the first `len` bytes, or `None` when this disk cannot map
    /// (the caller then reads the file into memory).
    ///
    /// # Safety
    ///
    /// The caller must keep the file from being truncated below `len` while the mapping lives,
    /// and must treat the bytes as changing under it wherever it (or anyone) still writes.
    unsafe fn map(&self, len: usize) -> io::Result<Option<Mmap>>;
    /// The real file, for callers that flush through io_uring; `None` on a simulated disk.
    fn std_file(&self) -> Option<&File>;
    /// A second handle on the same open file, as `dup(2)` (what the worker's commit loop keeps).
    #[cfg(test)]
    fn try_clone(&self) -> io::Result<Box<dyn DiskFile>>;
}

/// The filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

/// The filesystem, shared.
pub fn real() -> Arc<dyn Disk> {
    Arc::new(RealDisk)
}

impl Disk for RealDisk {
    fn open(&self, path: &Path, mode: Mode) -> io::Result<Box<dyn DiskFile>> {
        let mut o = OpenOptions::new();
        match mode {
            Mode::Read => o.read(true),
            Mode::Write => o.read(true).write(true),
            Mode::CreateNew => o.read(true).write(true).create_new(true),
            Mode::Create => o.read(true).write(true).create(true).truncate(true),
        };
        Ok(Box::new(o.open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn kind(&self, path: &Path) -> Option<Kind> {
        let m = fs::metadata(path).ok()?;
        Some(if m.is_dir() { Kind::Dir } else { Kind::File })
    }

    fn age(&self, path: &Path) -> Option<Duration> {
        fs::metadata(path).ok()?.modified().ok()?.elapsed().ok()
    }
}

impl DiskFile for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn write_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        write_all_vectored_at(self, parts, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        reserve(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn lock(&self) -> io::Result<()> {
        File::lock(self)
    }

    fn unlock(&self) -> io::Result<()> {
        File::unlock(self)
    }

    unsafe fn map(&self, len: usize) -> io::Result<Option<Mmap>> {
        // SAFETY: the caller upholds the contract above (no truncation below `len` while mapped).
        Ok(Some(unsafe { MmapOptions::new().len(len).map(self)? }))
    }

    fn std_file(&self) -> Option<&File> {
        Some(self)
    }

    #[cfg(test)]
    fn try_clone(&self) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(File::try_clone(self)?))
    }
}

/// `pwritev` of all `parts` at `offset`, continuing after short writes.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let n = loop {
        // SAFETY: every iovec points into a live slice of `parts`, which outlives the call, and
        // the kernel only reads from them; the count fits in c_int (a frame has a few parts).
        let r = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n == total {
        return Ok(());
    }
    // Short write (rare for regular files): write the rest from a contiguous copy.
    let rest: Vec<u8> = parts.concat().split_off(n);
    offset += n as u64;
    file.write_all_at(&rest, offset)
}

/// Reserves `size` bytes for the file so that later writes cannot fail for space.
fn reserve(file: &File, size: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: plain syscall on a valid open file descriptor owned by `file`.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Filesystems without fallocate: writing zeros allocates the blocks just the same.
            Some(libc::EOPNOTSUPP) => return write_zeros(file, size),
            _ => return Err(err),
        }
    }
}

fn write_zeros(file: &File, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reads all of an open file into a 16-byte aligned buffer.
pub fn read_all(file: &dyn DiskFile) -> io::Result<AlignedVec<16>> {
    let len = file.size()? as usize;
    let mut buf = AlignedVec::<16>::with_capacity(len);
    buf.resize(len, 0);
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.resize(done, 0);
    Ok(buf)
}

/// Fills `buf` from `offset`; `UnexpectedEof` when the file ends first.
pub fn read_exact_at(file: &dyn DiskFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub fn sync_dir(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    disk.open(dir, Mode::Read)?.sync_all()
}

/// Creates `dir` and any missing parents, and fsyncs the parent of each directory it created: a
/// new name is durable only once its directory is synced, so an unsynced spool directory could
/// vanish with everything in it at a power cut.
pub fn create_dir_durably(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    let parent_of = |p: &Path| match p.parent() {
        Some(q) if !q.as_os_str().is_empty() => Some(q.to_owned()),
        Some(_) => Some(Path::new(".").to_owned()),
        None => None,
    };
    let mut missing = Vec::new();
    let mut p = dir.to_owned();
    while disk.kind(&p).is_none() {
        missing.push(p.clone());
        match parent_of(&p) {
            Some(q) => p = q,
            None => break,
        }
    }
    for created in missing.iter().rev() {
        match disk.create_dir(created) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if let Some(parent) = parent_of(created) {
            sync_dir(disk, &parent)?;
        }
    }
    // A directory made by someone else (an operator's mkdir, a package script) may not be
    // durable either: one fsync of its parent at start costs nothing.
    if missing.is_empty()
        && let Some(parent) = parent_of(dir)
    {
        sync_dir(disk, &parent)?;
    }
    match disk.kind(dir) {
        Some(Kind::Dir) => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        )),
    }
}
