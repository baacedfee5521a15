"""inotify on pool directories, so files made or removed by other programs show up
without a refresh and without walking the directory on the hot path."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

#: callback(directory, name or None for "rescan everything", gone: bool)
Callback = Callable[[str, str | None, bool], None]


class DirWatcher:
    """One inotify instance for all watched directories."""

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._wd_to_dir: dict[int, str] = {}
        self._dir_to_wd: dict[str, int] = {}

    def add(self, directory: str) -> None:
        if directory in self._dir_to_wd:
            return
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            log.warning("cannot watch %s: %s", directory, os.strerror(err))
            return
        self._wd_to_dir[wd] = directory
        self._dir_to_wd[directory] = wd

    def remove(self, directory: str) -> None:
        wd = self._dir_to_wd.pop(directory, None)
        if wd is not None:
            self._wd_to_dir.pop(wd, None)
            _libc.inotify_rm_watch(self.fd, wd)

    async def run(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        pos = 0
        while pos + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, pos)
            name = data[pos + _HEADER.size:pos + _HEADER.size + length].rstrip(b"\0")
            pos += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                for directory in list(self._dir_to_wd):
                    self.callback(directory, None, False)
                continue
            directory = self._wd_to_dir.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:  # the directory went away: the watch is gone
                self._wd_to_dir.pop(wd, None)
                self._dir_to_wd.pop(directory, None)
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                self.callback(directory, None, True)
                continue
            if mask & IN_ISDIR or not name:
                continue
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.callback(directory, text, bool(mask & (IN_DELETE | IN_MOVED_FROM)))

    def close(self) -> None:
        os.close(self.fd)
