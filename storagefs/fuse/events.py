"""``MNT/events``: the core's event stream as a file that cat, tail -f, ``while read``
and poll()/select()/epoll readers can follow.

Every lookup of ``events`` gets an inode of its own (entry and attribute timeouts of
0), and the first open of an inode subscribes a stream of its own (core/events.py),
so that the file's size is exact for its reader: it is the number of bytes of that
stream so far, and its mtime the time of its last line. That is what ``tail -f``
needs (on FUSE it polls fstat, and reads when the size grew); a stream starts with
an ``opened`` line, so tail's first look finds a line and then follows. Reads honour
their offset: a read at the end waits for the next line (``cat``) unless the reader
set O_NONBLOCK (``tail -f`` does once it follows, and reads until EAGAIN: it gets
EAGAIN; pyfuse3 does not pass a read's flags, so they are looked up in /proc), a read
before the end returns what is there without waiting (bash's ``read``, which reads a
buffer and seeks back to the end of the line, finds the rest again), a read past the
end returns end of file.

A waiting read holds only its own pyfuse3 worker task, never storagefs: it wakes at
the next line, when storagefs stops (end of file), or when the process that opened
the file gets a stop signal (EINTR: Ctrl-C, ``timeout``, kill), as writes do in
interrupt.py. Two opens within the same kernel tick may share an inode; they then
share one stream (each still gets every line from the first open on).
"""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING, Any

import trio
from pyfuse3 import FUSEError

from ..core.events import Reader
from .handles import Handle
from .interrupt import POLL_SECONDS, stop_signal_pending
from .node import Caller, File

if TYPE_CHECKING:
    import pyfuse3



def _fdinfo(pid: int, fd: int) -> dict[str, str]:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def find_fd(pid: int, ino: int) -> int | None:
    """The descriptor in ``pid`` that has our file of inode ``ino`` open, if any.
    /proc's fd links and fdinfo are read, never the file itself (that would be a
    request to this very process)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for name in fds:
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").endswith("/events"):
                continue
            if int(_fdinfo(pid, int(name)).get("ino", "-1")) == ino:
                return int(name)
        except (OSError, ValueError):
            continue
    return None


def nonblocking(pid: int, fd: int | None, ino: int) -> tuple[bool, int | None]:
    """Whether ``pid`` reads the file with O_NONBLOCK (as ``tail -f`` does once it
    follows), and the descriptor it has it under. pyfuse3 does not pass a read's
    flags, so they are looked up in /proc when a read would wait."""
    for known in ([fd] if fd is not None else []) + [None]:
        cand = find_fd(pid, ino) if known is None else known
        if cand is None:
            return False, None
        try:
            info = _fdinfo(pid, cand)
            if int(info.get("ino", "-1")) == ino:
                return bool(int(info.get("flags", "0"), 8) & os.O_NONBLOCK), cand
        except (OSError, ValueError):
            pass
    return False, None


def stop_pending(pid: int) -> bool:
    """True when ``pid`` has a stop signal pending. A process that is gone is not
    taken as a stop: the file may have been handed to a child that reads on."""
    return stop_signal_pending(pid, if_gone=False)


class EventsFile(File):
    """The root's ``events``: one node (and so one stream) per inode."""

    #: operations.py gives each lookup an inode of its own and opens it as a stream
    streaming = True
    __slots__ = ("reader", "handles")

    def __init__(self, t, path) -> None:
        super().__init__(t, path)
        self.reader: Reader | None = None
        self.handles: set[StreamHandle] = set()

    def key(self) -> tuple[Any, ...]:
        return (id(self),)

    @property
    def bus(self):
        return self.t.core.events

    def size(self) -> int:
        return self.reader.end if self.reader is not None else 0

    def mtime_ns(self) -> int:
        if self.reader is not None:
            return self.reader.changed_ns
        return self.t.mounted_ns

    def open_stream(self, caller: Caller) -> StreamHandle:
        self.bus.attach(caller.uid)
        if self.reader is None or self.reader.closed:
            self.reader = self.bus.subscribe(f"pid={caller.pid}")
        handle = StreamHandle(self, caller.pid, caller.uid)
        self.handles.add(handle)
        return handle

    def trim(self) -> None:
        """Drop what no handle of this inode asks for any more."""
        if self.reader is not None and self.handles:
            self.reader.release_before(min(h.low for h in self.handles))

    def closed(self, handle: StreamHandle) -> None:
        self.handles.discard(handle)
        self.bus.detach(handle.uid)
        if not self.handles and self.reader is not None:
            self.bus.unsubscribe(self.reader)
        else:
            self.trim()


class StreamHandle(Handle):
    """One open file of ``events``."""

    def __init__(self, node: EventsFile, pid: int, uid: int = 0) -> None:
        super().__init__()
        self.node = node
        self.reader = node.reader
        self.pid = pid
        #: who opened it: its open counts against that user's share of readers
        self.uid = uid
        #: where its last read started (the stream keeps what it may read again)
        self.low = 0
        #: where its last read ended (poll: readable when the stream is longer)
        self.pos = 0
        self._poll: pyfuse3.PollHandle | None = None
        self.released = False
        #: the inode number (set at open): how the reader's descriptor is found
        self.ino = 0
        self._fd: int | None = None

    def read(self, off: int, size: int) -> bytes:
        return self.reader.read(off, size)

    async def aread(self, off: int, size: int) -> bytes:
        r = self.reader
        self.low = off
        self.node.trim()
        while off >= r.end and not r.closed:
            if off > r.end:
                return b""  # past the end (a seek): nothing there, and nothing to wait for
            nb, self._fd = nonblocking(self.pid, self._fd, self.ino)
            if nb:  # O_NONBLOCK: tail -f, asyncio ... read until EAGAIN
                raise FUSEError(errno.EAGAIN)
            with trio.move_on_after(POLL_SECONDS):
                await r.wait()
            if r.end > off:
                break
            if stop_pending(self.pid):
                raise FUSEError(errno.EINTR)
        data = r.read(off, size)
        self.pos = off + len(data)
        return data

    def poll(self, poll_handle: pyfuse3.PollHandle | None) -> int:
        r = self.reader
        if r.closed:
            return select.POLLIN | select.POLLHUP
        if r.end > self.pos:
            return select.POLLIN
        if poll_handle is not None:
            self._poll = poll_handle  # the newest replaces the last (pyfuse3's rule)
            r.on_data[self] = self._wake
        return 0

    def _wake(self) -> None:
        handle, self._poll = self._poll, None
        if handle is not None:
            try:
                handle.notify()
            except OSError:
                pass

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.reader.on_data.pop(self, None)
            self._poll = None
            self.node.closed(self)
