"""``fs`` pools: a filesystem on a block device, mounted on the target
(libvirt's storage_backend_fs.c, fs part). Volumes are files, as in ``dir``.

- build: mkfs on the source device, only when blkid finds nothing on it
  (no filesystem, label or PV) unless ``build overwrite``; also makes the
  target directory.
- start: mount the device on the target (a no-op when it is already mounted
  there, as after a restart of storagefs); stop: unmount it.
- refresh: the device must still be mounted on the target, else the pool's
  storage is gone (the manager then marks the pool inaccessible).
"""

from __future__ import annotations

import errno

from .. import hostcmd
from ..errors import Busy, InvalidArgument, NotFound, NotSupported, StorageError
from . import blockdev
from .base import PoolInfo, VolumeInfo, VolumeSpec
from .dir import DirBackend

MOUNT, UMOUNT = "mount", "umount"
#: the force flag each mkfs needs to write over an existing signature (libvirt's list + btrfs)
MKFS_FORCE = {"ext2": "-F", "ext3": "-F", "ext4": "-F", "xfs": "-f", "btrfs": "-f", "vfat": "-I"}
#: options every fs pool is mounted with, before those of <fs:mount_opts> (as libvirt)
DEFAULT_MOUNT_OPTIONS = ("nodev", "nosuid", "noexec")
#: libvirt's name of a filesystem type -> the kernel's (for mount -t and blkid's TYPE)
KERNEL_FS_TYPE = {"hfs+": "hfsplus"}
MOUNT_ERRNOS = {"already mounted": errno.EBUSY, "busy": errno.EBUSY,
                "does not exist": errno.ENOENT, "wrong fs type": errno.EINVAL,
                "unknown filesystem type": errno.ENOTSUP}


def fs_matches(fmt: str, found: str) -> bool:
    """Can a pool of format ``fmt`` mount what blkid found? (ext4 mounts ext2 and ext3)"""
    if fmt == "auto" or found == KERNEL_FS_TYPE.get(fmt, fmt):
        return True
    return fmt == "ext4" and found in ("ext2", "ext3")


class FsBackend(DirBackend):
    type = "fs"

    # ---- the definition ------------------------------------------------------
    @property
    def device(self) -> str:
        return blockdev.single_device(self.definition)

    @property
    def fs_format(self) -> str:
        return self.definition.source.format or "auto"

    # ---- state of the mount -----------------------------------------------------
    def mounted(self) -> bool:
        """Is the source device mounted on the target now?"""
        try:
            entry = blockdev.mounted_on(self.target)
        except StorageError:
            return False
        return (entry is not None and entry.source.startswith("/")
                and blockdev.same_device(entry.source, self.device))

    def _require_mounted(self) -> None:
        if not self.mounted():
            dev = self.device
            gone = "" if blockdev.device_present(dev) else " (the device is gone)"
            raise NotFound(f"'{dev}' is not mounted on '{self.target}'{gone}")

    async def check(self) -> bool:
        try:
            return self.mounted()
        except StorageError:
            return False

    # ---- pool operations -----------------------------------------------------------
    async def build(self, overwrite: bool = False) -> None:
        dev, fmt = self.device, self.fs_format
        if not blockdev.device_present(dev):
            raise NotFound(f"Source device '{dev}' does not exist when formatting pool "
                           f"'{self.definition.name}'")
        if fmt == "auto":
            found = None if overwrite else blockdev.found_format(await blockdev.probe(dev))
            if found is not None:
                raise Busy(f"Device '{dev}' already formatted using '{found}'")
            raise InvalidArgument("cannot make a filesystem of format 'auto': name one in "
                                  "<source><format type='...'/> (ext4, xfs ...)")
        if fmt not in MKFS_FORCE:
            raise NotSupported(f"making a filesystem of type '{fmt}' is not supported")
        where = blockdev.mounts_of(dev)
        if where:
            raise Busy(f"device '{dev}' is mounted on '{where[0].target}'; it cannot be formatted")
        if overwrite:
            await blockdev.wipe_signatures(dev)
        else:
            await blockdev.refuse_unless_empty(dev, fmt)
        await super().build(overwrite)  # the target directory, with its permissions
        try:
            await hostcmd.run([f"mkfs.{fmt}", MKFS_FORCE[fmt], dev], timeout=600,
                              errno_map={"is mounted": errno.EBUSY, "busy": errno.EBUSY})
        except StorageError as exc:
            raise StorageError(f"Failed to make filesystem of type '{fmt}' on device "
                               f"'{dev}': {exc.reason}", exc.errno) from None

    async def start(self) -> None:
        dev, fmt, target = self.device, self.fs_format, self.target
        if self.mounted():
            self.files.remove_leftovers()
            return  # already mounted there (storagefs restarted): nothing more to do
        blockdev.require_device(dev)
        if not self._is_dir():
            raise NotFound(f"cannot mount '{dev}' on '{target}': the mount point does not "
                           "exist (build the pool first)")
        found = blockdev.found_format(await blockdev.probe(dev))
        if found is None:
            raise Busy(f"Device '{dev}' is unrecognized, requires build")
        if not fs_matches(fmt, found):
            raise Busy(f"Format of device '{dev}' does not match the expected format "
                       f"'{fmt}' (it holds {found})")
        options = ",".join((*DEFAULT_MOUNT_OPTIONS, *self.definition.mount_opts))
        await hostcmd.run([MOUNT, "-t", KERNEL_FS_TYPE.get(fmt, fmt), "-o", options, dev,
                           target], timeout=120, errno_map=MOUNT_ERRNOS)
        self.files.remove_leftovers()

    async def stop(self) -> None:
        if not self.mounted():
            return
        try:
            await hostcmd.run([UMOUNT, self.target], timeout=120,
                              errno_map={"busy": errno.EBUSY})
        except StorageError as exc:
            if exc.errno == errno.EBUSY:
                raise Busy(f"cannot unmount '{self.target}': {exc.reason} (files or "
                           "directories on it are in use)") from None
            raise

    async def delete(self) -> None:
        if self.mounted():
            raise Busy(f"'{self.target}' is still mounted")
        await super().delete()

    def pool_info(self) -> PoolInfo | None:
        try:
            if not self.mounted():
                return None
        except StorageError:
            return None
        return super().pool_info()

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        self._require_mounted()
        return await super().refresh(formats)

    # ---- volumes: as dir, but only while the filesystem is mounted ------------------
    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        self._require_mounted()
        return await super().create_volume(spec)

    async def delete_volume(self, info: VolumeInfo) -> None:
        self._require_mounted()
        await super().delete_volume(info)

    async def resize_volume(self, info: VolumeInfo, capacity: int, **kwargs) -> VolumeInfo:
        self._require_mounted()
        return await super().resize_volume(info, capacity, **kwargs)

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        self._require_mounted()
        return await super().update_volume(info, spec)

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        self._require_mounted()
        return await super().clone_volume(src, spec, report)

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report) -> VolumeInfo:
        self._require_mounted()
        return await super().wipe_volume(info, algorithm, report)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        self._require_mounted()
        return await super().snapshot_volume(info, op, name)

