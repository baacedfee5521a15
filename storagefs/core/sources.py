"""Discovery: storage that could become a pool (sources/), cached in the core.

Every backend that overrides ``find_sources`` is a *kind* of source, found generically
over ``backends.BACKENDS`` (a pool type that learns discovery shows up by itself):

- a local kind (its pool type names no host: fs, disk, logical, zfs) is listed in the
  background: at mount, after device events (debounced), and when someone lists it
  while the listing is older than :data:`STALE_SECONDS`. A read never runs a tool; it
  may only wake the background task;
- every kind takes a query (``echo HOST > sources/TYPE/query``): ``find_sources(HOST)``
  runs in the write, in the trio loop (other requests keep being answered), within
  :data:`QUERY_TIMEOUT`; its documents are kept under the query's own directory. A
  query of a local kind is asked again with each background refresh; a remote one only
  when written again.

What the tree shows is computed from the cache and the registry at read time, in
memory: a document whose storage a defined pool already uses (its devices, a partition
of them or the disk they are on, the same source name on the same hosts, or an equal
``source_key``) is left out, and a proposed name that a pool already has becomes
``NAME-TYPE`` (then ``NAME-TYPE-2`` ...), with ``<name>`` rewritten to match, so that
``mkdir pools/NAME; cp sources/TYPE/NAME.xml pools/NAME/config.xml`` defines it as is.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .. import hostcmd, pathrules
from ..backends import BACKENDS, PoolBackend, backend_class
from ..errors import Busy, InvalidArgument, NotFound, StorageError
from ..names import check_name, fit_name
from ..sourcerules import check_query, check_source
from ..xml.pool import PoolDef, parse_pool, rename_document
from ..xml.pooltypes import POOL_TYPE_INFO, SOURCE_HOST, SOURCE_NAME
from .objects import now_ns
from .recording import error_line

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

#: a listing older than this is refreshed (in the background) when someone reads it
STALE_SECONDS = 2.0
#: events arriving within this time are handled by one refresh
SETTLE_SECONDS = 0.2
#: at most one background refresh per this many seconds
MIN_INTERVAL = 1.0
#: time limit of one discovery (a listing, a query)
QUERY_TIMEOUT = 60.0
MAX_QUERY_BYTES = 1024
#: names in sources/TYPE/ that are not query directories
TYPE_FILES = ("error", "query")


def can_discover(cls: type[PoolBackend]) -> bool:
    return getattr(cls.find_sources, "__func__", None) is not \
        getattr(PoolBackend.find_sources, "__func__", None)


@dataclass(eq=False)
class Candidate:
    """One document a backend proposed."""

    name: str
    xml: bytes
    definition: PoolDef
    #: resolved paths of its devices, the disk of a partition and the partitions of a disk
    related: frozenset[str] = frozenset()


@dataclass(eq=False)
class Query:
    text: str
    dirname: str
    candidates: list[Candidate] = field(default_factory=list)
    asked_ns: int = field(default_factory=now_ns)


class SourceKind:
    """What sources/TYPE/ shows: a local listing, queries and their results, the error
    of the last failed discovery."""

    def __init__(self, pool_type: str, backend: type[PoolBackend]) -> None:
        self.type = pool_type
        self.backend = backend
        #: its pool type names a host: it has no listing, only queries
        self.remote = POOL_TYPE_INFO[pool_type].has(SOURCE_HOST)
        self.found: list[Candidate] = []
        self.queries: dict[str, Query] = {}
        #: query directories whose discovery runs now
        self.running: set[str] = set()
        self.error = ""
        #: monotonic time of the last background listing (0: none yet)
        self.refreshed = 0.0
        self.version = 0
        self.changed_ns = now_ns()

    @property
    def name(self) -> str:
        return self.type

    @property
    def tree_path(self) -> tuple[str, ...]:
        return ("sources", self.type)

    @property
    def description(self) -> str:
        return f"sources {self.type}"

    def touch(self) -> None:
        self.changed_ns = now_ns()
        self.version += 1


# ---- pure helpers ---------------------------------------------------------------------
def parse_query(line: bytes) -> str | None:
    """The query a line of sources/TYPE/query asks (None: blank or a # comment)."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidArgument("a query is UTF-8 text") from None
    if not text or text.startswith("#"):
        return None
    if len(text.encode()) > MAX_QUERY_BYTES:
        raise InvalidArgument(f"a query is at most {MAX_QUERY_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidArgument("a query cannot hold control characters")
    query_dirname(text)
    return text


def query_dirname(text: str) -> str:
    """The directory a query's documents are shown in: the query with '/' written '!'
    (as devices/by-devnode/ does), shortened to fit a name."""
    name = fit_name(text.replace("/", "!"))
    check_name(name, "query")
    if name in TYPE_FILES or name.endswith(".xml"):
        raise InvalidArgument(f"query '{text}' would be shown as '{name}', which is a file "
                              "name of sources/")
    return name


def related_devices(paths: list[str]) -> frozenset[str]:
    """Resolved device paths with the disk of each partition and the partitions of each
    disk (sysfs): a pool on any of them uses the others' storage too."""
    found: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        found.add(real)
        kname = os.path.basename(real)
        base = f"/sys/class/block/{kname}"
        if os.path.exists(f"{base}/partition"):
            disk = os.path.basename(os.path.dirname(os.path.realpath(base)))
            found.add(f"/dev/{disk}")
            continue
        try:
            entries = os.listdir(base)
        except OSError:
            continue
        found.update(f"/dev/{e}" for e in entries if os.path.exists(f"{base}/{e}/partition"))
    return frozenset(found)


def unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3`` ... whichever is not taken."""
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _hosts(defn: PoolDef) -> tuple[str, ...]:
    return tuple(sorted(h.name for h in defn.source.hosts))


class Sources:
    """The discovery cache of one mount (``reg.sources``)."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self.kinds: dict[str, SourceKind] = {
            t: SourceKind(t, cls) for t, cls in sorted(BACKENDS.items()) if can_discover(cls)}
        self._wake = trio.Event()
        self._wake.set()  # the first listing, as soon as the background task runs
        #: (type, query dirname or None) -> (versions, what the tree shows)
        self._views: dict[tuple[str, str | None], tuple[tuple, dict[str, bytes]]] = {}

    # ---- the background ------------------------------------------------------------
    async def run_background(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._loop)

    def wanted(self) -> None:
        """Something may have changed: list again soon (never now, never here)."""
        self._wake.set()

    def devices_changed(self, *_changes: object) -> None:
        self.wanted()

    def looked_at(self, kind: SourceKind) -> None:
        """Someone lists sources/TYPE: a listing gone stale is refreshed behind them."""
        if time.monotonic() - kind.refreshed > STALE_SECONDS:
            self.wanted()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await trio.sleep(SETTLE_SECONDS)
            self._wake = trio.Event()
            try:
                await self.refresh()
            except Exception:
                log.exception("source discovery failed; sources/ may lag")
            await trio.sleep(MIN_INTERVAL)

    async def refresh(self) -> None:
        """List every local kind again, and ask its queries again."""
        for kind in self.kinds.values():
            if kind.remote:
                continue
            await self._list(kind)
            for q in list(kind.queries.values()):
                await self._ask_again(kind, q)

    async def _list(self, kind: SourceKind) -> None:
        try:
            found = await self._discover(kind, None)
        except StorageError as exc:
            line = error_line("discover", exc.reason)
            if line.split(" ", 1)[1] != kind.error.split(" ", 1)[-1]:
                # shown in sources/TYPE/error; a host without the type's tools or daemon
                # (no zfs-fuse running) is not something wrong with storagefs
                log.info("sources %s: discovery failed: %s", kind.type, exc.reason)
                kind.error = line
                kind.touch()
                self._notify(kind)
            kind.refreshed = time.monotonic()
            return
        kind.refreshed = time.monotonic()
        self._replace(kind, kind.found, found, lambda new: setattr(kind, "found", new))

    async def _ask_again(self, kind: SourceKind, q: Query) -> None:
        if q.dirname in kind.running:
            return
        try:
            found = await self._discover(kind, q.text)
        except StorageError as exc:
            log.info("sources %s: query '%s' asked again: %s", kind.type, q.text, exc.reason)
            found = []
        if kind.queries.get(q.dirname) is q:
            self._replace(kind, q.candidates, found, lambda new: setattr(q, "candidates", new))

    def _replace(self, kind: SourceKind, old: list[Candidate], new: list[Candidate],
                 store) -> None:
        if [(c.name, c.xml) for c in old] == [(c.name, c.xml) for c in new]:
            return
        store(new)
        kind.touch()
        self._notify(kind)

    def _notify(self, kind: SourceKind) -> None:
        self.reg.listener.subtree_changed(kind.tree_path)

    async def _discover(self, kind: SourceKind, query: str | None) -> list[Candidate]:
        """find_sources within the time limit, its documents checked and named."""
        limit = hostcmd.limit(QUERY_TIMEOUT)
        try:
            with trio.fail_after(limit):
                docs = await kind.backend.find_sources(query)
        except trio.TooSlowError:
            raise StorageError(f"no answer within {limit:g} s", errno.ETIMEDOUT) from None
        found: list[Candidate] = []
        names: set[str] = set()
        for doc in docs:
            xml = doc.encode() if isinstance(doc, str) else bytes(doc)
            try:
                defn = parse_pool(xml)
                check_name(defn.name, "pool name")
                check_source(defn)
            except (ValueError, StorageError) as exc:
                log.warning("sources %s: a document find_sources gave is refused: %s",
                            kind.type, exc)
                continue
            if defn.type != kind.type:
                log.warning("sources %s: find_sources gave a pool of type '%s'", kind.type,
                            defn.type)
                continue
            name = unique(defn.name, names)
            if name != defn.name:
                xml = rename_document(xml, name)
                defn.name = name
            names.add(name)
            devices = [d.path for d in defn.source.devices if d.path]
            related = await trio.to_thread.run_sync(related_devices, devices)
            found.append(Candidate(name, xml, defn, related))
        return found

    # ---- queries -----------------------------------------------------------------------
    def kind(self, pool_type: str) -> SourceKind:
        kind = self.kinds.get(pool_type)
        if kind is None:
            raise NotFound(f"pool type '{pool_type}' offers no discovery")
        return kind

    async def query(self, pool_type: str, text: str) -> None:
        """``echo QUERY > sources/TYPE/query``: discover, keep the documents under the
        query's directory (replacing those of the same query)."""
        kind = self.kind(pool_type)
        with self.reg.rec.recording(kind, f"query {text}"):
            dirname = query_dirname(text)
            check_query(text, POOL_TYPE_INFO[kind.type].has(SOURCE_HOST))
            await self._check_outside_mount(text)
            if dirname in kind.running:
                raise Busy(f"query '{text}' is running already")
            kind.running.add(dirname)
            try:
                found = await self._discover(kind, text)
            finally:
                kind.running.discard(dirname)
        kind.queries[dirname] = Query(text, dirname, found)
        kind.touch()
        self._notify(kind)
        log.info("sources %s: query '%s' found %d", kind.type, text, len(found))

    async def _check_outside_mount(self, text: str) -> None:
        """A query naming a path inside the storagefs mount (or another storagefs mount
        of the host) is refused (EINVAL) before anything looks at it: a stat of it from
        storagefs itself would wait on storagefs. The path is checked as written, then
        resolved in a worker thread (pathrules.resolve)."""
        path = text.strip()
        if path.startswith("/"):
            await pathrules.check_outside_mounts(path, self.reg.mountpoint)

    def forget(self, pool_type: str, dirname: str) -> None:
        """``rmdir sources/TYPE/QUERY``."""
        kind = self.kind(pool_type)
        with self.reg.rec.recording(kind, f"rmdir {dirname}"):
            if dirname not in kind.queries:
                raise NotFound(f"no query shown as '{dirname}'")
            if dirname in kind.running:
                raise Busy(f"query '{kind.queries[dirname].text}' is running")
            del kind.queries[dirname]
        kind.touch()
        self._notify(kind)

    # ---- what the tree shows (memory only) ----------------------------------------------
    def shown(self, pool_type: str, dirname: str | None = None) -> dict[str, bytes]:
        """File name -> document of sources/TYPE/ (dirname None) or of one query's
        directory: the candidates no pool uses, named so that no pool has the name."""
        kind = self.kinds[pool_type]
        key = (pool_type, dirname)
        versions = (kind.version, self.reg.links_version)
        cached = self._views.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1]
        if dirname is None:
            candidates = kind.found
        else:
            q = kind.queries.get(dirname)
            candidates = q.candidates if q is not None else []
        # a pending pool (mkdir'ed, no document yet) is where the document may go
        pools = {n for n, p in self.reg.pools.items() if p.defined or p.broken}
        view: dict[str, bytes] = {}
        for cand in candidates:
            if self.used_by(kind, cand) is not None:
                continue
            name = cand.name
            taken = pools | {n[:-len(".xml")] for n in view}
            if name in taken:
                name = unique(f"{name}-{kind.type}", taken)
            view[f"{name}.xml"] = cand.xml if name == cand.name else \
                rename_document(cand.xml, name)
        self._views[key] = (versions, view)
        return view

    def used_by(self, kind: SourceKind, cand: Candidate) -> str | None:
        """The name of a defined pool that uses the candidate's storage, if one does."""
        mine = cand.definition
        by_name = POOL_TYPE_INFO[kind.type].has(SOURCE_NAME) and mine.source.name
        key = kind.backend.source_key(mine)
        for pool in self.reg.pools.values():
            other = pool.definition
            if other is None:
                continue
            if by_name and other.type == mine.type and other.source.name == mine.source.name \
                    and _hosts(other) == _hosts(mine):
                return pool.name
            theirs = set(pool.real_sources) | {pathrules.normal(d.path)
                                               for d in other.source.devices if d.path}
            if cand.related & theirs:
                return pool.name
            if key is not None and key == backend_class(other.type).source_key(other):
                return pool.name
        return None
