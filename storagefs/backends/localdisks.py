"""Local block devices nothing uses, and LVM's physical volumes: what ``disk``, ``fs``
and ``logical`` pools could be made of (their ``find_sources``, shown in sources/).

Facts come from host tools with JSON output and from sysfs:

- ``lsblk -J -b``: the devices, their partitions and what stacks on them, sizes,
  read-only flags, mount points (swap shows as ``[SWAP]``);
- ``/sys/class/block/K/holders``: device-mapper, md and bcache holders;
- ``blkid -p``: what is on a device (a filesystem, a disk label, a PV signature). lsblk
  takes FSTYPE from udev's database, which is empty on hosts without udevd (and stale
  after mkfs there): blkid reads the device itself;
- ``pvs --reportformat json``: physical volumes and their volume groups.

A device is offered only when nothing uses it: not mounted, not swap, no holder and
nothing stacked on it, not a PV, none of its partitions in use, and blkid finds nothing
on it. A device blkid cannot read counts as in use: it is never offered. Which pools
use a device is the core's part (core/sources.py): a backend's classmethod does not
know the pools.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field

import trio

from .. import hostcmd
from ..errors import Busy, NotFound, StorageError, ToolError
from ..xml.common import escape
from ..xml.pooltypes import POOL_TYPE_INFO
from .parted import BLKID_LABELS

LSBLK = "lsblk"
LSBLK_COLUMNS = "NAME,KNAME,PATH,TYPE,SIZE,RO,MOUNTPOINTS,PKNAME"
#: lsblk types that can hold a pool (whole disks, loop devices, partitions)
POOL_DEVICE_TYPES = ("disk", "loop", "part")
#: kernel names of block devices that are memory, not storage
NOT_STORAGE = ("zram", "ram")
PROBE_TIMEOUT = 10.0


@dataclass
class BlockDevice:
    """One node of lsblk's tree."""

    kname: str
    path: str
    type: str
    size: int = 0
    ro: bool = False
    mountpoints: list[str] = field(default_factory=list)
    #: the kernel name of the disk a partition is on
    parent: str | None = None
    #: partitions, and devices stacked on it (lvm, crypt, raid, dm)
    children: list[BlockDevice] = field(default_factory=list)

    @property
    def partitions(self) -> list[BlockDevice]:
        return [c for c in self.children if c.type == "part"]

    @property
    def stacked(self) -> list[BlockDevice]:
        return [c for c in self.children if c.type != "part"]


# ---- lsblk ------------------------------------------------------------------------
def _flag(value: object) -> bool:
    """lsblk 2.37+ prints JSON booleans; older ones "0"/"1" strings."""
    if isinstance(value, str):
        return value.strip() not in ("", "0", "false")
    return bool(value)


def _size(value: object) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _device(row: dict, parent: str | None) -> BlockDevice:
    kname = str(row.get("kname") or row.get("name") or "")
    if not kname:
        raise ValueError("lsblk printed a device without a name")
    points = row.get("mountpoints")
    if points is None:  # lsblk before 2.37: one MOUNTPOINT
        points = [row.get("mountpoint")]
    if not isinstance(points, list):
        raise ValueError(f"lsblk: mountpoints of {kname} is not a list")
    dev = BlockDevice(kname=kname, path=str(row.get("path") or f"/dev/{kname}"),
                      type=str(row.get("type") or ""), size=_size(row.get("size")),
                      ro=_flag(row.get("ro")), mountpoints=[str(p) for p in points if p],
                      parent=row.get("pkname") or parent)
    children = row.get("children") or []
    if not isinstance(children, list):
        raise ValueError(f"lsblk: children of {kname} is not a list")
    dev.children = [_device(c, kname) for c in children if isinstance(c, dict)]
    return dev


def parse_lsblk(text: str) -> list[BlockDevice]:
    """The top-level devices of ``lsblk -J -b -o LSBLK_COLUMNS`` (ValueError when it is
    not such a report)."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("blockdevices"), list):
        raise ValueError("lsblk printed no 'blockdevices' list")
    return [_device(row, None) for row in data["blockdevices"] if isinstance(row, dict)]


def flatten(devices: list[BlockDevice]) -> list[BlockDevice]:
    """Every device once (a device stacked on two others appears under both)."""
    seen: dict[str, BlockDevice] = {}
    stack = list(reversed(devices))
    while stack:
        dev = stack.pop()
        if dev.kname not in seen:
            seen[dev.kname] = dev
        stack.extend(reversed(dev.children))
    return list(seen.values())


async def list_devices() -> list[BlockDevice]:
    res = await hostcmd.run([LSBLK, "-J", "-b", "-o", LSBLK_COLUMNS], timeout=30)
    try:
        return parse_lsblk(res.stdout)
    except ValueError as exc:
        raise ToolError(f"lsblk: unexpected report: {exc}") from None


# ---- LVM physical volumes ------------------------------------------------------------
def parse_pvs(text: str) -> dict[str, str]:
    """PV path -> VG name ("" for a PV in no group) from ``pvs --reportformat json``."""
    data = json.loads(text)
    rows: list = []
    for part in data.get("report", []) if isinstance(data, dict) else []:
        if isinstance(part, dict) and isinstance(part.get("pv"), list):
            rows.extend(part["pv"])
    found = {}
    for row in rows:
        if isinstance(row, dict) and row.get("pv_name"):
            found[str(row["pv_name"])] = str(row.get("vg_name") or "")
    return found


async def physical_volumes() -> dict[str, str]:
    """PV path -> VG name of every PV LVM sees ({} where LVM is not installed)."""
    try:
        res = await hostcmd.run(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"],
                                timeout=60, check=False)
    except StorageError as exc:
        if exc.errno == errno.ENOTSUP:  # no lvm2: there are no PVs to know of
            return {}
        raise
    if res.returncode != 0 and not res.stdout.strip():
        reason = hostcmd.tool_reason("pvs", res.stderr) or f"exit {res.returncode}"
        raise ToolError(f"pvs: {reason}")
    try:
        return parse_pvs(res.stdout) if res.stdout.strip() else {}
    except ValueError as exc:
        raise ToolError(f"pvs: unexpected report: {exc}") from None


# ---- what is on a device, and who uses it ---------------------------------------------
def _rdev(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def holders(kname: str) -> list[str]:
    try:
        return sorted(os.listdir(f"/sys/class/block/{kname}/holders"))
    except OSError:
        return []


def in_use(dev: BlockDevice, pvs: dict[str, str]) -> str | None:
    """Why ``dev`` is in use (None when nothing uses it); its partitions count."""
    if dev.mountpoints:
        point = dev.mountpoints[0]
        return "in use as swap" if point == "[SWAP]" else f"mounted on {point}"
    held = holders(dev.kname) or [c.kname for c in dev.stacked]
    if held:
        return f"held by {', '.join(held)}"
    rdev = _rdev(dev.path)
    for pv, vg in pvs.items():
        if pv == dev.path or (rdev is not None and _rdev(pv) == rdev):
            return f"a physical volume of volume group '{vg}'" if vg else \
                "an LVM physical volume"
    for part in dev.partitions:
        why = in_use(part, pvs)
        if why:
            return f"its partition {part.path} is {why}"
    return None


async def content(path: str) -> dict[str, str] | None:
    """What blkid finds on the device ({}: nothing), None when it cannot be read."""
    try:
        res = await hostcmd.run(["blkid", "-p", "-o", "export", path],
                                timeout=PROBE_TIMEOUT, check=False)
    except StorageError:
        return None
    if res.returncode == 2:  # nothing found, unless it could not even open the device
        return None if res.stderr.strip() else {}
    if res.returncode == 8:
        return {"AMBIVALENT": "1"}
    if res.returncode != 0:
        return None
    found = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


#: blkid tags that say something is on a device (DEVNAME and the PART_ENTRY_* of a
#: partition's table entry do not)
SIGNATURE_TAGS = ("TYPE", "PTTYPE", "AMBIVALENT")


def is_empty(found: dict[str, str] | None) -> bool:
    """blkid could read the device and found no filesystem, label or signature on it."""
    return found is not None and not any(found.get(tag) for tag in SIGNATURE_TAGS)


def offerable(dev: BlockDevice) -> bool:
    """A device that could hold a pool at all (before asking who uses it)."""
    return (dev.type in POOL_DEVICE_TYPES and dev.size > 0 and not dev.ro
            and not dev.kname.startswith(NOT_STORAGE))


async def unused_devices() -> list[BlockDevice]:
    """Devices nothing uses and blkid finds nothing on (no partitions either), in lsblk's
    order."""
    devices = flatten(await list_devices())
    pvs = await physical_volumes()
    maybe = [d for d in devices if offerable(d) and not d.children and in_use(d, pvs) is None]
    found: dict[str, dict[str, str] | None] = {}

    async def probe(dev: BlockDevice) -> None:
        found[dev.kname] = await content(dev.path)

    async with trio.open_nursery() as nursery:
        for dev in maybe:
            nursery.start_soon(probe, dev)
    return [d for d in maybe if is_empty(found.get(d.kname))]


async def examine(query: str) -> tuple[BlockDevice, dict[str, str]]:
    """A device named by a query (its path): what it is and what is on it; ENOENT when
    it is no block device, EBUSY naming who uses it, EIO when blkid cannot read it."""
    path = query.strip()
    if not path.startswith("/"):
        raise NotFound(f"'{path}' is not a device path (write one such as /dev/sdb)")
    # in a worker thread: the path may lead onto storage that does not answer
    rdev = await trio.to_thread.run_sync(_rdev, path, abandon_on_cancel=True)
    if rdev is None:
        raise NotFound(f"'{path}' is not a block device")
    dev = next((d for d in flatten(await list_devices()) if _rdev(d.path) == rdev), None)
    if dev is None or not offerable(dev):
        raise NotFound(f"'{path}' cannot hold a pool (not a disk, partition or loop device "
                       "with media and write access)")
    why = in_use(dev, await physical_volumes())
    if why:
        raise Busy(f"'{path}' is {why}")
    found = await content(dev.path)
    if found is None:
        raise ToolError(f"blkid cannot read '{path}'")
    return dev, found


# ---- documents ----------------------------------------------------------------------------
def pool_document(pool_type: str, name: str, devices: list[str], fmt: str | None,
                  target: str, source_name: str | None = None) -> str:
    """A ready pool document as libvirt prints one (no uuid: one is given at define)."""
    lines = [f"<pool type='{pool_type}'>", f"  <name>{escape(name)}</name>", "  <source>"]
    lines += [f"    <device path='{escape(d)}'/>" for d in devices]
    if source_name is not None:
        lines.append(f"    <name>{escape(source_name)}</name>")
    if fmt is not None:
        lines.append(f"    <format type='{escape(fmt)}'/>")
    lines += ["  </source>", "  <target>", f"    <path>{escape(target)}</path>", "  </target>",
              "</pool>", ""]
    return "\n".join(lines)


# ---- what each local pool type could be made of ---------------------------------------
#: the format an ``fs`` proposal on an empty device names (build makes it)
NEW_FS_FORMAT = "ext4"
#: the label a ``disk`` proposal on an empty device names (build writes it)
NEW_DISK_LABEL = "gpt"
#: blkid's TYPE -> libvirt's fs pool format, where they differ
_FS_FORMAT_OF = {"hfsplus": "hfs+"}


def fs_target(name: str) -> str:
    """Where an ``fs`` proposal mounts its filesystem (build makes the directory)."""
    return f"/mnt/{name}"


async def fs_sources(query: str | None) -> list[str]:
    """``fs`` pools: every unused empty device (built with ext4), or the device a query
    names: as it is when it holds a filesystem, ext4 when it is empty."""
    if query is None:
        return [pool_document("fs", d.kname, [d.path], NEW_FS_FORMAT, fs_target(d.kname))
                for d in await unused_devices()]
    dev, found = await examine(query)
    if found.get("AMBIVALENT"):
        raise Busy(f"'{dev.path}' holds several signatures; 'build overwrite' would clear them")
    if found.get("PTTYPE") or dev.partitions:
        raise Busy(f"'{dev.path}' holds a {found.get('PTTYPE', '')} partition table: a disk "
                   "pool could use it, or an fs pool one of its partitions")
    have = found.get("TYPE")
    fmt = _FS_FORMAT_OF.get(have, have) if have else NEW_FS_FORMAT
    if fmt not in POOL_TYPE_INFO["fs"].source_formats:
        raise StorageError(f"'{dev.path}' holds {have}, which an fs pool cannot mount",
                           errno.ENOTSUP)
    return [pool_document("fs", dev.kname, [dev.path], fmt, fs_target(dev.kname))]


async def disk_sources(query: str | None) -> list[str]:
    """``disk`` pools: every unused empty whole device (built with a gpt label), or the
    device a query names, with the label it has (none of its partitions in use)."""
    if query is None:
        return [pool_document("disk", d.kname, [d.path], NEW_DISK_LABEL, "/dev")
                for d in await unused_devices() if d.type != "part"]
    dev, found = await examine(query)
    if dev.type == "part":
        raise StorageError(f"'{dev.path}' is a partition: a disk pool needs a whole disk",
                           errno.EINVAL)
    label = found.get("PTTYPE")
    if found.get("TYPE") or found.get("AMBIVALENT"):
        what = found.get("TYPE") or "several signatures"
        raise Busy(f"'{dev.path}' holds {what}; 'build overwrite' would destroy it")
    fmt = NEW_DISK_LABEL
    if label:
        fmt = next((f for f, b in BLKID_LABELS.items() if b == label and f != "unknown"),
                   None)
        if fmt is None:
            raise StorageError(f"'{dev.path}' has a {label} label, which a disk pool does "
                               "not know", errno.ENOTSUP)
    return [pool_document("disk", dev.kname, [dev.path], fmt, "/dev")]


def volume_groups(pvs: dict[str, str]) -> dict[str, list[str]]:
    """VG name -> its PV paths (sorted), for the PVs that are in a group."""
    groups: dict[str, list[str]] = {}
    for pv, vg in sorted(pvs.items()):
        if vg and not pv.startswith("[unknown"):
            groups.setdefault(vg, []).append(pv)
    return groups


def logical_document(vg: str, pvs: list[str]) -> str:
    return pool_document("logical", vg, pvs, "lvm2", f"/dev/{vg}", source_name=vg)


async def logical_sources(query: str | None) -> list[str]:
    """``logical`` pools: every volume group (libvirt's find-storage-pool-sources), or the
    one a query names by its name or by the path of one of its PVs."""
    groups = volume_groups(await physical_volumes())
    if query is None:
        return [logical_document(vg, pvs) for vg, pvs in sorted(groups.items())]
    want = query.strip()
    if want.startswith("/"):
        rdev = _rdev(want)
        for vg, pvs in sorted(groups.items()):
            if any(pv == want or (rdev is not None and _rdev(pv) == rdev) for pv in pvs):
                return [logical_document(vg, pvs)]
        raise NotFound(f"no volume group has a physical volume on '{want}'")
    if want not in groups:
        raise NotFound(f"no volume group named '{want}'")
    return [logical_document(want, groups[want])]
