"""The live objects the manager owns: pools and their volumes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from .backends.base import PoolBackend, PoolInfo, VolumeInfo
from .state import FileMeta

#: pool states as SPEC lists them
INACTIVE, BUILDING, RUNNING, DEGRADED, INACCESSIBLE = (
    "inactive", "building", "running", "degraded", "inaccessible")


def now_ns() -> int:
    return time.time_ns()


def new_meta(mode: int = 0o644) -> FileMeta:
    t = now_ns()
    return FileMeta(mode=mode, atime_ns=t, mtime_ns=t, ctime_ns=t)


@dataclass(eq=False)
class Volume:
    pool: Pool
    name: str
    info: VolumeInfo
    #: the last accepted config.xml, when one was written; else it is generated
    config: bytes | None = None
    meta: FileMeta = field(default_factory=new_meta)
    error: str = ""
    #: what long operation runs now ("" when idle), and a counter of its changes
    progress: str = ""
    progress_version: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    changed_ns: int = field(default_factory=now_ns)
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
    volumes: dict[str, Volume] = field(default_factory=dict)
    #: names being created right now (taken, but not listed yet)
    reserved: set[str] = field(default_factory=set)
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: volume operations under way; stop/delete wait for none
    busy_volumes: int = 0
    changed_ns: int = field(default_factory=now_ns)

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
