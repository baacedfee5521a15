"""What each path of the tree is, and what it shows: the mapping from paths to the
manager's objects. Pure lookups in the manager's indexes (no host tools, no
directory walks), so lookup/getattr/readdir stay fast.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import render
from .devview import DeviceView
from .errors import NotFound
from .manager import Manager
from .names import fit_name, systemd_escape_path
from .objects import Pool, Volume
from .pathrules import normal
from .secrets import Secret

POOL_FILES = ("config.xml", "status.xml", "state", "autostart", "control", "uuid", "type",
              "capacity", "allocation", "available", "error")
POOL_WRITABLE = ("config.xml", "state", "autostart", "control")
VOL_FILES = ("config.xml", "status.xml", "capacity", "allocation", "format", "key",
             "control", "progress", "error")
SNAP_FILES = ("id", "date", "vm-state-size", "vm-clock")
SECRET_FILES = ("config.xml", "value", "error")
VOL_WRITABLE = ("config.xml", "control")


class Kind(enum.Enum):
    ROOT = "root"
    README = "readme"
    DIR = "dir"              # pools/, volumes/, the by-* directories
    POOL = "pool"            # pools/P
    POOL_FILE = "pool-file"
    POOL_VOLUMES = "pool-volumes"
    VOLUME = "volume"        # pools/P/volumes/V
    VOL_FILE = "vol-file"
    SNAPSHOTS = "snapshots"  # pools/P/volumes/V/snapshots
    SNAPSHOT = "snapshot"    # .../snapshots/S
    SNAP_FILE = "snap-file"
    DEVICE = "device"        # devices/NAME
    DEV_FILE = "dev-file"
    SECRET = "secret"        # secrets/UUID
    SECRET_FILE = "secret-file"
    LINK = "link"
    SCRATCH = "scratch"      # any other name in a pool or volume directory
    SCRATCH_DIR = "scratch-dir"  # a directory made there (Puppet's lock directories)


@dataclass
class Entry:
    kind: Kind
    pool: Pool | None = None
    volume: Volume | None = None
    name: str = ""           # the file name for *_FILE and SCRATCH
    target: str = ""         # for LINK
    snapshot: object = None  # for SNAPSHOT and SNAP_FILE
    secret: Secret | None = None
    device: object = None    # devices.Device for DEVICE and DEV_FILE

    @property
    def writable(self) -> bool:
        if self.kind is Kind.POOL_FILE:
            return self.name in POOL_WRITABLE
        if self.kind is Kind.VOL_FILE:
            return self.name in VOL_WRITABLE
        if self.kind is Kind.SECRET_FILE:
            return self.name in ("config.xml", "value")
        return self.kind is Kind.SCRATCH

    @property
    def is_dir(self) -> bool:
        return self.kind in (Kind.ROOT, Kind.DIR, Kind.POOL, Kind.POOL_VOLUMES, Kind.VOLUME,
                             Kind.SNAPSHOTS, Kind.SNAPSHOT, Kind.SECRET, Kind.DEVICE,
                             Kind.SCRATCH_DIR)

    @property
    def owner(self) -> Pool | Volume | Secret | None:
        if self.secret is not None:
            return self.secret
        return self.volume if self.volume is not None else self.pool


class View:
    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.devices = DeviceView(manager.devices)
        self._links: dict[str, tuple[int, dict[str, str]]] = {}

    def _cached(self, which: str, build) -> dict[str, str]:
        """A by-* table, rebuilt only when links may have changed: a lookup in
        by-path/ must not walk every volume (ls -l of 10k links would be quadratic)."""
        hit = self._links.get(which)
        if hit is not None and hit[0] == self.m.links_version:
            return hit[1]
        table = build()
        self._links[which] = (self.m.links_version, table)
        return table

    # ---- links -----------------------------------------------------------
    def pools_by_uuid(self) -> dict[str, str]:
        return self._cached("by-uuid", lambda: {
            p.uuid: f"../{p.name}" for p in self.m.pools.values() if p.defined and p.uuid})

    # Link names: escaped paths (systemd-escape --path) of the resolved target, or of the
    # normal volume path (so two spellings of one place never make two links), cut to
    # NAME_MAX with a hash of the whole (names.fit_name).
    def pools_by_path(self) -> dict[str, str]:
        return self._cached("by-path", lambda: {
            fit_name(systemd_escape_path(p.real_target or normal(p.target))): f"../{p.name}"
            for p in self.m.pools.values() if p.defined and p.target})

    def _all_volumes(self):
        for pool in self.m.pools.values():
            yield from (v for v in pool.volumes.values() if not v.pending)

    def volumes_by_key(self) -> dict[str, str]:
        return self._cached("by-key", lambda: {
            fit_name(systemd_escape_path(normal(v.info.key)) if "/" in v.info.key
                     else v.info.key):
            f"../../pools/{v.pool.name}/volumes/{v.name}" for v in self._all_volumes()})

    def volumes_by_path(self) -> dict[str, str]:
        return self._cached("vol-by-path", lambda: {
            fit_name(systemd_escape_path(normal(v.info.path))):
            f"../../pools/{v.pool.name}/volumes/{v.name}"
            for v in self._all_volumes() if v.info.path})

    # ---- resolution --------------------------------------------------------
    def resolve(self, path: tuple[str, ...], scratch: set[str] | None = None,
                hidden: set[str] | None = None) -> Entry:
        """The entry at ``path``; NotFound when there is none.

        ``scratch`` and ``hidden`` are the scratch names and unlinked writable
        files of the directory ``path[:-1]`` (kept by the FUSE layer).
        """
        n = len(path)
        if n == 0:
            return Entry(Kind.ROOT)
        top = path[0]
        if n == 1:
            if top == "README":
                return Entry(Kind.README)
            if top in ("pools", "volumes", "secrets") or \
                    (top == "devices" and self.devices.index is not None):
                return Entry(Kind.DIR)
            raise NotFound(top)
        if top == "devices":
            what, obj = self.devices.resolve(path)
            if what == "dir":
                return Entry(Kind.DIR)
            if what == "device":
                return Entry(Kind.DEVICE, device=obj)
            if what == "link":
                return Entry(Kind.LINK, target=obj)
            return Entry(Kind.DEV_FILE, name=obj[1], device=obj[0])
        if top == "secrets":
            return self._resolve_secret(path, scratch, hidden)
        if top == "volumes":
            return self._resolve_links(path, {"by-key": self.volumes_by_key,
                                              "by-path": self.volumes_by_path})
        if top != "pools":
            raise NotFound(top)
        if path[1] in ("by-uuid", "by-path"):
            return self._resolve_links(path, {"by-uuid": self.pools_by_uuid,
                                              "by-path": self.pools_by_path})
        pool = self.m.pools.get(path[1])
        if pool is None:
            raise NotFound(path[1])
        if n == 2:
            return Entry(Kind.POOL, pool)
        name = path[2]
        if n == 3:
            return self._in_object_dir(Entry(Kind.POOL, pool), name, scratch, hidden)
        if name != "volumes" or not pool.defined:
            raise NotFound(name)
        vol = pool.volumes.get(path[3])
        if vol is None:
            raise NotFound(path[3])
        if n == 4:
            return Entry(Kind.VOLUME, pool, vol)
        if n == 5:
            return self._in_object_dir(Entry(Kind.VOLUME, pool, vol), path[4], scratch, hidden)
        if path[4] != "snapshots":
            raise NotFound(path[4])
        snap = next((s for s in vol.info.snapshots if s.name == path[5]), None)
        if snap is None:
            raise NotFound(path[5])
        if n == 6:
            return Entry(Kind.SNAPSHOT, pool, vol, snapshot=snap)
        if n == 7 and path[6] in SNAP_FILES:
            return Entry(Kind.SNAP_FILE, pool, vol, path[6], snapshot=snap)
        raise NotFound(path[-1])

    def _resolve_secret(self, path, scratch, hidden) -> Entry:
        s = self.m.secrets.get(path[1])
        if s is None or len(path) > 3:
            raise NotFound(path[-1])
        if len(path) == 2:
            return Entry(Kind.SECRET, secret=s)
        name = path[2]
        if scratch and name in scratch:
            return Entry(Kind.SCRATCH, name=name, secret=s)
        if (hidden and name in hidden) or name not in SECRET_FILES or \
                (s.definition is None and name != "config.xml" and
                 not (name == "error" and s.error)):
            raise NotFound(name)
        return Entry(Kind.SECRET_FILE, name=name, secret=s)

    def _resolve_links(self, path, tables) -> Entry:
        if len(path) == 2:
            if path[1] in tables:
                return Entry(Kind.DIR)
            raise NotFound(path[1])
        if len(path) == 3 and path[1] in tables:
            target = tables[path[1]]().get(path[2])
            if target is not None:
                return Entry(Kind.LINK, target=target)
        raise NotFound(path[-1])

    def _in_object_dir(self, parent: Entry, name: str, scratch, hidden) -> Entry:
        pool, vol = parent.pool, parent.volume
        if scratch and name in scratch:
            return Entry(Kind.SCRATCH, pool, vol, name)
        if hidden and name in hidden:
            raise NotFound(name)
        if vol is None:
            if not pool.defined:
                if name == "config.xml" or (name == "error" and pool.error) or \
                        (name == "state" and pool.broken):
                    return Entry(Kind.POOL_FILE, pool, None, name)
                raise NotFound(name)
            if name == "volumes":
                return Entry(Kind.POOL_VOLUMES, pool)
            if name in POOL_FILES:
                return Entry(Kind.POOL_FILE, pool, None, name)
            raise NotFound(name)
        if vol.pending:  # a pending volume: its config.xml (and why it was refused)
            if name == "config.xml" or (name == "error" and vol.error):
                return Entry(Kind.VOL_FILE, pool, vol, name)
            raise NotFound(name)
        if name == "path" and vol.info.path:
            return Entry(Kind.LINK, pool, vol, name, target=vol.info.path)
        if name == "snapshots":
            return Entry(Kind.SNAPSHOTS, pool, vol)
        if name in VOL_FILES:
            return Entry(Kind.VOL_FILE, pool, vol, name)
        raise NotFound(name)

    def children(self, path: tuple[str, ...], entry: Entry) -> list[str]:
        """Names in a directory, in a stable order (scratch names are added by the caller)."""
        k = entry.kind
        if k is Kind.ROOT:
            devices = ["devices"] if self.devices.index is not None else []
            return ["README", *devices, "pools", "secrets", "volumes"]
        if path and path[0] == "devices":
            return self.devices.children(path)
        if path == ("secrets",):
            return sorted(self.m.secrets)
        if k is Kind.SECRET:
            if entry.secret.definition is not None:
                return list(SECRET_FILES)
            return ["config.xml", "error"] if entry.secret.error else ["config.xml"]
        if k is Kind.POOL:
            if not entry.pool.defined:  # a pending pool: its config.xml (and why it was refused)
                if entry.pool.broken:  # its record is unreadable: inaccessible, and why
                    return ["config.xml", "state", "error"]
                return ["config.xml", "error"] if entry.pool.error else ["config.xml"]
            return [*POOL_FILES, "volumes"]
        if k is Kind.POOL_VOLUMES:
            return sorted(entry.pool.volumes)
        if k is Kind.VOLUME:
            if entry.volume.pending:
                return ["config.xml", "error"] if entry.volume.error else ["config.xml"]
            names = list(VOL_FILES)
            if entry.volume.info.path:
                names.insert(2, "path")
            return [*names, "snapshots"]
        if k is Kind.SNAPSHOTS:
            return [s.name for s in entry.volume.info.snapshots]
        if k is Kind.SNAPSHOT:
            return list(SNAP_FILES)
        if path == ("pools",):
            return ["by-uuid", "by-path", *sorted(self.m.pools)]
        if path == ("volumes",):
            return ["by-key", "by-path"]
        tables = {("pools", "by-uuid"): self.pools_by_uuid,
                  ("pools", "by-path"): self.pools_by_path,
                  ("volumes", "by-key"): self.volumes_by_key,
                  ("volumes", "by-path"): self.volumes_by_path}
        table = tables.get(path)
        return sorted(table()) if table else []

    # ---- contents ------------------------------------------------------------
    def content(self, entry: Entry) -> bytes:
        if entry.kind is Kind.README:
            return render.README
        if entry.kind is Kind.POOL_FILE:
            return render.pool_file(self.m, entry.pool, entry.name)
        if entry.kind is Kind.VOL_FILE:
            return render.volume_file(self.m, entry.volume, entry.name)
        if entry.kind is Kind.SNAP_FILE:
            return render.snapshot_file(entry.snapshot, entry.name)
        if entry.kind is Kind.DEV_FILE:
            return self.devices.content(entry.device, entry.name)
        if entry.kind is Kind.SECRET_FILE:
            s = entry.secret
            if entry.name == "config.xml":
                return s.config
            if entry.name == "error":
                return s.error.encode()
            return b"" if s.private else (s.value or b"")
        return b""
