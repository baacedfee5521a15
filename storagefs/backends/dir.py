"""``dir`` pools: a directory of image files (libvirt's storage_backend_fs.c, dir part)."""

from __future__ import annotations

import os
import stat

from ..errors import Busy, InvalidArgument, NotFound, from_oserror
from .base import PoolBackend, PoolInfo, VolumeInfo, VolumeSpec
from .filevol import FileVolumes

DEFAULT_DIR_MODE = 0o711


def make_parents(path: str, mode: int = 0o755) -> None:
    """``mkdir -p`` with an explicit mode for each directory made (storagefs runs with
    umask 077; the directories above a pool stay traversable, as libvirt makes them)."""
    missing = []
    while not os.path.lexists(path) and path not in ("/", ""):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)


class DirBackend(PoolBackend):
    type = "dir"

    @property
    def target(self) -> str:
        path = self.definition.target_path
        if not path or not os.path.isabs(path):
            raise InvalidArgument(f"storage pool target path {path!r} must be absolute")
        return path

    @property
    def files(self) -> FileVolumes:
        return FileVolumes(self.target)

    def _is_dir(self) -> bool:
        try:
            return stat.S_ISDIR(os.stat(self.target).st_mode)
        except OSError:
            return False

    async def check(self) -> bool:
        return self._is_dir()

    async def build(self, overwrite: bool = False) -> None:
        perms = self.definition.target_permissions
        mode = perms.mode if perms and perms.mode is not None else DEFAULT_DIR_MODE
        try:
            make_parents(self.target)
            if not self._is_dir():
                raise InvalidArgument(f"target '{self.target}' exists and is not a directory")
            os.chmod(self.target, mode)
            if perms and (perms.owner is not None or perms.group is not None):
                os.chown(self.target, -1 if perms.owner is None else perms.owner,
                         -1 if perms.group is None else perms.group)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create directory '{self.target}'") from None

    async def start(self) -> None:
        if not self._is_dir():
            raise NotFound(f"cannot open directory '{self.target}': No such file or directory")
        self.files.remove_leftovers()

    async def stop(self) -> None:
        return None

    async def delete(self) -> None:
        try:
            os.rmdir(self.target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise from_oserror(exc, f"failed to remove pool '{self.target}'") from None

    def pool_info(self) -> PoolInfo | None:
        try:
            vfs = os.statvfs(self.target)
        except OSError:
            return None
        capacity = vfs.f_frsize * vfs.f_blocks
        available = vfs.f_frsize * vfs.f_bavail
        return PoolInfo(capacity, capacity - vfs.f_frsize * vfs.f_bfree, available)

    async def refresh(self, formats=None) -> tuple[PoolInfo, list[VolumeInfo]]:
        if not self._is_dir():
            raise NotFound(f"cannot open directory '{self.target}': No such file or directory")
        files = self.files
        formats = formats or {}
        vols = []
        for name in files.scan_names():
            # details later, in the background
            info = await files.probe(name, deep=False, fmt=formats.get(name))
            if info is not None:
                vols.append(info)
        return self.pool_info() or PoolInfo(), vols

    def watch_dir(self) -> str | None:
        return self.target

    async def probe_volume(self, name: str, fmt: str | None = None) -> VolumeInfo | None:
        return await self.files.probe(name, fmt=fmt)

    async def volume_details(self, info: VolumeInfo) -> VolumeInfo:
        return await self.files.details(info)

    def stat_volume(self, info: VolumeInfo) -> VolumeInfo | None:
        return self.files.stat(info)

    def unchanged(self, info: VolumeInfo) -> bool:
        return self.files.unchanged(info)

    def signature(self, info: VolumeInfo) -> list[int] | None:
        return self.files.signature(info)

    async def create_volume(self, spec: VolumeSpec) -> VolumeInfo:
        return await self.files.create(spec)  # checks the free space of an allocation

    async def delete_volume(self, info: VolumeInfo) -> None:
        await self.files.delete(info)

    async def resize_volume(self, info: VolumeInfo, capacity: int, *,
                            shrink: bool = False, allocate: bool = False,
                            secret_file: str | None = None) -> VolumeInfo:
        return await self.files.resize(info, capacity, shrink=shrink, allocate=allocate,
                                       secret_file=secret_file)

    async def update_volume(self, info: VolumeInfo, spec: VolumeSpec) -> VolumeInfo:
        if self.files.stat(info) is None:
            raise Busy(f"volume '{info.name}' is no longer there")
        return await self.files.update(info, spec)  # room is checked before any change

    async def clone_volume(self, src: VolumeInfo, spec: VolumeSpec, report) -> VolumeInfo:
        return await self.files.clone(src, spec, report)

    async def wipe_volume(self, info: VolumeInfo, algorithm: str, report) -> VolumeInfo:
        return await self.files.wipe(info, algorithm, report)

    async def snapshot_volume(self, info: VolumeInfo, op: str, name: str) -> VolumeInfo:
        return await self.files.snapshot(info, op, name)
