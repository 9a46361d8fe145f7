"""FUSE filesystems for the spool's fault and power-cut tests (issues 19 and 21).

    python3 fusefs.py fault BACKING_DIR MOUNTPOINT CONTROL_FILE
    python3 fusefs.py volatile MOUNTPOINT CONTROL_FILE OUT_DIR

`fault`: a passthrough to BACKING_DIR that fails fsync on demand. Before each fsync/fdatasync (of
a file or a directory) it reads CONTROL_FILE: "eio" or "enospc" makes that sync fail with EIO or
ENOSPC, and puts the file back as it was at its last successful sync (the kernel may drop the
dirty pages whose writeback failed); anything else (or no file) lets it through.

`volatile`: a filesystem in memory that loses power. Everything lives in memory, as in a disk
cache that nothing writes back on its own:

- a file has its live contents (what reads see) and its durable contents (as of its last
  fsync/fdatasync, empty before the first);
- a directory has its live entries and its durable entries (as of its last fsync): a new name,
  a rename or an unlink is durable only once the directory holding it is synced.

When CONTROL_FILE says "cut" the power goes: the durable state is written out to OUT_DIR (each
durable name with its file's durable contents), "fusefs cut" is printed, and every later
operation fails with EIO. "cut-some" is a cut after which the disk kept, besides, a random part
of what was not synced: each 4 KiB page of a file that differs from its durable contents, and
each directory entry changed since its directory's last sync, is kept or lost at random (the
page cache writes back in any order). The test then kills the program that used the mount, unmounts it, and
starts the program again on OUT_DIR: what it finds there is what a disk would have kept.

Both print "fusefs mounted" once the mount is up; unmount with `umount MOUNTPOINT`. Locks
(flock) are left to the kernel.
"""
import errno
import os
import random
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

FAULTS = {"eio": errno.EIO, "enospc": errno.ENOSPC}


class FaultFS(Operations):
    def __init__(self, root, control):
        self.root = root
        self.control = control
        # Each file's contents at its last successful sync: a failed sync puts them back, as
        # the kernel may drop the dirty pages whose writeback failed.
        self.synced = {}
        self.mutex = threading.Lock()

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _fault(self):
        try:
            with open(self.control) as f:
                mode = f.read().strip()
        except OSError:
            return
        if mode in FAULTS:
            raise FuseOSError(FAULTS[mode])

    def __call__(self, op, *args):
        try:
            return super().__call__(op, *args)
        except OSError as e:
            if isinstance(e, FuseOSError):
                raise
            raise FuseOSError(e.errno or errno.EIO)

    # Metadata.
    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
                "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def unlink(self, path):
        os.unlink(self._p(path))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def link(self, target, source):
        os.link(self._p(source), self._p(target))

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._p(path), times)

    def truncate(self, path, length, fh=None):
        os.truncate(self._p(path), length)

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    # Files.
    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        with self.mutex:
            try:
                self._fault()
            except FuseOSError:
                before = self.synced.get(path, b"")
                os.ftruncate(fh, len(before))
                os.pwrite(fh, before, 0)
                raise
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
            self.synced[path] = os.pread(fh, os.fstat(fh).st_size, 0)

    def opendir(self, path):
        return 0

    def fsyncdir(self, path, datasync, fh):
        self._fault()
        fd = os.open(self._p(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Node:
    def __init__(self, mode):
        self.mode = mode
        self.nlink = 1
        self.mtime = time.time()
        if stat.S_ISDIR(mode):
            self.entries = {}
            self.durable_entries = {}
        else:
            self.data = bytearray()
            self.durable = b""

    def is_dir(self):
        return stat.S_ISDIR(self.mode)


class VolatileFS(Operations):
    def __init__(self, control, out):
        self.control = control
        self.out = out
        self.mutex = threading.RLock()
        self.root = Node(stat.S_IFDIR | 0o755)
        self.cut = False
        self.fds = {}
        self.next_fd = 1
        threading.Thread(target=self._watch, daemon=True).start()

    def __call__(self, op, *args):
        with self.mutex:
            if self.cut:
                raise FuseOSError(errno.EIO)
            return super().__call__(op, *args)

    # The power switch.
    def _watch(self):
        while True:
            time.sleep(0.002)
            try:
                with open(self.control) as f:
                    mode = f.read().strip()
            except OSError:
                continue
            if mode not in ("cut", "cut-some"):
                continue
            with self.mutex:
                self.cut = True
                self._dump(self.root, self.out, random.Random() if mode == "cut-some" else None)
            print("fusefs cut", flush=True)
            return

    def _dump(self, node, path, rng):
        os.makedirs(path, exist_ok=True)
        entries = dict(node.durable_entries)
        if rng:
            for name in set(node.entries) | set(node.durable_entries):
                if node.entries.get(name) is not node.durable_entries.get(name) and rng.random() < 0.5:
                    if name in node.entries:
                        entries[name] = node.entries[name]
                    else:
                        entries.pop(name, None)
        for name, child in entries.items():
            p = os.path.join(path, name)
            if child.is_dir():
                self._dump(child, p, rng)
            else:
                with open(p, "wb") as f:
                    f.write(self._kept(child, rng))

    @staticmethod
    def _kept(node, rng):
        if not rng:
            return node.durable
        live, durable = bytes(node.data), node.durable
        size = rng.choice((len(live), len(durable)))
        out = bytearray(size)
        for at in range(0, size, 4096):
            page = rng.choice((live, durable))[at:at + min(4096, size - at)]
            out[at:at + len(page)] = page
        return bytes(out)

    # Names.
    def _walk(self, path):
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir() or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def _parent(self, path):
        head, name = path.rstrip("/").rsplit("/", 1)
        parent = self._walk(head or "/")
        if not parent.is_dir():
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def getattr(self, path, fh=None):
        node = self._walk(path)
        size = 4096 if node.is_dir() else len(node.data)
        return {
            "st_mode": node.mode, "st_nlink": node.nlink, "st_size": size,
            "st_blocks": (size + 511) // 512, "st_uid": os.getuid(), "st_gid": os.getgid(),
            "st_atime": node.mtime, "st_mtime": node.mtime, "st_ctime": node.mtime,
        }

    def access(self, path, mode):
        self._walk(path)

    def readdir(self, path, fh):
        return [".", ".."] + list(self._walk(path).entries)

    def mkdir(self, path, mode):
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        parent.entries[name] = Node(stat.S_IFDIR | mode)

    def rmdir(self, path):
        parent, name = self._parent(path)
        if self._walk(path).entries:
            raise FuseOSError(errno.ENOTEMPTY)
        del parent.entries[name]

    def unlink(self, path):
        parent, name = self._parent(path)
        node = self._walk(path)
        node.nlink -= 1
        del parent.entries[name]

    def rename(self, old, new):
        op, oname = self._parent(old)
        np, nname = self._parent(new)
        node = self._walk(old)
        del op.entries[oname]
        np.entries[nname] = node

    def link(self, target, source):
        parent, name = self._parent(target)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        node = self._walk(source)
        node.nlink += 1
        parent.entries[name] = node

    def chmod(self, path, mode):
        node = self._walk(path)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        self._walk(path)

    def utimens(self, path, times=None):
        self._walk(path).mtime = time.time()

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 22, "f_bfree": 1 << 21,
                "f_bavail": 1 << 21, "f_files": 1 << 20, "f_ffree": 1 << 19, "f_favail": 1 << 19,
                "f_namemax": 255}

    # Contents.
    def _fd(self, node):
        fd = self.next_fd
        self.next_fd += 1
        self.fds[fd] = node
        return fd

    def create(self, path, mode, fi=None):
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = Node(stat.S_IFREG | mode)
            parent.entries[name] = node
        return self._fd(node)

    def open(self, path, flags):
        node = self._walk(path)
        if flags & os.O_TRUNC:
            del node.data[:]
        return self._fd(node)

    def opendir(self, path):
        return self._fd(self._walk(path))

    def release(self, path, fh):
        self.fds.pop(fh, None)

    def releasedir(self, path, fh):
        self.fds.pop(fh, None)

    def read(self, path, size, offset, fh):
        return bytes(self.fds[fh].data[offset:offset + size])

    def write(self, path, data, offset, fh):
        buf = self.fds[fh].data
        if offset > len(buf):
            buf.extend(b"\0" * (offset - len(buf)))
        buf[offset:offset + len(data)] = data
        return len(data)

    def truncate(self, path, length, fh=None):
        node = self.fds[fh] if fh else self._walk(path)
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(b"\0" * (length - len(node.data)))

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        node = self.fds[fh]
        node.durable = bytes(node.data)

    def fsyncdir(self, path, datasync, fh):
        node = self.fds[fh]
        node.durable_entries = dict(node.entries)


def announce(mountpoint):
    for _ in range(500):
        if os.path.ismount(mountpoint):
            print("fusefs mounted", flush=True)
            return
        time.sleep(0.01)
    print("fusefs: mount did not come up", flush=True)


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "fault":
        backing, mountpoint, control = sys.argv[2:5]
        fs = FaultFS(backing, control)
    else:
        mountpoint, control, out = sys.argv[2:5]
        fs = VolatileFS(control, out)
    threading.Thread(target=announce, args=(mountpoint,), daemon=True).start()
    # hard_remove: an unlinked open file goes at once (no .fuse_hidden file left to dump).
    FUSE(fs, mountpoint, foreground=True, nothreads=False, hard_remove=True)
