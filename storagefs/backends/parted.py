"""What parted prints, as values: the layout of a partitioned disk (``parted -m unit B
print free``), where a new partition goes, and how partition types map to libvirt's
volume formats (storage_backend_disk.c)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ..errors import InvalidArgument, NoSpace, StorageError
from ..xml.pooltypes import DISK_VOLUME_FORMATS

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


def plan_partition(layout: Layout, fmt: str) -> tuple[str, int]:
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

def place_partition(layout: Layout, kind: str, capacity: int) -> tuple[int, int]:
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
