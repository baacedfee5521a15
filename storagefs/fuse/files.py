"""Writable files: documents (config.xml), command files (control, state, autostart) and
the bytes they carry to the core. SPEC "A write is the operation": see handles.py for
when a document or a command line is applied."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import StorageError
from ..state import FileMeta
from .handles import CommandHandle, DocumentHandle, Handle, Scratch
from .node import Caller, Generated


class DocumentFile(Generated):
    """config.xml: reads back the last accepted document byte for byte; a write gets its
    own buffer and is applied when the document is complete."""

    writable = True
    __slots__ = ()

    async def apply(self, data: bytes, meta: FileMeta | None) -> None:
        raise NotImplementedError

    def meta(self) -> FileMeta | None:
        owner = self.owner()
        return owner.file_meta() if owner is not None else None

    def refused(self, exc: StorageError) -> None:
        self.t.core.rec.note_refusal(self.owner(), "define", exc)

    def open_write(self, caller: Caller) -> Handle:
        return DocumentHandle(self.content(), lambda data: self.apply(data, None), self.refused)

    async def replace_with(self, scratch: Scratch) -> None:
        """A scratch file renamed onto config.xml: its bytes, mode, owner (and times, when
        they were set explicitly) become the document's."""
        old = self.meta()
        meta = dataclasses.replace(scratch.meta)
        if not scratch.times_set and old is not None:
            meta.atime_ns, meta.mtime_ns = old.atime_ns, old.mtime_ns
        await self.apply(bytes(scratch.data), meta)

    def set_meta(self, meta: FileMeta) -> None:
        self.t.core.set_config_meta(self.owner(), meta)


class CommandFile(Generated):
    """A file whose lines are commands; reading it tells what is valid now."""

    writable = True
    __slots__ = ()

    def parse(self, line: bytes) -> Any:
        """The typed command of a line (parsing.py), None for a comment; StorageError
        when it can never be valid (before any line runs)."""
        raise NotImplementedError

    def check_all(self, cmds: list[Any]) -> None:
        return None

    async def run(self, cmd: Any) -> None:
        raise NotImplementedError

    def refused(self, exc: StorageError) -> None:
        self.t.core.rec.note_refusal(self.owner(), self.name, exc)

    def open_write(self, caller: Caller) -> Handle:
        return CommandHandle(self.content(), self.run, self.parse, self.refused,
                             self.check_all)

    async def replace_with(self, scratch: Scratch) -> None:
        handle = self.open_write(Caller())
        await handle.write(0, bytes(scratch.data))
        await handle.flush()
