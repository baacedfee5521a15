"""Tell the kernel at once when state changes, instead of relying on cache timeouts.

Attribute invalidations (attr_only) never wait on the kernel's page locks, so they are
sent inline: by the time a write() that changed a pool returns, the next ``ls -l`` sees
the new sizes. A generated file's page cache is dropped by the next open of a changed
file (operations.py answers it without keep_cache). Entry invalidations may wait for
requests in flight on the same directory, so they go through pyfuse3's worker thread,
and are not sent for names the kernel itself is removing (rmdir/unlink in flight): a
worker waiting for such a directory while the server is killed would wedge the mount.

Only what changed is invalidated: a link whose target did not change keeps its inode,
so ``readlink`` of a stable link never fails while others come and go.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import pyfuse3

from .inodes import Inode, InodeTable

log = logging.getLogger(__name__)

LINK_DIRS = (("pools", "by-uuid"), ("pools", "by-path"), ("volumes", "by-key"),
             ("volumes", "by-path"))
DEVICE_LINK_DIRS = (("devices", "by-devnode"), ("devices", "by-class"))


def _path(pool: str, volume: str | None) -> tuple[str, ...]:
    if volume is None:
        return ("pools", pool)
    return ("pools", pool, "volumes", volume)


class Invalidator:
    """The core's listener: maps object changes to kernel cache invalidations."""

    def __init__(self, table: InodeTable) -> None:
        self.table = table
        self.enabled = False  # only once the mount is live
        #: poll() handles waiting for a volume's progress to change
        self.pollers: dict[tuple[str, str], list[pyfuse3.PollHandle]] = {}
        #: (parent inode, name) the kernel is removing itself (rmdir/unlink in flight)
        self.vfs_removing: set[tuple[int, str]] = set()
        #: called with the path of an object that went away
        self.on_removed: Callable[[tuple[str, ...]], None] = lambda path: None
        #: open batches (batch()), and the link directories to prune when the last ends
        self._batches = 0
        self._links_due: set[tuple[str, ...]] = set()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many volumes come or go (a scan, a burst of inotify events): the link tables
        are pruned once at the end, not once per volume (each prune walks every link
        the kernel knows: 1,000 files made in a pool of 3,000 took 30 s). Until then a
        stale link is still refused at its next use (Operations.inode checks alive())."""
        self._batches += 1
        try:
            yield
        finally:
            self._batches -= 1
            if not self._batches and self._links_due:
                due, self._links_due = tuple(self._links_due), set()
                self._links(due)

    def progress(self, pool: str, volume: str) -> None:
        for handle in self.pollers.pop((pool, volume), []):
            try:
                handle.notify()
            except OSError:
                pass

    def _inode(self, inode: Inode) -> None:
        if not self.enabled:
            return
        try:
            pyfuse3.invalidate_inode(inode.ino, True)
        except OSError:
            pass  # the kernel did not know it (ENOENT): nothing cached

    def _entry(self, parent: Inode, name: str, deleted: int = 0) -> None:
        if self.enabled and (parent.ino, name) not in self.vfs_removing:
            pyfuse3.invalidate_entry_async(parent.ino, name.encode("utf-8", "surrogateescape"),
                                           deleted, ignore_enoent=True)

    def changed_dir(self, path: tuple[str, ...]) -> None:
        inode = self.table.find(path)
        if inode is None:
            return
        self._inode(inode)
        for child in list(inode.children.values()):
            if not child.children:
                self._inode(child)

    def changed(self, pool: str, volume: str | None = None) -> None:
        self.changed_dir(_path(pool, volume))
        if volume is not None:
            self.changed_dir(("pools", pool))

    def subtree_changed(self, path: tuple[str, ...]) -> None:
        """Entries below ``path`` may have come, gone or changed (sources/TYPE): the
        directory and its files are read again, names that went away are dropped."""
        d = self.table.find(path)
        if d is None:
            return
        self._inode(d)
        self._prune(d, lambda inode: inode.node is not None and inode.node.alive())
        for child in list(d.children.values()):
            if not child.children:
                self._inode(child)

    def links_changed(self) -> None:
        """A pool's uuid or target changed: by-uuid/ and by-path/ entries may be stale."""
        self._links(LINK_DIRS)

    def added(self, pool: str, volume: str | None = None) -> None:
        path = _path(pool, volume)
        parent = self.table.find(path[:-1])
        if parent is not None:
            self._inode(parent)
            stale = parent.children.get(path[-1])
            if stale is not None:
                self._drop(stale)
        self._links(LINK_DIRS)

    def removed(self, pool: str, volume: str | None = None) -> None:
        self.on_removed(_path(pool, volume))
        inode = self.table.find(_path(pool, volume))
        if inode is not None:
            self._drop(inode)
            if inode.parent is not None:
                self._inode(inode.parent)
        self._links(LINK_DIRS)

    def devices_changed(self, added: set[str], removed: set[str], changed: set[str]) -> None:
        """The device index changed (netlink events): the next ls/cat sees it."""
        for name in removed:
            inode = self.table.find(("devices", name))
            if inode is not None:
                self._drop(inode)
        for name in changed:
            self.changed_dir(("devices", name))
        top = self.table.find(("devices",))
        if top is not None:
            self._inode(top)
        self._links(DEVICE_LINK_DIRS)

    def _drop(self, inode: Inode) -> None:
        parent = inode.parent
        # a directory whose entries the kernel knows (a file in it may be open: the
        # control file of ``delete --purge-snapshots``) is only invalidated: a "deleted"
        # notice of it fails with ENOTEMPTY (and pyfuse3 logs an ERROR)
        deleted = 0 if inode.children else inode.ino
        self.table.detach(inode)
        if parent is not None:
            self._entry(parent, inode.name, deleted)

    def _links(self, dirs) -> None:
        """Links under the lookup directories whose target changed or vanished: let the
        kernel ask again. Links that still point where they did keep their inode."""
        for path in dirs:
            d = self.table.find(path)
            if d is None:
                continue
            self._inode(d)
            if self._batches:
                self._links_due.add(path)
                continue
            self._prune(d, lambda inode: inode.node is not None and inode.node.alive())

    def _prune(self, d: Inode, valid: Callable[[Inode], bool]) -> None:
        for child in list(d.children.values()):
            if child.children:  # by-class/CLASS: a directory of links
                self._prune(child, valid)
                if child.node is not None and not child.node.alive():
                    self._drop(child)
                continue
            if not valid(child):
                self._drop(child)
