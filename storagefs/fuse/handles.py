"""Open files: what a write to each kind of file does, and scratch files.

SPEC "A write is the operation": a command line is run in the write() that
completes it, an XML document is applied in the write() that closes its root
element, and what is left at close (a command without newline, a document
still incomplete) is applied or refused in flush(), which close() reports.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pyfuse3 import FUSEError

from ..core.objects import now_ns
from ..errors import InvalidArgument, StorageError
from ..state import FileMeta
from ..xml.safe import MAX_DOCUMENT_BYTES, IncrementalDocument

MAX_SCRATCH_BYTES = 4 * MAX_DOCUMENT_BYTES

#: apply(data) -> None: run commands / apply a document; raises StorageError
Apply = Callable[[bytes], Awaitable[None]]
#: refused(exc): record a refusal found by the handle itself (bad XML) on the object
Refused = Callable[[StorageError], None]
#: check(line): raise StorageError when a command line can never be valid
Check = Callable[[bytes], None]


@dataclass(eq=False)
class Scratch:
    """A temporary file made by an editor or a config-management tool (not persisted)."""

    data: bytearray = field(default_factory=bytearray)
    meta: FileMeta = field(default_factory=lambda: FileMeta(mode=0o644))
    #: times were set explicitly (utimens): they travel with a rename onto config.xml
    times_set: bool = False

    def __post_init__(self) -> None:
        t = now_ns()
        self.meta.atime_ns = self.meta.mtime_ns = self.meta.ctime_ns = t


class Handle:
    """An open file. ``snapshot`` is what reads return (taken at open)."""

    def __init__(self, snapshot: bytes = b"") -> None:
        self.snapshot = snapshot
        self.failed: int | None = None
        #: the process that opened the file (its Ctrl-C cancels a long write)
        self.pid = 0

    def read(self, off: int, size: int) -> bytes:
        return self.snapshot[off:off + size]

    async def aread(self, off: int, size: int) -> bytes:
        """What a read() gets; a stream (fuse/events.py) may wait here for data."""
        return self.read(off, size)

    async def write(self, off: int, buf: bytes) -> int:
        raise FUSEError(errno.EBADF)

    def release(self) -> None:
        """The last close of the file."""
        return None

    async def flush(self) -> None:
        return None

    def truncate(self, size: int) -> None:
        raise InvalidArgument("this file cannot be truncated")


class ReadHandle(Handle):
    """A generated file opened for reading: the bytes of the moment it was opened."""


class LiveHandle(Handle):
    """A file whose content changes while it is open (progress): each read from
    offset 0 takes a fresh copy; ``seen`` is the version poll() compares with."""

    def __init__(self, produce: Callable[[], bytes], version: Callable[[], int]) -> None:
        super().__init__(produce())
        self.produce = produce
        self.version = version
        self.seen = version()

    def read(self, off: int, size: int) -> bytes:
        if off == 0:
            self.seen = self.version()
            self.snapshot = self.produce()
        return super().read(off, size)


class ScratchHandle(Handle):
    def __init__(self, scratch: Scratch) -> None:
        super().__init__()
        self.scratch = scratch

    def read(self, off: int, size: int) -> bytes:
        return bytes(self.scratch.data[off:off + size])

    async def write(self, off: int, buf: bytes) -> int:
        data = self.scratch.data
        if off + len(buf) > MAX_SCRATCH_BYTES:
            raise FUSEError(errno.EFBIG)
        if off > len(data):
            data.extend(b"\0" * (off - len(data)))
        data[off:off + len(buf)] = buf
        self.scratch.meta.mtime_ns = self.scratch.meta.ctime_ns = now_ns()
        return len(buf)

    def truncate(self, size: int) -> None:
        if size > MAX_SCRATCH_BYTES:
            raise StorageError(f"a scratch file holds at most {MAX_SCRATCH_BYTES} bytes",
                               errno.EFBIG)
        data = self.scratch.data
        if size < len(data):
            del data[size:]
        else:
            data.extend(b"\0" * (size - len(data)))


class DocumentHandle(Handle):
    """config.xml opened for writing: its own buffer, fed to an incremental parser."""

    def __init__(self, snapshot: bytes, apply: Apply, refused: Refused) -> None:
        super().__init__(snapshot)
        self.apply = apply
        self.refused = refused
        self.doc = IncrementalDocument()
        self.applied: bytes | None = None
        self.written = False

    async def write(self, off: int, buf: bytes) -> int:
        if self.failed is not None:
            raise FUSEError(self.failed)
        if off != len(self.doc.data):
            self._refuse(f"config.xml takes one document written from the start "
                         f"(write at offset {off}, expected {len(self.doc.data)})")
        self.written = True
        try:
            complete = self.doc.feed(buf)
        except ValueError as exc:  # XmlError, and lxml's own (e.g. an undeclared prefix)
            self._refuse(str(exc))
        if complete and self.applied is None:
            await self._apply(self.doc.data)
        return len(buf)

    def _refuse(self, reason: str) -> None:
        self.failed = errno.EINVAL
        exc = InvalidArgument(reason)
        self.refused(exc)
        raise exc

    async def _apply(self, data: bytes) -> None:
        try:
            await self.apply(data)
        except StorageError as exc:
            self.failed = exc.errno
            raise
        self.applied = data

    async def flush(self) -> None:
        if self.failed is not None or not self.written:
            return
        data = self.doc.data
        if self.applied is None:
            try:
                self.doc.close()
            except ValueError as exc:
                self._refuse(str(exc))
        if data != self.applied:  # whitespace after the root: keep the bytes exact
            await self._apply(data)

    def truncate(self, size: int) -> None:
        if size != 0 or self.written:
            raise InvalidArgument("config.xml is truncated only to 0, before a document is "
                                  "written")


class CommandHandle(Handle):
    """control, state, autostart: each complete line is run in the write() carrying it.

    Every line is parsed once, here (``parse`` returns the typed command, None for a
    comment), and all complete lines of one write() are checked before any runs, so a
    write with a malformed line changes nothing; blank lines are ignored."""

    def __init__(self, snapshot: bytes, apply: Callable[[Any], Awaitable[None]],
                 parse: Callable[[bytes], Any], refused: Refused | None = None,
                 check_all: Callable[[list], None] | None = None) -> None:
        super().__init__(snapshot)
        self.apply = apply
        self.parse = parse
        #: checks the commands of one write together (e.g. each against the pool state
        #: the ones before it leave)
        self.check_all = check_all
        self.refused = refused
        self.pending = b""

    async def write(self, off: int, buf: bytes) -> int:
        if self.failed is not None:
            raise FUSEError(self.failed)
        pending = self.pending + buf
        if len(pending) > 65536:
            self._fail(InvalidArgument("command longer than 65536 bytes"))
        *lines, rest = pending.split(b"\n")
        cmds = self._parse([line for line in lines if line.strip()])
        if rest.strip():
            # the write ends inside a line: run its lines with that one, once it is whole
            # (next newline or close), so what one write() carries is checked as a whole
            self.pending = pending
            return len(buf)
        self.pending = b""
        await self._run_all(cmds)
        return len(buf)

    def _parse(self, lines: list[bytes]) -> list[Any]:
        try:
            cmds = [c for c in (self.parse(line) for line in lines) if c is not None]
            if self.check_all is not None and cmds:
                self.check_all(cmds)
            return cmds
        except StorageError as exc:
            self._fail(exc)
            raise  # unreachable: _fail raises

    async def _run_all(self, cmds: list[Any]) -> None:
        for cmd in cmds:
            await self._run(cmd)

    def _fail(self, exc: StorageError) -> None:
        self.failed = exc.errno
        self.pending = b""
        if self.refused is not None and not exc.recorded:
            self.refused(exc)
        raise exc

    async def _run(self, cmd: Any) -> None:
        try:
            await self.apply(cmd)
        except StorageError as exc:
            self.failed = exc.errno
            self.pending = b""
            raise

    async def flush(self) -> None:
        if self.failed is None and self.pending.strip():
            lines = [line for line in self.pending.split(b"\n") if line.strip()]
            self.pending = b""
            await self._run_all(self._parse(lines))

    def truncate(self, size: int) -> None:
        return None  # O_TRUNC on a command file means nothing


class ValueHandle(Handle):
    """A secret's value: every write sets the value to all bytes written so far."""

    def __init__(self, apply: Apply) -> None:
        super().__init__(b"")
        self.apply = apply
        self.data = bytearray()

    async def write(self, off: int, buf: bytes) -> int:
        if self.failed is not None:
            raise FUSEError(self.failed)
        if off != len(self.data):
            self.failed = errno.EINVAL
            raise InvalidArgument("a secret value is written from the start, in order")
        self.data.extend(buf)
        try:
            await self.apply(bytes(self.data))
        except StorageError as exc:
            self.failed = exc.errno
            raise
        return len(buf)

    def truncate(self, size: int) -> None:
        if size != 0 or self.data:
            raise InvalidArgument("a secret value is truncated only to 0, before it is "
                                  "written")
