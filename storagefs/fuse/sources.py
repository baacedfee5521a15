"""sources/: storage that could become a pool, as ready pool documents (virsh
find-storage-pool-sources), served from the core's discovery cache (core/sources.py).

    sources/TYPE/NAME.xml        what discovery found (local types: fs, disk, logical ...)
    sources/TYPE/query           write a host (or a device, a VG ...) to ask; read: the
                                 queries shown
    sources/TYPE/QUERY/NAME.xml  what that query found ('/' in QUERY written '!')
    sources/TYPE/error           the last failed discovery, and why

``NAME`` is the pool name the document proposes (its ``<name>``), so that
``mkdir pools/NAME; cp sources/TYPE/NAME.xml pools/NAME/config.xml`` defines it as is.
Listing a type only reads the cache (and may wake its background refresh).
"""

from __future__ import annotations

from typing import Any

from ..core.sources import parse_query
from ..errors import NotFound, NotPermitted
from .files import CommandFile
from .node import Caller, Dir, Generated, Node


class SourcesDir(Dir):
    __slots__ = ()

    def names(self, caller: Caller) -> list[str]:
        return sorted(self.t.core.sources.kinds)

    def child(self, name: str, caller: Caller) -> Node:
        kind = self.t.core.sources.kinds.get(name)
        if kind is None:
            raise NotFound(name)
        return SourceTypeDir(self.t, (*self.path, name), kind)

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        raise NotPermitted("sources/ holds one directory per pool type that can discover "
                           "storage; nothing can be made here")


class _OfKind:
    __slots__ = ()
    sk: Any

    def owner(self) -> Any:
        return self.sk


class SourceTypeDir(_OfKind, Dir):
    __slots__ = ("sk",)

    def __init__(self, t, path, kind) -> None:
        super().__init__(t, path)
        self.sk = kind

    def key(self) -> tuple[Any, ...]:
        return (self.sk,)

    def names(self, caller: Caller) -> list[str]:
        src = self.t.core.sources
        src.looked_at(self.sk)
        return [*sorted(src.shown(self.sk.type)), "error", "query",
                *sorted(self.sk.queries)]

    def child(self, name: str, caller: Caller) -> Node:
        path = (*self.path, name)
        if name == "error":
            return SourceError(self.t, path, self.sk)
        if name == "query":
            return SourceQuery(self.t, path, self.sk)
        if name in self.sk.queries:
            return QueryDir(self.t, path, self.sk, self.sk.queries[name])
        doc = self.t.core.sources.shown(self.sk.type).get(name)
        if doc is None:
            raise NotFound(name)
        return SourceDocument(self.t, path, self.sk, None, doc)

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        raise NotPermitted(f"a query is asked by writing it: echo HOST > "
                           f"sources/{self.sk.type}/query")

    async def rmdir(self, name: str, caller: Caller) -> None:
        if name in self.sk.queries:
            self.t.core.sources.forget(self.sk.type, name)
            return
        await super().rmdir(name, caller)


class QueryDir(_OfKind, Dir):
    """The documents one query found; ``rmdir`` forgets them."""

    __slots__ = ("sk", "query")

    def __init__(self, t, path, kind, query) -> None:
        super().__init__(t, path)
        self.sk, self.query = kind, query

    def key(self) -> tuple[Any, ...]:
        return (self.query,)

    def alive(self) -> bool:
        return self.sk.queries.get(self.query.dirname) is self.query

    def mtime_ns(self) -> int:
        return self.query.asked_ns

    def names(self, caller: Caller) -> list[str]:
        return sorted(self.t.core.sources.shown(self.sk.type, self.query.dirname))

    def child(self, name: str, caller: Caller) -> Node:
        doc = self.t.core.sources.shown(self.sk.type, self.query.dirname).get(name)
        if doc is None:
            raise NotFound(name)
        return SourceDocument(self.t, (*self.path, name), self.sk, self.query.dirname, doc)


class SourceDocument(_OfKind, Generated):
    """One proposed pool document. It stands for these bytes: when discovery changes
    them, or a pool takes the storage, this file is gone (a new one may come)."""

    __slots__ = ("sk", "dirname", "doc")

    def __init__(self, t, path, kind, dirname: str | None, doc: bytes) -> None:
        super().__init__(t, path)
        self.sk, self.dirname, self.doc = kind, dirname, doc

    def key(self) -> tuple[Any, ...]:
        return (self.sk.type, self.dirname, self.name, self.doc)

    def alive(self) -> bool:
        if self.dirname is not None and self.dirname not in self.sk.queries:
            return False
        return self.t.core.sources.shown(self.sk.type, self.dirname).get(self.name) == self.doc

    def version(self) -> object:
        return 0  # the bytes never change: another document is another file

    def render(self) -> bytes:
        return self.doc


class SourceError(_OfKind, Generated):
    __slots__ = ("sk",)

    def __init__(self, t, path, kind) -> None:
        super().__init__(t, path)
        self.sk = kind

    def render(self) -> bytes:
        return self.sk.error.encode()


class SourceQuery(_OfKind, CommandFile):
    """Each line written is a query, run in the write() that ends it."""

    __slots__ = ("sk",)

    def __init__(self, t, path, kind) -> None:
        super().__init__(t, path)
        self.sk = kind

    def render(self) -> bytes:
        return "".join(f"{q.text}\n" for q in self.sk.queries.values()).encode()

    def parse(self, line: bytes) -> Any:
        return parse_query(line)

    async def run(self, text: str) -> None:
        await self.t.core.sources.query(self.sk.type, text)
