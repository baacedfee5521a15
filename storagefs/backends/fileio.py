"""The syscalls on a file volume, as plain functions run in the pool's worker threads
(filevol.FileVolumes calls them through the pool's ``io``): create with O_EXCL and
O_NOFOLLOW, reserve space, resize a raw file, set owner and mode, delete, rename a
finished temp file into place."""

from __future__ import annotations

import os
import stat

from ..errors import Exists, InvalidArgument, from_oserror
from . import allocation, imagefmt


def create_file(path: str, mode: int, uid: int | None, gid: int | None,
                capacity: int | None, alloc: int | None) -> None:
    """Create the file (O_EXCL), owner and mode first; for a plain raw volume also its
    size and the allocation of its first ``alloc`` bytes (a partly sparse file)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise Exists(f"volume target path '{path}' already exists") from None
    except OSError as exc:
        raise from_oserror(exc, f"cannot create '{path}'") from None
    try:
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
        if capacity is not None:
            os.ftruncate(fd, capacity)
            if alloc and capacity:
                os.posix_fallocate(fd, 0, min(alloc, capacity))
    except OSError as exc:
        os.close(fd)
        imagefmt.discard(path)
        raise from_oserror(exc, "cannot allocate the volume") from None
    os.close(fd)


def reserve(path: str, length: int, size_before: int | None = None) -> None:
    """Make the file take at least ``length`` bytes on the host (libvirt's allocation),
    whatever its image format: see allocation.reserve_sync."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open '{path}'") from None
    try:
        allocation.reserve_sync(fd, length, size_before)
    except OSError as exc:
        raise from_oserror(exc, f"cannot allocate {length} bytes for '{path}'") from None
    finally:
        os.close(fd)


def resize_raw(path: str, capacity: int, allocate: bool) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as exc:
        raise from_oserror(exc, f"cannot open '{path}'") from None
    try:
        old = os.fstat(fd).st_size
        os.ftruncate(fd, capacity)
        if allocate and capacity > old:
            # a failure truncates back to the old size: capacity and space as before
            allocation.allocate_sync(fd, old, capacity - old, old)
    except OSError as exc:
        raise from_oserror(exc, "cannot resize") from None
    finally:
        os.close(fd)


def set_owner(path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if (uid is not None and uid != st.st_uid) or (gid is not None and gid != st.st_gid):
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            if mode is not None and mode != st.st_mode & 0o7777:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_oserror(exc, f"cannot set permissions of '{path}'") from None


def delete_file(path: str) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"'{path}' is not a regular file; not deleting it")
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise from_oserror(exc, f"cannot delete '{path}'") from None


def rename_new(tmp: str, path: str) -> None:
    if os.path.lexists(path):
        raise Exists(f"volume target path '{path}' already exists")
    os.rename(tmp, path)
