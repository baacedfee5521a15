"""Writing and removing small files durably: the primitives of the state directory.

A write goes to a temp file beside the target, every byte of it (a short write
on a nearly full disk is continued, and its ENOSPC reported), is fsync'ed and
read back, and only then renamed into place (and the directory fsync'ed). Any
failure raises StorageError with the errno (ENOSPC, EROFS, EDQUOT, EIO ...) and
leaves the old file as it was and no temp file behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from .errors import StorageError
from .names import fit_name
from .xml.safe import MAX_DOCUMENT_BYTES

log = logging.getLogger(__name__)

#: a record larger than this is not read (a document is at most MAX_DOCUMENT_BYTES;
#: JSON escapes can make it a few times larger)
MAX_RECORD_BYTES = 8 * MAX_DOCUMENT_BYTES + 65536
#: longest file name the filesystems of a state directory take
NAME_MAX = 255


def failed(what: str, exc: OSError) -> StorageError:
    return StorageError(f"{what}: {exc.strerror or exc}", exc.errno or errno.EIO)


def _beside(path: Path, suffix: str) -> Path:
    """``.NAME.<rand>SUFFIX`` beside ``path``, within NAME_MAX bytes whatever NAME is."""
    tail = f".{secrets.token_hex(4)}{suffix}"
    room = NAME_MAX - 1 - len(tail)
    return path.with_name(f".{fit_name(path.name, room)}{tail}")


def _temp_name(path: Path) -> Path:
    """A unique temp name beside ``path`` (removed at the next start if left behind)."""
    return _beside(path, ".tmp")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class PendingWrite:
    """A file written in full beside its target, fsync'ed and read back: ``commit()``
    renames it into place, ``abort()`` removes it. Lets an operation reserve the
    space and prove the state directory writable before it touches the storage."""

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path, self.tmp = path, tmp
        self.done = False

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            _unlink_quietly(self.tmp)
            raise failed(f"cannot save {self.path}", exc) from None
        try:
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise failed(f"cannot save {self.path} (directory not synced)", exc) from None

    def abort(self) -> None:
        if not self.done:
            self.done = True
            _unlink_quietly(self.tmp)


def prepare_write(path: Path, data: bytes, mode: int = 0o600) -> PendingWrite:
    """Write ``data`` to a temp file beside ``path``: every byte (a short write on a
    nearly full disk is continued, and its ENOSPC reported), fsync, then read back
    and compared. StorageError on any failure, with no temp file left."""
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise failed(f"cannot save {path}", exc) from None
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
            os.fsync(fd)
            back = _read_all(fd, len(data) + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise failed(f"cannot save {path}", exc) from None
    if back != data:
        _unlink_quietly(tmp)
        raise StorageError(f"cannot save {path}: the {len(back)} bytes read back differ "
                           f"from the {len(data)} written", errno.EIO)
    return PendingWrite(path, tmp)


def _read_all(fd: int, limit: int) -> bytes:
    chunks, offset = [], 0
    while offset < limit:
        chunk = os.pread(fd, min(1 << 20, limit - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    prepare_write(path, data, mode).commit()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Unlink a record if there is one (StorageError with the errno when it cannot)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise failed(f"cannot remove {path}", exc) from None
    try:
        os.unlink(path)
        fsync_dir(path.parent)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise failed(f"cannot remove {path}", exc) from None


class PendingDelete:
    """A record renamed aside (``.NAME.<rand>.del``) while the operation that makes it
    obsolete runs: ``commit()`` removes it, ``abort()`` puts it back. A crash in
    between puts it back at the next start (the volume is then probed as it is).
    Renaming needs no space, so a full state directory does not stop a deletion."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.aside: Path | None = None
        #: the name is too long for an aside name: removed at commit instead
        self.late = False
        try:
            os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise failed(f"cannot remove {path}", exc) from None
        aside = _beside(path, ".del")
        if len(os.fsencode(aside.name)) > NAME_MAX:
            self.late = True
            return
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise failed(f"cannot remove {path}", exc) from None
        self.aside = aside

    def commit(self) -> None:
        """Never raises: a record left behind describes an object that is gone, and the
        next refresh or start removes it."""
        if self.late:
            self.late = False
            try:
                remove_file(self.path)
            except StorageError as exc:
                log.warning("%s (removed at the next refresh)", exc.reason)
        if self.aside is not None:
            aside, self.aside = self.aside, None
            _unlink_quietly(aside)
            with contextlib.suppress(OSError):
                fsync_dir(self.path.parent)

    def abort(self) -> None:
        self.late = False
        if self.aside is not None:
            aside, self.aside = self.aside, None
            try:
                os.rename(aside, self.path)
            except OSError as exc:
                log.error("cannot put %s back from %s: %s", self.path, aside, exc.strerror)


def read_record(path: Path) -> bytes:
    """The bytes of a regular file, not following a symlink (ELOOP), at most
    MAX_RECORD_BYTES (EFBIG)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_RECORD_BYTES:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than a record holds")
        return _read_all(fd, MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
