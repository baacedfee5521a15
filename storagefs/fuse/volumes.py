"""pools/P/volumes/, a volume's directory, its files and snapshots/."""

from __future__ import annotations

import time
from typing import Any

from ..core.objects import Pool, Volume
from ..errors import NotFound
from ..parsing import parse_volume_command
from ..state import FileMeta
from . import render
from .files import CommandFile, DocumentFile
from .handles import Handle, LiveHandle
from .node import Caller, Dir, File, Generated, Link, Node, Static
from .objdir import ObjectDir

VOL_FILES = ("config.xml", "status.xml", "capacity", "allocation", "format", "key",
             "control", "progress", "error")
SNAP_FILES = ("id", "date", "vm-state-size", "vm-clock")


class VolumesDir(Dir):
    __slots__ = ("pool",)

    def __init__(self, t, path, pool: Pool) -> None:
        super().__init__(t, path)
        self.pool = pool

    def key(self) -> tuple[Any, ...]:
        return (self.pool,)

    def owner(self) -> Any:
        return self.pool

    def alive(self) -> bool:
        return self.t.core.pools.get(self.pool.name) is self.pool and self.pool.defined

    def names(self, caller: Caller) -> list[str]:
        self.pool.last_read = time.monotonic()
        return self.pool.volumes.sorted_names()

    def child(self, name: str, caller: Caller) -> Node:
        vol = self.pool.volumes.get(name)
        if vol is None:
            raise NotFound(name)
        return VolumeDir(self.t, (*self.path, name), vol)

    def child_is_current(self, name: str, node: Node) -> bool:
        return getattr(node, "vol", None) is self.pool.volumes.get(name)

    def mtime_ns(self) -> int:
        return self.pool.volumes.names_ns  # a directory's time moves with its names

    def listing_key(self) -> tuple | None:
        pool = self.pool
        return (pool, pool.volumes.gen, pool.volumes_touched)

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        await self.t.core.vols.create(self.pool, name)
        return self.child(name, caller)

    async def rmdir(self, name: str, caller: Caller) -> None:
        node = self.child(name, caller)
        await self.t.core.vols.delete(node.vol)  # type: ignore[attr-defined]


class _OfVolume:
    __slots__ = ()
    vol: Volume

    def key(self) -> tuple[Any, ...]:
        return (self.vol,)

    def owner(self) -> Any:
        return self.vol

    def mtime_ns(self) -> int:
        return self.vol.changed_ns

    def alive(self) -> bool:
        vol = self.vol
        return (self.t.core.pools.get(vol.pool.name) is vol.pool  # type: ignore[attr-defined]
                and vol.pool.volumes.get(vol.name) is vol)


class VolumeDir(_OfVolume, ObjectDir):
    __slots__ = ("vol",)
    attrs_by_stamp = True

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path)
        self.vol = vol

    def mtime_ns(self) -> int:
        # a directory's time moves with its names, which a volume keeps: not with its
        # figures (tar of the tree: "file changed as we read it" for every volume in use)
        return self.vol.born_ns

    def object_names(self) -> list[str]:
        if self.vol.pending:  # a pending volume: its config.xml (and why it was refused)
            return ["config.xml", "error"] if self.vol.error else ["config.xml"]
        names = list(VOL_FILES)
        if self.vol.info.path:
            names.insert(2, "path")
        if self.vol.info.url:
            names.append("url")  # how a guest reaches a network volume (iscsi://...)
        return [*names, "snapshots"]

    def object_child(self, name: str) -> Node:
        vol, path = self.vol, (*self.path, name)
        if name == "config.xml":
            return VolumeConfig(self.t, path, vol)
        if vol.pending and not (name == "error" and vol.error):
            raise NotFound(name)
        if name == "control":
            return VolumeControl(self.t, path, vol)
        if name == "progress":
            return VolumeProgress(self.t, path, vol)
        if name == "path" and vol.info.path:
            return VolumePath(self.t, path, vol)
        if name == "snapshots":
            return SnapshotsDir(self.t, path, vol)
        if name in VOL_FILES or (name == "url" and vol.info.url):
            return VolumeFile(self.t, path, vol)
        raise NotFound(name)


class VolumePath(_OfVolume, Link):
    __slots__ = ("vol",)

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path, vol.info.path)
        self.vol = vol

    def alive(self) -> bool:
        return _OfVolume.alive(self) and self.vol.info.path == self._target

    def key(self) -> tuple[Any, ...]:
        return (self.vol, self._target)


class VolumeFile(_OfVolume, Generated):
    __slots__ = ("vol",)

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path)
        self.vol = vol

    def version(self) -> object:
        return (self.vol.version, self.vol.pool.version) if self.name == "control" \
            else self.vol.version

    def render(self) -> bytes:
        return render.volume_file(self.t.core, self.vol, self.name)


class VolumeConfig(_OfVolume, DocumentFile):
    __slots__ = ("vol",)

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path)
        self.vol = vol

    def render(self) -> bytes:
        return render.volume_config_xml(self.vol)

    async def apply(self, data: bytes, meta: FileMeta | None) -> None:
        await self.t.core.vols.define(self.vol, data, meta)


class VolumeControl(_OfVolume, CommandFile):
    __slots__ = ("vol",)

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path)
        self.vol = vol

    def render(self) -> bytes:
        return render.volume_file(self.t.core, self.vol, "control")

    def version(self) -> object:
        return (self.vol.version, self.vol.pool.version)

    def parse(self, line: bytes) -> Any:
        return parse_volume_command(line, self.t.core.vcmds.valid_commands(self.vol))

    async def run(self, cmd) -> None:
        await self.t.core.vcmds.command(self.vol, cmd)


class VolumeProgress(_OfVolume, File):
    """The long operation running now and how far it is; poll() wakes on each change."""

    live = True
    __slots__ = ("vol",)

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path)
        self.vol = vol

    def content(self) -> bytes:
        return self.vol.progress.encode()

    def open_read(self) -> Handle:
        vol = self.vol
        return LiveHandle(self.content, lambda: vol.progress_version)


class SnapshotsDir(_OfVolume, Dir):
    __slots__ = ("vol",)

    def __init__(self, t, path, vol: Volume) -> None:
        super().__init__(t, path)
        self.vol = vol

    def names(self, caller: Caller) -> list[str]:
        return [s.name for s in self.vol.info.snapshots]

    def child(self, name: str, caller: Caller) -> Node:
        snap = next((s for s in self.vol.info.snapshots if s.name == name), None)
        if snap is None:
            raise NotFound(name)
        return SnapshotDir(self.t, (*self.path, name), self.vol, snap)

    async def mkdir(self, name: str, mode: int, caller: Caller) -> Node:
        await self.t.core.vcmds.mkdir_snapshot(self.vol, name)
        return self.child(name, caller)

    async def rmdir(self, name: str, caller: Caller) -> None:
        self.child(name, caller)
        await self.t.core.vcmds.rmdir_snapshot(self.vol, name)


class SnapshotDir(_OfVolume, Dir):
    __slots__ = ("vol", "snap")

    def __init__(self, t, path, vol: Volume, snap: Any) -> None:
        super().__init__(t, path)
        self.vol, self.snap = vol, snap

    def key(self) -> tuple[Any, ...]:
        return (self.vol, self.snap.name, self.snap.id)

    def alive(self) -> bool:
        return _OfVolume.alive(self) and any(
            s.name == self.snap.name and s.id == self.snap.id for s in self.vol.info.snapshots)

    def names(self, caller: Caller) -> list[str]:
        return list(SNAP_FILES)

    def child(self, name: str, caller: Caller) -> Node:
        if name not in SNAP_FILES:
            raise NotFound(name)
        return SnapshotFile(self.t, (*self.path, name), render.snapshot_file(self.snap, name),
                            self)


class SnapshotFile(Static):
    __slots__ = ("parent",)

    def __init__(self, t, path, data: bytes, parent: SnapshotDir) -> None:
        super().__init__(t, path, data)
        self.parent = parent

    def key(self) -> tuple[Any, ...]:
        return (*self.parent.key(), self.data)

    def alive(self) -> bool:
        return self.parent.alive()

    def owner(self) -> Any:
        return self.parent.vol
