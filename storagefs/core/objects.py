"""The live objects the core owns: pools, their volumes, secrets.

Each object carries a ``version`` that every change bumps (``touch``): generated files
are rendered again only when it moves. ``claim`` runs one operation at a time on a pool
or a volume and refuses another at once (EBUSY) instead of making it wait.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..backends.base import PoolBackend, PoolInfo, VolumeInfo
from ..errors import Busy, NotFound
from ..state import FileMeta
from .runner import PoolRunner

#: pool states as SPEC lists them
INACTIVE, BUILDING, RUNNING, DEGRADED, INACCESSIBLE = (
    "inactive", "building", "running", "degraded", "inaccessible")


def now_ns() -> int:
    return time.time_ns()


def new_meta(mode: int = 0o644) -> FileMeta:
    t = now_ns()
    return FileMeta(mode=mode, atime_ns=t, mtime_ns=t, ctime_ns=t)


class NameTable(dict):
    """Objects by name (a pool's volumes, the pools, the secrets), which knows its names
    in order, when they last changed (the directory's mtime) and counts its changes:
    ``ls`` of 100,000 volumes sorts them again only after a volume came or went, and
    a listing made for the kernel is reused while ``gen`` stays (every way a dict
    changes is caught here; reads are plain dict reads)."""

    __slots__ = ("_sorted", "gen", "names_ns")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sorted: list[str] | None = None
        self.gen = 0
        #: when a name came or went last (the mtime of its directory)
        self.names_ns = now_ns()

    def sorted_names(self) -> list[str]:
        """The names in order (the same list while no name came or went); callers never
        change it."""
        if self._sorted is None:
            self._sorted = sorted(self)
        return self._sorted

    def _changed(self, names: bool = True) -> None:
        self.gen += 1
        if names:
            self._sorted = None
            self.names_ns = now_ns()

    def __setitem__(self, key, value) -> None:
        self._changed(key not in self)
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._changed()
        super().__delitem__(key)

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def clear(self) -> None:
        self._changed()
        super().clear()

    def update(self, *args, **kwargs) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        if key not in self:
            self._changed()
        return super().setdefault(key, default)

    def __ior__(self, other):
        self._changed()
        return super().__ior__(other)


@dataclass(eq=False, slots=True)
class Volume:
    pool: Pool
    name: str
    info: VolumeInfo
    #: the last accepted config.xml, when one was written; else it is generated
    config: bytes | None = None
    #: the format storagefs made it with or was told (persisted): it wins over the
    #: file's header, which a guest can write (None: a volume found in the pool)
    recorded_format: str | None = None
    #: its config.xml's mode, owner and times; None until someone looks (a pool of
    #: 100,000 volumes holds none for the volumes nobody reads)
    meta: FileMeta | None = None
    error: str = ""
    #: what long operation runs now ("" when idle), and a counter of its changes
    progress: str = ""
    progress_version: int = 0
    #: the operation that runs on it ("" when none): named when another is refused
    busy: str = ""
    #: deleted: a handle still holding it gets ENOENT instead of acting on it
    gone: bool = False
    changed_ns: int = field(default_factory=now_ns)
    #: when it was listed first (the mtime of its directory, whose names stay)
    born_ns: int = field(default_factory=now_ns)
    #: bumped by every change: generated files are rendered again only when it moves
    version: int = 0
    #: made by mkdir in a pool where space is really taken (disk, logical) and whose
    #: definition names no default capacity: nothing exists on the storage yet, the
    #: directory holds only config.xml, and the first accepted document creates it
    pending: bool = False
    #: the storage's signature (backend.signature) when storagefs last made or changed
    #: the volume; while the storage still matches it, nothing else has written to it
    #: and a document may re-make it in full. None: it may hold data.
    made: list[int] | None = None

    def touch(self) -> None:
        self.changed_ns = now_ns()
        self.version += 1
        self.pool.volumes_touched += 1

    def file_meta(self) -> FileMeta:
        if self.meta is None:
            self.meta = new_meta()
        return self.meta

    def busy_reason(self) -> str:
        return f"volume '{self.name}' is still in use: {self.busy or 'an operation'} running"


@dataclass(eq=False)
class Pool:
    name: str
    #: None while the directory is pending (made by mkdir, no document accepted yet)
    definition: object | None = None
    backend: PoolBackend | None = None
    config: bytes = b""
    meta: FileMeta = field(default_factory=new_meta)
    uuid: str = ""
    autostart: bool = False
    state: str = INACTIVE
    error: str = ""
    info: PoolInfo = field(default_factory=PoolInfo)
    volumes: NameTable = field(default_factory=NameTable)
    #: bumped by every change of one of its volumes (Volume.touch)
    volumes_touched: int = 0
    #: when its directory's names last changed: made, defined (pending -> defined)
    names_ns: int = field(default_factory=now_ns)
    #: names being created right now (taken, but not listed yet)
    reserved: set[str] = field(default_factory=set)
    #: the pool operation that runs ("" when none)
    busy: str = ""
    #: undefined: a handle still holding it gets ENOENT instead of acting on it
    gone: bool = False
    #: volume operations under way; stop/delete wait for none
    busy_volumes: int = 0
    #: whether the record in the state directory says the pool runs (start/stop save it)
    stored_active: bool = False
    #: why the stored definition could not be used at start ("" when it could); such a
    #: pool shows state 'inaccessible' until a new config.xml is accepted or it is rmdir'ed
    broken: str = ""
    #: the target and local source devices with symlinks resolved (set at define and
    #: load): what conflicts and by-path/ compare
    real_target: str | None = None
    real_sources: tuple[str, ...] = ()
    #: its storage calls and background tasks (runner.py)
    runner: PoolRunner | None = None
    #: monotonic time of the last refresh of its figures (metrics: their age)
    refreshed: float = 0.0
    #: monotonic time someone last listed its volumes (remote pools are polled then)
    last_read: float = 0.0
    changed_ns: int = field(default_factory=now_ns)
    #: bumped by every change: generated files are rendered again only when it moves
    version: int = 0

    @property
    def defined(self) -> bool:
        return self.definition is not None

    @property
    def active(self) -> bool:
        """Started: running, degraded, or started but its storage went away."""
        return self.state in (RUNNING, DEGRADED, INACCESSIBLE)

    @property
    def target(self) -> str | None:
        return getattr(self.definition, "target_path", None)

    def touch(self) -> None:
        self.changed_ns = now_ns()
        self.version += 1

    def file_meta(self) -> FileMeta:
        return self.meta

    def drop_volume(self, name: str) -> None:
        self.volumes.pop(name).gone = True

    def drop_volumes(self) -> None:
        for vol in self.volumes.values():
            vol.gone = True
        self.volumes.clear()

    def busy_reason(self) -> str:
        return f"storage pool '{self.name}' is busy: {self.busy or 'an operation'} running"


@dataclass(eq=False)
class Secret:
    uuid: str
    definition: object | None = None   # xml.secret.SecretDef once a document is accepted
    config: bytes = b""
    meta: FileMeta = field(default_factory=new_meta)
    value: bytes | None = None
    error: str = ""
    changed_ns: int = field(default_factory=now_ns)
    version: int = 0
    #: why the stored record could not be used at start ("" when it could)
    broken: str = ""

    def file_meta(self) -> FileMeta:
        return self.meta

    @property
    def private(self) -> bool:
        return bool(getattr(self.definition, "private", False))

    @property
    def ephemeral(self) -> bool:
        return bool(getattr(self.definition, "ephemeral", False))

    def touch(self) -> None:
        self.changed_ns = now_ns()
        self.version += 1


Owner = Pool | Volume | Secret


@contextlib.contextmanager
def claim(obj: Pool | Volume, op: str) -> Iterator[None]:
    """Run ``op`` on ``obj`` alone, or refuse at once with EBUSY naming the operation
    that runs (SPEC "No call waits on storage": a caller never queues on a lock, so
    an rmdir never holds the kernel's lock of the directory while it waits)."""
    if obj.gone:
        kind = "storage pool" if isinstance(obj, Pool) else "storage volume"
        raise NotFound(f"no {kind} with matching name '{obj.name}'")
    if obj.busy:
        raise Busy(obj.busy_reason())
    obj.busy = op  # one thread runs the core: nothing comes between the check and this
    try:
        yield
    finally:
        obj.busy = ""
