"""The registry of pools and volumes: state transitions, locks, persistence, errors.

Every operation that users ask for goes through here. Each runs under the
lock of its object, records a refusal as one line in the object's ``error``
and in the log, and tells the listener (the FUSE tree) what changed so the
kernel's caches are invalidated at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Protocol

import trio

from . import pathrules
from .backends import backend_for
from .errors import Busy, Exists, InvalidArgument, NotFound, StorageError
from .names import check_name
from .objects import Pool, Volume, claim, new_meta, now_ns
from .pool_cmds import PoolCommands
from .secrets import Secret, SecretOps
from .state import FileMeta, StateDir, StoredPool, merge_meta
from .volume_cmds import VolumeCommands
from .volume_ops import VolumeOps
from .xml.pool import parse_pool

log = logging.getLogger(__name__)

RESERVED_POOL_NAMES = ("by-uuid", "by-path")
#: pool types whose <source><device>s must not be shared (libvirt's source conflict)
BLOCK_TYPES = ("fs", "disk", "logical")
DEFAULT_POOL_XML = """<pool type='dir'>
  <name>default</name>
  <uuid>{uuid}</uuid>
  <source>
  </source>
  <target>
    <path>{path}</path>
  </target>
</pool>
"""


class Listener(Protocol):
    def progress(self, pool: str, volume: str) -> None: ...
    def links_changed(self) -> None: ...
    def changed_dir(self, path: tuple[str, ...]) -> None: ...
    def changed(self, pool: str, volume: str | None = None) -> None: ...
    def added(self, pool: str, volume: str | None = None) -> None: ...
    def removed(self, pool: str, volume: str | None = None) -> None: ...


class _Counting:
    """Forwards to the real listener and counts the changes that can move a link under
    by-uuid/, by-path/, by-key/ (objects added or removed, definitions changed)."""

    def __init__(self, inner: Listener, manager: Manager) -> None:
        self._inner, self._m = inner, manager

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def added(self, pool: str, volume: str | None = None) -> None:
        self._m.links_version += 1
        self._inner.added(pool, volume)

    def removed(self, pool: str, volume: str | None = None) -> None:
        self._m.links_version += 1
        self._inner.removed(pool, volume)

    def links_changed(self) -> None:
        self._m.links_version += 1
        self._inner.links_changed()


class NullListener:
    def changed(self, pool: str, volume: str | None = None) -> None:
        pass

    added = removed = changed

    def progress(self, pool: str, volume: str) -> None:
        pass

    def changed_dir(self, path: tuple[str, ...]) -> None:
        pass

    def links_changed(self) -> None:
        pass


def one_line(op: str, reason: str) -> str:
    """'op: reason' on one line, whatever it holds (names and documents carry newlines)."""
    text = f"{op}: {reason}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:2000]


def error_line(op: str, reason: str) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {one_line(op, reason)}\n"


class Manager(PoolCommands, VolumeCommands, VolumeOps, SecretOps):
    def __init__(self, state: StateDir, mountpoint: str | None = None) -> None:
        self.state = state
        #: where the tree is mounted (canonical): no pool's storage may be inside it
        self.mountpoint = mountpoint
        self.pools: dict[str, Pool] = {}
        #: bumped whenever a by-* link may have appeared, moved or gone (View caches on it)
        self.links_version = 0
        self.listener = NullListener()
        self.nursery: trio.Nursery | None = None
        self.started_ns = now_ns()
        #: the live device index (devices/), set by the mount when it is loaded
        self.devices = None
        super().__init__()

    @property
    def listener(self) -> Listener:
        return self._listener

    @listener.setter
    def listener(self, inner: Listener) -> None:
        self._listener = _Counting(inner, self)

    # ---- error recording -------------------------------------------------
    @contextlib.contextmanager
    def recording(self, obj: Pool | Volume | Secret | None, op: str) -> Iterator[None]:
        """Turn a refusal into: one line in obj.error, one log line, a StorageError."""
        try:
            try:
                yield
            except ValueError as exc:  # XmlError and size parsing
                raise InvalidArgument(str(exc)) from None
        except StorageError as exc:
            self.note_refusal(obj, op, exc)
            raise

    def note_refusal(self, obj: Pool | Volume | Secret | None, op: str,
                     exc: StorageError) -> None:
        """One line in the object's error file, one in the log."""
        exc.recorded = True
        log.warning("%s: refused %s", self.describe(obj), one_line(op, exc.reason))
        if obj is not None:
            obj.error = error_line(op, exc.reason)
            obj.touch()
            self._notify_changed(obj)

    @staticmethod
    def describe(obj: Pool | Volume | Secret | None) -> str:
        if isinstance(obj, Secret):
            return f"secret {obj.uuid}"
        if isinstance(obj, Volume):
            return f"volume {obj.pool.name}/{obj.name}"
        if isinstance(obj, Pool):
            return f"pool {obj.name}"
        return "storagefs"

    def _notify_changed(self, obj: Pool | Volume | Secret) -> None:
        if isinstance(obj, Secret):
            self.listener.changed_dir(("secrets", obj.uuid))
        elif isinstance(obj, Volume):
            self.listener.changed(obj.pool.name, obj.name)
        else:
            self.listener.changed(obj.name)

    # ---- start-up --------------------------------------------------------
    async def load(self) -> None:
        """Open the state directory, embed the default pool once, start pools."""
        fresh = self.state.is_new
        self.state.open()
        self.load_secrets()
        if fresh:
            await self._embed_default_pool()
        for stored in self.state.load_pools():
            pool = Pool(stored.name, config=stored.config, uuid=stored.uuid,
                        autostart=stored.autostart, meta=stored.meta,
                        stored_active=stored.active)
            self.pools[pool.name] = pool
            if stored.broken:
                self._mark_broken(pool, stored.broken)
                continue
            try:
                definition = parse_pool(stored.config)
                pool.backend = backend_for(definition)
                pool.definition = definition
            except (ValueError, StorageError) as exc:
                reason = f"stored definition unusable: {exc}"
                log.error("pool %s: %s", stored.name, reason)
                self._mark_broken(pool, reason)
                continue
            try:
                with self.recording(pool, "load"):
                    await self.check_pool_paths(pool, pool.definition)
            except StorageError:
                continue  # defined (so it can be fixed or undefined), never started
            if stored.autostart or stored.active:
                try:
                    with self.recording(pool, "autostart"):
                        # the record already says it runs at start: nothing to save
                        await self._start(pool, record=False)
                except StorageError:
                    pass

    @staticmethod
    def _mark_broken(pool: Pool, reason: str) -> None:
        """A pool whose record cannot be used: shown, state 'inaccessible', the reason in
        its error file, until a new config.xml is accepted or it is rmdir'ed."""
        pool.broken = reason
        pool.backend = None
        pool.error = error_line("load", reason)

    async def _embed_default_pool(self) -> None:
        images = self.state.images_dir
        data = DEFAULT_POOL_XML.format(uuid=uuidlib.uuid4(), path=images).encode()
        defn = parse_pool(data)
        backend = backend_for(defn)
        await backend.build()
        self.state.save_pool(StoredPool("default", data, defn.uuid, autostart=True,
                                        active=True, meta=new_meta()))

    # ---- lookups -----------------------------------------------------------
    def pool(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            raise NotFound(f"no storage pool with matching name '{name}'")
        return pool

    def defined_pool(self, name: str) -> Pool:
        pool = self.pool(name)
        self.need_definition(pool)
        return pool

    @staticmethod
    def need_definition(pool: Pool) -> None:
        if pool.defined:
            return
        if pool.broken:
            raise StorageError(f"the stored definition of storage pool '{pool.name}' could "
                               "not be read: write config.xml to define it again, or rmdir "
                               "it", errno.EIO)
        raise NotFound(f"storage pool '{pool.name}' has no definition yet: write config.xml")
    async def check_pool_paths(self, pool: Pool, defn) -> tuple[str | None, tuple[str, ...]]:
        """Refuse a target or source where no pool may be (SPEC "Names are safe");
        record the resolved paths on ``pool`` and return them."""
        real_state = os.path.realpath(self.state.path)
        found = await pathrules.check_pool_paths(
            defn, mountpoint=self.mountpoint, state_dir=real_state,
            images_dir=os.path.join(real_state, "images"))
        if pool.definition is defn:
            pool.real_target, pool.real_sources = found
        return found

    def pool_by_target(self, path: str) -> Pool | None:
        for pool in self.pools.values():
            if pool.target == path:
                return pool
        return None

    # ---- pool lifecycle ------------------------------------------------------
    def mkdir_pool(self, name: str) -> Pool:
        with self.recording(None, f"mkdir pools/{name!s}"):
            check_name(name, "pool name")
            if name in self.pools or name in RESERVED_POOL_NAMES:
                raise Exists(f"pool '{name}' already exists")
            pool = Pool(name)
            self.pools[name] = pool
        self.listener.added(name)
        return pool

    async def define_pool(self, name: str, data: bytes, meta: FileMeta | None = None) -> bool:
        """Accept a pool document for pools/NAME/config.xml; False when nothing changed."""
        pool = self.pool(name)
        with self.recording(pool, "define"):
            if pool.defined and data == pool.config:
                self._apply_meta(pool, meta, content_changed=False)
                return False
            defn = parse_pool(data)
            if defn.name != name:
                raise InvalidArgument(f"pool name '{defn.name}' in the document does not match "
                                      f"the directory '{name}'")
            if defn.target_path and not defn.target_path.startswith("/"):
                raise InvalidArgument(f"storage pool target path '{defn.target_path}' must be "
                                      "absolute")
            backend = backend_for(defn)
            real = await self.check_pool_paths(pool, defn)
            self._check_conflicts(pool, defn, *real)
            with claim(pool, "define"):
                # the paths were resolved in a thread: meanwhile the pool may have been
                # undefined, or another pool may have taken the target. Checked again
                # here, with no wait between the check and the change.
                if self.pools.get(name) is not pool:
                    raise NotFound(f"no storage pool with matching name '{name}'")
                self._check_conflicts(pool, defn, *real)
                if pool.active:
                    self._check_running_change(pool, defn)
                    backend = pool.backend
                new_uuid = defn.uuid or pool.uuid or str(uuidlib.uuid4())
                stored = self._record(pool, config=data, uuid=new_uuid,
                                      meta=merge_meta(pool.meta, meta, content_changed=True))
                self.state.save_pool(stored)  # first: a refused save changes nothing
                backend.definition = defn
                pool.definition, pool.backend, pool.config = defn, backend, data
                pool.real_target, pool.real_sources = real
                pool.uuid, pool.meta = new_uuid, stored.meta
                if pool.broken:
                    self.state.drop_broken_pool(name)
                    pool.broken = ""
                pool.touch()
        self.listener.changed(name)
        self.listener.links_changed()
        return True

    def _check_conflicts(self, pool: Pool, defn, real_target: str | None = None,
                         real_sources: tuple[str, ...] = ()) -> None:
        """Another pool with this uuid, target or source device; paths are compared
        resolved (``//tmp/p1`` and ``/tmp/./p1`` are p1's directory)."""
        if pool.uuid and defn.uuid and defn.uuid != pool.uuid:
            raise InvalidArgument(f"pool '{pool.name}' is already defined with uuid {pool.uuid}")
        target = real_target or (pathrules.normal(defn.target_path) if defn.target_path
                                 else None)
        for other in self.pools.values():
            if other is pool or not other.defined:
                continue
            if defn.uuid and other.uuid == defn.uuid:
                raise Exists(f"pool '{other.name}' already exists with uuid {defn.uuid}")
            theirs_target = other.real_target or (pathrules.normal(other.target)
                                                  if other.target else None)
            if target and theirs_target == target and defn.type != "disk":
                raise Exists(f"Storage source conflict with pool: '{other.name}' (target "
                             f"'{other.target}')")
            if defn.type in BLOCK_TYPES and other.definition.type in BLOCK_TYPES:
                mine = set(real_sources) | {pathrules.normal(d.path)
                                            for d in defn.source.devices if d.path}
                theirs = set(other.real_sources) | {
                    pathrules.normal(d.path) for d in other.definition.source.devices if d.path}
                if mine & theirs:
                    raise Exists(f"Storage source conflict with pool: '{other.name}' (source "
                                 f"'{sorted(mine & theirs)[0]}')")

    @staticmethod
    def _check_running_change(pool: Pool, defn) -> None:
        old = pool.definition
        for field in ("type", "target_path", "source"):
            if getattr(old, field, None) != getattr(defn, field, None):
                raise Busy(f"cannot change the {field.replace('_', ' ')} of pool "
                           f"'{pool.name}' while it is running; stop it first")

    def _apply_meta(self, pool: Pool, meta: FileMeta | None, content_changed: bool) -> None:
        if meta is None:
            return
        new = merge_meta(pool.meta, meta, content_changed)
        self._save(pool, meta=new)
        pool.meta = new

    def set_config_meta(self, owner: Pool | Volume | Secret, meta: FileMeta) -> None:
        """chmod/chown/touch of an object's config.xml: kept and persisted."""
        if isinstance(owner, Secret):
            with self.recording(owner, "setattr config.xml"):
                if owner.definition is not None and not owner.ephemeral:
                    self.state.save_secret(owner.uuid, owner.config, meta)
                owner.meta = meta
            self._notify_changed(owner)
        elif isinstance(owner, Volume):
            self.set_volume_meta(owner.pool.name, owner.name, meta)
        else:
            self.set_pool_meta(owner.name, meta)

    def set_pool_meta(self, name: str, meta: FileMeta) -> None:
        """chmod/chown/touch of config.xml: kept, and persisted once defined."""
        pool = self.pool(name)
        with self.recording(pool, "setattr config.xml"):
            if pool.defined:
                self._save(pool, meta=meta)
            pool.meta = meta
        self.listener.changed(name)

    @staticmethod
    def _record(pool: Pool, **changes) -> StoredPool:
        """The pool's record as it is on disk, with ``changes`` (not yet in memory)."""
        return dataclasses.replace(
            StoredPool(pool.name, pool.config, pool.uuid, pool.autostart, pool.stored_active,
                       pool.meta), **changes)

    def _save(self, pool: Pool, **changes) -> None:
        """Save the record with ``changes``; callers apply them in memory only after this
        returned (check, save, then apply)."""
        stored = self._record(pool, **changes)
        self.state.save_pool(stored)
        pool.stored_active = stored.active

    async def undefine_pool(self, name: str) -> None:
        pool = self.pool(name)
        with self.recording(pool, "undefine"):
            with claim(pool, "undefine"):
                if pool.active:
                    raise Busy(f"storage pool '{name}' is still active")
                if pool.defined or pool.broken:
                    self.state.delete_pool(name)
                del self.pools[name]
        self.listener.removed(name)

    def pool_info(self, pool: Pool):
        """Sizes for status.xml: live from statvfs when running, else the last known."""
        if pool.active and pool.backend is not None:
            info = pool.backend.pool_info()
            if info is not None:
                pool.info = info
        return pool.info
