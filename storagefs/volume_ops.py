"""Volume operations of the manager, and keeping the volume index live.

The index (``pool.volumes``) is what lookup/readdir serve from. It is filled
by ``refresh``, changed by our own operations, and kept current between them
by inotify events on the pool's directory: a probe per changed name, run by a
worker task, never on the hot path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import stat
from typing import TYPE_CHECKING

import trio

from . import chain, pathrules
from .backends.base import VolumeInfo, VolumeSpec
from .backends.filevol import format_from_name
from .chain import Places
from .docs import volume_doc
from .errors import (
    Busy,
    Exists,
    InvalidArgument,
    NotFound,
    NotPermitted,
    NotSupported,
    StorageError,
)
from .names import check_name
from .objects import Pool, Volume, claim
from .state import FileMeta, StoredVolume, merge_meta
from .watch import DirWatcher

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1 << 30
#: what a host adds to a fully allocated volume (file system blocks, image metadata such
#: as qcow2's L2 and refcount tables): ``virsh vol-dumpxml`` reports <allocation> that
#: much above <capacity>, and such a document must still be accepted
ALLOCATION_SLACK = 1 << 20


def recorded_format(spec: VolumeSpec) -> str:
    """The format a volume made from ``spec`` has: an encrypted raw volume is LUKS."""
    if spec.encryption and spec.format in (None, "raw"):
        return "luks"
    return spec.format


def check_allocation(capacity: int, allocation: int | None) -> None:
    """EINVAL for an <allocation> above <capacity> (beyond what vol-dumpxml reports for a
    fully allocated volume: 1 MiB plus 1/256 of the capacity)."""
    if allocation is not None and allocation > capacity + ALLOCATION_SLACK + capacity // 256:
        raise InvalidArgument(f"allocation {allocation} is above the capacity {capacity}")


_QEMU_WORD = re.compile(r"[A-Za-z0-9_-]{1,32}")


def luks_options(enc) -> dict[str, str]:
    """qemu's LUKS creation options for libvirt's <cipher name size mode hash> and
    <ivgen name hash> (as libvirt's storage_util passes them); EINVAL for a value that
    is not a plain word (it goes into qemu-img's -o list)."""
    opts = {}
    if enc.cipher_name is not None:
        opts["cipher-alg"] = f"{enc.cipher_name}-{enc.cipher_size or 0}"
        if enc.cipher_mode:
            opts["cipher-mode"] = enc.cipher_mode
        if enc.cipher_hash:
            opts["hash-alg"] = enc.cipher_hash
    if enc.ivgen_name is not None:
        opts["ivgen-alg"] = enc.ivgen_name
        if enc.ivgen_hash:
            opts["ivgen-hash-alg"] = enc.ivgen_hash
    for key, value in opts.items():
        if not _QEMU_WORD.fullmatch(value):
            raise InvalidArgument(f"encryption {key} {value!r} is not a cipher name qemu knows")
    return opts


class VolumeOps:
    def __init__(self) -> None:
        self.watcher: DirWatcher | None = None
        self._dirty: dict[str, set[str | None]] = {}
        self._dirty_event = trio.Event()
        #: volumes refreshed from their headers only, waiting for qemu-img's details
        self._details: dict[str, set[str]] = {}
        self._details_event = trio.Event()
        self._details_running: tuple[str, trio.CancelScope] | None = None

    # ---- the live index ------------------------------------------------
    async def run_background(self: Manager, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.watcher = DirWatcher(self._on_dir_event)
        for pool in self.pools.values():
            if pool.active:
                self.watch(pool)
        nursery.start_soon(self.watcher.run)
        nursery.start_soon(self._probe_worker)
        nursery.start_soon(self._details_worker)

    def watch(self: Manager, pool: Pool) -> None:
        if self.watcher is not None and pool.backend is not None:
            d = pool.backend.watch_dir()
            if d:
                self.watcher.add(d)

    def unwatch(self: Manager, pool: Pool) -> None:
        if self.watcher is not None and pool.backend is not None:
            d = pool.backend.watch_dir()
            if d:
                self.watcher.remove(d)

    def _on_dir_event(self: Manager, directory: str, name: str | None, gone: bool) -> None:
        pool = self.pool_by_target(directory)
        if pool is None or not pool.active:
            return
        self._dirty.setdefault(pool.name, set()).add(name)
        self._dirty_event.set()

    async def _probe_worker(self: Manager) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            dirty, self._dirty = self._dirty, {}
            for pool_name, names in dirty.items():
                pool = self.pools.get(pool_name)
                if pool is None or not pool.active:
                    continue
                if None in names:
                    try:
                        await self._refresh(pool)
                    except Busy:
                        if pool.active and pool.busy and self.nursery is not None:
                            # a user's operation runs: rescan once it is done
                            self.nursery.start_soon(self._rescan_later, pool.name)
                    except StorageError as exc:
                        # the pool is inaccessible until its storage is back
                        self.note_refusal(pool, "refresh", exc)
                    continue
                for name in names:
                    with contextlib.suppress(StorageError):
                        await self._probe_one(pool, name)

    async def _rescan_later(self: Manager, pool_name: str) -> None:
        await trio.sleep(0.5)
        self._dirty.setdefault(pool_name, set()).add(None)
        self._dirty_event.set()

    async def _details_worker(self: Manager) -> None:
        """Fill in what a refresh left out (backing store, snapshots ...) one volume at
        a time, after the fact: a slow or hung qemu-img never delays a mount or an ls."""
        while True:
            await self._details_event.wait()
            self._details_event = trio.Event()
            pending, self._details = self._details, {}
            for pool_name, names in pending.items():
                for name in sorted(names):
                    pool = self.pools.get(pool_name)
                    vol = pool.volumes.get(name) if pool is not None else None
                    if vol is None or vol.lock.locked() or not pool.active:
                        continue
                    # a stop cancels this (the probe must not keep the pool's files busy)
                    with trio.CancelScope() as scope:
                        self._details_running = (pool_name, scope)
                        try:
                            await self._fill_details(vol)
                        finally:
                            self._details_running = None

    async def cancel_details(self: Manager, pool: Pool) -> None:
        """Before a pool stops: no more background probes of its volumes, and the one
        under way (if any) cancelled and finished (its tool killed)."""
        self._details.pop(pool.name, None)
        with trio.move_on_after(10):
            while self._details_running is not None and self._details_running[0] == pool.name:
                self._details_running[1].cancel()
                await trio.sleep(0.01)

    async def _fill_details(self: Manager, vol: Volume) -> None:
        pool, name = vol.pool, vol.name
        try:
            info = await pool.backend.volume_details(dataclasses.replace(vol.info))
        except StorageError as exc:
            self.note_refusal(vol, "refresh", exc)
            return
        if pool.volumes.get(name) is vol and not vol.lock.locked():
            vol.info = info
            vol.touch()
            self.listener.changed(pool.name, name)

    def _want_details(self: Manager, pool: Pool, names: list[str]) -> None:
        if names:
            self._details.setdefault(pool.name, set()).update(names)
            self._details_event.set()

    async def _probe_one(self: Manager, pool: Pool, name: str) -> None:
        if name in pool.reserved or name.startswith("."):
            return
        vol = pool.volumes.get(name)
        if vol is not None and vol.lock.locked():
            return  # our own operation updates it
        if vol is not None and pool.backend.unchanged(vol.info):
            return  # the event was our own write, or a touch: nothing to probe
        fmt = vol.recorded_format if vol is not None else None
        info = await pool.backend.probe_volume(name, fmt)
        if not pool.active or name in pool.reserved:
            return
        vol = pool.volumes.get(name)
        if info is None:
            if vol is not None and not vol.lock.locked() and not vol.pending:
                del pool.volumes[name]
                # its record goes with it: a file of that name found later is probed
                self.state.delete_volume(pool.name, name)
                self.listener.removed(pool.name, name)
            return
        if vol is None:
            try:
                check_name(name)
            except StorageError:
                return
            pool.volumes[name] = Volume(pool, name, info)
            self.listener.added(pool.name, name)
        elif not vol.lock.locked():
            vol.info = info
            vol.pending = False
            vol.touch()
            self.listener.changed(pool.name, name)

    async def _load_volumes(self: Manager, pool: Pool, deep: bool = False) -> None:
        """Refresh the pool from its storage; keep Volume objects that still exist.

        Volumes come from cheap probes (headers); qemu-img's details follow in the
        background, or at once when ``deep`` (a refresh the user asked for)."""
        stored = self.state.load_volumes(pool.name)
        formats = {n: f for n, f in ((n, self._stored_format(pool, sv))
                                     for n, sv in stored.items()) if f}
        formats.update({n: v.recorded_format for n, v in pool.volumes.items()
                        if v.recorded_format})
        info, found = await pool.backend.refresh(formats)
        pool.info = info
        seen = set()
        for vinfo in found:
            seen.add(vinfo.name)
            vol = pool.volumes.get(vinfo.name)
            if vol is None:
                vol = Volume(pool, vinfo.name, vinfo)
                sv = stored.get(vinfo.name)
                if sv is not None and sv.broken:
                    from .manager import error_line

                    vol.error = error_line("load", sv.broken)
                elif sv is not None:
                    vol.config, vol.meta, vol.made = sv.config, sv.meta, sv.made
                    vol.recorded_format = formats.get(vinfo.name)
                pool.volumes[vinfo.name] = vol
                if pool.active:
                    self.listener.added(pool.name, vinfo.name)
            elif not vol.lock.locked():
                vol.info = vinfo
                vol.pending = False  # made outside storagefs meanwhile
                vol.touch()
        for name in [n for n, v in pool.volumes.items()
                     if n not in seen and n not in pool.reserved and not v.pending]:
            del pool.volumes[name]
            self.listener.removed(pool.name, name)
        for name, sv in stored.items():
            if name not in seen and not sv.broken:
                try:  # the record of a volume that is gone: tidied, not required
                    self.state.delete_volume(pool.name, name)
                except StorageError as exc:
                    log.warning("pool %s: %s", pool.name, exc.reason)
        slow = [v.name for v in found if v.format != "raw"]
        if not deep:
            self._want_details(pool, slow)
            return
        for name in slow:
            vol = pool.volumes.get(name)
            if vol is not None and not vol.lock.locked():
                await self._fill_details(vol)

    @staticmethod
    def _stored_format(pool: Pool, sv: StoredVolume) -> str | None:
        """The recorded format; for a record of an older storagefs (a document and no
        format), the format its document names."""
        if sv.format or sv.config is None:
            return sv.format
        from .xml.volume import parse_volume

        try:
            target = parse_volume(sv.config, pool.definition).target
        except ValueError:
            return None
        fmt = getattr(target, "format", None)
        if getattr(target, "encryption", None) is not None and fmt in (None, "raw"):
            return "luks"  # as FileVolumes.create makes an encrypted raw volume
        return fmt

    def volume_info(self: Manager, vol: Volume) -> VolumeInfo:
        """The volume's figures with a fresh stat (cheap syscalls only)."""
        if not vol.lock.locked():
            fresh = vol.pool.backend.stat_volume(vol.info)
            if fresh is not None:
                vol.info = fresh
        return vol.info

    # ---- lookups ---------------------------------------------------------
    def running_pool(self: Manager, name: str) -> Pool:
        pool = self.defined_pool(name)
        if not pool.active:
            raise Busy(f"storage pool '{name}' is not active")
        return pool

    @staticmethod
    def check_not_stopping(pool: Pool) -> None:
        """No new volume operation while the pool stops (it would run on its way out)."""
        if pool.busy in ("stop", "undefine"):
            raise Busy(pool.busy_reason())

    def volume(self: Manager, pool_name: str, name: str) -> Volume:
        pool = self.pool(pool_name)
        vol = pool.volumes.get(name)
        if vol is None:
            raise NotFound(f"no storage vol with matching name '{name}'")
        return vol

    # ---- operations ---------------------------------------------------------
    def default_spec(self: Manager, pool: Pool, name: str) -> VolumeSpec:
        defn = pool.definition
        fmt = format_from_name(name) or getattr(defn, "default_volume_format", None) or "raw"
        cap = getattr(defn, "default_volume_capacity", None) or DEFAULT_CAPACITY
        return VolumeSpec(name=name, format=fmt, capacity=cap)

    @staticmethod
    def makes_pending(pool: Pool) -> bool:
        """mkdir makes a pending volume: space is really taken and no default was chosen."""
        return pool.backend.takes_space and \
            getattr(pool.definition, "default_volume_capacity", None) is None

    # ---- pristine volumes (nothing but storagefs wrote to them) ------------------------
    def pristine(self: Manager, vol: Volume) -> bool:
        return vol.made is not None and vol.made == vol.pool.backend.signature(vol.info)

    def remember_made(self: Manager, vol: Volume, pristine: bool) -> None:
        """After storagefs made or changed the volume: keep it pristine if it was. Only
        that mark is at stake (the format and document are on record already), so a
        record that cannot be rewritten is logged, not refused."""
        made = vol.pool.backend.signature(vol.info) if pristine else None
        if made == vol.made:
            return
        vol.made = made
        try:
            self.store_volume(vol)
        except StorageError as exc:
            log.warning("volume %s/%s: its pristine mark is not on record: %s",
                        vol.pool.name, vol.name, exc.reason)

    def record_of(self: Manager, vol: Volume, **change) -> StoredVolume:
        """The volume's state record as it is (or with ``change`` applied)."""
        fields = {"config": vol.config, "meta": vol.meta, "format": vol.recorded_format,
                  "made": vol.made, **change}
        return StoredVolume(vol.pool.name, vol.name, **fields)

    def store_volume(self: Manager, vol: Volume) -> None:
        """The volume's state record: its recorded format, the signature of the file
        storagefs made, its accepted document; removed when it holds none of them."""
        if vol.config is None and vol.recorded_format is None and vol.made is None:
            self.state.delete_volume(vol.pool.name, vol.name)
        else:
            self.state.save_volume(self.record_of(vol))

    async def create_volume(self: Manager, pool_name: str, name: str,
                            spec: VolumeSpec | None = None) -> Volume:
        pool = self.pool(pool_name)
        with self.recording(pool, f"create volume {name}"):
            return await self.make_volume(pool, name, spec)

    async def make_volume(self: Manager, pool: Pool, name: str,
                          spec: VolumeSpec | None = None) -> Volume:
        """mkdir, or a create command: with ``spec`` None, the pool's defaults (or a pending
        volume where the pool takes real space and names no default capacity). The new
        volume's record (its format, and the signature that tells it never held data)
        is saved, or the volume is removed again and the mkdir refused."""
        check_name(name, "volume name")
        pool = self.running_pool(pool.name)
        self.check_not_stopping(pool)
        if name in pool.volumes or name in pool.reserved:
            raise Exists(f"storage volume '{name}' exists already")
        if spec is None and self.makes_pending(pool):
            return self._make_pending(pool, name)
        spec = spec or self.default_spec(pool, name)
        check_allocation(spec.capacity, spec.allocation)
        pool.reserved.add(name)
        pool.busy_volumes += 1
        try:
            info = await pool.backend.create_volume(spec)
            vol = Volume(pool, name, info, recorded_format=info.format)
            vol.made = pool.backend.signature(info)
            try:
                self.store_volume(vol)
            except StorageError:
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await pool.backend.delete_volume(info)
                raise
            pool.volumes[name] = vol
        finally:
            pool.reserved.discard(name)
            pool.busy_volumes -= 1
        pool.touch()
        self.listener.added(pool.name, name)
        self.listener.changed(pool.name)
        return vol

    def _make_pending(self: Manager, pool: Pool, name: str) -> Volume:
        """A volume directory with only config.xml: the first accepted document creates
        the partition or LV. Not persisted (as a pending pool is not): a remount or a
        stop of the pool forgets it, since nothing of it exists on the storage."""
        pool.backend.check_volume_name(name)
        from .xml.pooltypes import default_volume_type

        info = VolumeInfo(name=name, path="", key="",
                          type=default_volume_type(pool.definition.type))
        vol = Volume(pool, name, info, pending=True)
        pool.volumes[name] = vol
        pool.touch()
        self.listener.added(pool.name, name)
        return vol

    async def _create_pending(self: Manager, vol: Volume, data: bytes,
                              meta: FileMeta | None) -> None:
        pool = vol.pool
        spec = self.spec_from_xml(vol, data)
        new_meta = merge_meta(vol.meta, meta, content_changed=True)
        # written before the storage changes, put in place once it did
        record = self.state.prepare_volume(StoredVolume(pool.name, vol.name, data, new_meta,
                                                        recorded_format(spec)))
        try:
            with claim(vol, "create"):
                if pool.volumes.get(vol.name) is not vol:
                    raise NotFound(f"no storage vol with matching name '{vol.name}'")
                if not vol.pending:
                    raise Busy(f"volume '{vol.name}' was created meanwhile; write the "
                               "document again")
                self.check_not_stopping(pool)
                pool.busy_volumes += 1
                try:
                    vol.info = await pool.backend.create_volume(spec)
                finally:
                    pool.busy_volumes -= 1
        except BaseException:
            record.abort()
            raise
        record.commit()
        vol.pending = False
        vol.config, vol.meta, vol.recorded_format = data, new_meta, recorded_format(spec)
        vol.touch()
        pool.touch()
        self.remember_made(vol, True)
        self.listener.changed(pool.name, vol.name)
        self.listener.links_changed()

    async def delete_volume(self: Manager, pool_name: str, name: str) -> None:
        vol = self.volume(pool_name, name)
        pool = vol.pool
        with self.recording(vol, "delete"):
            with claim(vol, "delete"):
                if pool.volumes.get(name) is not vol:
                    raise NotFound(f"no storage vol with matching name '{name}'")
                self.check_not_stopping(pool)
                # the record is moved aside first: a state directory that cannot change
                # refuses the rmdir before the storage is touched
                record = self.state.stage_delete_volume(pool.name, name)
                if not vol.pending:  # a pending volume has nothing on the storage
                    pool.busy_volumes += 1
                    try:
                        await pool.backend.delete_volume(vol.info)
                    except BaseException:
                        record.abort()
                        raise
                    finally:
                        pool.busy_volumes -= 1
                record.commit()
                del pool.volumes[name]
                pool.touch()
        self.listener.removed(pool_name, name)
        self.listener.changed(pool_name)

    def spec_from_xml(self: Manager, vol: Volume, data: bytes) -> VolumeSpec:
        from .xml.volume import parse_volume

        vdef = parse_volume(data, vol.pool.definition)
        if vdef.name != vol.name:
            raise InvalidArgument(f"volume name '{vdef.name}' in the document does not match "
                                  f"the directory '{vol.name}'")
        target = vdef.target
        perms = getattr(target, "permissions", None)
        spec = VolumeSpec(
            name=vol.name,
            format=getattr(target, "format", None) or vol.info.format,
            capacity=vdef.capacity if vdef.capacity is not None else vol.info.capacity,
            allocation=vdef.allocation,
            mode=getattr(perms, "mode", None), uid=getattr(perms, "owner", None),
            gid=getattr(perms, "group", None))
        # before anything changes: a document half applied would leave a volume that
        # matches neither the old document nor the new one
        check_allocation(spec.capacity, spec.allocation)
        if spec.format == "qcow2":
            if target.compat:
                spec.options["compat"] = target.compat
            if target.features and "lazy_refcounts" in target.features:
                spec.options["lazy_refcounts"] = "on"
            if target.cluster_size:
                spec.options["cluster_size"] = str(target.cluster_size)
        if target.nocow and spec.format in ("qcow2", "raw", "vdi", "vpc", "vmdk"):
            spec.options["nocow"] = "on"
        if vdef.backing is not None and vdef.backing.path:
            spec.backing_path = vdef.backing.path
            spec.backing_format = vdef.backing.format or "raw"
        enc = getattr(target, "encryption", None)
        if enc is not None:
            if enc.format not in ("luks", "default"):
                raise NotSupported(f"encryption format '{enc.format}' is not supported; "
                                   "use luks")
            spec.encryption = "luks"
            spec.encrypt_options = luks_options(enc)
        return spec

    # ---- the chain behind an image (SPEC "Never trust guest bytes") -----------------------
    def trusted_places(self: Manager) -> Places:
        """The directories of file pools and the paths of block pools' volumes."""
        places = Places()
        for pool in self.pools.values():
            if not pool.defined or pool.backend is None:
                continue
            with contextlib.suppress(StorageError):
                d = pool.backend.watch_dir()
                if d:
                    places.dirs.add(pathrules.normal(d))
                    if pool.real_target:
                        places.dirs.add(pool.real_target)
            places.volumes.update(v.info.path for v in pool.volumes.values()
                                  if v.info.type == "block" and v.info.path)
        return places

    def named_backing(self: Manager, vol: Volume) -> set[str]:
        """The backing store that the volume's document (one a user wrote) names."""
        if vol.config is None:
            return set()
        from .xml.volume import parse_volume

        try:
            backing = parse_volume(vol.config, vol.pool.definition).backing
        except ValueError:
            return set()
        return {pathrules.normal(backing.path)} if backing is not None and backing.path \
            else set()

    async def check_chain(self: Manager, vol: Volume, named: set[str] | None = None,
                          info: VolumeInfo | None = None) -> None:
        """Refuse (EPERM) to hand ``vol`` (or ``info``) to an image tool when its chain
        (backing files, data files, extents) leads out of the pools to a file that no
        document names: qemu-img would read it. qemu-img info, which opens none of them,
        refreshes what the image says first."""
        if info is None:
            if vol.info.type != "file" or (vol.info.format == "raw" and
                                           not vol.info.data_files):
                return
            info = await vol.pool.backend.volume_details(dataclasses.replace(vol.info))
            if not vol.lock.locked():
                vol.info = info
        where = await chain.escape(info, self.trusted_places(),
                                   self.named_backing(vol) if named is None else named)
        if where is not None:
            what = f"'{vol.name}'" if info.path else "the backing store"
            raise NotPermitted(
                f"{what} refers to '{where}' (as backing file, data file or extent), which "
                "is in no storage pool: storagefs does not follow it")

    async def check_backing_store(self: Manager, vol: Volume, spec: VolumeSpec) -> None:
        """A document's <backingStore> must be a volume in a pool or a block device."""
        path = spec.backing_path
        if not path:
            return
        if not path.startswith("/"):
            raise InvalidArgument(f"backing store path '{path}' must be absolute")
        norm = pathrules.normal(path)
        if norm == vol.info.path:
            raise InvalidArgument(f"volume '{vol.name}' cannot be its own backing store")
        if self.mountpoint and pathrules.inside(norm, self.mountpoint):
            raise NotPermitted(f"backing store '{path}' is inside the storagefs mount; name "
                               "the volume's own path (readlink .../VOL/path)")
        places = self.trusted_places()
        if places.holds(path):
            return
        real = await pathrules.resolve(path)
        try:
            st = await trio.to_thread.run_sync(os.stat, real)
        except OSError:
            st = None
        if st is not None and (stat.S_ISBLK(st.st_mode) or
                               (stat.S_ISREG(st.st_mode) and places.holds(real))):
            return
        raise NotPermitted(f"backing store '{path}' is neither a volume in a storage pool "
                           "nor a block device")

    def encryption_secret(self: Manager, data: bytes, pool) -> str | None:
        """The uuid of the secret a volume document's <encryption> names, if any."""
        from .xml.volume import parse_volume

        enc = getattr(parse_volume(data, pool).target, "encryption", None)
        if enc is None:
            return None
        for ref in enc.secrets:
            if ref.uuid:
                self.secret(ref.uuid)
                return ref.uuid
            for s in self.secrets.values():
                d = s.definition
                if d is not None and d.usage_type == "volume" and d.usage_id == ref.usage:
                    return s.uuid
            raise NotFound(f"no secret with usage volume '{ref.usage}'")
        raise InvalidArgument("<encryption> names no <secret>")

    async def define_volume(self: Manager, pool_name: str, name: str, data: bytes,
                            meta: FileMeta | None = None) -> bool:
        vol = self.volume(pool_name, name)
        with self.recording(vol, "define"):
            if vol.pending:
                await self._create_pending(vol, data, meta)
                return True
            current = vol.config if vol.config is not None else volume_doc(
                vol.pool.definition, vol.info, live=False)
            if data == current:
                if meta is not None:
                    new_meta = merge_meta(vol.meta, meta, content_changed=False)
                    if vol.config is not None:
                        self.state.save_volume(self.record_of(vol, config=data,
                                                              meta=new_meta))
                    vol.meta = new_meta
                return False
            spec = self.spec_from_xml(vol, data)
            await self.check_backing_store(vol, spec)
            # what the new document names is vouched for; the rest of the chain (the
            # volume's own, and that of a new backing store) must stay in the pools
            named = {pathrules.normal(spec.backing_path)} if spec.backing_path else set()
            await self.check_chain(vol, named)
            if spec.backing_path:
                await self.check_chain(vol, named, VolumeInfo(
                    name=vol.name, path="", key="", backing_path=spec.backing_path,
                    backing_format=spec.backing_format))
            secret = self.encryption_secret(data, vol.pool.definition) if spec.encryption \
                else None
            new_meta = merge_meta(vol.meta, meta, content_changed=True)
            # written (space taken, state directory proven writable) before the storage
            # changes; renamed into place after it did. The document's format goes on
            # record: the bytes inside never choose it again.
            fmt = recorded_format(spec)
            record = self.state.prepare_volume(self.record_of(
                vol, config=data, meta=new_meta, format=fmt, made=None))
            try:
                with claim(vol, "define"):
                    self.check_not_stopping(vol.pool)
                    # never held data: the document re-makes it in full (SPEC "Volumes
                    # are made by their document"); else it changes in place
                    spec.remake = self.pristine(vol)
                    vol.pool.busy_volumes += 1
                    try:
                        async with self.optional_secret_file(secret) as path:
                            spec.secret_file = path
                            vol.info = await vol.pool.backend.update_volume(vol.info, spec)
                    finally:
                        vol.pool.busy_volumes -= 1
            except BaseException:
                record.abort()
                raise
            vol.touch()
            record.commit()
            vol.config, vol.meta, vol.made = data, new_meta, None
            vol.recorded_format = fmt
            self.remember_made(vol, spec.remake)  # a re-made volume is pristine still
        self.listener.changed(pool_name, name)
        return True

    def set_volume_meta(self: Manager, pool_name: str, name: str, meta: FileMeta) -> None:
        vol = self.volume(pool_name, name)
        with self.recording(vol, "setattr config.xml"):
            if vol.config is not None:
                self.state.save_volume(self.record_of(vol, meta=meta))
            vol.meta = meta
        self.listener.changed(pool_name, name)
