"""A volume lock that every host sharing a filesystem respects: a POSIX lock on a lock
file beside the volume (``.NAME.storagefs-lock``), taken by the filesystem's own lock
service (GlusterFS's features/locks on the brick, NFSv4's lock state, the kernel for a
local filesystem), never by a file of our own that claims to be one.

- The lock is an open-file-description lock (``F_OFD_SETLK``; plain ``F_SETLK`` where
  the kernel lacks it): it belongs to the one open file of the operation, so neither a
  second thread of the same storagefs nor a close of another descriptor of that file
  can take or drop it by accident.
- It is tried once and refused at once (EBUSY) while another holds it, naming the
  holder: whoever takes the lock writes ``host=... op=... pid=... since=...`` into the
  file, and a refused host reads it back.
- A holder that dies loses the lock with its open files: the kernel closes them when a
  storagefs process dies (even by SIGKILL) and the filesystem drops their locks at once;
  a whole host that vanishes from the network keeps its locks until the server drops
  its connection (GlusterFS: TCP keep-alive and ``server.tcp-user-timeout``, 42 s by
  default; NFSv4: the lease time, 90 s by default).
- Taking it checks that the locked file is still the one at the path (a holder unlinks
  the file as it lets go, so a host that opened the old one retries on the new one):
  no lock file is left behind after a clean release.

The functions here are syscalls, run in the pool's worker threads (``io``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import time

from ..errors import Busy, from_oserror

SUFFIX = ".storagefs-lock"
#: how often a lock whose file was replaced under us is tried again, and how long apart
#: (a GlusterFS client looks a name up again after its entry-timeout, 1 s by default)
ATTEMPTS = 8
STALE_WAIT = 0.2
_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def lock_name(volume: str) -> str:
    """The lock file's name: hidden (a listing never shows it as a volume) and within
    255 bytes (a digest of a long volume name)."""
    name = f".{volume}{SUFFIX}"
    if len(os.fsencode(name)) <= 255:
        return name
    return f".{hashlib.sha256(os.fsencode(volume)).hexdigest()}{SUFFIX}"


def _setlk(fd: int) -> None:
    """A write lock on the whole file, not waiting (EAGAIN/EACCES while held)."""
    flock = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, _OFD_SETLK, flock)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no OFD locks: a process lock


def holder_of(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (a moment later if not written yet)."""
    for _ in range(3):
        try:
            text = os.pread(fd, 512, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        if text:
            return text.splitlines()[0]
        time.sleep(0.05)
    return ""


def describe(text: str) -> str:
    """``host 'A' (resize since 2026-12-01T12:00:01Z, pid 42)`` from a holder line
    (``host=A pid=42 since=T op=WHAT``: the operation last, it may hold spaces)."""
    head, _, op = text.partition(" op=")
    fields = dict(part.split("=", 1) for part in head.split() if "=" in part)
    host = fields.get("host")
    if not host:
        return "another host"
    parts = []
    if op:
        parts.append(op + (f" since {fields['since']}" if "since" in fields else ""))
    if "pid" in fields:
        parts.append(f"pid {fields['pid']}")
    return f"host '{host}'" + (f" ({', '.join(parts)})" if parts else "")


def _close(fd: int) -> None:
    """close(2) that cannot fail the caller (a network filesystem may answer ESTALE for
    a file another host removed: the descriptor is gone all the same)."""
    try:
        os.close(fd)
    except OSError:
        pass


def acquire(directory: str, volume: str, host: str, op: str) -> int:
    """Take the lock of ``volume`` in ``directory``; the open descriptor that holds it.
    Busy naming the holder when another has it.

    ESTALE (the client still knew a lock file another host has removed meanwhile) is
    the file being replaced: tried again after a moment, once the client looked again."""
    path = os.path.join(directory, lock_name(volume))
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(STALE_WAIT)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                continue
            raise from_oserror(exc, f"cannot open the lock of volume '{volume}'") from None
        try:
            _setlk(fd)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                _close(fd)
                if exc.errno == errno.ESTALE:
                    continue
                raise from_oserror(exc, f"cannot lock volume '{volume}'") from None
            who = describe(holder_of(fd))
            _close(fd)
            raise Busy(f"volume '{volume}' is locked by {who}: try again when it is "
                       "done") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESTALE):
                _close(fd)
                raise from_oserror(exc, f"cannot lock volume '{volume}'") from None
            same = False
        if not same:  # its holder let go and removed it meanwhile: lock the new one
            _close(fd)
            continue
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        who = "".join(c if c.isprintable() and not c.isspace() else "_" for c in host)
        what = "".join(c if c.isprintable() else " " for c in op)
        line = f"host={who} pid={os.getpid()} since={since} op={what}\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
        except OSError as exc:
            release(directory, volume, fd)
            raise from_oserror(exc, f"cannot lock volume '{volume}'") from None
        return fd
    raise Busy(f"volume '{volume}': its lock file keeps changing (other hosts are taking "
               "it): try again")


def release(directory: str, volume: str, fd: int) -> None:
    """Let go: the file is removed while still locked (whoever opened it meanwhile sees
    it replaced and retries), then closed, which drops the lock."""
    path = os.path.join(directory, lock_name(volume))
    try:
        if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
            os.unlink(path)
    except OSError:
        pass  # the lock still goes with the close
    finally:
        _close(fd)
