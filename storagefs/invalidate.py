"""Tell the kernel at once when state changes, instead of relying on cache timeouts.

Attribute invalidations (attr_only) never wait on the kernel's page locks, so
they are sent inline: by the time a write() that changed a pool returns, the
next ``ls -l`` sees the new sizes. Entry invalidations may wait for requests
in flight on the same directory, so they go through pyfuse3's worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pyfuse3

from .tree import InodeTable, Node

log = logging.getLogger(__name__)

LINK_DIRS = (("pools", "by-uuid"), ("pools", "by-path"), ("volumes", "by-key"),
             ("volumes", "by-path"))


def _path(pool: str, volume: str | None) -> tuple[str, ...]:
    if volume is None:
        return ("pools", pool)
    return ("pools", pool, "volumes", volume)


class Invalidator:
    """The manager's listener: maps object changes to kernel cache invalidations."""

    def __init__(self, table: InodeTable,
                 now: Callable[[tuple[str, ...]], str | None] = lambda path: None) -> None:
        self.table = table
        #: what a path of a link directory is now: its target (a link), "" (a
        #: directory), or None (gone)
        self.now = now
        self.enabled = False  # only once the mount is live
        #: poll() handles waiting for a volume's progress to change
        self.pollers: dict[tuple[str, str], list[pyfuse3.PollHandle]] = {}

    def progress(self, pool: str, volume: str) -> None:
        for handle in self.pollers.pop((pool, volume), []):
            try:
                handle.notify()
            except OSError:
                pass

    def _inode(self, node: Node) -> None:
        if not self.enabled:
            return
        try:
            pyfuse3.invalidate_inode(node.ino, True)
        except OSError:
            pass  # the kernel did not know it (ENOENT): nothing cached

    def _entry(self, parent: Node, name: str, deleted: int = 0) -> None:
        if self.enabled:
            pyfuse3.invalidate_entry_async(parent.ino, name.encode("utf-8", "surrogateescape"),
                                           deleted, ignore_enoent=True)

    def changed_dir(self, path: tuple[str, ...]) -> None:
        node = self.table.find(path)
        if node is None:
            return
        self._inode(node)
        for child in list(node.children.values()):
            if not child.children:
                self._inode(child)

    def changed(self, pool: str, volume: str | None = None) -> None:
        self.changed_dir(_path(pool, volume))
        if volume is not None:
            self.changed_dir(("pools", pool))

    def links_changed(self) -> None:
        """A pool's uuid or target changed: by-uuid/ and by-path/ entries may be stale."""
        self._links()

    def added(self, pool: str, volume: str | None = None) -> None:
        path = _path(pool, volume)
        parent = self.table.find(path[:-1])
        if parent is not None:
            self._inode(parent)
            stale = parent.children.get(path[-1])
            if stale is not None:
                self._drop(stale)

    def removed(self, pool: str, volume: str | None = None) -> None:
        node = self.table.find(_path(pool, volume))
        if node is not None:
            self._drop(node)
            if node.parent is not None:
                self._inode(node.parent)
        self._links()

    def devices_changed(self, added: set[str], removed: set[str], changed: set[str]) -> None:
        """The device index changed (netlink events): the next ls/cat sees it."""
        for name in removed:
            node = self.table.find(("devices", name))
            if node is not None:
                self._drop(node)
        for name in changed:
            self.changed_dir(("devices", name))
        top = self.table.find(("devices",))
        if top is not None:
            self._inode(top)
        for links in (("devices", "by-devnode"), ("devices", "by-class")):
            d = self.table.find(links)
            if d is not None:
                self._prune(d)

    def _drop(self, node: Node) -> None:
        parent = node.parent
        self.table.detach(node)
        if parent is not None:
            self._entry(parent, node.name, node.ino)

    def _links(self) -> None:
        """Links under by-*/ may point at objects that went away: let the kernel ask again.
        (New links need nothing: the kernel caches no negative entries here.)"""
        for path in LINK_DIRS:
            d = self.table.find(path)
            if d is not None:
                self._prune(d)

    def _prune(self, d: Node) -> None:
        """Drop only the entries under d that are gone or point elsewhere now: a stable
        link stays valid (a readlink in flight on it must not get ENOENT because some
        other volume came or went)."""
        for child in list(d.children.values()):
            now = self.now(child.path)
            if now is None or now != (child.target or ""):
                self._drop(child)
            elif now == "":
                self._prune(child)
