"""Long file-volume operations: clone (reflink, sparse copy, qemu-img convert),
wipe, and qcow2 internal snapshots. Progress is reported through a callback
with a fraction in [0, 1]; a failure or cancellation leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .. import hostcmd
from ..errors import InvalidArgument, NotSupported, StorageError, from_oserror
from . import imagefmt
from .base import VolumeInfo

log = logging.getLogger(__name__)
Progress = Callable[[float], None]
FICLONE = 0x40049409
CHUNK = 4 << 20
QEMU_IMG = "qemu-img"
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
#: libvirt's wipe algorithms; all but zero and random need the scrub tool
WIPE_ALGORITHMS = ("zero", "nnsa", "dod", "bsi", "gutmann", "schneier", "pfitzner7",
                   "pfitzner33", "random", "trim")


class _Cancel:
    """Set from the trio side when the operation is cancelled; the worker thread checks it."""

    def __init__(self) -> None:
        self.event = threading.Event()


def temp_name(what: str, name: str) -> str:
    """``.storagefs-WHAT-NAME``, our temp file beside volume NAME in its directory; for a
    name too long for that, a digest of it (a volume name may have 255 bytes)."""
    tmp = f".storagefs-{what}-{name}"
    if len(os.fsencode(tmp)) <= 255:
        return tmp
    return f".storagefs-{what}-{hashlib.sha256(os.fsencode(name)).hexdigest()}"


def try_reflink(src_fd: int, dst_fd: int) -> bool:
    """O(1) copy on xfs/btrfs (FICLONE); False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL,
                         errno.ENOSYS):
            return False
        raise


#: copy_file_range cannot copy between these two files (another filesystem, an old
#: kernel, a filesystem without it): copy through user space instead
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _copy_range(src_fd: int, dst_fd: int, n: int, off: int, in_kernel: list[bool]) -> int:
    """Copy n bytes at off: copy_file_range while it works, else pread/pwrite."""
    if in_kernel[0]:
        try:
            return os.copy_file_range(src_fd, dst_fd, n, off, off)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            in_kernel[0] = False
    data = os.pread(src_fd, n, off)
    view = memoryview(data)
    done = 0
    while done < len(data):
        done += os.pwrite(dst_fd, view[done:], off + done)
    return len(data)


def sparse_copy(src_fd: int, dst_fd: int, size: int, report: Progress, cancel: _Cancel) -> None:
    """Copy only the data extents (SEEK_DATA/SEEK_HOLE): holes stay holes, also across
    filesystems (where copy_file_range says EXDEV, the bytes go through user space)."""
    os.ftruncate(dst_fd, size)
    in_kernel = [True]
    pos = 0
    while pos < size:
        if cancel.event.is_set():
            raise InterruptedError
        try:
            data = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole is left
            raise
        hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        off = data
        while off < hole:
            if cancel.event.is_set():
                raise InterruptedError
            n = _copy_range(src_fd, dst_fd, min(CHUNK, hole - off), off, in_kernel)
            if n <= 0:
                break
            off += n
            report(off / size if size else 1.0)
        pos = hole
    report(1.0)


async def in_thread(fn: Callable[[_Cancel], None]) -> None:
    """Run blocking copy work in a thread; on cancellation, tell it to stop and wait
    until it has (so the caller's cleanup never races the copy)."""
    cancel = _Cancel()
    done = threading.Event()

    def work() -> None:
        try:
            fn(cancel)
        finally:
            done.set()

    try:
        await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except BaseException:
        cancel.event.set()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(done.wait)
        raise


def create_private(path: str) -> int:
    """A new file only root can read (O_EXCL, no symlink followed), whatever the umask:
    what is being copied into it is not readable before it is complete."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def same_access(fd: int, st: os.stat_result) -> None:
    """Give the file at fd the owner, group and mode of ``st`` (the source's): a copy is
    never more readable than what it copies. Owner first: chown clears setuid bits."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))


async def copy_file(src: str, dst: str, size: int, report: Progress) -> None:
    """Reflink when possible, else a sparse copy; dst is created (O_EXCL, 0600 while the
    copy runs) and then gets the source's owner and mode."""
    def work(cancel: _Cancel) -> None:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            dfd = create_private(dst)
            try:
                if not try_reflink(sfd, dfd):
                    sparse_copy(sfd, dfd, size, report, cancel)
                else:
                    report(1.0)
                same_access(dfd, os.fstat(sfd))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    try:
        await in_thread(work)
    except OSError as exc:
        raise from_oserror(exc, f"cannot copy '{src}'") from None


async def qemu_convert(src: VolumeInfo, dst: str, fmt: str, report: Progress) -> None:
    """qemu-img convert -p, progress parsed from its '(12.34/100%)' output. dst is made
    by us first (0600; qemu-img keeps the mode of a file it writes into) and gets the
    source's owner and mode once complete. The caller removes dst on failure."""
    try:
        os.close(create_private(dst))
    except OSError as exc:
        raise from_oserror(exc, f"cannot create '{dst}'") from None
    argv = [QEMU_IMG, "convert", "-p", "-f", src.format, "-O", fmt, src.path, dst]
    await hostcmd.run_progress(argv, _PERCENT, report, timeout=24 * 3600)
    try:
        fd = os.open(dst, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            same_access(fd, os.stat(src.path, follow_symlinks=False))
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_oserror(exc, f"cannot set the permissions of '{dst}'") from None


async def convert_from_url(url: str, src_fmt: str, capacity: int, dst: str, fmt: str,
                           report: Progress) -> None:
    """A network volume of another pool (an ``rbd:`` URL whose keyring file exists only
    while this runs) converted into a new file: dst is made first (0600, the capacity;
    a qcow2 by qemu-img create), then ``qemu-img convert -n`` writes into it. The caller
    removes dst on failure."""
    try:
        fd = create_private(dst)
        try:
            if fmt == "raw":
                os.ftruncate(fd, capacity)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_oserror(exc, f"cannot create '{dst}'") from None
    if fmt != "raw":
        await hostcmd.run([QEMU_IMG, "create", "-q", "-f", fmt, dst, str(capacity)],
                          timeout=60)
    argv = [QEMU_IMG, "convert", "-p", "-n", "-f", src_fmt, "-O", fmt, url, dst]
    await hostcmd.run_progress(argv, _PERCENT, report, timeout=24 * 3600)


async def wipe_file(info: VolumeInfo, algorithm: str, report: Progress,
                    secret_file: str | None = None) -> None:
    if algorithm not in WIPE_ALGORITHMS:
        raise InvalidArgument(f"unknown wipe algorithm '{algorithm}'; known: "
                              f"{', '.join(WIPE_ALGORITHMS)}")
    if info.format != "raw" and algorithm != "zero":
        raise NotSupported(f"only 'zero' can wipe a {info.format} volume")
    if algorithm in ("zero", "random") and info.format == "raw":
        await _overwrite(info, algorithm == "random", report)
    elif algorithm == "zero":
        await _recreate_empty(info, secret_file)
        report(1.0)
    elif algorithm == "trim":
        raise NotSupported("trim is not supported for file volumes")
    else:
        await hostcmd.run(["scrub", "-f", "-p", algorithm, info.path], timeout=24 * 3600)
        report(1.0)


async def _overwrite(info: VolumeInfo, random: bool, report: Progress) -> None:
    size = os.lstat(info.path).st_size

    def work(cancel: _Cancel) -> None:
        fd = os.open(info.path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            if not random:
                # zeroes: punching holes leaves a sparse file that reads as zeros
                fallocate_punch(fd, size)
                report(1.0)
                return
            off = 0
            while off < size:
                if cancel.event.is_set():
                    raise InterruptedError
                n = min(CHUNK, size - off)
                os.pwrite(fd, os.urandom(n), off)
                off += n
                report(off / size)
            os.fsync(fd)
        finally:
            os.close(fd)

    try:
        await in_thread(work)
    except OSError as exc:
        raise from_oserror(exc, f"cannot wipe '{info.path}'") from None


def fallocate_punch(fd: int, size: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mode = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
    if libc.fallocate(fd, mode, ctypes.c_longlong(0), ctypes.c_longlong(size)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP,):
            raise OSError(err, os.strerror(err))
        zero = bytes(CHUNK)
        for off in range(0, size, CHUNK):
            os.pwrite(fd, zero[:min(CHUNK, size - off)], off)
    os.fsync(fd)


async def _recreate_empty(info: VolumeInfo, secret_file: str | None = None) -> None:
    """Zero an image format: a fresh image of the same size, format and creation options
    (compat, cluster size, refcounts, LUKS encryption with the same secret ...: see
    imagefmt.remake_options, read from qemu-img info), made beside it and renamed over it.
    Its internal snapshots go with the old image (they hold the old data)."""
    data = await hostcmd.run_json([QEMU_IMG, "info", "--output=json", "-U", "-f",
                                   info.format, info.path], timeout=30)
    opts = imagefmt.remake_options(info.format, data if isinstance(data, dict) else {})
    argv = [QEMU_IMG, "create", "-q", "-f", info.format]
    if "key-secret" in opts or "encrypt.key-secret" in opts:
        if not secret_file:
            raise NotSupported(f"'{info.name}' is encrypted: wiping re-makes it encrypted "
                               "with its secret, named by <encryption> in the volume's "
                               "config.xml")
        argv += ["--object", f"secret,id=sec0,file={secret_file}"]
    if info.backing_path:
        argv += ["-b", info.backing_path, "-F", info.backing_format or "raw"]
    if opts:
        argv += ["-o", ",".join(f"{k}={v}" for k, v in opts.items())]
    tmp = os.path.join(os.path.dirname(info.path), temp_name("wipe", os.path.basename(info.path)))
    slow = "preallocation" in opts  # writes the whole image
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by an interrupted wipe
        os.close(create_private(tmp))  # 0600 until it is the volume
        await run_create([*argv, tmp, str(info.capacity)], timeout=3600 if slow else 600)
        st = os.lstat(info.path)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            same_access(fd, st)
        finally:
            os.close(fd)
        os.replace(tmp, info.path)
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise


async def run_create(argv: list[str], timeout: float) -> None:
    """qemu-img create; tried again a moment later when LUKS key setup could not time
    its key derivation on a busy CPU ("Unable to get accurate CPU usage")."""
    attempts = 6
    for attempt in range(attempts):
        try:
            await hostcmd.run(argv, timeout=timeout, errno_map=imagefmt.QEMU_ERRNOS)
            return
        except StorageError as exc:
            if "accurate CPU usage" not in exc.reason or attempt == attempts - 1:
                raise
            log.warning("qemu-img could not time the key derivation; trying again")
            await trio.sleep(0.1 * (attempt + 1))


def image_opts(fmt: str, path: str, **extra: str) -> str:
    """An --image-opts string that names the format and the file (commas in the path
    doubled, as qemu's option syntax wants, so a name cannot add options)."""
    opts = [f"driver={fmt}", "file.driver=file", f"file.filename={path.replace(',', ',,')}"]
    opts += [f"{k}={v}" for k, v in extra.items()]
    return ",".join(opts)


@dataclass
class Snapshot:
    name: str
    id: str = ""
    date: str = ""
    vm_state_size: int = 0
    vm_clock: str = ""


def snapshots_from_info(data: dict) -> list[Snapshot]:
    """Internal snapshots from ``qemu-img info --output=json``. A snapshot whose name
    cannot be a directory name (a file made elsewhere can hold any: '/', '..', over
    255 bytes) is left out of the tree."""
    from ..names import check_name

    out = []
    for s in data.get("snapshots", []) or []:
        try:
            check_name(str(s.get("name", "")), "snapshot name")
        except InvalidArgument:
            continue
        secs = int(s.get("date-sec", 0))
        out.append(Snapshot(name=str(s.get("name", "")), id=str(s.get("id", "")),
                            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs)),
                            vm_state_size=int(s.get("vm-state-size", 0)),
                            vm_clock=str(s.get("vm-clock-sec", 0))))
    return out


async def snapshot_op(info: VolumeInfo, flag: str, name: str,
                      secret_file: str | None = None) -> None:
    """qemu-img snapshot -c/-a/-d; an encrypted image is opened with its key (a secret
    object read from ``secret_file``, named in --image-opts)."""
    if info.format != "qcow2":
        raise NotSupported(f"internal snapshots need qcow2; '{info.name}' is {info.format}")
    argv = [QEMU_IMG, "snapshot"]
    extra = {}
    if info.encrypted:
        if not secret_file:
            raise NotSupported(f"'{info.name}' is encrypted: snapshots need its secret, "
                               "named by <encryption> in the volume's config.xml")
        argv += ["--object", f"secret,id=sec0,file={secret_file}"]
        extra["encrypt.key-secret"] = "sec0"
    # qemu-img snapshot has no -f: the format is named through --image-opts
    await hostcmd.run([*argv, "--image-opts", flag, name,
                       image_opts("qcow2", info.path, **extra)],
                      timeout=600, errno_map={"already exists": errno.EEXIST,
                                              "not found": errno.ENOENT,
                                              "Can't find": errno.ENOENT,
                                              "lock": errno.EBUSY})


def check_snapshot_name(name: str) -> str:
    from ..names import check_name

    check_name(name, "snapshot name")
    if name.isdigit():
        raise InvalidArgument("a snapshot name cannot be all digits (qemu-img takes it for an id)")
    return name


__all__ = ["StorageError", "WIPE_ALGORITHMS", "Snapshot", "copy_file", "qemu_convert",
           "wipe_file", "snapshots_from_info", "snapshot_op", "check_snapshot_name"]
