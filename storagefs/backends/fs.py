"""``fs`` pools: a filesystem on a block device, mounted on the target
(libvirt's storage_backend_fs.c, fs part). Volumes are files, as in ``dir``.

- build: mkfs on the source device, only when blkid finds nothing on it
  (no filesystem, label or PV) unless ``build overwrite``; also makes the
  target directory.
- start mounts the device on the target, stop unmounts it, and every operation needs
  it mounted there: see mounted.py, which this extends with the device and mkfs.
"""

from __future__ import annotations

import errno

from .. import hostcmd
from ..errors import Busy, InvalidArgument, NotFound, NotSupported, StorageError
from . import blockdev, localdisks
from .dir import DirBackend
from .mounted import MountedBackend

#: the force flag each mkfs needs to write over an existing signature (libvirt's list + btrfs)
MKFS_FORCE = {"ext2": "-F", "ext3": "-F", "ext4": "-F", "xfs": "-f", "btrfs": "-f", "vfat": "-I"}
#: libvirt's name of a filesystem type -> the kernel's (for mount -t and blkid's TYPE)
KERNEL_FS_TYPE = {"hfs+": "hfsplus"}


def fs_matches(fmt: str, found: str) -> bool:
    """Can a pool of format ``fmt`` mount what blkid found? (ext4 mounts ext2 and ext3)"""
    if fmt == "auto" or found == KERNEL_FS_TYPE.get(fmt, fmt):
        return True
    return fmt == "ext4" and found in ("ext2", "ext3")


class FsBackend(MountedBackend):
    type = "fs"
    claims_devices = True

    # ---- the definition ------------------------------------------------------
    @property
    def device(self) -> str:
        return blockdev.single_device(self.definition)

    @property
    def fs_format(self) -> str:
        return self.definition.source.format or "auto"

    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """Unused empty devices (a query: the device it names), see localdisks."""
        return await localdisks.fs_sources(query)

    # ---- what is mounted ------------------------------------------------------------
    def mount_source(self) -> str:
        return self.device

    def mount_type(self) -> str:
        fmt = self.fs_format
        return KERNEL_FS_TYPE.get(fmt, fmt)

    def is_ours(self, entry: blockdev.MountEntry) -> bool:
        return entry.source.startswith("/") and blockdev.same_device(entry.source, self.device)

    def not_mounted_reason(self) -> str:
        dev = self.device
        gone = "" if blockdev.device_present(dev) else " (the device is gone)"
        return f"'{dev}' is not mounted on '{self.target}'{gone}"

    async def check_source(self) -> None:
        dev, fmt = self.device, self.fs_format
        blockdev.require_device(dev)
        found = blockdev.found_format(await blockdev.probe(dev))
        if found is None:
            raise Busy(f"Device '{dev}' is unrecognized, requires build")
        if not fs_matches(fmt, found):
            raise Busy(f"Format of device '{dev}' does not match the expected format "
                       f"'{fmt}' (it holds {found})")

    # ---- build: mkfs --------------------------------------------------------------------
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
        await DirBackend.build(self, overwrite)  # the target directory, with its permissions
        try:
            await hostcmd.run([f"mkfs.{fmt}", MKFS_FORCE[fmt], dev], timeout=600,
                              errno_map={"is mounted": errno.EBUSY, "busy": errno.EBUSY})
        except StorageError as exc:
            raise StorageError(f"Failed to make filesystem of type '{fmt}' on device "
                               f"'{dev}': {exc.reason}", exc.errno) from None
