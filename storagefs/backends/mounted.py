"""Pools whose target is a filesystem mounted there: a filesystem on a block device
(``fs``), an export of a server (``netfs``). Volumes are files, as in ``dir``, but only
while that filesystem is mounted on the target.

- start mounts it (a no-op when it is already mounted there, as after a restart of
  storagefs); stop unmounts it, and refuses with EBUSY naming the processes that hold
  files on it (found in /proc, before umount is even tried);
- every operation and refresh first checks it is still mounted there, else the pool's
  storage is gone (the core then marks the pool inaccessible).

Subclasses say what is mounted: ``mount_source``, ``mount_type``, ``mount_options``,
``is_ours`` (is this mount table entry our source?) and ``check_source`` (before a mount).
The mount table is read from /proc; nothing here resolves a path on the mount itself
(a hung server would hang that): the target's resolved path is taken once, at start.
"""

from __future__ import annotations

import errno
import os

import trio

from .. import hostcmd
from ..errors import Busy, NotFound, StorageError, StorageLost
from . import blockdev
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumeSpec
from .dir import DirBackend, is_dir

MOUNT, UMOUNT = "mount", "umount"
MOUNT_ERRNOS = {"already mounted": errno.EBUSY, "busy": errno.EBUSY,
                "does not exist": errno.ENOENT, "wrong fs type": errno.EINVAL,
                "unknown filesystem type": errno.ENOTSUP, "Permission denied": errno.EACCES,
                "Connection refused": errno.ECONNREFUSED, "timed out": errno.ETIMEDOUT,
                "No route to host": errno.EHOSTUNREACH}


def holders(path: str) -> list[str]:
    """'name (pid N)' of processes with their working directory or an open file at or
    below ``path`` (from /proc links: the mounted filesystem itself is not touched)."""
    found = []
    prefix = path.rstrip("/") + "/"
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == path or target.startswith(prefix):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        name = f.read().strip()
                except OSError:
                    name = "?"
                found.append(f"{name} (pid {pid})")
                break
    return found


class MountedBackend(DirBackend):
    #: options every such pool is mounted with, before those of <fs:mount_opts>
    default_options: tuple[str, ...] = ("nodev", "nosuid", "noexec")

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self._real_target: str | None = None

    # ---- what subclasses say -------------------------------------------------------
    def mount_source(self) -> str:
        raise NotImplementedError

    def mount_type(self) -> str:
        raise NotImplementedError

    def mount_options(self) -> list[str]:
        return [*self.default_options, *self.definition.mount_opts]

    def is_ours(self, entry: blockdev.MountEntry) -> bool:
        return entry.source == self.mount_source()

    def not_mounted_reason(self) -> str:
        return f"'{self.mount_source()}' is not mounted on '{self.target}'"

    async def check_source(self) -> None:
        """Before a mount: is the source there, and what the pool says it is?"""
        return None

    def mount_argv(self, target: str) -> list[str]:
        """The mount(8) command line that mounts the source on ``target`` ('--' before
        the operands: a source is never an option, whatever the document says)."""
        return [MOUNT, "-t", self.mount_type(), "-o", ",".join(self.mount_options()),
                "--", self.mount_source(), target]

    # ---- state of the mount -----------------------------------------------------------
    def real_target(self) -> str:
        return self._real_target or os.path.normpath(self.target)

    def mounted(self) -> bool:
        """Is our source mounted on the target now? (/proc only: no storage access)"""
        try:
            entries = blockdev.mounts()
        except StorageError:
            return False
        found = None
        for entry in entries:
            if entry.target == self.real_target():
                found = entry  # the last one stacked there
        return found is not None and self.is_ours(found)

    def require_mounted(self) -> None:
        if not self.mounted():
            raise StorageLost(self.not_mounted_reason(), errno.ENOENT)

    async def io(self, fn, *args, what: str = "", timeout: float | None = None):
        """As DirBackend.io (the target checked first); a target that is not the
        filesystem the pool mounted says why: unmounted, or replaced."""
        try:
            return await super().io(fn, *args, what=what, timeout=timeout)
        except StorageLost:
            self.require_mounted()
            raise

    async def check(self) -> bool:
        return self.mounted()

    # ---- pool operations ---------------------------------------------------------------
    async def start(self) -> None:
        target = self.target
        self._identity = None
        self._real_target = await self.io(os.path.realpath, target, what=f"resolve {target}")
        if self.mounted():
            await super().start()  # leftovers of an earlier storagefs removed
            return  # already mounted there (storagefs restarted): nothing more to do
        await self.check_source()
        if not await self.io(is_dir, target, what=f"stat {target}"):
            raise NotFound(f"cannot mount '{self.mount_source()}' on '{target}': the mount "
                           "point does not exist (build the pool first)")
        await hostcmd.run(self.mount_argv(target), timeout=120, errno_map=MOUNT_ERRNOS)
        await self.wait_mounted()
        await super().start()

    async def wait_mounted(self, seconds: float = 3.0) -> None:
        """After mount(8) said yes: the mount table shows it (a FUSE helper such as
        mount.glusterfs may return 0 and its daemon give up a moment later)."""
        with trio.move_on_after(seconds):
            while not self.mounted():
                await trio.sleep(0.05)
        if not self.mounted():
            raise StorageError(f"mounting '{self.mount_source()}' on '{self.target}' "
                               "failed: mount reported success, but nothing is mounted there",
                               errno.EIO)

    async def stop(self) -> None:
        if self.mounted():
            await self._unmount()
        await super().stop()

    async def _unmount(self) -> None:
        # the mount as /proc lists it: the target's path may lead elsewhere by now
        real = self.real_target()
        # /proc only: the target is not touched (nor checked: a replaced one is left)
        held = await PoolBackend.io(self, holders, real, what="list holders")
        if held:
            raise Busy(f"cannot unmount '{self.target}': it is busy, in use by "
                       f"{', '.join(held[:5])}"
                       + (f" and {len(held) - 5} more" if len(held) > 5 else ""))
        try:
            await hostcmd.run([UMOUNT, real], timeout=120, errno_map={"busy": errno.EBUSY})
        except StorageError as exc:
            if exc.errno == errno.EBUSY:
                raise Busy(f"cannot unmount '{self.target}': {exc.reason} (files or "
                           "directories on it are in use)") from None
            raise

    async def delete(self) -> None:
        if self.mounted():
            raise Busy(f"'{self.target}' is still mounted")
        await super().delete()

    async def pool_info(self) -> PoolInfo | None:
        self.require_mounted()
        return await super().pool_info()

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        self.require_mounted()
        return await super().refresh(formats)

    # ---- volumes: as dir, but only while the filesystem is mounted ----------------------
    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        self.require_mounted()
        return await super().create_volume(spec)

    async def delete_volume(self, info: VolumeInfo) -> None:
        self.require_mounted()
        await super().delete_volume(info)

    async def resize_volume(self, info: VolumeInfo, capacity: int, **kwargs) -> VolumeInfo:
        self.require_mounted()
        return await super().resize_volume(info, capacity, **kwargs)

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        self.require_mounted()
        return await super().update_volume(info, spec)

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        self.require_mounted()
        return await super().clone_volume(src, spec, report)

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report,
                          secret_file: str | None = None) -> VolumeInfo:
        self.require_mounted()
        return await super().wipe_volume(info, algorithm, report, secret_file)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str,
                              secret_file: str | None = None) -> VolumeInfo:
        self.require_mounted()
        return await super().snapshot_volume(info, op, name, secret_file)
