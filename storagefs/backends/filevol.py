"""Volumes that are files in a directory: shared by the dir, fs and netfs backends.

Everything here stays inside the pool's directory: names are checked before
they get here, files are opened with O_NOFOLLOW / O_EXCL, and symlinks or
other non-regular entries in the directory are never listed nor touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import stat
import struct

import trio

from .. import hostcmd
from ..errors import (
    Busy,
    Exists,
    InvalidArgument,
    NotFound,
    NotPermitted,
    NotSupported,
    StorageError,
    from_oserror,
)
from ..names import check_name
from . import allocation, fileops
from .base import VolumeInfo, VolumeSpec

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
SUFFIX_FORMATS = {".qcow2": "qcow2", ".vmdk": "vmdk", ".vdi": "vdi", ".vhd": "vpc",
                  ".raw": "raw", ".img": "raw", ".qed": "qed"}
QEMU_ERRNOS = {"No space left": errno.ENOSPC, "File too large": errno.EFBIG,
               # sizes beyond what the image format holds (qemu-img 7.2's words)
               "exceeds maximum": errno.EFBIG, "too large": errno.EFBIG,
               "size cannot be negative": errno.EFBIG, "image size must be": errno.EFBIG,
               "Unsupported VDI image size": errno.EFBIG,
               "Invalid parameter": errno.EINVAL, "Invalid argument": errno.EINVAL,
               "does not accept value": errno.EINVAL,
               "not supported": errno.ENOTSUP, "does not support": errno.ENOTSUP}
#: at most this many qemu-img probes at once during a refresh
_probe_limit = trio.CapacityLimiter(4)


def check_creatable(fmt: str) -> None:
    """ENOTSUP, with the reason, for a format storagefs cannot make (before anything runs)."""
    if fmt in CREATABLE:
        return
    why = NOT_CREATABLE.get(fmt) or f"qemu-img reads {fmt} images but cannot create them"
    raise NotSupported(f"cannot create volumes of format '{fmt}': {why} (formats made "
                       f"here: {', '.join(CREATABLE)})")


def _qemu_preallocates(spec: VolumeSpec) -> bool:
    """qcow2 asked for in full is preallocated by qemu-img itself (preallocation=falloc)."""
    return bool(spec.format == "qcow2" and spec.allocation
                and spec.allocation >= spec.capacity)


async def allocate(path: str, length: int) -> None:
    """Make the file take at least ``length`` bytes on the host (libvirt's allocation),
    whatever its image format: see allocation.reserve."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open '{path}'") from None
    try:
        await allocation.reserve(fd, length)
    except OSError as exc:
        raise from_oserror(exc, f"cannot allocate {length} bytes for '{path}'") from None
    finally:
        os.close(fd)


def format_from_name(name: str) -> str | None:
    return SUFFIX_FORMATS.get(os.path.splitext(name)[1].lower())


def probe_header(path: str) -> tuple[str, int | None, str | None]:
    """The image format, virtual size and encryption (libvirt's name: luks or qcow)
    from the file's header, as libvirt probes them (no host tool: a refresh of
    thousands of images stays fast, and works when qemu-img hangs or is missing).
    Size None: unknown (raw: the file size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "raw", None, None
    try:
        head = os.pread(fd, 512, 0)
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 512, size - 512) if size >= 512 else b""
    except OSError:
        return "raw", None, None
    finally:
        os.close(fd)

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
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.atime_ns, info.mtime_ns, info.ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
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


class FileVolumes:
    """Volume operations on regular files in one directory."""

    def __init__(self, directory: str) -> None:
        self.dir = directory

    def path_of(self, name: str) -> str:
        return os.path.join(self.dir, check_name(name, "volume name"))

    def remove_leftovers(self) -> list[str]:
        """Temp files of ours that an interrupted storagefs left (clone, recreate, wipe):
        removed when the pool starts, before anything could be using them."""
        gone = []
        try:
            with os.scandir(self.dir) as it:
                for entry in it:
                    if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                            gone.append(entry.name)
        except OSError:
            pass
        if gone:
            log.warning("removed unfinished temp files in %s: %s", self.dir, ", ".join(gone))
        return gone

    def scan_names(self) -> list[str]:
        """Names of the regular files in the directory that are valid volume names."""
        names = []
        try:
            with os.scandir(self.dir) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        check_name(entry.name)
                    except StorageError:
                        continue
                    names.append(entry.name)
        except OSError as exc:
            raise from_oserror(exc, f"cannot open directory '{self.dir}'") from None
        return names

    async def probe(self, name: str, deep: bool = True,
                    fmt: str | None = None) -> VolumeInfo | None:
        """The volume as the storage has it; ``deep`` adds qemu-img's details.

        ``fmt`` is the volume's recorded format (storagefs made it or was told): it
        wins over the header, which whoever writes to the volume controls. Without it
        (a file found in the pool) the header decides."""
        path = self.path_of(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_oserror(exc, f"cannot stat '{path}'") from None
        if not stat.S_ISREG(st.st_mode):
            return None
        crypt = None
        if fmt == "raw":
            capacity = None  # the file size; the header is guest data
        else:
            found, capacity, crypt = probe_header(path)
            if fmt is None:
                fmt = found
            elif found != fmt:
                capacity, crypt = None, None  # not the recorded format's: qemu-img says
        info = VolumeInfo(name=name, path=path, key=path, format=fmt, encrypted=bool(crypt))
        if crypt:
            info.options["encryption"] = crypt
        stat_info(info, st)
        if capacity is not None:
            info.capacity = capacity
        elif fmt != "raw":
            info.capacity = 0  # not known until qemu-img says
        if deep and info.format != "raw":
            await self.details(info)
        return info

    async def details(self, info: VolumeInfo) -> VolumeInfo:
        """What only qemu-img tells: backing store, snapshots, encryption, options.
        Raises when qemu-img fails (the caller records why).

        ``qemu-img info`` opens neither the backing file nor a qcow2 data file, but it
        does open a vmdk's extents: a vmdk whose descriptor names files outside this
        directory is not given to it (its extents are shown as data files)."""
        if info.format == "vmdk":
            extents = vmdk_extents(info.path)
            if extents is None or not all(self.holds(e) or e == info.path for e in extents):
                info.data_files = extents if extents is not None else [info.path]
                return info
        await self._qemu_info(info, strict=True)
        return info

    def holds(self, path: str) -> bool:
        """True when ``path`` is a regular file directly in this directory, named so
        that opening it cannot lead elsewhere (no symlink, no '..')."""
        if path != os.path.normpath(path) or os.path.dirname(path) != os.path.normpath(self.dir):
            return False
        try:
            return stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            return False

    async def _qemu_info(self, info: VolumeInfo, strict: bool = False) -> None:
        async with _probe_limit:
            try:
                data = await hostcmd.run_json(
                    [QEMU_IMG, "info", "--output=json", "-U", "-f", info.format, info.path],
                    timeout=30)
            except StorageError:
                if strict:
                    raise
                return  # unreadable image: keep the header probe's answer
        if isinstance(data, dict):
            info.capacity = int(data.get("virtual-size", info.capacity))
            info.backing_path = data.get("full-backing-filename") or data.get("backing-filename")
            info.backing_format = data.get("backing-filename-format")
            info.encrypted = bool(data.get("encrypted"))
            info.snapshots = fileops.snapshots_from_info(data)
            specific = (data.get("format-specific") or {}).get("data") or {}
            info.data_files = external_files(info.path, specific)
            if "compat" in specific:
                info.options["compat"] = str(specific["compat"])
            if specific.get("lazy-refcounts"):
                info.options["lazy_refcounts"] = "on"
            encrypt = specific.get("encrypt")
            if isinstance(encrypt, dict) and encrypt.get("format"):
                # libvirt's name of qcow2's built-in encryption: aes is 'qcow'
                fmt = str(encrypt["format"])
                info.options["encryption"] = "qcow" if fmt == "aes" else fmt

    @staticmethod
    def ensure_regular(info: VolumeInfo) -> None:
        """Refuse to touch a volume whose file was swapped for a symlink (or anything
        but a regular file) behind our back: no operation follows links out of the pool."""
        try:
            st = os.lstat(info.path)
        except FileNotFoundError:
            raise NotFound(f"volume '{info.name}' is no longer in the pool") from None
        except OSError as exc:
            raise from_oserror(exc, f"cannot stat '{info.path}'") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotPermitted(f"'{info.path}' is not a regular file (a symlink?): storagefs "
                               "does not follow it")

    def unchanged(self, info: VolumeInfo) -> bool:
        """Same size, change time and type as when last probed (one lstat)."""
        try:
            st = os.lstat(info.path)
        except OSError:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_ctime_ns == info.ctime_ns
                and st.st_size == info.physical)

    def stat(self, info: VolumeInfo) -> VolumeInfo | None:
        try:
            st = os.lstat(info.path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return stat_info(info, st)

    async def create(self, spec: VolumeSpec, path: str | None = None) -> VolumeInfo:
        """Make the volume at its path (or at ``path``, a temporary name in the pool),
        with the document's mode or 0600 from the start (qemu-img keeps the mode of the
        file it writes into)."""
        check_creatable(spec.format)
        final = self.path_of(spec.name)
        path = path or final
        mode = spec.mode if spec.mode is not None else 0o600
        if spec.allocation:
            allocation.check_free(self.dir, min(spec.allocation, spec.capacity),
                                  f"allocating volume '{spec.name}'")
        plain_raw = spec.format == "raw" and not spec.encryption and not spec.options
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            raise Exists(f"volume target path '{path}' already exists") from None
        except OSError as exc:
            raise from_oserror(exc, f"cannot create '{path}'") from None
        try:
            info = None
            try:
                if spec.uid is not None or spec.gid is not None:
                    os.fchown(fd, -1 if spec.uid is None else spec.uid,
                              -1 if spec.gid is None else spec.gid)
                os.fchmod(fd, mode)
                if plain_raw:
                    await self._make_raw(fd, spec.capacity, spec.allocation)
                    # known format: no need to open it again to probe the header
                    info = stat_info(VolumeInfo(spec.name, final, final), os.fstat(fd))
            finally:
                os.close(fd)
            if not plain_raw:
                await self._qemu_create(path, spec)
                if spec.allocation and not _qemu_preallocates(spec):
                    await allocate(path, spec.allocation)
            if path != final:
                os.replace(path, final)
            if info is None:
                info = await self.probe(spec.name, fmt=made_format(spec))
            if info is None:
                raise StorageError(f"volume '{path}' vanished while being created")
            return info
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise

    async def _make_raw(self, fd: int, capacity: int, allocation: int | None) -> None:
        """A sparse file of ``capacity`` bytes whose first ``allocation`` bytes are
        allocated (libvirt: <allocation> below <capacity> is a partly sparse file)."""
        try:
            os.ftruncate(fd, capacity)
            if allocation and capacity:
                await trio.to_thread.run_sync(os.posix_fallocate, fd, 0,
                                              min(allocation, capacity))
        except OSError as exc:
            raise from_oserror(exc, "cannot allocate the volume") from None

    async def _qemu_create(self, path: str, spec: VolumeSpec) -> None:
        fmt = made_format(spec)
        argv = [QEMU_IMG, "create", "-q", "-f", fmt]
        opts = dict(spec.options)
        if spec.encryption:
            if spec.encryption != "luks" or fmt not in ("qcow2", "luks"):
                raise NotSupported(f"encryption '{spec.encryption}' is supported as LUKS in "
                                   "qcow2 or raw volumes only")
            if not spec.secret_file:
                raise InvalidArgument("an encrypted volume needs a secret with a value")
            argv += ["--object", f"secret,id=sec0,file={spec.secret_file}"]
            opts["encrypt.format" if fmt == "qcow2" else "key-secret"] = (
                "luks" if fmt == "qcow2" else "sec0")
            if fmt == "qcow2":
                opts["encrypt.key-secret"] = "sec0"
            prefix = "encrypt." if fmt == "qcow2" else ""
            opts.update({prefix + k: v for k, v in spec.encrypt_options.items()})
        if _qemu_preallocates(spec):
            opts.setdefault("preallocation", "falloc")
        if spec.format == "vpc":
            opts.setdefault("force_size", "on")
        if spec.backing_path:
            argv += ["-b", spec.backing_path, "-F", spec.backing_format or "raw"]
        if opts:
            argv += ["-o", ",".join(f"{k}={v}" for k, v in opts.items())]
        argv += [path, str(spec.capacity)]
        slow = "preallocation" in opts  # writes the whole image
        attempts = 6
        for attempt in range(attempts):
            try:
                await hostcmd.run(argv, timeout=3600 if slow else 60, errno_map=QEMU_ERRNOS)
                return
            except StorageError as exc:
                # LUKS key setup times PBKDF on the CPU; on a busy VM that measurement
                # often fails ("Unable to get accurate CPU usage"): try again, a moment later
                if "accurate CPU usage" not in exc.reason or attempt == attempts - 1:
                    raise
                log.warning("qemu-img could not time the key derivation; trying again")
                await trio.sleep(0.1 * (attempt + 1))

    async def delete(self, info: VolumeInfo) -> None:
        try:
            st = os.lstat(info.path)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(f"'{info.path}' is not a regular file; not deleting it")
            os.unlink(info.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise from_oserror(exc, f"cannot delete '{info.path}'") from None

    async def resize(self, info: VolumeInfo, capacity: int, *, shrink: bool,
                     allocate: bool, secret_file: str | None = None) -> VolumeInfo:
        self.ensure_regular(info)
        if capacity < info.capacity and not shrink:
            raise InvalidArgument("Can't shrink capacity below current capacity unless "
                                  "shrink flag explicitly specified")
        if info.format not in RESIZABLE:
            raise NotSupported(f"format '{info.format}' cannot be resized")
        if info.encrypted and not secret_file:
            raise NotSupported(f"'{info.name}' is encrypted: resizing needs its secret, named "
                               "by <encryption> in the volume's config.xml")
        if allocate and capacity > info.capacity:
            allocation.check_free(self.dir, capacity - info.capacity,
                                  f"allocating {capacity - info.capacity} more bytes for "
                                  f"'{info.name}'")
        if info.format == "raw":
            try:
                fd = os.open(info.path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError as exc:
                raise from_oserror(exc, f"cannot open '{info.path}'") from None
            try:
                old = os.fstat(fd).st_size
                os.ftruncate(fd, capacity)
                if allocate and capacity > old:
                    # a failure truncates back to the old size: capacity and space as before
                    await allocation.allocate(fd, old, capacity - old, size_before=old)
            except OSError as exc:
                raise from_oserror(exc, "cannot resize") from None
            finally:
                os.close(fd)
        else:
            argv = [QEMU_IMG, "resize", "-q"]
            if shrink and capacity < info.capacity:
                argv.append("--shrink")
            if allocate:
                argv.append("--preallocation=falloc")
            if info.encrypted:
                key = "encrypt.key-secret" if info.format == "qcow2" else "key-secret"
                argv += ["--object", f"secret,id=sec0,file={secret_file}", "--image-opts",
                         fileops.image_opts(info.format, info.path, **{key: "sec0"})]
            else:
                argv += ["-f", info.format, info.path]
            await hostcmd.run([*argv, str(capacity)], timeout=600, errno_map=QEMU_ERRNOS)
        new = await self.probe(info.name, fmt=info.format)
        if new is None:
            raise StorageError(f"volume '{info.path}' vanished")
        return new

    def holds_data(self, info: VolumeInfo) -> bool:
        """True when the raw file has any allocated data (SEEK_DATA finds some)."""
        try:
            fd = os.open(info.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            os.lseek(fd, 0, os.SEEK_DATA)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    async def image_holds_data(self, info: VolumeInfo) -> bool:
        if info.format == "raw":
            return self.holds_data(info)
        data = await hostcmd.run_json([QEMU_IMG, "map", "--output=json", "-U", "-f",
                                       info.format, info.path], timeout=60)
        return any(isinstance(e, dict) and e.get("data") for e in data or [])

    def signature(self, info: VolumeInfo) -> list[int] | None:
        """Inode, size, mtime and ctime: a write by anyone moves mtime (and ctime, which
        no one can set back); a file put in its place has another inode."""
        try:
            st = os.lstat(info.path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

    async def update(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """Make the file match spec: in full when ``spec.remake`` (it never held data),
        else format (only while empty), size, allocation, owner."""
        self.ensure_regular(info)
        if spec.remake:
            # never held data: re-made in full; what the document leaves out keeps what
            # the file has
            spec = dataclasses.replace(
                spec, mode=info.mode if spec.mode is None else spec.mode,
                uid=info.uid if spec.uid is None else spec.uid,
                gid=info.gid if spec.gid is None else spec.gid)
            return await self._remake(info, spec)
        wanted = {k: v for k, v in spec.options.items() if k in ("compat", "lazy_refcounts")}
        changes = []  # what only a re-made (empty) image can change
        if spec.format != info.format and not (spec.encryption and info.format == "luks"):
            changes.append(f"format (from {info.format} to {spec.format})")
        changes += [k.replace("_", " ") for k, v in wanted.items() if info.options.get(k) != v]
        if spec.encryption and not info.encrypted:
            changes.append("encryption")
        if spec.backing_path and spec.backing_path != info.backing_path:
            changes.append("backing store")
        if changes:
            check_creatable(spec.format)
            if await self.image_holds_data(info):
                raise Busy(f"cannot change the {' and '.join(changes)} of a volume that "
                           f"holds data ('{info.name}')")
            # the new file is as readable as the document says, else as the old one
            keep = {"mode": info.mode, "uid": info.uid, "gid": info.gid}
            spec = dataclasses.replace(spec, **{k: v for k, v in keep.items()
                                                if getattr(spec, k) is None})
            return await self._remake(info, spec)
        if spec.capacity < info.capacity:
            raise InvalidArgument(
                f"capacity {spec.capacity} is below the current {info.capacity}; "
                "shrinking needs 'resize --shrink'")
        size_before = info.physical
        want = 0
        if spec.allocation:
            want = min(spec.allocation, spec.capacity) if info.format == "raw" \
                else spec.allocation
        more = want - info.allocation if want > info.allocation else 0
        if more:  # refused before the size changes when the space is not there
            allocation.check_free(self.dir, more, f"allocating '{info.name}'")
        if spec.capacity > info.capacity:
            info = await self.resize(info, spec.capacity, shrink=False, allocate=False)
        if more:
            await self._allocate(info, want, size_before)
        try:
            fd = os.open(info.path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                if (spec.uid is not None and spec.uid != info.uid) or \
                        (spec.gid is not None and spec.gid != info.gid):
                    os.fchown(fd, -1 if spec.uid is None else spec.uid,
                              -1 if spec.gid is None else spec.gid)
                if spec.mode is not None and spec.mode != info.mode:
                    os.fchmod(fd, spec.mode)
            finally:
                os.close(fd)
        except OSError as exc:
            raise from_oserror(exc, f"cannot set permissions of '{info.path}'") from None
        return self.stat(info) or info

    async def _allocate(self, info: VolumeInfo, length: int, size_before: int) -> None:
        """Take ``length`` bytes from the file's start; a failure gives back what it
        took and the size the file had before the document (``size_before``)."""
        try:
            fd = os.open(info.path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise from_oserror(exc, f"cannot open '{info.path}'") from None
        try:
            await allocation.reserve(fd, length, size_before=size_before)
        except OSError as exc:
            raise from_oserror(exc, f"cannot allocate {length} bytes") from None
        finally:
            os.close(fd)

    async def _remake(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        """Made beside the old one, then renamed over it: a failure keeps the old."""
        tmp = os.path.join(self.dir, fileops.temp_name("new", info.name))
        self._discard(tmp)
        return await self.create(spec, tmp)

    async def clone(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        self.ensure_regular(src)
        path = self.path_of(spec.name)
        if os.path.lexists(path):
            raise Exists(f"volume target path '{path}' already exists")
        tmp = os.path.join(self.dir, fileops.temp_name("clone", spec.name))
        self._discard(tmp)  # left by an interrupted clone (the name is reserved now)
        try:
            if spec.format == src.format:
                await fileops.copy_file(src.path, tmp, src.physical, report)
            else:
                if spec.format not in CREATABLE:
                    raise NotSupported(f"cannot convert to format '{spec.format}'")
                await fileops.qemu_convert(src, tmp, spec.format, report)
            if os.path.lexists(path):
                raise Exists(f"volume target path '{path}' already exists")
            os.rename(tmp, path)
        except OSError as exc:
            self._discard(tmp)
            raise from_oserror(exc, f"cannot clone to '{path}'") from None
        except BaseException:
            self._discard(tmp)
            raise
        info = await self.probe(spec.name, fmt=spec.format)
        if info is None:
            raise StorageError(f"clone '{path}' vanished")
        return info

    @staticmethod
    def _discard(path: str) -> None:
        with trio.CancelScope(shield=True):
            try:
                os.unlink(path)
            except OSError:
                pass

    async def wipe(self, info: VolumeInfo, algorithm: str, report) -> VolumeInfo:
        self.ensure_regular(info)
        await fileops.wipe_file(info, algorithm, report)
        return await self.probe(info.name, fmt=info.format) or info

    async def snapshot(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        self.ensure_regular(info)
        flag = {"create": "-c", "revert": "-a", "delete": "-d"}[op]
        await fileops.snapshot_op(info, flag, name)
        return await self.probe(info.name, fmt=info.format) or info
