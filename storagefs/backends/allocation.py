"""Allocating space in file volumes so that a refusal leaves the storage as it was.

A preallocation that runs out of space part-way leaves the blocks it got (ext4,
xfs; glibc's emulation where fallocate is unsupported writes block by block):
the volume would keep them and the pool stay full. So space is checked first
where statvfs knows it, and a failed allocation is undone: the ranges that
were holes before are punched again (the map of allocated extents is taken
first, with FIEMAP, which also sees unwritten extents; SEEK_DATA/SEEK_HOLE
where FIEMAP is unsupported), and a file that was grown is truncated back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import struct

import trio

from ..errors import NoSpace

log = logging.getLogger(__name__)

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HEAD = struct.Struct("=QQIIII")  # fm_start fm_length fm_flags mapped count reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical physical length 2x reserved, flags
_EXTENTS_PER_CALL = 128
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc: ctypes.CDLL | None = None


def check_free(directory: str, needed: int, what: str) -> None:
    """NoSpace before anything is touched when ``needed`` bytes are more than the
    filesystem of ``directory`` has available (nothing is checked where statvfs fails)."""
    if needed <= 0:
        return
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return
    available = vfs.f_bavail * vfs.f_frsize
    if needed > available:
        raise NoSpace(f"not enough space: {what} needs {needed} bytes; {available} are "
                      f"available in '{directory}'")


def _fiemap(fd: int, start: int, end: int) -> list[tuple[int, int]] | None:
    """Allocated byte ranges in [start, end) (unwritten extents included); None when
    the filesystem has no FIEMAP (tmpfs)."""
    ranges: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        buf = bytearray(_FIEMAP_HEAD.pack(pos, end - pos, FIEMAP_FLAG_SYNC, 0,
                                          _EXTENTS_PER_CALL, 0)
                        + bytes(_FIEMAP_EXTENT.size * _EXTENTS_PER_CALL))
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return None
            raise
        mapped = _FIEMAP_HEAD.unpack_from(buf)[3]
        if mapped == 0:
            break
        last = False
        for i in range(mapped):
            fields = _FIEMAP_EXTENT.unpack_from(buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
            logical, length, flags = fields[0], fields[2], fields[5]
            ranges.append((max(logical, start), min(logical + length, end)))
            last = last or bool(flags & FIEMAP_EXTENT_LAST)
        if last or ranges[-1][1] <= pos:
            break
        pos = ranges[-1][1]
    return ranges


def _seek_data(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    ranges, pos = [], start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        ranges.append((data, hole))
        pos = hole
    return ranges


def holes(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The ranges in [start, end) that have no blocks now."""
    allocated = _fiemap(fd, start, end)
    if allocated is None:
        allocated = _seek_data(fd, start, end)
    out, pos = [], start
    for a, b in sorted(allocated):
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < end:
        out.append((pos, end))
    return out


def punch_hole(fd: int, offset: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
    if _libc.fallocate(fd, mode, ctypes.c_longlong(offset), ctypes.c_longlong(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def allocate_sync(fd: int, offset: int, length: int, size_before: int) -> None:
    """posix_fallocate of [offset, offset+length); when it fails the file is left with
    the blocks and the size (``size_before``) it had."""
    gaps = holes(fd, offset, min(offset + length, size_before))
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError:
        undo(fd, gaps, size_before)
        raise


def undo(fd: int, gaps: list[tuple[int, int]], size_before: int) -> None:
    """Give back what a failed allocation took: truncate to the size the file had,
    then punch the ranges that were holes (best effort, logged)."""
    try:
        if gaps and gaps[-1][1] >= size_before:
            # a hole up to the end: cut the file there and extend it again, which also
            # frees the mapping blocks a punch would keep (indirect blocks)
            os.ftruncate(fd, gaps.pop()[0])
        if os.fstat(fd).st_size != size_before:
            os.ftruncate(fd, size_before)
        for a, b in gaps:
            punch_hole(fd, a, b - a)
    except OSError as exc:
        log.error("cannot give back the space of a failed allocation: %s", exc.strerror)


def reserve_sync(fd: int, length: int, size_before: int | None = None) -> None:
    """fallocate(FALLOC_FL_KEEP_SIZE) of the file's first ``length`` bytes: holes inside
    are allocated (they still read as zeros), the rest is reserved past the end, which
    the file grows into as data is written; the size and every byte stay as they were,
    so this works for every image format. A failure gives back what it took."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if size_before is None:
        size_before = os.fstat(fd).st_size
    if length <= size_before:
        # inside the file: posix_fallocate, which glibc emulates where the filesystem
        # cannot fallocate (ext4 without extents)
        allocate_sync(fd, 0, length, size_before)
        return
    gaps = holes(fd, 0, size_before)
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_longlong(0),
                       ctypes.c_longlong(length)) != 0:
        err = ctypes.get_errno()
        undo(fd, gaps, size_before)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size_before)  # frees what was reserved past the end
        raise OSError(err, os.strerror(err))


async def reserve(fd: int, length: int, size_before: int | None = None) -> None:
    """reserve_sync in a worker thread (``size_before``: default the file's size now)."""
    await trio.to_thread.run_sync(reserve_sync, fd, length, size_before)


async def allocate(fd: int, offset: int, length: int,
                   size_before: int | None = None) -> None:
    """posix_fallocate of [offset, offset+length) in a worker thread; when it fails
    the file is left with the blocks and the size (``size_before``, default its size
    now) it had."""
    if size_before is None:
        size_before = os.fstat(fd).st_size
    await trio.to_thread.run_sync(allocate_sync, fd, offset, length, size_before)
