"""The chain behind an image (SPEC "Never trust guest bytes"): a backing file, a qcow2
data file or a vmdk extent that leads out of the pools is shown, and never followed by
an operation unless a document names it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
from typing import TYPE_CHECKING

from .. import chain, pathrules
from ..backends.base import VolumeInfo, VolumeSpec
from ..chain import Places
from ..errors import InvalidArgument, NotPermitted, StorageError
from ..xml.volume import parse_volume
from .objects import Volume

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger(__name__)


class Chains:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def trusted_places(self) -> Places:
        """The directories of file pools and the paths of block pools' volumes."""
        places = Places()
        for pool in self.reg.pools.values():
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

    @staticmethod
    def named_backing(vol: Volume) -> set[str]:
        """The backing store that the volume's document (one a user wrote) names."""
        if vol.config is None:
            return set()
        try:
            backing = parse_volume(vol.config, vol.pool.definition).backing
        except ValueError:
            return set()
        return {pathrules.normal(backing.path)} if backing is not None and backing.path \
            else set()

    async def check(self, vol: Volume, named: set[str] | None = None,
                    info: VolumeInfo | None = None) -> None:
        """Refuse (EPERM) to hand ``vol`` (or ``info``) to an image tool when its chain
        (backing files, data files, extents) leads out of the pools to a file that no
        document names: qemu-img would read it. qemu-img info, which opens none of them,
        refreshes what the image says first. ELOOP (chain.ChainLoop) when the chain comes
        back to a file already in it."""
        if info is None:
            # file volumes, and network volumes storagefs reaches through a local file
            # (a gluster pool's private mount): image tools open their chains too
            local = vol.info.type == "file" or (vol.info.type == "network" and
                                                bool(vol.info.path))
            if not local or (vol.info.format == "raw" and not vol.info.data_files):
                return
            info = await vol.pool.backend.volume_details(dataclasses.replace(vol.info))
            if not vol.busy:
                self.reg.index.update(vol, info)
        where = await chain.escape(info, self.trusted_places(),
                                   self.named_backing(vol) if named is None else named,
                                   start=vol.info.path)
        if where is not None:
            what = f"'{vol.name}'" if info.path else "the backing store"
            raise NotPermitted(
                f"{what} refers to '{where}' (as backing file, data file or extent), which "
                "is in no storage pool: storagefs does not follow it")

    async def show_loop(self, vol: Volume, info: VolumeInfo) -> None:
        """At listing (the details of a refresh): a volume whose backing chain loops gets
        the reason in its error file, once (ELOOP for every operation that opens it)."""
        if not info.backing_path or info.type != "file":
            return
        try:
            await chain.escape(info, self.trusted_places(), self.named_backing(vol))
        except chain.ChainLoop as exc:
            if exc.reason not in (vol.error or ""):
                self.reg.rec.note_refusal(vol, "refresh", exc, background=True)
        except StorageError:
            pass  # what the chain names cannot be read: operations say so
        except OSError as exc:  # a file of the chain changed under the walk
            log.warning("volume %s/%s: backing chain not checked: %s", vol.pool.name,
                        vol.name, exc)

    async def check_backing_store(self, vol: Volume, spec: VolumeSpec) -> None:
        """A document's <backingStore> must be a volume in a pool or a block device."""
        path = spec.backing_path
        if not path:
            return
        if not path.startswith("/"):
            raise InvalidArgument(f"backing store path '{path}' must be absolute")
        norm = pathrules.normal(path)
        if norm == vol.info.path:
            raise InvalidArgument(f"volume '{vol.name}' cannot be its own backing store")
        mountpoint = self.reg.mountpoint
        if mountpoint and pathrules.inside(norm, mountpoint):
            raise NotPermitted(f"backing store '{path}' is inside the storagefs mount; name "
                               "the volume's own path (readlink .../VOL/path)")
        places = self.trusted_places()
        if places.holds(path):
            return
        real = await pathrules.resolve(path)
        try:
            st = await vol.pool.runner.io(os.stat, real, what=f"stat {real}")
        except (OSError, StorageError):
            st = None
        if st is not None and (stat.S_ISBLK(st.st_mode) or
                               (stat.S_ISREG(st.st_mode) and places.holds(real))):
            return
        raise NotPermitted(f"backing store '{path}' is neither a volume in a storage pool "
                           "nor a block device")

    async def check_document(self, vol: Volume, spec: VolumeSpec) -> None:
        """What a new document names is vouched for; the rest of the chain (the volume's
        own, and that of a new backing store) must stay in the pools."""
        await self.check_backing_store(vol, spec)
        named = {pathrules.normal(spec.backing_path)} if spec.backing_path else set()
        await self.check(vol, named)
        if spec.backing_path:
            await self.check(vol, named, VolumeInfo(
                name=vol.name, path="", key="", backing_path=spec.backing_path,
                backing_format=spec.backing_format))



