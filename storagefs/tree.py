"""The inode table: paths of the virtual tree <-> inode numbers, with lookup counts.

A node is identified by its path of names from the root. Nodes are made when
the kernel first learns of them (lookup, readdir, mkdir, create) and dropped
when it forgets them. When an object disappears, its nodes are marked stale so
the next request on a cached inode gets ENOENT, and a later object of the same
name gets a new inode (the kernel never mixes the two up).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pyfuse3

Path = tuple[str, ...]


@dataclass(eq=False)
class Node:
    ino: int
    path: Path
    parent: Node | None
    children: dict[str, Node] = field(default_factory=dict)
    lookups: int = 0
    stale: bool = False
    #: for a symlink: the target the kernel was last told (entries of link
    #: directories are kept across changes while it stays the same)
    target: str | None = None

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""


class InodeTable:
    def __init__(self) -> None:
        self.root = Node(pyfuse3.ROOT_INODE, (), None, lookups=1)
        self.nodes: dict[int, Node] = {self.root.ino: self.root}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def child(self, parent: Node, name: str) -> Node:
        node = parent.children.get(name)
        if node is None:
            node = Node(next(self._next), (*parent.path, name), parent)
            parent.children[name] = node
            self.nodes[node.ino] = node
        return node

    def find(self, path: Path) -> Node | None:
        node = self.root
        for name in path:
            node = node.children.get(name)
            if node is None:
                return None
        return node

    def detach(self, node: Node) -> list[Node]:
        """Forget a subtree's names (the object is gone); returns the nodes marked stale."""
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        stale = []
        stack = [node]
        while stack:
            n = stack.pop()
            n.stale = True
            stale.append(n)
            stack.extend(n.children.values())
            n.children = {}
            if n.lookups <= 0:
                self.nodes.pop(n.ino, None)
        return stale

    def rename(self, node: Node, new_name: str) -> None:
        """Move a node under the same parent (scratch files only)."""
        parent = node.parent
        assert parent is not None
        if parent.children.get(node.name) is node:
            del parent.children[node.name]
        old = parent.children.get(new_name)
        if old is not None:
            self.detach(old)
        node.path = (*parent.path, new_name)
        parent.children[new_name] = node

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups -= count
        if node.lookups > 0 or node.children:
            return
        del self.nodes[ino]
        parent = node.parent
        if not node.stale and parent is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            if parent.lookups <= 0 and not parent.children and parent is not self.root:
                self.forget(parent.ino, 0)
