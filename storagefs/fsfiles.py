"""File handlers of the FUSE layer: open/read/write, create, unlink, rename, setattr.

Writable files (config.xml, state, autostart, control) take their bytes as an
operation; every other new name in a pool or volume directory is a scratch
file, and renaming a scratch file onto a writable file is the same as writing
it (the way sed -i, rsync, Ansible, Puppet and Salt save files).
"""

from __future__ import annotations

import errno
import os
import select
import stat

import pyfuse3
from pyfuse3 import FUSEError

from .commands import parse_yes_no
from .errors import Busy, Exists, InvalidArgument, NotFound, NotPermitted, StorageError
from .fs_base import FsBase, _name, fuse_op
from .handles import (
    Apply,
    CommandHandle,
    DocumentHandle,
    Handle,
    LiveHandle,
    Scratch,
    ScratchHandle,
    ValueHandle,
)
from .interrupt import interruptible
from .objects import now_ns
from .pool_cmds import check_pool_command, check_state_word
from .state import FileMeta
from .view import Entry, Kind
from .volume_cmds import check_volume_command

OBJECT_DIRS = (Kind.POOL, Kind.VOLUME, Kind.SECRET)
#: what every line written to a command file must look like (checked before any runs)
COMMAND_CHECKS = {
    (Kind.POOL_FILE, "control"): check_pool_command,
    (Kind.POOL_FILE, "state"): check_state_word,
    (Kind.POOL_FILE, "autostart"): parse_yes_no,
    (Kind.VOL_FILE, "control"): check_volume_command,
}


class FileOps(FsBase):
    def applier(self, e: Entry, meta: FileMeta | None = None) -> Apply:
        """The operation that bytes written to the writable file ``e`` perform."""
        m, pool, vol, secret = self.m, e.pool, e.volume, e.secret
        if secret is not None:
            if e.name == "config.xml":
                return lambda data: m.define_secret(secret.uuid, data, meta)
            return lambda data: m.set_secret_value(secret.uuid, data)
        if vol is None:
            if e.name == "config.xml":
                return lambda data: m.define_pool(pool.name, data, meta)
            fn = {"state": m.set_pool_state, "autostart": m.set_autostart,
                  "control": m.pool_command}[e.name]
            return lambda data: fn(pool.name, data)
        if e.name == "config.xml":
            return lambda data: m.define_volume(pool.name, vol.name, data, meta)
        return lambda data: m.volume_command(pool.name, vol.name, data)

    def _new_handle(self, node, handle: Handle, direct_io: bool = True,
                    pid: int = 0) -> pyfuse3.FileInfo:
        handle.pid = pid
        fh = next(self._fh)
        self.handles[fh] = (node, handle)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct_io, keep_cache=not direct_io)

    def _writer(self, e: Entry, snapshot: bytes) -> Handle:
        if e.name == "config.xml":
            owner = e.owner
            return DocumentHandle(snapshot, self.applier(e),
                                  lambda exc: self.m.note_refusal(owner, "define", exc))
        if e.kind is Kind.SECRET_FILE:
            return ValueHandle(self.applier(e))
        owner = e.owner
        check_all = None
        if e.kind is Kind.POOL_FILE and e.name in ("control", "state"):
            pool, state_file = e.pool, e.name == "state"
            check_all = lambda lines: self.m.check_pool_lines(pool, lines, state_file)  # noqa: E731
        return CommandHandle(snapshot, self.applier(e), COMMAND_CHECKS[(e.kind, e.name)],
                             lambda exc: self.m.note_refusal(owner, e.name, exc), check_all)

    @fuse_op
    async def open(self, inode, flags, ctx):
        node = self.node(inode)
        e = self.entry(node)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        if e.is_dir:
            raise FUSEError(errno.EISDIR)
        if e.kind is Kind.LINK:
            raise FUSEError(errno.ELOOP)
        if e.kind is Kind.SCRATCH:
            handle = ScratchHandle(self.scratch[node.path[:-1]][e.name])
            if writing and flags & os.O_TRUNC:
                handle.truncate(0)
            return self._new_handle(node, handle)
        if writing and not e.writable:
            raise FUSEError(errno.EACCES)
        if writing and e.name in ("control", "state") and \
                e.kind in (Kind.POOL_FILE, Kind.VOL_FILE) and e.owner.busy:
            # the kernel lets one write() of a file run at a time (the running operation's
            # holds the inode): a second writer would wait there, so it is refused now
            exc = Busy(e.owner.busy_reason())
            self.m.note_refusal(e.owner, f"open {e.name}", exc)
            raise exc
        if e.kind is Kind.SECRET_FILE and e.name == "value" and e.secret.private and \
                (flags & os.O_ACCMODE) != os.O_WRONLY:
            raise FUSEError(errno.EACCES)  # a private secret's value is write-only, for all
        if e.kind is Kind.VOL_FILE and e.name == "progress":
            vol = e.volume
            return self._new_handle(node, LiveHandle(lambda: self.view.content(e),
                                                     lambda: vol.progress_version))
        snapshot = self.view.content(e)
        if not writing:
            return self._new_handle(node, Handle(snapshot), direct_io=e.kind is not Kind.README)
        return self._new_handle(node, self._writer(e, snapshot), pid=ctx.pid)

    @fuse_op
    async def read(self, fh, off, size):
        return self.handles[fh][1].read(off, size)

    @fuse_op
    async def write(self, fh, off, buf):
        node, handle = self.handles[fh]
        if isinstance(handle, ScratchHandle):
            return await handle.write(off, buf)
        return await interruptible(handle.pid, lambda: handle.write(off, buf),
                                   lambda: self._interrupted(node))

    def _interrupted(self, node) -> None:
        try:
            owner = self.entry(node).owner
        except FUSEError:
            return
        self.m.note_refusal(owner, "write", StorageError("interrupted by a signal; the "
                                                         "operation was undone", errno.EINTR))

    @fuse_op
    async def flush(self, fh):
        handle = self.handles.get(fh)
        if handle is not None:
            await handle[1].flush()

    @fuse_op
    async def release(self, fh):
        self.handles.pop(fh, None)

    @fuse_op
    async def fsync(self, fh, datasync):
        return None

    @fuse_op
    async def poll(self, inode, fh, poll_handle, ctx):
        """progress files: readable when they changed since last read, else wait."""
        node, handle = self.handles[fh]
        if not isinstance(handle, LiveHandle):
            return select.POLLIN | select.POLLOUT
        if handle.version() != handle.seen:
            return select.POLLIN | select.POLLPRI
        if poll_handle is not None:
            e = self.entry(node)
            self.inval.pollers.setdefault((e.pool.name, e.volume.name), []).append(poll_handle)
        return 0

    @fuse_op
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self.node(parent_inode)
        pe = self.entry(parent)
        text = _name(name)
        if pe.kind not in OBJECT_DIRS and pe.kind is not Kind.SCRATCH_DIR:
            raise NotPermitted("files can be made only inside a pool's or a volume's directory")
        if text in (self.hidden_from(parent.path, ctx.pid) or ()):
            self.unhide(parent.path, text)  # install, vim: the file made anew
            node, e = self._child(parent, text)
            fi = self._new_handle(node, self._writer(e, self.view.content(e)), pid=ctx.pid)
        else:
            try:
                self.resolve((*parent.path, text))
                raise Exists(f"{text} exists")
            except NotFound:
                pass
            scratch = Scratch()
            scratch.meta.mode = stat.S_IMODE(mode)
            scratch.meta.uid, scratch.meta.gid = ctx.uid, ctx.gid
            self.scratch.setdefault(parent.path, {})[text] = scratch
            node, e = self._child(parent, text)
            handle = ScratchHandle(scratch)
            fi = self._new_handle(node, handle)
        attrs = self.attrs(node, e)
        node.lookups += 1
        return fi, attrs

    @fuse_op
    async def unlink(self, parent_inode, name, ctx):
        parent = self.node(parent_inode)
        text = _name(name)
        e = self.resolve((*parent.path, text), ctx.pid)
        if e.kind is Kind.SCRATCH:
            del self.scratch[parent.path][text]
            if not self.scratch[parent.path]:
                del self.scratch[parent.path]
            return
        if e.name == "config.xml" and e.kind is not Kind.SCRATCH:
            # never destroys: the object stays; the next document replaces the definition
            self.hide(parent.path, text, ctx.pid)
            node = parent.children.get(text)
            if node is not None:
                self.table.detach(node)
            return
        raise NotPermitted(f"{text} is generated by storagefs; only rmdir of the "
                           "object's directory removes anything")

    @fuse_op
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        src_dir, dst_dir = self.node(parent_inode_old), self.node(parent_inode_new)
        old, new = _name(name_old), _name(name_new)
        se = self.resolve((*src_dir.path, old), ctx.pid)
        if se.kind is Kind.SCRATCH_DIR:
            raise NotPermitted("scratch directories cannot be renamed")
        if se.is_dir:
            raise NotPermitted("pools and volumes cannot be renamed")
        if src_dir is not dst_dir:
            raise FUSEError(errno.EXDEV)
        try:
            de = self.resolve((*dst_dir.path, new))
        except NotFound:
            de = None
        if de is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise FUSEError(errno.EEXIST)
        scratches = self.scratch.setdefault(src_dir.path, {})
        if se.kind is Kind.SCRATCH and de is not None and de.writable and \
                de.kind is not Kind.SCRATCH:
            await self._apply_scratch(de, scratches[old])
            del scratches[old]
            self.unhide(dst_dir.path, new)
        elif se.kind is Kind.SCRATCH and (de is None or de.kind is Kind.SCRATCH):
            scratches[new] = scratches.pop(old)
        elif se.name == "config.xml" and se.kind is not Kind.SCRATCH and \
                (de is None or de.kind is Kind.SCRATCH):
            copy = Scratch(bytearray(self.view.content(se)))
            meta = self._meta(src_dir.children.get(old) or src_dir, se)
            if meta is not None and not isinstance(meta, Scratch):
                copy.meta = FileMeta(**vars(meta))
            scratches[new] = copy
            self.hide(src_dir.path, old, ctx.pid)
        else:
            raise NotPermitted(f"cannot rename {old} to {new}")
        if not scratches:
            self.scratch.pop(src_dir.path, None)
        node = src_dir.children.get(old)
        if node is not None:
            self.table.rename(node, new)

    async def _apply_scratch(self, e: Entry, scratch: Scratch) -> None:
        data = bytes(scratch.data)
        if e.kind is Kind.SECRET_FILE and e.name == "value":
            await self.applier(e)(data)
            return
        if e.name != "config.xml":
            handle = self._writer(e, b"")
            await handle.write(0, data)
            await handle.flush()
            return
        old = e.owner.meta
        meta = FileMeta(**vars(scratch.meta))
        if not scratch.times_set:
            meta.atime_ns, meta.mtime_ns = old.atime_ns, old.mtime_ns
        await self.applier(e, meta)(data)

    @fuse_op
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.node(inode)
        e = self.entry(node)
        if e.kind is Kind.SCRATCH_DIR:
            meta = self.scratch_dirs[node.path[:-1]][e.name]
            for want, field, value in ((fields.update_mode, "mode", stat.S_IMODE(attr.st_mode)),
                                       (fields.update_uid, "uid", attr.st_uid),
                                       (fields.update_gid, "gid", attr.st_gid),
                                       (fields.update_atime, "atime_ns", attr.st_atime_ns),
                                       (fields.update_mtime, "mtime_ns", attr.st_mtime_ns)):
                if want:
                    setattr(meta, field, value)
            meta.ctime_ns = now_ns()
            return self.attrs(node, e)
        if e.is_dir or e.kind is Kind.LINK:
            # rsync -a sets times (kept, in memory) and re-sets equal modes on directories;
            # a real mode or owner change would be a lie, so it is refused
            cur = self.attrs(node, e)
            if (fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(cur.st_mode)) \
                    or (fields.update_uid and attr.st_uid != cur.st_uid) \
                    or (fields.update_gid and attr.st_gid != cur.st_gid):
                raise NotPermitted(f"{node.name}: the mode and owner of directories are fixed")
            if fields.update_atime or fields.update_mtime:
                old = self.dir_times.get(node.path, (cur.st_atime_ns, cur.st_mtime_ns))
                self.dir_times[node.path] = (
                    attr.st_atime_ns if fields.update_atime else old[0],
                    attr.st_mtime_ns if fields.update_mtime else old[1])
                cur = self.attrs(node, e)
            return cur
        if not e.writable:
            raise NotPermitted(f"{node.name} is generated by storagefs and read-only")
        if fields.update_size:
            handle = self.handles.get(fh) if fh is not None else None
            if handle is not None:
                handle[1].truncate(attr.st_size)
            elif e.kind is Kind.SCRATCH:
                ScratchHandle(self.scratch[node.path[:-1]][e.name]).truncate(attr.st_size)
            elif attr.st_size != 0:
                raise InvalidArgument("only truncation to 0 is accepted (it empties the "
                                      "next write's buffer, not the definition)")
        self._set_meta(node, e, attr, fields)
        return self.attrs(node, e)

    def _set_meta(self, node, e: Entry, attr, fields) -> None:
        if not (fields.update_mode or fields.update_uid or fields.update_gid
                or fields.update_atime or fields.update_mtime):
            return
        scratch = self.scratch[node.path[:-1]][e.name] if e.kind is Kind.SCRATCH else None
        current = scratch.meta if scratch else self._meta(node, e)
        meta = FileMeta(**vars(current)) if current else FileMeta(mode=0o644)
        if fields.update_mode:
            meta.mode = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            meta.uid = attr.st_uid
        if fields.update_gid:
            meta.gid = attr.st_gid
        if fields.update_atime:
            meta.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            meta.mtime_ns = attr.st_mtime_ns
        meta.ctime_ns = now_ns()
        if scratch is not None:
            scratch.meta = meta
            scratch.times_set = scratch.times_set or fields.update_mtime
        elif e.name == "config.xml":
            self.m.set_config_meta(e.owner, meta)
        else:
            self.file_meta[node.path] = meta

    # ---- refused outright ----------------------------------------------------
    @fuse_op
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise NotPermitted("device nodes cannot be made here")

    @fuse_op
    async def symlink(self, parent_inode, name, target, ctx):
        raise NotPermitted("links cannot be made here")

    @fuse_op
    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise NotPermitted("links cannot be made here")

    @fuse_op
    async def setxattr(self, inode, name, value, ctx):
        raise FUSEError(errno.ENOTSUP)

    @fuse_op
    async def getxattr(self, inode, name, ctx):
        raise FUSEError(errno.ENOTSUP)

    @fuse_op
    async def listxattr(self, inode, ctx):
        raise FUSEError(errno.ENOTSUP)

    @fuse_op
    async def removexattr(self, inode, name, ctx):
        raise FUSEError(errno.ENOTSUP)
