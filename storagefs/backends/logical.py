"""``logical`` pools: an LVM volume group whose logical volumes are the volumes
(libvirt's storage_backend_logical.c).

- build: pvcreate on every source device, then vgcreate — only on devices
  where blkid finds nothing, unless ``build overwrite`` (which wipes them).
- delete: ``vgremove -f`` and ``pvremove`` of the source devices.
- start: the volume group must exist on the source devices; its logical
  volumes are activated (``vgchange -aly``). Where the kernel has no
  device-mapper nothing can be activated: the pool starts all the same and
  :meth:`LogicalBackend.degraded_reason` says why it is degraded; logical
  volumes are then made with ``--driverloaded n`` and their ``/dev/VG/LV``
  nodes do not exist.
- sizes come from ``vgs``/``lvs --reportformat json --units b --nosuffix``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat

import trio

from .. import hostcmd
from ..errors import Busy, Exists, InvalidArgument, NotFound, NotSupported, StorageError
from . import blockdev, localdisks
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy, VolumeSpec

log = logging.getLogger(__name__)

LVM_TIMEOUT = 120
#: stderr lines every LVM command prints on a kernel without device-mapper
_NOISE = ("WARNING: Activation disabled", "/dev/mapper/control", "Failure to communicate",
          "Check that device-mapper", "Incompatible libdevmapper", "WARNING: Skipping zeroing",
          "not zeroed", "WARNING: Failed to connect to lvmetad", "File descriptor",
          "Run `", "Rounding up size")
#: (lower-case) words of LVM's reason -> errno
LVM_ERRNOS = {"not found": errno.ENOENT, "already exists": errno.EEXIST,
              "insufficient free space": errno.ENOSPC, "insufficient suitable": errno.ENOSPC,
              "no space": errno.ENOSPC, "is invalid": errno.EINVAL, "reserved": errno.EINVAL,
              "in use": errno.EBUSY, "open logical volume": errno.EBUSY,
              "can't open": errno.EBUSY, "matches existing size": errno.EALREADY}
#: characters LVM accepts in VG and LV names
_LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")


def _reason(stderr: str, stdout: str = "") -> str:
    for text in (stderr, stdout):
        for line in text.splitlines():
            line = line.strip()
            if line and not any(n in line for n in _NOISE):
                return line
    return ""


async def lvm(argv: list[str], *, check: bool = True, what: str | None = None,
              stdin: bytes | None = None) -> hostcmd.Result:
    """Run an LVM command; failures become StorageError with the useful stderr line."""
    res = await hostcmd.run(argv, timeout=LVM_TIMEOUT, check=False, stdin=stdin)
    if check and res.returncode != 0:
        reason = _reason(res.stderr, res.stdout) or f"exit {res.returncode}"
        code = errno.EIO
        for needle, mapped in LVM_ERRNOS.items():
            if needle in reason.lower():
                code = mapped
                break
        prefix = f"{what}: " if what else f"{argv[0]}: "
        raise StorageError(prefix + reason, code)
    return res


def _report(res: hostcmd.Result, kind: str) -> list[dict]:
    try:
        data = json.loads(res.stdout)
        rows = []
        for part in data.get("report", []):
            rows.extend(part.get(kind, []))
        return rows
    except (ValueError, AttributeError, TypeError):
        raise StorageError(f"{kind}s printed no JSON report", errno.EIO) from None


def _int(row: dict, key: str) -> int:
    try:
        return int(str(row.get(key, "0")).strip() or 0)
    except ValueError:
        return 0


class LogicalBackend(PoolBackend):
    type = "logical"
    policy = VolumePolicy(formats=(), default_format="raw", takes_space=True)
    claims_devices = True

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self._activation_error: str | None = None
        self._partial: str | None = None
        self._info: PoolInfo | None = None
        self._extent = 4 << 20
        self._lock = trio.Lock()

    # ---- the definition -----------------------------------------------------------
    @property
    def vg(self) -> str:
        name = self.definition.source.name or self.definition.name
        if not _LVM_NAME.fullmatch(name):
            raise InvalidArgument(f"volume group name '{name}' is invalid: use letters, "
                                  "digits and + _ . - only")
        return name

    @property
    def devices(self) -> list[str]:
        return [d.path for d in self.definition.source.devices]

    @property
    def target(self) -> str:
        return self.definition.target_path or f"/dev/{self.vg}"

    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """Volume groups (a query: a VG name or a PV's path), see localdisks."""
        return await localdisks.logical_sources(query)

    @staticmethod
    def _no_dm() -> list[str]:
        return [] if blockdev.dm_available() else ["--driverloaded", "n"]

    def degraded_reason(self) -> str | None:
        """Why the running pool is degraded (None when it is not): its logical volumes
        cannot be activated, or physical volumes of the group are missing."""
        if not blockdev.dm_available():
            return (f"logical volumes of '{self.vg}' cannot be activated: this kernel has "
                    f"no device-mapper, so no {self.target}/NAME node exists")
        return self._activation_error or self._partial

    # ---- reports ------------------------------------------------------------------------
    async def _vg_row(self) -> dict | None:
        res = await lvm(["vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                         "vg_name,vg_size,vg_free,vg_extent_size,vg_attr", self.vg],
                        check=False)
        rows = _report(res, "vg") if res.stdout.strip() else []
        return rows[0] if res.returncode == 0 and rows else None

    async def _pvs(self) -> dict[str, str]:
        """PV path -> VG name of every PV LVM sees."""
        res = await lvm(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"])
        return {r.get("pv_name", ""): r.get("vg_name", "") for r in _report(res, "pv")}

    async def _lv_rows(self, lv: str | None = None) -> list[dict]:
        res = await lvm(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                         "lv_name,lv_uuid,lv_size,lv_attr,origin",
                         f"{self.vg}/{lv}" if lv else self.vg], what="lvs")
        return _report(res, "lv")

    async def _match_source(self) -> None:
        """The VG exists and holds at least one of the pool's devices (libvirt's check)."""
        vg = self.vg
        pvs = await self._pvs()
        mine = [pv for pv, name in pvs.items() if name == vg]
        if not mine:
            raise NotFound(f"cannot find logical volume group name '{vg}'")
        if self.devices and not any(blockdev.same_device(pv, dev) for pv in mine
                                    for dev in self.devices):
            raise InvalidArgument(f"cannot find any matching source devices for logical "
                                  f"volume group '{vg}'")

    def _volume(self, row: dict) -> VolumeInfo:
        name = row.get("lv_name", "")
        size = _int(row, "lv_size")
        path = f"{self.target}/{name}"
        info = VolumeInfo(name=name, path=path, key=row.get("lv_uuid") or path, format="raw",
                          type="block", capacity=size, allocation=size, physical=size)
        origin = row.get("origin") or ""
        if origin and not origin.startswith("["):
            info.backing_path = f"{self.target}/{origin}"
        return blockdev.stat_node(info, info.path)

    @staticmethod
    def _listed(row: dict) -> bool:
        attr = row.get("lv_attr", "") or "-"
        name = row.get("lv_name", "")
        # thin pools and internal volumes have no node and are not volumes
        return bool(name) and attr[0] not in "tTeiIlpvdD" and not name.startswith("[")

    # ---- pool operations -------------------------------------------------------------------
    async def check(self) -> bool:
        try:
            await self._match_source()
        except StorageError:
            return False
        return True

    async def build(self, overwrite: bool = False) -> None:
        vg, devices = self.vg, self.devices
        if not devices:
            raise InvalidArgument(f"no source devices to build volume group '{vg}' on: add "
                                  "<device path='...'/> to <source>")
        for dev in devices:
            blockdev.require_device(dev)
        pvs = await self._pvs()
        holders = [pv for pv, name in pvs.items() if name == vg]
        if any(not any(blockdev.same_device(pv, d) for d in devices) for pv in holders):
            raise Exists(f"volume group '{vg}' already exists on other devices "
                         f"({', '.join(sorted(holders))})")
        for dev in devices:
            if overwrite:
                await blockdev.wipe_signatures(dev)
            else:
                await blockdev.refuse_unless_empty(dev, "LVM2_member")
        done: list[str] = []
        try:
            for dev in devices:
                await lvm(["pvcreate", dev], what=f"pvcreate {dev}")
                done.append(dev)
            await lvm(["vgcreate", vg, *devices], what="vgcreate")
        except BaseException:
            with trio.CancelScope(shield=True):
                for dev in done:
                    with contextlib.suppress(StorageError):
                        await lvm(["pvremove", dev])
            raise

    async def delete(self) -> None:
        vg = self.vg
        await lvm(["vgremove", "-f", vg], what=f"cannot remove volume group '{vg}'")
        for dev in self.devices:
            try:
                await lvm(["pvremove", dev])
            except StorageError as exc:
                log.info("pvremove %s: %s", dev, exc.reason)

    async def start(self) -> None:
        await self._match_source()
        self._activation_error = None
        try:
            await lvm(["vgchange", "-aly", self.vg], what="vgchange -aly")
        except StorageError as exc:
            self._activation_error = (f"cannot activate the logical volumes of '{self.vg}': "
                                      f"{exc.reason}")
            log.warning("%s", self._activation_error)

    async def stop(self) -> None:
        try:
            await lvm(["vgchange", "-aln", self.vg], what="vgchange -aln")
        except StorageError as exc:
            if blockdev.dm_available():
                raise Busy(f"cannot deactivate volume group '{self.vg}': {exc.reason}") \
                    from None
            log.info("%s", exc.reason)  # nothing was active without device-mapper
        self._activation_error = None

    async def pool_info(self) -> PoolInfo | None:
        return self._info

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        # logical volumes are raw: nothing is probed from their bytes
        async with self._lock:
            row = await self._vg_row()
            if row is None:
                gone = [d for d in self.devices if not blockdev.device_present(d)]
                why = f" (device {', '.join(gone)} is gone)" if gone else ""
                raise NotFound(f"Volume group \"{self.vg}\" not found{why}")
            size, free = _int(row, "vg_size"), _int(row, "vg_free")
            self._extent = _int(row, "vg_extent_size") or self._extent
            attr = row.get("vg_attr", "")
            self._partial = (f"volume group '{self.vg}' is partial: physical volume(s) missing"
                             if len(attr) > 3 and attr[3] == "p" else None)
            self._info = PoolInfo(size, size - free, free)
            rows = await self._lv_rows()
        return self._info, [self._volume(r) for r in rows if self._listed(r)]

    # ---- volumes ---------------------------------------------------------------------------
    async def _probe(self, name: str) -> VolumeInfo | None:
        try:
            rows = await self._lv_rows(name)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        rows = [r for r in rows if r.get("lv_name") == name]
        return self._volume(rows[0]) if rows else None

    async def _refresh_info(self) -> None:
        row = await self._vg_row()
        if row is not None:
            size, free = _int(row, "vg_size"), _int(row, "vg_free")
            self._info = PoolInfo(size, size - free, free)
            self._extent = _int(row, "vg_extent_size") or self._extent

    def check_volume_name(self, name: str) -> None:
        if not _LVM_NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidArgument(f"Logical volume name \"{name}\" is invalid: use letters, "
                                  "digits and + _ . - only")

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        name, vg = spec.name, self.vg
        self.check_volume_name(name)
        if getattr(spec, "encryption", None):
            raise NotSupported("encrypted logical volumes are not supported yet")
        if spec.backing_path:
            raise NotSupported("logical volumes with a backing store (LVM snapshots) are not "
                               "supported yet")
        if spec.capacity <= 0:
            raise InvalidArgument("a logical volume needs a capacity above 0")
        kib = -(-spec.capacity // 1024)
        async with self._lock:
            await lvm(["lvcreate", *self._no_dm(), "--name", name, "-L", f"{kib}K", "--yes",
                       vg], what=f"cannot create logical volume '{name}'")
            try:
                info = await self._probe(name)
                if info is None:
                    raise StorageError(f"cannot find newly created volume '{vg}/{name}'",
                                       errno.EIO)
                _set_node_perms(info, spec)
                await self._refresh_info()
                return info
            except BaseException:
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await lvm(["lvremove", "-f", f"{vg}/{name}"])
                raise

    async def delete_volume(self, info: VolumeInfo) -> None:
        lv = f"{self.vg}/{info.name}"
        async with self._lock:
            try:
                await lvm(["lvremove", "-f", lv], what=f"cannot remove '{lv}'")
            except StorageError as exc:
                if exc.errno == errno.ENOENT:
                    return
                if not blockdev.dm_available():
                    raise
                await lvm(["lvchange", "-aln", lv], what=f"cannot deactivate '{lv}'")
                await lvm(["lvremove", "-f", lv], what=f"cannot remove '{lv}'")
            await self._refresh_info()

    async def resize_volume(self, info: VolumeInfo, capacity: int, *, shrink: bool = False,
                            allocate: bool = False, **_ignored) -> VolumeInfo:
        lv = f"{self.vg}/{info.name}"
        async with self._lock:
            current = await self._probe(info.name)
            if current is None:
                raise NotFound(f"logical volume '{lv}' is gone")
            extent = self._extent or 1
            size = -(-capacity // extent) * extent
            if size <= 0:
                raise InvalidArgument("a logical volume needs a capacity above 0")
            if size == current.capacity:
                return current
            if size < current.capacity and not shrink:
                raise InvalidArgument("Can't shrink capacity below current capacity unless "
                                      "shrink flag explicitly specified")
            force = ["-f"] if size < current.capacity else []
            await lvm(["lvresize", *self._no_dm(), *force, "-L", f"{size}b", lv],
                      what=f"cannot resize '{lv}'")
            new = await self._probe(info.name)
            if new is None:
                raise NotFound(f"logical volume '{lv}' is gone")
            await self._refresh_info()
            return new

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        extent = self._extent or 1
        wanted = -(-spec.capacity // extent) * extent if spec.capacity else info.capacity
        if wanted > info.capacity:
            info = await self.resize_volume(info, spec.capacity)
        elif wanted < info.capacity:
            raise InvalidArgument(
                f"capacity {spec.capacity} is below the current {info.capacity}; "
                "shrinking needs 'resize --shrink'")
        _set_node_perms(info, spec)
        return info


def _set_node_perms(info: VolumeInfo, spec: VolumeSpec) -> None:
    """Mode and owner of the LV's node, when it exists (it does not without device-mapper)."""
    if spec.mode is None and spec.uid is None and spec.gid is None:
        return
    try:
        st = os.stat(info.path)
    except OSError:
        return
    if not stat.S_ISBLK(st.st_mode):
        return
    try:
        if spec.uid is not None or spec.gid is not None:
            os.chown(info.path, -1 if spec.uid is None else spec.uid,
                     -1 if spec.gid is None else spec.gid)
        if spec.mode is not None:
            os.chmod(info.path, spec.mode)
    except OSError as exc:
        raise StorageError(f"cannot set permissions of '{info.path}': {exc.strerror}",
                           exc.errno or errno.EIO) from None
    blockdev.stat_node(info, info.path)
