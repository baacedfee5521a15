"""Pool definitions: mkdir of a pool directory, its config.xml, rmdir; where a pool may
be and which pools conflict (libvirt's source conflicts, SPEC "Names are safe"); the
pool's record in the state directory (saved before memory changes)."""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid as uuidlib
from typing import TYPE_CHECKING

from .. import pathrules
from ..backends import backend_class
from ..errors import Busy, Exists, InvalidArgument, NotFound, StorageError
from ..names import check_name
from ..sourcerules import check_source
from ..state import FileMeta, StoredPool, StoredVolume, merge_meta
from ..xml.pool import parse_pool
from .objects import Pool, claim, now_ns
from .volspec import stored_format

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)

RESERVED_POOL_NAMES = ("by-uuid", "by-path")


def source_conflict(mine, defn, real_sources: tuple[str, ...], other: Pool) -> str | None:
    """What two pools share that only one may use: block devices (fs, disk, logical,
    zfs pools claim theirs), or a remote source the backends name alike."""
    theirs = backend_class(other.definition.type)
    if mine.claims_devices and theirs.claims_devices:
        a = set(real_sources) | {pathrules.normal(d.path) for d in defn.source.devices
                                 if d.path}
        b = set(other.real_sources) | {pathrules.normal(d.path)
                                       for d in other.definition.source.devices if d.path}
        if a & b:
            return sorted(a & b)[0]
    key = mine.source_key(defn)
    if key is not None and key == theirs.source_key(other.definition):
        return " ".join(str(k) for k in key)
    return None


def storage_key(pool: Pool) -> str | None:
    """What a pool's volumes are on, for the formats kept across its undefinition
    (kept_formats.py): its resolved target directory, else its remote source."""
    if pool.real_target:
        return f"target {pool.real_target}"
    defn = pool.definition
    key = backend_class(defn.type).source_key(defn) if defn is not None else None
    return None if key is None else f"source {' '.join(str(k) for k in key)}"


class PoolDefinitions:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    # ---- recorded formats across an undefinition ------------------------------------
    def keep_formats(self, pool: Pool) -> None:
        """Before the records of a pool being undefined go: keep its volumes' recorded
        formats by storage (StorageError when they cannot be kept: nothing changes)."""
        key = storage_key(pool)
        stored = self.reg.state.load_volumes(pool.name) if key else {}
        formats = {n: f for n, f in ((n, stored_format(pool, sv)) for n, sv in
                                     stored.items() if not sv.broken) if f}
        if formats:
            self.reg.state.kept.keep(key, formats)  # type: ignore[arg-type]

    def adopt_formats(self, pool: Pool) -> None:
        """A pool newly defined on storage an undefined pool used: the formats kept
        become its volume records again (where it has none). Best effort: what cannot
        be saved is left kept and logged."""
        key = storage_key(pool)
        kept = self.reg.state.kept.take(key) if key else {}
        if not kept:
            return
        state = self.reg.state
        have = state.load_volumes(pool.name)
        try:
            for name, fmt in kept.items():
                if name not in have:
                    state.save_volume(StoredVolume(pool.name, name, None, format=fmt))
            state.kept.drop(key)  # type: ignore[arg-type]
        except StorageError as exc:
            log.warning("pool %s: the recorded formats of its volumes were not taken "
                        "back: %s", pool.name, exc.reason)
            return
        log.info("pool %s: %d recorded volume formats taken back from an earlier "
                 "definition on %s", pool.name, len(kept), key)

    # ---- paths and conflicts -------------------------------------------------------
    async def check_paths(self, pool: Pool, defn) -> tuple[str | None, tuple[str, ...]]:
        """Refuse a target or source where no pool may be (SPEC "Names are safe");
        record the resolved paths on ``pool`` and return them."""
        real_state = os.path.realpath(self.reg.state.path)
        found = await pathrules.check_pool_paths(
            defn, mountpoint=self.reg.mountpoint, state_dir=real_state,
            images_dir=os.path.join(real_state, "images"))
        if pool.definition is defn:
            pool.real_target, pool.real_sources = found
        return found

    def check_conflicts(self, pool: Pool, defn, real_target: str | None = None,
                        real_sources: tuple[str, ...] = ()) -> None:
        """Another pool with this uuid, target or source device; paths are compared
        resolved (``//tmp/p1`` and ``/tmp/./p1`` are p1's directory)."""
        if pool.uuid and defn.uuid and defn.uuid != pool.uuid:
            raise InvalidArgument(f"pool '{pool.name}' is already defined with uuid {pool.uuid}")
        target = real_target or (pathrules.normal(defn.target_path) if defn.target_path
                                 else None)
        mine = backend_class(defn.type)
        for other in self.reg.pools.values():
            if other is pool or not other.defined:
                continue
            if defn.uuid and other.uuid == defn.uuid:
                raise Exists(f"pool '{other.name}' already exists with uuid {defn.uuid}")
            theirs_target = other.real_target or (pathrules.normal(other.target)
                                                  if other.target else None)
            if target and theirs_target == target and defn.type != "disk":
                raise Exists(f"Storage source conflict with pool: '{other.name}' (target "
                             f"'{other.target}')")
            clash = source_conflict(mine, defn, real_sources, other)
            if clash:
                raise Exists(f"Storage source conflict with pool: '{other.name}' (source "
                             f"'{clash}')")

    @staticmethod
    def check_running_change(pool: Pool, defn) -> None:
        old = pool.definition
        for field in ("type", "target_path", "source"):
            if getattr(old, field, None) != getattr(defn, field, None):
                raise Busy(f"cannot change the {field.replace('_', ' ')} of pool "
                           f"'{pool.name}' while it is running; stop it first")

    def by_target(self, path: str) -> Pool | None:
        for pool in self.reg.pools.values():
            if pool.target == path:
                return pool
        return None

    # ---- records ------------------------------------------------------------------
    @staticmethod
    def record(pool: Pool, **changes) -> StoredPool:
        """The pool's record as it is on disk, with ``changes`` (not yet in memory)."""
        return dataclasses.replace(
            StoredPool(pool.name, pool.config, pool.uuid, pool.autostart, pool.stored_active,
                       pool.meta), **changes)

    def save(self, pool: Pool, **changes) -> None:
        """Save the record with ``changes``; callers apply them in memory only after this
        returned (check, save, then apply)."""
        if pool.gone:  # undefined while a handle held it: no record comes back
            raise NotFound(f"no storage pool with matching name '{pool.name}'")
        stored = self.record(pool, **changes)
        self.reg.state.save_pool(stored)
        pool.stored_active = stored.active

    # ---- the tree's operations ----------------------------------------------------------
    def mkdir(self, name: str) -> Pool:
        with self.reg.rec.recording(None, f"mkdir pools/{name!s}"):
            check_name(name, "pool name")
            if name in self.reg.pools or name in RESERVED_POOL_NAMES:
                raise Exists(f"pool '{name}' already exists")
            pool = self.reg.new_pool(name)
        self.reg.listener.added(name)
        return pool

    async def define(self, name: str, data: bytes, meta: FileMeta | None = None) -> bool:
        """Accept a pool document for pools/NAME/config.xml; False when nothing changed."""
        reg = self.reg
        pool = reg.pool(name)
        with reg.rec.recording(pool, "define"):
            if pool.defined and data == pool.config:
                self._apply_meta(pool, meta, content_changed=False)
                return False
            defn = parse_pool(data)
            check_source(defn)  # before any host tool sees a source field
            if defn.name != name:
                raise InvalidArgument(f"pool name '{defn.name}' in the document does not match "
                                      f"the directory '{name}'")
            if defn.target_path and not defn.target_path.startswith("/"):
                raise InvalidArgument(f"storage pool target path '{defn.target_path}' must be "
                                      "absolute")
            backend = reg.make_backend(pool, defn)
            real = await self.check_paths(pool, defn)
            self.check_conflicts(pool, defn, *real)
            with claim(pool, "define"):
                # the paths were resolved in a thread: meanwhile the pool may have been
                # undefined, or another pool may have taken the target. Checked again
                # here, with no wait between the check and the change.
                if reg.pools.get(name) is not pool:
                    raise NotFound(f"no storage pool with matching name '{name}'")
                self.check_conflicts(pool, defn, *real)
                if pool.active:
                    self.check_running_change(pool, defn)
                    backend = pool.backend
                new_uuid = defn.uuid or pool.uuid or str(uuidlib.uuid4())
                stored = self.record(pool, config=data, uuid=new_uuid,
                                     meta=merge_meta(pool.meta, meta, content_changed=True))
                reg.state.save_pool(stored)  # first: a refused save changes nothing
                backend.definition = defn
                newly = pool.definition is None
                if newly:
                    pool.names_ns = now_ns()  # its directory shows all its files now
                pool.definition, pool.backend, pool.config = defn, backend, data
                pool.real_target, pool.real_sources = real
                if newly:
                    self.adopt_formats(pool)
                pool.uuid, pool.meta = new_uuid, stored.meta
                if pool.broken:
                    reg.state.drop_broken_pool(name)
                    pool.broken = ""
                pool.touch()
                reg.events.of(pool, "defined", f"type={defn.type} uuid={new_uuid}")
        if not pool.active:
            await reg.index.refresh_perms(pool)
        reg.listener.changed(name)
        reg.listener.links_changed()
        return True

    def _apply_meta(self, pool: Pool, meta: FileMeta | None, content_changed: bool) -> None:
        if meta is None:
            return
        new = merge_meta(pool.meta, meta, content_changed)
        self.save(pool, meta=new)
        pool.meta = new

    def set_meta(self, pool: Pool, meta: FileMeta) -> None:
        """chmod/chown/touch of config.xml: kept, and persisted once defined."""
        with self.reg.rec.recording(pool, "setattr config.xml"):
            if pool.defined:
                self.save(pool, meta=meta)
            pool.meta = meta
        self.reg.listener.changed(pool.name)

    async def undefine(self, name: str) -> None:
        reg = self.reg
        pool = reg.pool(name)
        with reg.rec.recording(pool, "undefine"):
            with claim(pool, "undefine"):
                if pool.active:
                    raise Busy(f"storage pool '{name}' is still active")
                if pool.defined or pool.broken:
                    self.keep_formats(pool)
                    reg.state.delete_pool(name)
                    reg.events.of(pool, "undefined")
                del reg.pools[name]
                pool.gone = True
        reg.listener.removed(name)
