"""Shared state and helpers of the FUSE handlers; the one place errors become errno.

Each handler resolves its inode to a path, asks the View what is there, and
calls the manager for anything that changes state. No handler runs a host tool.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from .errors import NotFound, StorageError
from .handles import Handle, Scratch
from .invalidate import Invalidator
from .manager import Manager
from .state import FileMeta
from .tree import InodeTable, Node
from .view import Entry, Kind, View

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0
#: how long an unlinked config.xml stays hidden from the process that unlinked it
HIDE_SECONDS = 5.0


def fuse_op(fn):
    """Errno at the boundary: StorageError -> its errno; anything else -> EIO, logged."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any):
        try:
            return await fn(*args, **kwargs)
        except FUSEError:
            raise
        except StorageError as exc:
            raise FUSEError(exc.errno) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class Refusals:
    """``with Refusals(fs, owner, op):`` a refusal raised in the block that nothing has
    recorded yet (the FUSE layer's own: EPERM for mv of a volume, rm status.xml, chmod
    of a directory ...) gets its line in ``owner``'s error file and the log.
    ``owner`` may be changed in the block once the object concerned is known."""

    def __init__(self, fs: FsBase, owner, op: str) -> None:
        self.fs, self.owner, self.op = fs, owner, op

    def __enter__(self) -> Refusals:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, StorageError) and not exc.recorded:
            self.fs.m.note_refusal(self.owner, self.op, exc)
        return False


class FsBase(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, manager: Manager) -> None:
        super().__init__()
        self.m = manager
        self.view = View(manager)
        self.table = InodeTable()
        self.inval = Invalidator(self.table, self._link_state)
        self.handles: dict[int, tuple[Node, Handle]] = {}
        self._fh = itertools.count(1)
        self.dirs: dict[int, tuple[Node, list[str]]] = {}
        #: per object directory (or scratch directory) path: its scratch files
        self.scratch: dict[tuple[str, ...], dict[str, Scratch]] = {}
        #: per object directory path: its scratch directories (mode, owner, times)
        self.scratch_dirs: dict[tuple[str, ...], dict[str, FileMeta]] = {}
        #: per object directory path: config.xml names unlinked or renamed away, hidden
        #: from the process that did it only ({name: (tgid, until)}), until it creates
        #: the name again (install, vim) or HIDE_SECONDS pass; everyone else still sees
        #: the file (unlink never destroys), at once
        self.hidden: dict[tuple[str, ...], dict[str, tuple[int, float]]] = {}
        self.file_meta: dict[tuple[str, ...], FileMeta] = {}
        #: times set on directories (rsync -a), kept while mounted
        self.dir_times: dict[tuple[str, ...], tuple[int, int]] = {}
        self.mounted_ns = manager.started_ns
        manager.listener = self.inval

    # ---- helpers -----------------------------------------------------------
    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None or node.stale:
            raise FUSEError(errno.ENOENT)
        return node

    def resolve(self, path: tuple[str, ...], pid: int = 0) -> Entry:
        """The entry at path, as the process ``pid`` sees it (0: as everyone does)."""
        d = path[:-1]
        if d and d[-1] in self.scratch_dirs.get(d[:-1], ()):
            # inside a scratch directory: its scratch files, nothing else
            owner = self.view.resolve(d[:-1])
            if path[-1] not in self.scratch.get(d, ()):
                raise NotFound(path[-1])
            return Entry(Kind.SCRATCH, owner.pool, owner.volume, path[-1], secret=owner.secret)
        if path and path[-1] in self.scratch_dirs.get(d, ()):
            owner = self.view.resolve(d)  # NotFound once the object is gone
            return Entry(Kind.SCRATCH_DIR, owner.pool, owner.volume, path[-1],
                         secret=owner.secret)
        return self.view.resolve(path, self.scratch.get(d), self.hidden_from(d, pid))

    def forget_scratch(self, path: tuple[str, ...]) -> None:
        """An object directory was removed: its scratch files and directories go too."""
        n = len(path)
        for table in (self.scratch, self.scratch_dirs, self.hidden, self.dir_times):
            for key in [k for k in table if k[:n] == path]:
                del table[key]

    # ---- names hidden from one process ------------------------------------------
    def hide(self, d: tuple[str, ...], name: str, pid: int) -> None:
        self.hidden.setdefault(d, {})[name] = (_tgid(pid), time.monotonic() + HIDE_SECONDS)

    def unhide(self, d: tuple[str, ...], name: str) -> None:
        names = self.hidden.get(d)
        if names is not None:
            names.pop(name, None)
            if not names:
                del self.hidden[d]

    def hidden_from(self, d: tuple[str, ...], pid: int) -> set[str] | None:
        """The names of directory d hidden from process pid (expired ones dropped)."""
        names = self.hidden.get(d)
        if not names:
            return None
        now = time.monotonic()
        for name in [n for n, (_, until) in names.items() if until < now]:
            del names[name]
        if not names:
            del self.hidden[d]
            return None
        if not pid:
            return None
        tgid = _tgid(pid)
        return {n for n, (who, _) in names.items() if who == tgid}

    def refusals(self, parent: Node, op: str) -> Refusals:
        """Record refusals of an operation in directory ``parent`` on its object."""
        try:
            owner = self.entry(parent).owner
        except FUSEError:
            owner = None
        return Refusals(self, owner, op)

    def _link_state(self, path: tuple[str, ...]) -> str | None:
        """For the invalidator: a link's target now, "" for a directory, None if gone."""
        try:
            e = self.resolve(path)
        except StorageError:
            return None
        if e.kind is Kind.LINK:
            return e.target
        return "" if e.is_dir else None

    def entry(self, node: Node) -> Entry:
        try:
            return self.resolve(node.path)
        except NotFound:
            raise FUSEError(errno.ENOENT) from None

    def _meta(self, node: Node, e: Entry) -> FileMeta | None:
        if e.kind is Kind.SCRATCH:
            return self.scratch[node.path[:-1]][e.name]
        if e.name == "config.xml" and e.kind in (Kind.POOL_FILE, Kind.VOL_FILE,
                                                 Kind.SECRET_FILE):
            return e.owner.meta
        return self.file_meta.get(node.path)

    def attrs(self, node: Node, e: Entry | None = None) -> pyfuse3.EntryAttributes:
        e = e or self.entry(node)
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        if node.path and node.name in self.hidden.get(node.path[:-1], ()):
            # hidden from one process: the kernel must ask again on its next lookup
            # (a dentry cached for another process would make its O_EXCL create fail)
            a.entry_timeout = a.attr_timeout = 0
        a.st_uid = a.st_gid = 0
        a.st_blksize = 4096
        owner = e.owner
        t = owner.changed_ns if owner is not None else self.mounted_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        if e.is_dir:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
            a.st_size = 0
            times = self.dir_times.get(node.path)
            if times is not None:
                a.st_atime_ns, a.st_mtime_ns = times
            if e.kind is Kind.SCRATCH_DIR:
                meta = self.scratch_dirs[node.path[:-1]][e.name]
                a.st_mode = stat.S_IFDIR | (meta.mode & 0o7777)
                a.st_uid, a.st_gid = meta.uid, meta.gid
                a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = (
                    meta.atime_ns, meta.mtime_ns, meta.ctime_ns)
        elif e.kind is Kind.LINK:
            node.target = e.target
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_nlink = 1
            a.st_size = len(os.fsencode(e.target))
        else:
            meta = self._meta(node, e)
            if e.kind is Kind.SCRATCH:
                size = len(meta.data)
                meta = meta.meta
            else:
                size = len(self.view.content(e))
            a.st_mode = stat.S_IFREG | (0o644 if e.writable else 0o444)
            if e.kind is Kind.SECRET_FILE and e.name == "value":
                a.st_mode = stat.S_IFREG | (0o200 if e.secret.private else 0o600)
            a.st_nlink = 1
            a.st_size = size
            if meta is not None:
                a.st_mode = stat.S_IFREG | (meta.mode & 0o7777)
                a.st_uid, a.st_gid = meta.uid, meta.gid
                a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = (
                    meta.atime_ns or t, meta.mtime_ns or t, meta.ctime_ns or t)
        a.st_blocks = (a.st_size + 511) // 512
        return a

    def _child(self, parent: Node, name: str, pid: int = 0) -> tuple[Node, Entry]:
        e = self.resolve((*parent.path, name), pid)
        return self.table.child(parent, name), e


def _tgid(pid: int) -> int:
    """The process of a FUSE request's thread id (what a whole tool does counts)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid

