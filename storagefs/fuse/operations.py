"""The FUSE handlers: thin dispatch to the node of each inode; the one place where errors
become errno (pyfuse3 survives only FUSEError: anything else is logged and becomes EIO).

No handler runs a host tool or touches the storage: nodes answer from the core, and
what changes state (mkdir, rmdir, a write to a writable file) is the core's operation.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import select
from collections.abc import Iterator
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from ..errors import Busy, InvalidArgument, NotFound, NotPermitted, StorageError
from .attrs import dir_setattr, entry_attributes, file_setattr
from .events import StreamHandle
from .handles import Handle, LiveHandle, ScratchHandle
from .inodes import Inode, InodeTable
from .interrupt import interruptible
from .invalidate import Invalidator
from .listing import Entry, listing_of, send
from .node import Caller, File, Generated, Node
from .objdir import ScratchDirNode, ScratchFile
from .tree import Tree

log = logging.getLogger(__name__)


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
        except PermissionError:
            raise FUSEError(errno.EACCES) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


def caller(ctx: Any) -> Caller:
    if ctx is None:
        return Caller()
    return Caller(ctx.pid, ctx.uid, ctx.gid)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, core: Any, readme: bytes) -> None:
        super().__init__()
        self.core = core
        self.tree = Tree(core, readme)
        self.table = InodeTable(self.tree.root())
        self.inval = Invalidator(self.table)
        self.handles: dict[int, tuple[Inode, Handle]] = {}
        self.dirs: dict[int, tuple[Inode, list[str] | None, Caller]] = {}
        self._fh = itertools.count(1)
        self.inval.on_removed = self.tree.forget_under
        core.listener = self.inval

    # ---- helpers -------------------------------------------------------------
    def inode(self, ino: int) -> Inode:
        """The live inode, or ENOENT (its object is gone: the inode goes stale)."""
        inode = self.table.get(ino)
        if inode is None or inode.stale:
            raise FUSEError(errno.ENOENT)
        if not inode.node.alive():
            self.table.detach(inode)
            raise FUSEError(errno.ENOENT)
        return inode

    def child(self, parent: Inode, name: str, who: Caller) -> Inode:
        node = parent.node.child(name, who)
        if getattr(node, "streaming", False):  # events: each lookup its own inode
            return self.table.fresh(parent, name, node)
        return self.table.child(parent, name, node)

    @contextlib.contextmanager
    def refusing(self, node: Node, op: str, line: bool = True) -> Iterator[None]:
        """A refusal found here (not by the core) still gets its error line and log line
        (``line=False``: a refused read, the log line only)."""
        try:
            yield
        except StorageError as exc:
            if not getattr(exc, "recorded", False):
                self.core.rec.note_refusal(node.owner(), op, exc, line=line)
            raise

    def attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        return entry_attributes(self.tree, inode)

    def _entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attrs = self.attrs(inode)
        inode.lookups += 1
        return attrs

    # ---- lookup and attributes ------------------------------------------------
    @fuse_op
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self.inode(parent_inode)
        if parent.node.kind != "dir":
            raise FUSEError(errno.ENOTDIR)
        try:
            inode = self.child(parent, os.fsdecode(name), caller(ctx))
        except NotFound:
            raise FUSEError(errno.ENOENT) from None
        return self._entry(inode)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            try:
                self.table.forget(ino, count)
            except Exception:
                log.exception("forget failed")

    @fuse_op
    async def getattr(self, inode, ctx=None):
        ino = self.inode(inode)
        attrs = self.attrs(ino)
        pinned = getattr(ino.node, "pinned_size", None)  # metrics.prom (fuse/metrics.py)
        if pinned is not None and ctx is not None:
            size = pinned(ctx.pid)
            if size is not None:  # a fresh EntryAttributes: a live file's are not cached
                attrs.st_size, attrs.st_blocks = size, (size + 511) // 512
        return attrs

    @fuse_op
    async def readlink(self, inode, ctx):
        node = self.inode(inode).node
        if node.kind != "link":
            raise FUSEError(errno.EINVAL)
        return os.fsencode(node.target())  # type: ignore[attr-defined]

    @fuse_op
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        s.f_files = len(self.table)
        return s

    # ---- directories ------------------------------------------------------------
    @fuse_op
    async def opendir(self, inode, ctx):
        d = self.inode(inode)
        if d.node.kind != "dir":
            raise FUSEError(errno.ENOTDIR)
        who = caller(ctx)
        fh = next(self._fh)
        self.dirs[fh] = (d, None, who)  # names: at the first readdir
        return fh

    @fuse_op
    async def readdir(self, fh, start_id, token):
        parent, names, who = self.dirs[fh]
        if parent.stale:
            return
        if start_id == 0 or names is None:  # the first read, and after rewinddir (POSIX:
            names = parent.node.names(who)  # the directory as it is now)
            self.dirs[fh] = (parent, names, who)
        listing = listing_of(parent, names, (self.tree.attrs_gen, self.table.gen))
        send(token, start_id, names, listing, lambda name: self._dir_entry(parent, name, who))

    def _dir_entry(self, parent: Inode, name: str, who: Caller) -> Entry | None:
        inode = parent.children.get(name)
        try:
            if inode is None or inode.stale \
                    or not parent.node.child_is_current(name, inode.node):  # type: ignore[attr-defined]
                inode = self.child(parent, name, who)
            return (os.fsencode(name), inode, entry_attributes(self.tree, inode))
        except (NotFound, FUSEError):
            return None

    @fuse_op
    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    @fuse_op
    async def fsyncdir(self, fh, datasync):
        return None

    @fuse_op
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self.inode(parent_inode)
        text = os.fsdecode(name)
        with self.refusing(parent.node, f"mkdir {text}"):
            node = await parent.node.mkdir(text, mode, caller(ctx))  # type: ignore
        return self._entry(self.table.child(parent, text, node))

    @fuse_op
    async def rmdir(self, parent_inode, name, ctx):
        parent = self.inode(parent_inode)
        text = os.fsdecode(name)
        key = (parent.ino, text)
        self.inval.vfs_removing.add(key)
        try:
            with self.refusing(parent.node, f"rmdir {text}"):
                await parent.node.rmdir(text, caller(ctx))  # type: ignore[attr-defined]
        finally:
            self.inval.vfs_removing.discard(key)
        gone = parent.children.get(text)
        if gone is not None:
            self.table.detach(gone)
        self.tree.forget_under((*parent.path, text))

    # ---- files ----------------------------------------------------------------
    def _new_handle(self, inode: Inode, handle: Handle, *, direct_io: bool,
                    keep_cache: bool = False, pid: int = 0) -> pyfuse3.FileInfo:
        handle.pid = pid
        fh = next(self._fh)
        self.handles[fh] = (inode, handle)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct_io, keep_cache=keep_cache)

    @fuse_op
    async def open(self, inode, flags, ctx):
        ino = self.inode(inode)
        node = ino.node
        if node.kind == "dir":
            raise FUSEError(errno.EISDIR)
        if node.kind == "link":
            raise FUSEError(errno.ELOOP)
        assert isinstance(node, File)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        with self.refusing(node, f"open {ino.name}", line=writing):
            if writing and not node.writable:
                raise StorageError(f"{ino.name} is generated by storagefs and read-only",
                                   errno.EACCES)
            if not getattr(node, "readable", lambda: True)() and \
                    (flags & os.O_ACCMODE) != os.O_WRONLY:
                # a private secret's value is write-only, for all
                raise StorageError("the value of a private secret cannot be read",
                                   errno.EACCES)
            owner = node.owner()
            if writing and ino.name in ("control", "state") and getattr(owner, "busy", ""):
                # the kernel lets one write() of a file run at a time (the running
                # operation's holds the inode): a second writer would wait there
                raise Busy(owner.busy_reason())
        if isinstance(node, ScratchFile):
            handle = node.open_write(caller(ctx))
            if writing and flags & os.O_TRUNC:
                handle.truncate(0)
            return self._new_handle(ino, handle, direct_io=True)
        if writing:
            return self._new_handle(ino, node.open_write(caller(ctx)), direct_io=True,
                                    pid=ctx.pid)
        if getattr(node, "streaming", False):
            with self.refusing(node, f"open {ino.name}"):
                handle = node.open_stream(caller(ctx))  # type: ignore[attr-defined]
            handle.ino = ino.ino
            return self._new_handle(ino, handle, direct_io=True, pid=ctx.pid)
        if node.live:
            opener = getattr(node, "open_read_by", None)
            handle = opener(ctx.pid) if opener is not None else node.open_read()
            return self._new_handle(ino, handle, direct_io=True)
        handle = node.open_read()
        keep = True
        if isinstance(node, Generated):
            if node._version is None:  # rendered at each read: no size to trust
                return self._new_handle(ino, handle, direct_io=True)
            # the kernel's cached pages are good while the bytes are those it last got
            keep = node.served == node._version
            node.served = node._version
        return self._new_handle(ino, handle, direct_io=False, keep_cache=keep)

    @fuse_op
    async def read(self, fh, off, size):
        return await self.handles[fh][1].aread(off, size)

    @fuse_op
    async def write(self, fh, off, buf):
        inode, handle = self.handles[fh]
        if isinstance(handle, ScratchHandle):
            return await handle.write(off, buf)
        return await interruptible(handle.pid, lambda: handle.write(off, buf),
                                   lambda: self._interrupted(inode))

    def _interrupted(self, inode: Inode) -> None:
        self.core.rec.interrupted(inode.node.owner())

    @fuse_op
    async def flush(self, fh):
        entry = self.handles.get(fh)
        if entry is not None:
            await entry[1].flush()

    @fuse_op
    async def release(self, fh):
        entry = self.handles.pop(fh, None)
        if entry is not None:
            entry[1].release()

    @fuse_op
    async def fsync(self, fh, datasync):
        return None

    @fuse_op
    async def poll(self, inode, fh, poll_handle, ctx):
        """progress files: readable when they changed since last read, else wait."""
        ino, handle = self.handles[fh]
        if isinstance(handle, StreamHandle):
            return handle.poll(poll_handle)
        if not isinstance(handle, LiveHandle):
            return select.POLLIN | select.POLLOUT
        if handle.version() != handle.seen:
            return select.POLLIN | select.POLLPRI
        if poll_handle is not None:
            vol = ino.node.owner()
            self.inval.pollers.setdefault((vol.pool.name, vol.name), []).append(poll_handle)
        return 0

    @fuse_op
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self.inode(parent_inode)
        text = os.fsdecode(name)
        if not hasattr(parent.node, "create"):
            with self.refusing(parent.node, f"create {text}"):
                raise NotPermitted("files can be made only inside a pool's, a volume's or a "
                                   "secret's directory")
        who = caller(ctx)
        with self.refusing(parent.node, f"create {text}"):
            node, handle = await parent.node.create(text, mode, who)  # type: ignore
        inode = self.table.child(parent, text, node)
        fi = self._new_handle(inode, handle, direct_io=True, pid=who.pid)
        return fi, self._entry(inode)

    @fuse_op
    async def unlink(self, parent_inode, name, ctx):
        parent = self.inode(parent_inode)
        text = os.fsdecode(name)
        if not hasattr(parent.node, "unlink"):
            with self.refusing(parent.node, f"unlink {text}"):
                parent.node.child(text, caller(ctx))  # type: ignore[attr-defined]
                raise NotPermitted(f"{text} is part of the tree; only rmdir of an object's "
                                   "directory removes anything")
        key = (parent.ino, text)
        self.inval.vfs_removing.add(key)
        try:
            with self.refusing(parent.node, f"unlink {text}"):
                await parent.node.unlink(text, caller(ctx))  # type: ignore[attr-defined]
        finally:
            self.inval.vfs_removing.discard(key)
        gone = parent.children.get(text)
        if gone is not None:
            self.table.detach(gone)

    @fuse_op
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        src_dir, dst_dir = self.inode(parent_inode_old), self.inode(parent_inode_new)
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        who = caller(ctx)
        try:
            subject = src_dir.node.child(old, who)  # type: ignore[attr-defined]
        except NotFound:
            raise FUSEError(errno.ENOENT) from None
        # a refused move of a pool or volume is recorded on that object
        recorder = subject if subject.kind == "dir" and subject.owner() is not None \
            else src_dir.node
        with self.refusing(recorder, f"rename {old} to {new}"):
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise InvalidArgument("renames that exchange two names are not supported")
            if subject.kind == "dir" and not isinstance(subject, ScratchDirNode):
                raise NotPermitted(f"{old} cannot be renamed: pools, volumes, secrets and "
                                   "the directories of the tree keep their names")
            if src_dir is not dst_dir:
                raise StorageError("files are renamed only within their directory",
                                   errno.EXDEV)
            if not hasattr(src_dir.node, "rename"):
                raise NotPermitted(f"cannot rename {old} to {new} here")
            await src_dir.node.rename(old, new, bool(flags & pyfuse3.RENAME_NOREPLACE),
                                      who)  # type: ignore[attr-defined]
        src, dst = src_dir.children.get(old), src_dir.children.get(new)
        if dst is not None and dst is not src:
            self.table.detach(dst)
        if src is not None:
            self.table.rename(src, new)
            try:
                src.node = src_dir.node.child(new, who)  # type: ignore[attr-defined]
            except NotFound:
                self.table.detach(src)

    @fuse_op
    async def setattr(self, inode, attr, fields, fh, ctx):
        ino = self.inode(inode)
        node = ino.node
        with self.refusing(node, f"setattr {ino.name}"):
            if node.kind != "file" and not isinstance(node, ScratchDirNode):
                return dir_setattr(self.tree, ino, attr, fields)
            handle = self.handles.get(fh) if fh is not None else None
            file_setattr(self.tree, ino, attr, fields, handle[1] if handle else None)
        return self.attrs(ino)

    # ---- refused outright ------------------------------------------------------
    @fuse_op
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self.inode(parent_inode)
        with self.refusing(parent.node, f"mknod {os.fsdecode(name)}"):
            raise NotPermitted("device nodes, fifos and sockets cannot be made here")

    @fuse_op
    async def symlink(self, parent_inode, name, target, ctx):
        parent = self.inode(parent_inode)
        with self.refusing(parent.node, f"symlink {os.fsdecode(name)}"):
            raise NotPermitted("symbolic links cannot be made here")

    @fuse_op
    async def link(self, inode, new_parent_inode, new_name, ctx):
        parent = self.inode(new_parent_inode)
        with self.refusing(parent.node, f"link {os.fsdecode(new_name)}"):
            raise NotPermitted("hard links cannot be made here")

    # Extended attributes: ENOSYS tells the kernel once that there are none, so that it
    # answers EOPNOTSUPP itself from then on (ls -l asks for ACLs of every entry; ENOTSUP
    # would cost one round trip per file).
    async def setxattr(self, inode, name, value, ctx):
        raise FUSEError(errno.ENOSYS)

    async def getxattr(self, inode, name, ctx):
        raise FUSEError(errno.ENOSYS)

    async def listxattr(self, inode, ctx):
        raise FUSEError(errno.ENOSYS)

    async def removexattr(self, inode, name, ctx):
        raise FUSEError(errno.ENOSYS)
