"""``disk`` pools: a partitioned disk whose partitions are the volumes
(libvirt's storage_backend_disk.c), driven with parted and partx.

- build writes the disk label, only on a device where blkid finds nothing
  (no label, filesystem or PV) unless ``build overwrite``.
- Volumes are partitions named as libvirt names them: the device's name, a
  ``p`` when that name ends in a digit (or ``part_separator='yes'``), and the
  partition number (``loop3p1``). Their path is the partition node (or a link
  to it in the target directory); their key is that path.
- Layout and sizes come from ``parted -m unit B print free``. After every
  change the kernel's view is brought in line with ``partx`` (kernels without
  partition-table parsing never read the table themselves; on others parted
  has already told the kernel and partx finds nothing to do).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat

import trio

from .. import hostcmd
from ..errors import Busy, InvalidArgument, NoSpace, NotFound, NotSupported, StorageError
from ..xml.poolsource import FreeExtent
from ..xml.pooltypes import DISK_VOLUME_FORMATS
from . import blockdev, localdisks
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy, VolumeSpec
from .parted import (
    BLKID_LABELS,
    FLAG_FORMATS,
    FORMAT_FLAG,
    FORMAT_FS_TYPE,
    LABELS,
    PARTED_ERRNOS,
    Extent,
    Layout,
    normal_format,
    parse_parted,
    place_partition,
    plan_partition,
    round_up,
    volume_format,
)

log = logging.getLogger(__name__)

PARTED, PARTX = "parted", "partx"


class DiskBackend(PoolBackend):
    type = "disk"
    policy = VolumePolicy(formats=DISK_VOLUME_FORMATS, default_format="raw",
                          takes_space=True)
    claims_devices = True

    def __init__(self, definition, ctx=None) -> None:
        super().__init__(definition, ctx)
        self._lock = trio.Lock()
        self._info: PoolInfo | None = None

    # ---- names -------------------------------------------------------------------
    @property
    def device(self) -> str:
        return blockdev.single_device(self.definition)

    @property
    def disk_format(self) -> str:
        return self.definition.source.format or "unknown"

    @classmethod
    async def find_sources(cls, query: str | None = None) -> list[str]:
        """Unused empty whole devices (a query: the device it names), see localdisks."""
        return await localdisks.disk_sources(query)

    def _kname(self) -> str:
        """The kernel's name of the disk (the source path with links resolved)."""
        return os.path.basename(os.path.realpath(self.device))

    @staticmethod
    def _ksep(kname: str) -> str:
        return "p" if kname[-1:].isdigit() else ""

    def part_name(self, number: int) -> str:
        """The volume name of partition ``number``, as libvirt's parthelper forms it."""
        kname = self._kname()
        sep_flag = self.definition.source.devices[0].part_separator
        sep = "p" if sep_flag else "" if sep_flag is False else self._ksep(kname)
        return f"{kname}{sep}{number}"

    def _node(self, number: int) -> str:
        kname = self._kname()
        return f"/dev/{kname}{self._ksep(kname)}{number}"

    def _number(self, name: str) -> int:
        for sep in ("p", ""):
            prefix = f"{self._kname()}{sep}"
            rest = name[len(prefix):] if name.startswith(prefix) else ""
            if rest.isdigit():
                number = int(rest)
                if self.part_name(number) == name:
                    return number
        raise InvalidArgument(f"Volume path '{name}' did not start with parent pool source "
                              "device name.")

    def _stable_path(self, node: str) -> str:
        """The volume's path: a link to the node in the target directory, else the node
        (libvirt's virStorageBackendStablePath)."""
        target = self.definition.target_path
        if not target or os.path.realpath(target) in ("/dev", os.path.dirname(node)):
            return node
        try:
            with os.scandir(target) as it:
                for entry in it:
                    if entry.is_symlink() and os.path.realpath(entry.path) == node:
                        return entry.path
        except OSError:
            pass
        return node

    # ---- reading the disk ---------------------------------------------------------------
    async def _layout(self) -> Layout:
        dev = self.device
        blockdev.require_device(dev)
        res = await hostcmd.run([PARTED, "-m", "-s", dev, "unit", "B", "print", "free"],
                                timeout=60, check=False)
        if res.returncode != 0:
            text = res.stderr + res.stdout
            if "unrecognised disk label" in text:
                raise NotFound(f"'{dev}' has no disk label (parted: unrecognised disk label)")
            reason = hostcmd.first_line(res.stderr) or f"exit {res.returncode}"
            raise StorageError(f"Error checking for disk label, failed to get disk partition "
                               f"information: parted: {reason}", errno.EIO)
        layout = parse_parted(res.stdout)
        if layout.label == "msdos":
            layout = parse_parted(res.stdout, await self._msdos_types(dev))
        self._remember(layout)
        return layout

    async def _msdos_types(self, dev: str) -> dict[int, str]:
        res = await hostcmd.run([PARTX, "-g", "-o", "NR,TYPE", dev], timeout=30, check=False)
        types = {}
        for line in res.stdout.splitlines():
            words = line.split()
            if len(words) == 2 and words[0].isdigit():
                types[int(words[0])] = words[1]
        return types

    def _remember(self, layout: Layout) -> None:
        """Pool sizes and free extents as libvirt computes them."""
        ends = [e.end + 1 for e in (*layout.parts, *layout.free)]
        allocation = sum(p.size for p in layout.parts if p.kind != "extended")
        available = 0
        extents = []
        for free in layout.free:
            first = free.start or 512
            available += free.end + 1 - first
            extents.append(FreeExtent(first, free.end + 1))
        self._info = PoolInfo(max(ends, default=layout.size), allocation, available)
        # status.xml shows <freeExtent>, as virsh pool-dumpxml does
        with contextlib.suppress(IndexError, AttributeError):
            self.definition.source.devices[0].free_extents = extents

    def _volume(self, p: Extent) -> VolumeInfo:
        node = self._node(p.number)
        path = self._stable_path(node)
        info = VolumeInfo(name=self.part_name(p.number), path=path, key=path,
                          format=volume_format(p), type="block", capacity=p.size,
                          allocation=0 if p.kind == "extended" else p.size, physical=p.size)
        return blockdev.stat_node(info, node)

    # ---- keeping the kernel in line with the table ---------------------------------------
    async def _partx(self, *args: str) -> None:
        try:
            res = await hostcmd.run([PARTX, *args, self.device], timeout=30, check=False)
        except StorageError as exc:
            log.warning("partx %s: %s", " ".join(args), exc.reason)
            return
        if res.returncode != 0:
            log.info("partx %s %s: %s", " ".join(args), self.device,
                     hostcmd.first_line(res.stderr) or f"exit {res.returncode}")

    async def _sync_kernel(self, layout: Layout) -> None:
        known = blockdev.kernel_partitions(self._kname())
        for p in layout.parts:
            if p.number not in known:
                await self._partx("-a", "--nr", str(p.number))
            elif p.kind != "extended" and known[p.number] not in (None, (p.start, p.size)):
                await self._partx("-u", "--nr", str(p.number))
        for number in sorted(set(known) - {p.number for p in layout.parts}):
            await self._partx("-d", "--nr", str(number))

    async def _parted(self, *args: str, stdin: bytes | None = None) -> None:
        argv = [PARTED, "---pretend-input-tty" if stdin is not None else "-s", self.device,
                "unit", "B", *args]
        await hostcmd.run(argv, timeout=120, errno_map=PARTED_ERRNOS, stdin=stdin)

    # ---- pool operations -------------------------------------------------------------------
    async def check(self) -> bool:
        try:
            await self._check_label()
        except StorageError:
            return False
        return True

    async def _check_label(self) -> None:
        dev, fmt = self.device, self.disk_format
        blockdev.require_device(dev)
        found = await blockdev.probe(dev)
        label = found.get("PTTYPE")
        if label is None:
            other = blockdev.found_format(found)
            if other:
                raise Busy(f"Format of device '{dev}' does not match the expected format "
                           f"'{fmt}' (it holds {other})")
            raise Busy(f"Device '{dev}' is unrecognized, requires build")
        if fmt != "unknown" and label != BLKID_LABELS.get(fmt, fmt):
            raise Busy(f"Format of device '{dev}' does not match the expected format "
                       f"'{fmt}' (it holds {label})")

    async def build(self, overwrite: bool = False) -> None:
        dev, fmt = self.device, self.disk_format
        label = LABELS.get(fmt)
        if label is None:
            raise NotSupported(f"cannot write a disk label of format '{fmt}'")
        blockdev.require_device(dev)
        async with self._lock:
            if overwrite:
                self._refuse_partitions_in_use()
                await blockdev.wipe_signatures(dev)
            else:
                await blockdev.refuse_unless_empty(dev, BLKID_LABELS[fmt])
            await self._parted("mklabel", label)
            await self._sync_kernel(await self._layout())

    def _refuse_partitions_in_use(self) -> None:
        kname = self._kname()
        for number in sorted(blockdev.kernel_partitions(kname)):
            node = f"/dev/{kname}{self._ksep(kname)}{number}"
            if blockdev.in_use(node):
                raise Busy(f"partition '{node}' is in use (mounted or held by another device)")

    async def start(self) -> None:
        await self._check_label()
        async with self._lock:
            await self._sync_kernel(await self._layout())

    async def stop(self) -> None:
        return None  # nothing to undo: the partitions stay as they are

    async def pool_info(self) -> PoolInfo | None:
        return self._info

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        # a partition's format is its type in the table, which the guest cannot write
        async with self._lock:
            layout = await self._layout()
        return self._info or PoolInfo(), [self._volume(p) for p in layout.parts]

    # ---- volumes --------------------------------------------------------------------------
    def check_volume_name(self, name: str) -> None:
        self._number(name)

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        if getattr(spec, "encryption", None):
            raise NotSupported("storage pool does not support encrypted volumes")
        if spec.backing_path:
            raise NotSupported("partitions cannot have a backing store")
        fmt = normal_format(spec.format)
        if spec.capacity <= 0:
            raise InvalidArgument("a partition needs a capacity above 0")
        async with self._lock:
            layout = await self._layout()
            kind, number = plan_partition(layout, fmt)
            expected = self.part_name(number)
            if spec.name != expected:
                raise InvalidArgument(f"invalid partition name '{spec.name}', expected "
                                      f"'{expected}' (the next partition of "
                                      f"'{self.device}')")
            first, last = place_partition(layout, kind, spec.capacity)
            words = [kind] if layout.label == "msdos" else ["primary"]
            if fmt in FORMAT_FS_TYPE:
                words.append(FORMAT_FS_TYPE[fmt])
            await self._parted("mkpart", *words, f"{first}B", f"{last}B")
            try:
                if fmt in FORMAT_FLAG:
                    await self._parted("set", str(number), FORMAT_FLAG[fmt], "on")
                layout = await self._layout()
                made = layout.part(number)
                if made is None or made.start != first:
                    raise StorageError(f"parted did not make partition {number} at {first}",
                                       errno.EIO)
                await self._sync_kernel(layout)
                info = self._volume(made)
                _set_node_perms(info, self._node(number), spec)
                return info
            except BaseException:
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await self._parted("rm", str(number))
                    await self._sync_kernel(await self._layout())
                raise

    async def delete_volume(self, info: VolumeInfo) -> None:
        number = self._number(info.name)
        async with self._lock:
            layout = await self._layout()
            p = layout.part(number)
            if p is None:
                await self._sync_kernel(layout)
                return
            if p.kind == "extended" and any(q.kind == "logical" for q in layout.parts):
                raise Busy(f"the extended partition '{info.name}' still holds logical "
                           "partitions; delete them first")
            node = self._node(number)
            if os.path.exists(node) and blockdev.in_use(node):
                raise Busy(f"partition '{node}' is in use (mounted or held by another device)")
            try:
                await self._parted("rm", str(number))
            except StorageError as exc:
                if exc.errno == errno.EBUSY and "inform the kernel" in exc.reason:
                    await self._restore(layout, p)
                    raise Busy(f"partition '{node}' is open: the kernel kept it, so the "
                               "partition table entry was put back") from None
                raise
            await self._sync_kernel(await self._layout())

    async def _restore(self, layout: Layout, p: Extent) -> None:
        """Put back a partition that parted removed from the table but the kernel kept."""
        words = [p.kind] if layout.label == "msdos" else [p.name or "primary"]
        with trio.CancelScope(shield=True):
            try:
                await self._parted("mkpart", *words, f"{p.start}B", f"{p.end}B")
                for flag in sorted(p.flags & {"lvm", "raid", "boot", "esp", "swap", "lba"}):
                    with contextlib.suppress(StorageError):
                        await self._parted("set", str(p.number), flag, "on")
            except StorageError as exc:
                log.error("%s: could not restore partition %d (%d-%d): %s", self.device,
                          p.number, p.start, p.end, exc.reason)

    async def resize_volume(self, info: VolumeInfo, capacity: int, *, shrink: bool = False,
                            allocate: bool = False, **_ignored) -> VolumeInfo:
        number = self._number(info.name)
        async with self._lock:
            layout = await self._layout()
            p = layout.part(number)
            if p is None:
                raise NotFound(f"partition {number} of '{self.device}' is gone")
            if p.kind == "extended":
                raise NotSupported("resizing an extended partition is not supported")
            size = round_up(capacity, layout.sector)
            if size == p.size:
                return self._volume(p)
            if size < p.size and not shrink:
                raise InvalidArgument("Can't shrink capacity below current capacity unless "
                                      "shrink flag explicitly specified")
            if size <= 0:
                raise InvalidArgument("a partition needs a capacity above 0")
            last = p.start + size - 1
            if size > p.size:
                after = next((f for f in layout.free if f.start == p.end + 1), None)
                limit = after.end if after is not None else p.end
                if last > limit:
                    raise NoSpace(f"not enough free space after partition {number}: it can "
                                  f"grow to {limit + 1 - p.start} bytes at most")
            node = self._node(number)
            if os.path.exists(node) and blockdev.in_use(node):
                raise Busy(f"partition '{node}' is in use (mounted or held by another device)")
            if size < p.size:  # parted asks before shrinking; answer it
                await self._parted("resizepart", str(number), f"{last}B", stdin=b"Yes\n")
            else:
                await self._parted("resizepart", str(number), f"{last}B")
            layout = await self._layout()
            new = layout.part(number)
            if new is None or new.end != last:
                raise StorageError(f"parted did not resize partition {number}", errno.EIO)
            await self._sync_kernel(layout)
            return self._volume(new)

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """Grow, change the type flag, set permissions: everything that can be refused is
        checked before anything changes (a document is never half applied)."""
        want, have = normal_format(spec.format), normal_format(info.format)
        if want != have and (want not in FLAG_FORMATS or have not in FLAG_FORMATS):
            raise NotSupported(f"cannot change the partition type of '{info.name}' from "
                               f"{have} to {want}; delete and re-create it")
        size = round_up(spec.capacity, 512) if spec.capacity else info.capacity
        if size < info.capacity:
            raise InvalidArgument(
                f"capacity {spec.capacity} is below the current {info.capacity}; "
                "shrinking needs 'resize --shrink'")
        if size > info.capacity:  # the step most likely refused (ENOSPC) goes first
            info = await self.resize_volume(info, spec.capacity)
        number = self._number(info.name)
        if want != have:
            async with self._lock:
                for fmt, flag in FORMAT_FLAG.items():
                    if fmt in (want, have):
                        await self._parted("set", str(number), flag,
                                           "on" if fmt == want else "off")
                layout = await self._layout()
                p = layout.part(number)
                if p is None:
                    raise NotFound(f"partition {number} of '{self.device}' is gone")
                info = self._volume(p)
        _set_node_perms(info, self._node(number), spec)
        return info


def _set_node_perms(info: VolumeInfo, node: str, spec: VolumeSpec) -> None:
    """Apply the spec's mode and owner to the device node (as libvirt does at creation)."""
    if spec.mode is None and spec.uid is None and spec.gid is None:
        return
    try:
        st = os.stat(node)
        if not stat.S_ISBLK(st.st_mode):
            return
        if spec.uid is not None or spec.gid is not None:
            os.chown(node, -1 if spec.uid is None else spec.uid,
                     -1 if spec.gid is None else spec.gid)
        if spec.mode is not None:
            os.chmod(node, spec.mode)
    except OSError as exc:
        raise StorageError(f"cannot set permissions of '{node}': {exc.strerror}",
                           exc.errno or errno.EIO) from None
    blockdev.stat_node(info, node)


__all__ = ["DiskBackend", "Extent", "Layout", "parse_parted"]
