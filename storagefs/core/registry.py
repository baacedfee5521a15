"""The registry: every pool, volume and secret, and the parts that work on them.

Composition, no mixins: each part is a small object holding the registry, and asks it
for the others (``reg.defs``, ``reg.life``, ``reg.vols``, ``reg.vcmds``, ``reg.index``,
``reg.chains``, ``reg.secrets``, ``reg.sources``, ``reg.rec``). Data flows one way: the
FUSE layer calls a part, the part calls a backend, the backend a host tool; results come
back as values or as one StorageError (errno and reason), recorded on the object by
``reg.rec``.
"""

from __future__ import annotations

import errno
import logging
import uuid as uuidlib
from typing import Any

import trio

from ..backends import PoolContext, backend_for
from ..errors import Busy, NotFound, StorageError, StorageLost
from ..sourcerules import check_source
from ..state import FileMeta, StateDir, StoredPool
from ..xml.pool import parse_pool
from .chains import Chains
from .events import EventBus
from .index import VolumeIndex
from .lifecycle import PoolLifecycle
from .objects import NameTable, Owner, Pool, Secret, Volume, new_meta, now_ns
from .pooldefs import PoolDefinitions
from .recording import Listener, NullListener, Recorder, error_line
from .runner import PoolRunner
from .secrets import SecretStore
from .sources import Sources
from .volume_cmds import VolumeCommands
from .volumes import Volumes

log = logging.getLogger(__name__)

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


class _Counting:
    """Forwards to the real listener and counts the changes that can move a link under
    by-uuid/, by-path/, by-key/ (objects added or removed, definitions changed)."""

    def __init__(self, inner: Listener, reg: Registry) -> None:
        self._inner, self._reg = inner, reg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def added(self, pool: str, volume: str | None = None) -> None:
        self._reg.links_version += 1
        self._inner.added(pool, volume)

    def removed(self, pool: str, volume: str | None = None) -> None:
        self._reg.links_version += 1
        self._inner.removed(pool, volume)

    def links_changed(self) -> None:
        self._reg.links_version += 1
        self._inner.links_changed()


class Registry:
    def __init__(self, state: StateDir, mountpoint: str | None = None,
                 host_id: str = "") -> None:
        self.state = state
        #: this host among hosts that share storage (``mount --host-id``)
        self.host_id = host_id
        #: where the tree is mounted (canonical): no pool's storage may be inside it
        self.mountpoint = mountpoint
        self.pools: NameTable = NameTable()  # name -> Pool
        #: bumped whenever a by-* link may have appeared, moved or gone (link tables
        #: are cached on it)
        self.links_version = 0
        self._listener: Listener = _Counting(NullListener(), self)
        self.started_ns = now_ns()
        #: the live device index (devices/), set by the mount when it is loaded
        self.devices = None
        #: the event stream (MNT/events): each part emits where a change is accepted
        self.events = EventBus()
        self.rec = Recorder(lambda: self.listener, self.events, lost=self._lost)
        self.secrets = SecretStore(state, self.rec)
        self.defs = PoolDefinitions(self)
        self.life = PoolLifecycle(self)
        self.index = VolumeIndex(self)
        self.vols = Volumes(self)
        self.vcmds = VolumeCommands(self)
        self.chains = Chains(self)
        self.sources = Sources(self)

    @property
    def listener(self) -> Listener:
        return self._listener

    @listener.setter
    def listener(self, inner: Listener) -> None:
        self._listener = _Counting(inner, self)

    # ---- objects ---------------------------------------------------------------------
    def new_pool(self, name: str, **fields: Any) -> Pool:
        pool = Pool(name, **fields)
        pool.runner = PoolRunner(name, on_stuck=lambda reason: self._stuck(pool, reason))
        self.pools[name] = pool
        return pool

    def _stuck(self, pool: Pool, reason: str) -> None:
        """A storage call of the pool overran its time limit: inaccessible at once."""
        if self.pools.get(pool.name) is pool and pool.active:
            exc = StorageError(reason, errno.EIO)
            self.rec.count_failure(pool, pool.busy or "refresh", exc)
            self.life.lost_storage(pool, exc)

    def _lost(self, obj: Owner | None, exc: StorageError, op: str) -> None:
        """An operation on obj found its pool's storage gone or replaced, or a remote
        pool's storage not answering within the time limit: inaccessible. (A local
        pool's tool that overran its limit is a slow tool, not storage gone.)"""
        pool = obj.pool if isinstance(obj, Volume) else obj
        if not (isinstance(pool, Pool) and self.pools.get(pool.name) is pool and pool.active):
            return
        if not isinstance(exc, StorageLost) and pool.backend.policy.poll_interval is None:
            return
        self.life.lost_storage(pool, exc, op)

    def make_backend(self, pool: Pool, definition):
        """A backend for ``definition`` that works through the pool's runner and can
        resolve the pool's secrets (CHAP, cephx)."""
        return backend_for(definition, PoolContext(pool.runner, self.secrets, self.host_id,
                                                   str(self.state.run_dir)))

    def set_config_meta(self, owner: Owner, meta: FileMeta) -> None:
        """chmod/chown/touch of an object's config.xml: kept and persisted."""
        if isinstance(owner, Secret):
            self.secrets.set_meta(owner, meta)
        elif isinstance(owner, Volume):
            self.vols.set_meta(owner, meta)
        else:
            self.defs.set_meta(owner, meta)

    # ---- lookups -------------------------------------------------------------------------
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
        if pool.gone:
            raise NotFound(f"no storage pool with matching name '{pool.name}'")
        if pool.defined:
            return
        if pool.broken:
            raise StorageError(f"the stored definition of storage pool '{pool.name}' could "
                               "not be read: write config.xml to define it again, or rmdir "
                               "it", errno.EIO)
        raise NotFound(f"storage pool '{pool.name}' has no definition yet: write config.xml")

    def running_pool(self, name: str) -> Pool:
        pool = self.defined_pool(name)
        if not pool.active:
            raise Busy(f"storage pool '{name}' is not active")
        return pool

    @staticmethod
    def check_not_stopping(pool: Pool) -> None:
        """No new volume operation while the pool stops (it would run on its way out)."""
        if pool.busy in ("stop", "undefine"):
            raise Busy(pool.busy_reason())

    def volume(self, pool_name: str, name: str) -> Volume:
        pool = self.pool(pool_name)
        vol = pool.volumes.get(name)
        if vol is None:
            raise NotFound(f"no storage vol with matching name '{name}'")
        return vol

    # ---- start-up ------------------------------------------------------------------------
    async def load(self) -> None:
        """Open the state directory, embed the default pool once, start pools."""
        fresh = self.state.is_new
        self.state.open()
        self.secrets.load()
        if fresh:
            await self._embed_default_pool()
        for stored in self.state.load_pools():
            pool = self.new_pool(stored.name, config=stored.config, uuid=stored.uuid,
                                 autostart=stored.autostart, meta=stored.meta,
                                 stored_active=stored.active)
            if stored.broken:
                self._mark_broken(pool, stored.broken)
                continue
            try:
                definition = parse_pool(stored.config)
                check_source(definition)  # one an older storagefs took: never run
                pool.backend = self.make_backend(pool, definition)
                pool.definition = definition
            except (ValueError, StorageError) as exc:
                reason = f"stored definition unusable: {exc}"
                log.error("pool %s: %s", stored.name, reason)
                self._mark_broken(pool, reason)
                continue
            try:
                with self.rec.recording(pool, "load"):
                    await self.defs.check_paths(pool, pool.definition)
            except StorageError:
                continue  # defined (so it can be fixed or undefined), never started
            if stored.autostart or stored.active:
                try:
                    with self.rec.recording(pool, "autostart"):
                        # the record already says it runs at start: nothing to save
                        await self.life.start(pool, record=False)
                except StorageError:
                    pass
            if not pool.active:
                await self.index.refresh_perms(pool)

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
        backend = backend_for(defn, PoolContext(PoolRunner("default"), self.secrets))
        await backend.build()
        self.state.save_pool(StoredPool("default", data, defn.uuid, autostart=True,
                                        active=True, meta=new_meta()))

    async def run_background(self, nursery: trio.Nursery) -> None:
        await self.index.run_background(nursery)
        await self.sources.run_background(nursery)
