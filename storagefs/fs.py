"""The FUSE handlers for lookups, attributes and directories (files: fsfiles.py)."""

from __future__ import annotations

import errno
import logging
import os
import stat

import pyfuse3
from pyfuse3 import FUSEError

from .errors import Exists, NotFound, NotPermitted, StorageError
from .fs_base import _name, fuse_op
from .fsfiles import OBJECT_DIRS, FileOps
from .objects import now_ns
from .state import FileMeta
from .view import Kind

log = logging.getLogger(__name__)


class StorageFS(FileOps):
    # ---- lookup and attributes ---------------------------------------------
    @fuse_op
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self.node(parent_inode)
        try:
            node, e = self._child(parent, _name(name), ctx.pid if ctx else 0)
        except NotFound:
            raise FUSEError(errno.ENOENT) from None
        attrs = self.attrs(node, e)
        node.lookups += 1
        return attrs

    async def forget(self, inode_list):
        for ino, count in inode_list:
            try:
                self.table.forget(ino, count)
            except Exception:
                log.exception("forget failed")

    @fuse_op
    async def getattr(self, inode, ctx=None):
        return self.attrs(self.node(inode))

    @fuse_op
    async def readlink(self, inode, ctx):
        e = self.entry(self.node(inode))
        if e.kind is not Kind.LINK:
            raise FUSEError(errno.EINVAL)
        return os.fsencode(e.target)

    @fuse_op
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        s.f_files = len(self.table.nodes)
        return s

    # ---- directories -------------------------------------------------------------
    @fuse_op
    async def opendir(self, inode, ctx):
        node = self.node(inode)
        e = self.entry(node)
        if not e.is_dir:
            raise FUSEError(errno.ENOTDIR)
        names = [] if e.kind is Kind.SCRATCH_DIR else self.view.children(node.path, e)
        names += sorted(self.scratch_dirs.get(node.path, {}))
        names += sorted(self.scratch.get(node.path, {}))
        fh = next(self._fh)
        self.dirs[fh] = (node, names)
        return fh

    @fuse_op
    async def readdir(self, fh, start_id, token):
        parent, names = self.dirs[fh]
        if parent.stale:
            return
        for i in range(start_id, len(names)):
            try:
                node, e = self._child(parent, names[i])
                attrs = self.attrs(node, e)
            except (NotFound, FUSEError):
                continue  # gone since opendir
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]), attrs, i + 1):
                return
            node.lookups += 1

    @fuse_op
    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    @fuse_op
    async def fsyncdir(self, fh, datasync):
        return None

    @fuse_op
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self.node(parent_inode)
        e = self.entry(parent)
        text = _name(name)
        with self.refusals(parent, f"mkdir {text}"):
            if parent.path == ("pools",):
                self.m.mkdir_pool(text)
            elif parent.path == ("secrets",):
                self.m.mkdir_secret(text)
            elif e.kind is Kind.POOL_VOLUMES:
                await self.m.create_volume(e.pool.name, text)
            elif e.kind is Kind.SNAPSHOTS:
                await self.m.mkdir_snapshot(e.pool.name, e.volume.name, text)
            elif e.kind in OBJECT_DIRS:
                self._mkdir_scratch(parent, text, mode, ctx)
            else:
                raise NotPermitted("directories are made only in pools/, pools/P/volumes/, "
                                   ".../VOL/snapshots/ and (scratch directories) in a pool's, "
                                   "a volume's or a secret's directory")
        node, ce = self._child(parent, text)
        attrs = self.attrs(node, ce)
        node.lookups += 1
        return attrs

    def _mkdir_scratch(self, parent, name: str, mode: int, ctx) -> None:
        """A scratch directory (Puppet's `config.xml<date>-<pid>-<rand>.lock`): it holds
        scratch files only and is not persisted. A name the tree has is EEXIST."""
        try:
            self.resolve((*parent.path, name))
        except NotFound:
            pass
        else:
            raise Exists(f"{name} exists")
        t = now_ns()
        self.scratch_dirs.setdefault(parent.path, {})[name] = FileMeta(
            mode=stat.S_IMODE(mode), uid=ctx.uid, gid=ctx.gid, atime_ns=t, mtime_ns=t,
            ctime_ns=t)

    @fuse_op
    async def rmdir(self, parent_inode, name, ctx):
        parent = self.node(parent_inode)
        text = _name(name)
        with self.refusals(parent, f"rmdir {text}"):
            await self._rmdir(parent, text)

    async def _rmdir(self, parent, text: str) -> None:
        path = (*parent.path, text)
        e = self.resolve(path)
        if e.kind is Kind.SCRATCH_DIR:
            if self.scratch.get(path):
                raise StorageError(f"scratch directory {text} holds files", errno.ENOTEMPTY)
            del self.scratch_dirs[parent.path][text]
            if not self.scratch_dirs[parent.path]:
                del self.scratch_dirs[parent.path]
            self.dir_times.pop(path, None)
            node = parent.children.get(text)
            if node is not None:
                self.table.detach(node)  # a new directory of that name is a new inode
            return
        if e.kind is Kind.POOL:
            await self.m.undefine_pool(e.pool.name)
            self.forget_scratch(path)
        elif e.kind is Kind.VOLUME:
            await self.m.delete_volume(e.pool.name, e.volume.name)
            self.forget_scratch(path)
        elif e.kind is Kind.SECRET:
            await self.m.undefine_secret(e.secret.uuid)
            self.forget_scratch(path)
        elif e.kind is Kind.SNAPSHOT:
            await self.m.rmdir_snapshot(e.pool.name, e.volume.name, text)
        elif e.is_dir:
            raise NotPermitted(f"{text} is part of the tree; it cannot be removed")
        else:
            raise StorageError(f"{text} is not a directory", errno.ENOTDIR)
