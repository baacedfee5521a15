#!/usr/bin/env python3
"""The floor of this stack: a minimal pyfuse3 filesystem that serves a snapshot of a
tree (directories, files with their bytes, symlinks) from memory, with keep_cache,
entry/attr timeouts and attributes supplied by readdir. Nothing is computed per request,
so what a request costs here is what pyfuse3 + the kernel cost.

    python _floorfs.py SNAPSHOT MOUNTPOINT [--no-open] [--timeout SECONDS]

SNAPSHOT is a pickle written by ``snapshot(root, path)``: a list of (path, kind, mode,
payload) with kind 'd' (payload: None), 'f' (payload: bytes) or 'l' (payload: target).
``--no-open`` answers open() with ENOSYS, which makes the kernel stop sending open and
release for every file of the mount (FUSE's no_open: all or nothing per connection). pyfuse3
passes read() only the file handle (0 under no_open), not the inode, so in that mode a
read is answered with the bytes of the file looked up last: right for a loop over one
file (what the benchmark measures), wrong in general. A measurement of what skipping open
could give, not a usable design.
The process prints "ready" on stdout once mounted and unmounts on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import signal
import stat
import sys
from pathlib import Path

TIMEOUT = 1.0


def snapshot(root: Path, out: Path) -> int:
    """Walk ``root`` (a mounted tree) and pickle what the floor filesystem serves."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        st = os.lstat(dirpath)
        entries.append((rel, "d", stat.S_IMODE(st.st_mode), None))
        for name in dirnames[:]:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                dirnames.remove(name)
                entries.append((os.path.join(rel, name), "l", 0o777, os.readlink(full)))
        for name in filenames:
            full = os.path.join(dirpath, name)
            path = os.path.join(rel, name)
            if path == "events":  # a stream: a read waits for the next event
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries.append((path, "l", 0o777, os.readlink(full)))
                continue
            try:
                with open(full, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            entries.append((path, "f", stat.S_IMODE(st.st_mode), data))
    with open(out, "wb") as f:
        pickle.dump(entries, f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(entries)


def main() -> int:
    import pyfuse3
    import trio

    p = argparse.ArgumentParser()
    p.add_argument("snapshot")
    p.add_argument("mountpoint")
    p.add_argument("--no-open", action="store_true")
    p.add_argument("--timeout", type=float, default=TIMEOUT)
    args = p.parse_args()
    with open(args.snapshot, "rb") as f:
        entries = pickle.load(f)

    # inode numbers: 1 is the root; parents come before children in os.walk order
    ino_of: dict[str, int] = {}
    kinds: dict[int, tuple[str, int, object]] = {}
    children: dict[int, dict[bytes, int]] = {}
    order: dict[int, list[bytes]] = {}
    for path, kind, mode, payload in entries:
        ino = pyfuse3.ROOT_INODE if path == "" else len(ino_of) + pyfuse3.ROOT_INODE
        if path == "":
            ino_of[""] = ino
        else:
            ino_of[path] = ino
            parent = ino_of[os.path.dirname(path)]
            name = os.fsencode(os.path.basename(path))
            children.setdefault(parent, {})[name] = ino
            order.setdefault(parent, []).append(name)
        kinds[ino] = (kind, mode, payload)

    def attrs(ino: int) -> pyfuse3.EntryAttributes:
        kind, mode, payload = kinds[ino]
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = a.attr_timeout = args.timeout
        if kind == "d":
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | mode, 2, 0
        elif kind == "l":
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFLNK | 0o777, 1, len(os.fsencode(payload))
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | mode, 1, len(payload)
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        return a

    cached = {ino: attrs(ino) for ino in kinds}
    last = [pyfuse3.ROOT_INODE]

    class Floor(pyfuse3.Operations):
        async def lookup(self, parent_inode, name, ctx=None):
            ino = children.get(parent_inode, {}).get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            last[0] = ino
            return cached[ino]

        async def getattr(self, inode, ctx=None):
            last[0] = inode
            return cached[inode]

        async def readlink(self, inode, ctx):
            return os.fsencode(kinds[inode][2])

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            names = order.get(fh, [])
            for i in range(start_id, len(names)):
                ino = children[fh][names[i]]
                if not pyfuse3.readdir_reply(token, names[i], cached[ino], i + 1):
                    return

        async def open(self, inode, flags, ctx):
            if args.no_open:
                raise pyfuse3.FUSEError(errno.ENOSYS)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            if fh == 0:  # no_open: the inode is unknown here (see the module docstring)
                fh = last[0]
            return kinds[fh][2][off:off + size]

        async def flush(self, fh):
            return None

        async def release(self, fh):
            return None

    options = set(pyfuse3.default_options) | {"fsname=floorfs"}
    pyfuse3.init(Floor(), args.mountpoint, options)
    signal.signal(signal.SIGTERM, lambda *_: pyfuse3.terminate())
    signal.signal(signal.SIGINT, lambda *_: pyfuse3.terminate())
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
