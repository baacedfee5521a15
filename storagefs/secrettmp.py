"""Where a secret is put in a file for a host tool: ``STATE/run/secrets-tmp/`` (0700,
root's), never /tmp. A cephx keyring for rbd/rados/qemu, a secret's value for
``qemu-img --object secret,file=`` (LUKS, rbd --keyfile) exist there only while the
tool runs; a storagefs killed meanwhile (SIGKILL, power loss) leaves them behind, and
the next start on the same state directory removes them before anything else runs
(one warning line per file, naming the file, never its content).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from .errors import StorageError, from_oserror

log = logging.getLogger(__name__)

#: the directory of this process (set by setup(), when the state directory is opened)
_dir: Path | None = None


def setup(run_dir: Path) -> Path:
    """Make ``run_dir/secrets-tmp`` (0700) and empty it of what a killed storagefs left."""
    global _dir
    d = run_dir / "secrets-tmp"
    try:
        run_dir.mkdir(mode=0o700, exist_ok=True)
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{d} is not a directory", errno.ENOTDIR)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(d, 0o700)
    except OSError as exc:
        raise from_oserror(exc, f"secret files directory {d}") from None
    remove_leftovers(d)
    _dir = d
    return d


def remove_leftovers(d: Path) -> None:
    for root, dirs, files in os.walk(d, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                os.unlink(path)
                log.warning("removed %s, a secret's file left by a storagefs that was "
                            "killed while a tool ran", path)
        for name in dirs:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    shutil.rmtree(path, ignore_errors=True)


def directory() -> Path:
    """The directory; EIO before the state directory is open (no secret goes elsewhere)."""
    if _dir is None:
        raise StorageError("no state directory is open to hold a secret's file", errno.EIO)
    return _dir


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # all of it: a short write on a full disk is continued
        view = view[os.write(fd, view):]


@contextlib.asynccontextmanager
async def secret_file(data: bytes, *, name: str = "secret",
                      what: str = "cannot pass a secret to the tool") -> AsyncIterator[str]:
    """``data`` in a 0600 file ``name`` of a fresh 0700 directory under directory(),
    removed (with its directory) when the block ends, even when it is cancelled."""
    base = directory()
    try:
        d = tempfile.mkdtemp(prefix="t-", dir=base)
    except OSError as exc:
        raise from_oserror(exc, f"{what} through {base}") from None
    path = os.path.join(d, name)
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise from_oserror(exc, f"{what} through {base}") from None
        yield path
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(d)
