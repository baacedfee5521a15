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
from dataclasses import dataclass, field

import trio

from .. import hostcmd
from ..errors import Busy, InvalidArgument, NoSpace, NotFound, NotSupported, StorageError
from ..xml.poolsource import FreeExtent
from ..xml.pooltypes import DISK_VOLUME_FORMATS
from . import blockdev
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumePolicy, VolumeSpec

log = logging.getLogger(__name__)

PARTED, PARTX = "parted", "partx"
#: partitions start on 1 MiB boundaries (parted's "optimal" alignment on most disks)
ALIGN = 1 << 20
#: libvirt's disk pool formats -> parted's label names ("unknown" builds a dos label)
LABELS = {"dos": "msdos", "unknown": "msdos", "gpt": "gpt", "mac": "mac", "bsd": "bsd",
          "pc98": "pc98", "sun": "sun", "dvh": "dvh"}
#: libvirt's disk pool formats -> what blkid calls the label (PTTYPE)
BLKID_LABELS = {"dos": "dos", "unknown": "dos", "gpt": "gpt", "mac": "mac", "bsd": "bsd",
                "pc98": "pc98", "sun": "sun", "dvh": "sgi"}
#: msdos partition type ids of extended partitions
EXTENDED_IDS = {"0x5", "0xf", "0x85"}
#: volume format -> parted file-system type given to mkpart
FORMAT_FS_TYPE = {"linux-swap": "linux-swap", "fat16": "fat16", "fat32": "fat32"}
#: volume format -> parted flag set on the new partition
FORMAT_FLAG = {"linux-lvm": "lvm", "linux-raid": "raid"}
#: formats that differ only by a flag, so an existing partition can change between them
FLAG_FORMATS = ("none", "linux-lvm", "linux-raid")
PARTED_ERRNOS = {"is being used": errno.EBUSY, "unable to inform the kernel": errno.EBUSY,
                 "unrecognised disk label": errno.EINVAL, "outside of the device": errno.ENOSPC,
                 "Can't have overlapping": errno.ENOSPC, "Too many primary": errno.ENOSPC}


@dataclass
class Extent:
    """A partition or a free area, in bytes (``end`` is the last byte)."""

    number: int
    start: int
    end: int
    size: int
    fs: str = ""
    name: str = ""
    flags: frozenset[str] = frozenset()
    #: "primary", "logical", "extended", "free" or "free-logical" (inside an extended one)
    kind: str = "primary"


@dataclass
class Layout:
    size: int
    sector: int
    label: str
    parts: list[Extent] = field(default_factory=list)
    free: list[Extent] = field(default_factory=list)

    def part(self, number: int) -> Extent | None:
        for p in self.parts:
            if p.number == number:
                return p
        return None

    @property
    def extended(self) -> Extent | None:
        for p in self.parts:
            if p.kind == "extended":
                return p
        return None


def _split_machine(line: str) -> list[str]:
    """Split a ``parted -m`` line on ':' (parted escapes ':' and '\\' in names)."""
    fields, cur, i = [], [], 0
    line = line.rstrip()
    if line.endswith(";"):
        line = line[:-1]
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur.append(line[i + 1])
            i += 2
            continue
        if c == ":":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    fields.append("".join(cur))
    return fields


def _bytes(text: str) -> int:
    if not text.endswith("B"):
        raise ValueError(f"not a byte count: {text!r}")
    return int(text[:-1])


def parse_parted(text: str, types: dict[int, str] | None = None) -> Layout:
    """Parse ``parted -m -s DEV unit B print free``; ``types``: msdos type ids by number."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    try:
        start = lines.index("BYT;")
    except ValueError:
        raise StorageError("parted printed no machine-readable layout", errno.EIO) from None
    dev = _split_machine(lines[start + 1])
    layout = Layout(size=_bytes(dev[1]), sector=int(dev[3] or 512), label=dev[5])
    for line in lines[start + 2:]:
        f = _split_machine(line)
        if len(f) < 5 or not f[0].isdigit():
            continue
        number, first, last, size = int(f[0]), _bytes(f[1]), _bytes(f[2]), _bytes(f[3])
        if f[4] == "free" and len(f) == 5:
            layout.free.append(Extent(number, first, last, size, kind="free"))
            continue
        flags = frozenset(x.strip() for x in (f[6] if len(f) > 6 else "").split(",") if x.strip())
        layout.parts.append(Extent(number, first, last, size, fs=f[4],
                                   name=f[5] if len(f) > 5 else "", flags=flags))
    if layout.label == "msdos":
        for p in layout.parts:
            if p.number >= 5:
                p.kind = "logical"
            elif (types or {}).get(p.number, "").lower() in EXTENDED_IDS:
                p.kind = "extended"
        ext = layout.extended
        if ext is not None:
            for free in layout.free:
                if ext.start <= free.start and free.end <= ext.end:
                    free.kind = "free-logical"
    return layout


def align_up(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def round_up(value: int, to: int) -> int:
    return align_up(max(value, 0), to)


def volume_format(p: Extent) -> str:
    """libvirt's volume format of a partition, from its type and flags."""
    if p.kind == "extended":
        return "extended"
    if "lvm" in p.flags:
        return "linux-lvm"
    if "raid" in p.flags:
        return "linux-raid"
    if "swap" in p.flags or p.fs.startswith("linux-swap"):
        return "linux-swap"
    if p.fs in ("fat16", "fat32"):
        return p.fs
    return "none"


def normal_format(fmt: str | None) -> str:
    """The volume format asked for, with storagefs's generic default (raw) and linux as none."""
    if fmt in (None, "", "raw", "linux"):
        return "none"
    if fmt not in DISK_VOLUME_FORMATS:
        raise InvalidArgument(f"unknown volume format type {fmt} for a disk pool "
                              f"(one of: {', '.join(DISK_VOLUME_FORMATS)})")
    return fmt


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

    def _kernel_partitions(self) -> dict[int, str]:
        """Partitions the kernel knows of this disk: number -> sysfs directory."""
        kname = self._kname()
        base = f"/sys/class/block/{kname}"
        found = {}
        try:
            with os.scandir(base) as it:
                for entry in it:
                    if not entry.name.startswith(kname):
                        continue
                    try:
                        with open(os.path.join(entry.path, "partition")) as f:
                            found[int(f.read().strip())] = entry.path
                    except (OSError, ValueError):
                        continue
        except OSError:
            pass
        return found

    async def _sync_kernel(self, layout: Layout) -> None:
        known = self._kernel_partitions()
        for p in layout.parts:
            where = known.get(p.number)
            if where is None:
                await self._partx("-a", "--nr", str(p.number))
                continue
            if p.kind == "extended":
                continue
            try:
                with open(os.path.join(where, "start")) as f:
                    first = int(f.read()) * 512
                with open(os.path.join(where, "size")) as f:
                    size = int(f.read()) * 512
            except (OSError, ValueError):
                continue
            if (first, size) != (p.start, p.size):
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
        for number in sorted(self._kernel_partitions()):
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

    def _plan(self, layout: Layout, fmt: str) -> tuple[str, int]:
        """The kind of partition to make and the number parted will give it."""
        used = {p.number for p in layout.parts}
        if layout.label != "msdos":
            if fmt == "extended":
                raise InvalidArgument("extended partitions exist only on dos disk labels")
            return "primary", next(n for n in range(1, len(used) + 2) if n not in used)
        primaries = [p for p in layout.parts if p.kind in ("primary", "extended")]
        free_slots = [n for n in range(1, 5) if n not in used]
        if fmt == "extended":
            if layout.extended is not None:
                raise InvalidArgument("extended partition already exists")
            if not free_slots:
                raise NoSpace("no primary partition slot is free for an extended partition")
            return "extended", free_slots[0]
        if len(primaries) < 4 and free_slots:
            return "primary", free_slots[0]
        if layout.extended is None:
            raise NoSpace("no extended partition found and no primary partition available")
        return "logical", max([4, *(p.number for p in layout.parts if p.kind == "logical")]) + 1

    def _place(self, layout: Layout, kind: str, capacity: int) -> tuple[int, int]:
        """First and last byte of a new partition: the smallest free extent that fits."""
        size = round_up(capacity, layout.sector)
        wanted = "free-logical" if kind == "logical" else "free"
        best = None
        largest = 0
        for free in layout.free:
            if free.kind != wanted:
                continue
            first = align_up(free.start + (layout.sector if kind == "logical" else 0), ALIGN)
            room = free.end + 1 - first
            largest = max(largest, room)
            if room >= size and (best is None or free.size < best[0]):
                best = (free.size, first)
        if best is None:
            where = "in the extended partition" if kind == "logical" else "on the disk"
            raise NoSpace(f"no large enough free extent {where} for {size} bytes "
                          f"(the largest can hold {max(largest, 0)} bytes)")
        return best[1], best[1] + size - 1

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
            kind, number = self._plan(layout, fmt)
            expected = self.part_name(number)
            if spec.name != expected:
                raise InvalidArgument(f"invalid partition name '{spec.name}', expected "
                                      f"'{expected}' (the next partition of "
                                      f"'{self.device}')")
            first, last = self._place(layout, kind, spec.capacity)
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
