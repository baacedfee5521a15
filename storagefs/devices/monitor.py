"""Following kernel uevents (no udevd needed) to keep a DeviceIndex current.

The netlink socket is waited on with trio; each batch of events is reduced
to the sysfs paths it concerns, those are re-read in a worker thread (sysfs
reads and a blkid probe must not stall the FUSE loop), and the index is
updated in the trio thread.  Re-reading instead of trusting the event's
action makes the result right whatever the order events arrive in: a path
that no longer exists is a removal, whatever the last event said.

A block disk's partitions are re-read with it: attaching a loop device with
a partition table, or re-reading a table, may add or drop partitions with
only a ``change`` event on the disk.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyudev
import trio

from .probe import SUBSYSTEMS, Probed, probe

if TYPE_CHECKING:
    from .index import DeviceIndex, OnChange

log = logging.getLogger(__name__)

__all__ = ["follow"]

_SUBSYSTEMS = frozenset(SUBSYSTEMS)


def _drain(monitor: pyudev.Monitor) -> tuple[list[pyudev.Device], bool]:
    """Every event waiting on the socket; True when the kernel dropped some
    (socket buffer overrun): then only a full rescan is exact."""
    events: list[pyudev.Device] = []
    overflow = False
    for _ in range(100000):
        try:
            dev = monitor.poll(timeout=0)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                overflow = True
                continue
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                break
            raise
        if dev is None:
            break
        events.append(dev)
    return events, overflow


def _plan(index: DeviceIndex, events: Iterable[pyudev.Device]) -> tuple[set[str], set[str]]:
    """(sys paths to re-read, disks whose partitions to re-read)."""
    paths: set[str] = set()
    disks: set[str] = set()
    known = index.known_paths()
    for dev in events:
        if dev.subsystem not in _SUBSYSTEMS:
            continue
        path = dev.sys_path
        action = dev.action
        paths.add(path)
        if action in ("remove", "move"):
            old = dev.properties.get("DEVPATH_OLD")
            gone = [path] + (["/sys" + old] if old else [])
            paths.update(gone)
            prefixes = tuple(g + "/" for g in gone)
            paths.update(p for p in known if p.startswith(prefixes))
        if dev.subsystem == "block":
            if dev.device_type == "disk" or index.is_disk(path):
                disks.add(path)
            elif dev.device_type == "partition":
                # the disk's partition table changed under it (parted writes
                # it, the kernel only announces the partition)
                paths.add(os.path.dirname(path))
                disks.add(os.path.dirname(path))
    return paths, disks


def _read_one(ctx: pyudev.Context, path: str, content: bool) -> Probed | None:
    if not os.path.isdir(path):
        return None
    try:
        dev = pyudev.Devices.from_sys_path(ctx, path)
    except (pyudev.DeviceNotFoundError, OSError, ValueError):
        return None
    return probe(dev, content)


def _read(ctx: pyudev.Context, paths: set[str], disks: set[str], known: list[str],
          content: bool) -> dict[str, Probed | None]:
    """Worker thread: fresh probes for ``paths`` and the partitions of ``disks``."""
    updates = {path: _read_one(ctx, path, content) for path in sorted(paths)}
    for disk in sorted(disks):
        prefix = disk + "/"
        present = set()
        if updates.get(disk) is not None:
            try:
                entries = os.listdir(disk)
            except OSError:
                entries = []
            for entry in entries:
                child = os.path.join(disk, entry)
                if os.path.isfile(os.path.join(child, "partition")):
                    present.add(child)
                    if child not in updates:
                        updates[child] = _read_one(ctx, child, content)
        for path in known:
            if path.startswith(prefix) and path not in present:
                updates[path] = None
    return updates


def _rescan(ctx: pyudev.Context, known: list[str], content: bool) -> dict[str, Probed | None]:
    """Worker thread: everything, after lost events."""
    from .index import DeviceIndex

    found: dict[str, Probed | None] = dict(DeviceIndex.scan(ctx, content))
    for path in known:
        found.setdefault(path, None)
    return found


async def follow(index: DeviceIndex, on_change: OnChange) -> None:
    """Keep ``index`` current until cancelled; never raises otherwise."""
    monitor = index.take_monitor()
    if monitor is None:
        return
    try:
        await _loop(index, monitor, on_change)
    except Exception:
        log.exception("device monitor stopped: devices no longer follow hotplug")


async def _loop(index: DeviceIndex, monitor: pyudev.Monitor, on_change: OnChange) -> None:
    worker_ctx = pyudev.Context()  # libudev objects are not shared across threads
    limiter = trio.CapacityLimiter(1)
    fd = monitor.fileno()
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            events, overflow = _drain(monitor)
            known = index.known_paths()
            if overflow:
                log.warning("uevents were lost (socket overrun): rescanning all devices")
                updates = await trio.to_thread.run_sync(
                    _rescan, worker_ctx, known, index.content_probe,
                    abandon_on_cancel=True, limiter=limiter)
            else:
                paths, disks = _plan(index, events)
                if not paths:
                    continue
                updates = await trio.to_thread.run_sync(
                    _read, worker_ctx, paths, disks, known, index.content_probe,
                    abandon_on_cancel=True, limiter=limiter)
            added, removed, changed = index.apply(updates, ())
        except Exception:
            log.exception("device event handling failed; the index may lag until the next event")
            continue
        if added or removed or changed:
            try:
                on_change(added, removed, changed)
            except Exception:
                log.exception("device change callback failed")
