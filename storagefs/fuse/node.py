"""Node classes: what one path of the tree is, in rtslib's spirit (one directory per
object, one value per file, mode bits that tell what is writable).

Each inode holds one node. A node answers from what the core knows (no host tool, no
storage call): ``alive()`` says whether it still stands for a live object, directories
list and look up children, files give their bytes (generated files cache them per
version of their object, so an unchanged file costs no rendering), links their target.
The handlers in operations.py only dispatch to these methods.
"""

from __future__ import annotations

import errno
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import NotFound, NotPermitted, StorageError
from ..state import FileMeta
from .handles import Handle, ReadHandle

if TYPE_CHECKING:
    from .tree import Tree

Path = tuple[str, ...]


@dataclass(frozen=True)
class Caller:
    """Who asks (from pyfuse3's RequestContext): the process and its ids."""

    pid: int = 0
    uid: int = 0
    gid: int = 0


class Node:
    """A path of the tree. Subclasses set ``kind`` to 'dir', 'file' or 'link'."""

    kind: ClassVar[str] = "file"
    #: its attributes change only with its owner's changed_ns or the tree's attrs_gen
    #: (modes, owners, times, hidden names): cached per inode (ls -l of 100,000)
    attrs_by_stamp: ClassVar[bool] = False
    __slots__ = ("t", "path")

    def __init__(self, t: Tree, path: Path) -> None:
        self.t = t
        self.path = path

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    def key(self) -> tuple[Any, ...]:
        """What the node stands for: nodes with equal keys share an inode."""
        return ()

    def same(self, other: Node) -> bool:
        return type(self) is type(other) and self.key() == other.key()

    def alive(self) -> bool:
        """Does this path still exist (the object it shows is still the live one)?"""
        return True

    def owner(self) -> Any:
        """The pool, volume or secret whose error file records a refusal here."""
        return None

    def mtime_ns(self) -> int:
        owner = self.owner()
        return owner.changed_ns if owner is not None else self.t.mounted_ns

    def meta(self) -> FileMeta | None:
        """Mode, owner and times set by chmod/chown/touch (None: the defaults)."""
        return self.t.file_meta.get(self.path)

    def refuse(self, what: str) -> NotPermitted:
        return NotPermitted(what)


class Dir(Node):
    kind = "dir"
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        return []

    def child(self, name: str, caller: Caller) -> Node:
        raise NotFound(name)

    def listing_key(self) -> tuple | None:
        """What the names, children and their attributes depend on besides the tree's
        modes and times: readdir reuses what it sent while it is equal (None: never)."""
        return None

    def child_is_current(self, name: str, node: Node) -> bool:
        """Does ``node`` (of a child inode) still stand for what child(name) gives now?
        True lets readdir reuse it without making a node (False: ask child())."""
        return False

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        raise self.refuse("directories are made only in pools/, pools/P/volumes/, "
                          ".../VOL/snapshots/ and secrets/ (and scratch directories in an "
                          "object's directory)")

    async def rmdir(self, name: str, caller: Caller) -> None:
        node = self.child(name, caller)
        if node.kind != "dir":
            raise NotADirectory(name)
        raise self.refuse(f"{name} is part of the tree; it cannot be removed")

    def subdir(self, cls: type[Node], name: str, *args: Any) -> Node:
        return cls(self.t, (*self.path, name), *args)


class NotADirectory(StorageError):
    """rmdir of something that is not a directory."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not a directory", errno.ENOTDIR)


class File(Node):
    kind = "file"
    writable: ClassVar[bool] = False
    #: files whose bytes change while open (progress): direct I/O, poll()
    live: ClassVar[bool] = False
    __slots__ = ()

    def content(self) -> bytes:
        return b""

    def size(self) -> int:
        return len(self.content())

    def mode(self) -> int:
        return 0o644 if self.writable else 0o444

    def open_read(self) -> Handle:
        return ReadHandle(self.content())

    def open_write(self, caller: Caller) -> Handle:
        raise PermissionError


class Generated(File):
    """A file rendered from an object: the bytes are cached until ``version()`` changes.

    ``served`` is the version the kernel last got: an open of an unchanged file keeps
    the kernel's page cache (keep_cache), a changed one makes the kernel drop it."""

    __slots__ = ("_version", "_bytes", "served", "bytes_ns")

    def __init__(self, t: Tree, path: Path) -> None:
        super().__init__(t, path)
        self._version: object = None
        self._bytes = b""
        self.served: object = None
        #: when its bytes last changed: its object's last change when first rendered,
        #: the time of the rendering that changed them since (-1: never rendered). A
        #: file's mtime moves with its own bytes, not with every change of its object
        #: (tar, find -newer, rsync)
        self.bytes_ns = -1

    def version(self) -> object:
        """A value that changes whenever render() would give other bytes."""
        owner = self.owner()
        return owner.version if owner is not None else 0

    def render(self) -> bytes:
        return b""

    def content(self) -> bytes:
        v = self.version()
        if v != self._version or v is None:
            data = self.render()
            if self.bytes_ns < 0:
                self.bytes_ns = self.mtime_ns()  # its object's last change: no later
            elif data != self._bytes:
                self.bytes_ns = time.time_ns()
            self._bytes, self._version = data, v
        return self._bytes


class Static(File):
    __slots__ = ("data",)

    def __init__(self, t: Tree, path: Path, data: bytes) -> None:
        super().__init__(t, path)
        self.data = data

    def content(self) -> bytes:
        return self.data


class Link(Node):
    kind = "link"
    __slots__ = ("_target",)

    def __init__(self, t: Tree, path: Path, target: str) -> None:
        super().__init__(t, path)
        self._target = target

    def key(self) -> tuple[Any, ...]:
        return (self._target,)

    def target(self) -> str:
        return self._target


class TableLink(Link):
    """A link of a LinkTable: alive while the table still maps its name to its target."""

    __slots__ = ("table",)

    def __init__(self, t: Tree, path: Path, target: str, table) -> None:
        super().__init__(t, path, target)
        self.table = table

    def alive(self) -> bool:
        return self.table().get(self.name) == self._target


class LinkTable(Dir):
    """A directory of links from a table (name -> target), e.g. pools/by-uuid/."""

    __slots__ = ("table",)

    def __init__(self, t: Tree, path: Path, table) -> None:
        super().__init__(t, path)
        self.table = table

    def names(self, caller: Caller) -> list[str]:
        return sorted(self.table())

    def child(self, name: str, caller: Caller) -> Node:
        target = self.table().get(name)
        if target is None:
            raise NotFound(name)
        return TableLink(self.t, (*self.path, name), target, self.table)


def file_mode(node: Node) -> int:
    """st_mode of a node, with what chmod set on it."""
    if node.kind == "dir":
        return stat.S_IFDIR | 0o755
    if node.kind == "link":
        return stat.S_IFLNK | 0o777
    meta = node.meta()
    if meta is not None:
        return stat.S_IFREG | (meta.mode & 0o7777)
    return stat.S_IFREG | node.mode()  # type: ignore[attr-defined]
