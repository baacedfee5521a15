"""Block-device helpers shared by the fs, disk and logical backends.

Probing (``blkid -p``), "is this device empty" checks with libvirt's wording,
the mount table, exclusive-use checks and device-mapper detection. Host tools
run through :mod:`storagefs.hostcmd` only.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .. import hostcmd
from ..errors import Busy, InvalidArgument, NotFound, StorageError, ToolError
from .base import FileStat, VolumeInfo

BLKID = "blkid"
WIPEFS = "wipefs"
#: blkid -p exit codes: 2 nothing found, 8 ambivalent result (several signatures)
BLKID_NOTHING, BLKID_AMBIVALENT = 2, 8


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def device_size(path: str) -> int:
    """Size in bytes of a block device (0 for a detached loop device, or when unknown)."""
    try:
        st = os.stat(path)
    except OSError:
        return 0
    if not stat.S_ISBLK(st.st_mode):
        return 0
    sysfs = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/size"
    try:
        with open(sysfs) as f:
            return int(f.read().strip() or 0) * 512
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return 0
    finally:
        os.close(fd)


def device_present(path: str) -> bool:
    """A block device node with media behind it (a detached loop device has size 0)."""
    return device_size(path) > 0


def require_device(path: str) -> None:
    if not device_present(path):
        if is_block_device(path):
            raise NotFound(f"device path '{path}' has no media (size 0: a detached loop device?)")
        raise NotFound(f"device path '{path}' doesn't exist")


def same_device(a: str, b: str) -> bool:
    """True when two paths name the same block device (by device number)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return os.path.realpath(a) == os.path.realpath(b)


def in_use(path: str) -> bool:
    """True when someone holds the device exclusively (mounted, swap, LVM/md/dm holder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    os.close(fd)
    return False


def dm_available() -> bool:
    """Is device-mapper in this kernel (needed to activate logical volumes)?

    The kernel's own word counts (sysfs, /proc/misc), not /dev/mapper/control:
    libdevmapper creates that node itself whenever an LVM command runs, even on
    a kernel without device-mapper, where opening it then fails with ENODEV."""
    if os.path.exists("/sys/class/misc/device-mapper"):
        return True
    try:
        with open("/proc/misc") as f:
            if any(line.split()[1:2] == ["device-mapper"] for line in f):
                return True
    except OSError:
        pass
    if os.path.isdir("/sys/class/misc"):
        return False  # sysfs is there and has no device-mapper
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


# ---- blkid -------------------------------------------------------------------


def _unescape_export(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


async def probe(path: str) -> dict[str, str]:
    """``blkid -p -o export``: TYPE, PTTYPE, UUID ... of what is on the device ({} if nothing).

    Several conflicting signatures come back as ``{"AMBIVALENT": "1"}``.
    """
    res = await hostcmd.run([BLKID, "-p", "-o", "export", path], timeout=30, check=False)
    if res.returncode == BLKID_NOTHING:
        return {}
    if res.returncode == BLKID_AMBIVALENT:
        return {"AMBIVALENT": "1"}
    if res.returncode != 0:
        reason = hostcmd.first_line(res.stderr) or f"exit {res.returncode}"
        raise ToolError(f"blkid: cannot probe '{path}': {reason}")
    found = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = _unescape_export(value.strip())
    return found


def found_format(found: dict[str, str]) -> str | None:
    """What blkid found: a filesystem/PV type, else a partition-table type."""
    if found.get("AMBIVALENT"):
        return "several signatures"
    return found.get("TYPE") or found.get("PTTYPE")


async def refuse_unless_empty(path: str, wanted: str) -> None:
    """Build without overwrite: refuse (EBUSY) a device that carries a filesystem,
    a disk label or an LVM PV (libvirt's virStorageBackendDeviceIsEmpty, writelabel)."""
    have = found_format(await probe(path))
    if have is None:
        return
    hint = "'build overwrite' destroys it"
    if have == wanted:
        raise Busy(f"Device '{path}' already formatted using '{wanted}'; {hint}")
    raise Busy(f"Format of device '{path}' does not match the expected format '{wanted}' "
               f"(it holds {have}), forced overwrite is necessary; {hint}")


async def wipe_signatures(path: str) -> None:
    """``wipefs -a``: remove every filesystem, label and PV signature (overwrite only).

    wipefs opens the device exclusively, so a mounted or otherwise held device
    is refused with EBUSY and nothing is wiped."""
    if in_use(path):
        raise Busy(f"device '{path}' is in use (mounted or held by another device)")
    await hostcmd.run([WIPEFS, "-a", "-q", path], timeout=60,
                      errno_map={"Device or resource busy": errno.EBUSY,
                                 "No such file": errno.ENOENT})


# ---- the mount table -----------------------------------------------------------


@dataclass
class MountEntry:
    target: str
    source: str
    fstype: str
    options: str


def _unescape_mount(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\NNN (octal)."""
    if "\\" not in field:
        return field
    out, i = bytearray(), 0
    raw = field.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x5C and len(raw) >= i + 4 and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def mounts() -> list[MountEntry]:
    entries = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                try:
                    sep = fields.index("-", 6)
                except ValueError:
                    continue
                if len(fields) < sep + 3:
                    continue
                entries.append(MountEntry(_unescape_mount(fields[4]),
                                          _unescape_mount(fields[sep + 2]),
                                          fields[sep + 1], fields[5]))
    except OSError as exc:
        raise StorageError(f"cannot read mount list '/proc/self/mountinfo': {exc.strerror}",
                           exc.errno) from None
    return entries


def mounted_on(target: str) -> MountEntry | None:
    """The filesystem mounted on ``target`` now (the last one stacked there), or None."""
    real = os.path.realpath(target)
    found = None
    for entry in mounts():
        if entry.target == real:
            found = entry
    return found


def mounts_of(device: str) -> list[MountEntry]:
    """Where ``device`` is mounted."""
    return [e for e in mounts() if e.source.startswith("/") and same_device(e.source, device)]


def single_device(definition) -> str:
    """The one <source><device path=/> of a pool that sits on a single device."""
    devices = definition.source.devices
    if not devices:
        raise InvalidArgument("missing source device")
    if len(devices) != 1:
        raise InvalidArgument("expected exactly 1 device for the storage pool")
    return devices[0].path


def stat_node(info: VolumeInfo, node: str) -> VolumeInfo:
    """Owner, mode and times of a volume's device node, when it exists."""
    try:
        st = os.stat(node)
    except OSError:
        return info
    if stat.S_ISBLK(st.st_mode):
        info.file = FileStat.of(st)
    return info


def kernel_partitions(kname: str) -> dict[int, tuple[int, int] | None]:
    """Partitions the kernel knows of disk ``kname`` (sysfs): number -> (first byte,
    size in bytes), or None where sysfs does not say."""
    base = f"/sys/class/block/{kname}"
    found: dict[int, tuple[int, int] | None] = {}
    try:
        with os.scandir(base) as it:
            entries = [e.path for e in it if e.name.startswith(kname)]
    except OSError:
        return found
    for where in entries:
        try:
            number = int(_sysfs(where, "partition"))
        except (OSError, ValueError):
            continue
        try:
            found[number] = (int(_sysfs(where, "start")) * 512,
                             int(_sysfs(where, "size")) * 512)
        except (OSError, ValueError):
            found[number] = None
    return found


def _sysfs(where: str, name: str) -> str:
    with open(os.path.join(where, name)) as f:
        return f.read().strip()
