"""The inode table: paths of the virtual tree <-> inode numbers, with lookup counts.

An inode stands for one path of names from the root and holds the node object that
answers for it (see nodes.py). Inodes are made when the kernel first learns of a path
(lookup, readdir, mkdir, create) and dropped when it forgets them. When an object
disappears, its inodes are marked stale, so the next request on a cached inode gets
ENOENT, and a later object of the same name gets a new inode (the kernel never mixes
the two up).

Inode numbers are a hash of the path and the object it shows, so a path keeps its
number while its object lives, also after the kernel forgot the inode and looks it up
again (``find -inum``, ``tar --listed-incremental``, rsync's hard-link check); a new
object of the same name gets another number. A number already taken (a collision in
63 bits, or a stale inode the kernel still holds) falls back to a counter.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pyfuse3

if TYPE_CHECKING:
    from .listing import Listing
    from .node import Node

Path = tuple[str, ...]

INO_BITS = (1 << 63) - 1


def _token(value: object) -> object:
    """What stands for ``value`` in an inode's hash: values as they are, objects by
    identity (a live object keeps its id; a new object of the same name has another)."""
    if isinstance(value, (str, bytes, int, float, type(None))):
        return value
    if isinstance(value, tuple):
        return tuple(_token(v) for v in value)
    return ("id", id(value))


class Inode:
    __slots__ = ("ino", "path", "parent", "children", "lookups", "stale", "node", "attrs",
                 "listing")

    def __init__(self, ino: int, path: Path, parent: Inode | None, node: Node | None) -> None:
        self.ino = ino
        self.path = path
        self.parent = parent
        self.children: dict[str, Inode] = {}
        self.lookups = 0
        self.stale = False
        self.node = node
        #: (changed_ns, attrs_gen, EntryAttributes) of a directory whose attributes are
        #: cached (attrs.py)
        self.attrs: tuple | None = None
        #: a directory's entries as readdir last sent them (listing.py)
        self.listing: Listing | None = None

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""


class InodeTable:
    def __init__(self, root: Node) -> None:
        self.root = Inode(pyfuse3.ROOT_INODE, (), None, root)
        self.root.lookups = 1
        self.inodes: dict[int, Inode] = {self.root.ino: self.root}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)
        #: bumped whenever an inode is dropped, made stale or moved (Listing's key)
        self.gen = 0

    def __len__(self) -> int:
        return len(self.inodes)

    def get(self, ino: int) -> Inode | None:
        return self.inodes.get(ino)

    def child(self, parent: Inode, name: str, node: Node) -> Inode:
        """The inode of parent/name, answering with ``node``: the existing inode when
        it still stands for the same object, else a new one (the old one goes stale)."""
        inode = parent.children.get(name)
        if inode is not None:
            if inode.node is node or (inode.node is not None and inode.node.same(node)):
                return inode
            self.detach(inode)
        path = (*parent.path, name)
        inode = Inode(self._number(path, node), path, parent, node)
        parent.children[name] = inode
        self.inodes[inode.ino] = inode
        return inode

    def fresh(self, parent: Inode, name: str, node: Node) -> Inode:
        """An inode of its own for parent/name at every lookup, outside the name table
        (so it never goes stale while open; forget drops it): the events file, whose
        size and content belong to the stream of one open."""
        inode = Inode(self._counted(), (*parent.path, name), parent, node)
        self.inodes[inode.ino] = inode
        return inode

    def _number(self, path: Path, node: Node) -> int:
        ino = hash((type(node).__name__, path, _token(node.key()))) & INO_BITS
        if ino <= pyfuse3.ROOT_INODE or ino in self.inodes:
            return self._counted()
        return ino

    def _counted(self) -> int:
        while (ino := next(self._next)) in self.inodes:
            pass
        return ino

    def find(self, path: Path) -> Inode | None:
        inode = self.root
        for name in path:
            inode = inode.children.get(name)
            if inode is None:
                return None
        return inode

    def detach(self, inode: Inode) -> list[Inode]:
        """Forget a subtree's names (the object is gone); returns the inodes marked stale."""
        self.gen += 1
        parent = inode.parent
        if parent is not None and parent.children.get(inode.name) is inode:
            del parent.children[inode.name]
        stale = []
        stack = [inode]
        while stack:
            n = stack.pop()
            n.stale = True
            stale.append(n)
            stack.extend(n.children.values())
            n.children = {}
            if n.lookups <= 0:
                self.inodes.pop(n.ino, None)
        return stale

    def rename(self, inode: Inode, new_name: str) -> None:
        """Move an inode under the same parent (scratch files only)."""
        self.gen += 1
        parent = inode.parent
        assert parent is not None
        if parent.children.get(inode.name) is inode:
            del parent.children[inode.name]
        old = parent.children.get(new_name)
        if old is not None:
            self.detach(old)
        inode.path = (*parent.path, new_name)
        parent.children[new_name] = inode

    def forget(self, ino: int, count: int) -> None:
        inode = self.inodes.get(ino)
        if inode is None or inode is self.root:
            return
        inode.lookups -= count
        if inode.lookups > 0 or inode.children:
            return
        self.gen += 1
        del self.inodes[ino]
        parent = inode.parent
        if not inode.stale and parent is not None and parent.children.get(inode.name) is inode:
            del parent.children[inode.name]
            if parent.lookups <= 0 and not parent.children and parent is not self.root:
                self.forget(parent.ino, 0)
