"""``zfs`` pools: the datasets of a ZFS pool (libvirt's storage_backend_zfs.c).

``<source><name>POOL</name><device path='...'/></source>``; the source name may be a
dataset (``tank/vms``), whose children are then the volumes. Target ``/dev/zvol/NAME``.

- volumes (zfs_volumes.py): zvols (``type='block'``, as libvirt lists them) and the
  file system datasets right below the source (``type='dir'``, which libvirt leaves
  out); a document with ``<volume type='dir'>`` makes a dataset, any other a zvol as
  libvirt does. zfs-fuse cannot make zvols: that is ENOTSUP with zfs's reason.
- sizes: exact bytes from ``zfs get -Hp`` (zfs-fuse's ``zpool list``/``get`` have no
  ``-p``); the pool's are its source dataset's (capacity = used + available, which
  leaves out what ZFS keeps for itself; libvirt shows ``zpool get size,free,allocated``).
- build: ``zpool create [-f] NAME DEVICES`` (files or block devices), refused on a
  device where blkid finds anything unless ``build overwrite``; for a dataset source,
  ``zfs create -o mountpoint=none`` as libvirt. delete: ``zpool destroy`` (``zfs
  destroy -r`` of a dataset source); while destroy stays busy the pool is exported
  instead and the refusal says so. start imports the pool when it is not imported
  (``zpool import -d DIR`` for the source devices' directories; never ``-f``); stop
  leaves it imported (libvirt has no stopPool for zfs either).
- the pool cannot be watched: it is listed again every POLL_SECONDS while someone
  reads it; a zpool exported or destroyed behind storagefs's back, or a ZFS daemon that
  stops answering (tools killed after their time limit), makes it inaccessible.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..errors import Busy, Exists, InvalidArgument, NotFound, StorageError
from . import blockdev
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy
from .zfs_output import Dataset, errno_for, reason
from .zfs_tool import CHANGE_TIMEOUT, ZFS, ZPOOL, zrun, zrun_patient
from .zfs_volumes import COMPONENT, ZfsVolumes, volumes_of

#: the pool is listed again this often while someone reads it (SPEC: at most 2 s)
POLL_SECONDS = 1.0
#: zpool health words of a pool that cannot be used at all
UNUSABLE = ("FAULTED", "UNAVAIL", "SUSPENDED", "REMOVED")


class ZfsBackend(ZfsVolumes, PoolBackend):
    type = "zfs"
    policy = VolumePolicy(formats=(), default_format="raw", snapshots={"*": ("engine",)},
                          takes_space=True, poll_interval=POLL_SECONDS,
                          listing_has_details=True)
    claims_devices = True

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self._health = "ONLINE"
        self._info: PoolInfo | None = None
        self._info_at = 0.0

    # ---- the definition -----------------------------------------------------------
    @property
    def source(self) -> str:
        """The dataset whose children are the volumes (a pool name or POOL/DATASET)."""
        name = self.definition.source.name or self.definition.name
        parts = name.split("/")
        if not all(COMPONENT.fullmatch(p) for p in parts) or not parts[0][:1].isalpha():
            raise InvalidArgument(f"ZFS pool or dataset name '{name}' is invalid: a pool name "
                                  "begins with a letter; use letters, digits and _ . : - only")
        return name

    @property
    def zpool(self) -> str:
        return self.source.split("/", 1)[0]

    @property
    def devices(self) -> list[str]:
        return [d.path for d in self.definition.source.devices]

    @classmethod
    def source_key(cls, definition) -> tuple | None:
        return ("zfs", definition.source.name or definition.name)

    def degraded_reason(self) -> str | None:
        if self._health == "DEGRADED":
            return (f"ZFS pool '{self.zpool}' is DEGRADED: a device is offline, missing or "
                    f"faulted ('zpool status {self.zpool}' names it)")
        return None

    # ---- what zpool says -----------------------------------------------------------------
    async def _pool_health(self) -> str | None:
        """The zpool's health (ONLINE, DEGRADED ...), None when it is not imported."""
        zp = self.zpool
        res = await zrun([ZPOOL, "list", "-H", "-o", "name,health", zp], check=False,
                         what=f"zpool list {zp}", probe=True)
        if res.returncode != 0:
            why = reason(res.stderr, res.stdout)
            if errno_for(why) == errno.ENOENT:
                return None
            raise StorageError(f"cannot read the health of ZFS pool '{zp}': {why}", errno.EIO)
        for line in res.stdout.splitlines():
            fields = line.split("\t")
            if len(fields) == 2 and fields[0] == zp:
                return fields[1].strip()
        return None

    @staticmethod
    def _figures(src: Dataset) -> PoolInfo:
        used, available = src.number("used"), src.number("available")
        return PoolInfo(capacity=used + available, allocation=used, available=available)

    # ---- pool operations ------------------------------------------------------------------
    async def check(self) -> bool:
        try:
            return await self._pool_health() is not None and \
                self.source in await self._get([self.source], ("type",), flags=())
        except StorageError:
            return False

    async def _require_vdev(self, dev: str) -> None:
        try:
            st = await self.io(os.stat, dev, what=f"stat {dev}")
        except OSError:
            raise NotFound(f"device path '{dev}' doesn't exist") from None
        if stat.S_ISBLK(st.st_mode):
            blockdev.require_device(dev)
        elif not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"'{dev}' is neither a block device nor a file")
        elif st.st_size < 64 << 20:
            raise InvalidArgument(f"'{dev}' holds {st.st_size} bytes: a ZFS device needs "
                                  "at least 64 MiB")

    async def build(self, overwrite: bool = False) -> None:
        src, zp = self.source, self.zpool
        if "/" in src:  # a dataset in an existing pool, as libvirt makes it
            if await self._pool_health() is None:
                raise NotFound(f"ZFS pool '{zp}' is not imported: cannot create '{src}'")
            await zrun([ZFS, "create", "-o", "mountpoint=none", src],
                       what=f"cannot create dataset '{src}'", timeout=CHANGE_TIMEOUT)
            return
        devices = self.devices
        if not devices:
            raise InvalidArgument("missing source devices: add <device path='...'/> to "
                                  "<source> (block devices or files of at least 64 MiB)")
        for dev in devices:
            await self._require_vdev(dev)
        if await self._pool_health() is not None:
            raise Exists(f"ZFS pool '{zp}' already exists")
        if not overwrite:
            for dev in devices:
                await blockdev.refuse_unless_empty(dev, "zfs_member")
        await zrun([ZPOOL, "create", *(["-f"] if overwrite else []), zp, *devices],
                   what=f"cannot create ZFS pool '{zp}'", timeout=CHANGE_TIMEOUT)

    def _search_dirs(self) -> list[str]:
        """Where ``zpool import -d`` looks for the source devices (files: their
        directory; block devices: /dev)."""
        dirs = []
        for dev in self.devices:
            real = os.path.realpath(dev)
            d = "/dev" if real.startswith("/dev/") else os.path.dirname(real)
            if d not in dirs:
                dirs.append(d)
        return dirs

    async def _import(self) -> None:
        zp = self.zpool
        argv = [ZPOOL, "import"]
        for d in self._search_dirs():
            argv += ["-d", d]
        try:
            await zrun([*argv, zp], what=f"cannot import ZFS pool '{zp}'",
                       timeout=CHANGE_TIMEOUT)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                where = f" on {', '.join(self.devices)}" if self.devices else ""
                raise NotFound(f"ZFS pool '{zp}' is not imported, and no pool of that name "
                               f"can be imported{where}") from None
            raise

    async def start(self) -> None:
        if await self._pool_health() is None:
            await self._import()
        src = self.source
        found = await self._get([src], ("type",), flags=(), what=f"cannot open '{src}'")
        if src not in found:
            raise NotFound(f"dataset '{src}' does not exist")

    async def delete(self) -> None:
        src, zp = self.source, self.zpool
        if "/" in src:
            await zrun([ZFS, "destroy", "-r", src], what=f"cannot destroy dataset '{src}'",
                       timeout=CHANGE_TIMEOUT)
            return
        if await self._pool_health() is None:
            await self._import()  # an exported pool is imported to be destroyed
        try:
            await zrun_patient([ZPOOL, "destroy", zp], what=f"cannot destroy ZFS pool '{zp}'")
            return
        except StorageError as exc:
            if exc.errno != errno.EBUSY:
                raise
            busy = exc
        try:  # zfs-fuse keeps some pools busy for destroy, not for export
            await zrun([ZPOOL, "export", zp], what=f"cannot export ZFS pool '{zp}'",
                       timeout=CHANGE_TIMEOUT)
        except StorageError:
            raise Busy(busy.reason) from None
        raise Busy(f"{busy.reason}; exported it instead: its devices still hold it (start "
                   "imports it again; delete again imports and destroys it)")

    async def pool_info(self) -> PoolInfo | None:
        if self._info is not None and time.monotonic() - self._info_at < 1.0:
            return self._info  # the listing of a moment ago had them
        src = self.source
        found = await self._get([src], ("used", "available"), flags=(),
                                what=f"cannot read the size of '{src}'")
        if src not in found:
            raise NotFound(f"dataset '{src}' does not exist")
        self._info, self._info_at = self._figures(found[src]), time.monotonic()
        return self._info

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        zp, src = self.zpool, self.source
        health = await self._pool_health()
        if health is None:
            raise NotFound(f"ZFS pool '{zp}' is not imported (exported or destroyed outside "
                           "storagefs?)")
        if health in UNUSABLE:
            raise StorageError(f"ZFS pool '{zp}' is {health}", errno.EIO)
        self._health = health
        found = await self._get([src], what=f"cannot list '{src}'")
        if src not in found:
            raise NotFound(f"dataset '{src}' does not exist")
        self._info, self._info_at = self._figures(found[src]), time.monotonic()
        return self._info, volumes_of(found, src, self.definition.name)

    # ---- sources ------------------------------------------------------------------------------
    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        from .zfs_sources import find_sources

        return await find_sources(query)
