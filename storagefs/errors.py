"""One error type for everything below the FUSE layer.

Every refused operation raises a :class:`StorageError` carrying an errno and a
one-line reason. The manager records the reason in the object's ``error`` file
and the log; the FUSE layer turns the errno into ``FUSEError``.
"""

from __future__ import annotations

import errno as _errno


class StorageError(Exception):
    """A refused or failed operation: ``errno`` for the caller, ``reason`` for people."""

    default_errno = _errno.EIO

    def __init__(self, reason: str, errno: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = errno if errno is not None else self.default_errno
        #: set once the refusal is in an error file and the log (it is recorded once)
        self.recorded = False

    def __str__(self) -> str:
        return self.reason


class InvalidArgument(StorageError):
    default_errno = _errno.EINVAL


class NotFound(StorageError):
    default_errno = _errno.ENOENT


class Exists(StorageError):
    default_errno = _errno.EEXIST


class Busy(StorageError):
    default_errno = _errno.EBUSY


class NotSupported(StorageError):
    default_errno = _errno.ENOTSUP


class NotPermitted(StorageError):
    default_errno = _errno.EPERM


class NoSpace(StorageError):
    default_errno = _errno.ENOSPC


class StorageLost(StorageError):
    """The pool's storage is not there, or is not the storage the pool started with (a
    target directory swapped for a symlink or another directory): nothing was done, and
    the pool becomes ``inaccessible`` until it is started again or the storage is back."""

    default_errno = _errno.EIO


class ToolError(StorageError):
    """A host tool failed, hung or is missing."""

    default_errno = _errno.EIO


class ToolTimedOut(ToolError):
    """A host tool was killed at its time limit: the storage behind it does not answer
    (the pool becomes ``inaccessible``; its last known volumes stay listed). The caller
    gets EIO, as for any tool that failed (SPEC "Errors are errno")."""


#: errnos of storage that cannot be reached (a server gone, a connection cut): the
#: pool's storage is lost for now, not the file asked for
UNREACHABLE = frozenset({_errno.ENOTCONN, _errno.ESTALE, _errno.ECONNREFUSED,
                         _errno.ECONNRESET, _errno.ECONNABORTED, _errno.EHOSTDOWN,
                         _errno.EHOSTUNREACH, _errno.ENETUNREACH, _errno.ENETDOWN})


def timed_out(exc: StorageError) -> bool:
    """A tool killed at its time limit, or storage that did not answer in time."""
    return isinstance(exc, ToolTimedOut) or exc.errno == _errno.ETIMEDOUT


def from_oserror(exc: OSError, what: str) -> StorageError:
    """Wrap an OSError from a syscall on the storage, keeping its errno (StorageLost
    when the storage cannot be reached at all: a network filesystem's server gone)."""
    kind = StorageLost if exc.errno in UNREACHABLE else StorageError
    return kind(f"{what}: {exc.strerror or exc}", exc.errno or _errno.EIO)
