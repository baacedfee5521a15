"""Image files: what their headers say (read without a host tool), which formats can be
made, and the plain syscalls on one file or one directory of them. Everything here is
synchronous: the file backends run it in the pool's worker threads (PoolBackend.io), so
storage that hangs never holds up the event loop."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import struct
from collections.abc import Mapping

from ..errors import (
    InvalidArgument,
    NotFound,
    NotPermitted,
    NotSupported,
    StorageError,
    from_oserror,
)
from ..names import check_name
from .base import FileStat, VolumeInfo, VolumeSpec

log = logging.getLogger(__name__)

#: names of our temp files in a pool directory (never volumes: names start with a dot;
#: fileops.temp_name makes them)
TEMP_PREFIX = ".storagefs-"
QEMU_IMG = "qemu-img"
#: formats storagefs creates as files: those of libvirt's file formats (pooltypes
#: FILE_VOLUME_FORMATS) that qemu-img 7.2 creates (vhdx and parallels it creates too,
#: but libvirt has no name for them); and those qemu-img can resize
CREATABLE = ("raw", "qcow", "qcow2", "qed", "vmdk", "vdi", "vpc")
#: why libvirt's other file formats cannot be made here
NOT_CREATABLE = {
    "vhd": "qemu-img makes VHD images as 'vpc': write <format type='vpc'/>",
    "ploop": "ploop images are made by the ploop tool, which storagefs does not drive",
    "dir": "a directory is not a volume storagefs makes",
    "iso": "ISO images are made by mastering tools (xorriso, genisoimage), not qemu-img",
    "fat": "a FAT image is made by mkfs.vfat on a raw volume, not by qemu-img",
    "cow": "qemu-img dropped the cow format",
}
RESIZABLE = ("raw", "qcow2", "luks")
QEMU_ERRNOS = {"No space left": errno.ENOSPC, "File too large": errno.EFBIG,
               # sizes beyond what the image format holds (qemu-img 7.2's words)
               "exceeds maximum": errno.EFBIG, "too large": errno.EFBIG,
               "size cannot be negative": errno.EFBIG, "image size must be": errno.EFBIG,
               "Unsupported VDI image size": errno.EFBIG,
               "Invalid parameter": errno.EINVAL, "Invalid argument": errno.EINVAL,
               "does not accept value": errno.EINVAL,
               "not supported": errno.ENOTSUP, "does not support": errno.ENOTSUP}

def check_creatable(fmt: str) -> None:
    """ENOTSUP, with the reason, for a format storagefs cannot make (before anything runs)."""
    if fmt in CREATABLE:
        return
    why = NOT_CREATABLE.get(fmt) or f"qemu-img reads {fmt} images but cannot create them"
    raise NotSupported(f"cannot create volumes of format '{fmt}': {why} (formats made "
                       f"here: {', '.join(CREATABLE)})")


def qemu_preallocates(spec: VolumeSpec) -> bool:
    """qcow2 asked for in full is preallocated by qemu-img itself (preallocation=falloc)."""
    return bool(spec.format == "qcow2" and spec.allocation
                and spec.allocation >= spec.capacity)


#: how a file is opened to read its header: never through a symlink, never waiting
#: (a FIFO), never becoming a controlling terminal, and without touching its atime
#: (a probe is no access: the volume's status.xml keeps its times)
_PROBE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOATIME


def _open_for_probe(path: str) -> int:
    """O_NOATIME is refused (EPERM) for a file not owned by us without CAP_FOWNER: open
    it as any reader would then."""
    try:
        return os.open(path, _PROBE_FLAGS)
    except PermissionError:
        return os.open(path, _PROBE_FLAGS & ~os.O_NOATIME)
#: headers that say what the file is in their first bytes (others: the tail is read too)
_MAGICS = (b"QFI\xfb", b"QED\0", b"KDMV", b"# Disk", b"LUKS")


def probe_header(path: str) -> tuple[str, int | None, str | None]:
    """The image format, virtual size and encryption (libvirt's name: luks or qcow)
    from the file's header, as libvirt probes them (no host tool: a refresh of
    thousands of images stays fast, and works when qemu-img hangs or is missing).
    Size None: unknown (raw: the file size)."""
    try:
        fd = _open_for_probe(path)
    except OSError:
        return "raw", None, None
    try:
        return _header(fd, None)
    finally:
        os.close(fd)


def _header(fd: int, size: int | None) -> tuple[str, int | None, str | None]:
    """probe_header of an open file (``size``: its size when known)."""
    try:
        head = os.pread(fd, 512, 0)
        tail = b""
        if not head.startswith(_MAGICS):
            if size is None:
                size = os.fstat(fd).st_size  # a vpc footer (or raw: most files found)
            tail = os.pread(fd, 512, size - 512) if size >= 512 else b""
    except OSError:
        return "raw", None, None
    return parse_header(head, tail)


def parse_header(head: bytes, tail: bytes) -> tuple[str, int | None, str | None]:
    """Format, virtual size and encryption from a file's first and last 512 bytes."""

    def num(fmt: str, off: int, data: bytes = head) -> int | None:
        n = struct.calcsize(fmt)
        return struct.unpack_from(fmt, data, off)[0] if len(data) >= off + n else None

    if head[:4] == b"QFI\xfb":
        version = num(">I", 4)
        if version in (2, 3):  # crypt_method: 0 none, 1 AES, 2 LUKS
            crypt = {1: "qcow", 2: "luks"}.get(num(">I", 32) or 0)
            return "qcow2", num(">Q", 24), crypt
        return "qcow", num(">Q", 24), "qcow" if num(">I", 36) == 1 else None
    if head[:4] == b"QED\0":
        return "qed", num("<Q", 40), None
    if head[:4] == b"KDMV":
        sectors = num("<Q", 12)
        return "vmdk", None if sectors is None else sectors * 512, None
    if head.startswith(b"# Disk DescriptorFile"):
        return "vmdk", None, None
    if head[64:68] == b"\x7f\x10\xda\xbe":
        return "vdi", num("<Q", 368), None
    for footer in (tail, head):
        if footer[:8] == b"conectix":
            return "vpc", num(">Q", 48, footer), None
    if head[:6] == b"LUKS\xba\xbe":
        return "luks", None, "luks"
    return "raw", None, None


#: an extent line of a vmdk descriptor: access, size, type, "file name" [offset]
_VMDK_EXTENT = re.compile(rb'^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"', re.M)
#: a descriptor bigger than this is not parsed (qemu refuses them too); the whole file
#: is then treated as one that names files outside the pool
VMDK_DESC_MAX = 1 << 20


def vmdk_extents(path: str) -> list[str] | None:
    """The files a vmdk's descriptor names as extents, read without qemu-img (qemu-img
    info opens every extent, and a crafted descriptor can name any host file).

    A text descriptor file, or a sparse file whose header says capacity 0 and points to
    an embedded descriptor (qemu reads that like a descriptor file). [] for a plain
    sparse vmdk (its data is in the file itself); None when the descriptor cannot be
    read or is too big to check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        head = os.pread(fd, 512, 0)
        offset, size = 0, 0
        if head.startswith(b"# Disk DescriptorFile"):
            size = os.fstat(fd).st_size
        elif head[:4] == b"KDMV" and len(head) >= 44:
            capacity, desc_sector, desc_sectors = struct.unpack_from("<Q8xQQ", head, 12)
            if capacity or not desc_sector:
                return []
            offset, size = desc_sector * 512, desc_sectors * 512
        else:
            return []
        if size > VMDK_DESC_MAX:
            return None
        desc = os.pread(fd, size, offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    base = os.path.dirname(path)
    return [os.path.join(base, os.fsdecode(m.group(1))) for m in _VMDK_EXTENT.finditer(desc)]


def stat_info(info: VolumeInfo, st: os.stat_result) -> VolumeInfo:
    """Update the figures that a stat gives (allocation, times, owner; raw capacity)."""
    info.allocation = st.st_blocks * 512
    info.physical = st.st_size
    if info.format == "raw":
        info.capacity = st.st_size
    info.file = FileStat.of(st)
    return info


def made_format(spec: VolumeSpec) -> str:
    """The format of the file that :meth:`FileVolumes.create` makes for ``spec``."""
    return "luks" if spec.encryption and spec.format == "raw" else spec.format


def external_files(path: str, specific: dict) -> list[str]:
    """Files other than ``path`` that qemu opens with it, from ``qemu-img info``'s
    format-specific data (a qcow2 data-file, vmdk extents); relative names are taken
    relative to the image's directory, as qemu takes them."""
    names = []
    if isinstance(specific.get("data-file"), str):
        names.append(specific["data-file"])
    for extent in specific.get("extents") or []:
        if isinstance(extent, dict) and isinstance(extent.get("filename"), str):
            names.append(extent["filename"])
    base = os.path.dirname(path)
    full = [n if ":" in n.split("/", 1)[0] else os.path.join(base, n) for n in names]
    return [f for f in full if f != path]




#: qcow2's defaults for what qemu-img info reports and qemu-img create takes (a value
#: equal to the default is not passed: older qemu-img take fewer options)
_QCOW2_DEFAULTS = {"refcount_bits": "16", "compression_type": "zlib", "cluster_size": "65536"}
#: LUKS header fields qemu-img info reports -> qemu-img create option names
_LUKS_OPTIONS = {"cipher-alg": "cipher-alg", "cipher-mode": "cipher-mode",
                 "ivgen-alg": "ivgen-alg", "ivgen-hash-alg": "ivgen-hash-alg",
                 "hash-alg": "hash-alg"}
#: vmdk subformats that are one file (the others make extent files beside it)
_ONE_FILE_VMDK = ("monolithicSparse", "streamOptimized")
_OPTION_VALUE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def remake_options(fmt: str, data: dict, key_secret: str = "sec0") -> dict[str, str]:
    """The ``qemu-img create -o`` options that make an empty image like the one that
    ``qemu-img info --output=json`` describes in ``data``: qcow2's compat, cluster size,
    lazy refcounts, refcount bits, extended L2, compression type; a LUKS header's
    cipher (``encrypt.*`` in a qcow2, bare for a luks file), keyed by the secret object
    ``key_secret``; preallocation when the image took its whole capacity; a vmdk's
    subformat. NotSupported for what a single new file cannot be (an external data
    file, a multi-file vmdk, qcow's old AES encryption)."""
    specific = (data.get("format-specific") or {}).get("data") or {}
    if not isinstance(specific, dict):
        specific = {}
    opts: dict[str, str] = {}
    if fmt == "qcow2":
        if specific.get("data-file"):
            raise NotSupported("the image keeps its data in an external data file: wipe "
                               "that file's volume instead")
        if specific.get("compat"):
            opts["compat"] = str(specific["compat"])
        if specific.get("lazy-refcounts"):
            opts["lazy_refcounts"] = "on"
        if specific.get("extended-l2"):
            opts["extended_l2"] = "on"
        for key, value in (("refcount_bits", specific.get("refcount-bits")),
                           ("compression_type", specific.get("compression-type")),
                           ("cluster_size", data.get("cluster-size"))):
            if value is not None and str(value) != _QCOW2_DEFAULTS[key]:
                opts[key] = str(value)
    crypt = specific.get("encrypt") if fmt == "qcow2" else specific if fmt == "luks" else None
    if fmt == "luks" or (isinstance(crypt, dict) and crypt.get("format")):
        if fmt == "qcow2" and crypt.get("format") != "luks":
            raise NotSupported(f"qemu-img no longer makes qcow2 images with "
                               f"'{crypt.get('format')}' encryption")
        prefix = "encrypt." if fmt == "qcow2" else ""
        if fmt == "qcow2":
            opts["encrypt.format"] = "luks"
        opts[prefix + "key-secret"] = key_secret
        for field, option in _LUKS_OPTIONS.items():
            if isinstance(crypt, dict) and crypt.get(field) is not None:
                opts[prefix + option] = str(crypt[field])
    if fmt == "vmdk":
        sub = specific.get("create-type")
        if sub and sub not in _ONE_FILE_VMDK:
            raise NotSupported(f"a '{sub}' vmdk is several files; only one-file vmdk images "
                               "(monolithicSparse, streamOptimized) are re-made")
        if sub:
            opts["subformat"] = str(sub)
    if fmt == "vpc":
        opts["force_size"] = "on"
    if fmt in ("qcow2", "luks", "raw"):
        size, used = data.get("virtual-size"), data.get("actual-size")
        if isinstance(size, int) and isinstance(used, int) and size and used >= size:
            opts["preallocation"] = "falloc"
    for key, value in opts.items():
        if not _OPTION_VALUE.fullmatch(value):
            raise InvalidArgument(f"qemu-img reports {key} {value!r}, which is not an "
                                  "option value storagefs passes on")
    return opts


# ---- one directory of image files (run in the pool's worker threads) ---------------------
def probe_file(path: str, name: str, fmt: str | None = None) -> VolumeInfo | None:
    """The volume as the storage has it, from its header and one stat.

    ``fmt`` is the volume's recorded format (storagefs made it or was told): it wins
    over the header, which whoever writes to the volume controls. Without it (a file
    found in the pool) the header decides. A file whose header is read is opened once
    and stat'ed through that descriptor (a scan of 100,000 files); one that cannot be
    opened (a root-squashed export) is what lstat says, raw."""
    found, capacity, crypt = "raw", None, None
    st = None
    if fmt != "raw":
        try:
            fd = _open_for_probe(path)
        except FileNotFoundError:
            return None
        except OSError:
            fd = -1  # a symlink (ELOOP), unreadable: lstat below says what it is
        if fd >= 0:
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    found, capacity, crypt = _header(fd, st.st_size)
            except OSError as exc:
                raise from_oserror(exc, f"cannot stat '{path}'") from None
            finally:
                os.close(fd)
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_oserror(exc, f"cannot stat '{path}'") from None
    if not stat.S_ISREG(st.st_mode):
        return None
    if fmt is None:
        fmt = found
    elif found != fmt:
        capacity, crypt = None, None  # not the recorded format's: qemu-img says
    info = VolumeInfo(name=name, path=path, key=path, format=fmt, encrypted=bool(crypt))
    if crypt:
        info.options = {"encryption": crypt}
    stat_info(info, st)
    if capacity is not None:
        info.capacity = capacity
    elif fmt != "raw":
        info.capacity = 0  # not known until qemu-img says
    return info


def scan(directory: str, formats: Mapping[str, str]) -> list[VolumeInfo]:
    """Every regular file of the directory with a valid volume name, probed."""
    try:
        with os.scandir(directory) as it:
            entries = [e.name for e in it
                       if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
    except OSError as exc:
        raise from_oserror(exc, f"cannot open directory '{directory}'") from None
    return _probe_all(directory if directory.endswith("/") else directory + "/", entries,
                      formats)


def _probe_all(prefix: str, names: list[str], formats: Mapping[str, str]) -> list[VolumeInfo]:
    found = []
    for name in names:
        try:
            check_name(name)
        except StorageError:
            continue
        info = probe_file(prefix + name, name, formats.get(name))
        if info is not None:
            found.append(info)
    return found


def remove_leftovers(directory: str) -> list[str]:
    """Temp files of ours that an interrupted storagefs left (clone, recreate, wipe)."""
    gone = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        gone.append(entry.name)
    except OSError:
        pass
    if gone:
        log.warning("removed unfinished temp files in %s: %s", directory, ", ".join(gone))
    return gone


def holds(directory: str, path: str) -> bool:
    """True when ``path`` is a regular file directly in ``directory``, named so that
    opening it cannot lead elsewhere (no symlink, no '..')."""
    if path != os.path.normpath(path) or os.path.dirname(path) != os.path.normpath(directory):
        return False
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def ensure_regular(info: VolumeInfo) -> None:
    """Refuse to touch a volume whose file was swapped for a symlink (or anything but a
    regular file) behind our back: no operation follows links out of the pool."""
    try:
        st = os.lstat(info.path)
    except FileNotFoundError:
        raise NotFound(f"volume '{info.name}' is no longer in the pool") from None
    except OSError as exc:
        raise from_oserror(exc, f"cannot stat '{info.path}'") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotPermitted(f"'{info.path}' is not a regular file (a symlink?): storagefs "
                           "does not follow it")


def unchanged(info: VolumeInfo) -> bool:
    """Same size, change time and type as when last probed (one lstat)."""
    try:
        st = os.lstat(info.path)
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and info.file is not None
            and st.st_ctime_ns == info.file.ctime_ns and st.st_size == info.physical)


def signature(path: str) -> list[int] | None:
    """Inode, size, mtime and ctime: a write by anyone moves mtime (and ctime, which no
    one can set back); a file put in its place has another inode."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def holds_data(path: str) -> bool:
    """True when the raw file has any allocated data (SEEK_DATA finds some)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def discard(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
