"""The event stream: one line per change the core accepts or sees (``MNT/events``).

Each part of the core emits at the point where a change is accepted (a pool started,
a volume created, a device added ...), in the trio thread, with one call::

    reg.events.of(pool, "started", "volumes=3")

Every reader has a stream of its own, from the moment it subscribes: a bounded buffer
of lines with byte offsets (what the file's reads slice), so a reader that does not
read never holds up storagefs or another reader. When its buffer is full, new events
are counted instead of kept, and once it has room again it gets one line
``... storagefs events lost N events`` where they would have been.

A line is ``TIME KIND NAME EVENT [DETAIL]``: an ISO 8601 time with milliseconds and
the UTC offset, the kind of object (``pool``, ``volume``, ``secret``, ``device``, or
``storagefs`` for the stream itself), its name (``P``, ``P/V``, a UUID, a libvirt
node-device name) with spaces, backslashes and anything unprintable written ``\\xHH``
so that the first four fields split on spaces, the event word, and a free detail.
"""

from __future__ import annotations

import collections
import datetime
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

from ..errors import StorageError

if TYPE_CHECKING:
    from ..devices import DeviceIndex
    from .objects import Owner

log = logging.getLogger(__name__)

#: lines one reader may hold (read but retained for a seek back, or not read yet);
#: a line is shared by all readers, so this costs a pointer per line per reader
BUFFER_LINES = 10000
#: readers (open files) at once: a blocked read holds one of pyfuse3's worker tasks
MAX_READERS = 64
#: readers one user (uid of the opener) may have at once: root's share is its own (the
#: users other than root share the rest, MAX_READERS - READERS_PER_USER), so no user
#: can take the readers another one needs
READERS_PER_USER = 16
#: longest detail kept on a line
MAX_DETAIL = 1000

#: what each snapshot command emits on its volume
SNAPSHOT_EVENTS = {"create": "snapshot-created", "revert": "reverted",
                   "delete": "snapshot-deleted"}


def buffer_lines() -> int:
    """The per-reader bound: BUFFER_LINES, or $STORAGEFS_EVENT_BUFFER (lines)."""
    try:
        return max(1, int(os.environ.get("STORAGEFS_EVENT_BUFFER", BUFFER_LINES)))
    except ValueError:
        return BUFFER_LINES


def escape_name(name: str) -> str:
    """A name as one space-free field: space, backslash and unprintable characters
    (as UTF-8 bytes) become ``\\xHH``; ``/`` stays (it separates pool and volume)."""
    out = []
    for c in name:
        if c == "\\" or c.isspace() or not c.isprintable():
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogateescape"))
        else:
            out.append(c)
    return "".join(out)


def one_line(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:MAX_DETAIL]


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


def event_line(kind: str, name: str, event: str, detail: str = "") -> bytes:
    tail = f" {one_line(detail)}" if detail else ""
    return f"{now_iso()} {kind} {escape_name(name)} {event}{tail}\n".encode()


def subject(obj: Owner) -> tuple[str, str]:
    """(kind, name) of a pool, volume or secret, as event lines name them."""
    from .objects import Pool, Secret, Volume

    if isinstance(obj, Volume):
        return "volume", f"{obj.pool.name}/{obj.name}"
    if isinstance(obj, Pool):
        return "pool", obj.name
    if isinstance(obj, Secret):
        return "secret", obj.uuid
    raise TypeError(f"no events for {obj!r}")


class Reader:
    """One reader's stream: lines at byte offsets ``start`` .. ``end``, at most
    ``limit`` of them; what was dropped meanwhile is counted in ``lost``."""

    def __init__(self, bus: EventBus, limit: int, first: bytes) -> None:
        self.bus = bus
        self.limit = limit
        self.lines: collections.deque[bytes] = collections.deque()
        self.start = 0
        self.end = 0
        self.lost = 0
        self.closed = False
        #: time of the last line (st_mtime of the file: tail -f looks at it)
        self.changed_ns = 0
        self._changed = trio.Event()
        #: called once at the next line (poll() handles waiting for data)
        self.on_data: dict[object, Callable[[], None]] = {}
        self._append(first)

    def push(self, line: bytes) -> None:
        if self.closed:
            return
        if len(self.lines) >= self.limit:
            self.lost += 1
            self.bus.lost += 1
            return
        self._append(line)

    def _append(self, line: bytes) -> None:
        self.lines.append(line)
        self.end += len(line)
        self.changed_ns = time.time_ns()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        waiting, self.on_data = self.on_data, {}
        for notify in waiting.values():
            try:
                notify()
            except Exception:  # a poll handle the kernel dropped must not stop the others
                log.debug("poll notification failed", exc_info=True)

    def release_before(self, offset: int) -> None:
        """Every reader of this stream asks only for bytes from ``offset`` on: the
        lines before it are dropped, and if events were lost, the reader is told."""
        while self.lines and self.start + len(self.lines[0]) <= offset:
            self.start += len(self.lines.popleft())
        if self.lost and len(self.lines) < self.limit:
            n, self.lost = self.lost, 0
            self._append(event_line("storagefs", "events", "lost", f"{n} events"))

    def read(self, offset: int, size: int) -> bytes:
        """Bytes from ``offset`` (at most ``size``) that the stream holds now."""
        if offset < self.start or offset >= self.end or size <= 0:
            return b""
        out = bytearray()
        pos = self.start
        for line in self.lines:
            nxt = pos + len(line)
            if nxt > offset:
                out += line[max(0, offset - pos):]
                if len(out) >= size:
                    break
            pos = nxt
        return bytes(out[:size])

    async def wait(self) -> None:
        """Until the next line, or the stream is closed."""
        if not self.closed:
            await self._changed.wait()

    def close(self) -> None:
        self.closed = True
        self._wake()


class EventBus:
    """Where the core's parts emit; every reader gets each line."""

    def __init__(self, limit: int | None = None, max_readers: int = MAX_READERS,
                 per_user: int = READERS_PER_USER) -> None:
        self.limit = limit or buffer_lines()
        self.max_readers = max_readers
        self.per_user = per_user
        #: open files of the stream by the uid of the process that opened them
        self.by_uid: collections.Counter[int] = collections.Counter()
        self.readers: set[Reader] = set()
        #: open files of the stream (a reader is shared by the files of one inode)
        self.handles = 0
        #: events emitted, by (kind, event): the metrics' operations by kind
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        #: events readers did not get (their buffer was full)
        self.lost = 0
        self.closed = False

    # ---- emitting -------------------------------------------------------------------
    def emit(self, kind: str, name: str, event: str, detail: str = "") -> None:
        self.counts[(kind, event)] += 1
        if not self.readers:
            return
        line = event_line(kind, name, event, detail)
        log.debug("event: %s", line.decode(errors="replace").rstrip("\n"))
        for reader in self.readers:
            reader.push(line)

    def of(self, obj: Owner, event: str, detail: str = "") -> None:
        """An event of a pool, volume or secret."""
        kind, name = subject(obj)
        self.emit(kind, name, event, detail)

    def volume(self, pool: str, name: str, event: str, detail: str = "") -> None:
        """An event of a volume known by name (made or gone outside storagefs)."""
        self.emit("volume", f"{pool}/{name}", event, detail)

    def devices(self, index: DeviceIndex, added: Iterable[str], removed: Iterable[str],
                changed: Iterable[str]) -> None:
        """What a batch of kernel uevents changed in the device index."""
        for event, names in (("removed", removed), ("added", added), ("changed", changed)):
            for name in sorted(names):
                dev = index.get(name)
                detail = "" if dev is None else " ".join(
                    f"{k}={dev.values[k]}" for k in ("devnode", "size") if k in dev.values)
                self.emit("device", name, event, detail)

    # ---- readers ----------------------------------------------------------------------
    def attach(self, uid: int = 0) -> None:
        """One more open file of the stream by user ``uid``, or ENFILE when that user
        has its share (READERS_PER_USER), or when the users other than root together
        have theirs (all but root's share of max_readers)."""
        if self.closed:
            raise StorageError("storagefs is stopping", errno.ESHUTDOWN)
        share = min(self.per_user, self.max_readers)
        if self.by_uid[uid] >= share:
            raise StorageError(f"uid {uid} has {self.by_uid[uid]} readers of events "
                               f"already: at most {share} per user", errno.ENFILE)
        others = self.handles - self.by_uid[0]
        if uid != 0 and others >= self.max_readers - share:
            raise StorageError(f"{others} readers of events by users other than root "
                               f"already: at most {self.max_readers - share} "
                               "(root's share is kept)", errno.ENFILE)
        self.by_uid[uid] += 1
        self.handles += 1

    def detach(self, uid: int = 0) -> None:
        if self.by_uid[uid] > 0:
            self.by_uid[uid] -= 1
            if not self.by_uid[uid]:
                del self.by_uid[uid]
        self.handles = max(0, self.handles - 1)

    def subscribe(self, detail: str = "") -> Reader:
        """A new stream, starting with its own ``opened`` line (so that the file has a
        size at once: tail reads it and then follows; a script can wait for it to
        know it is listening)."""
        first = event_line("storagefs", "events", "opened", detail)
        reader = Reader(self, self.limit, first)
        self.readers.add(reader)
        return reader

    def unsubscribe(self, reader: Reader) -> None:
        self.readers.discard(reader)
        reader.close()

    def close(self) -> None:
        """storagefs stops: every reader gets end of file (a blocked read returns)."""
        self.closed = True
        for reader in list(self.readers):
            reader.close()
        self.readers.clear()
