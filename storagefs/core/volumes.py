"""Volumes: mkdir (the pool's defaults, or a pending volume where space is really taken),
rmdir, config.xml (SPEC "Volumes are made by their document"), and each volume's record
in the state directory (its recorded format, the signature that tells it never held
data, its accepted document), saved before the storage changes where it can be."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import trio

from ..backends.base import VolumeInfo, VolumeSpec
from ..errors import Busy, Exists, NotFound, NotSupported, StorageError
from ..names import check_name
from ..state import FileMeta, StoredVolume, merge_meta
from ..xml.pooltypes import default_volume_type
from . import docs
from .objects import Pool, Volume, claim
from .volspec import (
    check_allocation,
    default_spec,
    encryption_ref,
    recorded_format,
    spec_from_xml,
)

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)


class Volumes:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    # ---- records -------------------------------------------------------------------
    async def pristine(self, vol: Volume) -> bool:
        """Nothing but storagefs wrote to it (its signature is the one storagefs left)."""
        return vol.made is not None and vol.made == await vol.pool.backend.signature(vol.info)

    async def remember_made(self, vol: Volume, pristine: bool) -> None:
        """After storagefs made or changed the volume: keep it pristine if it was. Only
        that mark is at stake (the format and document are on record already), so a
        record that cannot be rewritten is logged, not refused."""
        made = await vol.pool.backend.signature(vol.info) if pristine else None
        if made == vol.made:
            return
        vol.made = made
        try:
            self.store(vol)
        except StorageError as exc:
            log.warning("volume %s/%s: its pristine mark is not on record: %s",
                        vol.pool.name, vol.name, exc.reason)

    @staticmethod
    def record_of(vol: Volume, **change) -> StoredVolume:
        """The volume's state record as it is (or with ``change`` applied); refused for
        a volume deleted while a handle held it, so no record outlives it."""
        if vol.gone:
            raise NotFound(f"no storage volume with matching name '{vol.name}'")
        fields = {"config": vol.config, "meta": vol.file_meta(), "format": vol.recorded_format,
                  "made": vol.made, **change}
        return StoredVolume(vol.pool.name, vol.name, **fields)

    def store(self, vol: Volume) -> None:
        """The volume's state record; removed when it holds nothing."""
        state = self.reg.state
        if vol.config is None and vol.recorded_format is None and vol.made is None:
            state.delete_volume(vol.pool.name, vol.name)
        else:
            state.save_volume(self.record_of(vol))

    def secret_of(self, data: bytes, pool: Pool) -> str | None:
        """The uuid of the secret a volume document's <encryption> names, if any."""
        ref = encryption_ref(data, pool)
        return None if ref is None else self.reg.secrets.resolve(ref, "volume").uuid

    # ---- mkdir, create ---------------------------------------------------------------
    async def create(self, pool: Pool, name: str) -> Volume:
        """mkdir pools/P/volumes/NAME."""
        with self.reg.rec.recording(pool, f"create volume {name}"):
            return await self.make(pool, name)

    @staticmethod
    def makes_pending(pool: Pool) -> bool:
        """mkdir makes a pending volume: space is really taken and no default was chosen."""
        return pool.backend.policy.takes_space and \
            getattr(pool.definition, "default_volume_capacity", None) is None

    async def make(self, pool: Pool, name: str, spec: VolumeSpec | None = None) -> Volume:
        """mkdir, or a create command: with ``spec`` None, the pool's defaults (or a pending
        volume where the pool takes real space and names no default capacity). The new
        volume's record (its format, and the signature that tells it never held data)
        is saved, or the volume is removed again and the mkdir refused."""
        reg = self.reg
        check_name(name, "volume name")
        pool = reg.running_pool(pool.name)
        reg.check_not_stopping(pool)
        if name in pool.volumes or name in pool.reserved:
            raise Exists(f"storage volume '{name}' exists already")
        if spec is None and self.makes_pending(pool):
            return self._make_pending(pool, name)
        spec = spec or default_spec(pool, name)
        check_allocation(spec.capacity, spec.allocation)
        pool.reserved.add(name)
        pool.busy_volumes += 1
        try:
            try:
                info = await pool.backend.create_volume(spec)
            except Exists:
                reg.index.probe_soon(pool, name)  # made meanwhile elsewhere: list it now
                raise
            vol = Volume(pool, name, info, recorded_format=info.format)
            vol.made = await pool.backend.signature(info)
            try:
                self.store(vol)
            except StorageError:
                with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                    await pool.backend.delete_volume(info)
                raise
            pool.volumes[name] = vol
        finally:
            pool.reserved.discard(name)
            pool.busy_volumes -= 1
        pool.touch()
        reg.events.of(vol, "created", f"format={info.format} capacity={info.capacity}")
        reg.listener.added(pool.name, name)
        reg.listener.changed(pool.name)
        await reg.index.settle(pool)
        return vol

    def _make_pending(self, pool: Pool, name: str) -> Volume:
        """A volume directory with only config.xml: the first accepted document creates
        the partition or LV. Not persisted (as a pending pool is not): a remount or a
        stop of the pool forgets it, since nothing of it exists on the storage."""
        pool.backend.check_volume_name(name)
        info = VolumeInfo(name=name, path=None, key="",
                          type=default_volume_type(pool.definition.type))
        vol = Volume(pool, name, info, pending=True)
        pool.volumes[name] = vol
        pool.touch()
        self.reg.listener.added(pool.name, name)
        return vol

    async def _create_pending(self, vol: Volume, data: bytes, meta: FileMeta | None) -> None:
        reg, pool = self.reg, vol.pool
        spec = spec_from_xml(vol, data)
        new_meta = merge_meta(vol.file_meta(), meta, content_changed=True)
        # written before the storage changes, put in place once it did
        record = reg.state.prepare_volume(StoredVolume(pool.name, vol.name, data, new_meta,
                                                       recorded_format(spec)))
        try:
            with claim(vol, "create"):
                if pool.volumes.get(vol.name) is not vol:
                    raise NotFound(f"no storage vol with matching name '{vol.name}'")
                if not vol.pending:
                    raise Busy(f"volume '{vol.name}' was created meanwhile; write the "
                               "document again")
                reg.check_not_stopping(pool)
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
        reg.events.of(vol, "created", f"format={vol.info.format} capacity={vol.info.capacity}")
        vol.touch()
        pool.touch()
        await self.remember_made(vol, True)
        reg.listener.changed(pool.name, vol.name)
        reg.listener.links_changed()
        await reg.index.settle(pool)

    # ---- rmdir ------------------------------------------------------------------------
    async def delete(self, vol: Volume, purge_snapshots: bool = False) -> None:
        """rmdir; ``purge_snapshots`` (``delete --purge-snapshots``): the volume's
        snapshots are removed with it, where the pool type can (rbd)."""
        reg, pool, name = self.reg, vol.pool, vol.name
        with reg.rec.recording(vol, "delete"):
            if purge_snapshots and not pool.backend.purges_snapshots:
                raise NotSupported(f"pools of type '{pool.definition.type}' cannot purge "
                                   "a volume's snapshots on delete")
            with claim(vol, "delete"):
                if pool.volumes.get(name) is not vol:
                    raise NotFound(f"no storage vol with matching name '{name}'")
                reg.check_not_stopping(pool)
                # the record is moved aside first: a state directory that cannot change
                # refuses the rmdir before the storage is touched
                record = reg.state.stage_delete_volume(pool.name, name)
                if not vol.pending:  # a pending volume has nothing on the storage
                    pool.busy_volumes += 1
                    try:
                        async with pool.backend.volume_lock(vol.info, "delete"):
                            if purge_snapshots:
                                await pool.backend.delete_volume(vol.info,
                                                                 purge_snapshots=True)
                            else:
                                await pool.backend.delete_volume(vol.info)
                    except BaseException:
                        record.abort()
                        raise
                    finally:
                        pool.busy_volumes -= 1
                record.commit()
                pool.drop_volume(name)
                pool.touch()
                if not vol.pending:  # a pending volume was never created
                    reg.events.of(vol, "destroyed")
        reg.listener.removed(pool.name, name)
        reg.listener.changed(pool.name)
        await reg.index.settle(pool)

    # ---- config.xml -------------------------------------------------------------------
    async def define(self, vol: Volume, data: bytes, meta: FileMeta | None = None) -> bool:
        reg, pool = self.reg, vol.pool
        with reg.rec.recording(vol, "define"):
            if vol.pending:
                await self._create_pending(vol, data, meta)
                return True
            current = vol.config if vol.config is not None else docs.volume_doc(
                pool.definition, vol.info, live=False)
            if data == current:
                if meta is not None:
                    new_meta = merge_meta(vol.file_meta(), meta, content_changed=False)
                    if vol.config is not None:
                        reg.state.save_volume(self.record_of(vol, config=data, meta=new_meta))
                    vol.meta = new_meta
                return False
            spec = spec_from_xml(vol, data)
            await reg.chains.check_document(vol, spec)
            secret = self.secret_of(data, pool) if spec.encryption else None
            new_meta = merge_meta(vol.file_meta(), meta, content_changed=True)
            # written (space taken, state directory proven writable) before the storage
            # changes; renamed into place after it did. The document's format goes on
            # record: the bytes inside never choose it again.
            fmt = recorded_format(spec)
            record = reg.state.prepare_volume(self.record_of(
                vol, config=data, meta=new_meta, format=fmt, made=None))
            try:
                with claim(vol, "define"):
                    reg.check_not_stopping(pool)
                    # never held data: the document re-makes it in full (SPEC "Volumes
                    # are made by their document"); else it changes in place
                    spec.remake = await self.pristine(vol)
                    pool.busy_volumes += 1
                    try:
                        async with reg.secrets.optional_file(secret) as path:
                            spec.secret_file = path
                            vol.info = await pool.backend.update_volume(vol.info, spec)
                    finally:
                        pool.busy_volumes -= 1
            except BaseException:
                record.abort()
                raise
            vol.touch()
            record.commit()
            vol.config, vol.meta, vol.made = data, new_meta, None
            vol.recorded_format = fmt
            reg.events.of(vol, "defined", f"format={vol.info.format} "
                          f"capacity={vol.info.capacity}{' re-made' if spec.remake else ''}")
            await self.remember_made(vol, spec.remake)  # a re-made volume is pristine still
        reg.listener.changed(pool.name, vol.name)
        await reg.index.settle(pool)
        return True

    def set_meta(self, vol: Volume, meta: FileMeta) -> None:
        with self.reg.rec.recording(vol, "setattr config.xml"):
            if vol.config is not None:
                self.reg.state.save_volume(self.record_of(vol, meta=meta))
            vol.meta = meta
        self.reg.listener.changed(vol.pool.name, vol.name)
