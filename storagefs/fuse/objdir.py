"""An object's directory (pool, volume, secret) with its scratch entries.

SPEC "Writers that use temp files work" and "Scratch files and directories": any other
name made in an object's directory is a scratch file (editor swap files, the temp files
that sed -i, rsync, Ansible, Puppet and Salt write and rename onto the target) or a
scratch directory (Puppet's lock directory); renaming a scratch file onto a writable
file is the same as writing it; nothing scratch is persisted; unlink of config.xml never
destroys anything (the name is only hidden, for a moment, from the process that unlinked
it, so that GNU install's create-anew and vim's rename-then-create work).
"""

from __future__ import annotations

import dataclasses
import stat
from typing import Any

from ..errors import Exists, InvalidArgument, NotFound, NotPermitted, StorageError
from ..state import FileMeta
from .handles import Handle, Scratch, ScratchHandle
from .node import Caller, Dir, File, Node, NotADirectory
from .tree import ScratchDir

MAX_SCRATCH_ENTRIES = 1024


class DirectoryNotEmpty(StorageError):
    """rmdir of a scratch directory that still holds files."""

    def __init__(self, name: str) -> None:
        import errno

        super().__init__(f"scratch directory {name} is not empty", errno.ENOTEMPTY)


class IsADirectory(StorageError):
    """unlink of a directory."""

    def __init__(self, name: str) -> None:
        import errno

        super().__init__(f"{name} is a directory: rmdir removes it", errno.EISDIR)


class ScratchFile(File):
    writable = True
    __slots__ = ("scratch",)

    def __init__(self, t, path, scratch: Scratch) -> None:
        super().__init__(t, path)
        self.scratch = scratch

    def key(self) -> tuple[Any, ...]:
        return (id(self.scratch),)

    def alive(self) -> bool:
        entries = self.t.scratch.get(self.path[:-1])
        return entries is not None and entries.get(self.name) is self.scratch

    def content(self) -> bytes:
        return bytes(self.scratch.data)

    def meta(self) -> FileMeta:
        return self.scratch.meta

    def mtime_ns(self) -> int:
        return self.scratch.meta.mtime_ns

    def open_read(self) -> Handle:
        return ScratchHandle(self.scratch)

    def open_write(self, caller: Caller) -> Handle:
        return ScratchHandle(self.scratch)


def new_scratch(mode: int, caller: Caller) -> Scratch:
    scratch = Scratch()
    scratch.meta.mode = stat.S_IMODE(mode)
    scratch.meta.uid, scratch.meta.gid = caller.uid, caller.gid
    return scratch


class _ScratchHolder(Dir):
    """Shared by object directories and scratch directories: scratch files in them."""

    __slots__ = ()

    def _entries(self) -> dict[str, Scratch | ScratchDir]:
        return self.t.scratch_of(self.path)

    def _scratch_node(self, name: str, entry: Scratch | ScratchDir) -> Node:
        if isinstance(entry, ScratchDir):
            return ScratchDirNode(self.t, (*self.path, name), entry)
        return ScratchFile(self.t, (*self.path, name), entry)

    def _check_room(self) -> None:
        if len(self._entries()) >= MAX_SCRATCH_ENTRIES:
            raise NotPermitted(f"too many scratch entries in this directory "
                               f"(at most {MAX_SCRATCH_ENTRIES})")

    def _new_file(self, name: str, mode: int, caller: Caller) -> tuple[Node, Handle]:
        self._check_room()
        scratch = new_scratch(mode, caller)
        self.t.add_scratch(self.path, name, scratch)
        return ScratchFile(self.t, (*self.path, name), scratch), ScratchHandle(scratch)


class ScratchDirNode(_ScratchHolder):
    __slots__ = ("sdir",)

    def __init__(self, t, path, sdir: ScratchDir) -> None:
        super().__init__(t, path)
        self.sdir = sdir

    def key(self) -> tuple[Any, ...]:
        return (id(self.sdir),)

    def alive(self) -> bool:
        entries = self.t.scratch.get(self.path[:-1])
        return entries is not None and entries.get(self.name) is self.sdir

    def owner(self) -> Any:
        return None

    def meta(self) -> FileMeta:
        return self.sdir.meta

    def mtime_ns(self) -> int:
        return self.sdir.meta.mtime_ns

    def names(self, caller: Caller) -> list[str]:
        return sorted(self._entries())

    def child(self, name: str, caller: Caller) -> Node:
        entry = self._entries().get(name)
        if entry is None:
            raise NotFound(name)
        return self._scratch_node(name, entry)

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        raise NotPermitted("a scratch directory holds scratch files only")

    async def rmdir(self, name: str, caller: Caller) -> None:
        self.child(name, caller)
        raise NotADirectory(name)

    async def create(self, name: str, mode: int, caller: Caller) -> tuple[Node, Handle]:
        if name in self._entries():
            raise Exists(f"{name} exists")
        return self._new_file(name, mode, caller)

    async def unlink(self, name: str, caller: Caller) -> None:
        if self.t.drop_scratch(self.path, name) is None:
            raise NotFound(name)

    async def rename(self, old: str, new: str, noreplace: bool, caller: Caller) -> None:
        entries = self._entries()
        if old not in entries:
            raise NotFound(old)
        if noreplace and new in entries:
            raise Exists(f"{new} exists")
        entry = entries.pop(old)
        entries[new] = entry


class ObjectDir(_ScratchHolder):
    """A pool's, volume's or secret's directory. Subclasses give ``object_names`` and
    ``object_child`` (the object's own files)."""

    __slots__ = ()

    def object_names(self) -> list[str]:
        return []

    def object_child(self, name: str) -> Node:
        raise NotFound(name)

    def names(self, caller: Caller) -> list[str]:
        return [*self.object_names(), *sorted(self._entries())]

    def child(self, name: str, caller: Caller) -> Node:
        entry = self._entries().get(name)
        if entry is not None:
            return self._scratch_node(name, entry)
        if self.t.hidden((*self.path, name), caller.pid):
            raise NotFound(name)
        return self.object_child(name)

    def _exists(self, name: str) -> bool:
        if name in self._entries():
            return True
        try:
            self.object_child(name)
        except NotFound:
            return False
        return True

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        """A scratch directory (e.g. Puppet's ``config.xml<date>-<pid>-<rand>.lock``)."""
        if self._exists(name):
            raise Exists(f"{name} exists")
        self._check_room()
        sdir = ScratchDir()
        sdir.meta.mode = stat.S_IMODE(mode)
        sdir.meta.uid, sdir.meta.gid = caller.uid, caller.gid
        self.t.add_scratch(self.path, name, sdir)
        return ScratchDirNode(self.t, (*self.path, name), sdir)

    async def rmdir(self, name: str, caller: Caller) -> None:
        entry = self._entries().get(name)
        if isinstance(entry, ScratchDir):
            if self.t.scratch.get((*self.path, name)):
                raise DirectoryNotEmpty(name)
            self.t.drop_scratch(self.path, name)
            return
        if entry is not None:
            raise NotADirectory(name)
        await super().rmdir(name, caller)

    async def create(self, name: str, mode: int, caller: Caller) -> tuple[Node, Handle]:
        path = (*self.path, name)
        if self.t.hidden(path, caller.pid):
            # the same process unlinked it a moment ago (GNU install): write it anew
            self.t.unhide(path, caller.pid)
            node = self.object_child(name)
            return node, node.open_write(caller)  # type: ignore[attr-defined]
        if self._exists(name):
            raise Exists(f"{name} exists")
        return self._new_file(name, mode, caller)

    async def unlink(self, name: str, caller: Caller) -> None:
        entry = self._entries().get(name)
        if isinstance(entry, ScratchDir):
            raise IsADirectory(name)
        if entry is not None:
            self.t.drop_scratch(self.path, name)
            return
        node = self.object_child(name)
        if node.kind == "dir":
            raise IsADirectory(name)
        if name == "config.xml":
            # never destroys: the object stays; the next document replaces the definition
            self.t.hide((*self.path, name), caller.pid)
            return
        raise NotPermitted(f"{name} is generated by storagefs; only rmdir of the "
                           "object's directory removes anything")

    async def rename(self, old: str, new: str, noreplace: bool, caller: Caller) -> None:
        entries = self._entries()
        src = entries.get(old)
        if src is None:
            if self.t.hidden((*self.path, old), caller.pid):
                raise NotFound(old)
            src_node = self.object_child(old)
        else:
            src_node = self._scratch_node(old, src)
        try:
            dst_node: Node | None = self.child(new, caller)
        except NotFound:
            dst_node = None
        if dst_node is not None and noreplace:
            raise Exists(f"{new} exists")
        if src_node.kind == "dir" and not isinstance(src, ScratchDir):
            raise NotPermitted(f"{old} cannot be renamed: pools, volumes and their files "
                               "keep their names")
        if isinstance(src, Scratch) and isinstance(dst_node, File) and dst_node.writable \
                and not isinstance(dst_node, ScratchFile):
            await dst_node.replace_with(src)  # type: ignore[attr-defined]
            self.t.drop_scratch(self.path, old)
            self.t.unhide((*self.path, new))
            return
        if src is not None and (dst_node is None or isinstance(dst_node, ScratchFile)
                                or (isinstance(src, ScratchDir)
                                    and isinstance(dst_node, ScratchDirNode))):
            if isinstance(dst_node, ScratchDirNode) and self.t.scratch.get(dst_node.path):
                raise DirectoryNotEmpty(new)
            self.t.drop_scratch(self.path, new)
            entries = self.t.scratch.setdefault(self.path, {})
            entries[new] = entries.pop(old)
            if isinstance(src, ScratchDir):
                moved = self.t.scratch.pop((*self.path, old), None)
                if moved is not None:
                    self.t.scratch[(*self.path, new)] = moved
            return
        if old == "config.xml" and src is None and dst_node is None:
            # vim's backup: the document moves aside as a scratch copy; config.xml stays
            copy = Scratch(bytearray(src_node.content()))  # type: ignore[attr-defined]
            meta = src_node.meta()
            if meta is not None:
                copy.meta = dataclasses.replace(meta)
            self._check_room()
            self.t.add_scratch(self.path, new, copy)
            self.t.hide((*self.path, old), caller.pid)
            return
        raise NotPermitted(f"cannot rename {old} to {new}")


def refuse_bad_name(name: str) -> None:
    if "/" in name or "\0" in name:
        raise InvalidArgument(f"bad name {name!r}")
